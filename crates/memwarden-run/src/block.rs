//! Recording a block of a Python program in the ledger (`memwarden.track(..., model=...)`),
//! as `memwarden run --model` records a command: a record keyed by model, version and
//! stage, with the code's provenance and a report kept in the data directory.
//!
//! A block's figures are the process's own during the block (see the Python package's
//! `memwarden.track`): its resident peak (`VmHWM` when exact, else a lower bound from
//! samples), its heap peak above its start, its GPU peak. The report holds those as its
//! peaks; processes, timeline and profile stay empty.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use memwarden_format::capture::Capture;
use memwarden_report::profile;

use memwarden_format::report::{
    Budget, BudgetStatus, Exit, Gpu, Limits, MonitorInfo, Peak, PeakSource, Report, SCHEMA,
};
use memwarden_monitor::procfs;

use crate::config::governance;
use crate::ledger_record;

/// What a finished block measured, and where to record it.
#[derive(Debug, Clone)]
pub struct Block {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Stage (`train`, `eval`, `inference`, `test`...).
    pub stage: String,
    /// Tags, `KEY=VALUE`.
    pub tags: Vec<String>,
    /// The ledger (a path or URL; default: the data directory's).
    pub ledger: Option<String>,
    /// The program's command line (`sys.argv` with the interpreter first).
    pub command: Vec<String>,
    /// When the block began, seconds since the epoch.
    pub started_at_unix_s: f64,
    /// How long it took.
    pub duration_s: f64,
    /// The process's resident peak during the block.
    pub peak_rss_bytes: u64,
    /// Whether `peak_rss_bytes` is the kernel's high-water mark (else a lower bound).
    pub peak_rss_exact: bool,
    /// The heap's peak above its start, when the profiler measured it.
    pub peak_heap_bytes: Option<u64>,
    /// The heap at the end less the heap at the start (0 without the profiler).
    pub left_bytes: i64,
    /// The GPU peak, when torch measured it.
    pub peak_gpu_bytes: Option<u64>,
    /// The block's budget, when it had one.
    pub budget_bytes: Option<u64>,
    /// Whether the block ended with an exception.
    pub failed: bool,
}

/// Records `block` in the ledger; the line saying where, or why it could not be (in
/// which case the record was spooled, as a run's is).
pub fn record(block: &Block) -> Result<String, String> {
    let governance = governance(
        block.model.clone(),
        block.version.clone(),
        &block.stage,
        block.tags.clone(),
        Vec::new(),
        block.ledger.as_deref(),
    )?;
    let started = UNIX_EPOCH + Duration::from_secs_f64(block.started_at_unix_s.max(0.0));
    let before = ledger_record::before(&governance, started)?;
    let mut report = report(block);
    report.model = Some(governance.model_run(&before.run_id));
    let path = ledger_record::default_report_path(&before.run_id);
    let kept = crate::write_report_at(&path, &report).ok().map(|()| path);
    let record = ledger_record::build(&governance, before, &report, kept.as_deref());
    ledger_record::write(&governance.ledger, &record)
}

/// The report of a block measured with the profiler (a notebook cell): [`report`] with the
/// profile of the block's part of its process's capture, `capture`, whose nodes' allocated
/// bytes and allocations were `since` as the block began (see `memwarden_report::profile::analyze_block`),
/// the source of its lines (`given`: the text of code that is no file, a notebook's
/// cells, by file name) and the advice. Without a capture or the heap peak (no profiler),
/// the profile stays empty.
pub fn report_with_profile(
    block: &Block,
    capture: Option<&Path>,
    since: &[(u64, u64)],
    given: &BTreeMap<String, String>,
) -> Result<Report, String> {
    let mut report = report(block);
    if let (Some(capture), Some(peak)) = (capture, block.peak_heap_bytes) {
        let capture = Capture::read(capture).map_err(|e| e.to_string())?;
        let start_ns = (block.started_at_unix_s.max(0.0) * 1e9) as u64;
        let (analysis, peak_inside) =
            profile::analyze_block(&capture, since, start_ns, peak, block.left_bytes);
        if !peak_inside {
            report.warnings.push(
                "no stacks at this block's peak: its process had reached a higher heap before it, and the profiler keeps the stacks of the process's highest moment only; its lines show what it allocated".to_owned(),
            );
        }
        report.profile = Some(analysis.profile);
    }
    memwarden_report::advice::complete_with(&mut report, given);
    Ok(report)
}

/// The report of a block: its peaks, the machine's memory, its budget's verdict.
pub fn report(block: &Block) -> Report {
    let meminfo = procfs::read_meminfo().unwrap_or_default();
    let rss_source = if block.peak_rss_exact {
        PeakSource::VmHwm
    } else {
        PeakSource::Sampled
    };
    let mut sources = BTreeMap::from([("rss_bytes".to_owned(), rss_source)]);
    if block.peak_gpu_bytes.is_some() {
        sources.insert("gpu_bytes".to_owned(), PeakSource::Sampled);
    }
    let measured = block.peak_heap_bytes.unwrap_or(block.peak_rss_bytes);
    Report {
        schema: SCHEMA.to_owned(),
        memwarden_version: env!("CARGO_PKG_VERSION").to_owned(),
        model: None,
        command: block.command.clone(),
        cwd: std::env::current_dir()
            .map(|p| memwarden_format::names::escape_path(&p).into_owned())
            .unwrap_or_default(),
        started_at_unix_s: block.started_at_unix_s,
        duration_s: block.duration_s,
        exit: Exit {
            code: (!block.failed).then_some(0),
            ..Exit::default()
        },
        peak: Peak {
            heap_bytes: block.peak_heap_bytes,
            gpu_bytes: block.peak_gpu_bytes,
            pid: Some(std::process::id() as i32),
            sources,
            ..Peak::new(block.peak_rss_bytes, rss_source)
        },
        limits: Limits {
            system_total_bytes: meminfo.total_bytes,
            system_available_at_start_bytes: meminfo.available_bytes,
            tightest_limit_bytes: meminfo.total_bytes,
            tightest_limit_source: "system".to_owned(),
            headroom_bytes: meminfo.total_bytes as i64 - block.peak_rss_bytes as i64,
            ..Limits::default()
        },
        budget: Budget {
            limit_bytes: block.budget_bytes,
            metric: if block.peak_heap_bytes.is_some() {
                "peak.heap_bytes".to_owned()
            } else {
                "peak.rss_bytes".to_owned()
            },
            status: BudgetStatus::of(block.budget_bytes, measured),
            ..Budget::unset()
        },
        gpu: Gpu {
            status: if block.peak_gpu_bytes.is_some() {
                "available"
            } else {
                "unavailable"
            }
            .to_owned(),
            ..Gpu::default()
        },
        monitor: MonitorInfo::default(),
        processes: Vec::new(),
        timeline: Vec::new(),
        warnings: vec![format!(
            "a block of a Python program, measured in its process by memwarden.track{}",
            if block.peak_rss_exact {
                ""
            } else {
                "; its peak RSS is a lower bound (under memwarden run, which owns the high-water mark)"
            }
        )],
        profile: None,
        advice: Vec::new(),
    }
}
