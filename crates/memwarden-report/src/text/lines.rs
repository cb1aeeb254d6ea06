//! The top lines of a profile (`memwarden report --top N`): what each line held at the
//! peak and at exit and what it allocated, with its source text.

use std::fmt::Write;

use memwarden_format::report::{Profile, ProfileMode};
use memwarden_format::units::format_size;

use super::run::frame_label;
use crate::sources;

/// The `top` lines heaviest at the peak, as a table; `cwd` is left off file names under it.
pub fn top_lines(profile: &Profile, top: usize, cwd: &str) -> String {
    let mut out = String::new();
    let count = match profile.mode {
        ProfileMode::Exact => "allocs",
        // Sampled mode records a sample per interval of bytes, not each object.
        ProfileMode::Sampled => "samples",
    };
    let _ = writeln!(
        out,
        "  top lines ({} of {}, by bytes at the peak):",
        top.min(profile.lines.len()),
        profile.lines.len()
    );
    let _ = writeln!(
        out,
        "    {:>11} {:>5} {:>11} {:>9} {:>11}  line",
        "at peak", "share", "allocated", count, "at exit"
    );
    for line in profile.lines.iter().take(top) {
        let share = if profile.peak_bytes > 0 {
            format!(
                "{:.0}%",
                line.peak_bytes as f64 * 100.0 / profile.peak_bytes as f64
            )
        } else {
            "-".to_owned()
        };
        let _ = writeln!(
            out,
            "    {:>11} {:>5} {:>11} {:>9} {:>11}  {}",
            format_size(line.peak_bytes),
            share,
            format_size(line.allocated_bytes),
            line.allocations,
            format_size(line.leaked_bytes),
            frame_label(&line.frame, cwd)
        );
        if let Some(text) = sources::text(profile, &line.frame) {
            let text = memwarden_format::names::escape_also(text, char::is_control);
            let _ = writeln!(out, "    {:>51}  | {text}", "");
        }
    }
    out
}
