//! Finishing a run whose memwarden died: kill what is left of it, record it as
//! `supervisor_killed` with the figures of its journal and the stacks of its captures, and
//! remove its cgroup, captures and journal.
//!
//! Done by the run's guardian as soon as memwarden dies, else by the next `memwarden run`
//! or `memwarden ledger sync` (when the guardian died too). Only runs whose journal lock
//! could be taken are touched (`journal::DeadRun`): a live run's never are.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use memwarden_format::capture::Capture;
use memwarden_format::report::{
    Budget, BudgetStatus, Exit, Gpu, Limits, ModelRun, MonitorInfo, Peak, PeakSource, Report,
    SCHEMA,
};
use memwarden_ledger::LedgerLocation;
use memwarden_monitor::cgroup;
use memwarden_monitor::tree::rss_counter_slack_bytes;
use memwarden_report::profile;

use super::config::Governance;
use super::guardian::kill_run;
use super::journal::{self, now_unix_s, DeadRun, Journal};
use super::ledger_record::{self, Before};
use super::profiling::profiled_process;
use super::report::peak_sources;
use super::supervise::signal_name;

/// What `exit.interrupted` (and the record's `interrupted`) says of such a run.
pub const SUPERVISOR_KILLED: &str = "supervisor_killed";

/// Finishes every run whose memwarden is provably dead; `invoker`: the ledger this
/// memwarden was pointed at (with its credentials), used for runs recorded there. Returns
/// one line per run for stderr.
pub fn dead_runs(invoker: Option<&LedgerLocation>) -> Vec<String> {
    journal::dead_runs()
        .into_iter()
        .flat_map(|dead| recover(dead, invoker, false))
        .collect()
}

/// Finishes the dead run `dead` (see the module documentation); `by_guardian`: memwarden
/// died just now (else: at its journal's last write, or later). Returns lines for stderr.
pub fn recover(dead: DeadRun, invoker: Option<&LedgerLocation>, by_guardian: bool) -> Vec<String> {
    let journal = match &dead.journal {
        Ok(journal) => journal.clone(),
        Err(e) => {
            let line = format!(
                "warning: removed the run journal {}, which could not be read ({e}): its memwarden died before writing it",
                dead.json_path().display()
            );
            dead.remove();
            return vec![line];
        }
    };
    let mut lines = Vec::new();
    let ended_at_unix_s = if by_guardian {
        now_unix_s()
    } else {
        journal.updated_at_unix_s
    };
    let kill = !journal.survive_memwarden && journal.command_exit.is_none();
    let killed = if kill { kill_run(&journal) } else { 0 };
    let cgroup_peak = journal.cgroup.as_ref().and_then(|c| {
        let version = if c.version == 1 {
            cgroup::Version::V1
        } else {
            cgroup::Version::V2
        };
        cgroup::peak_bytes_in(version, &c.dir)
    });
    let mut report = build_report(&journal, ended_at_unix_s, kill, cgroup_peak);
    report.warnings.insert(
        0,
        death_note(&journal, by_guardian, kill, killed, ended_at_unix_s),
    );
    if let Some(capture) = &journal.capture {
        attach_kept_profile(&mut report, &capture.dir, capture.raw_frames);
    }
    memwarden_report::advice::complete(&mut report);
    let report_path = keep_report(&journal, &report, &mut lines);
    let mut summary = format!(
        "memwarden (pid {}) of run {} (`{}`) died during the run",
        journal.memwarden_pid,
        journal.run_id,
        journal.command.join(" ")
    );
    if kill {
        summary.push_str(&format!("; killed the {killed} process(es) left of it"));
    }
    if let Some(path) = &report_path {
        summary.push_str(&format!("; report in {}", path.display()));
    }
    lines.insert(0, summary);
    if let Some(governance) = &journal.governance {
        lines.push(record_run(
            governance,
            &journal,
            &report,
            report_path.as_deref(),
            invoker,
        ));
    }
    if let Some(warning) = remove_leftovers(&journal) {
        lines.push(format!("warning: {warning}"));
    }
    dead.remove();
    lines
}

