//! `check`, `diff` and `history`: a model's runs against policy and against each other.
//! This module builds the typed reports; `memwarden_report::text` renders them.
//!
//! **Versions** are ordered naturally: digit runs compare as numbers, so `2 < 10` and
//! `v1.9 < v1.10`. The **baseline** of a version is the closest earlier version with runs
//! in the same stage.
//!
//! **Budgets** are checked on the latest run of the version in each stage.
//!
//! **Regressions** compare medians: the version's runs against its baseline's, per
//! metric, and only figures made the same way as the latest run's (the same kind of
//! measure and the same method version, [`crate::record::Peaks::methods`]); a baseline
//! measured otherwise is reported as not comparable. A change passes while it stays within
//! `regression_pct` plus the noise tolerance, which is learned from repeated runs:
//! `noise_sigmas` robust standard deviations (1.4826 × the median absolute deviation,
//! relative to the median) of each version's runs pooled, from versions with at least
//! [`MIN_NOISE_RUNS`] runs, never less than `min_noise_pct` and never more than
//! `max_noise_pct`. With fewer runs only the floor applies, so rerunning a version a few
//! times is what teaches the gate how noisy it is.
//!
//! **Tests** (`pytest --memwarden-baseline`) are judged against their own history by the
//! same rules: [`baseline`].
//!
//! **What gates**: kernel high-water marks (peak RSS from `VmHWM`, `ru_maxrss` or the
//! cgroup) and the profiler's figures (heap peak, leaked) gate by default. Figures sampled
//! at ticks (PSS, GPU, an RSS without a kernel mark) miss short peaks, so they are
//! reported and gate only when the policy lists them in `gate_sampled`, with a noise floor
//! of `sampled_noise_pct`.

pub mod baseline;
mod check;
mod diff;
mod history;

pub use check::{check, CheckReport, Verdict, MIN_NOISE_RUNS};
pub use diff::{diff, AdviceChange, AdviceDiff, DiffReport, MetricDiff, SiteChange};
pub use history::{history, HistoryRow};

use std::cmp::Ordering;
use std::collections::BTreeSet;

use crate::record::RunRecord;

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
pub(crate) mod test_runs {
    use super::*;
    use crate::record::tests_support::record;

    /// A deterministic noise of about ±1% (a fixed sequence, so the test cannot flake).
    pub fn noisy(base: u64, i: usize) -> u64 {
        let offsets = [0.0, 0.8, -0.6, 0.3, -0.9, 0.5, -0.2, 1.0, -0.4, 0.1];
        (base as f64 * (1.0 + offsets[i % offsets.len()] / 100.0)) as u64
    }

    pub fn runs(version: &str, base: u64, n: usize, start: usize) -> Vec<RunRecord> {
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
}

#[cfg(test)]
mod tests {
    use super::test_runs::runs;
    use super::*;
    use crate::policy::Policy;

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
    fn natural_version_order() {
        let mut v = vec!["10", "2", "v1.10.0", "v1.9.3", "1"];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(v, ["1", "2", "10", "v1.9.3", "v1.10.0"]);
        assert_eq!(utc(0.0), "1970-01-01 00:00");
        assert_eq!(utc(1_795_000_000.0), "2026-11-18 11:06");
    }
}
