//! `check`, `diff` and `history`: a model's runs against policy and against each other.
//!
//! **Versions** are ordered naturally: digit runs compare as numbers, so `2 < 10` and
//! `v1.9 < v1.10`. The **baseline** of a version is the closest earlier version with runs
//! in the same stage.
//!
//! **Budgets** are checked on the latest run of the version in each stage.
//!
//! **Regressions** compare medians: the version's runs against its baseline's, per
//! metric. A change passes while it stays within `regression_pct` plus the noise
//! tolerance, which is learned from repeated runs: `noise_sigmas` robust standard
//! deviations (1.4826 × the median absolute deviation, relative to the median) of the two
//! versions' runs pooled, and never less than `min_noise_pct`. With one run per version
//! only the floor applies, so rerunning a version a few times is what teaches the gate
//! how noisy it is.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use memwarden_format::units::format_size;
use serde::Serialize;

use crate::policy::{Policy, Stage};
use crate::record::{Metric, RunRecord};

/// Why a gate question cannot be answered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GateError {
    /// The model has no runs.
    #[error("no runs of model '{model}' in the ledger{}", known_hint(.known))]
    UnknownModel {
        /// Asked for.
        model: String,
        /// Models that do have runs.
        known: Vec<String>,
    },
    /// The version has no runs.
    #[error("no runs of {model}@{version} in the ledger{}", known_hint(.known))]
    UnknownVersion {
        /// Model.
        model: String,
        /// Asked for.
        version: String,
        /// Versions that do have runs.
        known: Vec<String>,
    },
    /// `diff A A`.
    #[error("{0} compared with itself: give two different versions")]
    SameVersion(String),
    /// `MODEL@VERSION` is malformed.
    #[error("'{0}' is not MODEL@VERSION (e.g. fraud-detector@3)")]
    BadSpec(String),
}

fn known_hint(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (known: {})", known.join(", "))
    }
}

/// Splits `model@version`.
pub fn parse_spec(spec: &str) -> Result<(String, String), GateError> {
    match spec.rsplit_once('@') {
        Some((model, version)) if !model.is_empty() && !version.is_empty() => {
            Ok((model.to_owned(), version.to_owned()))
        }
        _ => Err(GateError::BadSpec(spec.to_owned())),
    }
}

/// Natural order of version strings.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, xa), (db, xb)) in ca.iter().zip(cb.iter()) {
        let order = if *da && *db {
            let (ta, tb) = (xa.trim_start_matches('0'), xb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            xa.cmp(xb)
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

fn model_runs<'a>(records: &'a [RunRecord], model: &str) -> Result<Vec<&'a RunRecord>, GateError> {
    let runs: Vec<&RunRecord> = records.iter().filter(|r| r.model == model).collect();
    if runs.is_empty() {
        let known: BTreeSet<String> = records.iter().map(|r| r.model.clone()).collect();
        return Err(GateError::UnknownModel {
            model: model.to_owned(),
            known: known.into_iter().collect(),
        });
    }
    Ok(runs)
}

