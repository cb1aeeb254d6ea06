//! `check`: the latest runs of a version against the policy's budgets and against its
//! baseline version (see the module above for the rules).

use std::cmp::Ordering;

use memwarden_format::units::format_size;
use serde::Serialize;

use super::{
    compare_versions, median, model_runs, require_version, stages_of, versions_of, GateError,
};
use crate::policy::{Effective, Policy, Stage};
use crate::record::{Measure, Metric, RunRecord};

/// Runs a version needs before its spread counts as learned noise. With two runs, each
/// one's deviation from their median is half their difference, so a single unlucky pair
/// teaches a noise as large as that difference (two runs once taught a gate 68.5% on
/// sampled PSS, after which it could not fail); three is the fewest whose median absolute
/// deviation ignores one outlier.
pub const MIN_NOISE_RUNS: usize = 3;

/// Robust relative standard deviation of each group's values around its own median,
/// pooled: 1.4826 × the median absolute relative deviation. Only groups of at least
/// [`MIN_NOISE_RUNS`] values count; `None` when there is none.
pub(super) fn relative_noise(groups: &[&[u64]]) -> Option<f64> {
    let mut deviations = Vec::new();
    for group in groups.iter().filter(|g| g.len() >= MIN_NOISE_RUNS) {
        let center = median(&mut group.iter().map(|&v| v as f64).collect::<Vec<_>>());
        if center > 0.0 {
            deviations.extend(group.iter().map(|&v| ((v as f64 - center) / center).abs()));
        }
    }
    (!deviations.is_empty()).then(|| 1.4826 * median(&mut deviations))
}

/// The noise tolerated on top of the allowed growth, in percent, and how it was reached:
/// `noise_sigmas` × the learned relative noise, within `floor` and `max_noise_pct`; the
/// floor alone while nothing was learned.
pub(super) fn noise_tolerance(
    noise: Option<f64>,
    floor: f64,
    settings: &Effective,
) -> (f64, String) {
    match noise {
        Some(noise) => {
            let tolerance = settings.noise_sigmas * noise * 100.0;
            if tolerance > settings.max_noise_pct {
                (
                    settings.max_noise_pct,
                    format!("learned {tolerance:.1}%, capped at max_noise_pct"),
                )
            } else if tolerance < floor {
                (
                    floor,
                    format!("the floor: learned only {tolerance:.1}% from repeated runs"),
                )
            } else {
                (tolerance, "learned from repeated runs".to_owned())
            }
        }
        None => (
            floor,
            format!("the floor: {MIN_NOISE_RUNS} runs of a version teach the noise"),
        ),
    }
}

/// `runs`, as a count with its noun.
fn runs_count(n: usize) -> String {
    format!("{n} run{}", if n == 1 { "" } else { "s" })
}

