//! Helpers for the integration tests: they run the real `memwarden` binary on real commands.

#![allow(dead_code, missing_docs)]

pub mod browser;
pub mod ledger;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// A command's stdout and stderr, for messages.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `command`, failing the test with its output unless it succeeds; its stdout.
pub fn succeed(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    assert!(output.status.success(), "{command:?}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The Python interpreter with numpy: `MEMWARDEN_TEST_PYTHON`, else the workspace's `.venv`
/// (made by `scripts/test.sh`), else `python3`. Panics with what to do when numpy is missing,
/// because these tests must not pass without running.
pub fn python() -> PathBuf {
    let candidates = [
        std::env::var_os("MEMWARDEN_TEST_PYTHON").map(PathBuf::from),
        Some(workspace_root().join(".venv/bin/python")).filter(|p| p.exists()),
        Some(PathBuf::from("python3")),
    ];
    for python in candidates.into_iter().flatten() {
        let ok = Command::new(&python)
            .args(["-c", "import numpy"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return python;
        }
    }
    panic!("these tests need Python with numpy: run scripts/test.sh, or set MEMWARDEN_TEST_PYTHON");
}

/// Set to `1` by `scripts/test.sh`, the README's test command (which CI runs): that script
/// installs what the tests need on a machine that can run them all, so there a test that
/// cannot run is a failure, not a skip.
pub const REQUIRE_ALL: &str = "MEMWARDEN_TEST_REQUIRE_ALL";

/// Says that `test` cannot run on this machine, and why: a `SKIPPED <test>: <why>` line, or
/// a failure with that reason when [`REQUIRE_ALL`] is `1`. Skipped loudly, never silently
/// green. The line goes to the real stderr, past the test harness's capture of
/// `eprintln!`, so that `cargo test` shows it even for a passing test (nextest shows it with
/// `--no-capture` or `--success-output immediate`).
pub fn skip(test: &str, why: &str) {
    assert!(
        std::env::var(REQUIRE_ALL).as_deref() != Ok("1"),
        "{test} cannot run here: {why} ({REQUIRE_ALL}=1, as scripts/test.sh sets, requires it)"
    );
    let line = format!("SKIPPED {test}: {why} (scripts/test.sh requires it)\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

/// Whether `test` can run: true when `capability` is there; else [`skip`] with its reason,
/// then false.
pub fn require(test: &str, capability: Result<(), String>) -> bool {
    match capability {
        Ok(()) => true,
        Err(why) => {
            skip(test, &why);
            false
        }
    }
}

/// A capability: whether this process may make a private mount namespace (`unshare -m`,
/// which needs root), for tests that make a file system read-only for one command.
pub fn mount_namespace() -> Result<(), String> {
    match Command::new("unshare").args(["-m", "true"]).output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!(
            "unshare -m is not permitted here (needs root): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(e) => Err(format!("unshare (util-linux) does not run: {e}")),
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

pub fn memwarden() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_memwarden"));
    command.env("MEMWARDEN_NO_GPU", "1");
    // Profiled runs write an HTML page by default: into the target folder, not the tree.
    command.env(
        "MEMWARDEN_REPORT_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("html-reports"),
    );
    command
}

/// A finished run: its output and its JSON report.
pub struct Run {
    pub output: Output,
    pub report: Option<Value>,
    pub dir: tempfile::TempDir,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output
            .status
            .code()
            .expect("memwarden exited normally")
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn report(&self) -> &Value {
        self.report
            .as_ref()
            .unwrap_or_else(|| panic!("no report written; stderr:\n{}", self.stderr()))
    }

    pub fn u64_at(&self, pointer: &str) -> u64 {
        self.report()
            .pointer(pointer)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{pointer} missing or not a count in {:#}", self.report()))
    }

    pub fn str_at(&self, pointer: &str) -> String {
        self.report()
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{pointer} missing or not a string"))
            .to_owned()
    }
}

/// Runs `memwarden run --json <tmp>/report.json <options> -- <command>`.
pub fn run(options: &[&str], command: &[&str]) -> Run {
    run_in(tempfile::tempdir().expect("tempdir"), options, command)
}

/// Like [`run`], in a directory prepared by the caller (it becomes the working directory).
pub fn run_in(dir: tempfile::TempDir, options: &[&str], command: &[&str]) -> Run {
    run_in_with(dir, options, command, |_| {})
}

/// Like [`run_in`], with `configure` setting up memwarden's own command (its environment).
pub fn run_in_with<S: AsRef<std::ffi::OsStr>>(
    dir: tempfile::TempDir,
    options: &[&str],
    command: &[S],
    configure: impl FnOnce(&mut Command),
) -> Run {
    let json = dir.path().join("report.json");
    let mut memwarden = memwarden();
    configure(&mut memwarden);
    let output = memwarden
        .arg("run")
        .arg("--json")
        .arg(&json)
        .args(options)
        .arg("--")
        .args(command)
        .current_dir(dir.path())
        .output()
        .expect("memwarden runs");
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    Run {
        output,
        report,
        dir,
    }
}

/// Runs a Python snippet (with numpy available) under memwarden.
pub fn run_python(options: &[&str], code: &str) -> Run {
    let python = python();
    run(options, &[python.to_str().expect("utf-8 path"), "-c", code])
}

/// Writes `script` as `workload.py` in a fresh directory and runs it with `python` and
/// `args` under `memwarden run <options>`. Reports name the file `workload.py`.
pub fn run_script(options: &[&str], python: &Path, script: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("workload.py"), script).expect("write script");
    let python = python.to_str().expect("utf-8 path").to_owned();
    let mut command = vec![python.as_str(), "workload.py"];
    command.extend_from_slice(args);
    run_in(dir, options, &command)
}

pub fn within(actual: u64, expected: u64, tolerance: f64) -> bool {
    (actual as f64 - expected as f64).abs() <= expected as f64 * tolerance
}

/// Python that allocates and touches `mib` MiB with numpy, holds it, and prints its own
/// `ru_maxrss` in bytes on stdout: the true peak to compare with.
pub fn numpy_hold(mib: u64, hold_s: f64) -> String {
    format!(
        "import numpy as np, time, resource\n\
         a = np.ones({mib} * 1024 * 1024 // 8)\n\
         time.sleep({hold_s})\n\
         print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
    )
}

/// The line of `script` carrying the marker `# @name` (1-based).
pub fn line_of(script: &str, name: &str) -> u64 {
    let marker = format!("# @{name}");
    script
        .lines()
        .position(|l| l.trim_end().ends_with(&marker))
        .map(|i| i as u64 + 1)
        .unwrap_or_else(|| panic!("no marker {marker}"))
}

/// Bytes of the stacks in `/profile/<list>` (`at_peak` or `leaked`) that pass through
/// workload.py at the line marked `# @name`.
pub fn bytes_at(run: &Run, script: &str, list: &str, name: &str) -> u64 {
    let line = line_of(script, name);
    run.report()
        .pointer(&format!("/profile/{list}"))
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("profile.{list} missing: {}", run.stderr()))
        .iter()
        .filter(|entry| {
            entry["stack"].as_array().is_some_and(|stack| {
                stack.iter().any(|frame| {
                    frame["file"]
                        .as_str()
                        .is_some_and(|f| f.ends_with("workload.py"))
                        && frame["line"].as_u64() == Some(line)
                })
            })
        })
        .map(|entry| entry["bytes"].as_u64().unwrap_or(0))
        .sum()
}

/// pyenv's interpreter of `version` (e.g. "3.12"), if installed: the newest of that minor
/// version (`pyenv versions`), under its `pyenv prefix`.
pub fn pyenv_python(version: &str) -> Option<PathBuf> {
    let output = Command::new("pyenv")
        .args(["versions", "--bare"])
        .output()
        .ok()?;
    let installed = String::from_utf8_lossy(&output.stdout).into_owned();
    let full = installed
        .lines()
        .map(str::trim)
        .rfind(|v| {
            v.starts_with(&format!("{version}."))
                && v[version.len() + 1..].chars().all(|c| c.is_ascii_digit())
        })?
        .to_owned();
    let prefix = Command::new("pyenv")
        .args(["prefix", &full])
        .output()
        .ok()?;
    let root = PathBuf::from(String::from_utf8_lossy(&prefix.stdout).trim());
    Some(root.join("bin").join(format!("python{version}")))
}