fn versions_of(runs: &[&RunRecord]) -> Vec<String> {
    let mut versions: Vec<String> = runs
        .iter()
        .map(|r| r.version.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    versions.sort_by(|a, b| compare_versions(a, b));
    versions
}

fn require_version(runs: &[&RunRecord], model: &str, version: &str) -> Result<(), GateError> {
    if runs.iter().any(|r| r.version == version) {
        return Ok(());
    }
    Err(GateError::UnknownVersion {
        model: model.to_owned(),
        version: version.to_owned(),
        known: versions_of(runs),
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Robust relative standard deviation of each group's values around its own median,
/// pooled: 1.4826 × the median absolute relative deviation.
fn relative_noise(groups: &[&[u64]]) -> Option<f64> {
    let mut deviations = Vec::new();
    for group in groups {
        if group.len() < 2 {
            continue;
        }
        let center = median(&mut group.iter().map(|&v| v as f64).collect::<Vec<_>>());
        if center > 0.0 {
            deviations.extend(group.iter().map(|&v| ((v as f64 - center) / center).abs()));
        }
    }
    (deviations.len() >= 3).then(|| 1.4826 * median(&mut deviations))
}

/// One verdict of `check`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Stage.
    pub stage: String,
    /// `budget`, `regression` or `run` (the latest run itself failed).
    pub kind: String,
    /// Metric name (`peak_rss`...), when there is one.
    pub metric: Option<String>,
    /// Passed.
    pub pass: bool,
    /// The explanation, a sentence.
    pub explanation: String,
}

/// The outcome of `check`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    /// Model.
    pub model: String,
    /// Version checked.
    pub version: String,
    /// Policy file used (`null`: built-in defaults).
    pub policy: Option<String>,
    /// Every verdict.
    pub verdicts: Vec<Verdict>,
    /// All verdicts passed.
    pub pass: bool,
}

/// Evaluates `model@version` against the policy and its baseline.
pub fn check(
    records: &[RunRecord],
    model: &str,
    version: &str,
    policy: &Policy,
) -> Result<CheckReport, GateError> {
    let runs = model_runs(records, model)?;
    require_version(&runs, model, version)?;
    let mut verdicts = Vec::new();
    for stage in stages_of(&runs, version) {
        let current: Vec<&RunRecord> = runs
            .iter()
            .copied()
            .filter(|r| r.version == version && r.stage == stage)
            .collect();
        let settings = Stage::parse(&stage).map(|s| policy.effective(model, s));
        let Some(latest) = current.last() else {
            continue;
        };
        if latest.oom_killed
            || latest.exit_signal.is_some()
            || latest.exit_code.is_some_and(|c| c != 0)
        {
            let how = if latest.oom_killed {
                "was OOM-killed".to_owned()
            } else if let Some(signal) = latest.exit_signal {
                format!("was killed by signal {signal}")
            } else {
                format!("exited with code {}", latest.exit_code.unwrap_or(-1))
            };
            verdicts.push(Verdict {
                stage: stage.clone(),
                kind: "run".to_owned(),
                metric: None,
                pass: false,
                explanation: format!("the latest {stage} run ({}) {how}", latest.run_id),
            });
        }
        if let Some(settings) = &settings {
            for (metric, &budget) in &settings.budgets {
                let verdict = match metric.of(latest) {
                    Some(value) => Verdict {
                        stage: stage.clone(),
                        kind: "budget".to_owned(),
                        metric: Some(metric.name().to_owned()),
                        pass: value <= budget,
                        explanation: format!(
                            "{} of the latest run {} {} the budget {} ({:.0}%)",
                            metric.name(),
                            format_size(value),
                            if value <= budget {
                                "is within"
                            } else {
                                "EXCEEDS"
                            },
                            format_size(budget),
                            value as f64 * 100.0 / budget.max(1) as f64
                        ),
                    },
                    None => Verdict {
                        stage: stage.clone(),
                        kind: "budget".to_owned(),
                        metric: Some(metric.name().to_owned()),
                        pass: false,
                        explanation: format!(
                            "{} has a budget of {} but the latest run did not measure it",
                            metric.name(),
                            format_size(budget)
                        ),
                    },
                };
                verdicts.push(verdict);
            }
        }
        let baseline_version = versions_of(&runs).into_iter().rfind(|v| {
            compare_versions(v, version) == Ordering::Less
                && runs.iter().any(|r| &r.version == v && r.stage == stage)
        });
        let Some(baseline_version) = baseline_version else {
            verdicts.push(Verdict {
                stage: stage.clone(),
                kind: "regression".to_owned(),
                metric: None,
                pass: true,
                explanation: format!(
                    "no earlier version has {stage} runs: nothing to compare with"
                ),
            });
            continue;
        };
        let baseline: Vec<&RunRecord> = runs
            .iter()
            .copied()
            .filter(|r| r.version == baseline_version && r.stage == stage)
            .collect();
        let defaults = policy.effective(model, Stage::Train);
        let settings = settings.unwrap_or(defaults);
        for metric in Metric::ALL {
            let now: Vec<u64> = current.iter().filter_map(|r| metric.of(r)).collect();
            let before: Vec<u64> = baseline.iter().filter_map(|r| metric.of(r)).collect();
            if now.is_empty() || before.is_empty() {
                continue;
            }
            let now_median = median(&mut now.iter().map(|&v| v as f64).collect::<Vec<_>>());
            let before_median = median(&mut before.iter().map(|&v| v as f64).collect::<Vec<_>>());
            if before_median <= 0.0 {
                continue;
            }
            let change_pct = (now_median - before_median) * 100.0 / before_median;
            let learned = relative_noise(&[&now, &before]);
            let noise_pct = learned.map_or(settings.min_noise_pct, |n| {
                (settings.noise_sigmas * n * 100.0).max(settings.min_noise_pct)
            });
            let allowed_pct = settings.regression_pct + noise_pct;
            let pass = change_pct <= allowed_pct;
            verdicts.push(Verdict {
                stage: stage.clone(),
                kind: "regression".to_owned(),
                metric: Some(metric.name().to_owned()),
                pass,
                explanation: format!(
                    "{} {} (median of {} run{}) vs {} in {model}@{baseline_version} ({} run{}): {:+.1}%, allowed {:+.1}% ({:.1}% + noise {:.1}%{}){}",
                    metric.name(),
                    format_size(now_median as u64),
                    now.len(),
                    if now.len() == 1 { "" } else { "s" },
                    format_size(before_median as u64),
                    before.len(),
                    if before.len() == 1 { "" } else { "s" },
                    change_pct,
                    allowed_pct,
                    settings.regression_pct,
                    noise_pct,
                    if learned.is_some() { ", learned from repeated runs" } else { ", the floor: rerun to learn it" },
                    if pass { "" } else { ": REGRESSION" }
                ),
            });
        }
    }
    let pass = verdicts.iter().all(|v| v.pass);
    Ok(CheckReport {
        model: model.to_owned(),
        version: version.to_owned(),
        policy: policy.source.as_ref().map(|p| p.display().to_string()),
        verdicts,
        pass,
    })
}

fn stages_of(runs: &[&RunRecord], version: &str) -> Vec<String> {
    let mut stages: Vec<String> = runs
        .iter()
        .filter(|r| r.version == version)
        .map(|r| r.stage.clone())
        .collect();
    stages.sort();
    stages.dedup();
    stages
}

/// Renders a check report for the terminal.
pub fn render_check(report: &CheckReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "memwarden check {}@{}: {} (policy: {})",
        report.model,
        report.version,
        if report.pass { "PASS" } else { "FAIL" },
        report.policy.as_deref().unwrap_or("built-in defaults")
    );
    for v in &report.verdicts {
        let _ = writeln!(
            out,
            "  {} {:<9} {}",
            if v.pass { "ok  " } else { "FAIL" },
            v.stage,
            v.explanation
        );
    }
    out
}

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
    /// Stacks that grew or shrank, when both versions were profiled.
    pub stacks: Vec<serde_json::Value>,
    /// Why `stacks` is empty, when it is.
    pub stacks_note: Option<String>,
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
    for stage in stages {
        let of = |version: &str| -> Vec<&RunRecord> {
            runs.iter()
                .copied()
                .filter(|r| r.version == version && r.stage == stage)
                .collect()
        };
        let (runs_a, runs_b) = (of(a), of(b));
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
        let leaf = &entry["stack"][0];
        // An import's memory is its own site: `<module> [import numpy] (train.py)`.
        let imports = leaf["imports"]
            .as_str()
            .map(|module| format!(" [import {module}]"))
            .unwrap_or_default();
        let site = format!(
            "{}{imports} ({})",
            leaf["function"].as_str().unwrap_or("?"),
            leaf["file"].as_str().unwrap_or("?")
        );
        *by_site.entry(site).or_insert(0) += entry["bytes"].as_u64().unwrap_or(0);
    }
    Some(by_site)
}

