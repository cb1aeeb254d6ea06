//! The run summary printed at the end of `memwarden run`: peak, when, which process,
//! headroom, budget verdict, the profile's stacks (also `memwarden analyze`) and the top
//! advice.

use std::fmt::Write;

use memwarden_format::advice::Advice;
use memwarden_format::names::{escape_also, is_control};
use memwarden_format::report::{
    BudgetStatus, Enforcement, PeakMethod, PeakSource, Profile, ProfileMode, Report, StackBytes,
    StackFrame,
};
use memwarden_format::units::{format_size, format_size_decimal};

fn source_name(source: PeakSource) -> &'static str {
    match source {
        PeakSource::VmHwm => "kernel high-water mark, VmHWM",
        PeakSource::RuMaxrss => "kernel high-water mark, ru_maxrss",
        PeakSource::Cgroup => "cgroup peak counter",
        PeakSource::Sampled => "largest sample",
        PeakSource::Nvml => "NVML, sampled",
    }
}

/// Renders the summary (several lines, each ending in a newline).
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    let command = display_command(&report.command, 120);
    let ending = match (report.exit.code, &report.exit.signal_name) {
        (_, Some(name)) => format!("was killed by {name}"),
        (Some(code), None) => format!("exited with code {code}"),
        (None, None) => "ended".to_owned(),
    };
    let _ = writeln!(
        out,
        "memwarden: `{command}` {ending} after {:.2} s",
        report.duration_s
    );
    if report.exit.oom_killed {
        let by = report.exit.oom_killed_by.as_deref().unwrap_or("kernel");
        let at = report
            .exit
            .oom_at_bytes
            .map(|b| format!(" at {}", format_size(b)))
            .unwrap_or_default();
        let _ = writeln!(out, "  OOM-KILLED   by the {by}{at}");
    }
    let peak = &report.peak;
    let who = peak
        .pid
        .and_then(|pid| report.processes.iter().find(|p| p.pid == pid))
        .map(|p| format!(" in pid {} ({})", p.pid, display_command(&p.cmdline, 60)))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  peak RSS     {} ({}) at {:.2} s{who}  [{}]",
        format_size(peak.rss_bytes),
        format_size_decimal(peak.rss_bytes),
        peak.at_s,
        source_name(peak.source)
    );
    if let Some(pss) = peak.pss_bytes {
        let uss = peak
            .uss_bytes
            .map(|u| format!(", USS {}", format_size(u)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  peak PSS     {}{uss}  (tree total, shared pages counted once)",
            format_size(pss)
        );
    }
    if let Some(cgroup) = peak.cgroup_bytes {
        let _ = writeln!(
            out,
            "  cgroup peak  {}  (includes page cache)",
            format_size(cgroup)
        );
    }
    match peak.gpu_bytes {
        Some(gpu) => {
            let _ = writeln!(out, "  peak GPU     {}", format_size(gpu));
        }
        None if report.gpu.status == "available" => {
            let _ = writeln!(
                out,
                "  peak GPU     0 B (no process of the tree used a GPU)"
            );
        }
        None => {}
    }
    let limits = &report.limits;
    let headroom = if limits.headroom_bytes >= 0 {
        format!("headroom {}", format_size(limits.headroom_bytes as u64))
    } else {
        format!(
            "OVER by {}",
            format_size(limits.headroom_bytes.unsigned_abs())
        )
    };
    let limit_name = match limits.tightest_limit_source.as_str() {
        "cgroup" => "container cgroup limit",
        "hard_limit" => "--hard-limit",
        _ => "system memory",
    };
    let _ = writeln!(
        out,
        "  limit        {} ({limit_name}); {headroom}",
        format_size(limits.tightest_limit_bytes)
    );
    let budget = &report.budget;
    if let Some(limit) = budget.limit_bytes {
        let verdict = match budget.status {
            BudgetStatus::Fail => "FAIL",
            _ => "pass",
        };
        let percent = if limit > 0 {
            peak.rss_bytes as f64 * 100.0 / limit as f64
        } else {
            f64::INFINITY
        };
        let _ = writeln!(
            out,
            "  budget       {verdict}: {} of {} ({percent:.0}%)",
            format_size(peak.rss_bytes),
            format_size(limit)
        );
    }
    if let Some(hard) = budget.hard_limit_bytes {
        let by = match budget.enforced_by {
            Enforcement::Cgroup => "the kernel (cgroup)",
            Enforcement::Watchdog => "memwarden's watchdog",
            Enforcement::None => "nothing",
        };
        let _ = writeln!(out, "  hard limit   {} enforced by {by}", format_size(hard));
    }
    if report.processes.len() > 1 {
        let _ = writeln!(out, "  processes    {} seen", report.processes.len());
    }
    if let Some(profile) = &report.profile {
        profile_section(&mut out, profile, &report.cwd);
    }
    advice_section(&mut out, &report.advice, &report.cwd);
    for warning in &report.warnings {
        let _ = writeln!(out, "  warning: {warning}");
    }
    out
}