/// The first warning of the report: what happened, who noticed, what was done.
fn death_note(
    journal: &Journal,
    by_guardian: bool,
    kill: bool,
    killed: usize,
    ended_at_unix_s: f64,
) -> String {
    let who = if by_guardian {
        "its guardian, at once".to_owned()
    } else {
        "a later memwarden (the guardian was gone too)".to_owned()
    };
    let mut note = format!(
        "memwarden (pid {}) died {:.1} s into the run; this report was made from the run journal by {who}: figures are those of its last journal write, the timeline and the per-process figures were lost",
        journal.memwarden_pid,
        (ended_at_unix_s - journal.started_at_unix_s).max(0.0)
    );
    if kill {
        note.push_str(&format!(
            "; the {killed} process(es) left of the run were killed"
        ));
    } else if journal.command_exit.is_some() {
        note.push_str("; the command had already ended, and nothing was killed");
    } else {
        note.push_str("; --survive-memwarden: the run's processes were left running");
    }
    note
}

fn build_report(
    journal: &Journal,
    ended_at_unix_s: f64,
    killed: bool,
    cgroup_peak: Option<u64>,
) -> Report {
    let mut exit = Exit {
        memwarden_exit_code: -1,
        interrupted: Some(SUPERVISOR_KILLED.to_owned()),
        ..Exit::default()
    };
    match journal.command_exit {
        Some(ended) => {
            exit.code = ended.code;
            exit.signal = ended.signal;
        }
        None if killed => exit.signal = Some(libc::SIGKILL),
        None => {}
    }
    exit.signal_name = exit.signal.map(signal_name);

    let at_peak = journal.rss_peak;
    let max = journal.max;
    let (rss_bytes, source, pid) = match journal.largest_process {
        Some(p) if p.rss_bytes + rss_counter_slack_bytes() >= at_peak.rss_bytes => {
            (p.rss_bytes, p.source, Some(p.pid))
        }
        _ => (at_peak.rss_bytes, PeakSource::Sampled, None),
    };
    let rollup_read = max.pss_bytes > 0;
    let status_read = at_peak.anon_bytes > 0 || at_peak.file_bytes > 0;
    let mut sources = peak_sources(source, rollup_read, status_read);
    let cgroup_bytes = cgroup_peak.or(max.cgroup_bytes);
    if cgroup_bytes.is_some() {
        let cgroup_source = if cgroup_peak.is_some() {
            PeakSource::Cgroup
        } else {
            PeakSource::Sampled
        };
        sources.insert("cgroup_bytes".to_owned(), cgroup_source);
    }
    let peak = Peak {
        rss_bytes,
        source,
        pss_bytes: rollup_read.then_some(max.pss_bytes),
        uss_bytes: rollup_read.then_some(max.uss_bytes),
        anon_bytes: status_read.then_some(at_peak.anon_bytes),
        file_bytes: status_read.then_some(at_peak.file_bytes),
        shmem_bytes: status_read.then_some(at_peak.shmem_bytes),
        cgroup_bytes,
        heap_bytes: None,
        gpu_bytes: max.gpu_bytes,
        at_s: at_peak.t_s,
        pid,
        sources,
    };
    let (tightest, tightest_source) = match journal.hard_limit_bytes {
        Some(limit) if limit < journal.system_total_bytes => (limit, "hard_limit"),
        _ => (journal.system_total_bytes, "system"),
    };
    let duration_s = (ended_at_unix_s - journal.started_at_unix_s).max(0.0);
    Report {
        schema: SCHEMA.to_owned(),
        memwarden_version: env!("CARGO_PKG_VERSION").to_owned(),
        model: journal.governance.as_ref().map(|g| ModelRun {
            name: g.model.clone(),
            version: g.version.clone(),
            stage: g.stage.clone(),
            run_id: journal.run_id.clone(),
        }),
        command: journal.command.clone(),
        cwd: journal.cwd.clone(),
        started_at_unix_s: journal.started_at_unix_s,
        duration_s,
        exit,
        limits: Limits {
            system_total_bytes: journal.system_total_bytes,
            system_available_at_start_bytes: journal.system_available_at_start_bytes,
            tightest_limit_bytes: tightest,
            tightest_limit_source: tightest_source.to_owned(),
            headroom_bytes: tightest as i64 - rss_bytes as i64,
            ..Limits::default()
        },
        budget: Budget {
            limit_bytes: journal.budget_bytes,
            metric: "peak.rss_bytes".to_owned(),
            status: BudgetStatus::of(journal.budget_bytes, rss_bytes),
            hard_limit_bytes: journal.hard_limit_bytes,
            enforced_by: journal.enforced_by,
            enforcement_note: None,
        },
        gpu: Gpu {
            status: if max.gpu_bytes.is_some() {
                "available"
            } else {
                "unavailable"
            }
            .to_owned(),
            reason: max
                .gpu_bytes
                .is_none()
                .then(|| "not kept in the run journal".to_owned()),
            devices: Vec::new(),
        },
        monitor: MonitorInfo {
            interval_ms: journal.interval_ms,
            samples: journal.samples,
            own_cgroup: journal.cgroup.is_some(),
            ..MonitorInfo::default()
        },
        processes: Vec::new(),
        timeline: if journal.samples > 0 {
            vec![at_peak]
        } else {
            Vec::new()
        },
        warnings: Vec::new(),
        profile: None,
        advice: Vec::new(),
        peak,
    }
}

