//! memwarden's run loop: spawn a command, sample its process tree until it exits, profile
//! it (with `LD_PRELOAD`), build its report and record it in the ledger.
//!
//! [`run`] takes a validated [`RunConfig`] (built from plain values by
//! [`RunConfig::new`]) and returns a [`RunOutcome`]: the report, the [`Verdict`] that
//! chooses memwarden's exit status, and what recording did. What cannot start comes back
//! as a [`RunError`] whose [`RunErrorKind`] a front end maps to its exit status. The
//! `memwarden` binary is one front end: it parses arguments, renders the summary and exits.
//!
//! A run is journaled while it lasts, and a [`guardian`] process finishes it should
//! memwarden die; [`recover`] finishes runs whose memwarden and guardian both died.

pub mod block;
mod config;
pub mod guardian;
mod isolation;
mod journal;
mod ledger_record;
mod profiling;
pub mod recover;
mod report;
mod status_line;
mod supervise;
pub mod test_session;
mod tree_figures;
pub mod tree_heap;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use memwarden_format::report::{BudgetStatus, Enforcement, Report};
use memwarden_ledger::provenance;
use memwarden_monitor::gpu::GpuMonitor;
use memwarden_monitor::procfs;
use memwarden_monitor::tree::{ExitStatus, SamplerOptions, TreeSampler};

pub use config::{parse_interval, CgroupMode, Governance, RunConfig, RunOptions};
use isolation::Isolation;
use journal::JournalFile;
pub use memwarden_format::report::ProfileMode;
pub use profiling::preload_path;
use status_line::StatusLine;
use supervise::{Event, Supervisor};
use tree_figures::TreeFigures;

/// The exit status that [`Verdict::BudgetExceeded`] stands for (docs/cli.md, "Exit codes").
pub const BUDGET_EXCEEDED_CODE: u8 = 3;

/// What kind of failure stopped a run, for a front end to choose its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunErrorKind {
    /// Bad options: an unparseable size, an unwritable output path, a missing command,
    /// `--cgroup require` refused by the kernel.
    Usage,
    /// The command was found but could not be executed (permissions, bad binary).
    CannotExecute,
    /// The command was not found.
    NotFound,
    /// memwarden itself failed (could not set up monitoring, could not write the report).
    Internal,
}

/// A run that could not be done, or whose report could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RunError {
    /// What kind of failure it is.
    pub kind: RunErrorKind,
    /// A sentence for the user saying what went wrong and what to do.
    pub message: String,
}

impl RunError {
    /// A failure of `kind`.
    pub fn new(kind: RunErrorKind, message: impl std::fmt::Display) -> RunError {
        RunError {
            kind,
            message: message.to_string(),
        }
    }

    /// Bad options ([`RunErrorKind::Usage`]).
    pub fn usage(message: impl std::fmt::Display) -> RunError {
        RunError::new(RunErrorKind::Usage, message)
    }
}

/// The outcome of a run that ran: the command's status first (a failed command is the
/// news), then the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The command's own status (128 + N when signal N killed it), or 0.
    Command(u8),
    /// The command succeeded but its peak exceeded the budget.
    BudgetExceeded,
}

impl Verdict {
    /// The exit status memwarden gives this verdict, as the report records it.
    pub fn code(self) -> u8 {
        match self {
            Verdict::Command(code) => code,
            Verdict::BudgetExceeded => BUDGET_EXCEEDED_CODE,
        }
    }
}

/// What a run that ran produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// The run's report.
    pub report: Report,
    /// The command's status and the budget's verdict.
    pub verdict: Verdict,
    /// Where the report was written (`--json`, or the data directory for a recorded run).
    pub report_path: Option<PathBuf>,
    /// Recording in the ledger, when the run was governed: a line naming the new head, or
    /// a warning saying where the record was kept instead.
    pub recorded: Option<Result<String, String>>,
    /// The report could not be written to the `--json` or `--html` path: the sentence to
    /// fail with ([`RunErrorKind::Internal`]), once the rest has been said.
    pub report_failure: Option<RunError>,
    /// The HTML report: where it was written, or why the default one could not be.
    pub html: Option<Result<PathBuf, String>>,
}

