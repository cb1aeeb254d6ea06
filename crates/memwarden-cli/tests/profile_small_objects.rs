//! Small Python objects are marked: memory CPython's small-object allocator (pymalloc) takes
//! from the system, one arena at a time, is charged to the line that needed it under an
//! innermost `[small objects]` frame (`<python objects>`, line 0), in sampled and exact
//! mode and on every CPython whose frames are read; memory that is not small objects (a
//! numpy buffer) is not marked. Scripts mark the lines they expect with `# @name`.

mod util;

use memwarden_format::capture::{SMALL_OBJECTS_FILE, SMALL_OBJECTS_FUNCTION};
use serde_json::Value;
use util::{line_of, pyenv_python, python, run_script, Run};

const MIB: u64 = 1 << 20;

/// The modes the tests run in, as `--profile` options.
const MODES: [&str; 2] = ["--profile", "--profile=exact"];

/// About 1.5 million small tuples of two ints, held by a list at the peak: some 180 MB of
/// pymalloc arenas (a tuple of two is 56 bytes, an int 32), against a 12 MB list.
const TUPLES: &str = "\
def build(n):
    return [(i, i + 1) for i in range(n)]  # @build
data = build(1_500_000)
print(len(data))
";

/// A 200 MiB numpy buffer (malloc'd, and mapped by glibc itself) held at the peak.
const NUMPY: &str = "\
import numpy as np
def load():
    return np.ones(200 * 1024 * 1024 // 8)  # @ones
a = load()
print(a.sum())
";

/// Whether `frame` is the small-objects frame.
fn is_small_objects(frame: &Value) -> bool {
    frame["file"] == SMALL_OBJECTS_FILE
        && frame["function"] == SMALL_OBJECTS_FUNCTION
        && frame["line"] == 0
}

/// The entries of `profile.at_peak`.
fn at_peak(run: &Run) -> Vec<Value> {
    run.report()
        .pointer("/profile/at_peak")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| panic!("profile.at_peak missing: {}", run.stderr()))
}

/// Bytes at the peak of the stacks that read `[small objects]`, then workload.py:line.
fn small_objects_at_line(run: &Run, line: u64) -> u64 {
    at_peak(run)
        .iter()
        .filter(|entry| {
            entry["stack"].as_array().is_some_and(|stack| {
                stack.len() >= 2
                    && is_small_objects(&stack[0])
                    && stack[1]["file"]
                        .as_str()
                        .is_some_and(|f| f.ends_with("workload.py"))
                    && stack[1]["line"].as_u64() == Some(line)
            })
        })
        .map(|entry| entry["bytes"].as_u64().unwrap_or(0))
        .sum()
}

/// Bytes at the peak of each stack holding a `[small objects]` frame anywhere.
fn small_objects_stacks(run: &Run) -> Vec<(u64, Value)> {
    at_peak(run)
        .into_iter()
        .filter(|entry| {
            entry["stack"]
                .as_array()
                .is_some_and(|stack| stack.iter().any(is_small_objects))
        })
        .map(|entry| (entry["bytes"].as_u64().unwrap_or(0), entry["stack"].clone()))
        .collect()
}

/// Checks that the tuples' arenas are charged to `[small objects]` under the line that
/// built them, with most of the peak.
fn check_tuples(run: &Run, what: &str) {
    assert_eq!(run.code(), 0, "{what}: {}", run.stderr());
    let line = line_of(TUPLES, "build");
    let marked = small_objects_at_line(run, line);
    let peak = run.u64_at("/profile/peak_bytes");
    assert!(
        marked >= 140 * MIB && marked as f64 >= 0.7 * peak as f64,
        "{what}: {} MiB of small objects at workload.py:{line}, of a {} MiB peak: {:#}",
        marked / MIB,
        peak / MIB,
        Value::Array(at_peak(run))
    );
    // The largest stack at the peak is those small objects.
    let top = &at_peak(run)[0]["stack"];
    assert!(is_small_objects(&top[0]), "{what}: top stack {top:#}");
    // The frame is innermost only: never below a Python frame.
    for (_, stack) in small_objects_stacks(run) {
        let frames = stack.as_array().cloned().unwrap_or_default();
        assert!(
            frames[1..].iter().all(|f| !is_small_objects(f)),
            "{what}: {stack:#}"
        );
    }
}

#[test]
fn small_objects_are_charged_under_the_line_that_needed_them() {
    for mode in MODES {
        let run = run_script(&[mode], &python(), TUPLES, &[]);
        check_tuples(&run, mode);
    }
}

#[test]
fn a_numpy_buffer_is_not_taken_for_small_objects() {
    let line = line_of(NUMPY, "ones");
    for mode in MODES {
        let run = run_script(&[mode], &python(), NUMPY, &[]);
        assert_eq!(run.code(), 0, "{mode}: {}", run.stderr());
        let stacks = small_objects_stacks(&run);
        // `import numpy` builds a few MiB of small objects, charged to the import line.
        for (bytes, stack) in &stacks {
            assert!(
                *bytes <= 12 * MIB,
                "{mode}: {} MiB in {stack:#}",
                bytes / MIB
            );
        }
        let total: u64 = stacks.iter().map(|(bytes, _)| bytes).sum();
        assert!(
            total <= 16 * MIB,
            "{mode}: {} MiB of small objects",
            total / MIB
        );
        // The buffer itself is charged to its line, unmarked.
        let top = &at_peak(&run)[0];
        let frames = top["stack"].as_array().cloned().unwrap_or_default();
        assert!(
            frames.iter().all(|f| !is_small_objects(f))
                && frames.iter().any(|f| {
                    f["file"]
                        .as_str()
                        .is_some_and(|f| f.ends_with("workload.py"))
                        && f["line"].as_u64() == Some(line)
                })
                && top["bytes"].as_u64().is_some_and(|b| b >= 195 * MIB),
            "{mode}: {top:#}"
        );
    }
}

#[test]
fn small_objects_are_marked_on_every_python_whose_frames_are_read() {
    // 3.10+ use 1 MiB arenas; the test's own interpreter (3.11) is covered above.
    for version in ["3.10", "3.12", "3.13"] {
        let interpreter = pyenv_python(version)
            .unwrap_or_else(|| panic!("Python {version} is needed (pyenv install {version})"));
        for mode in MODES {
            let run = run_script(&[mode], &interpreter, TUPLES, &[]);
            check_tuples(&run, &format!("Python {version} {mode}"));
        }
    }
    // 3.9 (256 KiB arenas) has no frame layout: its memory is charged to the process,
    // and nothing is marked.
    let Some(old) = pyenv_python("3.9") else {
        return util::skip(
            "small_objects_are_marked_on_every_python_whose_frames_are_read (its 3.9 part)",
            "Python 3.9 is needed (pyenv install 3.9)",
        );
    };
    let run = run_script(&["--profile"], &old, TUPLES, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(
        small_objects_stacks(&run).is_empty(),
        "{:#}",
        Value::Array(at_peak(&run))
    );
    assert!(run.u64_at("/profile/peak_bytes") >= 140 * MIB);
}
