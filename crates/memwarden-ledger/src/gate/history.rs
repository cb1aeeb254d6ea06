//! `history`: a model's versions over time.

use serde::Serialize;

use super::{median, model_runs, stages_of, versions_of, GateError};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::diff::diff;
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
        assert_eq!((report.a.as_str(), report.b.as_str()), ("2", "10"));
        let rows = history(&records, "fraud").expect("history");
        assert_eq!(
            rows.iter().map(|r| r.version.as_str()).collect::<Vec<_>>(),
            ["2", "10"],
            "natural order"
        );
        let median = rows[1].median_peak_rss_bytes as f64 / (2u64 << 30) as f64;
        assert!((median - 1.0).abs() < 0.01, "{rows:?}");
    }
}
