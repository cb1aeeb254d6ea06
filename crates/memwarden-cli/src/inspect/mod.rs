//! `memwarden inspect`: model files judged before anyone loads them. The gate itself
//! (walking, judging, the schema and its text) is `memwarden_inspect::gate`; this module
//! reads the policy file, chooses the rendering and maps the outcome to an exit status.

use std::path::{Path, PathBuf};

use memwarden_inspect::gate::{inspect_paths, render_text, GatePolicy, Outcome};
use memwarden_inspect::safety::Allowlist;
use memwarden_inspect::{Options, Verdict};
use memwarden_ledger::policy::{Policy, RequiredSafety};
use serde::Serialize;

use crate::exit::Status;

mod advisor;

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

/// The JSON document: the gate's outcome, plus the advisor's measurements when asked.
#[derive(Serialize)]
struct Document<'a> {
    #[serde(flatten)]
    outcome: &'a Outcome,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    measurements: &'a [advisor::Measurement],
}

/// `memwarden inspect PATH...`.
pub fn main(
    paths: &[PathBuf],
    json: Option<&Path>,
    policy_path: Option<&Path>,
    measure: Option<&Measure>,
) -> Status {
    let policy = match Policy::find(policy_path) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("memwarden: error: {e}");
            return Status::Usage;
        }
    };
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
    let outcome = match inspect_paths(paths, &gate, &options) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("memwarden: error: {e}");
            return Status::Usage;
        }
    };
    let mut measurements = Vec::new();
    if let Some(measure) = measure {
        for report in &outcome.files {
            match advisor::measure(report, measure) {
                Ok(m) => measurements.push(m),
                Err(e) => {
                    eprintln!("memwarden: error: --measure {}: {e}", report.path);
                    return Status::PolicyFailed;
                }
            }
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
        if let Err(e) = written {
            eprintln!("memwarden: error: cannot write {}: {e}", path.display());
            return Status::Internal;
        }
    }
    if json != Some(Path::new("-")) {
        print!("{}", render_text(&outcome));
        for m in &measurements {
            print!("{}", advisor::render(m));
        }
    }
    // A file judged unsafe outranks one that could not be read at all.
    if !outcome.violations.is_empty() {
        Status::PolicyFailed
    } else if !outcome.unreadable.is_empty() {
        Status::Unreadable
    } else {
        Status::Command(0)
    }
}
