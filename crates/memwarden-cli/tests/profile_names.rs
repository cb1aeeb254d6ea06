//! Names kept losslessly and imports charged to the import line, end to end: file names
//! that are not UTF-8, function names with line breaks, `;` and lone surrogates, a
//! non-UTF-8 argument, and `import numpy` under `--profile` (folded, and raw with
//! `--raw-frames`). The escaping scheme is `memwarden_format::names`.

mod util;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde_json::Value;
use util::{line_of, memwarden, python, succeed};

const MIB: u64 = 1 << 20;

/// A finished `memwarden run --profile=exact --json --folded` in `dir`.
struct Profiled {
    code: i32,
    stderr: String,
    report: Value,
    folded: String,
}

/// Runs `python <script>` (any bytes in the script's name) under `memwarden run` with
/// `options`, in `dir`.
fn profile(dir: &Path, options: &[&str], script: &OsStr) -> Profiled {
    let json = dir.join("report.json");
    let folded = dir.join("peak.folded");
    let output = memwarden()
        .args(["run", "--profile=exact", "--json"])
        .arg(&json)
        .arg("--folded")
        .arg(&folded)
        .args(options)
        .arg("--")
        .arg(python())
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("memwarden runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| panic!("no report, or one that is not JSON; stderr:\n{stderr}"));
    let folded = std::fs::read_to_string(&folded).expect("folded stacks written as UTF-8");
    Profiled {
        code: output.status.code().unwrap_or(-1),
        stderr,
        report,
        folded,
    }
}

/// Every frame of every stack list of the profile (`at_peak`, `leaked`, `top_lines`).
fn all_frames(report: &Value) -> Vec<Value> {
    let profile = &report["profile"];
    let mut frames = Vec::new();
    for list in ["at_peak", "leaked"] {
        for entry in profile[list].as_array().expect("a stack list") {
            frames.extend(entry["stack"].as_array().expect("a stack").iter().cloned());
        }
    }
    for line in profile["top_lines"].as_array().expect("top_lines") {
        frames.push(line["frame"].clone());
    }
    frames
}

/// Bytes at the peak of stacks whose innermost frame passes `leaf`.
fn bytes_where(report: &Value, leaf: impl Fn(&Value) -> bool) -> u64 {
    report["profile"]["at_peak"]
        .as_array()
        .expect("at_peak")
        .iter()
        .filter(|entry| leaf(&entry["stack"][0]))
        .map(|entry| entry["bytes"].as_u64().unwrap_or(0))
        .sum()
}

/// Checks the folded format: one stack per line, `FRAME;FRAME;... BYTES`, each frame
/// `function (file[:line])`, no control character anywhere.
fn check_folded(folded: &str) {
    assert!(!folded.is_empty());
    for line in folded.lines() {
        assert!(!line.contains(|c: char| c.is_control()), "{line:?}");
        let (stack, count) = line.rsplit_once(' ').expect("a count");
        assert!(count.parse::<u64>().is_ok(), "{line:?}");
        for frame in stack.split(';') {
            assert!(
                frame.ends_with(')') && frame.contains(" ("),
                "frame {frame:?} of {line:?}"
            );
        }
    }
}

const MAIN: &[u8] = b"\
import os
def run(name, mib):
    source = f'def hold():\\n    return bytearray({mib} * 1024 * 1024)\\nkept = hold()\\n'
    with open(name, 'w') as f:
        f.write(source)
    scope = {}
    exec(compile(source, os.fsdecode(name), 'exec'), scope)
    return scope['kept']
kept = [run(b'a\\xff.py', 30), run(b'a\\xfe.py', 20)]
print(len(kept))
";

#[test]
fn file_names_that_differ_only_in_bytes_that_are_not_utf8_stay_two_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = OsStr::from_bytes(b"main\xfd.py");
    std::fs::write(dir.path().join(script), MAIN).expect("write script");
    let run = profile(dir.path(), &[], script);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for (file, mib) in [(r"a\xff.py", 30), (r"a\xfe.py", 20)] {
        let bytes = bytes_where(&run.report, |leaf| {
            leaf["file"] == file && leaf["line"] == 2 && leaf["function"] == "hold"
        });
        assert!(
            util::within(bytes, mib * MIB, 0.01),
            "{file}: {bytes} bytes; {:#}",
            run.report["profile"]["at_peak"]
        );
        assert!(
            run.stderr.contains(&format!("{file}:2  hold")),
            "{}",
            run.stderr
        );
        assert!(
            run.folded.contains(&format!("hold ({file}:2)")),
            "{}",
            run.folded
        );
    }
    // The command itself was passed on as given, and reported with the same escapes.
    assert_eq!(run.report["command"][1], r"main\xfd.py");
    assert!(run.report["processes"][0]["cmdline"]
        .as_array()
        .expect("cmdline")
        .iter()
        .any(|arg| arg == r"main\xfd.py"));
    assert!(run.report["cwd"].as_str().is_some_and(|cwd| cwd.ends_with(
        dir.path()
            .file_name()
            .and_then(OsStr::to_str)
            .expect("name")
    )));
    check_folded(&run.folded);
}

