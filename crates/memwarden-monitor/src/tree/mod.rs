//! Finding and sampling every process of a tree.
//!
//! Membership: when the command runs in a cgroup of its own, the tree is exactly the
//! cgroup's `cgroup.procs` (about 10 µs a read; reopened each time, because cgroup v1
//! serves a cached pid list to a descriptor that stays open). Otherwise a
//! process belongs to the tree when its parent does, or when its parent is the monitor
//! itself (the command, and orphans re-parented to memwarden, which makes itself a child
//! subreaper): each sample lists `/proc` (the costliest part of a sample: its cost grows
//! with the number of processes on the machine), classifies only pids it has not seen
//! before, and forgets pids that vanished.
//!
//! Reading: per live process, RSS comes from a kept-open `statm` (about 1.5 µs a read here);
//! `status` (for `VmHWM`) and `smaps_rollup` (for PSS/USS, whose cost grows with the
//! process's size) are read only when they can have changed or have grown stale. Between
//! two `smaps_rollup` walks, PSS and USS move with RSS, which holds for private memory, the
//! kind that grows. A process that vanishes mid-read keeps the figures it had: nothing is
//! ever recorded as zero or negative because a read failed.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use memwarden_format::report::{PeakSource, ProcessPeaks, TimelinePoint};

use crate::cgroup::Cgroup;
use crate::gpu::{GpuMonitor, GpuReading};
use crate::procfs::{self, Statm};

/// How often the expensive per-process files are re-read at most.
#[derive(Debug, Clone, Copy)]
pub struct SamplerOptions {
    /// Re-read `smaps_rollup` at least this often even when RSS did not move.
    pub pss_max_age: Duration,
    /// Re-read `status` (for `VmHWM`) at least this often.
    pub hwm_max_age: Duration,
    /// Share of one core that `smaps_rollup` walks may take on average. A walk costs time
    /// in proportion to the memory mapped (about 1.3 ms for 1 GiB here); beyond the share,
    /// walks wait and PSS/USS follow RSS in the meantime.
    pub walk_share: f64,
    /// Read GPU memory at most this often: caching allocators make GPU memory change
    /// slowly, and each NVML query is a driver call. Ticks in between reuse the last reading.
    pub gpu_max_age: Duration,
}

/// A token bucket of CPU time for `smaps_rollup` walks.
#[derive(Debug)]
struct WalkBudget {
    tokens_s: f64,
    refilled: Instant,
    share: f64,
}

impl WalkBudget {
    /// At most this much saved-up time is spent in one burst.
    const BURST_S: f64 = 0.02;

    fn new(share: f64, now: Instant) -> Self {
        WalkBudget {
            tokens_s: Self::BURST_S,
            refilled: now,
            share,
        }
    }

    fn allows(&mut self, now: Instant) -> bool {
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.share;
        self.tokens_s = (self.tokens_s + earned).min(Self::BURST_S);
        self.refilled = now;
        self.tokens_s > 0.0
    }

    fn spend(&mut self, spent: Duration) {
        self.tokens_s -= spent.as_secs_f64();
    }
}

impl Default for SamplerOptions {
    fn default() -> Self {
        SamplerOptions {
            pss_max_age: Duration::from_secs(2),
            hwm_max_age: Duration::from_secs(2),
            walk_share: 0.004,
            gpu_max_age: Duration::from_millis(200),
        }
    }
}

/// How a process ended, when memwarden reaped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with a code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

/// Everything known about one process of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessRecord {
    /// Process id.
    pub pid: i32,
    /// Parent when first seen.
    pub ppid: i32,
    /// Command line; empty when it vanished before it could be read.
    pub cmdline: Vec<String>,
    /// First seen, since the start.
    pub first_seen: Duration,
    /// Last seen alive, since the start.
    pub last_seen: Duration,
    /// Still being sampled.
    pub alive: bool,
    /// Exit, when memwarden reaped it.
    pub exit: Option<ExitStatus>,
    /// Peak resident set: the kernel's high-water mark when it accounts for every sample
    /// (see [`rss_counter_slack_bytes`]), else the largest sample.
    pub peak_rss_bytes: u64,
    /// Source of `peak_rss_bytes`.
    pub peak_rss_source: PeakSource,
    sampled_rss_bytes: u64,
    kernel_rss: Option<(u64, PeakSource)>,
    /// The other peaks (sampled).
    pub peaks: ProcessPeaks,
}

