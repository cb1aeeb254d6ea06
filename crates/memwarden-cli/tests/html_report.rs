//! The HTML report in a real browser: a profiled run's page opened from disk in headless
//! Chromium, driven with real mouse and keyboard events over the DevTools protocol
//! (`tests/support/browser.py`): no console errors, no network, the flame graph zooms and
//! searches, the table sorts, the timeline picks moments; names a program chose to break
//! the page stay text; a run of 200 processes opens quickly. Screenshots are kept under
//! `target/test-artifacts/html/`.

mod util;

/// The large synthetic run the report crate's size test renders too.
#[path = "../../memwarden-report/src/html/synthetic.rs"]
mod synthetic;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use util::browser::{artifacts, browse, browser_ready};
use util::{memwarden, python, succeed};

/// Renders the JSON report at `report` into the page at `page` with `memwarden report
/// --html`, as a user re-renders a kept report.
fn render_page(report: &Path, page: &Path) {
    succeed(
        memwarden()
            .arg("report")
            .arg(report)
            .arg("--html")
            .arg(page),
    );
}

/// Runs `python <script>` under `memwarden run --profile --json --html` in `dir`; the
/// report's path (the page is `page`).
fn profile(dir: &Path, script: &OsStr, page: &Path) -> PathBuf {
    let json = dir.join("report.json");
    succeed(
        memwarden()
            .args(["run", "--profile", "--json"])
            .arg(&json)
            .arg("--html")
            .arg(page)
            .arg("--")
            .arg(python())
            .arg(script)
            .current_dir(dir),
    );
    json
}

const READY: &str = "document.documentElement.dataset.ready === '1'";

/// The page's visible text: the body without its scripts (whose data holds names too).
const VISIBLE_TEXT: &str = "(() => { const body = document.body.cloneNode(true); \
     body.querySelectorAll('script').forEach((s) => s.remove()); return body.textContent; })()";

const POOL: &str = r#"
import time
import numpy as np
from multiprocessing import Pool

def load_table():
    return [(i, str(i)) for i in range(300_000)]

def build_features(n):
    a = np.random.rand(n)
    return a * 2.0

def worker(i):
    block = np.ones(3_000_000 + i)
    time.sleep(0.3)
    return float(block.sum())

def main():
    table = load_table()
    time.sleep(0.3)
    features = build_features(8_000_000)
    time.sleep(0.3)
    cache = [np.ones(1_000_000) for _ in range(10)]
    time.sleep(0.3)
    with Pool(3) as pool:
        print(sum(pool.map(worker, range(3))))
    del features
    time.sleep(0.3)
    print(len(table), len(cache))

if __name__ == "__main__":
    main()
"#;

