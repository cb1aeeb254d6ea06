//! `memwarden report`'s exports of a real profiled run: speedscope's format, read by
//! speedscope's own importer (its web app from its npm package, in headless Chromium, the
//! file chosen as a user chooses it), folded stacks and the timeline as CSV.

mod util;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use util::browser::{browse, browser_ready};
use util::{memwarden, python, require, succeed};

const WORKLOAD: &str = r#"
import time
import numpy as np

def load():
    return np.ones(40 * 2**20 // 8)

def grow(keep):
    for _ in range(5):
        keep.append(np.ones(4 * 2**20 // 8))
        time.sleep(0.06)

def main():
    data = load()
    keep = []
    grow(keep)
    time.sleep(0.2)
    return data, keep

if __name__ == "__main__":
    main()
"#;

/// speedscope's `index.html` from its npm package: `MEMWARDEN_TEST_SPEEDSCOPE`, else where
/// `scripts/lib.sh` `ensure_speedscope` unpacks it.
fn speedscope() -> Result<PathBuf, String> {
    let path = std::env::var_os("MEMWARDEN_TEST_SPEEDSCOPE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            util::workspace_root()
                .join("target/npm/speedscope-1.25.0/package/dist/release/index.html")
        });
    path.is_file().then_some(path.clone()).ok_or_else(|| {
        format!(
            "speedscope's web app is not at {} (scripts/test.sh fetches it: npm pack speedscope)",
            path.display()
        )
    })
}

/// A profiled run of [`WORKLOAD`] in `dir`; its JSON report.
fn profiled_run(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("workload.py"), WORKLOAD).expect("script");
    let report = dir.join("report.json");
    succeed(
        memwarden()
            .args(["run", "--profile", "--json"])
            .arg(&report)
            .arg("--html")
            .arg(dir.join("run.html"))
            .arg("--")
            .arg(python())
            .arg("workload.py")
            .current_dir(dir),
    );
    report
}

fn report_to(report: &Path, args: &[&str], outputs: &[&Path]) -> String {
    let mut command = memwarden();
    command.arg("report").arg(report);
    for (flag, path) in args.iter().zip(outputs) {
        command.arg(flag).arg(path);
    }
    succeed(&mut command)
}

#[test]
fn speedscope_reads_the_export_with_its_own_importer() {
    let test = "speedscope_reads_the_export_with_its_own_importer";
    let app = speedscope();
    if !browser_ready(test) || !require(test, app.clone().map(|_| ())) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let report = profiled_run(dir.path());
    let file = dir.path().join("memory.speedscope.json");
    report_to(&report, &["--speedscope"], &[&file]);
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("written")).expect("JSON");
    assert_eq!(
        written["$schema"],
        "https://www.speedscope.app/file-format-schema.json"
    );
    let first = &written["profiles"][0];
    assert_eq!(first["unit"], "bytes");
    let weights: u64 = first["weights"]
        .as_array()
        .expect("weights")
        .iter()
        .filter_map(Value::as_u64)
        .sum();
    assert!(weights > 40 << 20, "the 40 MiB load and more: {weights}");

    let browsed = browse(
        &app.expect("checked"),
        json!([
            {"do": "viewport", "width": 1400, "height": 900},
            {"do": "upload", "selector": "input[type=file]", "path": file},
            {"do": "wait", "js": "document.title.endsWith(' - speedscope')", "timeout_s": 20},
            {"do": "eval", "as": "title", "js": "document.title"},
            {"do": "eval", "as": "text", "js": "document.body.innerText"},
            {"do": "screenshot", "name": "speedscope-import", "full_page": false},
        ]),
    );
    browsed.assert_clean();
    let title = browsed
        .value("title")
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(title.starts_with("memwarden: "), "{title}");
    let text = browsed
        .value("text")
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!text.contains("Something went wrong"), "{text}");
    assert!(
        text.contains("memory at the peak (tree)"),
        "the profile's name is shown: {text}"
    );
}