impl ProcessRecord {
    fn new(pid: i32, ppid: i32, cmdline: Vec<String>, seen: Duration) -> Self {
        ProcessRecord {
            pid,
            ppid,
            cmdline,
            first_seen: seen,
            last_seen: seen,
            alive: true,
            exit: None,
            peak_rss_bytes: 0,
            peak_rss_source: PeakSource::Sampled,
            sampled_rss_bytes: 0,
            kernel_rss: None,
            peaks: ProcessPeaks::default(),
        }
    }

    /// Records a reading of the resident set, sampled or from a kernel high-water mark, and
    /// settles the peak: the kernel's mark wins unless a sample exceeded it by more than the
    /// kernel's own counting slack, which only happens when the mark was read before a
    /// later spike.
    fn raise_rss(&mut self, bytes: u64, source: PeakSource) {
        if source == PeakSource::Sampled {
            self.sampled_rss_bytes = self.sampled_rss_bytes.max(bytes);
        } else if self.kernel_rss.is_none_or(|(kernel, _)| bytes > kernel) {
            self.kernel_rss = Some((bytes, source));
        }
        (self.peak_rss_bytes, self.peak_rss_source) = match self.kernel_rss {
            Some((kernel, source))
                if kernel + rss_counter_slack_bytes() >= self.sampled_rss_bytes =>
            {
                (kernel, source)
            }
            _ => (self.sampled_rss_bytes, PeakSource::Sampled),
        };
    }
}

/// How far two readings of the same resident set can disagree. The kernel keeps RSS in
/// three counters (anonymous, file, shmem), each counted in per-CPU batches of
/// `max(32, 2 × CPUs)` pages before being folded into its total, so `statm`, `VmHWM` and
/// `ru_maxrss` may disagree by up to three batches per CPU: 768 KiB on 2 CPUs (measured
/// here: samples up to 292 KiB above the process's own final VmHWM).
pub fn rss_counter_slack_bytes() -> u64 {
    static SLACK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SLACK.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        3 * 32.max(2 * cpus) * cpus * procfs::page_size()
    })
}

fn raise(slot: &mut Option<u64>, value: u64) {
    *slot = Some(slot.map_or(value, |v| v.max(value)));
}

/// Where the tree's members come from.
#[derive(Debug)]
enum Membership {
    /// `cgroup.procs` of the run's own cgroup, and its usage counter, kept open.
    Cgroup { procs: PathBuf, usage: File },
    /// Parent links read from `/proc`.
    ProcScan,
}

/// Per-process state kept between samples.
#[derive(Debug)]
struct Live {
    record: usize,
    /// `Name:` of `status` when the command line was read; a change means an exec.
    name: Option<String>,
    samples: u64,
    statm: File,
    last_status: Instant,
    shmem_bytes: u64,
    last_smaps: Option<(Instant, u64, u64, u64)>,
    last_rss_bytes: u64,
    /// The last `statm` read, used for the ticks this process is not read.
    last_statm: Option<Statm>,
    /// Consecutive reads that found RSS unchanged.
    stable_reads: u32,
    /// Ticks to skip before the next read.
    skip: u32,
}

/// An idle process is read less often: after 4 reads with unchanged RSS every other tick,
/// after 8 every third, after 12 every fourth (200 ms at the default interval); any change
/// brings it back to every tick. Its kernel high-water mark still catches what happens
/// between reads.
fn ticks_to_skip(stable_reads: u32) -> u32 {
    (stable_reads / 4).min(3)
}

/// Samples a process tree. See the module documentation.
#[derive(Debug)]
pub struct TreeSampler {
    monitor_pid: i32,
    start: Instant,
    page_size: u64,
    options: SamplerOptions,
    live: HashMap<i32, Live>,
    records: Vec<ProcessRecord>,
    /// Pids not to track: not of the tree, zombies, or already retired. Forgotten once
    /// they leave the listing, so a reused pid is classified afresh.
    ignored: HashSet<i32>,
    gpu: Option<GpuMonitor>,
    last_gpu: Option<(Instant, GpuReading)>,
    membership: Membership,
    gpu_device_peaks: Vec<(u64, u64)>,
    buf: Vec<u8>,
    walks: WalkBudget,
    /// `/proc/loadavg`, whose last field is the pid most recently assigned.
    loadavg: Option<File>,
    last_pid_assigned: Option<u32>,
    pids: Vec<i32>,
}