/// Compares one metric of a version's runs with its baseline's: `(kind, pass,
/// explanation)`, or `None` when either has no figure for it. Only figures made the same
/// way as the latest run's (the same kind of measure, the same method) are compared and
/// learned from; figures sampled at ticks are reported, and gate only when the policy asks.
fn compare(
    metric: Metric,
    current: &[&RunRecord],
    baseline: &[&RunRecord],
    baseline_label: &str,
    settings: &Effective,
) -> Option<(&'static str, bool, String)> {
    let name = metric.name();
    let reference = current.iter().rev().find(|r| metric.of(r).is_some())?;
    let (measure, method) = (metric.measure(reference), metric.method(reference));
    let comparable = |r: &&&RunRecord| {
        metric.of(r).is_some() && metric.measure(r) == measure && metric.method(r) == method
    };
    let figures = |runs: &[&RunRecord]| -> Vec<u64> {
        runs.iter()
            .filter(comparable)
            .filter_map(|r| metric.of(r))
            .collect()
    };
    let (now, before) = (figures(current), figures(baseline));
    if before.is_empty() {
        let measured = baseline.iter().any(|r| metric.of(r).is_some());
        return measured.then(|| {
            (
                "report",
                true,
                format!(
                    "{name}: {baseline_label} measured it another way ({}), so it is not compared; rerun {baseline_label} with this memwarden to compare",
                    describe(measure, method)
                ),
            )
        });
    }
    let now_median = median(&mut now.iter().map(|&v| v as f64).collect::<Vec<_>>());
    let before_median = median(&mut before.iter().map(|&v| v as f64).collect::<Vec<_>>());
    if before_median <= 0.0 {
        return None;
    }
    let change_pct = (now_median - before_median) * 100.0 / before_median;
    let sampled = measure == Measure::Sampled;
    let gates = !sampled || settings.gate_sampled.contains(&metric);
    let floor = match sampled {
        true => settings.min_noise_pct.max(settings.sampled_noise_pct),
        false => settings.min_noise_pct,
    };
    let (noise_pct, learned) = noise_tolerance(relative_noise(&[&now, &before]), floor, settings);
    let allowed_pct = settings.regression_pct + noise_pct;
    let within = change_pct <= allowed_pct;
    let verdict = match (gates, within) {
        (false, _) => format!(
            "; {}: reported, not gated (gate_sampled = [\"{name}\"] makes it gate)",
            describe(measure, method)
        ),
        (true, true) => String::new(),
        (true, false) => ": REGRESSION".to_owned(),
    };
    Some((
        if gates { "regression" } else { "report" },
        within || !gates,
        format!(
            "{name} {} (median of {}) vs {} in {baseline_label} ({}): {change_pct:+.1}%, allowed {allowed_pct:+.1}% ({:.1}% + noise {noise_pct:.1}%, {learned}){verdict}",
            format_size(now_median as u64),
            runs_count(now.len()),
            format_size(before_median as u64),
            runs_count(before.len()),
            settings.regression_pct,
        ),
    ))
}