#[test]
fn folded_stacks_and_the_timeline_csv_add_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = profiled_run(dir.path());
    let folded = dir.path().join("peak.folded");
    let csv = dir.path().join("timeline.csv");
    report_to(&report, &["--folded", "--csv"], &[&folded, &csv]);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    let profile = &json["profile"];

    // Folded: one stack per line, its bytes after the last space; they add up to the flame
    // graph's stacks, which add up to what the stacks at the peak hold.
    let text = std::fs::read_to_string(&folded).expect("folded");
    let total: u64 = text
        .lines()
        .map(|line| {
            line.rsplit_once(' ')
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .expect(line)
        })
        .sum();
    assert_eq!(
        total,
        profile["at_peak_bytes"].as_u64().expect("at_peak_bytes")
    );
    assert!(
        text.lines()
            .any(|l| l.contains(";load (") && l.contains("workload.py:6);")),
        "the load's line is in a stack: {text}"
    );

    // CSV: a header, then one row per moment of either timeline, 11 columns each, in time
    // order; the tree's and the heap's peaks are there.
    let text = std::fs::read_to_string(&csv).expect("csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    assert_eq!(header.first(), Some(&"t_s"));
    assert_eq!(header.last(), Some(&"heap_bytes"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == header.len()));
    let times: Vec<f64> = rows.iter().map(|r| r[0].parse().expect("t_s")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in time order");
    let column = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let max_of = |i: usize| {
        rows.iter()
            .filter_map(|r| r[i].parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    // The largest `key` over the report's points.
    let report_max = |points: &Value, key: &str| {
        points
            .as_array()
            .expect("a timeline")
            .iter()
            .filter_map(|p| p[key].as_u64())
            .max()
    };
    let timeline_rss = report_max(&json["timeline"], "rss_bytes");
    assert_eq!(Some(max_of(column("rss_bytes"))), timeline_rss);
    let heap_max = report_max(&profile["timeline"], "heap_bytes");
    assert_eq!(Some(max_of(column("heap_bytes"))), heap_max);
    assert!(heap_max.unwrap_or(0) > 40 << 20);
}

#[test]
fn a_report_that_is_not_one_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bogus = dir.path().join("notes.json");
    std::fs::write(&bogus, "{\"hello\": 1}").expect("write");
    let output = memwarden()
        .arg("report")
        .arg(&bogus)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(6));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not a memwarden run report") && stderr.contains("memwarden run --json"),
        "{stderr}"
    );
    let output = memwarden()
        .arg("report")
        .arg(dir.path().join("missing.json"))
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(6));

    // A report without a profile has no stacks to export: said, exit 2.
    let plain = dir.path().join("plain.json");
    let run = memwarden()
        .args(["run", "--quiet", "--json"])
        .arg(&plain)
        .args(["--", "true"])
        .output()
        .expect("runs");
    assert!(run.status.success());
    let output = memwarden()
        .arg("report")
        .arg(&plain)
        .arg("--speedscope")
        .arg(dir.path().join("s.json"))
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--profile"));
    // ... but its HTML page and CSV are made.
    let page = dir.path().join("plain.html");
    succeed(
        memwarden()
            .arg("report")
            .arg(&plain)
            .arg("--html")
            .arg(&page),
    );
    assert!(std::fs::read_to_string(&page)
        .expect("page")
        .contains("<html"));
}

/// Kept captures keep their run's report beside them; `memwarden report --capture-dir`
/// analyses the profile again (here with every frame as recorded) onto that report, and
/// the summary lists the top lines with their source text.
#[test]
fn a_kept_capture_directory_is_reported_again_and_the_summary_lists_the_top_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("workload.py"), WORKLOAD).expect("script");
    let caps = dir.path().join("caps");
    succeed(
        memwarden()
            .args(["run", "--quiet", "--profile", "--capture-dir"])
            .arg(&caps)
            .arg("--")
            .arg(python())
            .arg("workload.py")
            .current_dir(dir.path()),
    );
    assert!(
        caps.join("report.json").is_file(),
        "the run's report is kept beside its captures"
    );

    let stdout = succeed(
        memwarden()
            .arg("report")
            .arg("--capture-dir")
            .arg(&caps)
            .arg("--raw-frames")
            .args(["--json", "-"]),
    );
    let again: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    let at_peak = again["profile"]["at_peak"].as_array().expect("stacks");
    assert!(
        at_peak
            .iter()
            .flat_map(|s| s["stack"].as_array().into_iter().flatten())
            .all(|f| f.get("imports").is_none()),
        "raw frames: no import folded"
    );
    let sources = again["profile"]["source_lines"]
        .as_array()
        .expect("source lines");
    assert!(
        sources.iter().any(|s| s["text"]
            .as_str()
            .is_some_and(|t| t.contains("np.ones(40 * 2**20 // 8)"))),
        "the profile analysed again has its lines' text: {sources:?}"
    );
    let heap = again["profile"]["peak_bytes"].as_u64().unwrap_or(0);
    assert!(heap > 40 << 20, "{heap}");

    let output = memwarden()
        .arg("report")
        .arg(caps.join("report.json"))
        .args(["--top", "2"])
        .output()
        .expect("memwarden runs");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("top lines (2 of "), "{text}");
    assert!(
        text.contains("| return np.ones(40 * 2**20 // 8)"),
        "the load's source text: {text}"
    );
}
