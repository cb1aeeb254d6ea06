//! The governance commands: `history`, `diff`, `check`, `ledger verify`, `ledger sync`;
//! and anchoring a new head outside the database (used by `run` and `ledger sync`).

use std::path::Path;

use memwarden_ledger::anchor::{self, AnchorCheck, AnchorFile, ExpectedHead};
use memwarden_ledger::chain::{verify as verify_chain, Verification};
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
    /// The head's hash (`GENESIS` when empty) and sequence number.
    head: &'a str,
    head_seq: i64,
    /// Everything holds: chain, anchors, guards (not `--expect-head`, see `expected_heads`).
    intact: bool,
    chain_intact: bool,
    breaks: Vec<BreakOutput<'a>>,
    anchors: AnchorsOutput,
    guards: GuardsOutput,
    expected_heads: &'a [ExpectedOutput],
    warnings: &'a [String],
}

#[derive(Serialize)]
struct BreakOutput<'a> {
    seq: i64,
    run_id: &'a str,
    problem: &'a str,
}

#[derive(Serialize)]
struct AnchorsOutput {
    file: String,
    present: bool,
    anchored: usize,
    /// `SEQ:HASH` of the highest anchored head.
    highest: Option<String>,
    problems: Vec<String>,
}

#[derive(Serialize)]
struct GuardsOutput {
    intact: bool,
    problems: Vec<String>,
}

#[derive(Serialize)]
struct ExpectedOutput {
    seq: i64,
    hash: String,
    holds: bool,
    problem: Option<String>,
}

/// Appends the head to the ledger's anchor file; `None` when done, else a warning saying
/// what was not protected and what to do.
pub fn anchor_head(location: &LedgerLocation, seq: i64, hash: &str) -> Option<String> {
    let file = AnchorFile::for_ledger(location);
    let error = file.append(seq, hash).err()?;
    Some(format!(
        "cannot anchor the ledger head {seq}:{hash} in {}: {error}. Without it, `memwarden ledger verify` cannot detect the deletion of this run or a recomputed chain: make {} writable or set MEMWARDEN_ANCHOR_DIR to a writable directory, and keep the head above (e.g. in the CI log) for `ledger verify --expect-head`",
        file.path().display(),
        file.path().parent().unwrap_or(file.path()).display(),
    ))
}

/// `memwarden ledger verify`.
pub fn verify(ledger: Option<&str>, json: bool, expect_heads: &[String]) -> Status {
    let expected = match expect_heads
        .iter()
        .map(|text| ExpectedHead::parse(text))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(expected) => expected,
        Err(e) => return fail(Status::Usage, format!("--expect-head: {e}")),
    };
    let mut opened = match open_for_reading(ledger) {
        Ok(ledger) => ledger,
        Err(status) => return status,
    };
    let entries = match opened.entries() {
        Ok(entries) => entries,
        Err(e) => return ledger_failure(e),
    };
    let guard_problems = match opened.guard_problems() {
        Ok(problems) => problems,
        Err(e) => return ledger_failure(e),
    };
    let result = verify_chain(&entries);
    let head_seq = entries.last().map_or(0, |e| e.seq);
    let mut warnings = Vec::new();
    let anchor_file = AnchorFile::for_ledger(opened.location());
    let anchor_log = match anchor_file.read() {
        Ok(Some(log)) => Some(log),
        Ok(None) => {
            warnings.push(format!(
                "no anchor file ({}): truncation and recomputed chains cannot be detected on this machine. Each run recorded here anchors its head; for a ledger written elsewhere, use --expect-head SEQ:HASH with a head kept outside the database",
                anchor_file.path().display()
            ));
            None
        }
        Err(e) => {
            warnings.push(format!(
                "cannot read the anchor file ({e}): truncation and recomputed chains cannot be detected"
            ));
            None
        }
    };
    if let Some(log) = &anchor_log {
        for (line, text) in &log.malformed {
            warnings.push(format!(
                "{} line {line} is not SEQ HASH UNIX_S and was ignored: '{text}'",
                anchor_file.path().display()
            ));
        }
    }
    let anchored = anchor_log
        .as_ref()
        .map(|log| anchor::check(&log.anchors, &entries))
        .unwrap_or_default();
    let expected: Vec<ExpectedOutput> = expected
        .iter()
        .map(|head| {
            let problem = head.mismatch(&entries);
            ExpectedOutput {
                seq: head.seq,
                hash: head.hash.clone(),
                holds: problem.is_none(),
                problem,
            }
        })
        .collect();
    let chain_intact = result.breaks.is_empty();
    let intact = chain_intact && anchored.problems.is_empty() && guard_problems.is_empty();
    let location = opened.location().display();
    for warning in &warnings {
        eprintln!("memwarden: warning: {warning}");
    }
    if json {
        print_json(&VerifyOutput {
            ledger: location,
            entries: result.entries,
            head: &result.head,
            head_seq,
            intact,
            chain_intact,
            breaks: result
                .breaks
                .iter()
                .map(|b| BreakOutput {
                    seq: b.seq,
                    run_id: &b.run_id,
                    problem: &b.problem,
                })
                .collect(),
            anchors: AnchorsOutput {
                file: anchor_file.path().display().to_string(),
                present: anchor_log.is_some(),
                anchored: anchored.anchored,
                highest: anchored
                    .highest
                    .as_ref()
                    .map(|a| format!("{}:{}", a.seq, a.hash)),
                problems: anchored.problems.clone(),
            },
            guards: GuardsOutput {
                intact: guard_problems.is_empty(),
                problems: guard_problems.clone(),
            },
            expected_heads: &expected,
            warnings: &warnings,
        });
    } else {
        print_verification(
            &location,
            &result,
            head_seq,
            &anchor_file,
            anchor_log.is_some(),
            &anchored,
            &guard_problems,
            &expected,
        );
    }
    if !intact {
        Status::LedgerTampered
    } else if !expected.iter().all(|e| e.holds) {
        Status::HeadMismatch
    } else {
        Status::Command(0)
    }
}

