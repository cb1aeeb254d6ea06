//! `diff`: two versions of a model side by side, figures and allocation sites.

use std::collections::BTreeMap;

use serde::Serialize;

use memwarden_format::advice::Advice;

use super::history::latest_advice;
use super::{median, model_runs, require_version, stages_of, GateError};
use crate::record::{Metric, RunRecord};

/// One metric of `diff`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricDiff {
    /// Stage.
    pub stage: String,
    /// Metric name, or `duration_s`.
    pub metric: String,
    /// Median in A (bytes, or seconds for duration).
    pub a: Option<f64>,
    /// Median in B.
    pub b: Option<f64>,
    /// Change in percent, B against A.
    pub change_pct: Option<f64>,
    /// Runs in A and B.
    pub runs: (usize, usize),
}

/// One allocation site whose bytes at the peak changed between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteChange {
    /// The allocating function and file (`fit (train.py)`; an import's memory is a site of
    /// its own: `<module> [import numpy] (train.py)`).
    pub site: String,
    /// Bytes at the peak in the first version.
    pub a_bytes: u64,
    /// Bytes at the peak in the second version.
    pub b_bytes: u64,
    /// `b_bytes - a_bytes`.
    pub change_bytes: i64,
}

/// Whether a piece of advice is new in the second version, gone from it, or in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdviceChange {
    /// Only the second version's latest run has it.
    New,
    /// Only the first version's has it: fixed, or no longer true.
    Resolved,
    /// Both have it.
    Kept,
}

/// One piece of advice of either version, compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdviceDiff {
    /// New, resolved or kept.
    pub change: AdviceChange,
    /// The stage whose runs it comes from.
    pub stage: String,
    /// The advice (the second version's, unless resolved).
    pub advice: Advice,
}

/// The outcome of `diff`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffReport {
    /// Model.
    pub model: String,
    /// First version.
    pub a: String,
    /// Second version.
    pub b: String,
    /// Per stage and metric.
    pub metrics: Vec<MetricDiff>,
    /// Allocation sites whose bytes at the peak grew or shrank, when both versions were
    /// profiled (largest change first).
    pub stacks: Vec<SiteChange>,
    /// Why `stacks` is empty, when it is.
    pub stacks_note: Option<String>,
    /// The advice of each version's latest advised run, per stage, compared by rule, file
    /// and function (lines move between versions): new in B first, then resolved, then kept.
    pub advice: Vec<AdviceDiff>,
}

/// Advice of the same rule about the same function of the same file.
fn same_advice(x: &Advice, y: &Advice) -> bool {
    let place = |a: &Advice| {
        a.frame
            .as_ref()
            .map(|f| (f.file.clone(), f.function.clone()))
    };
    x.rule == y.rule && place(x) == place(y)
}

/// `a`'s and `b`'s advice compared.
fn compare_advice(stage: &str, a: &[Advice], b: &[Advice]) -> Vec<AdviceDiff> {
    let of = |change, advice: &Advice| AdviceDiff {
        change,
        stage: stage.to_owned(),
        advice: advice.clone(),
    };
    let mut out: Vec<AdviceDiff> = b
        .iter()
        .map(|advice| match a.iter().any(|x| same_advice(x, advice)) {
            true => of(AdviceChange::Kept, advice),
            false => of(AdviceChange::New, advice),
        })
        .collect();
    out.extend(
        a.iter()
            .filter(|x| !b.iter().any(|y| same_advice(x, y)))
            .map(|x| of(AdviceChange::Resolved, x)),
    );
    out
}

/// Compares two versions of a model, side by side.
pub fn diff(records: &[RunRecord], model: &str, a: &str, b: &str) -> Result<DiffReport, GateError> {
    if a == b {
        return Err(GateError::SameVersion(format!("{model}@{a}")));
    }
    let runs = model_runs(records, model)?;
    require_version(&runs, model, a)?;
    require_version(&runs, model, b)?;
    let mut stages: Vec<String> = stages_of(&runs, a);
    stages.extend(stages_of(&runs, b));
    stages.sort();
    stages.dedup();
    let mut metrics = Vec::new();
    let mut advice = Vec::new();
    for stage in stages {
        let of = |version: &str| -> Vec<&RunRecord> {
            runs.iter()
                .copied()
                .filter(|r| r.version == version && r.stage == stage)
                .collect()
        };
        let (runs_a, runs_b) = (of(a), of(b));
        advice.extend(compare_advice(
            &stage,
            &latest_advice(&runs_a),
            &latest_advice(&runs_b),
        ));
        let names = Metric::ALL
            .iter()
            .map(|m| m.name())
            .chain(["cgroup_peak", "duration_s"]);
        for name in names {
            let va: Vec<f64> = runs_a.iter().filter_map(|r| diff_value(name, r)).collect();
            let vb: Vec<f64> = runs_b.iter().filter_map(|r| diff_value(name, r)).collect();
            if va.is_empty() && vb.is_empty() {
                continue;
            }
            let ma = (!va.is_empty()).then(|| median(&mut va.clone()));
            let mb = (!vb.is_empty()).then(|| median(&mut vb.clone()));
            let change_pct = match (ma, mb) {
                (Some(x), Some(y)) if x > 0.0 => Some((y - x) * 100.0 / x),
                _ => None,
            };
            metrics.push(MetricDiff {
                stage: stage.clone(),
                metric: name.to_owned(),
                a: ma,
                b: mb,
                change_pct,
                runs: (runs_a.len(), runs_b.len()),
            });
        }
    }
    let (stacks, stacks_note) = match (latest_stacks(&runs, a), latest_stacks(&runs, b)) {
        (Some(sa), Some(sb)) => (compare_stacks(&sa, &sb), None),
        _ => (
            Vec::new(),
            Some(format!(
                "no stacks to compare: record runs of both versions with `memwarden run --profile --model {model} --version ...`"
            )),
        ),
    };
    Ok(DiffReport {
        model: model.to_owned(),
        a: a.to_owned(),
        b: b.to_owned(),
        metrics,
        stacks,
        stacks_note,
        advice: {
            advice.sort_by_key(|d| d.change as u8);
            advice
        },
    })
}

