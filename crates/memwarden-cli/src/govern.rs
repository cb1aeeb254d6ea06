//! The governance commands: `history`, `diff`, `check`, `ledger verify`, `ledger sync`,
//! `ledger keygen`.

use std::path::{Path, PathBuf};

use memwarden_ledger::anchor::{
    self, anchor_head, AnchorCheck, AnchorFile, ExpectedHead, SignatureCheck, LEDGER_KEY_VAR,
};
use memwarden_ledger::chain::{verify as verify_chain, Verification};
use memwarden_ledger::gate::{self, GateError};
use memwarden_ledger::policy::Policy;
use memwarden_ledger::signing::{self, KeyError, PublicKey};
use memwarden_ledger::spool::Spool;
use memwarden_ledger::{Ledger, LedgerError, LedgerLocation, RunRecord};
use memwarden_report::text;
use serde::Serialize;

use crate::exit::{Failure, Status};

fn location(ledger: Option<&str>) -> Result<LedgerLocation, Failure> {
    LedgerLocation::resolve(ledger).map_err(|e| Failure::usage(format!("--ledger: {e}")))
}

impl From<LedgerError> for Failure {
    fn from(error: LedgerError) -> Failure {
        let status = match error {
            LedgerError::BadLocation(_) => Status::Usage,
            _ => Status::LedgerUnavailable,
        };
        Failure::new(status, error)
    }
}

/// A gate refuses what it was asked (a malformed spec, an unknown version).
impl From<GateError> for Failure {
    fn from(error: GateError) -> Failure {
        Failure::usage(error)
    }
}

/// Opens the ledger for reading: a ledger that does not exist yet is not created by a
/// read-only command.
fn open_for_reading(ledger: Option<&str>) -> Result<Ledger, Failure> {
    let location = location(ledger)?;
    if let LedgerLocation::Sqlite(path) = &location {
        if !path.exists() {
            return Err(Failure::new(
                Status::LedgerUnavailable,
                format!("no ledger at {}: record runs with `memwarden run --model NAME --version V -- CMD`, or point --ledger at an existing one", path.display()),
            ));
        }
    }
    Ok(Ledger::open(&location)?)
}

fn records(ledger: Option<&str>) -> Result<Vec<RunRecord>, Failure> {
    Ok(open_for_reading(ledger)?.records(None)?)
}

fn print_json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Failure::new(Status::Internal, e))?;
    println!("{text}");
    Ok(())
}

/// `memwarden history MODEL`.
pub fn history(ledger: Option<&str>, model: &str, json: bool) -> Result<Status, Failure> {
    let rows = gate::history(&records(ledger)?, model)?;
    if json {
        print_json(&rows)?;
    } else {
        print!("{}", text::render_history(model, &rows));
    }
    Ok(Status::Command(0))
}

/// `memwarden diff A B`.
pub fn diff(ledger: Option<&str>, a: &str, b: &str, json: bool) -> Result<Status, Failure> {
    let (model, version_a) = gate::parse_spec(a)?;
    let (model_b, version_b) = match gate::parse_spec(b) {
        Ok(spec) => spec,
        Err(_) if !b.contains('@') => (model.clone(), b.to_owned()),
        Err(e) => return Err(e.into()),
    };
    if model_b != model {
        return Err(Failure::usage(format!(
            "diff compares versions of one model: {model} and {model_b} differ"
        )));
    }
    let report = gate::diff(&records(ledger)?, &model, &version_a, &version_b)?;
    if json {
        print_json(&report)?;
    } else {
        print!("{}", text::render_diff(&report));
    }
    Ok(Status::Command(0))
}