/// Allocation sites whose bytes at the peak changed, largest change first.
fn compare_stacks(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> Vec<serde_json::Value> {
    let mut sites: Vec<&String> = a.keys().chain(b.keys()).collect();
    sites.sort();
    sites.dedup();
    let mut changes: Vec<(i64, serde_json::Value)> = sites
        .into_iter()
        .map(|site| {
            let (x, y) = (a.get(site).copied().unwrap_or(0), b.get(site).copied().unwrap_or(0));
            let change = y as i64 - x as i64;
            (
                change,
                serde_json::json!({"site": site, "a_bytes": x, "b_bytes": y, "change_bytes": change}),
            )
        })
        .filter(|(change, _)| *change != 0)
        .collect();
    changes.sort_by_key(|(change, _)| std::cmp::Reverse(change.unsigned_abs()));
    changes.into_iter().map(|(_, value)| value).collect()
}

/// A figure `diff` compares, by name.
fn diff_value(name: &str, record: &RunRecord) -> Option<f64> {
    match name {
        "cgroup_peak" => record.peaks.cgroup_bytes.map(|v| v as f64),
        "duration_s" => Some(record.peaks.duration_s),
        _ => Metric::ALL
            .into_iter()
            .find(|m| m.name() == name)?
            .of(record)
            .map(|v| v as f64),
    }
}

fn show(metric: &str, value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if metric == "duration_s" => format!("{v:.2} s"),
        Some(v) => format_size(v as u64),
    }
}

