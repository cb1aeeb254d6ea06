//! The advice engine: what to change in *this* run to need less memory.
//!
//! Each rule is one module reading the measurement in the report (stacks at the peak and
//! at exit, the per-line table, stacks over time, the source text of the user's lines,
//! limits) and returning [`Advice`] only where the numbers show it applies: no evidence,
//! no advice. Every rule has a test that triggers it and one that does not.
//!
//! Rules see Python frames, never C functions: `pickle.load` or `list(...)` run no Python
//! frame of their own, so a rule reads the user's line as it was captured into the report
//! (`profile.source_lines`, see [`crate::sources`]) and the library frames that do appear
//! (`numpy/lib/npyio.py` `load`, `json/__init__.py` `load`, pandas' readers,
//! `torch/serialization.py` `load`).

use std::collections::BTreeMap;

use memwarden_format::advice::{Advice, Technique};
use memwarden_format::report::{Profile, Report, StackFrame};

mod compact;
#[cfg(test)]
mod fixtures;
mod frames;
mod headroom;
mod release;
mod serialization;
mod stream;
mod temporaries;

/// A rule: the advice it finds in a report.
type Rule = fn(&Report) -> Vec<Advice>;

/// Every rule, in the order their advice is shown when savings tie.
const RULES: &[Rule] = &[
    stream::advise,
    serialization::advise,
    release::advise,
    compact::advise,
    temporaries::advise,
    headroom::advise,
];

/// Memory a line must hold for the rules that read the peak to speak of it: at least
/// [`LARGE_BYTES`] and [`LARGE_SHARE`] of the heap peak. 16 MiB: under it a rewrite rarely
/// pays, and it is 32 sampling intervals at the default 512 KiB, so a sampled estimate of
/// it is off by 2.8 MiB (one standard error, sqrt(16 MiB × 512 KiB)) at worst: sampling can
/// neither miss such a line nor push a much smaller one over the bar.
const LARGE_BYTES: u64 = 16 << 20;
/// A tenth of the peak: a change that moves the peak by less is lost in run-to-run noise.
const LARGE_SHARE: f64 = 0.10;

/// Whether `bytes` is large enough, against a heap peak of `peak_bytes`, to advise on.
fn is_large(bytes: u64, peak_bytes: u64) -> bool {
    bytes >= LARGE_BYTES && bytes as f64 >= LARGE_SHARE * peak_bytes as f64
}

/// The text of `frame`'s line, as captured when the run ended.
fn source_of(profile: &Profile, frame: &StackFrame) -> Option<String> {
    crate::sources::text(profile, frame).map(str::to_owned)
}

/// Every rule's advice for `report`, largest estimated saving first (advice without an
/// estimate last).
///
/// One fix can cover another's case on the same line, which then is not said: a load that
/// peaks at twice its payload (`serialization`) is also a large materialisation
/// (`stream`), and the format that maps instead of copying covers both; a line that
/// materialises a whole file (`stream`) as small objects (`compact`: `json.load`'s dicts,
/// `readlines()`'s strings) holds none of them once it streams.
pub fn advise(report: &Report) -> Vec<Advice> {
    let mut advice: Vec<Advice> = RULES.iter().flat_map(|rule| rule(report)).collect();
    let lines_of = |technique: Technique| -> Vec<StackFrame> {
        advice
            .iter()
            .filter(|a| a.technique == technique)
            .filter_map(|a| a.frame.clone())
            .collect()
    };
    let (copied, streamed) = (
        lines_of(Technique::Serialization),
        lines_of(Technique::Stream),
    );
    let covered = |a: &Advice, by: &[StackFrame]| a.frame.as_ref().is_some_and(|f| by.contains(f));
    advice.retain(|a| match a.technique {
        Technique::Stream => !covered(a, &copied),
        Technique::Compact => !covered(a, &streamed) && !covered(a, &copied),
        _ => true,
    });
    advice.sort_by_key(|a| std::cmp::Reverse(a.saving_bytes));
    advice
}

/// Completes a report once its measurement is in: the source text of the lines its profile
/// names (read now, while the files are there; relative to the command's directory) and
/// the advice.
pub fn complete(report: &mut Report) {
    complete_with(report, &BTreeMap::new());
}

/// [`complete`], with the text of code that is no file on disk (a notebook's cells, by
/// the file name their frames carry): the advice reads what those lines do too.
pub fn complete_with(report: &mut Report, given: &BTreeMap<String, String>) {
    if let Some(profile) = report.profile.as_mut() {
        let more = report
            .processes
            .iter()
            .filter_map(|p| p.profile.as_ref())
            .flat_map(|p| p.at_peak.iter().chain(&p.leaked))
            .flat_map(|s| &s.stack);
        crate::sources::attach(profile, &report.cwd, more, given);
    }
    report.advice = advise(report);
}
