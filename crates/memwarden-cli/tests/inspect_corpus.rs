//! The verdict corpus. Hostile files from `make_hostile.py` (each citing the public bypass it
//! answers) are first proved live: the loader each one targets runs on it in a throwaway
//! directory and must leave the payload's `CANARY` file there. Then `memwarden inspect` must
//! flag every one of them (exit 3, never 0, never 6), and pass every benign artifact that
//! `make_fixtures.py` writes (exit 0).
//!
//! torch is not in the test venv: files whose loader is torch are proved live by a stand-in
//! that reads them as torch's source does (`check` in the manifest), and the test says their
//! torch claim rests on torch's source. With `MEMWARDEN_TEST_PYTHON` set to an interpreter
//! that has torch (and numpy, joblib, scikit-learn, h5py), `torch.load` itself runs on them.

mod util;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

const FIXTURES: &str = "crates/memwarden-inspect/tests/fixtures";
const LOADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Some payloads start a child (`subprocess.Popen`) that may finish after the loader exits.
const CANARY_GRACE: Duration = Duration::from_secs(5);
const LOADERS: [&str; 6] = ["pickle", "pickle-all", "joblib", "numpy", "torch", "none"];
const FAMILIES: [&str; 7] = [
    "allowlist-wideness",
    "stream-after-stop",
    "format-by-content",
    "torch-zip",
    "numpy",
    "joblib",
    "broken-stream",
];

/// Runs one manifest entry's loader on its file, in the current directory (its own
/// docstring says how).
const HARNESS: &str = "load_fixture.py";

struct Fixture {
    file: String,
    family: String,
    loader: String,
    source: String,
    via: String,
    check: String,
}

fn generate(script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(util::python())
        .arg(util::workspace_root().join(FIXTURES).join(script))
        .arg(dir.path())
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    dir
}

fn hostile() -> (tempfile::TempDir, Vec<Fixture>) {
    let dir = generate("make_hostile.py");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("manifest.json")).expect("manifest.json"),
    )
    .expect("manifest is JSON");
    let text = |entry: &Value, key: &str| entry[key].as_str().unwrap_or("").to_owned();
    let fixtures = manifest
        .as_array()
        .expect("a list")
        .iter()
        .map(|entry| Fixture {
            file: text(entry, "file"),
            family: text(entry, "family"),
            loader: text(entry, "loader"),
            source: text(entry, "source"),
            via: text(entry, "via"),
            check: text(entry, "check"),
        })
        .collect();
    (dir, fixtures)
}

/// The benign artifacts `make_fixtures.py` lists in `benign.json`.
fn benign() -> (tempfile::TempDir, Vec<String>) {
    let dir = generate("make_fixtures.py");
    let list: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("benign.json")).expect("benign.json"),
    )
    .expect("a list of names");
    (dir, list)
}

/// Runs `work` over `items` on a few threads, keeping the input order of the results.
fn parallel<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let index = {
                    let mut next = next.lock().expect("lock");
                    *next += 1;
                    *next - 1
                };
                let Some(item) = items.get(index) else { break };
                let result = work(item);
                results.lock().expect("lock")[index] = Some(result);
            });
        }
    });
    results
        .into_inner()
        .expect("lock")
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

enum Liveness {
    /// The payload ran: `how` says which loader (torch, or a stand-in check).
    Live(String),
    /// Torch is not here and no stand-in applies: the claim rests on torch's source.
    RestsOnTorch,
    NotRunnable(String),
    Dud(String),
}

fn tail(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    text.trim()
        .lines()
        .last()
        .unwrap_or("")
        .chars()
        .take(140)
        .collect()
}

