//! The run report as one self-contained HTML page: a header with the peaks against the
//! budget and the limit, a timeline, flame graphs at the peak and at exit, the per-line
//! table, the processes and the advice.
//!
//! The page needs no network: the style and the script are compiled in (`include_str!`,
//! as inferno embeds its own), fonts are the system's, and a Content-Security-Policy
//! forbids every fetch, so it opens from disk and can be mailed. Every name in a report
//! comes from the profiled program and is untrusted: Rust writes it HTML-escaped
//! ([`escape::html`]); the script reads it from a JSON data island whose markup
//! characters are escaped ([`escape::json_for_script`]) and puts it into the page as text
//! only (`textContent`, `createElement`), never as markup. The data is interned
//! ([`model`]) so a run with hundreds of processes stays a few MiB.

mod escape;
mod header;
mod model;

use memwarden_format::report::Report;

/// The style sheet.
const CSS: &str = include_str!("page.css");

/// The script, in the order its parts depend on each other.
const SCRIPTS: [&str; 4] = [
    include_str!("util.js"),
    include_str!("timeline.js"),
    include_str!("flame.js"),
    include_str!("tables.js"),
];

/// Nothing may be fetched: not a font, not an image, not a script.
const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:";

/// The page for `report`.
pub fn render(report: &Report) -> String {
    let data = serde_json::to_string(&model::build(report))
        .expect("the page model is plain data and always serializes");
    let data = escape::json_for_script(&data);
    let title = report
        .command
        .iter()
        .map(|arg| arg.rsplit('/').next().unwrap_or(arg))
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let mut page = String::with_capacity(data.len() + 64 * 1024);
    page.push_str(r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">"#);
    page.push_str(r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#);
    page.push_str(&format!(
        r#"<meta http-equiv="Content-Security-Policy" content="{CSP}"><title>memwarden: {}</title><style>"#,
        escape::html(&title)
    ));
    page.push_str(CSS);
    page.push_str("</style></head><body>");
    page.push_str(concat!(
        r##"<nav class="top"><b>memwarden</b><a href="#timeline">Timeline</a><a href="#flame">Flame graph</a>"##,
        r##"<a href="#lines">Lines</a><a href="#processes">Processes</a><a href="#advice">Advice</a></nav><main>"##
    ));
    page.push_str(&header::header(report));
    page.push_str(&sections(report));
    page.push_str(r#"<section class="panel" id="advice"><h2>Advice</h2>"#);
    page.push_str(&header::advice(report));
    page.push_str("</section>");
    page.push_str(&format!(
        "<footer>memwarden {} &middot; report schema {}</footer></main>",
        escape::html(&report.memwarden_version),
        escape::html(&report.schema)
    ));
    page.push_str(r#"<script type="application/json" id="memwarden-data">"#);
    page.push_str(&data);
    page.push_str("</script><script>(function () {\n\"use strict\";\n");
    for script in SCRIPTS {
        page.push_str(script);
    }
    page.push_str("})();</script></body></html>\n");
    page
}

/// The interactive sections: their frames here, their content drawn by the script.
fn sections(report: &Report) -> String {
    let count_note = match &report.profile {
        Some(profile) => format!(
            "{} profile, {} process{} profiled",
            match profile.mode {
                memwarden_format::report::ProfileMode::Sampled => "sampled",
                memwarden_format::report::ProfileMode::Exact => "exact",
            },
            profile.processes_profiled,
            if profile.processes_profiled == 1 {
                ""
            } else {
                "es"
            }
        ),
        None => "no allocation profile (run with --profile)".to_owned(),
    };
    format!(
        concat!(
            r#"<section class="panel" id="timeline"><h2>Timeline <small>click a moment to see the stacks held then</small></h2>"#,
            r#"<div class="toolbar"><button class="on" data-view="tree" data-testid="timeline-view-tree">Tree</button>"#,
            r#"<button data-view="processes" data-testid="timeline-view-processes">Processes</button>"#,
            r#"<span class="spacer"></span><button data-testid="timeline-jump-peak">Jump to peak</button></div>"#,
            r#"<div class="readout" data-testid="timeline-readout"></div><div data-testid="timeline-chart"></div>"#,
            r#"<div class="legend" data-testid="timeline-legend"></div>"#,
            r#"<div class="stacks" data-testid="timeline-stacks"></div></section>"#,
            r#"<section class="panel" id="flame"><h2>Memory by stack <small>{note}</small></h2><div class="toolbar">"#,
            r#"<button class="on" data-flame="peak" data-testid="flame-tab-peak">At the peak</button>"#,
            r#"<button data-flame="leaked" data-testid="flame-tab-leaked">Held at exit</button>"#,
            r#"<button data-testid="flame-reset">Reset zoom</button><span class="spacer"></span>"#,
            r#"<span class="search-status" data-testid="flame-search-status"></span>"#,
            r#"<input type="search" placeholder="Search frames" data-testid="flame-search" aria-label="Search frames"></div>"#,
            r#"<div class="flame" data-testid="flame"></div><div class="flame-details" data-testid="flame-details"></div>"#,
            r#"<div class="legend flame-kinds"><span class="key k-user"><i></i>your code</span>"#,
            r#"<span class="key k-lib"><i></i>libraries and the standard library</span>"#,
            r#"<span class="key k-import"><i></i>import</span><span class="key k-native"><i></i>no Python frame</span>"#,
            r#"<span class="key k-other"><i></i>[other]: frames under 0.1% merged</span></div></section>"#,
            r#"<section class="panel" id="lines"><h2>Top lines <small>click a column to sort</small></h2>"#,
            r#"<div class="table-wrap"><table class="data" data-testid="lines"></table></div></section>"#,
            r#"<section class="panel" id="processes"><h2>Processes <small data-testid="process-count"></small></h2>"#,
            r#"<div class="table-wrap"><table class="data" data-testid="processes"></table></div>"#,
            r#"<div class="stacks" data-testid="process-stacks"></div></section>"#,
        ),
        note = escape::html(&count_note)
    )
}

#[cfg(test)]
mod synthetic;
#[cfg(test)]
mod tests;
