//! A test's baseline: its own recorded figures, for the pytest plugin's
//! `--memwarden-baseline`, which records each test's heap peak in the ledger (model: the
//! suite, stage `test`, tag [`TAG_TEST`]: the test's id) and fails a test only when it
//! needs more than its history allows.
//!
//! **The history** of a test is its records in chain order that measured the heap the same
//! way (tag [`TAG_PROFILE`]: `sampled` or `exact`) and passed: from its latest record
//! tagged [`TAG_BASELINE`]` = `[`ACCEPTED`] on (an increase accepted on purpose starts a
//! new history), leaving out records that were themselves regressions ([`REGRESSION`]),
//! the latest [`WINDOW`] of them.
//!
//! **The verdict** follows `check`'s rules (the module above): the test's figure against
//! the history's median, allowed `regression_pct` plus the noise learned from the
//! history's own spread (`noise_sigmas` robust standard deviations, within `min_noise_pct`
//! and `max_noise_pct`), and where the heap was sampled never less than `noise_sigmas`
//! mean intervals between samples (a test of a few KiB is estimated at 0 or one whole
//! sample; larger figures' sampling noise shows in their history's spread). With fewer
//! than [`MIN_NOISE_RUNS`] earlier runs it only learns: no run fails on a guess.

use std::collections::BTreeMap;

use memwarden_format::units::format_size;
use serde::Serialize;

use super::check::{noise_tolerance, relative_noise};
use super::{median, MIN_NOISE_RUNS};
use crate::policy::Effective;
use crate::record::RunRecord;

/// The tag naming the test (pytest's node id).
pub const TAG_TEST: &str = "test";
/// The tag saying how the heap was measured: `sampled` or `exact`.
pub const TAG_PROFILE: &str = "profile";
/// The tag with the baseline's verdict on the record, when it was not an ordinary pass.
pub const TAG_BASELINE: &str = "baseline";
/// [`TAG_BASELINE`] of a run whose figures were accepted as the new baseline.
pub const ACCEPTED: &str = "accepted";
/// [`TAG_BASELINE`] of a run that failed its baseline.
pub const REGRESSION: &str = "regression";
/// Earlier runs a test's baseline is made of, at most.
pub const WINDOW: usize = 20;

/// The history of every test in `records`: `(test, profile)` → heap peaks, oldest first.
pub fn test_histories(records: &[RunRecord]) -> BTreeMap<(String, String), Vec<u64>> {
    let mut histories: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for record in records {
        let (Some(test), Some(profile), Some(heap)) = (
            record.tags.get(TAG_TEST),
            record.tags.get(TAG_PROFILE),
            record.peaks.heap_bytes,
        ) else {
            continue;
        };
        let history = histories
            .entry((test.clone(), profile.clone()))
            .or_default();
        match record.tags.get(TAG_BASELINE).map(String::as_str) {
            Some(ACCEPTED) => *history = vec![heap],
            Some(REGRESSION) => {}
            _ if record.exit_code == Some(0) => history.push(heap),
            _ => {}
        }
    }
    for history in histories.values_mut() {
        let excess = history.len().saturating_sub(WINDOW);
        history.drain(..excess);
    }
    histories
}

/// A test's figure against its history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    /// Whether the test passes its baseline (always while it is still learning).
    pub pass: bool,
    /// Whether there was a verdict (at least [`MIN_NOISE_RUNS`] earlier runs).
    pub judged: bool,
    /// Earlier runs compared with.
    pub runs: usize,
    /// Their median, bytes.
    pub baseline_bytes: Option<u64>,
    /// The most the test may reach, bytes.
    pub allowed_bytes: Option<u64>,
    /// One sentence: the figures and the rule.
    pub explanation: String,
}