/// Renders a diff for the terminal.
pub fn render_diff(report: &DiffReport) -> String {
    let mut out = String::new();
    let (a, b) = (
        format!("{}@{}", report.model, report.a),
        format!("{}@{}", report.model, report.b),
    );
    let _ = writeln!(
        out,
        "{:<10} {:<12} {:>16} {:>16} {:>9}  runs",
        "stage", "metric", a, b, "change"
    );
    for m in &report.metrics {
        let change = m
            .change_pct
            .map_or_else(|| "-".to_owned(), |c| format!("{c:+.1}%"));
        let _ = writeln!(
            out,
            "{:<10} {:<12} {:>16} {:>16} {:>9}  {}/{}",
            m.stage,
            m.metric,
            show(&m.metric, m.a),
            show(&m.metric, m.b),
            change,
            m.runs.0,
            m.runs.1
        );
    }
    if let Some(note) = &report.stacks_note {
        let _ = writeln!(out, "stacks: {note}");
    } else if report.stacks.is_empty() {
        let _ = writeln!(
            out,
            "stacks: the same allocation sites hold the same bytes at the peak"
        );
    } else {
        let _ = writeln!(
            out,
            "allocation sites at the peak that changed (largest change first):"
        );
        for site in report.stacks.iter().take(STACK_CHANGES_SHOWN) {
            let bytes = |key: &str| site[key].as_u64().unwrap_or(0);
            let change = site["change_bytes"].as_i64().unwrap_or(0);
            let sign = if change < 0 { "-" } else { "+" };
            let _ = writeln!(
                out,
                "  {sign}{:>10}  {}  ({} -> {})",
                format_size(change.unsigned_abs()),
                site["site"].as_str().unwrap_or("?"),
                format_size(bytes("a_bytes")),
                format_size(bytes("b_bytes"))
            );
        }
    }
    out
}

/// Allocation sites listed by `render_diff`.
const STACK_CHANGES_SHOWN: usize = 10;

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