const ODD_FUNCTIONS: &str = "\
def make(name, mib):
    def f():
        return bytearray(mib * 1024 * 1024)  # @alloc
    f.__code__ = f.__code__.replace(co_name=name, co_qualname=name)
    return f
kept = [make(name, mib)() for name, mib in [('two\\nlines;semi', 11), ('lone\\ud800', 12), ('esc\\udcff', 13), ('back\\\\slash', 14)]]
print(len(kept))
";

#[test]
fn function_names_with_line_breaks_semicolons_and_lone_surrogates_are_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("workload.py"), ODD_FUNCTIONS).expect("write script");
    let run = profile(dir.path(), &[], OsStr::new("workload.py"));
    assert_eq!(run.code, 0, "{}", run.stderr);
    // JSON keeps valid UTF-8 as it is (a line break is JSON's own \n); a lone surrogate
    // is the bytes Python would encode it to, written \xNN; a backslash is doubled.
    for (function, folded, text, mib) in [
        (
            "two\nlines;semi",
            r"two\x0alines\x3bsemi",
            r"two\x0alines;semi",
            11,
        ),
        (
            r"lone\xed\xa0\x80",
            r"lone\xed\xa0\x80",
            r"lone\xed\xa0\x80",
            12,
        ),
        (r"esc\xff", r"esc\xff", r"esc\xff", 13),
        (r"back\\slash", r"back\\slash", r"back\\slash", 14),
    ] {
        let bytes = bytes_where(&run.report, |leaf| {
            leaf["function"] == function
                && leaf["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("workload.py"))
        });
        assert!(
            util::within(bytes, mib * MIB, 0.01),
            "{function:?}: {bytes} bytes; {:#}",
            run.report["profile"]["at_peak"]
        );
        assert!(
            run.folded.contains(&format!("{folded} (")),
            "{folded}\n{}",
            run.folded
        );
        assert!(
            run.stderr.contains(&format!("  {text}\n")),
            "{text}\n{}",
            run.stderr
        );
    }
    check_folded(&run.folded);
    assert_eq!(
        run.folded.lines().count(),
        run.folded.matches('\n').count(),
        "one stack per line"
    );
}

