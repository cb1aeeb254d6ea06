//! Turning what a run observed into the report (`memwarden.report/1`).

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use memwarden_format::report::{
    Budget, BudgetStatus, Exit, Gpu, GpuDevice, Limits, MonitorInfo, Peak, PeakSource,
    ProcessReport, Report, SCHEMA,
};
use memwarden_format::units::format_size;
use memwarden_monitor::tree::{rss_counter_slack_bytes, ExitStatus, TreeSampler};

use super::config::RunConfig;
use super::isolation::Isolation;
use super::supervise::signal_name;
use super::tree_figures::TreeFigures;
use super::Observed;

/// Builds the report; `memwarden_exit_code` is filled in by the caller.
pub fn build(
    config: &RunConfig,
    isolation: &Isolation,
    sampler: &TreeSampler,
    figures: &TreeFigures,
    observed: &Observed,
    interval: Duration,
) -> Report {
    let mut warnings = Vec::new();
    let own_cgroup_peak = isolation.own.as_ref().and_then(|c| c.peak_bytes());
    let own_oom_kills = isolation
        .own
        .as_ref()
        .and_then(|c| c.oom_kills())
        .unwrap_or(0);
    let enclosing_oom_kills = match (
        isolation.enclosing.as_ref().and_then(|c| c.oom_kills()),
        observed.enclosing_oom_kills_before,
    ) {
        (Some(after), Some(before)) => Some(after.saturating_sub(before)),
        _ => None,
    };

    let exit = build_exit(
        observed,
        own_oom_kills,
        enclosing_oom_kills,
        own_cgroup_peak,
    );
    if own_oom_kills > 0 && !exit.oom_killed {
        warnings.push(format!(
            "the kernel OOM-killed {own_oom_kills} process(es) of the tree at the hard limit"
        ));
    }
    if enclosing_oom_kills.is_some_and(|k| k > 0) && !exit.oom_killed {
        warnings.push("the OOM killer struck in memwarden's cgroup during the run".to_owned());
    }

    let processes: Vec<ProcessReport> = sampler
        .processes()
        .into_iter()
        .map(process_report)
        .collect();
    let peak = build_peak(figures, sampler, own_cgroup_peak);
    if peak.pss_bytes.is_none() {
        warnings.push(
            "peak.pss_bytes and uss_bytes were not measured: the command ended before the \
             first reading of its memory maps (rss_bytes comes from the kernel's own \
             high-water mark)"
                .to_owned(),
        );
    }
    if peak.source == PeakSource::Sampled && sampler.processes().len() > 1 {
        warnings.push(
            "peak.rss_bytes is the largest sampled sum over the tree: processes that peaked \
             between samples at once may have needed more"
                .to_owned(),
        );
    }
    if peak.rss_bytes > observed.meminfo.available_bytes && observed.meminfo.available_bytes > 0 {
        warnings.push(format!(
            "the peak ({}) exceeded the memory available when the run started ({})",
            format_size(peak.rss_bytes),
            format_size(observed.meminfo.available_bytes)
        ));
    }
    if !observed.survivors.is_empty() {
        warnings.push(format!(
            "{} process(es) of the tree were still running when the command exited: {:?}",
            observed.survivors.len(),
            observed.survivors
        ));
    }
    if !observed.forwarded_signals.is_empty() {
        let names: Vec<String> = observed
            .forwarded_signals
            .iter()
            .map(|&s| signal_name(s))
            .collect();
        warnings.push(format!(
            "memwarden received {} during the run",
            names.join(", ")
        ));
    }
    if let Some(note) = &isolation.note {
        if config.hard_limit_bytes.is_some() || config.cgroup != crate::config::CgroupMode::Auto {
            warnings.push(note.clone());
        }
    }

    let limits = build_limits(
        config,
        isolation,
        observed,
        enclosing_oom_kills,
        peak.rss_bytes,
    );
    let budget = Budget {
        limit_bytes: config.budget_bytes,
        metric: "peak.rss_bytes".to_owned(),
        status: BudgetStatus::of(config.budget_bytes, peak.rss_bytes),
        hard_limit_bytes: config.hard_limit_bytes,
        enforced_by: isolation.enforcement,
        enforcement_note: isolation.note.clone(),
    };
    let duration_s = observed.duration.as_secs_f64();
    Report {
        schema: SCHEMA.to_owned(),
        memwarden_version: env!("CARGO_PKG_VERSION").to_owned(),
        // Named by the ledger's run id, which `run` knows.
        model: None,
        command: config.command.clone(),
        cwd: std::env::current_dir()
            .map(|p| memwarden_format::names::escape_path(&p).into_owned())
            .unwrap_or_default(),
        started_at_unix_s: observed
            .started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        duration_s,
        exit,
        peak,
        limits,
        budget,
        gpu: build_gpu(sampler, observed),
        monitor: MonitorInfo {
            interval_ms: interval.as_millis() as u64,
            samples: figures.samples,
            self_cpu_s: observed.self_cpu_s,
            self_cpu_share: if duration_s > 0.0 {
                observed.self_cpu_s / duration_s
            } else {
                0.0
            },
            own_cgroup: isolation.own.is_some(),
        },
        processes,
        timeline: figures.timeline(),
        warnings,
        profile: None,
        advice: Vec::new(),
    }
}

