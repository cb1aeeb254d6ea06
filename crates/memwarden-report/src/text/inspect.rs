//! `memwarden inspect`: each file judged, then what could not be read, then the policy's
//! violations.

use std::fmt::Write;

use memwarden_format::units::format_size;
use memwarden_inspect::gate::{verdict_word, Outcome};
use memwarden_inspect::{FileReport, Severity};

/// Arrays listed per file, largest first.
const ARRAYS_SHOWN: usize = 8;

/// The inspect gate's outcome as terminal text: each file, then what could not be read,
/// then the policy's violations.
pub fn render_inspect(outcome: &Outcome) -> String {
    let mut out = String::new();
    for report in &outcome.files {
        out.push_str(&render_file(report));
    }
    for unreadable in &outcome.unreadable {
        let _ = writeln!(
            out,
            "{}\n  UNREADABLE  {}",
            unreadable.path, unreadable.error
        );
    }
    if !outcome.skipped.is_empty() {
        let _ = writeln!(
            out,
            "skipped {} file(s) that are not model files",
            outcome.skipped.len()
        );
    }
    for violation in &outcome.violations {
        let _ = writeln!(out, "policy: {violation}");
    }
    out
}

fn render_file(report: &FileReport) -> String {
    let mut out = String::new();
    let protocol = report
        .pickle_protocol
        .map(|p| format!(", pickle protocol {p}"))
        .unwrap_or_default();
    let also = if report.read_as.is_empty() {
        String::new()
    } else {
        format!(", also read as {}", report.read_as.join(", "))
    };
    let _ = writeln!(
        out,
        "{}  ({}{protocol}{also}, {})",
        report.path,
        report.format,
        format_size(report.file_bytes)
    );
    let flagged: Vec<_> = report
        .imports
        .iter()
        .filter(|i| i.severity.is_some())
        .collect();
    let serious = report
        .findings
        .iter()
        .filter(|f| f.severity > Severity::Info)
        .count();
    let cannot_verify = report
        .findings
        .iter()
        .any(|f| f.message.starts_with("cannot be verified"));
    let why = if cannot_verify && flagged.is_empty() {
        "cannot be verified".to_owned()
    } else if report.imports.is_empty() && serious == 0 {
        "loading runs no code from the file".to_owned()
    } else if flagged.is_empty() && serious == 0 {
        format!(
            "every import is an allowlisted constructor ({} distinct)",
            report.imports.len()
        )
    } else {
        format!(
            "{} of {} distinct imports flagged, {serious} finding(s)",
            flagged.len(),
            report.imports.len()
        )
    };
    let _ = writeln!(
        out,
        "  verdict   {}: {why}",
        verdict_word(report.verdict).to_uppercase()
    );
    for import in &flagged {
        let _ = writeln!(
            out,
            "    {:<8} {}.{}: {}",
            severity_word(import.severity.unwrap_or(Severity::Info)),
            import.module,
            import.name,
            import.reason
        );
    }
    for finding in report
        .findings
        .iter()
        .filter(|f| f.severity > Severity::Info)
    {
        let at = finding
            .offset
            .map(|o| format!(" (byte {o})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    {:<8} {}{at}",
            severity_word(finding.severity),
            finding.message
        );
    }
    let _ = writeln!(
        out,
        "  payload   {} in {} array(s)",
        format_size(report.payload_bytes),
        report.arrays.len()
    );
    let mut largest: Vec<_> = report.arrays.iter().collect();
    largest.sort_by_key(|a| std::cmp::Reverse(a.bytes));
    for array in largest.iter().take(ARRAYS_SHOWN) {
        let shape = array
            .shape
            .as_ref()
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|| "?".to_owned());
        let _ = writeln!(
            out,
            "    {:<40} {:<10} {:<18} {}",
            array.name.as_deref().unwrap_or("-"),
            array.dtype,
            shape,
            format_size(array.bytes)
        );
    }
    if largest.len() > ARRAYS_SHOWN {
        let _ = writeln!(out, "    ... and {} more", largest.len() - ARRAYS_SHOWN);
    }
    match report.predicted_load_peak_bytes {
        Some(peak) => {
            let _ = writeln!(
                out,
                "  load      {}: predicted peak +{} ({})",
                report.loader,
                format_size(peak),
                report.prediction_rule
            );
        }
        None => {
            let _ = writeln!(out, "  load      {}", report.prediction_rule);
        }
    }
    for other in &report.other_loaders {
        let _ = writeln!(
            out,
            "            {}: predicted peak +{} ({})",
            other.loader,
            format_size(other.predicted_load_peak_bytes),
            other.rule
        );
    }
    let _ = writeln!(
        out,
        "  mmap      {}: {}",
        if report.mmappable { "yes" } else { "no" },
        report.mmap_note
    );
    out
}

fn severity_word(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "INFO",
        Severity::Medium => "MEDIUM",
        Severity::High => "HIGH",
        Severity::Critical => "CRITICAL",
    }
}