/// While a watchdog enforces a hard limit, samples come at least this often, so that a fast
/// allocator overshoots the limit by as little as the kernel's page-fault rate allows.
const WATCHDOG_INTERVAL: Duration = Duration::from_millis(10);

/// What the run observed, handed to the report builder.
#[derive(Debug)]
pub struct Observed {
    started_at: SystemTime,
    duration: Duration,
    exit: ExitStatus,
    watchdog_kill_at_bytes: Option<u64>,
    enclosing_oom_kills_before: Option<u64>,
    forwarded_signals: Vec<i32>,
    self_cpu_s: f64,
    survivors: Vec<i32>,
    gpu_unavailable_reason: Option<String>,
    meminfo: procfs::MemInfo,
    enclosing_usage_at_start: Option<u64>,
}

/// What a run needs to be finished by others should memwarden die (see [`guardian`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Protection {
    /// `--survive-memwarden`.
    pub survive_memwarden: bool,
    /// `--capture-dir` was given (the captures are the user's, never removed).
    pub kept_captures: bool,
    /// `--raw-frames`.
    pub raw_frames: bool,
}

/// Runs the command of `config`: journals it and starts its guardian, supervises and
/// samples it until it exits, builds its report, writes it and records it.
pub fn run(config: RunConfig) -> Result<RunOutcome, RunError> {
    let protection = config.protection;
    let ledger = config.ledger.clone();
    execute(config, ledger.as_deref(), &protection)
}

/// Journals the run and starts its guardian, supervises it, then removes the journal: the
/// guardian, seeing memwarden's pipe close with no journal left, exits.
fn execute(
    config: RunConfig,
    ledger: Option<&str>,
    protection: &Protection,
) -> Result<RunOutcome, RunError> {
    // The code and inputs the command runs on, read before it can change them.
    let before = match &config.governance {
        Some(governance) => {
            Some(ledger_record::before(governance, SystemTime::now()).map_err(RunError::usage)?)
        }
        None => None,
    };
    let run_id = before.as_ref().map_or_else(
        || provenance::new_run_id(SystemTime::now()),
        |b| b.run_id.clone(),
    );
    let mut warnings = Vec::new();
    let mut journal = match JournalFile::create(journal::initial(
        &config,
        before.as_ref(),
        run_id.clone(),
        protection,
    )) {
        Ok(journal) => Some(journal),
        Err(e) => {
            warnings.push(format!(
                "cannot write the run journal in {} ({e}): should memwarden die, the run is neither killed nor recorded",
                journal::dir().display()
            ));
            None
        }
    };
    let mut guardian = None;
    let result = Isolation::prepare(config.cgroup, config.hard_limit_bytes)
        .map_err(RunError::usage)
        .and_then(|isolation| {
            // The guardian starts once memwarden's cgroup is settled (on v2 memwarden may
            // have moved into a leaf), so that it lives where memwarden lives, never in
            // the run's cgroup.
            if let Some(journal) = journal.as_mut() {
                journal.set_isolation(&isolation);
                match guardian::spawn(journal.lock_path(), ledger) {
                    Ok(started) => {
                        journal.journal.guardian_pid = Some(started.pid);
                        journal.write_now();
                        guardian = Some(started);
                    }
                    Err(e) => warnings.push(format!(
                        "cannot start the guardian ({e}): should memwarden die, the run is left running and recorded only by the next memwarden"
                    )),
                }
            }
            supervise(config, before, isolation, journal.as_mut(), warnings, &run_id)
        });
    // The journal goes first: the guardian, seeing the pipe close without it, just exits.
    if let Some(journal) = journal {
        journal.finish();
    }
    drop(guardian);
    result
}

