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

use memwarden_format::advice::Advice;
use memwarden_format::report::Report;

/// A rule: the advice it finds in a report.
type Rule = fn(&Report) -> Vec<Advice>;

/// Every rule, in the order their advice is shown when savings tie.
const RULES: &[Rule] = &[];

/// Every rule's advice for `report`, largest estimated saving first (advice without an
/// estimate last).
pub fn advise(report: &Report) -> Vec<Advice> {
    let mut advice: Vec<Advice> = RULES.iter().flat_map(|rule| rule(report)).collect();
    advice.sort_by_key(|a| std::cmp::Reverse(a.saving_bytes));
    advice
}

/// Completes a report once its measurement is in: the source text of the lines its profile
/// names (read now, while the files are there; relative to the command's directory) and
/// the advice.
pub fn complete(report: &mut Report) {
    if let Some(profile) = report.profile.as_mut() {
        let more = report
            .processes
            .iter()
            .filter_map(|p| p.profile.as_ref())
            .flat_map(|p| p.at_peak.iter().chain(&p.leaked))
            .flat_map(|s| &s.stack);
        crate::sources::attach(profile, &report.cwd, more);
    }
    report.advice = advise(report);
}