#[test]
fn a_profiled_pool_run_makes_a_page_that_works_in_chromium() {
    let test = "a_profiled_pool_run_makes_a_page_that_works_in_chromium";
    if !browser_ready(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("workload.py"), POOL).expect("script written");
    // The page `memwarden run` writes as the run ends.
    let page = artifacts().join("pool-run.html");
    profile(dir.path(), OsStr::new("workload.py"), &page);

    let flame = "document.querySelector('[data-testid=flame]')";
    let browsed = browse(
        &page,
        json!([
            {"do": "viewport", "width": 1400, "height": 1000},
            {"do": "wait", "js": READY},
            {"do": "eval", "as": "processes", "js": "document.querySelectorAll('[data-testid=process-row]').length"},
            // numpy's lines hold the arrays: each says which of the script's lines called it.
            {"do": "eval", "as": "callers", "js": "[...document.querySelectorAll('[data-testid=stack-caller] .where')].map((e) => e.textContent)"},
            // Zoom: the widest frame that is not already (nearly) the whole width.
            {"do": "eval", "as": "picked", "js": format!("(() => {{ const box = {flame}; const w = box.clientWidth; \
                const pick = [...box.querySelectorAll('[data-testid=flame-frame]:not(.kind-root)')] \
                  .filter((f) => f.offsetWidth > 0.05 * w && f.offsetWidth < 0.9 * w) \
                  .sort((a, b) => b.offsetWidth - a.offsetWidth)[0]; \
                if (!pick) return null; pick.dataset.pick = 'zoom'; \
                return {{node: pick.dataset.node, width: pick.offsetWidth, container: w}}; }})()")},
            {"do": "click", "selector": "[data-pick=zoom]"},
            {"do": "eval", "as": "zoomed", "js": format!("(() => {{ const box = {flame}; const z = box.querySelector('.zoomed'); \
                return {{zoom: box.dataset.zoom, node: z && z.dataset.node, width: z ? z.offsetWidth : 0, container: box.clientWidth}}; }})()")},
            {"do": "click", "selector": "[data-testid=flame] .zoomed"},
            {"do": "eval", "as": "unzoomed", "js": format!("{flame}.dataset.zoom")},
            {"do": "hover", "selector": "[data-testid=flame] .zoomed"},
            {"do": "eval", "as": "tooltip", "js": "document.querySelector('[data-testid=flame-tooltip]').textContent"},
            // Search.
            {"do": "type", "selector": "[data-testid=flame-search]", "text": "build_features"},
            {"do": "eval", "as": "search", "js": "(() => { const s = document.querySelector('[data-testid=flame-search-status]'); \
                return {matches: Number(s.dataset.matches), bytes: Number(s.dataset.bytes), text: s.textContent, \
                highlighted: document.querySelectorAll('[data-testid=flame] .match').length}; })()"},
            // Sorting.
            {"do": "eval", "as": "rows_by_peak", "js": "[...document.querySelectorAll('[data-testid=lines-row]')].map((r) => r.cells[0].textContent)"},
            {"do": "click", "selector": "[data-testid=lines-th-allocated]"},
            {"do": "eval", "as": "rows_desc", "js": "[...document.querySelectorAll('[data-testid=lines-row]')].map((r) => r.cells[0].textContent)"},
            {"do": "eval", "as": "sort_desc", "js": "document.querySelector('[data-testid=lines]').dataset.sort"},
            {"do": "click", "selector": "[data-testid=lines-th-allocated]"},
            {"do": "eval", "as": "rows_asc", "js": "[...document.querySelectorAll('[data-testid=lines-row]')].map((r) => r.cells[0].textContent)"},
            {"do": "eval", "as": "sort_asc", "js": "document.querySelector('[data-testid=lines]').dataset.sort"},
            // The timeline: a click at the start, then back to the peak.
            {"do": "eval", "as": "peak_index", "js": "document.querySelector('[data-testid=timeline-chart]').dataset.peakIndex"},
            {"do": "eval", "as": "stacks_at_peak", "js": "document.querySelector('[data-testid=timeline-stacks]').textContent"},
            {"do": "click", "selector": "[data-testid=timeline-chart] svg", "x": 0.12, "y": 0.5},
            {"do": "eval", "as": "clicked_index", "js": "document.querySelector('[data-testid=timeline-chart]').dataset.selectedIndex"},
            {"do": "eval", "as": "stacks_clicked", "js": "document.querySelector('[data-testid=timeline-stacks]').textContent"},
            {"do": "click", "selector": "[data-testid=timeline-jump-peak]"},
            {"do": "eval", "as": "jumped_index", "js": "document.querySelector('[data-testid=timeline-chart]').dataset.selectedIndex"},
            // A process's own stacks.
            {"do": "click", "selector": "[data-testid=process-row]", "index": 1},
            {"do": "eval", "as": "process_shown", "js": "(() => { const box = document.querySelector('[data-testid=process-stacks]'); \
                return {pid: box.dataset.pid, row: document.querySelectorAll('[data-testid=process-row]')[1].dataset.pid, \
                stacks: box.querySelectorAll('[data-testid=process-stack]').length}; })()"},
            {"do": "click", "selector": "[data-testid=timeline-view-processes]"},
            {"do": "eval", "as": "lifetimes", "js": "document.querySelectorAll('[data-testid=timeline-process]').length"},
            {"do": "screenshot", "name": "pool-run-processes", "full_page": false},
            {"do": "click", "selector": "[data-testid=timeline-view-tree]"},
            {"do": "screenshot", "name": "pool-run", "full_page": true},
        ]),
    );
    browsed.assert_clean();
    let processes = browsed.value("processes").as_u64().expect("a count");
    assert!(processes >= 4, "the pool's workers are listed: {processes}");

    let picked = browsed.value("picked");
    let zoomed = browsed.value("zoomed");
    assert!(
        picked.is_object(),
        "a frame to zoom into: {:#}",
        browsed.result
    );
    assert_eq!(
        zoomed["zoom"], picked["node"],
        "the clicked frame is the root"
    );
    assert_eq!(zoomed["node"], picked["node"]);
    let (before, after) = (picked["width"].as_f64(), zoomed["width"].as_f64());
    let container = zoomed["container"].as_f64().expect("width");
    assert!(
        after.expect("width") > container * 0.98 && after > before,
        "zoomed from {before:?} to {after:?} of {container}"
    );
    assert_ne!(
        browsed.value("unzoomed"),
        &zoomed["zoom"],
        "a second click zooms out"
    );
    let tooltip = browsed.value("tooltip").as_str().expect("text");
    assert!(tooltip.contains("iB") && tooltip.contains('%'), "{tooltip}");

    let search = browsed.value("search");
    assert!(search["matches"].as_u64() >= Some(1), "{search}");
    assert!(search["highlighted"].as_u64() >= Some(1), "{search}");
    assert!(search["bytes"].as_u64() > Some(32 << 20), "{search}");
    assert!(search["text"].as_str().is_some_and(|t| t.contains("MiB")));

    assert_eq!(browsed.value("sort_desc"), "allocated:desc");
    assert_eq!(browsed.value("sort_asc"), "allocated:asc");
    assert_ne!(browsed.value("rows_desc"), browsed.value("rows_asc"));
    assert_ne!(browsed.value("rows_by_peak"), browsed.value("rows_asc"));

    let callers = browsed
        .value("callers")
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !callers.is_empty()
            && callers
                .iter()
                .all(|c| c.as_str().is_some_and(|c| c.starts_with("workload.py:"))),
        "{callers:?}"
    );

    let peak_index = browsed.value("peak_index");
    assert_ne!(browsed.value("clicked_index"), peak_index);
    assert_ne!(
        browsed.value("stacks_clicked"),
        browsed.value("stacks_at_peak")
    );
    assert_eq!(browsed.value("jumped_index"), peak_index);

    let shown = browsed.value("process_shown");
    assert_eq!(shown["pid"], shown["row"]);
    assert_eq!(browsed.value("lifetimes").as_u64(), Some(processes));
}