impl TreeSampler {
    /// A sampler for the tree of processes whose ancestor chain reaches `monitor_pid`
    /// (the process that spawned the command and reaps orphans).
    pub fn new(
        monitor_pid: i32,
        start: Instant,
        options: SamplerOptions,
        gpu: Option<GpuMonitor>,
    ) -> Self {
        let devices = gpu.as_ref().map_or(0, |g| g.devices().len());
        TreeSampler {
            monitor_pid,
            start,
            page_size: procfs::page_size(),
            options,
            live: HashMap::new(),
            records: Vec::new(),
            ignored: HashSet::new(),
            gpu,
            membership: Membership::ProcScan,
            last_gpu: None,
            gpu_device_peaks: vec![(0, 0); devices],
            buf: Vec::with_capacity(8192),
            walks: WalkBudget::new(options.walk_share, start),
            loadavg: File::open("/proc/loadavg").ok(),
            last_pid_assigned: None,
            pids: Vec::new(),
        }
    }

    /// Takes the tree's members from `cgroup`, which holds the command and everything it
    /// starts, instead of scanning `/proc`; also reports the cgroup's usage each sample.
    pub fn use_cgroup(&mut self, cgroup: &Cgroup) -> std::io::Result<()> {
        let procs = cgroup.dir.join("cgroup.procs");
        File::open(&procs)?;
        let usage = File::open(cgroup.dir.join(cgroup.usage_file()))?;
        self.membership = Membership::Cgroup { procs, usage };
        Ok(())
    }

    /// Every process measured so far, in order of first sight. A process that was listed
    /// but gone before its first reading, and not reaped by memwarden, has no figures and
    /// is left out rather than reported as using nothing.
    pub fn processes(&self) -> Vec<&ProcessRecord> {
        self.records
            .iter()
            .filter(|r| r.peak_rss_bytes > 0 || r.exit.is_some())
            .collect()
    }

    /// Pids being sampled now.
    pub fn live_pids(&self) -> Vec<i32> {
        self.live.keys().copied().collect()
    }

    /// The tracked processes still running now, read afresh: a process whose memory stayed
    /// flat is read only every few ticks, so one that exited since its last read (a pool
    /// worker joined by its parent) is still tracked, but not running.
    pub fn surviving_pids(&mut self) -> Vec<i32> {
        let mut pids: Vec<i32> = self.live.keys().copied().collect();
        pids.sort_unstable();
        pids.retain(|pid| {
            procfs::read_file(&format!("/proc/{pid}/stat"), &mut self.buf)
                .and_then(|text| procfs::parse_stat(&String::from_utf8_lossy(text)))
                .is_some_and(|stat| stat.state != 'Z' && stat.state != 'X')
        });
        pids
    }

    /// The NVML session, when GPU memory is available.
    pub fn gpu(&self) -> Option<&GpuMonitor> {
        self.gpu.as_ref()
    }

    /// Per device: (peak used by the tree, peak used by anyone), by device index.
    pub fn gpu_device_peaks(&self) -> &[(u64, u64)] {
        &self.gpu_device_peaks
    }

    /// Starts tracking `pid` now, with a known parent and command line (used for the command
    /// right after it is spawned, so that even a command that exits at once has a record).
    pub fn adopt(&mut self, pid: i32, ppid: i32, cmdline: &[String]) {
        if !self.live.contains_key(&pid) {
            self.track(pid, ppid);
        }
        if let Some(record) = self.records.iter_mut().rev().find(|r| r.pid == pid) {
            if record.cmdline.is_empty() {
                record.cmdline = cmdline.to_vec();
            }
        }
    }