/// `YYYY-MM-DD HH:MM` in UTC.
pub fn utc(unix_s: f64) -> String {
    let secs = unix_s.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests_support::record;

    /// A deterministic noise of about ±1% (a fixed sequence, so the test cannot flake).
    fn noisy(base: u64, i: usize) -> u64 {
        let offsets = [0.0, 0.8, -0.6, 0.3, -0.9, 0.5, -0.2, 1.0, -0.4, 0.1];
        (base as f64 * (1.0 + offsets[i % offsets.len()] / 100.0)) as u64
    }

    fn runs(version: &str, base: u64, n: usize, start: usize) -> Vec<RunRecord> {
        (0..n)
            .map(|i| {
                record(
                    &format!("{version}-{}", start + i),
                    "fraud",
                    version,
                    noisy(base, start + i),
                )
            })
            .collect()
    }

    #[test]
    fn a_ten_percent_regression_is_caught() {
        let mut records = runs("1", 1 << 30, 5, 0);
        records.extend(runs("2", (1.10 * (1u64 << 30) as f64) as u64, 5, 5));
        let report = check(&records, "fraud", "2", &Policy::default()).expect("checks");
        assert!(!report.pass, "{}", render_check(&report));
        let rss = report
            .verdicts
            .iter()
            .find(|v| v.metric.as_deref() == Some("peak_rss"))
            .expect("rss verdict");
        assert!(
            rss.explanation.contains("REGRESSION") && rss.explanation.contains("learned"),
            "{}",
            rss.explanation
        );
    }

    #[test]
    fn twenty_reruns_of_an_unchanged_version_all_pass() {
        let mut records = runs("1", 1 << 30, 5, 0);
        for i in 0..20 {
            records.push(record(
                &format!("2-{i}"),
                "fraud",
                "2",
                noisy(1 << 30, 3 + i * 7),
            ));
            let report = check(&records, "fraud", "2", &Policy::default()).expect("checks");
            assert!(report.pass, "rerun {i}: {}", render_check(&report));
        }
    }

    #[test]
    fn budgets_and_failed_runs_are_verdicts() {
        let policy = Policy::parse("[models.fraud.stages.inference]\npeak_rss = \"1GiB\"\n")
            .expect("policy");
        let mut records = runs("1", 2 << 30, 1, 0);
        records[0].oom_killed = true;
        records[0].exit_signal = Some(9);
        let report = check(&records, "fraud", "1", &policy).expect("checks");
        let text = render_check(&report);
        assert!(!report.pass);
        assert!(
            text.contains("EXCEEDS the budget 1.00 GiB") && text.contains("OOM-killed"),
            "{text}"
        );
        assert!(text.contains("nothing to compare with"), "{text}");
    }

    #[test]
    fn unknown_models_versions_and_self_comparisons_are_refused() {
        let records = runs("1", 1 << 30, 2, 0);
        let err = check(&records, "nope", "1", &Policy::default()).expect_err("unknown");
        assert!(err.to_string().contains("known: fraud"), "{err}");
        let err = check(&records, "fraud", "9", &Policy::default()).expect_err("unknown version");
        assert!(err.to_string().contains("known: 1"), "{err}");
        assert_eq!(
            diff(&records, "fraud", "1", "1").expect_err("same"),
            GateError::SameVersion("fraud@1".to_owned())
        );
        assert!(parse_spec("fraud").is_err() && parse_spec("@3").is_err());
        assert_eq!(
            parse_spec("team@fraud@3").expect("ok"),
            ("team@fraud".to_owned(), "3".to_owned())
        );
    }

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

    #[test]
    fn diff_names_the_allocation_sites_that_grew() {
        let stack = |function: &str, line: u64, bytes: u64| {
            serde_json::json!({
                "stack": [{"file": "train.py", "line": line, "function": function}],
                "bytes": bytes
            })
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
        assert_eq!(report.stacks[0]["site"], "fit (train.py)");
        assert_eq!(report.stacks[0]["change_bytes"], 500 << 20);
        let text = render_diff(&report);
        assert!(text.contains("+500.00 MiB  fit (train.py)"), "{text}");
    }

    #[test]
    fn imports_are_sites_of_their_own() {
        let import = |module: &str, bytes: u64| {
            serde_json::json!({
                "stack": [{"file": "train.py", "line": 1, "function": "<module>", "imports": module}],
                "bytes": bytes
            })
        };
        let mut records = runs("1", 1 << 30, 1, 0);
        records.extend(runs("2", 1 << 30, 1, 1));
        records[0].top_stacks_at_peak = vec![import("numpy", 70 << 20)];
        records[1].top_stacks_at_peak = vec![import("numpy", 70 << 20), import("torch", 300 << 20)];
        let report = diff(&records, "fraud", "1", "2").expect("diff");
        assert_eq!(report.stacks.len(), 1, "{:?}", report.stacks);
        assert_eq!(
            report.stacks[0]["site"],
            "<module> [import torch] (train.py)"
        );
    }

    #[test]
    fn natural_version_order() {
        let mut v = vec!["10", "2", "v1.10.0", "v1.9.3", "1"];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(v, ["1", "2", "10", "v1.9.3", "v1.10.0"]);
        assert_eq!(utc(0.0), "1970-01-01 00:00");
        assert_eq!(utc(1_795_000_000.0), "2026-11-18 11:06");
    }
}