#[allow(clippy::too_many_arguments)]
fn print_verification(
    location: &str,
    result: &Verification,
    head_seq: i64,
    anchor_file: &AnchorFile,
    anchors_present: bool,
    anchored: &AnchorCheck,
    guard_problems: &[String],
    expected: &[ExpectedOutput],
) {
    if result.breaks.is_empty() {
        println!(
            "ledger {location}: {} records, chain intact, head {head_seq}:{}",
            result.entries, result.head
        );
    } else {
        println!(
            "ledger {location}: {} records, CHAIN BROKEN at {} place(s):",
            result.entries,
            result.breaks.len()
        );
        for b in &result.breaks {
            println!("  record #{} (run {}): {}", b.seq, b.run_id, b.problem);
        }
    }
    let anchors = anchor_file.path().display();
    if !anchors_present {
        println!("anchors {anchors}: none (truncation cannot be detected)");
    } else if anchored.problems.is_empty() {
        println!(
            "anchors {anchors}: {} head(s) anchored, all in the chain{}",
            anchored.anchored,
            anchored
                .highest
                .as_ref()
                .map_or(String::new(), |a| format!(" (the highest #{})", a.seq))
        );
    } else {
        println!(
            "anchors {anchors}: {} head(s) anchored, the CHAIN CONTRADICTS THEM:",
            anchored.anchored
        );
        for problem in &anchored.problems {
            println!("  {problem}");
        }
    }
    if guard_problems.is_empty() {
        println!("guards: append-only triggers intact");
    } else {
        println!("guards: DISARMED:");
        for problem in guard_problems {
            println!("  {problem}");
        }
    }
    for head in expected {
        match &head.problem {
            None => println!("expected head {}:{}: holds", head.seq, head.hash),
            Some(problem) => println!(
                "expected head {}:{}: DOES NOT HOLD: {problem}",
                head.seq, head.hash
            ),
        }
    }
}

/// `memwarden ledger sync`.
pub fn sync(ledger: Option<&str>) -> Status {
    let location = match location(ledger) {
        Ok(location) => location,
        Err(status) => return status,
    };
    // Runs whose memwarden died: recorded (or spooled) first, so the sync below writes
    // what could not be.
    for line in crate::run::recover::dead_runs(Some(&location)) {
        eprintln!("memwarden: {line}");
    }
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
    if outcome.written > 0 {
        match opened.head() {
            Ok(Some((seq, hash))) => {
                println!("ledger head {seq}:{hash}");
                if let Some(warning) = anchor_head(&location, seq, &hash) {
                    eprintln!("memwarden: warning: {warning}");
                }
            }
            Ok(None) => {}
            Err(e) => eprintln!("memwarden: warning: cannot read the new head to anchor it: {e}"),
        }
    }
    match outcome.error {
        Some(error) => fail(Status::LedgerUnavailable, error),
        None => Status::Command(0),
    }
}
