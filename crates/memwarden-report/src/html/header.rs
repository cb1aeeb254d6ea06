//! The parts of the page Rust writes as HTML: the header (command, model, exit, peaks
//! against the budget and the limit, warnings) and the advice. They need no script, so the
//! page says what matters even where scripts are off. Every text from the report goes
//! through [`html`].

use std::fmt::Write as _;

use memwarden_format::report::{BudgetStatus, PeakSource, Report};
use memwarden_format::units::format_size;

use super::escape::html;
use super::model::source_name;

/// `cmd` as a shell would read it: words with spaces or quotes in single quotes.
fn command_line(args: &[String]) -> String {
    if args.is_empty() {
        return "command line unknown".to_owned();
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%\\".contains(c);
    args.iter()
        .map(|arg| {
            if !arg.is_empty() && arg.chars().all(plain) {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn duration(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.2} s")
    } else {
        let minutes = (seconds / 60.0).floor();
        format!("{minutes:.0} min {:.0} s", seconds - minutes * 60.0)
    }
}

fn percent(part: u64, whole: u64) -> String {
    format!("{:.0}%", part as f64 * 100.0 / whole.max(1) as f64)
}

/// How the command ended, and the CSS class of that state.
fn exit_state(report: &Report) -> (String, &'static str) {
    let exit = &report.exit;
    if exit.oom_killed {
        let by = exit.oom_killed_by.as_deref().unwrap_or("the kernel");
        let at = exit
            .oom_at_bytes
            .map(|bytes| format!(" at {}", format_size(bytes)))
            .unwrap_or_default();
        return (format!("OOM-killed by {by}{at}"), "bad");
    }
    if let Some(interrupted) = &exit.interrupted {
        return (format!("interrupted ({interrupted})"), "bad");
    }
    match (exit.code, exit.signal) {
        (Some(0), _) => ("exit 0".to_owned(), "good"),
        (Some(code), _) => (format!("exit {code}"), "bad"),
        (None, Some(signal)) => {
            let name = exit
                .signal_name
                .clone()
                .unwrap_or(format!("signal {signal}"));
            (format!("killed by {name}"), "bad")
        }
        (None, None) => ("exit unknown".to_owned(), "warn"),
    }
}

/// One peak figure's card: the value, where it came from, and its share of the budget and
/// of the tightest limit.
fn peak_card(out: &mut String, report: &Report, name: &str, bytes: Option<u64>, source: &str) {
    let Some(bytes) = bytes else {
        let _ = write!(
            out,
            r#"<div class="card muted" data-testid="peak-{key}"><div class="label">{name}</div><div class="value">n/a</div><div class="source">{source}</div></div>"#,
            key = name.to_lowercase(),
            name = html(name),
            source = html(source),
        );
        return;
    };
    let limits = &report.limits;
    let mut against = String::new();
    if let Some(budget) = report.budget.limit_bytes {
        let class = if bytes > budget { "bad" } else { "good" };
        let _ = write!(
            against,
            r#"<div class="against {class}">{} of budget {}</div>"#,
            percent(bytes, budget),
            format_size(budget)
        );
    }
    if limits.tightest_limit_bytes > 0 {
        let share = bytes as f64 / limits.tightest_limit_bytes as f64;
        let class = if share > 0.9 { "bad" } else { "muted" };
        let _ = write!(
            against,
            r#"<div class="against {class}">{} of limit {} ({})</div><div class="meter"><span style="width:{:.1}%"></span></div>"#,
            percent(bytes, limits.tightest_limit_bytes),
            format_size(limits.tightest_limit_bytes),
            html(&limits.tightest_limit_source),
            (share * 100.0).min(100.0)
        );
    }
    let _ = write!(
        out,
        r#"<div class="card" data-testid="peak-{key}"><div class="label">{name}</div><div class="value">{value}</div><div class="source">{source}</div>{against}</div>"#,
        key = name.to_lowercase(),
        name = html(name),
        value = format_size(bytes),
        source = html(source),
    );
}

/// The page's header.
pub fn header(report: &Report) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<header class="run"><div class="brand">memwarden <span>{}</span></div><h1 data-testid="command">{}</h1><div class="meta">"#,
        html(&report.memwarden_version),
        html(&command_line(&report.command))
    );
    if let Some(model) = &report.model {
        let _ = write!(
            out,
            r#"<span class="chip" data-testid="model">{}@{}</span><span class="chip">{}</span><span>run {}</span>"#,
            html(&model.name),
            html(&model.version),
            html(&model.stage),
            html(&model.run_id)
        );
    }
    let (exit, class) = exit_state(report);
    let _ = write!(
        out,
        r#"<span>{}</span><span class="chip {class}" data-testid="exit">{}</span><span>in {}</span></div>"#,
        duration(report.duration_s),
        html(&exit),
        html(&report.cwd),
    );
    let sources = &report.peak.sources;
    let source = |field: &str, fallback: Option<PeakSource>| {
        sources
            .get(field)
            .copied()
            .or(fallback)
            .map_or("unmeasured", source_name)
            .to_owned()
    };
    out.push_str(r#"<section class="cards">"#);
    peak_card(
        &mut out,
        report,
        "RSS",
        Some(report.peak.rss_bytes),
        &format!(
            "{}, at {:.2} s",
            source("rss_bytes", Some(report.peak.source)),
            report.peak.at_s
        ),
    );
    peak_card(
        &mut out,
        report,
        "PSS",
        report.peak.pss_bytes,
        &source("pss_bytes", None),
    );
    let heap_source = match &report.profile {
        Some(profile) => {
            let at = profile
                .peak_at_s
                .map(|at| format!(", at {at:.2} s"))
                .unwrap_or_default();
            format!("allocation profiler, {:?}{at}", profile.peak_method).to_lowercase()
        }
        None => "needs --profile".to_owned(),
    };
    peak_card(
        &mut out,
        report,
        "Heap",
        report.peak.heap_bytes,
        &heap_source,
    );
    let gpu_source = match report.gpu.reason.as_deref() {
        Some(reason) if report.peak.gpu_bytes.is_none() => format!("unavailable: {reason}"),
        _ => source("gpu_bytes", Some(PeakSource::Nvml)),
    };
    peak_card(&mut out, report, "GPU", report.peak.gpu_bytes, &gpu_source);
    out.push_str("</section>");
    budget_line(&mut out, report);
    if !report.warnings.is_empty() {
        out.push_str(r#"<ul class="warnings" data-testid="warnings">"#);
        for warning in &report.warnings {
            let _ = write!(out, "<li>{}</li>", html(warning));
        }
        out.push_str("</ul>");
    }
    out.push_str("</header>");
    out
}

fn budget_line(out: &mut String, report: &Report) {
    let budget = &report.budget;
    let limits = &report.limits;
    out.push_str(r#"<p class="budget" data-testid="budget">"#);
    match (budget.limit_bytes, budget.status) {
        (Some(limit), BudgetStatus::Fail) => {
            let _ = write!(
                out,
                r#"<span class="chip bad">budget {} exceeded</span> "#,
                format_size(limit)
            );
        }
        (Some(limit), _) => {
            let _ = write!(
                out,
                r#"<span class="chip good">within budget {}</span> "#,
                format_size(limit)
            );
        }
        (None, _) => out.push_str(r#"<span class="chip">no budget</span> "#),
    }
    let headroom = if limits.headroom_bytes < 0 {
        format!(
            "over it by {}",
            format_size(limits.headroom_bytes.unsigned_abs())
        )
    } else {
        format!("headroom {}", format_size(limits.headroom_bytes as u64))
    };
    let _ = write!(
        out,
        "tightest limit {} ({}), {headroom}",
        format_size(limits.tightest_limit_bytes),
        html(&limits.tightest_limit_source)
    );
    if let Some(hard) = budget.hard_limit_bytes {
        let _ = write!(
            out,
            "; hard limit {} enforced by {:?}",
            format_size(hard),
            budget.enforced_by
        );
    }
    if let Some(note) = &budget.enforcement_note {
        let _ = write!(out, " ({})", html(note));
    }
    out.push_str("</p>");
}

/// The advice section's body: each piece with its evidence, or why there is none.
pub fn advice(report: &Report) -> String {
    let mut out = String::new();
    if report.advice.is_empty() {
        let why = if report.profile.is_some() {
            "No advice: the measurement shows nothing to change."
        } else {
            "No advice: advice needs the allocation profile (memwarden run --profile)."
        };
        let _ = write!(
            out,
            r#"<p class="empty" data-testid="advice-none">{why}</p>"#
        );
        return out;
    }
    for advice in &report.advice {
        let (saving, saving_class) = advice.saving_bytes.map_or_else(
            || ("saving not estimated".to_owned(), "saving none"),
            |bytes| (format!("saves about {}", format_size(bytes)), "saving"),
        );
        let _ = write!(
            out,
            r#"<article class="advice" data-testid="advice"><div class="advice-head"><h3>{}</h3><span class="{saving_class}">{}</span></div><div class="location">{}</div>"#,
            html(advice.technique.title()),
            html(&saving),
            html(&advice.location()),
        );
        if let Some(source) = &advice.source {
            let _ = write!(out, r#"<pre class="source">{}</pre>"#, html(source));
        }
        let _ = write!(
            out,
            r#"<p class="evidence">{}</p><p class="fix"><b>Fix</b> {}</p><p class="basis">{} &middot; rule {}</p></article>"#,
            html(&advice.evidence),
            html(&advice.fix),
            html(&advice.saving_basis),
            html(&advice.rule),
        );
    }
    out
}
