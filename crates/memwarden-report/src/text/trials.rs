//! `memwarden inspect --measure`: the format trials' table and their recommendation.

use std::fmt::Write;

use memwarden_format::units::format_size;
use memwarden_inspect::trials::{runs_code, FileTrials};

/// The trials of one file as a table, then the recommendation.
pub fn render_trials(m: &FileTrials) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: serialization format trials (measured, each load in a fresh process)",
        m.path
    );
    let _ = writeln!(
        out,
        "  {:<20} {:>12} {:>9} {:>9} {:>12}",
        "format", "file", "save", "load", "load peak"
    );
    for t in &m.trials {
        let save = t
            .save_s
            .map_or_else(|| "(as given)".to_owned(), |s| format!("{s:.2} s"));
        let _ = writeln!(
            out,
            "  {:<20} {:>12} {:>9} {:>7.2} s {:>12}",
            t.format,
            format_size(t.file_bytes),
            save,
            t.load_s,
            format_size(t.load_peak_bytes)
        );
    }
    for (format, why) in &m.skipped {
        let _ = writeln!(out, "  {format:<20} skipped: {why}");
    }
    if let Some(best) = &m.recommended {
        let change = if m.saving_bytes >= 0 {
            format!("{} lower", format_size(m.saving_bytes as u64))
        } else {
            format!("{} higher", format_size(m.saving_bytes.unsigned_abs()))
        };
        let safety = if runs_code(best) {
            ""
        } else {
            ", and loading it runs no code"
        };
        let _ = writeln!(
            out,
            "  recommendation: {best}: load peak {change} than the file as given ({:+.0}%){safety}",
            -m.saving_pct
        );
    }
    out
}
