//! The governance commands: `history`, `diff`, `check`, `ledger verify`, `ledger sync`.

use std::path::Path;

use memwarden_ledger::chain::verify as verify_chain;
use memwarden_ledger::gate::{self, GateError};
use memwarden_ledger::policy::Policy;
use memwarden_ledger::spool::Spool;
use memwarden_ledger::{Ledger, LedgerError, LedgerLocation, RunRecord};
use serde::Serialize;

use crate::exit::Status;

fn fail(status: Status, message: impl std::fmt::Display) -> Status {
    eprintln!("memwarden: error: {message}");
    status
}

fn location(ledger: Option<&str>) -> Result<LedgerLocation, Status> {
    LedgerLocation::resolve(ledger).map_err(|e| fail(Status::Usage, format!("--ledger: {e}")))
}

fn ledger_failure(error: LedgerError) -> Status {
    let status = match error {
        LedgerError::BadLocation(_) => Status::Usage,
        _ => Status::LedgerUnavailable,
    };
    fail(status, error)
}

/// Opens the ledger for reading: a ledger that does not exist yet is not created by a
/// read-only command.
fn open_for_reading(ledger: Option<&str>) -> Result<Ledger, Status> {
    let location = location(ledger)?;
    if let LedgerLocation::Sqlite(path) = &location {
        if !path.exists() {
            return Err(fail(
                Status::LedgerUnavailable,
                format!("no ledger at {}: record runs with `memwarden run --model NAME --version V -- CMD`, or point --ledger at an existing one", path.display()),
            ));
        }
    }
    Ledger::open(&location).map_err(ledger_failure)
}

fn records(ledger: Option<&str>) -> Result<Vec<RunRecord>, Status> {
    open_for_reading(ledger)?
        .records(None)
        .map_err(ledger_failure)
}

fn gate_failure(error: GateError) -> Status {
    fail(Status::Usage, error)
}

fn print_json<T: Serialize>(value: &T) -> Status {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            println!("{text}");
            Status::Command(0)
        }
        Err(e) => fail(Status::Internal, e),
    }
}

/// `memwarden history MODEL`.
pub fn history(ledger: Option<&str>, model: &str, json: bool) -> Status {
    let records = match records(ledger) {
        Ok(records) => records,
        Err(status) => return status,
    };
    match gate::history(&records, model) {
        Ok(rows) if json => print_json(&rows),
        Ok(rows) => {
            print!("{}", gate::render_history(model, &rows));
            Status::Command(0)
        }
        Err(e) => gate_failure(e),
    }
}

/// `memwarden diff A B`.
pub fn diff(ledger: Option<&str>, a: &str, b: &str, json: bool) -> Status {
    let (model, version_a) = match gate::parse_spec(a) {
        Ok(spec) => spec,
        Err(e) => return gate_failure(e),
    };
    let (model_b, version_b) = match gate::parse_spec(b) {
        Ok(spec) => spec,
        Err(_) if !b.contains('@') => (model.clone(), b.to_owned()),
        Err(e) => return gate_failure(e),
    };
    if model_b != model {
        return fail(
            Status::Usage,
            format!("diff compares versions of one model: {model} and {model_b} differ"),
        );
    }
    let records = match records(ledger) {
        Ok(records) => records,
        Err(status) => return status,
    };
    match gate::diff(&records, &model, &version_a, &version_b) {
        Ok(report) if json => print_json(&report),
        Ok(report) => {
            print!("{}", gate::render_diff(&report));
            Status::Command(0)
        }
        Err(e) => gate_failure(e),
    }
}

/// `memwarden check MODEL@VERSION`.
pub fn check(ledger: Option<&str>, spec: &str, policy_path: Option<&Path>, json: bool) -> Status {
    let (model, version) = match gate::parse_spec(spec) {
        Ok(spec) => spec,
        Err(e) => return gate_failure(e),
    };
    let policy = match Policy::find(policy_path) {
        Ok(policy) => policy,
        Err(e) => return fail(Status::Usage, e),
    };
    let records = match records(ledger) {
        Ok(records) => records,
        Err(status) => return status,
    };
    match gate::check(&records, &model, &version, &policy) {
        Ok(report) => {
            let status = if report.pass {
                Status::Command(0)
            } else {
                Status::PolicyFailed
            };
            if json {
                print_json(&report);
            } else {
                print!("{}", gate::render_check(&report));
            }
            status
        }
        Err(e) => gate_failure(e),
    }
}

#[derive(Serialize)]
struct VerifyOutput<'a> {
    ledger: String,
    entries: usize,
    head: &'a str,
    intact: bool,
    breaks: Vec<BreakOutput<'a>>,
}

#[derive(Serialize)]
struct BreakOutput<'a> {
    seq: i64,
    run_id: &'a str,
    problem: &'a str,
}

/// `memwarden ledger verify`.
pub fn verify(ledger: Option<&str>, json: bool) -> Status {
    let mut opened = match open_for_reading(ledger) {
        Ok(ledger) => ledger,
        Err(status) => return status,
    };
    let entries = match opened.entries() {
        Ok(entries) => entries,
        Err(e) => return ledger_failure(e),
    };
    let result = verify_chain(&entries);
    let intact = result.breaks.is_empty();
    if json {
        print_json(&VerifyOutput {
            ledger: opened.location().display(),
            entries: result.entries,
            head: &result.head,
            intact,
            breaks: result
                .breaks
                .iter()
                .map(|b| BreakOutput {
                    seq: b.seq,
                    run_id: &b.run_id,
                    problem: &b.problem,
                })
                .collect(),
        });
    } else if intact {
        println!(
            "ledger {}: {} records, chain intact, head {}",
            opened.location().display(),
            result.entries,
            result.head
        );
    } else {
        println!(
            "ledger {}: {} records, CHAIN BROKEN at {} place(s):",
            opened.location().display(),
            result.entries,
            result.breaks.len()
        );
        for b in &result.breaks {
            println!("  record #{} (run {}): {}", b.seq, b.run_id, b.problem);
        }
    }
    if intact {
        Status::Command(0)
    } else {
        Status::LedgerTampered
    }
}

/// `memwarden ledger sync`.
pub fn sync(ledger: Option<&str>) -> Status {
    let location = match location(ledger) {
        Ok(location) => location,
        Err(status) => return status,
    };
    let spool = Spool::default_dir();
    let pending = spool.pending(&location).len();
    if pending == 0 {
        println!("nothing spooled for {}", location.display());
        return Status::Command(0);
    }
    let mut opened = match Ledger::open(&location) {
        Ok(ledger) => ledger,
        Err(e) => return ledger_failure(e),
    };
    let outcome = spool.sync(&mut opened);
    println!(
        "{}: wrote {} spooled record(s), {} already present, {} remaining",
        location.display(),
        outcome.written,
        outcome.already_present,
        outcome.remaining
    );
    match outcome.error {
        Some(error) => fail(Status::LedgerUnavailable, error),
        None => Status::Command(0),
    }
}