fn run_loader(python: &Path, harness: &Path, corpus: &Path, fixture: &Fixture) -> Liveness {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let stdout = sandbox.path().join("stdout");
    let stderr = sandbox.path().join("stderr");
    let mut child = Command::new(python)
        .arg(harness)
        .arg(&fixture.loader)
        .arg(corpus.join(&fixture.file))
        .arg(&fixture.via)
        .arg(&fixture.check)
        .current_dir(sandbox.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("python starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > LOADER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let canary = sandbox.path().join("CANARY");
    let waited = Instant::now();
    while !canary.exists() && waited.elapsed() < CANARY_GRACE {
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = std::fs::read(&stdout).unwrap_or_default();
    let errors = std::fs::read(&stderr).unwrap_or_default();
    let ran = String::from_utf8_lossy(&said)
        .lines()
        .find_map(|l| l.strip_prefix("RAN ").map(str::to_owned));
    if canary.exists() {
        return Liveness::Live(ran.unwrap_or_else(|| fixture.loader.clone()));
    }
    match status.and_then(|s| s.code()) {
        Some(77) if fixture.loader == "torch" => Liveness::RestsOnTorch,
        Some(77) => Liveness::NotRunnable(format!("no way to run loader {}", fixture.loader)),
        None => Liveness::Dud(format!(
            "timed out after {}s without CANARY",
            LOADER_TIMEOUT.as_secs()
        )),
        Some(code) => Liveness::Dud(format!("exit {code}, no CANARY: {}", tail(&errors))),
    }
}

#[test]
fn the_manifest_covers_every_family_and_cites_its_sources() {
    let (dir, fixtures) = hostile();
    let mut problems = String::new();
    for family in FAMILIES {
        let count = fixtures.iter().filter(|f| f.family == family).count();
        if count < 2 {
            let _ = writeln!(
                problems,
                "family {family}: {count} fixtures (want at least 2)"
            );
        }
    }
    for f in &fixtures {
        if !FAMILIES.contains(&f.family.as_str()) {
            let _ = writeln!(problems, "{}: unknown family {}", f.file, f.family);
        }
        if !LOADERS.contains(&f.loader.as_str()) {
            let _ = writeln!(problems, "{}: unknown loader {}", f.file, f.loader);
        }
        if !(f.source.contains("https://") || f.source.contains("CVE-")) {
            let _ = writeln!(
                problems,
                "{}: source {:?} is no URL or CVE",
                f.file, f.source
            );
        }
        if f.loader == "none" && f.check.is_empty() {
            let _ = writeln!(problems, "{}: loader none needs a check", f.file);
        }
        if !dir.path().join(&f.file).is_file() {
            let _ = writeln!(problems, "{}: not written", f.file);
        }
    }
    assert!(problems.is_empty(), "{problems}");
}

#[test]
fn hostile_fixtures_are_live() {
    let (dir, fixtures) = hostile();
    let harness = util::workspace_root().join(FIXTURES).join(HARNESS);
    let python = util::python();
    let outcomes = parallel(&fixtures, |f| run_loader(&python, &harness, dir.path(), f));
    let mut table = String::from("fixture | loader | result\n");
    let mut duds = Vec::new();
    for (f, outcome) in fixtures.iter().zip(&outcomes) {
        let result = match outcome {
            Liveness::Live(how) if how.starts_with("check") && f.loader == "torch" => format!(
                "live under the stand-in {how}; that torch reads it so rests on torch's source"
            ),
            Liveness::Live(how) => format!("live ({how})"),
            Liveness::RestsOnTorch => "not run: rests on torch's source".to_owned(),
            Liveness::NotRunnable(why) => format!("not run: {why}"),
            Liveness::Dud(why) => {
                duds.push(f.file.clone());
                format!("DUD: {why}")
            }
        };
        let _ = writeln!(table, "{} | {} | {result}", f.file, f.loader);
    }
    println!("{table}");
    assert!(
        duds.is_empty(),
        "fixtures whose payload did not run: {duds:?}\n{table}"
    );
    let live = outcomes
        .iter()
        .filter(|o| matches!(o, Liveness::Live(_)))
        .count();
    assert!(
        live * 10 >= fixtures.len() * 9,
        "at least 90% proved live here: {live} of {}\n{table}",
        fixtures.len()
    );
}

/// `memwarden inspect FILE --json -`: the exit status and what the report says of the file.
fn inspect_one(path: &Path) -> (Option<i32>, String) {
    let output: Output = util::memwarden()
        .arg("inspect")
        .arg(path)
        .args(["--json", "-"])
        .output()
        .expect("memwarden runs");
    let said = match serde_json::from_slice::<Value>(&output.stdout) {
        Ok(report) => {
            if let Some(file) = report["files"].get(0) {
                let mut said = file["verdict"].as_str().unwrap_or("?").to_owned();
                let worst: Vec<String> = file["imports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(file["findings"].as_array().into_iter().flatten())
                    .filter(|i| i["severity"].as_str().is_some_and(|s| s != "none"))
                    .take(3)
                    .map(|i| {
                        let what = match (i["module"].as_str(), i["name"].as_str()) {
                            (Some(m), Some(n)) => format!("{m}.{n}"),
                            _ => i["message"].as_str().unwrap_or("").to_owned(),
                        };
                        format!("{} {what}", i["severity"].as_str().unwrap_or(""))
                    })
                    .collect();
                if !worst.is_empty() {
                    let _ = write!(said, " [{}]", worst.join("; "));
                }
                said
            } else if let Some(error) = report["unreadable"].get(0) {
                format!("unreadable: {}", error["error"].as_str().unwrap_or("?"))
            } else {
                format!("no file in the report: {report}")
            }
        }
        Err(_) => format!("no JSON; stderr: {}", tail(&output.stderr)),
    };
    (output.status.code(), said.chars().take(220).collect())
}

#[test]
fn every_hostile_fixture_is_flagged() {
    let (dir, fixtures) = hostile();
    let results = parallel(&fixtures, |f| inspect_one(&dir.path().join(&f.file)));
    let mut failures = String::new();
    for (f, (code, said)) in fixtures.iter().zip(&results) {
        let why = match code {
            Some(3) => continue,
            Some(0) => "MISSED (exit 0)".to_owned(),
            Some(6) => "UNREADABLE (exit 6)".to_owned(),
            other => format!("exit {other:?}"),
        };
        let _ = writeln!(failures, "{} | {} | {why} | {said}", f.file, f.family);
    }
    let flagged = fixtures.len() - failures.lines().count();
    println!("flagged {flagged} of {} hostile fixtures", fixtures.len());
    assert!(
        failures.is_empty(),
        "hostile fixtures not flagged with exit 3 ({flagged} of {} were):\nfile | family | result | verdict\n{failures}",
        fixtures.len()
    );
}

#[test]
fn benign_artifacts_pass() {
    let (dir, names) = benign();
    assert!(names.len() >= 30, "the benign corpus: {names:?}");
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.path().join(n)).collect();
    for path in &paths {
        assert!(path.is_file(), "{} listed but not written", path.display());
    }
    let results = parallel(&paths, |p| inspect_one(p));
    let mut failures = String::new();
    for (name, (code, said)) in names.iter().zip(&results) {
        if *code != Some(0) {
            let _ = writeln!(failures, "{name} | exit {code:?} | {said}");
        }
    }
    assert!(
        failures.is_empty(),
        "benign artifacts stopped ({} of {}):\nfile | result | verdict\n{failures}",
        failures.lines().count(),
        names.len()
    );
}
