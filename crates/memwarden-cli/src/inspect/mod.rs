//! `memwarden inspect`: model files judged before anyone loads them. The gate itself
//! (walking, judging, the schema) is `memwarden_inspect::gate`, its text
//! `memwarden_report::text`; this module reads the policy file, chooses the rendering and
//! maps the outcome to an exit status.

use std::path::{Path, PathBuf};

use memwarden_inspect::gate::{inspect_paths, GatePolicy, Outcome};
use memwarden_inspect::safety::Allowlist;
use memwarden_inspect::trials::FileTrials;
use memwarden_inspect::{Options, Verdict};
use memwarden_ledger::policy::{Policy, RequiredSafety};
use memwarden_report::text::{render_inspect, render_trials};
use serde::Serialize;

use crate::exit::{Failure, Status};

mod trials;

/// `--measure` settings.
#[derive(Debug)]
pub struct Measure {
    /// Load files that are not judged safe.
    pub trust: bool,
    /// The interpreter.
    pub python: PathBuf,
    /// Record each load in the ledger as (model, version).
    pub record_as: Option<(String, String)>,
    /// `--ledger`, passed on to the recording runs.
    pub ledger: Option<String>,
}

/// The JSON document: the gate's outcome, plus the format trials' measurements when asked.
#[derive(Serialize)]
struct Document<'a> {
    #[serde(flatten)]
    outcome: &'a Outcome,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    measurements: &'a [FileTrials],
}

/// `memwarden inspect PATH...`.
pub fn main(
    paths: &[PathBuf],
    json: Option<&Path>,
    policy_path: Option<&Path>,
    measure: Option<&Measure>,
) -> Result<Status, Failure> {
    let policy = Policy::find(policy_path).map_err(Failure::usage)?;
    let gate = GatePolicy {
        require: match policy.inspect.require {
            Some(RequiredSafety::Review) => Verdict::Review,
            _ => Verdict::Safe,
        },
        max_load_peak_bytes: policy.inspect.max_load_peak.map(|size| size.0),
    };
    let options = Options {
        allowlist: Allowlist::with_extra(policy.inspect.allowed_pairs()),
        ..Options::default()
    };
    let outcome = inspect_paths(paths, &gate, &options).map_err(Failure::usage)?;
    let mut measurements = Vec::new();
    if let Some(measure) = measure {
        for report in &outcome.files {
            let measurement = trials::measure(report, measure).map_err(|e| {
                Failure::new(
                    Status::PolicyFailed,
                    format!("--measure {}: {e}", report.path),
                )
            })?;
            measurements.push(measurement);
        }
    }
    if let Some(path) = json {
        let document = Document {
            outcome: &outcome,
            measurements: &measurements,
        };
        let written = serde_json::to_vec_pretty(&document)
            .map_err(std::io::Error::from)
            .and_then(|bytes| {
                if path == Path::new("-") {
                    println!("{}", String::from_utf8_lossy(&bytes));
                    Ok(())
                } else {
                    std::fs::write(path, bytes)
                }
            });
        written.map_err(|e| {
            Failure::new(
                Status::Internal,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
    }
    if json != Some(Path::new("-")) {
        print!("{}", render_inspect(&outcome));
        for m in &measurements {
            print!("{}", render_trials(m));
        }
    }
    // A file judged unsafe outranks one that could not be read at all.
    Ok(if !outcome.violations.is_empty() {
        Status::PolicyFailed
    } else if !outcome.unreadable.is_empty() {
        Status::Unreadable
    } else {
        Status::Command(0)
    })
}
