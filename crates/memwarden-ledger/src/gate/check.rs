//! `check`: the latest runs of a version against the policy's budgets and against its
//! baseline version (see the module above for the rules).

use std::cmp::Ordering;
use std::fmt::Write;

use memwarden_format::units::format_size;
use serde::Serialize;

use super::{
    compare_versions, median, model_runs, require_version, stages_of, versions_of, GateError,
};
use crate::policy::{Policy, Stage};
use crate::record::{Metric, RunRecord};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::test_runs::{noisy, runs};
    use crate::policy::Policy;
    use crate::record::tests_support::record;

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
}