/// The captures kept in `dir`, analysed as `memwarden analyze` analyses them, times counted
/// from `start_ns` (`None`: the first capture's start): the analysis, the captures, and the
/// problems that still left one (unreadable captures, an unreadable tree counter). `Err`
/// says why there is none: the folder cannot be read, or no capture holds a recorded
/// allocation. The mode and sampling interval are the captures' own.
pub fn analyze_kept_dir(
    dir: &Path,
    raw_frames: bool,
    start_ns: Option<u64>,
) -> Result<(profile::Analysis, Vec<Capture>, Vec<String>), String> {
    let (captures, errors) = profile::read_dir(dir)
        .map_err(|e| format!("cannot read the captures in {}: {e}", dir.display()))?;
    let mut warnings: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let Some(first) = captures.first() else {
        warnings.insert(
            0,
            format!(
                "no capture in {} holds a recorded allocation",
                dir.display()
            ),
        );
        return Err(warnings.join("; "));
    };
    let start_ns =
        start_ns.unwrap_or_else(|| captures.iter().map(|c| c.start_ns).min().unwrap_or(0));
    let (analysis, tree_error) = profile::analyze_kept(
        dir,
        &captures,
        profile::mode_of(first),
        first.sample_bytes,
        start_ns,
        profile::Frames::raw_if(raw_frames),
    );
    if let Some(e) = tree_error {
        warnings.push(format!(
            "{e}; the tree's heap peak is the sum of each process's own peak"
        ));
    }
    Ok((analysis, captures, warnings))
}

/// Puts the profile of the captures kept in `dir` into `report` (its `profile`, each
/// process's, the heap peak), replacing any it had: as an interrupted run's recovery needs
/// it ([`analyze_kept_dir`], times counted from the report's start). Problems become
/// report warnings.
pub fn attach_kept_profile(report: &mut Report, dir: &Path, raw_frames: bool) {
    let start_ns = (report.started_at_unix_s * 1e9) as u64;
    let (analysis, captures) = match analyze_kept_dir(dir, raw_frames, Some(start_ns)) {
        Ok((analysis, captures, warnings)) => {
            for warning in warnings {
                report.warnings.push(format!("profile: {warning}"));
            }
            (analysis, captures)
        }
        Err(why) => {
            report.warnings.push(format!("profile: {why}; no profile"));
            return;
        }
    };
    for (pid, process_profile) in analysis.processes {
        match report.processes.iter_mut().find(|p| p.pid == pid as i32) {
            Some(process) => process.profile = Some(process_profile),
            None => report
                .processes
                .push(profiled_process(pid, &captures, process_profile)),
        }
    }
    report.peak.heap_bytes = Some(analysis.profile.peak_bytes);
    report.profile = Some(analysis.profile);
}

