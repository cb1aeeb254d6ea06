//! `history`: a model's versions over time.

use std::fmt::Write;

use memwarden_format::units::format_size;
use serde::Serialize;

use super::{median, model_runs, stages_of, utc, versions_of, GateError};
use crate::record::RunRecord;

/// One row of `history`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryRow {
    /// Version.
    pub version: String,
    /// Stage.
    pub stage: String,
    /// Runs.
    pub runs: usize,
    /// First run's start, seconds since the epoch.
    pub first_unix_s: f64,
    /// Last run's start.
    pub last_unix_s: f64,
    /// Median peak RSS.
    pub median_peak_rss_bytes: u64,
    /// Largest peak RSS.
    pub max_peak_rss_bytes: u64,
    /// Median peak GPU, when measured.
    pub median_peak_gpu_bytes: Option<u64>,
    /// Runs that failed their own budget.
    pub budget_failures: usize,
    /// Runs that were OOM-killed.
    pub oom_kills: usize,
}

/// A model's versions over time.
pub fn history(records: &[RunRecord], model: &str) -> Result<Vec<HistoryRow>, GateError> {
    let runs = model_runs(records, model)?;
    let mut rows = Vec::new();
    for version in versions_of(&runs) {
        for stage in stages_of(&runs, &version) {
            let group: Vec<&RunRecord> = runs
                .iter()
                .copied()
                .filter(|r| r.version == version && r.stage == stage)
                .collect();
            let rss: Vec<f64> = group.iter().map(|r| r.peaks.rss_bytes as f64).collect();
            let gpu: Vec<f64> = group
                .iter()
                .filter_map(|r| r.peaks.gpu_bytes.map(|v| v as f64))
                .collect();
            rows.push(HistoryRow {
                version: version.clone(),
                stage,
                runs: group.len(),
                first_unix_s: group
                    .iter()
                    .map(|r| r.started_at_unix_s)
                    .fold(f64::INFINITY, f64::min),
                last_unix_s: group
                    .iter()
                    .map(|r| r.started_at_unix_s)
                    .fold(0.0, f64::max),
                median_peak_rss_bytes: median(&mut rss.clone()) as u64,
                max_peak_rss_bytes: group.iter().map(|r| r.peaks.rss_bytes).max().unwrap_or(0),
                median_peak_gpu_bytes: (!gpu.is_empty()).then(|| median(&mut gpu.clone()) as u64),
                budget_failures: group.iter().filter(|r| r.budget_status == "fail").count(),
                oom_kills: group.iter().filter(|r| r.oom_killed).count(),
            });
        }
    }
    Ok(rows)
}

/// Renders history for the terminal.
pub fn render_history(model: &str, rows: &[HistoryRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{model}");
    let _ = writeln!(
        out,
        "{:<14} {:<10} {:>5} {:>14} {:>14} {:>12} {:>7} {:>4}  last run",
        "version", "stage", "runs", "median peak", "max peak", "median GPU", "budget", "OOM"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:>5} {:>14} {:>14} {:>12} {:>7} {:>4}  {}",
            r.version,
            r.stage,
            r.runs,
            format_size(r.median_peak_rss_bytes),
            format_size(r.max_peak_rss_bytes),
            r.median_peak_gpu_bytes
                .map_or_else(|| "-".to_owned(), format_size),
            if r.budget_failures == 0 {
                "ok".to_owned()
            } else {
                format!("{} fail", r.budget_failures)
            },
            r.oom_kills,
            utc(r.last_unix_s)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::diff::{diff, render_diff};
    use crate::gate::test_runs::runs;

    #[test]
    fn diff_and_history_side_by_side() {
        let mut records = runs("2", 1 << 30, 3, 0);
        records.extend(runs("10", 2 << 30, 2, 3));
        let report = diff(&records, "fraud", "2", "10").expect("diff");
        let rss = report
            .metrics
            .iter()
            .find(|m| m.metric == "peak_rss")
            .expect("rss");
        assert!(
            rss.change_pct.is_some_and(|c| (c - 100.0).abs() < 3.0),
            "{rss:?}"
        );
        assert!(render_diff(&report).contains("fraud@10"));
        let rows = history(&records, "fraud").expect("history");
        assert_eq!(
            rows.iter().map(|r| r.version.as_str()).collect::<Vec<_>>(),
            ["2", "10"],
            "natural order"
        );
        let text = render_history("fraud", &rows);
        assert!(
            text.contains("2.00 GiB") || text.contains("2.01 GiB"),
            "{text}"
        );
    }
}
