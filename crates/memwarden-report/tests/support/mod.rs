//! Golden files: each renderer's whole output, kept in `tests/golden/NAME.txt` and compared
//! byte for byte. A change in output fails with a listing of the lines that differ.
//!
//! Refresh them deliberately, after reading the diff:
//!
//! ```text
//! MEMWARDEN_BLESS=1 cargo test -p memwarden-report
//! git diff crates/memwarden-report/tests/golden/
//! ```

use std::path::PathBuf;

/// Set to `1` to rewrite the golden files with what the renderers print now.
const BLESS: &str = "MEMWARDEN_BLESS";

/// Lines of context shown around each difference.
const CONTEXT_LINES: usize = 2;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"))
}

/// Compares `actual` with `tests/golden/{name}.txt`, or rewrites the file when
/// `MEMWARDEN_BLESS=1`.
pub fn assert_golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var(BLESS).is_ok_and(|v| v == "1") {
        std::fs::write(&path, actual)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    let expected = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => panic!(
            "cannot read the golden file {}: {e}\n\
             create it with `{BLESS}=1 cargo test -p memwarden-report`; the output was:\n{actual}",
            path.display()
        ),
    };
    if expected != actual {
        panic!(
            "the output differs from the golden file {} (- golden, + now):\n{}\n\
             if the change is intended, refresh it with `{BLESS}=1 cargo test -p memwarden-report`",
            path.display(),
            line_diff(&expected, actual)
        );
    }
}

/// A unified-diff-like listing of the lines that differ (`-NNN` a golden line, `+NNN` a
/// line of the new output), from a longest common subsequence of lines (golden files are small).
fn line_diff(expected: &str, actual: &str) -> String {
    let (old, new): (Vec<&str>, Vec<&str>) = (
        expected.split_inclusive('\n').collect(),
        actual.split_inclusive('\n').collect(),
    );
    // common[i][j]: length of the longest common subsequence of old[i..] and new[j..].
    let mut common = vec![vec![0usize; new.len() + 1]; old.len() + 1];
    for i in (0..old.len()).rev() {
        for j in (0..new.len()).rev() {
            common[i][j] = if old[i] == new[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    // (tag, line number: in the golden file for ' ' and '-', in the new output for '+', text)
    let mut script: Vec<(char, usize, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        if i < old.len() && j < new.len() && old[i] == new[j] {
            script.push((' ', i + 1, old[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < old.len() && (j == new.len() || common[i + 1][j] >= common[i][j + 1]) {
            script.push(('-', i + 1, old[i]));
            i += 1;
        } else {
            script.push(('+', j + 1, new[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = (0..script.len()).filter(|&k| script[k].0 != ' ').collect();
    let near = |k: usize| changed.iter().any(|&c| c.abs_diff(k) <= CONTEXT_LINES);
    let mut out = String::new();
    if let Some(&first) = changed.first() {
        out.push_str(&format!("first difference at line {}\n", script[first].1));
    }
    let mut skipped = false;
    for (k, (tag, line, text)) in script.iter().enumerate() {
        if !near(k) {
            skipped = true;
            continue;
        }
        if skipped {
            out.push_str("   ...\n");
            skipped = false;
        }
        // Trailing spaces and a missing final newline show.
        let shown = match text.strip_suffix('\n') {
            Some(body) => format!("{body:?}"),
            None => format!("{text:?} (no newline at end)"),
        };
        out.push_str(&format!("{tag}{line:>4} {shown}\n"));
    }
    out
}

#[test]
fn a_changed_line_is_listed_with_its_number() {
    let listing = line_diff("a\nb\nc\n", "a\nB\nc\nd");
    assert_eq!(
        listing,
        "first difference at line 2\n\
         \x20   1 \"a\"\n\
         -   2 \"b\"\n\
         +   2 \"B\"\n\
         \x20   3 \"c\"\n\
         +   4 \"d\" (no newline at end)\n"
    );
}