/// A kept report with its profile analysed again from the captures in `dir`
/// ([`attach_kept_profile`]), then completed as a run's is: its lines' text read now and
/// the advice given on it (`memwarden report --capture-dir`, the Python package's
/// `Report.load` of a capture directory).
pub fn reanalyze(report: &mut Report, dir: &Path, raw_frames: bool) {
    attach_kept_profile(report, dir, raw_frames);
    memwarden_report::advice::complete(report);
}

/// Writes the report where the run meant to (`--json`), else, for a recorded run, to the
/// data directory; returns where it went.
fn keep_report(journal: &Journal, report: &Report, lines: &mut Vec<String>) -> Option<PathBuf> {
    let path = match (&journal.json, &journal.governance) {
        (Some(json), _) => {
            let _ = fs::remove_file(&json.temporary);
            json.path.clone()
        }
        (None, Some(_)) => ledger_record::default_report_path(&journal.run_id),
        (None, None) => return None,
    };
    let written = super::write_report_at(&path, report);
    match written {
        Ok(()) => Some(path),
        Err(e) => {
            lines.push(format!(
                "warning: cannot write the report of run {} to {}: {e}",
                journal.run_id,
                path.display()
            ));
            None
        }
    }
}

/// Records the run in its ledger: the invoker's when it is the same ledger (it has the
/// credentials), else the one the journal names (a PostgreSQL URL there has no password:
/// the record is then spooled for the next run against that ledger).
fn record_run(
    governance: &super::journal::JournalGovernance,
    journal: &Journal,
    report: &Report,
    report_path: Option<&Path>,
    invoker: Option<&LedgerLocation>,
) -> String {
    let ledger = match invoker.filter(|l| l.key() == governance.ledger_key) {
        Some(location) => location.clone(),
        None => match LedgerLocation::parse(&governance.ledger_key) {
            Ok(location) => location,
            Err(e) => {
                return format!(
                    "warning: run {} names a ledger memwarden cannot parse ({e}): not recorded",
                    journal.run_id
                )
            }
        },
    };
    let config = Governance {
        ledger,
        model: governance.model.clone(),
        version: governance.version.clone(),
        stage: governance.stage.clone(),
        tags: governance.tags.clone(),
        inputs: Vec::new(),
    };
    let before = Before {
        run_id: journal.run_id.clone(),
        git: governance.git.clone(),
        inputs: governance.inputs.clone(),
    };
    let record = ledger_record::build(&config, before, report, report_path);
    match ledger_record::write(&config.ledger, &record) {
        Ok(line) => format!("{line} (interrupted: {SUPERVISOR_KILLED})"),
        Err(warning) => format!("warning: {warning}"),
    }
}

/// Removes the run's cgroup (moving any process left in it to the enclosing one, as a
/// normal end does) and its temporary capture directory.
fn remove_leftovers(journal: &Journal) -> Option<String> {
    let mut problems = Vec::new();
    if let Some(cgroup) = &journal.cgroup {
        if let Err(e) = remove_cgroup(&cgroup.dir, &cgroup.parent_dir) {
            problems.push(format!(
                "the run's cgroup {} was left behind: {e}",
                cgroup.dir.display()
            ));
        }
    }
    if let Some(capture) = journal.capture.as_ref().filter(|c| c.temporary) {
        if let Err(e) = fs::remove_dir_all(&capture.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                problems.push(format!(
                    "the run's captures {} were left behind: {e}",
                    capture.dir.display()
                ));
            }
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Removes a cgroup; killed processes leave it as the kernel finishes them, so this tries
/// for up to 2 s, moving any that still run (left running on purpose) to `parent`.
fn remove_cgroup(dir: &Path, parent: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                for pid in cgroup::pids_in(dir) {
                    let _ = fs::write(parent.join("cgroup.procs"), pid.to_string());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