fn build_exit(
    observed: &Observed,
    own_oom_kills: u64,
    enclosing_oom_kills: Option<u64>,
    own_peak: Option<u64>,
) -> Exit {
    let mut exit = Exit::default();
    match observed.exit {
        ExitStatus::Code(code) => exit.code = Some(code),
        ExitStatus::Signal(signal) => {
            exit.signal = Some(signal);
            exit.signal_name = Some(signal_name(signal));
        }
    }
    let killed = exit.signal == Some(libc::SIGKILL);
    if let Some(at) = observed.watchdog_kill_at_bytes {
        exit.oom_killed = true;
        exit.oom_killed_by = Some("watchdog".to_owned());
        exit.oom_at_bytes = Some(at);
    } else if killed && (own_oom_kills > 0 || enclosing_oom_kills.is_some_and(|k| k > 0)) {
        exit.oom_killed = true;
        exit.oom_killed_by = Some("kernel".to_owned());
        exit.oom_at_bytes = own_peak;
    }
    exit
}

fn build_peak(figures: &TreeFigures, sampler: &TreeSampler, own_cgroup_peak: Option<u64>) -> Peak {
    let at_peak = figures.rss_peak;
    let largest = sampler
        .processes()
        .into_iter()
        .max_by_key(|p| p.peak_rss_bytes);
    let (rss_bytes, source) = match largest {
        Some(p)
            if p.peak_rss_bytes > 0
                && p.peak_rss_bytes + rss_counter_slack_bytes() >= at_peak.rss_bytes =>
        {
            (p.peak_rss_bytes, p.peak_rss_source)
        }
        _ => (at_peak.rss_bytes, PeakSource::Sampled),
    };
    // A live process always has resident pages, so all-zero figures mean the tree was gone
    // before any tick could read them (`run -- true`): not measured, not zero.
    let rollup_read = figures.samples > 0 && figures.max.pss_bytes > 0;
    let status_read =
        figures.samples > 0 && (figures.max.anon_bytes > 0 || figures.max.file_bytes > 0);
    let mut sources = peak_sources(source, rollup_read, status_read);
    let cgroup_bytes = own_cgroup_peak.or(figures.max.cgroup_bytes);
    if cgroup_bytes.is_some() {
        let source = if own_cgroup_peak.is_some() {
            PeakSource::Cgroup
        } else {
            PeakSource::Sampled
        };
        sources.insert("cgroup_bytes".to_owned(), source);
    }
    if figures.max.gpu_bytes.is_some() {
        sources.insert("gpu_bytes".to_owned(), PeakSource::Nvml);
    }
    Peak {
        rss_bytes,
        source,
        pss_bytes: rollup_read.then_some(figures.max.pss_bytes),
        uss_bytes: rollup_read.then_some(figures.max.uss_bytes),
        anon_bytes: status_read.then_some(at_peak.anon_bytes),
        file_bytes: status_read.then_some(at_peak.file_bytes),
        shmem_bytes: status_read.then_some(at_peak.shmem_bytes),
        cgroup_bytes,
        heap_bytes: None,
        gpu_bytes: figures.max.gpu_bytes,
        at_s: at_peak.t_s,
        pid: largest.map(|p| p.pid),
        sources,
    }
}

