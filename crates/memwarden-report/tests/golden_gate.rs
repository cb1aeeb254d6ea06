//! Golden files of the ledger gate's text: `memwarden check`, `diff` and `history`, on
//! typed reports as `memwarden_ledger::gate` builds them (fixed figures and times).
//!
//! Refresh deliberately: `MEMWARDEN_BLESS=1 cargo test -p memwarden-report`, then read
//! `git diff crates/memwarden-report/tests/golden/` (see `support/mod.rs`).

mod support;

use memwarden_format::advice::{Advice, Technique};
use memwarden_format::report::StackFrame;
use memwarden_ledger::gate::{
    AdviceChange, AdviceDiff, CheckReport, DiffReport, HistoryRow, MetricDiff, SiteChange, Verdict,
};
use memwarden_report::text::{render_check, render_diff, render_history};
use support::assert_golden;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn verdict(
    stage: &str,
    kind: &str,
    metric: Option<&str>,
    pass: bool,
    explanation: &str,
) -> Verdict {
    Verdict {
        stage: stage.to_owned(),
        kind: kind.to_owned(),
        metric: metric.map(str::to_owned),
        pass,
        explanation: explanation.to_owned(),
    }
}

#[test]
fn check_pass() {
    let report = CheckReport {
        model: "fraud".to_owned(),
        version: "2".to_owned(),
        policy: None,
        verdicts: vec![
            verdict("train", "budget", Some("peak_rss"), true, "peak_rss of the latest run 1.02 GiB is within the budget 2.00 GiB (51%)"),
            verdict("train", "regression", Some("peak_rss"), true, "peak_rss 1.02 GiB (median of 5 runs) vs 1.00 GiB in fraud@1 (5 runs): +1.6%, allowed +7.1% (5.0% + noise 2.1%, learned from repeated runs)"),
            verdict("inference", "regression", None, true, "no earlier version has inference runs: nothing to compare with"),
        ],
        pass: true,
    };
    assert_golden("check_pass", &render_check(&report));
}

/// A failing check: a run that was OOM-killed, a budget exceeded, a regression, and a
/// sampled figure reported but not gated.
#[test]
fn check_fail() {
    let report = CheckReport {
        model: "fraud".to_owned(),
        version: "3".to_owned(),
        policy: Some("/work/project/memwarden.toml".to_owned()),
        verdicts: vec![
            verdict("train", "run", None, false, "the latest train run (run-0007) was OOM-killed"),
            verdict("train", "budget", Some("peak_rss"), false, "peak_rss of the latest run 2.40 GiB EXCEEDS the budget 2.00 GiB (120%)"),
            verdict("train", "budget", Some("peak_gpu"), false, "peak_gpu has a budget of 8.00 GiB but the latest run did not measure it"),
            verdict("train", "regression", Some("peak_rss"), false, "peak_rss 2.40 GiB (median of 3 runs) vs 2.00 GiB in fraud@2 (3 runs): +20.0%, allowed +7.0% (5.0% + noise 2.0%, the floor: 3 runs of a version teach the noise): REGRESSION"),
            verdict("train", "report", Some("peak_pss"), true, "peak_pss 2.30 GiB (median of 3 runs) vs 1.90 GiB in fraud@2 (3 runs): +21.1%, allowed +15.0% (5.0% + noise 10.0%, the floor: 3 runs of a version teach the noise); sampled at ticks: reported, not gated (gate_sampled = [\"peak_pss\"] makes it gate)"),
            verdict("train", "report", Some("peak_heap"), true, "peak_heap: fraud@2 measured it another way (the profiler's count, method 2), so it is not compared; rerun fraud@2 with this memwarden to compare"),
        ],
        pass: false,
    };
    assert_golden("check_fail", &render_check(&report));
}

fn metric(
    stage: &str,
    name: &str,
    a: Option<f64>,
    b: Option<f64>,
    runs: (usize, usize),
) -> MetricDiff {
    MetricDiff {
        stage: stage.to_owned(),
        metric: name.to_owned(),
        a,
        b,
        change_pct: match (a, b) {
            (Some(x), Some(y)) if x > 0.0 => Some((y - x) * 100.0 / x),
            _ => None,
        },
        runs,
    }
}

fn metrics() -> Vec<MetricDiff> {
    vec![
        metric(
            "train",
            "peak_rss",
            Some(GIB as f64),
            Some(1.5 * GIB as f64),
            (3, 2),
        ),
        metric(
            "train",
            "peak_pss",
            Some(900.0 * MIB as f64),
            Some(1300.0 * MIB as f64),
            (3, 2),
        ),
        metric("train", "peak_gpu", None, Some(4.0 * GIB as f64), (3, 2)),
        metric("train", "duration_s", Some(12.25), Some(11.5), (3, 2)),
        metric(
            "inference",
            "peak_rss",
            Some(300.0 * MIB as f64),
            None,
            (1, 0),
        ),
    ]
}

