//! `memwarden history`: a model's versions over time, one row per version and stage.

use std::fmt::Write;

use memwarden_format::advice::Advice;
use memwarden_format::units::format_size;
use memwarden_ledger::gate::{utc, HistoryRow};

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
        for advice in r.advice.iter().take(ADVICE_SHOWN) {
            let _ = writeln!(out, "{:>16}{}", "advice: ", advice_line(advice));
        }
        if r.advice.len() > ADVICE_SHOWN {
            let _ = writeln!(out, "{:>16}{} more", "", r.advice.len() - ADVICE_SHOWN);
        }
    }
    out
}

/// Advice listed under each version.
const ADVICE_SHOWN: usize = 3;

/// One piece of advice on one line: the technique, where, and the saving.
pub(crate) fn advice_line(advice: &Advice) -> String {
    let saving = advice
        .saving_bytes
        .map(|bytes| format!(" (saves about {})", format_size(bytes)))
        .unwrap_or_default();
    let place = match advice.frame {
        Some(_) => format!("at {}", advice.location()),
        None => "(the run as a whole)".to_owned(),
    };
    let line = format!("{} {place}{saving}", advice.technique.title());
    memwarden_format::names::escape_also(&line, char::is_control).into_owned()
}
