//! The text of the lines a report names, read when the run ends.
//!
//! Advice reads what the user's line does (`f.readlines()`, `np.load(path)`), and a report
//! may be rendered long after the program's files moved or changed; so the text of every
//! line the profile names is read into the report (`profile.source_lines`) while the files
//! are there, as they were when the run ended.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use memwarden_format::names::{escape_bytes, unescape};
use memwarden_format::report::{Profile, SourceLine, StackFrame};

/// Most lines kept.
pub const MAX_LINES: usize = 4000;
/// Longest text kept, in characters.
pub const MAX_CHARS: usize = 240;
/// Largest source file read.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// The text of `file:line` in `profile.source_lines`.
pub fn text<'a>(profile: &'a Profile, frame: &StackFrame) -> Option<&'a str> {
    profile
        .source_lines
        .binary_search_by(|s| (s.file.as_str(), s.line).cmp(&(frame.file.as_str(), frame.line)))
        .ok()
        .map(|i| profile.source_lines[i].text.as_str())
}

/// Reads the lines named by the profile's stacks and tables (and by `more`, such as the
/// per-process stacks) into `profile.source_lines`, relative paths taken from `cwd` (the
/// command's working directory), the text of the files in `given` (code that is no file
/// on disk, such as a notebook's cells, by the name its frames carry) taken from there.
/// Files that cannot be read are left out.
pub fn attach<'a>(
    profile: &mut Profile,
    cwd: &str,
    more: impl IntoIterator<Item = &'a StackFrame>,
    given: &BTreeMap<String, String>,
) {
    let mut wanted: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut want = |frame: &StackFrame| {
        let named = !frame.file.starts_with('<') || given.contains_key(&frame.file);
        if frame.line > 0 && named && wanted.len() < MAX_LINES {
            wanted.insert((frame.file.clone(), frame.line));
        }
    };
    // Most telling first, so the bound cuts the least useful.
    for line in &profile.lines {
        want(&line.frame);
    }
    let stacks = [
        &profile.at_peak,
        &profile.leaked,
        &profile.flame_at_peak,
        &profile.flame_leaked,
    ];
    for list in stacks {
        for entry in list.iter() {
            entry.stack.iter().for_each(&mut want);
        }
    }
    for stack in &profile.timeline_stacks {
        stack.iter().for_each(&mut want);
    }
    for frame in more {
        want(frame);
    }
    let mut by_file: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (file, line) in wanted {
        by_file.entry(file).or_default().push(line);
    }
    let base = unescape(cwd).map(|b| PathBuf::from(OsStr::from_bytes(&b)));
    let mut found = Vec::new();
    for (file, lines) in by_file {
        let text = match given.get(&file) {
            Some(text) => text.clone().into_bytes(),
            None => match read(&file, base.as_deref()) {
                Some(text) => text,
                None => continue,
            },
        };
        let all: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        for line in lines {
            if let Some(bytes) = all.get(line as usize - 1) {
                found.push(SourceLine {
                    file: file.clone(),
                    line,
                    text: tidy(bytes),
                });
            }
        }
    }
    found.sort_by(|a, b| (a.file.as_str(), a.line).cmp(&(b.file.as_str(), b.line)));
    profile.source_lines = found;
}

fn read(file: &str, base: Option<&Path>) -> Option<Vec<u8>> {
    let path = PathBuf::from(OsStr::from_bytes(&unescape(file)?));
    let path = match (path.is_relative(), base) {
        (true, Some(base)) => base.join(path),
        _ => path,
    };
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return None;
    }
    std::fs::read(path).ok()
}

/// The line without indentation or line end, cut at [`MAX_CHARS`], as text.
fn tidy(bytes: &[u8]) -> String {
    let text = escape_bytes(bytes);
    let trimmed = text.trim();
    match trimmed.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &trimmed[..cut]),
        None => trimmed.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memwarden_format::report::{ProfileMode, StackBytes};

    #[test]
    fn lines_are_read_relative_to_the_commands_directory() {
        let dir = std::env::temp_dir().join(format!("mw-sources-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pkg")).expect("dir");
        let long = "x".repeat(400);
        std::fs::write(
            dir.join("pkg/train.py"),
            [
                b"import json\n    rows = f.readlines()  \n",
                long.as_bytes(),
                b"\n\xffbad = 1\n",
            ]
            .concat(),
        )
        .expect("write");
        let mut profile = Profile::empty(ProfileMode::Exact);
        let frame = |line| StackFrame {
            file: "pkg/train.py".to_owned(),
            line,
            function: "main".to_owned(),
            imports: None,
        };
        profile.at_peak.push(StackBytes {
            stack: vec![frame(2), frame(3), frame(99)],
            bytes: 1,
            requested_bytes: None,
            reserved_bytes: None,
        });
        let missing = StackFrame {
            file: "gone.py".to_owned(),
            ..frame(1)
        };
        attach(
            &mut profile,
            dir.to_str().expect("utf-8"),
            [&missing],
            &BTreeMap::new(),
        );
        assert_eq!(text(&profile, &frame(2)), Some("rows = f.readlines()"));
        let cut = text(&profile, &frame(3)).expect("read");
        assert_eq!(cut.chars().count(), MAX_CHARS + 1);
        assert_eq!(text(&profile, &frame(99)), None);
        assert_eq!(text(&profile, &missing), None);
        std::fs::write(dir.join("pkg/train.py"), b"\xffbad = 1\n").expect("write");
        attach(
            &mut profile,
            dir.to_str().expect("utf-8"),
            [],
            &BTreeMap::new(),
        );
        assert_eq!(text(&profile, &frame(1)), None, "line 1 was not named");
        profile.lines.push(memwarden_format::report::LineStats {
            frame: frame(1),
            peak_bytes: 1,
            small_object_bytes: 0,
            leaked_bytes: 0,
            allocated_bytes: 0,
            allocations: 0,
        });
        attach(
            &mut profile,
            dir.to_str().expect("utf-8"),
            [],
            &BTreeMap::new(),
        );
        assert_eq!(text(&profile, &frame(1)), Some("\\xffbad = 1"));
        std::fs::remove_dir_all(dir).ok();
    }
}