fn supervise(
    mut config: RunConfig,
    before: Option<ledger_record::Before>,
    mut isolation: Isolation,
    mut journal: Option<&mut JournalFile>,
    early_warnings: Vec<String>,
    run_id: &str,
) -> Result<RunOutcome, RunError> {
    let supervisor = match Supervisor::install() {
        Ok(supervisor) => supervisor,
        Err(e) => {
            let _ = isolation.cleanup();
            return Err(RunError::new(
                RunErrorKind::Internal,
                format!("cannot set up signal handling: {e}"),
            ));
        }
    };
    let meminfo = procfs::read_meminfo().unwrap_or_default();
    let enclosing_oom_kills_before = isolation.enclosing.as_ref().and_then(|c| c.oom_kills());
    let enclosing_usage_at_start = isolation.enclosing.as_ref().and_then(|c| c.usage_bytes());
    let (gpu, gpu_unavailable_reason) = match GpuMonitor::open() {
        Ok(gpu) => (Some(gpu), None),
        Err(reason) => (None, Some(reason)),
    };
    let monitor_pid = std::process::id() as i32;

    let started_at = SystemTime::now();
    let start = Instant::now();
    let mut environment = config
        .profiling
        .as_ref()
        .map(|p| p.environment())
        .unwrap_or_default();
    if let Some(journal) = journal.as_deref() {
        environment.push((
            journal::RUN_ID_VARIABLE.into(),
            journal.journal.run_id.clone().into(),
        ));
    }
    let pid = match supervisor.spawn(&config.argv, &environment, isolation.join_fd()) {
        Ok(pid) => {
            if let Some(journal) = journal.as_deref_mut() {
                journal.set_command(pid);
            }
            pid
        }
        Err(e) => {
            let _ = isolation.cleanup();
            let program = &config.command[0];
            return Err(match e.kind() {
                io::ErrorKind::NotFound => RunError::new(
                    RunErrorKind::NotFound,
                    format!("command not found: {program}: check the name and PATH"),
                ),
                io::ErrorKind::PermissionDenied => RunError::new(
                    RunErrorKind::CannotExecute,
                    format!("cannot execute {program}: permission denied (is it executable?)"),
                ),
                _ => RunError::new(
                    RunErrorKind::CannotExecute,
                    format!("cannot execute {program}: {e}"),
                ),
            });
        }
    };
    let mut sampler = TreeSampler::new(monitor_pid, start, SamplerOptions::default(), gpu);
    sampler.adopt(pid, monitor_pid, &config.command);
    if let Some(own) = &isolation.own {
        if let Err(e) = sampler.use_cgroup(own) {
            eprintln!(
                "memwarden: warning: cannot read the run's cgroup ({e}); scanning /proc instead"
            );
        }
    }

    let interval = match (isolation.enforcement, config.hard_limit_bytes) {
        (Enforcement::Watchdog, Some(_)) => config.interval.min(WATCHDOG_INTERVAL),
        _ => config.interval,
    };
    let mut figures = TreeFigures::new();
    let mut status_line = StatusLine::new(config.quiet);
    let mut forwarded_signals = Vec::new();
    let mut watchdog_kill_at_bytes = None;
    let mut main_exit = None;
    let mut next_sample = start;
    while main_exit.is_none() {
        let now = Instant::now();
        if now >= next_sample {
            let totals = sampler.sample();
            figures.push(totals);
            if let Some(profiling) = config.profiling.as_mut() {
                profiling.tick();
            }
            if let (Enforcement::Watchdog, Some(limit), None) = (
                isolation.enforcement,
                config.hard_limit_bytes,
                watchdog_kill_at_bytes,
            ) {
                if totals.pss_bytes > limit {
                    watchdog_kill_at_bytes = Some(totals.pss_bytes);
                    for member in sampler.live_pids() {
                        supervise::send_signal(member, libc::SIGKILL);
                    }
                }
            }
            if let Some(journal) = journal.as_deref_mut().filter(|j| j.due()) {
                journal.update(&figures, &sampler);
            }
            status_line.update(
                totals.t_s,
                totals.rss_bytes,
                figures.rss_peak.rss_bytes,
                totals.processes,
                config.budget_bytes,
            );
            next_sample += interval;
            if next_sample < now {
                next_sample = now + interval;
            }
        }
        for event in supervisor.wait(next_sample.saturating_duration_since(Instant::now())) {
            match event {
                Event::Child => {
                    for reaped in supervisor.reap() {
                        sampler.record_exit(reaped.pid, reaped.status, reaped.max_rss_bytes);
                        if reaped.pid == pid {
                            main_exit = Some(reaped.status);
                            if let Some(journal) = journal.as_deref_mut() {
                                journal.set_command_exit(reaped.status);
                            }
                        }
                    }
                }
                Event::Signal { signo, forward } => {
                    if forward {
                        supervise::send_signal(pid, signo);
                    }
                    forwarded_signals.push(signo);
                }
            }
        }
    }
    let duration = start.elapsed();
    // The command is gone; whatever it left running is sampled once more and reported.
    let totals = sampler.sample();
    if totals.processes > 0 {
        figures.push(totals);
    }
    for reaped in supervisor.reap() {
        sampler.record_exit(reaped.pid, reaped.status, reaped.max_rss_bytes);
    }
    status_line.clear();

    let observed = Observed {
        started_at,
        duration,
        exit: main_exit.unwrap_or(ExitStatus::Code(0)),
        watchdog_kill_at_bytes,
        enclosing_oom_kills_before,
        forwarded_signals,
        self_cpu_s: supervise::self_cpu_s(),
        survivors: sampler.surviving_pids(),
        gpu_unavailable_reason,
        meminfo,
        enclosing_usage_at_start,
    };
    let mut report = report::build(&config, &isolation, &sampler, &figures, &observed, interval);
    if let (Some(governance), Some(before)) = (&config.governance, &before) {
        report.model = Some(governance.model_run(&before.run_id));
    }
    report.warnings.extend(early_warnings);
    if let Some(failure) = journal.as_deref_mut().and_then(|j| j.failure.take()) {
        report.warnings.push(failure);
    }
    if let Some(warning) = isolation.cleanup() {
        report.warnings.push(warning);
    }
    let mut kept_captures = None;
    if let Some(profiling) = config.profiling.take() {
        kept_captures = profiling.kept_dir().map(Path::to_owned);
        profiling.finish(&mut report, started_at);
    }
    memwarden_report::advice::complete(&mut report);
    let verdict = verdict(&report);
    report.exit.memwarden_exit_code = i32::from(verdict.code());

    // A report that cannot be written (a full disk) is said loudly, but the run is still
    // recorded, its report kept in the data directory instead.
    let mut json_failure = None;
    let mut report_path = None;
    if let Some((path, temporary)) = config.json.take() {
        match write_report(temporary, &path, &report) {
            Ok(()) => {
                // Should memwarden die now, the report written is the run's own.
                if let Some(journal) = journal {
                    journal.journal.json = None;
                    journal.write_now();
                }
                report_path = Some(path)
            }
            Err(e) => {
                json_failure = Some(format!(
                    "cannot write the report to {}: {e}; nothing was left there (free some space or choose another --json path)",
                    path.display()
                ))
            }
        }
    }
    // A recorded run always has its full report on disk, for the record to point to.
    if let (Some(before), None) = (&before, &report_path) {
        let path = ledger_record::default_report_path(&before.run_id);
        let written = write_report_at(&path, &report);
        match written {
            Ok(()) => report_path = Some(path),
            Err(e) => eprintln!(
                "memwarden: warning: cannot keep the report in {}: {e}",
                path.display()
            ),
        }
    }
    let recorded = match (&config.governance, before) {
        (Some(governance), Some(before)) => {
            let record = ledger_record::build(governance, before, &report, report_path.as_deref());
            Some(ledger_record::write(&governance.ledger, &record))
        }
        _ => None,
    };
    // Kept captures keep their run's report beside them, for `memwarden report --capture-dir`.
    if let Some(dir) = kept_captures {
        if let Err(e) = write_report_at(&dir.join("report.json"), &report) {
            eprintln!(
                "memwarden: warning: cannot keep the report beside the captures in {}: {e}",
                dir.display()
            );
        }
    }
    let (html, html_failure) = write_html(config.html, &report, run_id);
    let report_failure = json_failure
        .map(|mut message| {
            if let Some(kept) = &report_path {
                message.push_str(&format!("; the report is kept in {}", kept.display()));
            }
            message
        })
        .into_iter()
        .chain(html_failure)
        .reduce(|a, b| format!("{a}; {b}"))
        .map(|message| RunError::new(RunErrorKind::Internal, message));
    Ok(RunOutcome {
        report,
        verdict,
        report_path,
        recorded,
        report_failure,
        html,
    })
}