/// Judges `now_bytes` against `history` (see the module's rules); `sample_bytes` is the
/// mean bytes between samples of a sampled heap, 0 when every allocation was recorded.
pub fn judge(
    history: &[u64],
    now_bytes: u64,
    sample_bytes: u64,
    settings: &Effective,
) -> Judgement {
    let runs = history.len();
    if runs < MIN_NOISE_RUNS {
        return Judgement {
            pass: true,
            judged: false,
            runs,
            baseline_bytes: None,
            allowed_bytes: None,
            explanation: format!(
                "learning its baseline: {runs} of {MIN_NOISE_RUNS} earlier runs recorded, no verdict yet"
            ),
        };
    }
    let center = median(&mut history.iter().map(|&v| v as f64).collect::<Vec<_>>());
    let (noise_pct, learned) =
        noise_tolerance(relative_noise(&[history]), settings.min_noise_pct, settings);
    let allowed_pct = settings.regression_pct + noise_pct;
    let slack_bytes = (settings.noise_sigmas * sample_bytes as f64).ceil() as u64;
    let by_share = center * (1.0 + allowed_pct / 100.0);
    let allowed = by_share.max(center + slack_bytes as f64);
    let allowed_bytes = allowed.ceil() as u64;
    let pass = now_bytes <= allowed_bytes;
    let change = match center > 0.0 {
        true => format!("{:+.1}%", (now_bytes as f64 - center) * 100.0 / center),
        false => "up from nothing".to_owned(),
    };
    let slack = if allowed > by_share {
        format!(", at least {} for the sampling", format_size(slack_bytes))
    } else {
        String::new()
    };
    Judgement {
        pass,
        judged: true,
        runs,
        baseline_bytes: Some(center as u64),
        allowed_bytes: Some(allowed_bytes),
        explanation: format!(
            "heap peak {} vs {} (median of its last {runs} runs): {change}, allowed up to {} ({:.1}% + noise {noise_pct:.1}%, {learned}{slack}){}",
            format_size(now_bytes),
            format_size(center as u64),
            format_size(allowed_bytes),
            settings.regression_pct,
            if pass { "" } else { ": REGRESSION" },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::test_runs::noisy;
    use crate::policy::{Policy, Stage};
    use crate::record::tests_support::record;

    fn test_record(i: usize, test: &str, heap: u64, baseline: Option<&str>) -> RunRecord {
        let mut r = record(&format!("r{i}"), "suite", "1", 1 << 30);
        r.stage = "test".to_owned();
        r.exit_code = Some(0);
        r.peaks.heap_bytes = Some(heap);
        r.tags.insert(TAG_TEST.into(), test.into());
        r.tags.insert(TAG_PROFILE.into(), "sampled".into());
        if let Some(verdict) = baseline {
            r.tags.insert(TAG_BASELINE.into(), verdict.into());
        }
        r
    }

    fn settings() -> Effective {
        Policy::default().effective("suite", Stage::Test)
    }

    #[test]
    fn a_test_is_judged_against_its_own_noise_only_after_three_runs() {
        let base = 100 << 20;
        let history: Vec<u64> = (0..2).map(|i| noisy(base, i)).collect();
        let learning = judge(&history, base * 3, 0, &settings());
        assert!(learning.pass && !learning.judged, "{learning:?}");
        assert!(
            learning.explanation.contains("2 of 3"),
            "{}",
            learning.explanation
        );

        let history: Vec<u64> = (0..8).map(|i| noisy(base, i)).collect();
        let within = judge(&history, noisy(base, 9), 0, &settings());
        assert!(within.pass && within.judged, "{within:?}");
        let grown = judge(&history, base + base / 10, 0, &settings());
        assert!(!grown.pass, "{grown:?}");
        assert!(
            grown.explanation.contains("REGRESSION"),
            "{}",
            grown.explanation
        );
    }

    #[test]
    fn a_noisy_history_allows_more_and_slack_covers_tiny_figures() {
        let noisy_history = [100u64 << 20, 112 << 20, 90 << 20, 105 << 20, 95 << 20];
        let judgement = judge(&noisy_history, 112 << 20, 0, &settings());
        assert!(judgement.pass, "{judgement:?}");
        // A test of a few KiB, sampled every 64 KiB on average: one sample more is within
        // the estimate's error, four MiB is not.
        let tiny = [4096u64, 4096, 4096, 4096];
        let within = judge(&tiny, 4096 + (64 << 10), 64 << 10, &settings());
        assert!(
            within.pass && within.explanation.contains("for the sampling"),
            "{within:?}"
        );
        assert!(!judge(&tiny, 4096 + (4 << 20), 64 << 10, &settings()).pass);
        assert!(!judge(&tiny, 4096 + (64 << 10), 0, &settings()).pass);
    }

    #[test]
    fn histories_start_at_the_last_acceptance_and_skip_regressions_and_failures() {
        let mut records = vec![
            test_record(0, "t::a", 10, None),
            test_record(1, "t::a", 11, None),
            test_record(2, "t::a", 50, Some(ACCEPTED)),
            test_record(3, "t::a", 51, None),
            test_record(4, "t::a", 90, Some(REGRESSION)),
            test_record(5, "t::b", 7, None),
        ];
        let mut failed = test_record(6, "t::a", 99, None);
        failed.exit_code = Some(1);
        records.push(failed);
        let mut exact = test_record(7, "t::a", 1, None);
        exact.tags.insert(TAG_PROFILE.into(), "exact".into());
        records.push(exact);
        let histories = test_histories(&records);
        assert_eq!(histories[&("t::a".into(), "sampled".into())], [50, 51]);
        assert_eq!(histories[&("t::a".into(), "exact".into())], [1]);
        assert_eq!(histories[&("t::b".into(), "sampled".into())], [7]);

        let many: Vec<RunRecord> = (0..30)
            .map(|i| test_record(i, "t::c", i as u64, None))
            .collect();
        let history = &test_histories(&many)[&("t::c".into(), "sampled".into())];
        assert_eq!(history.len(), WINDOW);
        assert_eq!(history[0], 10);
    }
}