fn build_limits(
    config: &RunConfig,
    isolation: &Isolation,
    observed: &Observed,
    enclosing_oom_kills: Option<u64>,
    peak_bytes: u64,
) -> Limits {
    let enclosing = isolation.enclosing.as_ref();
    let cgroup_limit_bytes = enclosing.and_then(|c| c.limit_bytes());
    let mut candidates = vec![(observed.meminfo.total_bytes, "system")];
    if let Some(limit) = cgroup_limit_bytes {
        candidates.push((limit, "cgroup"));
    }
    if let Some(limit) = config.hard_limit_bytes {
        candidates.push((limit, "hard_limit"));
    }
    let (tightest, source) = candidates
        .into_iter()
        .filter(|(b, _)| *b > 0)
        .min_by_key(|(b, _)| *b)
        .unwrap_or((0, "system"));
    Limits {
        cgroup_version: enclosing.map(|c| c.version.number()),
        cgroup_path: enclosing.map(|c| c.path.clone()),
        cgroup_limit_bytes,
        cgroup_usage_at_start_bytes: observed.enclosing_usage_at_start,
        cgroup_oom_kills_during_run: enclosing_oom_kills,
        system_total_bytes: observed.meminfo.total_bytes,
        system_available_at_start_bytes: observed.meminfo.available_bytes,
        tightest_limit_bytes: tightest,
        tightest_limit_source: source.to_owned(),
        headroom_bytes: tightest as i64 - peak_bytes as i64,
    }
}

fn build_gpu(sampler: &TreeSampler, observed: &Observed) -> Gpu {
    match sampler.gpu() {
        Some(gpu) => Gpu {
            status: "available".to_owned(),
            reason: None,
            devices: gpu
                .devices()
                .iter()
                .zip(sampler.gpu_device_peaks())
                .map(|(info, &(tree, _anyone))| GpuDevice {
                    index: info.index,
                    name: info.name.clone(),
                    total_bytes: info.total_bytes,
                    peak_tree_bytes: tree,
                })
                .collect(),
        },
        None => Gpu {
            status: "unavailable".to_owned(),
            reason: observed.gpu_unavailable_reason.clone(),
            devices: Vec::new(),
        },
    }
}

/// The source of each tree peak figure: RSS's own, and `sampled` for the figures that
/// were read (PSS and USS from `smaps_rollup`, the anonymous, file and shared-memory parts
/// from `status`); a figure never read has no source.
pub(super) fn peak_sources(
    rss_source: PeakSource,
    rollup_read: bool,
    status_read: bool,
) -> BTreeMap<String, PeakSource> {
    let mut sources = BTreeMap::new();
    sources.insert("rss_bytes".to_owned(), rss_source);
    for (field, read) in [
        ("pss_bytes", rollup_read),
        ("uss_bytes", rollup_read),
        ("anon_bytes", status_read),
        ("file_bytes", status_read),
        ("shmem_bytes", status_read),
    ] {
        if read {
            sources.insert(field.to_owned(), PeakSource::Sampled);
        }
    }
    sources
}

/// Why a process has no peak RSS (see `ProcessReport::peak_rss_unmeasured`).
pub(super) const UNMEASURED_RSS: &str = "the process came and went between two readings of the monitor, was not memwarden's child, and left no high-water mark of its own";

fn process_report(record: &memwarden_monitor::tree::ProcessRecord) -> ProcessReport {
    let (exit_code, exit_signal) = match record.exit {
        Some(ExitStatus::Code(code)) => (Some(code), None),
        Some(ExitStatus::Signal(signal)) => (None, Some(signal)),
        None => (None, None),
    };
    ProcessReport {
        pid: record.pid,
        ppid: record.ppid,
        cmdline: record.cmdline.clone(),
        first_seen_s: record.first_seen.as_secs_f64(),
        last_seen_s: record.last_seen.as_secs_f64(),
        exit_code,
        exit_signal,
        peak_rss_bytes: (record.peak_rss_bytes > 0).then_some(record.peak_rss_bytes),
        peak_rss_source: (record.peak_rss_bytes > 0).then_some(record.peak_rss_source),
        peak_rss_unmeasured: (record.peak_rss_bytes == 0).then(|| UNMEASURED_RSS.to_owned()),
        peaks: record.peaks,
        profile: None,
    }
}