/// The HTML report, rendered and written where `output` says: `(where it went or why the
/// default one could not be written, the failure of an explicit `--html`)`.
fn write_html(
    output: config::HtmlOutput,
    report: &memwarden_format::report::Report,
    run_id: &str,
) -> (Option<Result<PathBuf, String>>, Option<String>) {
    match output {
        config::HtmlOutput::None => (None, None),
        config::HtmlOutput::Default => {
            let dir = std::env::var_os(config::HTML_DIR_VAR)
                .filter(|d| !d.is_empty())
                .map_or_else(|| PathBuf::from(config::HTML_DIR), PathBuf::from);
            let path = dir.join(format!("{run_id}.html"));
            let html = memwarden_report::html::render(report);
            let said = match write_file_at(&path, html.as_bytes()) {
                Ok(()) => Ok(path),
                Err(e) => Err(format!(
                    "cannot write the HTML report to {}: {e} (choose a place with --html PATH)",
                    path.display()
                )),
            };
            (Some(said), None)
        }
        config::HtmlOutput::At(path, temporary) => {
            let html = memwarden_report::html::render(report);
            match write_file(temporary, &path, html.as_bytes()) {
                Ok(()) => (Some(Ok(path)), None),
                Err(e) => (
                    None,
                    Some(format!(
                        "cannot write the HTML report to {}: {e}; nothing was left there (free some space or choose another --html path)",
                        path.display()
                    )),
                ),
            }
        }
    }
}