/// `memwarden check MODEL@VERSION`.
pub fn check(
    ledger: Option<&str>,
    spec: &str,
    policy_path: Option<&Path>,
    json: bool,
) -> Result<Status, Failure> {
    let (model, version) = gate::parse_spec(spec)?;
    let policy = Policy::find(policy_path).map_err(Failure::usage)?;
    let report = gate::check(&records(ledger)?, &model, &version, &policy)?;
    if json {
        print_json(&report)?;
    } else {
        print!("{}", text::render_check(&report));
    }
    Ok(if report.pass {
        Status::Command(0)
    } else {
        Status::PolicyFailed
    })
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
    /// `SEQ:HASH` of the highest anchored head (the highest signed one with --public-key).
    highest: Option<String>,
    problems: Vec<String>,
    /// Anchor lines carrying a signature (checked or not).
    signed: usize,
    /// Whether --public-key was given, so that only signed lines were trusted.
    signatures_checked: bool,
    /// With --public-key: every anchor line that is not a head signed by a given key.
    signature_problems: Vec<String>,
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

/// `memwarden ledger keygen`.
pub fn keygen(
    out: Option<&Path>,
    secret: Option<&Path>,
    public: Option<&Path>,
) -> Result<Status, Failure> {
    let (secret, public) = match (out, secret, public) {
        (Some(dir), _, _) => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Failure::usage(format!("--out {}: {e}", dir.display())))?;
            (
                dir.join("memwarden-ledger.key"),
                dir.join("memwarden-ledger.pub"),
            )
        }
        (None, Some(secret), Some(public)) => (secret.to_owned(), public.to_owned()),
        _ => {
            return Err(Failure::usage(
                "give --out DIR, or both --secret FILE and --public FILE",
            ))
        }
    };
    match signing::write_key_pair(&secret, &public) {
        Ok(key) => {
            println!(
                "wrote the secret key {} (mode 0600) and the public key {} (key {})",
                secret.display(),
                public.display(),
                key.fingerprint()
            );
            println!(
                "Keep the secret key where only the runs that record can read it (e.g. a CI secret) and set {LEDGER_KEY_VAR}=<its path> there: every head they anchor is then signed. Commit the public key, and check with: memwarden ledger verify --public-key {}",
                public.display()
            );
            Ok(Status::Command(0))
        }
        Err(error @ KeyError::Random(_)) => Err(Failure::new(Status::Internal, error)),
        Err(error) => Err(Failure::usage(error)),
    }
}

/// `memwarden ledger verify`.
pub fn verify(
    ledger: Option<&str>,
    json: bool,
    expect_heads: &[String],
    public_keys: &[PathBuf],
) -> Result<Status, Failure> {
    let expected = expect_heads
        .iter()
        .map(|text| ExpectedHead::parse(text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::usage(format!("--expect-head: {e}")))?;
    let keys = public_keys
        .iter()
        .map(|path| PublicKey::read(path))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::usage(format!("--public-key: {e}")))?;
    if keys.is_empty() {
        if let Some(head) = expected.iter().find(|e| e.signature.is_some()) {
            return Err(Failure::usage(format!("--expect-head {}:{}:SIGNATURE carries a signature: give --public-key FILE (the team's public key) to check it, or leave the signature out", head.seq, head.hash)));
        }
    }
    let mut opened = open_for_reading(ledger)?;
    let entries = opened.entries()?;
    let guard_problems = opened.guard_problems()?;
    let result = verify_chain(&entries);
    let head_seq = entries.last().map_or(0, |e| e.seq);
    let mut warnings = Vec::new();
    let anchor_file = AnchorFile::for_ledger(opened.location());
    let identity = anchor_file.identity();
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
                "{} line {line} is not SEQ HASH UNIX_S [SIGNATURE] and was ignored: '{text}'",
                anchor_file.path().display()
            ));
        }
    }
    // With --public-key, only heads signed by a given key for this ledger are trusted.
    let signatures = (!keys.is_empty()).then(|| {
        let anchors = anchor_log.as_ref().map_or(&[][..], |log| &log.anchors[..]);
        let mut check = anchor::check_signatures(anchors, identity, &keys);
        if anchor_log.is_none() && !expected.iter().any(|e| e.signature.is_some()) {
            check.problems.push(format!(
                "no anchor file ({}) holds signed heads to check with --public-key: it was deleted, or no run recorded here; on another machine, check a signed head with --expect-head SEQ:HASH:SIGNATURE",
                anchor_file.path().display()
            ));
        }
        check
    });
    if let Some(check) = &signatures {
        let highest_signed = check.trusted.iter().map(|a| a.seq).max().unwrap_or(0);
        if anchor_log.is_some() && head_seq > highest_signed {
            warnings.push(format!(
                "records #{}..#{head_seq} come after the highest signed head (#{highest_signed}): no signature covers them (recorded on another machine, or without {LEDGER_KEY_VAR}, or rewritten together with the anchor lines that covered them)",
                highest_signed + 1
            ));
        }
    }
    let anchored = match (&anchor_log, &signatures) {
        (Some(_), Some(check)) => anchor::check(&check.trusted, &entries),
        (Some(log), None) => anchor::check(&log.anchors, &entries),
        (None, _) => AnchorCheck::default(),
    };
    let expected: Vec<ExpectedOutput> = expected
        .iter()
        .map(|head| {
            let signature_problem = head.signature.as_ref().and_then(|signature| {
                signing::signature_problem(&keys, identity, head.seq, &head.hash, Some(signature))
                    .map(|why| format!("the head is not signed by a given key: {why}"))
            });
            let problem = signature_problem.or_else(|| head.mismatch(&entries));
            ExpectedOutput {
                seq: head.seq,
                hash: head.hash.clone(),
                holds: problem.is_none(),
                problem,
            }
        })
        .collect();
    let chain_intact = result.breaks.is_empty();
    let signature_problems = signatures
        .as_ref()
        .map_or(&[][..], |check| &check.problems[..]);
    let intact = chain_intact
        && anchored.problems.is_empty()
        && signature_problems.is_empty()
        && guard_problems.is_empty();
    let location = opened.location().display();
    for warning in &warnings {
        eprintln!("memwarden: warning: {warning}");
    }
    let signed = anchor_log.as_ref().map_or(0, |log| {
        log.anchors.iter().filter(|a| a.signature.is_some()).count()
    });
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
                anchored: anchor_log.as_ref().map_or(0, |log| log.anchors.len()),
                highest: anchored
                    .highest
                    .as_ref()
                    .map(|a| format!("{}:{}", a.seq, a.hash)),
                problems: anchored.problems.clone(),
                signed,
                signatures_checked: signatures.is_some(),
                signature_problems: signature_problems.to_vec(),
            },
            guards: GuardsOutput {
                intact: guard_problems.is_empty(),
                problems: guard_problems.clone(),
            },
            expected_heads: &expected,
            warnings: &warnings,
        })?;
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
        print_signatures(signed, &keys, signatures.as_ref());
    }
    Ok(if !intact {
        Status::LedgerTampered
    } else if !expected.iter().all(|e| e.holds) {
        Status::HeadMismatch
    } else {
        Status::Command(0)
    })
}

