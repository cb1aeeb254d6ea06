//! `memwarden diff`: two versions side by side, then the allocation sites that changed.

use std::fmt::Write;

use memwarden_format::units::format_size;
use memwarden_ledger::gate::{AdviceChange, DiffReport};

use super::history::advice_line;

/// Allocation sites listed by [`render_diff`].
const STACK_CHANGES_SHOWN: usize = 10;

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
            let sign = if site.change_bytes < 0 { "-" } else { "+" };
            let _ = writeln!(
                out,
                "  {sign}{:>10}  {}  ({} -> {})",
                format_size(site.change_bytes.unsigned_abs()),
                site.site,
                format_size(site.a_bytes),
                format_size(site.b_bytes)
            );
        }
    }
    if !report.advice.is_empty() {
        let _ = writeln!(out, "advice, {b} against {a}:");
        for d in &report.advice {
            let change = match d.change {
                AdviceChange::New => "new     ",
                AdviceChange::Resolved => "resolved",
                AdviceChange::Kept => "kept    ",
            };
            let _ = writeln!(out, "  {change} {:<10} {}", d.stage, advice_line(&d.advice));
        }
    }
    out
}