fn site(site: &str, a_bytes: u64, b_bytes: u64) -> SiteChange {
    SiteChange {
        site: site.to_owned(),
        a_bytes,
        b_bytes,
        change_bytes: b_bytes as i64 - a_bytes as i64,
    }
}

/// Both versions profiled: more changed sites than are shown, growing and shrinking.
#[test]
fn diff_with_site_changes() {
    let mut stacks = vec![
        site("fit (train.py)", 400 * MIB, 900 * MIB),
        site("<module> [import torch] (train.py)", 0, 300 * MIB),
        site(
            "load (/usr/lib/python3.11/site-packages/numpy/lib/npyio.py)",
            600 * MIB,
            400 * MIB,
        ),
    ];
    stacks.extend((0..9).map(|i| site(&format!("helper_{i} (util.py)"), 10 * MIB, (9 - i) * MIB)));
    let report = DiffReport {
        model: "fraud".to_owned(),
        a: "1".to_owned(),
        b: "2".to_owned(),
        metrics: metrics(),
        stacks,
        stacks_note: None,
        advice: vec![
            AdviceDiff {
                change: AdviceChange::New,
                stage: "train".to_owned(),
                advice: advice(Technique::Stream, "stream", 812, Some(700 * MIB)),
            },
            AdviceDiff {
                change: AdviceChange::Resolved,
                stage: "train".to_owned(),
                advice: advice(Technique::Temporaries, "temporaries", 40, None),
            },
        ],
    };
    assert_golden("diff_with_site_changes", &render_diff(&report));
}

#[test]
fn diff_without_profile() {
    let report = DiffReport {
        model: "fraud".to_owned(),
        a: "1".to_owned(),
        b: "2".to_owned(),
        metrics: metrics(),
        stacks: Vec::new(),
        advice: Vec::new(),
        stacks_note: Some("no stacks to compare: record runs of both versions with `memwarden run --profile --model fraud --version ...`".to_owned()),
    };
    assert_golden("diff_without_profile", &render_diff(&report));
}

#[test]
fn diff_same_sites() {
    let report = DiffReport {
        model: "fraud-detector".to_owned(),
        a: "v1.9".to_owned(),
        b: "v1.10".to_owned(),
        metrics: metrics().into_iter().take(1).collect(),
        stacks: Vec::new(),
        stacks_note: None,
        advice: Vec::new(),
    };
    assert_golden("diff_same_sites", &render_diff(&report));
}

/// Advice of `rule` at `train.py:line` (the run as a whole for line 0).
fn advice(technique: Technique, rule: &str, line: u32, saving_bytes: Option<u64>) -> Advice {
    Advice {
        technique,
        rule: rule.to_owned(),
        frame: (line > 0).then(|| StackFrame {
            file: "train.py".to_owned(),
            line,
            function: "load_<data>".to_owned(),
            imports: None,
        }),
        source: None,
        evidence: "evidence".to_owned(),
        saving_bytes,
        saving_basis: "basis".to_owned(),
        fix: "fix".to_owned(),
    }
}

#[test]
fn history() {
    let row = |version: &str, stage: &str, runs: usize, median: u64, max: u64| HistoryRow {
        version: version.to_owned(),
        stage: stage.to_owned(),
        runs,
        first_unix_s: 1_794_900_000.0,
        last_unix_s: 1_795_000_000.0,
        median_peak_rss_bytes: median,
        max_peak_rss_bytes: max,
        median_peak_gpu_bytes: None,
        budget_failures: 0,
        oom_kills: 0,
        advice: Vec::new(),
    };
    let rows = vec![
        HistoryRow {
            advice: vec![
                advice(Technique::Stream, "stream", 812, Some(700 * MIB)),
                advice(Technique::Release, "release", 90, Some(120 * MIB)),
                advice(Technique::Headroom, "headroom", 0, None),
                advice(Technique::Compact, "compact", 33, Some(MIB)),
            ],
            ..row("2", "train", 3, GIB, GIB + 10 * MIB)
        },
        HistoryRow {
            median_peak_gpu_bytes: Some(3 * GIB),
            last_unix_s: 1_795_086_400.0,
            ..row("2", "inference", 12, 700 * MIB, 720 * MIB)
        },
        HistoryRow {
            budget_failures: 2,
            oom_kills: 1,
            last_unix_s: 1_795_200_000.0,
            ..row("10", "train", 2, 2 * GIB, 2300 * MIB)
        },
        row("v1.10.0-rc1", "evaluation", 1, 512 * MIB, 512 * MIB),
    ];
    assert_golden("history", &render_history("fraud", &rows));
}