const IMPORTS: &str = "\
import os, sys
sys.path.insert(0, os.getcwd())
import numpy as np  # @numpy
import mymod  # @mymod
kept = np.ones(8 * 1024 * 1024 // 8)
print(len(mymod.DATA))
";

const MYMOD: &str = "\
import json
DATA = bytearray(24 * 1024 * 1024)
";

#[test]
fn imports_are_charged_to_the_import_line_unless_raw_frames_are_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("workload.py"), IMPORTS).expect("write script");
    std::fs::write(dir.path().join("mymod.py"), MYMOD).expect("write module");
    let captures = dir.path().join("captures");
    let run = profile(
        dir.path(),
        &["--capture-dir", captures.to_str().expect("utf-8")],
        OsStr::new("workload.py"),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let numpy_line = line_of(IMPORTS, "numpy");
    let is_workload = |frame: &Value, line: u64| {
        frame["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("/workload.py"))
            && frame["line"] == line
    };
    // Everything numpy's import allocated (its modules, OpenBLAS's buffers) is one stack:
    // the import line, named with the module.
    let numpy = bytes_where(&run.report, |leaf| {
        is_workload(leaf, numpy_line) && leaf["imports"] == "numpy"
    });
    assert!(
        numpy > MIB,
        "{numpy} bytes; {:#}",
        run.report["profile"]["at_peak"]
    );
    let frames = all_frames(&run.report);
    assert!(
        !frames.iter().any(|f| f["file"]
            .as_str()
            .is_some_and(|f| f.starts_with("<frozen importlib"))),
        "import machinery left in {frames:#?}"
    );
    let through_import: Vec<&Value> = run.report["profile"]["at_peak"]
        .as_array()
        .expect("at_peak")
        .iter()
        .filter(|e| {
            e["stack"]
                .as_array()
                .is_some_and(|s| s.iter().any(|f| is_workload(f, numpy_line)))
        })
        .collect();
    assert_eq!(
        through_import.len(),
        1,
        "numpy's own frames are folded into its import: {through_import:#?}"
    );
    assert!(
        run.stderr.contains(&format!(
            "workload.py:{numpy_line}  <module> [import numpy]"
        )),
        "{}",
        run.stderr
    );
    assert!(!run.folded.contains("<frozen importlib"), "{}", run.folded);
    assert!(
        run.folded.contains(&format!(
            "<module> [import numpy] ({}/workload.py:{numpy_line}) ",
            dir.path().display()
        )),
        "{}",
        run.folded
    );
    // The user's own module keeps its lines, its import noted on the line above.
    let mymod = run.report["profile"]["at_peak"]
        .as_array()
        .expect("at_peak")
        .iter()
        .find(|e| {
            e["stack"][0]["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("/mymod.py"))
        })
        .unwrap_or_else(|| panic!("no mymod.py stack: {:#}", run.report["profile"]["at_peak"]));
    assert_eq!(mymod["stack"][0]["line"], 2);
    assert!(util::within(
        mymod["bytes"].as_u64().unwrap_or(0),
        24 * MIB,
        0.01
    ));
    assert!(is_workload(&mymod["stack"][1], line_of(IMPORTS, "mymod")));
    assert_eq!(mymod["stack"][1]["imports"], "mymod");

    // The same captures, raw: the machinery is there and nothing is marked as an import.
    let stdout = succeed(
        memwarden()
            .args(["analyze", "--raw-frames", "--json", "-"])
            .arg(&captures),
    );
    let raw: Value = serde_json::from_str(&stdout).expect("JSON");
    let raw_frames: Vec<Value> = raw["at_peak"]
        .as_array()
        .expect("at_peak")
        .iter()
        .flat_map(|e| e["stack"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(raw_frames
        .iter()
        .any(|f| f["file"] == "<frozen importlib._bootstrap>"));
    assert!(raw_frames.iter().all(|f| f.get("imports").is_none()));
    // And folded again by `analyze` without the flag.
    let output = memwarden()
        .args(["analyze"])
        .arg(&captures)
        .output()
        .expect("memwarden runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("[import numpy]") && !text.contains("<frozen importlib"),
        "{text}"
    );
}

#[test]
fn an_argument_that_is_not_utf8_names_itself() {
    let output = memwarden()
        .arg("run")
        .arg("--budget")
        .arg(OsStr::from_bytes(b"1\xffGiB"))
        .args(["--", "true"])
        .output()
        .expect("memwarden runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(r"memwarden: error: argument 3 is not valid UTF-8: '1\xffGiB'"),
        "{stderr}"
    );
}