/// Stacks shown per table, and callers shown under each line.
const TABLE_ROWS: usize = 5;
const CALLERS_SHOWN: usize = 3;

pub(crate) fn frame_label(frame: &StackFrame, cwd: &str) -> String {
    let file = frame
        .file
        .strip_prefix(cwd)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(&frame.file);
    let imports = frame.import_note();
    let label = if frame.line > 0 {
        format!("{file}:{}  {}{imports}", frame.line, frame.function)
    } else {
        format!("{file}  {}{imports}", frame.function)
    };
    // One frame, one line: a name's line breaks and other control characters are escaped
    // as its other bytes are (`memwarden_format::names`).
    escape_also(&label, is_control).into_owned()
}

fn stack_table(out: &mut String, title: &str, entries: &[StackBytes], total: u64, cwd: &str) {
    let _ = writeln!(out, "  {title}");
    for entry in entries.iter().take(TABLE_ROWS) {
        let share = if total > 0 {
            entry.bytes as f64 * 100.0 / total as f64
        } else {
            0.0
        };
        let mut frames = entry.stack.iter();
        let leaf = frames
            .next()
            .map(|f| frame_label(f, cwd))
            .unwrap_or_else(|| "[no stack]".to_owned());
        // Untouched pages worth mentioning beside the stack's committed bytes.
        let reserved = entry
            .reserved_bytes
            .filter(|&r| r >= 1 << 20 && r * 10 >= entry.bytes)
            .map(|r| format!("  (+{} reserved, never touched)", format_size(r)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    {:>10} {share:>4.0}%  {leaf}{reserved}",
            format_size(entry.bytes)
        );
        for caller in frames.take(CALLERS_SHOWN) {
            let _ = writeln!(out, "    {:>16}  <- {}", "", frame_label(caller, cwd));
        }
    }
}

/// The profile part of the summary: heap peak, stacks at the peak and at exit.
pub fn profile_section(out: &mut String, profile: &Profile, cwd: &str) {
    let how = match profile.mode {
        ProfileMode::Exact => "every allocation recorded".to_owned(),
        ProfileMode::Sampled => format!(
            "sampled every {} on average, standard error under {}",
            format_size(profile.sample_bytes.unwrap_or(0)),
            format_size(profile.peak_error_bytes)
        ),
    };
    let _ = writeln!(
        out,
        "  heap peak    {} ({how}; {} process{})",
        format_size(profile.peak_bytes),
        profile.processes_profiled,
        if profile.processes_profiled == 1 {
            ""
        } else {
            "es"
        }
    );
    if profile.reserved_bytes >= 1 << 20 {
        let _ = writeln!(
            out,
            "               committed; {} more requested but never touched at the peak (requested peak {})",
            format_size(profile.reserved_bytes),
            format_size(profile.requested_peak_bytes)
        );
    }
    if profile.processes_profiled > 1 {
        let _ = match (profile.peak_method, profile.peak_at_s) {
            (PeakMethod::Measured, Some(at_s)) => writeln!(
                out,
                "               the tree's own peak, at {at_s:.2} s{}",
                profile
                    .at_peak_gap_s
                    .map(|gap_s| if gap_s < 0.0005 {
                        "; stacks as of that moment".to_owned()
                    } else {
                        format!("; stacks read within {gap_s:.3} s of it")
                    })
                    .unwrap_or_default()
            ),
            _ => writeln!(
                out,
                "               each process's own peak, added (an upper bound: captures without the tree's counter)"
            ),
        };
    }
    if !profile.at_peak.is_empty() {
        stack_table(
            out,
            "held at the peak:",
            &profile.at_peak,
            profile.peak_bytes,
            cwd,
        );
    }
    if !profile.leaked.is_empty() {
        // Several processes end at several moments: what each still held as it ended is a
        // sum over those moments, which processes run one after another can take past the
        // peak of any one moment. The title says so rather than seem to contradict it.
        let title = match profile.processes_profiled {
            0 | 1 => format!("still held at exit ({}):", format_size(profile.leaked_bytes)),
            n => format!(
                "still held as each process ended ({}, summed over {n} processes, each at its own end):",
                format_size(profile.leaked_bytes)
            ),
        };
        stack_table(out, &title, &profile.leaked, profile.leaked_bytes, cwd);
    }
}

/// Pieces of advice the summary shows; the rest are in the JSON and HTML reports.
const ADVICE_SHOWN: usize = 3;

/// The advice, most saved first: technique, line, saving and evidence on one line, the fix
/// on the next.
fn advice_section(out: &mut String, advice: &[Advice], cwd: &str) {
    if advice.is_empty() {
        return;
    }
    let _ = writeln!(out, "  advice:");
    for piece in advice.iter().take(ADVICE_SHOWN) {
        let location = piece
            .frame
            .as_ref()
            .map(|f| frame_label(f, cwd))
            .unwrap_or_else(|| "the run".to_owned());
        let saving = piece
            .saving_bytes
            .map(|b| format!("  (saves ~{})", format_size(b)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    {}  {location}{saving}: {}",
            piece.technique.title(),
            escape_also(&piece.evidence, is_control)
        );
        let _ = writeln!(out, "      fix: {}", escape_also(&piece.fix, is_control));
    }
    if advice.len() > ADVICE_SHOWN {
        let _ = writeln!(
            out,
            "    {} more in the HTML report and the JSON report's advice",
            advice.len() - ADVICE_SHOWN
        );
    }
}

/// A command line as a shell user would type it, on one line, cut to `max_chars`.
pub fn display_command(args: &[String], max_chars: usize) -> String {
    if args.is_empty() {
        return "command line unknown".to_owned();
    }
    let quoted: Vec<String> = args.iter().map(|arg| shell_quote(arg)).collect();
    let line = quoted.join(" ");
    match line.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        return arg.to_owned();
    }
    let mut out = String::from("'");
    for c in arg.chars() {
        match c {
            '\'' => out.push_str(r"'\''"),
            '\n' => out.push_str(r"\n"),
            '\t' => out.push_str(r"\t"),
            c if c.is_control() => out.push_str(&format!(r"\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn commands_display_on_one_line_as_typed() {
        assert_eq!(
            display_command(&args(&["python", "train.py", "--lr=0.1"]), 80),
            "python train.py --lr=0.1"
        );
        assert_eq!(
            display_command(&args(&["python", "-c", "import x\nprint(1)"]), 80),
            r"python -c 'import x\nprint(1)'"
        );
        assert_eq!(
            display_command(&args(&["sh", "-c", "echo 'hi'"]), 80),
            r"sh -c 'echo '\''hi'\'''"
        );
        assert_eq!(display_command(&args(&["a", "b"]), 1), "a...");
        assert_eq!(display_command(&[], 10), "command line unknown");
    }
}