/// Bytes at the peak by allocating function, from the latest profiled run of `version`.
/// Keyed by file and function, not line: lines move between versions of the code.
fn latest_stacks(runs: &[&RunRecord], version: &str) -> Option<BTreeMap<String, u64>> {
    let run = runs
        .iter()
        .filter(|r| r.version == version && !r.top_stacks_at_peak.is_empty())
        .max_by(|x, y| x.started_at_unix_s.total_cmp(&y.started_at_unix_s))?;
    let mut by_site = BTreeMap::new();
    for entry in &run.top_stacks_at_peak {
        // An import's memory is its own site: `<module> [import numpy] (train.py)`.
        let site = match entry.stack.first() {
            Some(leaf) => format!("{}{} ({})", leaf.function, leaf.import_note(), leaf.file),
            None => "? (?)".to_owned(),
        };
        *by_site.entry(site).or_insert(0) += entry.bytes;
    }
    Some(by_site)
}

/// Allocation sites whose bytes at the peak changed, largest change first.
fn compare_stacks(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> Vec<SiteChange> {
    let mut sites: Vec<&String> = a.keys().chain(b.keys()).collect();
    sites.sort();
    sites.dedup();
    let mut changes: Vec<SiteChange> = sites
        .into_iter()
        .map(|site| {
            let (a_bytes, b_bytes) = (
                a.get(site).copied().unwrap_or(0),
                b.get(site).copied().unwrap_or(0),
            );
            SiteChange {
                site: site.clone(),
                a_bytes,
                b_bytes,
                change_bytes: b_bytes as i64 - a_bytes as i64,
            }
        })
        .filter(|change| change.change_bytes != 0)
        .collect();
    // A stable sort: equal changes stay in site order.
    changes.sort_by_key(|change| std::cmp::Reverse(change.change_bytes.unsigned_abs()));
    changes
}

/// A figure `diff` compares, by name.
fn diff_value(name: &str, record: &RunRecord) -> Option<f64> {
    match name {
        "cgroup_peak" => record.peaks.cgroup_bytes.map(|v| v as f64),
        "duration_s" => Some(record.peaks.duration_s),
        _ => Metric::parse(name)?.of(record).map(|v| v as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::test_runs::runs;
    use memwarden_format::report::StackBytes;

    #[test]
    fn diff_names_the_allocation_sites_that_grew() {
        // As records hold them: the report's JSON of a stack.
        let stack = |function: &str, line: u64, bytes: u64| -> StackBytes {
            serde_json::from_value(serde_json::json!({
                "stack": [{"file": "train.py", "line": line, "function": function}],
                "bytes": bytes
            }))
            .expect("a stack")
        };
        let mut records = runs("1", 1 << 30, 1, 0);
        records.extend(runs("2", 3 << 29, 1, 1));
        let unprofiled = diff(&records, "fraud", "1", "2").expect("diff");
        assert!(unprofiled
            .stacks_note
            .as_deref()
            .is_some_and(|n| n.contains("--profile")));
        records[0].top_stacks_at_peak =
            vec![stack("load", 10, 600 << 20), stack("fit", 20, 400 << 20)];
        // Lines moved between the versions; sites are compared by file and function.
        records[1].top_stacks_at_peak =
            vec![stack("load", 12, 600 << 20), stack("fit", 25, 900 << 20)];
        let report = diff(&records, "fraud", "1", "2").expect("diff");
        assert_eq!(report.stacks.len(), 1, "{:?}", report.stacks);
        assert_eq!(report.stacks[0].site, "fit (train.py)");
        assert_eq!(report.stacks[0].change_bytes, 500 << 20);
    }

    #[test]
    fn imports_are_sites_of_their_own() {
        let import = |module: &str, bytes: u64| -> StackBytes {
            serde_json::from_value(serde_json::json!({
                "stack": [{"file": "train.py", "line": 1, "function": "<module>", "imports": module}],
                "bytes": bytes
            }))
            .expect("a stack")
        };
        let mut records = runs("1", 1 << 30, 1, 0);
        records.extend(runs("2", 1 << 30, 1, 1));
        records[0].top_stacks_at_peak = vec![import("numpy", 70 << 20)];
        records[1].top_stacks_at_peak = vec![import("numpy", 70 << 20), import("torch", 300 << 20)];
        let report = diff(&records, "fraud", "1", "2").expect("diff");
        assert_eq!(report.stacks.len(), 1, "{:?}", report.stacks);
        assert_eq!(report.stacks[0].site, "<module> [import torch] (train.py)");
    }
}
