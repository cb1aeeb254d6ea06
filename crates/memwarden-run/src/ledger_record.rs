//! Recording a run in the ledger: the record, the report it points to, and the spool when
//! the ledger cannot be reached.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use memwarden_format::report::Report;
use memwarden_ledger::record::{GitState, InputHash, Peaks};
use memwarden_ledger::spool::Spool;
use memwarden_ledger::{provenance, Ledger, LedgerLocation, RunRecord};

use super::config::Governance;

/// What is captured before the command starts: the code and the inputs it runs on.
#[derive(Debug)]
pub struct Before {
    /// Run id.
    pub run_id: String,
    /// Git state of the working directory.
    pub git: Option<GitState>,
    /// Input hashes.
    pub inputs: Vec<InputHash>,
}

/// Captures the git state and hashes the inputs.
pub fn before(governance: &Governance, started: SystemTime) -> Result<Before, String> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let inputs = governance
        .inputs
        .iter()
        .map(|path| {
            provenance::hash_input(path).map_err(|e| format!("--input {}: {e}", path.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Before {
        run_id: provenance::new_run_id(started),
        git: provenance::git_state(&cwd),
        inputs,
    })
}

/// Builds the record of a finished run.
pub fn build(
    governance: &Governance,
    before: Before,
    report: &Report,
    report_path: Option<&Path>,
) -> RunRecord {
    let cwd = PathBuf::from(&report.cwd);
    let python = provenance::python_of(&report.command)
        .and_then(|python| provenance::python_env(&python, &cwd));
    RunRecord {
        run_id: before.run_id,
        model: governance.model.clone(),
        version: governance.version.clone(),
        stage: governance.stage.clone(),
        tags: governance.tags.clone(),
        command: report.command.clone(),
        cwd: report.cwd.clone(),
        exit_code: report.exit.code,
        exit_signal: report.exit.signal,
        oom_killed: report.exit.oom_killed,
        started_at_unix_s: report.started_at_unix_s,
        ended_at_unix_s: report.started_at_unix_s + report.duration_s,
        host: provenance::host(report.limits.system_total_bytes),
        container_limit_bytes: report.limits.cgroup_limit_bytes,
        python,
        git: before.git,
        inputs: before.inputs,
        peaks: Peaks {
            rss_bytes: report.peak.rss_bytes,
            rss_source: serde_name(report.peak.source),
            pss_bytes: report.peak.pss_bytes,
            uss_bytes: report.peak.uss_bytes,
            cgroup_bytes: report.peak.cgroup_bytes,
            gpu_bytes: report.peak.gpu_bytes,
            heap_bytes: report.peak.heap_bytes,
            leaked_bytes: report.profile.as_ref().map(|p| p.leaked_bytes),
            duration_s: report.duration_s,
            methods: Peaks::current_methods(),
        },
        budget_status: serde_name(report.budget.status),
        budget_bytes: report.budget.limit_bytes,
        hard_limit_bytes: report.budget.hard_limit_bytes,
        enforced_by: serde_name(report.budget.enforced_by),
        top_stacks_at_peak: report
            .profile
            .iter()
            .flat_map(|p| p.at_peak.iter().take(STACKS_RECORDED))
            .cloned()
            .collect(),
        report_path: report_path.map(|p| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_owned())
                .display()
                .to_string()
        }),
        memwarden_version: report.memwarden_version.clone(),
        interrupted: report.exit.interrupted.clone(),
        advice: report.advice.clone(),
    }
}

/// Stacks at the peak kept in a ledger record (the full list is in the report).
const STACKS_RECORDED: usize = 10;

/// The name a report enum is written with in JSON (`VmHWM`, `fail`, `cgroup`), so that
/// the record says what the report says.
fn serde_name<T: serde::Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

/// Where a run's report goes when `--json` was not given: `<data dir>/reports/RUN_ID.json`.
pub fn default_report_path(run_id: &str) -> PathBuf {
    LedgerLocation::data_dir()
        .join("reports")
        .join(format!("{run_id}.json"))
}

/// Appends the record, after any records spooled earlier for the same ledger, and anchors
/// the new head outside the database (warning on stderr when it cannot); keeps the record
/// in the spool when the ledger cannot take it. Returns a line for the user, which names
/// the new head.
pub fn write(location: &LedgerLocation, record: &RunRecord) -> Result<String, String> {
    write_all(location, std::slice::from_ref(record))
}

/// [`write`] for several records of one session (a test suite's, one per test): one
/// connection, one anchor of the final head; on failure every record not yet written is
/// kept in the spool.
pub fn write_all(location: &LedgerLocation, records: &[RunRecord]) -> Result<String, String> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok("nothing to record".to_owned());
    };
    let spool = Spool::default_dir();
    let (mut written, mut head) = (0, None);
    let appended = Ledger::open(location).and_then(|mut ledger| {
        let synced = spool.sync(&mut ledger);
        for record in records {
            head = Some(ledger.append(record)?);
            written += 1;
        }
        Ok(synced)
    });
    // The head is anchored whatever was appended, also when a later record failed: an
    // unanchored head is a gap in the tamper evidence. Loud even with --quiet (as is an
    // unsigned one).
    let anchored = head.as_ref().map(|(seq, hash)| {
        let anchored = memwarden_ledger::anchor::anchor_head(location, *seq, hash);
        for warning in &anchored.warnings {
            eprintln!("memwarden: warning: {warning}");
        }
        anchored
    });
    match (appended, head, anchored) {
        (Ok(synced), Some((seq, hash)), Some(anchored)) => {
            let what = match records.len() {
                1 => format!("as run {} (#{seq})", first.run_id),
                n => format!(
                    "as {n} runs ({}, #{}-#{seq})",
                    last.run_id,
                    seq + 1 - n as i64
                ),
            };
            let mut line = format!(
                "recorded {}@{} ({}) {what} in {}",
                first.model,
                first.version,
                first.stage,
                location.display()
            );
            if synced.written > 0 {
                line.push_str(&format!(
                    "; wrote {} spooled record(s) first",
                    synced.written
                ));
            }
            line.push_str(&format!("; ledger head {}", anchored.head(seq, &hash)));
            Ok(line)
        }
        (Ok(_), _, _) => unreachable!("records were given and every one was appended"),
        (Err(error), _, _) => {
            let mut kept = Vec::new();
            for record in &records[written..] {
                match spool.keep(location, record, &error.to_string()) {
                    Ok(path) => kept.push(path),
                    Err(e) => {
                        return Err(format!(
                            "{error}; and it could not be kept in any spool either ({e}): {} record(s) are lost; free space or make {} writable",
                            records.len() - written - kept.len(),
                            spool.dir().display()
                        ))
                    }
                }
            }
            let place = match kept.as_slice() {
                [one] => one.display().to_string(),
                _ => format!("{} files under {}", kept.len(), spool.dir().display()),
            };
            let fallback = if kept.iter().all(|p| p.starts_with(spool.dir())) {
                String::new()
            } else {
                format!(
                    " (the usual spool {} could not be written)",
                    spool.dir().display()
                )
            };
            let what = match kept.len() {
                1 => "The record is".to_owned(),
                n => format!("The {n} records are"),
            };
            Err(format!(
                "{error}. {what} kept in {place}{fallback} and will be written by the next run against this ledger or by `memwarden ledger sync`"
            ))
        }
    }
}