/// Names that try to end the script, open a comment, or run code of their own.
const HOSTILE_FUNCTIONS: [&str; 3] = [
    "</script><script>window.__pwned=1;alert(1)</script>",
    "<!--<img src=x onerror=\"window.__pwned=2;alert(2)\">",
    "it's \"quoted\" & <b>bold</b> -->",
];

/// Python that allocates 30 MiB in each function named from `HOSTILE_FUNCTIONS`, and in
/// one named `caf` and the surrogate escape of byte 0xE9 (a name that is not UTF-8, which
/// the report writes `caf\xe9`), the first in a thread with a hostile name too, and holds
/// it.
fn hostile_script() -> String {
    let names = HOSTILE_FUNCTIONS
        .iter()
        .map(|name| {
            let escaped: String = name
                .chars()
                .map(|c| format!("\\U{:08x}", c as u32))
                .collect();
            format!("'{escaped}'")
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
import threading, types
NAMES = [{names}, 'caf\udce9']
kept = []

def hold():
    kept.append(bytearray(30 * 1024 * 1024))

def named(name):
    try:
        code = hold.__code__.replace(co_name=name, co_qualname=name)
    except TypeError:
        code = hold.__code__.replace(co_name=name)
    return types.FunctionType(code, globals(), name)

for name in NAMES[1:]:
    named(name)()
thread = threading.Thread(target=named(NAMES[0]), name='<script>window.__pwned=3</script>')
thread.start()
thread.join()
print(len(kept))
"#
    )
}

#[test]
fn names_from_the_program_are_shown_as_text_and_never_run() {
    let test = "names_from_the_program_are_shown_as_text_and_never_run";
    if !browser_ready(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let script =
        OsStr::from_bytes(b"evil<script>'\"<img src=x onerror=window.__pwned=4><!--\xff.py");
    std::fs::write(dir.path().join(script), hostile_script()).expect("script written");
    // The page `memwarden report` renders again from the JSON alone.
    let report = profile(dir.path(), script, &dir.path().join("at-run.html"));
    let page = artifacts().join("hostile-names.html");
    render_page(&report, &page);

    // The names as the report keeps them (a byte that is not UTF-8 as `\xNN` text).
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    let mut names: Vec<String> = Vec::new();
    for line in report["profile"]["lines"].as_array().expect("lines") {
        let file = line["frame"]["file"].as_str().expect("file");
        let function = line["frame"]["function"].as_str().expect("function");
        if file.contains("evil<script>") {
            names.push(file.rsplit('/').next().expect("a name").to_owned());
            names.push(function.to_owned());
        }
    }
    for expected in [
        HOSTILE_FUNCTIONS[0],
        HOSTILE_FUNCTIONS[1],
        HOSTILE_FUNCTIONS[2],
        r"caf\xe9",
        r#"evil<script>'"<img src=x onerror=window.__pwned=4><!--\xff.py"#,
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected:?} is not among the profiled names {names:?}"
        );
    }

    let browsed = browse(
        &page,
        json!([
            {"do": "wait", "js": READY},
            {"do": "type", "selector": "[data-testid=flame-search]", "text": "<img"},
            {"do": "eval", "as": "matches", "js": "Number(document.querySelector('[data-testid=flame-search-status]').dataset.matches)"},
            {"do": "hover", "selector": "[data-testid=flame] .match"},
            {"do": "click", "selector": "[data-testid=process-row]"},
            {"do": "eval", "as": "text", "js": VISIBLE_TEXT},
            {"do": "eval", "as": "pwned", "js": "typeof window.__pwned"},
            {"do": "eval", "as": "elements", "js": "({images: document.querySelectorAll('img').length, \
                scripts: document.querySelectorAll('script').length, \
                bold: [...document.querySelectorAll('b')].filter((b) => b.textContent === 'bold').length})"},
            {"do": "screenshot", "name": "hostile-names", "full_page": true},
        ]),
    );
    browsed.assert_clean();
    assert_eq!(browsed.value("pwned"), "undefined", "a name's script ran");
    assert_eq!(
        browsed.value("elements"),
        &json!({"images": 0, "scripts": 2, "bold": 0}),
        "only the page's own elements, none a name made"
    );
    assert!(browsed.value("matches").as_u64() >= Some(1));
    let text = browsed.value("text").as_str().expect("text");
    for name in &names {
        assert!(
            text.contains(name.as_str()),
            "{name:?} is not shown as text"
        );
    }
}

