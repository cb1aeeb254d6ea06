//! `history`: a model's versions over time.

use memwarden_format::advice::Advice;
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
    /// The advice of the latest run that had any (what to change to need less memory).
    pub advice: Vec<Advice>,
}

/// The advice of the latest of `runs` that has any.
pub(super) fn latest_advice(runs: &[&RunRecord]) -> Vec<Advice> {
    runs.iter()
        .filter(|r| !r.advice.is_empty())
        .max_by(|x, y| x.started_at_unix_s.total_cmp(&y.started_at_unix_s))
        .map(|r| r.advice.clone())
        .unwrap_or_default()
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
                advice: latest_advice(&group),
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

    fn advice(rule: &str, function: &str, line: u32) -> Advice {
        Advice {
            technique: memwarden_format::advice::Technique::Stream,
            rule: rule.to_owned(),
            frame: Some(memwarden_format::report::StackFrame {
                file: "train.py".to_owned(),
                line,
                function: function.to_owned(),
                imports: None,
            }),
            source: None,
            evidence: String::new(),
            saving_bytes: None,
            saving_basis: String::new(),
            fix: String::new(),
        }
    }

    /// Each version shows its latest advised run's advice; diff says what is new, resolved
    /// and kept, matching by rule, file and function (the line may move).
    #[test]
    fn advice_per_version_and_what_changed() {
        let mut records = runs("2", 1 << 30, 3, 0);
        records.extend(runs("10", 2 << 30, 2, 3));
        records[0].advice = vec![advice("stream", "load", 10)];
        records[2].advice = vec![advice("stream", "load", 12), advice("release", "cache", 5)];
        let last_of_10 = records.len() - 1;
        records[last_of_10].advice =
            vec![advice("stream", "load", 14), advice("compact", "rows", 7)];
        let rows = history(&records, "fraud").expect("history");
        let rules = |row: &HistoryRow| -> Vec<String> {
            row.advice.iter().map(|a| a.rule.clone()).collect()
        };
        assert_eq!(
            rules(&rows[0]),
            ["stream", "release"],
            "the latest advised run of 2"
        );
        assert_eq!(rules(&rows[1]), ["stream", "compact"]);
        let report = diff(&records, "fraud", "2", "10").expect("diff");
        let changes: Vec<(crate::gate::AdviceChange, String, u32)> = report
            .advice
            .iter()
            .map(|d| {
                (
                    d.change,
                    d.advice.rule.clone(),
                    d.advice.frame.as_ref().map_or(0, |f| f.line),
                )
            })
            .collect();
        use crate::gate::AdviceChange::*;
        assert_eq!(
            changes,
            [
                (New, "compact".to_owned(), 7),
                (Resolved, "release".to_owned(), 5),
                (Kept, "stream".to_owned(), 14),
            ]
        );
    }
}