fn print_signatures(signed: usize, keys: &[PublicKey], check: Option<&SignatureCheck>) {
    let Some(check) = check else {
        if signed > 0 {
            println!("signatures: {signed} anchor line(s) signed, not checked (give --public-key FILE to check them)");
        }
        return;
    };
    let fingerprints: Vec<String> = keys.iter().map(PublicKey::fingerprint).collect();
    let fingerprints = fingerprints.join(", ");
    if check.problems.is_empty() {
        println!(
            "signatures: all {} anchor line(s) signed for this ledger by key(s) {fingerprints}",
            check.trusted.len()
        );
    } else {
        println!(
            "signatures: {} anchor line(s) signed by key(s) {fingerprints}, {} NOT:",
            check.trusted.len(),
            check.problems.len()
        );
        for problem in &check.problems {
            println!("  {problem}");
        }
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
pub fn sync(ledger: Option<&str>) -> Result<Status, Failure> {
    let location = location(ledger)?;
    // Runs whose memwarden died: recorded (or spooled) first, so the sync below writes
    // what could not be.
    for line in memwarden_run::recover::dead_runs(Some(&location)) {
        eprintln!("memwarden: {line}");
    }
    let spool = Spool::default_dir();
    let pending = spool.pending(&location).len();
    if pending == 0 {
        println!("nothing spooled for {}", location.display());
        return Ok(Status::Command(0));
    }
    let mut opened = Ledger::open(&location)?;
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
                let anchored = anchor_head(&location, seq, &hash);
                println!("ledger head {}", anchored.head(seq, &hash));
                for warning in &anchored.warnings {
                    eprintln!("memwarden: warning: {warning}");
                }
            }
            Ok(None) => {}
            Err(e) => eprintln!("memwarden: warning: cannot read the new head to anchor it: {e}"),
        }
    }
    match outcome.error {
        Some(error) => Err(Failure::new(Status::LedgerUnavailable, error)),
        None => Ok(Status::Command(0)),
    }
}
