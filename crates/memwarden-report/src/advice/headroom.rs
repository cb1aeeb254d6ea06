//! Budget and headroom: how close the peak came to the tightest limit and to the budget,
//! and what the gap between the heap and the resident memory is made of.
//!
//! Evidence (advice about the run as a whole, no line):
//! - tight: the headroom under the tightest limit (hard limit, cgroup, or the machine's
//!   memory) is under [`TIGHT_LIMIT_SHARE`] of it, or the peak RSS is within
//!   [`TIGHT_BUDGET_SHARE`] of the budget (or over either);
//! - a gap: the peak RSS exceeds the profiled heap peak by at least [`GAP_BYTES`] and
//!   [`GAP_SHARE`] of the RSS, explained with what was measured: `RssAnon` and `RssFile`
//!   at the RSS peak, the bytes requested but never touched (`profile.reserved_bytes`,
//!   in neither figure), and glibc's free bytes inside its arenas at the heap peak
//!   (`profile.malloc_at_peak`); trimming malloc is suggested only when those free bytes
//!   are at least [`FREE_SHARE`] of the gap and [`FREE_BYTES`].

use memwarden_format::advice::{Advice, Technique};
use memwarden_format::report::{Profile, Report};
use memwarden_format::units::format_size;

use super::frames::percent;

/// Headroom under this share of the limit is tight: a 20% swing in peak (input size, a
/// library upgrade) would reach it.
const TIGHT_LIMIT_SHARE: f64 = 0.2;
/// A peak within this share of the budget is tight: the noise between runs of one version
/// is often that large.
const TIGHT_BUDGET_SHARE: f64 = 0.1;
/// A gap under this is the interpreter and its libraries, not worth explaining.
const GAP_BYTES: u64 = 64 << 20;
/// A gap under this share of the RSS changes no decision.
const GAP_SHARE: f64 = 0.25;
/// glibc's free bytes worth trimming: a share of the gap, and an absolute floor.
const FREE_SHARE: f64 = 0.25;
const FREE_BYTES: u64 = 32 << 20;

fn run_advice(evidence: String, saving_bytes: Option<u64>, basis: &str, fix: String) -> Advice {
    Advice {
        technique: Technique::Headroom,
        rule: "headroom".to_owned(),
        frame: None,
        source: None,
        evidence,
        saving_bytes,
        saving_basis: basis.to_owned(),
        fix,
    }
}

/// The advice on the limit and the budget, when the peak came close to either.
fn tight(report: &Report) -> Option<Advice> {
    let rss = report.peak.rss_bytes;
    let limits = &report.limits;
    let mut facts = Vec::new();
    let limit = limits.tightest_limit_bytes;
    if limit > 0 && (limits.headroom_bytes as f64) < TIGHT_LIMIT_SHARE * limit as f64 {
        let name = match limits.tightest_limit_source.as_str() {
            "hard_limit" => "the --hard-limit",
            "cgroup" => "the container's cgroup limit",
            _ => "the machine's memory",
        };
        let left = if limits.headroom_bytes >= 0 {
            format!("headroom {}", format_size(limits.headroom_bytes as u64))
        } else {
            format!(
                "over by {}",
                format_size(limits.headroom_bytes.unsigned_abs())
            )
        };
        facts.push(format!(
            "peak RSS {} is {} of {name}, {}: {left}",
            format_size(rss),
            percent(rss, limit),
            format_size(limit)
        ));
    }
    if let Some(budget) = report.budget.limit_bytes {
        if rss as f64 >= (1.0 - TIGHT_BUDGET_SHARE) * budget as f64 {
            facts.push(format!(
                "peak RSS {} is {} of the budget {}",
                format_size(rss),
                percent(rss, budget),
                format_size(budget)
            ));
        }
    }
    if facts.is_empty() {
        return None;
    }
    let margin = (rss as f64 * (1.0 + TIGHT_LIMIT_SHARE)) as u64;
    Some(run_advice(
        facts.join("; "),
        None,
        "none: this is about the limit, not the program",
        format!(
            "lower the peak (the advice on lines above), or give the run a limit and budget \
             with margin: at least {} (the peak and 20%)",
            format_size(margin)
        ),
    ))
}