/// How a figure was measured, in words.
fn describe(measure: Measure, method: u32) -> String {
    let how = match measure {
        Measure::KernelMark => "a kernel high-water mark",
        Measure::Profiler => "the profiler's count",
        Measure::Sampled => "sampled at ticks",
    };
    match method {
        1 => how.to_owned(),
        method => format!("{how}, method {method}"),
    }
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
            || latest.interrupted.is_some()
        {
            let how = if let Some(why) = &latest.interrupted {
                format!("was interrupted ({why}): its figures stop where memwarden's did")
            } else if latest.oom_killed {
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
        let label = format!("{model}@{baseline_version}");
        for metric in Metric::ALL {
            if let Some((kind, pass, explanation)) =
                compare(metric, &current, &baseline, &label, &settings)
            {
                verdicts.push(Verdict {
                    stage: stage.clone(),
                    kind: kind.to_owned(),
                    metric: Some(metric.name().to_owned()),
                    pass,
                    explanation,
                });
            }
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
        assert!(!report.pass, "{report:#?}");
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
            assert!(report.pass, "rerun {i}: {report:#?}");
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
        let text = explanations(&report);
        assert!(!report.pass);
        assert!(
            text.contains("EXCEEDS the budget 1.00 GiB") && text.contains("OOM-killed"),
            "{text}"
        );
        assert!(text.contains("nothing to compare with"), "{text}");
    }

    /// Every verdict's explanation, a line each.
    fn explanations(report: &CheckReport) -> String {
        let lines: Vec<&str> = report
            .verdicts
            .iter()
            .map(|v| v.explanation.as_str())
            .collect();
        lines.join("\n")
    }

    /// Runs of `version` with the given RSS (a kernel mark) and PSS (sampled) figures.
    fn measured(version: &str, figures: &[(u64, u64)]) -> Vec<RunRecord> {
        figures
            .iter()
            .enumerate()
            .map(|(i, &(rss, pss))| {
                let mut r = record(&format!("{version}-{i}"), "fraud", version, rss);
                r.peaks.pss_bytes = Some(pss);
                r
            })
            .collect()
    }

    fn verdict<'a>(report: &'a CheckReport, metric: &str) -> &'a Verdict {
        report
            .verdicts
            .iter()
            .find(|v| v.metric.as_deref() == Some(metric))
            .unwrap_or_else(|| panic!("no {metric} verdict: {report:#?}"))
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_sampled_figure_that_jumps_is_reported_not_gated_unless_asked() {
        // Unchanged code: the kernel's mark holds still, the sampled PSS does not.
        let mut records = measured(
            "1",
            &[
                (250 * MIB, 135 * MIB),
                (251 * MIB, 179 * MIB),
                (250 * MIB, 150 * MIB),
            ],
        );
        records.extend(measured(
            "2",
            &[
                (251 * MIB, 243 * MIB),
                (250 * MIB, 240 * MIB),
                (250 * MIB, 238 * MIB),
            ],
        ));
        let report = check(&records, "fraud", "2", &Policy::default()).expect("checks");
        assert!(report.pass, "{report:#?}");
        let pss = verdict(&report, "peak_pss");
        assert_eq!(pss.kind, "report");
        assert!(pss.explanation.contains("not gated"), "{}", pss.explanation);
        let asked = Policy::parse("[defaults]\ngate_sampled = [\"peak_pss\"]\n").expect("policy");
        let report = check(&records, "fraud", "2", &asked).expect("checks");
        let pss = verdict(&report, "peak_pss");
        assert_eq!(
            (pss.kind.as_str(), pss.pass),
            ("regression", false),
            "{}",
            pss.explanation
        );
        assert!(Policy::parse("[defaults]\ngate_sampled = [\"peak_pps\"]\n")
            .expect_err("unknown")
            .contains("peak_pss"));
    }

    #[test]
    fn two_runs_teach_no_noise_and_learned_noise_is_capped() {
        // Two runs 68% apart: too few to learn from, so the floor applies and +10% fails.
        let mut records = measured("1", &[(100 * MIB, 1), (168 * MIB, 1)]);
        records.extend(measured("2", &[(146 * MIB, 1), (147 * MIB, 1)]));
        let report = check(&records, "fraud", "2", &Policy::default()).expect("checks");
        let rss = verdict(&report, "peak_rss");
        assert!(
            !rss.pass && rss.explanation.contains("the floor"),
            "{}",
            rss.explanation
        );
        // Three wild runs each: the learned noise is capped, so +40% still fails.
        let mut records = measured("1", &[(100 * MIB, 1), (160 * MIB, 1), (60 * MIB, 1)]);
        records.extend(measured(
            "2",
            &[(140 * MIB, 1), (200 * MIB, 1), (90 * MIB, 1)],
        ));
        let report = check(&records, "fraud", "2", &Policy::default()).expect("checks");
        let rss = verdict(&report, "peak_rss");
        assert!(
            !rss.pass && rss.explanation.contains("capped"),
            "{}",
            rss.explanation
        );
    }

    #[test]
    fn figures_made_another_way_are_not_compared() {
        // The baseline's heap was counted by an older method (before committed bytes).
        let mut records = runs("1", 1 << 30, 3, 0);
        for r in &mut records {
            r.peaks.heap_bytes = Some(900 * MIB);
        }
        let mut newer = runs("2", 1 << 30, 3, 3);
        for r in &mut newer {
            r.peaks.heap_bytes = Some(600 * MIB);
            r.peaks.methods = crate::record::Peaks::current_methods();
        }
        records.extend(newer);
        let report = check(&records, "fraud", "2", &Policy::default()).expect("checks");
        let heap = verdict(&report, "peak_heap");
        assert_eq!(heap.kind, "report");
        assert!(
            heap.explanation.contains("another way") && heap.explanation.contains("method 2"),
            "{}",
            heap.explanation
        );
        // An RSS sampled at ticks is not compared with a kernel mark either.
        let mut records = runs("1", 1 << 30, 3, 0);
        let mut sampled = runs("2", 2 << 30, 3, 3);
        for r in &mut sampled {
            r.peaks.rss_source = "sampled".to_owned();
        }
        records.extend(sampled);
        let report = check(&records, "fraud", "2", &Policy::default()).expect("checks");
        assert_eq!(verdict(&report, "peak_rss").kind, "report");
    }
}
