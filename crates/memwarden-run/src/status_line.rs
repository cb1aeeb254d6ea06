//! The live status line on a terminal's stderr: memory now, the peak, and the budget bar.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use memwarden_format::units::format_size;

const REFRESH: Duration = Duration::from_millis(200);
const BAR_WIDTH: usize = 20;

/// Draws the status line when stderr is a terminal; does nothing otherwise.
#[derive(Debug)]
pub struct StatusLine {
    enabled: bool,
    last_draw: Option<Instant>,
    drawn: bool,
}

impl StatusLine {
    /// A status line for stderr, unless quiet or stderr is not a terminal.
    pub fn new(quiet: bool) -> Self {
        StatusLine {
            enabled: !quiet && std::io::stderr().is_terminal(),
            last_draw: None,
            drawn: false,
        }
    }

    /// Redraws at most every 200 ms.
    pub fn update(
        &mut self,
        elapsed_s: f64,
        current_bytes: u64,
        peak_bytes: u64,
        processes: u32,
        budget_bytes: Option<u64>,
    ) {
        if !self.enabled || self.last_draw.is_some_and(|t| t.elapsed() < REFRESH) {
            return;
        }
        self.last_draw = Some(Instant::now());
        let mut line = format!(
            "memwarden {:>6.1}s  now {:>11}  peak {:>11}  {} proc{}",
            elapsed_s,
            format_size(current_bytes),
            format_size(peak_bytes),
            processes,
            if processes == 1 { "" } else { "s" }
        );
        if let Some(budget) = budget_bytes {
            line.push_str(&format!("  budget {}", budget_bar(peak_bytes, budget)));
        }
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[2K{line}");
        let _ = stderr.flush();
        self.drawn = true;
    }

    /// Erases the line before the summary is printed.
    pub fn clear(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
            self.drawn = false;
        }
    }
}

/// `[########------------]  40% of 2.00 GiB`, or `[!!!!...] 120% ...` when over.
pub fn budget_bar(peak_bytes: u64, budget_bytes: u64) -> String {
    let ratio = if budget_bytes == 0 {
        f64::INFINITY
    } else {
        peak_bytes as f64 / budget_bytes as f64
    };
    let filled = ((ratio.min(1.0)) * BAR_WIDTH as f64).round() as usize;
    let mark = if ratio > 1.0 { "!" } else { "#" };
    let percent = if ratio.is_finite() {
        format!("{:>3.0}%", ratio * 100.0)
    } else {
        "over".to_owned()
    };
    format!(
        "[{}{}] {percent} of {}",
        mark.repeat(filled),
        "-".repeat(BAR_WIDTH - filled),
        format_size(budget_bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars() {
        assert_eq!(budget_bar(0, 100), "[--------------------]   0% of 100 B");
        assert_eq!(budget_bar(50, 100), "[##########----------]  50% of 100 B");
        assert_eq!(budget_bar(150, 100), "[!!!!!!!!!!!!!!!!!!!!] 150% of 100 B");
    }
}