/// Writes `report` as JSON to `path` as [`write_file_at`] does.
pub(crate) fn write_report_at(
    path: &Path,
    report: &memwarden_format::report::Report,
) -> io::Result<()> {
    write_file_at(path, &report_json(report)?)
}

/// Writes `contents` to `path` through a temporary file beside it, flushed to disk and
/// renamed over `path` (which holds the whole file or what it held before, never a partial
/// one), creating the folder first.
pub fn write_file_at(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let temporary = tempfile::Builder::new()
        .prefix(".memwarden-report.")
        .tempfile_in(dir)?;
    write_file(temporary, path, contents)
}

/// The report as the JSON written to disk.
pub fn report_json(report: &memwarden_format::report::Report) -> io::Result<Vec<u8>> {
    let mut json = serde_json::to_vec_pretty(report).map_err(io::Error::from)?;
    json.push(b'\n');
    Ok(json)
}

/// Writes `report` as JSON into `temporary`, then renames it to `path` ([`write_file`]).
pub(crate) fn write_report(
    temporary: tempfile::NamedTempFile,
    path: &Path,
    report: &memwarden_format::report::Report,
) -> io::Result<()> {
    write_file(temporary, path, &report_json(report)?)
}

/// Writes `contents` into `temporary`, flushes it to disk and renames it to `path`: `path`
/// holds either the whole file or what it held before, never a partial one. On failure the
/// temporary file is removed.
fn write_file(temporary: tempfile::NamedTempFile, path: &Path, contents: &[u8]) -> io::Result<()> {
    // Written through the bare file, so that errors are the OS's own (`tempfile`'s name the
    // temporary file, which is gone once this returns).
    let mut out = temporary.as_file();
    out.write_all(contents)?;
    temporary.as_file().sync_all()?;
    // The mode a plain new file would get (the temporary file is made private).
    let mode = 0o666 & !current_umask();
    temporary
        .as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    temporary.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The process's file-creation mask, from `/proc/self/status` (reading it with `umask`
/// would change it for a moment under other threads); 022 when it cannot be read.
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
            u32::from_str_radix(line.trim(), 8).ok()
        })
        .unwrap_or(0o022)
}

/// The command's status first (a failed command is the news), then the budget.
fn verdict(report: &memwarden_format::report::Report) -> Verdict {
    match (report.exit.code, report.exit.signal) {
        (_, Some(signal)) => Verdict::Command((128 + signal).clamp(0, 255) as u8),
        (Some(code), None) if code != 0 => Verdict::Command(code.clamp(0, 255) as u8),
        _ if report.budget.status == BudgetStatus::Fail => Verdict::BudgetExceeded,
        _ => Verdict::Command(0),
    }
}