/// The advice on the gap between the heap and the resident memory, when it is large.
fn gap(report: &Report, profile: &Profile) -> Option<Advice> {
    // Over several processes the summed RSS counts pages they share (a forked worker's
    // inherited heap) once per process; PSS counts them once.
    let (rss, figure) = match report.peak.pss_bytes {
        Some(pss) if report.processes.len() > 1 => (pss, "peak PSS (shared pages counted once)"),
        _ => (report.peak.rss_bytes, "peak RSS"),
    };
    let heap = profile.peak_bytes;
    let gap = rss.checked_sub(heap)?;
    if gap < GAP_BYTES || (gap as f64) < GAP_SHARE * rss as f64 {
        return None;
    }
    let mut facts = vec![format!(
        "{figure} {} against a heap peak of {}: {} ({}) of resident memory is not heap",
        format_size(rss),
        format_size(heap),
        format_size(gap),
        percent(gap, rss)
    )];
    if let (Some(anon), Some(file)) = (report.peak.anon_bytes, report.peak.file_bytes) {
        facts.push(format!(
            "at the RSS peak RssAnon was {} ({} beyond the heap: interpreter, thread stacks, \
             memory malloc keeps, allocations the profiler's hooks do not see) and RssFile {} \
             (the interpreter, libraries and mapped files: the kernel can drop them)",
            format_size(anon),
            format_size(anon.saturating_sub(heap)),
            format_size(file)
        ));
    }
    let free = profile.malloc_at_peak.map(|m| m.free_bytes);
    if let Some(free) = free {
        facts.push(format!(
            "glibc held {} free inside its arenas at the heap peak",
            format_size(free)
        ));
    }
    if profile.reserved_bytes >= 1 << 20 {
        facts.push(format!(
            "{} more was requested but never touched (in neither figure)",
            format_size(profile.reserved_bytes)
        ));
    }
    let trim = free.filter(|&f| f >= FREE_BYTES && f as f64 >= FREE_SHARE * gap as f64);
    let advice = match trim {
        Some(free) => run_advice(
            facts.join("; "),
            Some(free),
            "up to glibc's free bytes at the peak, which trimming gives back to the kernel \
             (free space amid live blocks returns only in whole pages)",
            "have glibc give freed memory back: MALLOC_TRIM_THRESHOLD_=67108864 in the \
             environment, or ctypes.CDLL('libc.so.6').malloc_trim(0) after large frees; with \
             many threads, MALLOC_ARENA_MAX=2 limits the arenas that keep free memory"
                .to_owned(),
        ),
        None => run_advice(
            facts.join("; "),
            None,
            "none: the gap is not the program's heap",
            "keep this gap in the budget's margin (a budget on peak RSS counts it); memory \
             from native code that bypasses malloc shows here, not in the heap"
                .to_owned(),
        ),
    };
    Some(advice)
}

/// The run's headroom advice.
pub fn advise(report: &Report) -> Vec<Advice> {
    let mut advice: Vec<Advice> = tight(report).into_iter().collect();
    if let Some(profile) = &report.profile {
        advice.extend(gap(report, profile));
    }
    advice
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advice::fixtures::{profile, report, GIB, MIB};
    use memwarden_format::report::{MallocFigures, ProfileMode};

    #[test]
    fn a_peak_near_the_budget_and_a_gap_of_free_arena_memory_are_advised() {
        let mut p = profile(ProfileMode::Sampled, 300 * MIB, Vec::new());
        p.malloc_at_peak = Some(MallocFigures {
            free_bytes: 150 * MIB,
            arena_bytes: 400 * MIB,
            mmapped_bytes: 0,
        });
        let mut r = report(p);
        r.peak.rss_bytes = 600 * MIB;
        r.peak.anon_bytes = Some(560 * MIB);
        r.peak.file_bytes = Some(40 * MIB);
        r.budget.limit_bytes = Some(640 * MIB);
        let advice = advise(&r);
        assert_eq!(advice.len(), 2, "{advice:#?}");
        assert!(advice[0].evidence.contains("94% of the budget 640.00 MiB"));
        assert!(advice[1]
            .evidence
            .contains("300.00 MiB (50%) of resident memory is not heap"));
        assert!(advice[1]
            .evidence
            .contains("RssAnon was 560.00 MiB (260.00 MiB beyond"));
        assert_eq!(advice[1].saving_bytes, Some(150 * MIB));
        assert!(advice[1].fix.contains("MALLOC_TRIM_THRESHOLD_"));
    }

    #[test]
    fn a_cgroup_limit_nearly_reached_is_tight_and_a_gap_without_free_bytes_names_no_malloc_knob() {
        let mut r = report(profile(ProfileMode::Exact, 100 * MIB, Vec::new()));
        r.peak.rss_bytes = 900 * MIB;
        r.limits.tightest_limit_bytes = GIB;
        r.limits.tightest_limit_source = "cgroup".to_owned();
        r.limits.headroom_bytes = (124 * MIB) as i64;
        let advice = advise(&r);
        assert_eq!(advice.len(), 2);
        assert!(advice[0]
            .evidence
            .contains("88% of the container's cgroup limit"));
        assert!(!advice[1].fix.contains("MALLOC"));
        assert_eq!(advice[1].saving_bytes, None);
    }

    #[test]
    fn room_to_spare_and_a_small_gap_get_none() {
        // The fixture: 16 GiB of memory, RSS 30 MiB over the heap.
        assert_eq!(
            advise(&report(profile(
                ProfileMode::Sampled,
                500 * MIB,
                Vec::new()
            ))),
            Vec::new()
        );
    }

    /// Forked workers share their parent's pages: summed, their RSS counts them once per
    /// process, so the gap of a tree is taken from its PSS.
    #[test]
    fn a_trees_gap_is_taken_from_pss_not_summed_rss() {
        let mut r = report(profile(ProfileMode::Sampled, 300 * MIB, Vec::new()));
        r.processes = vec![Default::default(), Default::default(), Default::default()];
        r.peak.rss_bytes = 900 * MIB;
        r.peak.pss_bytes = Some(330 * MIB);
        assert_eq!(
            advise(&r),
            Vec::new(),
            "30 MiB of PSS over the heap is no gap"
        );
        r.peak.pss_bytes = Some(700 * MIB);
        let advice = advise(&r);
        assert_eq!(advice.len(), 1);
        assert!(
            advice[0]
                .evidence
                .starts_with("peak PSS (shared pages counted once) 700.00 MiB"),
            "{}",
            advice[0].evidence
        );
    }
}