    /// Takes one sample of the whole tree and returns its totals.
    pub fn sample(&mut self) -> TimelinePoint {
        if self.pids_assigned_since_last_sample() {
            self.discover();
        }
        let now = Instant::now();
        let at = now - self.start;
        let fresh = match (&self.gpu, &self.last_gpu) {
            (None, _) => false,
            (Some(_), Some((when, _))) => now.duration_since(*when) >= self.options.gpu_max_age,
            (Some(_), None) => true,
        };
        if fresh {
            self.last_gpu = self.gpu.as_ref().map(|g| (now, g.read()));
        }
        // Taken out for the tick (the loop below borrows the sampler), put back after it.
        let last_gpu = self.last_gpu.take();
        let gpu = last_gpu.as_ref().map(|(_, reading)| reading);
        let mut totals = TimelinePoint {
            t_s: at.as_secs_f64(),
            gpu_bytes: gpu.as_ref().map(|_| 0),
            ..TimelinePoint::default()
        };
        if let Membership::Cgroup { usage, .. } = &self.membership {
            totals.cgroup_bytes = procfs::pread_all(usage, &mut self.buf)
                .ok()
                .and_then(|text| std::str::from_utf8(text).ok()?.trim().parse().ok());
        }
        let mut gone = Vec::new();
        for (&pid, live) in self.live.iter_mut() {
            let record = &mut self.records[live.record];
            let statm = match live.last_statm {
                Some(last) if live.skip > 0 => {
                    live.skip -= 1;
                    last
                }
                _ => {
                    let statm = procfs::pread_all(&live.statm, &mut self.buf)
                        .ok()
                        .and_then(|text| procfs::parse_statm(text, self.page_size));
                    let Some(statm) = statm.filter(|s| s.resident_bytes > 0) else {
                        // Gone, or a zombie with no memory left: keep what was measured.
                        gone.push(pid);
                        continue;
                    };
                    let unchanged = live
                        .last_statm
                        .is_some_and(|last| last.resident_bytes == statm.resident_bytes);
                    live.stable_reads = if unchanged { live.stable_reads + 1 } else { 0 };
                    live.skip = ticks_to_skip(live.stable_reads);
                    live.last_statm = Some(statm);
                    let mut reader = Reader {
                        buf: &mut self.buf,
                        walks: &mut self.walks,
                        options: &self.options,
                        now,
                    };
                    sample_process(pid, live, record, statm, &mut reader);
                    record.last_seen = at;
                    statm
                }
            };
            if let Some(reading) = &gpu {
                if let Some(&bytes) = reading.by_pid.get(&(pid as u32)) {
                    raise(&mut record.peaks.peak_gpu_bytes, bytes);
                    totals.gpu_bytes = totals.gpu_bytes.map(|t| t + bytes);
                }
            }
            let (pss, uss) = estimate_pss_uss(live, statm.resident_bytes);
            totals.rss_bytes += statm.resident_bytes;
            totals.pss_bytes += pss;
            totals.uss_bytes += uss;
            let shmem = live.shmem_bytes.min(statm.shared_bytes);
            totals.anon_bytes += statm.resident_bytes - statm.shared_bytes;
            totals.shmem_bytes += shmem;
            totals.file_bytes += statm.shared_bytes - shmem;
            totals.processes += 1;
        }
        for pid in gone {
            self.retire(pid);
        }
        if let Some(reading) = gpu {
            self.raise_gpu_devices(reading);
        }
        self.last_gpu = last_gpu;
        totals
    }

    /// Records the exit of a process memwarden reaped, with the kernel's `ru_maxrss` for it.
    /// `ru_maxrss` covers the process and the descendants it reaped, so it becomes the
    /// process's own peak only when no descendant of it was ever seen.
    pub fn record_exit(&mut self, pid: i32, status: ExitStatus, ru_maxrss_bytes: u64) {
        let at = self.start.elapsed();
        let index = match self.live.get(&pid) {
            Some(live) => Some(live.record),
            None => self
                .records
                .iter()
                .rposition(|r| r.pid == pid && r.exit.is_none() && !r.alive),
        };
        let index = index.unwrap_or_else(|| {
            // Lived and died between two samples: all we have is what the kernel kept.
            self.records
                .push(ProcessRecord::new(pid, self.monitor_pid, Vec::new(), at));
            self.records.len() - 1
        });
        let had_children = self.records.iter().any(|r| r.ppid == pid);
        let record = &mut self.records[index];
        record.exit = Some(status);
        record.alive = false;
        if !had_children {
            record.raise_rss(ru_maxrss_bytes, PeakSource::RuMaxrss);
        }
        self.retire(pid);
    }

    fn retire(&mut self, pid: i32) {
        // A zombie stays listed until reaped: it must not come back as a new process.
        self.ignored.insert(pid);
        if let Some(live) = self.live.remove(&pid) {
            let record = &mut self.records[live.record];
            record.alive = false;
        }
    }

