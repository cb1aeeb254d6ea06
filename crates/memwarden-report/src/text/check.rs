//! `memwarden check`: each verdict on a line, under the overall one.

use std::fmt::Write;

use memwarden_ledger::gate::CheckReport;

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
            match (v.pass, v.kind.as_str()) {
                (false, _) => "FAIL",
                (true, "report") => "info",
                (true, _) => "ok  ",
            },
            v.stage,
            v.explanation
        );
    }
    out
}