#[test]
fn a_run_of_200_processes_opens_and_works() {
    let test = "a_run_of_200_processes_opens_and_works";
    if !browser_ready(test) {
        return;
    }
    let report = synthetic::large_report(memwarden_report::flame::prune);
    let page = artifacts().join("synthetic-200-processes.html");
    std::fs::write(&page, memwarden_report::html::render(&report)).expect("page written");
    let size = std::fs::metadata(&page).expect("page").len();
    let browsed = browse(
        &page,
        json!([
            {"do": "wait", "js": READY, "timeout_s": 30},
            {"do": "eval", "as": "ready_ms", "js": "Number(document.documentElement.dataset.readyMs)"},
            {"do": "eval", "as": "rows", "js": "document.querySelectorAll('[data-testid=process-row]').length"},
            {"do": "click", "selector": "[data-testid=flame-frame]:not(.kind-root)"},
            {"do": "screenshot", "name": "synthetic-200-processes", "full_page": false},
        ]),
    );
    browsed.assert_clean();
    let ready_ms = browsed.value("ready_ms").as_f64().expect("a time");
    let line = format!("synthetic 200-process page: {size} bytes, usable after {ready_ms:.0} ms\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    // How fast it opens is measured by bench/report_scale.py, not asserted here: tests
    // check behaviour, benchmarks measure.
    assert_eq!(browsed.value("rows"), 200);
}