    fn raise_gpu_devices(&mut self, reading: &GpuReading) {
        for (device, per_pid) in reading.by_device_pid.iter().enumerate() {
            let tree: u64 = per_pid
                .iter()
                .filter(|(pid, _)| self.live.contains_key(&(**pid as i32)))
                .map(|(_, bytes)| bytes)
                .sum();
            let used = reading.device_used_bytes.get(device).copied().unwrap_or(0);
            if let Some(peaks) = self.gpu_device_peaks.get_mut(device) {
                peaks.0 = peaks.0.max(tree);
                peaks.1 = peaks.1.max(used);
            }
        }
    }

    /// Whether any process was created since the last sample, from the pid most recently
    /// assigned in memwarden's pid namespace (the last field of `/proc/loadavg`): one cheap
    /// read that saves listing the tree on the many ticks in which nothing was started.
    /// Processes that end are noticed when their `statm` can no longer be read.
    fn pids_assigned_since_last_sample(&mut self) -> bool {
        let Some(loadavg) = &self.loadavg else {
            return true;
        };
        let last = procfs::pread_all(loadavg, &mut self.buf)
            .ok()
            .and_then(|text| {
                std::str::from_utf8(text)
                    .ok()?
                    .split_ascii_whitespace()
                    .nth(4)?
                    .parse()
                    .ok()
            });
        let changed = last.is_none() || last != self.last_pid_assigned;
        self.last_pid_assigned = last;
        changed
    }

    fn discover(&mut self) {
        self.pids.clear();
        match &self.membership {
            Membership::Cgroup { procs, .. } => {
                let listed =
                    File::open(procs).and_then(|file| procfs::pread_all(&file, &mut self.buf));
                if let Ok(text) = listed {
                    let text = String::from_utf8_lossy(text);
                    self.pids.extend(
                        text.lines()
                            .filter_map(|line| line.trim().parse::<i32>().ok()),
                    );
                }
            }
            Membership::ProcScan => {
                let Ok(entries) = fs::read_dir("/proc") else {
                    return;
                };
                for entry in entries.flatten() {
                    if let Some(pid) = entry
                        .file_name()
                        .to_str()
                        .and_then(|n| n.parse::<i32>().ok())
                    {
                        self.pids.push(pid);
                    }
                }
            }
        }
        let in_cgroup = matches!(self.membership, Membership::Cgroup { .. });
        let present: HashSet<i32> = self.pids.iter().copied().collect();
        self.ignored.retain(|pid| present.contains(pid));
        let vanished: Vec<i32> = self
            .live
            .keys()
            .copied()
            .filter(|pid| !present.contains(pid))
            .collect();
        for pid in vanished {
            self.retire(pid);
        }
        let mut unknown: Vec<(i32, i32)> = Vec::new();
        let pids = std::mem::take(&mut self.pids);
        for &pid in &pids {
            if pid == self.monitor_pid
                || self.live.contains_key(&pid)
                || self.ignored.contains(&pid)
            {
                continue;
            }
            let stat = procfs::read_file(&format!("/proc/{pid}/stat"), &mut self.buf)
                .and_then(|text| procfs::parse_stat(&String::from_utf8_lossy(text)));
            match stat {
                Some(stat) if stat.state == 'Z' || stat.state == 'X' => {
                    self.ignored.insert(pid);
                }
                Some(stat) if in_cgroup => self.track(pid, stat.ppid),
                Some(stat) => unknown.push((pid, stat.ppid)),
                None => continue, // vanished between the listing and the read
            }
        }
        self.pids = pids;
        // Parents may be listed after their children (pid wrap-around): iterate to a fixpoint.
        loop {
            let before = unknown.len();
            let mut i = 0;
            while i < unknown.len() {
                let (pid, ppid) = unknown[i];
                if ppid == self.monitor_pid || self.live.contains_key(&ppid) {
                    self.track(pid, ppid);
                    unknown.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            if unknown.len() == before {
                break;
            }
        }
        self.ignored.extend(unknown.into_iter().map(|(pid, _)| pid));
    }

    fn track(&mut self, pid: i32, ppid: i32) {
        let Ok(statm) = File::open(format!("/proc/{pid}/statm")) else {
            return;
        };
        let cmdline = procfs::read_file(&format!("/proc/{pid}/cmdline"), &mut self.buf)
            .map(procfs::parse_cmdline)
            .unwrap_or_default();
        let record = self.records.len();
        self.records
            .push(ProcessRecord::new(pid, ppid, cmdline, self.start.elapsed()));
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(3600))
            .unwrap_or(self.start);
        self.live.insert(
            pid,
            Live {
                record,
                name: None,
                samples: 0,
                statm,
                last_status: long_ago,
                shmem_bytes: 0,
                last_smaps: None,
                last_rss_bytes: 0,
                last_statm: None,
                stable_reads: 0,
                skip: 0,
            },
        );
    }
}

/// What reading one process needs from the sampler.
struct Reader<'a> {
    buf: &'a mut Vec<u8>,
    walks: &'a mut WalkBudget,
    options: &'a SamplerOptions,
    now: Instant,
}

/// Reads `status` and `smaps_rollup` for one process when they can have changed.
fn sample_process(
    pid: i32,
    live: &mut Live,
    record: &mut ProcessRecord,
    statm: Statm,
    reader: &mut Reader<'_>,
) {
    let now = reader.now;
    let rss = statm.resident_bytes;
    record.raise_rss(rss, PeakSource::Sampled);
    live.samples += 1;
    // A process is often first seen between fork and exec: read its command line again on
    // the second sample, and whenever `status` shows a new name.
    let mut reread_cmdline = live.samples == 2;
    // A fall in RSS means something was freed; the high-water mark may hold a spike we
    // did not see, so read it before the process gets a chance to exit.
    let fell = rss + significant_change(live.last_rss_bytes) < live.last_rss_bytes;
    if fell || now.duration_since(live.last_status) >= reader.options.hwm_max_age {
        let status = procfs::read_file(&format!("/proc/{pid}/status"), reader.buf)
            .and_then(|text| procfs::parse_status(&String::from_utf8_lossy(text)));
        if let Some(status) = status {
            live.last_status = now;
            live.shmem_bytes = status.shmem_bytes;
            if live.name.as_deref().is_some_and(|name| name != status.name) {
                reread_cmdline = true;
            }
            live.name = Some(status.name);
            record.raise_rss(status.hwm_bytes, PeakSource::VmHwm);
            raise(&mut record.peaks.peak_shmem_bytes, status.shmem_bytes);
        }
    }
    if reread_cmdline {
        if let Some(bytes) = procfs::read_file(&format!("/proc/{pid}/cmdline"), reader.buf) {
            let cmdline = procfs::parse_cmdline(bytes);
            if !cmdline.is_empty() {
                record.cmdline = cmdline;
            }
        }
    }
    live.last_rss_bytes = rss;
    // The first walk gives the baseline and is always made; later ones when PSS may have
    // moved other than with RSS, within the time budget for walks.
    let walk = match live.last_smaps {
        None => true,
        Some((when, rss_then, _, _)) => {
            (now.duration_since(when) >= reader.options.pss_max_age
                || rss.abs_diff(rss_then) > significant_change(rss_then))
                && reader.walks.allows(now)
        }
    };
    if walk {
        let started = Instant::now();
        let rollup = procfs::read_file(&format!("/proc/{pid}/smaps_rollup"), reader.buf)
            .and_then(|text| procfs::parse_smaps_rollup(&String::from_utf8_lossy(text)));
        reader.walks.spend(started.elapsed());
        if let Some(rollup) = rollup {
            live.last_smaps = Some((now, rollup.rss_bytes, rollup.pss_bytes, rollup.uss_bytes));
        }
    }
    let (pss, uss) = estimate_pss_uss(live, rss);
    if live.last_smaps.is_some() {
        raise(&mut record.peaks.peak_pss_bytes, pss);
        raise(&mut record.peaks.peak_uss_bytes, uss);
    }
    let shmem = live.shmem_bytes.min(statm.shared_bytes);
    raise(&mut record.peaks.peak_anon_bytes, rss - statm.shared_bytes);
    raise(
        &mut record.peaks.peak_file_bytes,
        statm.shared_bytes - shmem,
    );
}

/// PSS and USS now: the last walk's figures moved by the change in RSS since that walk.
fn estimate_pss_uss(live: &Live, rss: u64) -> (u64, u64) {
    match live.last_smaps {
        Some((_, rss_then, pss, uss)) => {
            let shift =
                |v: u64| (v as i128 + rss as i128 - rss_then as i128).clamp(0, rss as i128) as u64;
            (shift(pss), shift(uss))
        }
        None => (rss, rss),
    }
}

/// A change in RSS worth a new `smaps_rollup` walk: 2% or 1 MiB, whichever is larger.
fn significant_change(rss: u64) -> u64 {
    (rss / 50).max(1 << 20)
}

#[cfg(test)]
mod tests;
