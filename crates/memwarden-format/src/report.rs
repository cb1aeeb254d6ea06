//! The run report, schema `memwarden.report/1`.
//!
//! One JSON document per `memwarden run`. Field names carry their unit (`_bytes`, `_s`,
//! `_ms`); a figure that could not be measured is `null`, never `0`. Every peak says which
//! source it came from ([`PeakSource`]), because a kernel high-water mark and a sampled
//! maximum deserve different trust. `docs/report-schema.md` documents each field; a change
//! that removes or renames a field bumps [`SCHEMA`], additions do not.

use serde::{Deserialize, Serialize};

/// The schema identifier written into every report.
pub const SCHEMA: &str = "memwarden.report/1";

/// A complete run report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Version of memwarden that wrote the report.
    pub memwarden_version: String,
    /// The model version and stage the run was recorded under (`--model`); absent when
    /// the run was not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRun>,
    /// The command as given, program first (text in the [`crate::names`] scheme, as every
    /// name, path and argument of the report).
    pub command: Vec<String>,
    /// Working directory of the command.
    pub cwd: String,
    /// Start of the run, seconds since the Unix epoch.
    pub started_at_unix_s: f64,
    /// Wall-clock duration from spawn to the command's exit.
    pub duration_s: f64,
    /// How the command ended.
    pub exit: Exit,
    /// The run's peak memory, with the source of each figure.
    pub peak: Peak,
    /// Memory limits in force and the headroom the peak left under the tightest one.
    pub limits: Limits,
    /// The `--budget` verdict and `--hard-limit` enforcement.
    pub budget: Budget,
    /// GPU memory, when NVML could be loaded.
    pub gpu: Gpu,
    /// The monitor's own settings and cost.
    pub monitor: MonitorInfo,
    /// Every process seen in the tree, in order of first sight.
    pub processes: Vec<ProcessReport>,
    /// Tree totals over time; bounded in length (neighbouring samples merged by maximum).
    pub timeline: Vec<TimelinePoint>,
    /// Things the reader should know about this run's figures.
    pub warnings: Vec<String>,
    /// Which Python lines held memory, from `--profile`; `null` without it.
    #[serde(default)]
    pub profile: Option<Profile>,
    /// What to change to need less memory, each with its evidence (most saved first);
    /// empty when the measurement shows nothing to change. Absent in older reports.
    #[serde(default)]
    pub advice: Vec<crate::advice::Advice>,
}

/// The model version and stage a run was recorded under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRun {
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Stage (`train`, `eval`, `inference`, `test`...).
    pub stage: String,
    /// The run's id in the ledger.
    pub run_id: String,
}

/// How allocations were recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileMode {
    /// Byte sampling with geometric intervals (`sample_bytes` on average).
    Sampled,
    /// Every allocation.
    Exact,
}

/// One frame of a stack. `file` and `function` are text in the `memwarden-escape` scheme
/// ([`crate::names`]): a byte that is not UTF-8 is `\xNN`, a backslash `\\`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StackFrame {
    /// Source file (Python), or the executable for memory with no Python frame.
    pub file: String,
    /// Line; 0 when there is none.
    pub line: u32,
    /// Function (qualified name), a thread's name, or a bracketed note such as
    /// `[before Python started]`.
    pub function: String,
    /// Set when the memory was allocated while this line imported a module: the module's
    /// name (`numpy`), or `?` when no frame of it was seen (a compiled extension). The
    /// import machinery's frames are folded into this frame, and so are the module's own
    /// when it is a library (see docs/profiling.md); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imports: Option<String>,
}

impl StackFrame {
    /// A frame of `file`, `line` and `function`, importing nothing.
    pub fn new(file: impl Into<String>, line: u32, function: impl Into<String>) -> StackFrame {
        StackFrame {
            file: file.into(),
            line,
            function: function.into(),
            imports: None,
        }
    }

    /// ` [import numpy]` when the frame imported a module, else nothing: how every renderer
    /// marks an import line.
    pub fn import_note(&self) -> String {
        self.imports
            .as_ref()
            .map(|module| format!(" [import {module}]"))
            .unwrap_or_default()
    }
}

/// Bytes held by one stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackBytes {
    /// Innermost frame first: the line that allocated, then its callers.
    pub stack: Vec<StackFrame>,
    /// Committed bytes (an unbiased estimate in sampled mode): what the stack requested,
    /// less the pages of its large mappings and malloc blocks never touched
    /// (`reserved_bytes`). Lists are ranked by this figure.
    pub bytes: u64,
    /// Bytes requested and live, as tracemalloc and memray count them: `bytes` plus
    /// `reserved_bytes`. Absent where not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_bytes: Option<u64>,
    /// Of `requested_bytes`, bytes in large ranges (anonymous mappings, malloc blocks of
    /// 1 MiB or more) whose pages had not been touched: reserved, not committed. Absent
    /// where not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_bytes: Option<u64>,
}

impl StackBytes {
    /// `bytes` held at `stack`, with no split into requested and reserved bytes.
    pub fn new(stack: Vec<StackFrame>, bytes: u64) -> StackBytes {
        StackBytes {
            stack,
            bytes,
            requested_bytes: None,
            reserved_bytes: None,
        }
    }
}

/// Bytes allocated over the run by one line (churn).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineAllocations {
    /// The allocating line.
    pub frame: StackFrame,
    /// Bytes allocated there over the run, freed or not.
    pub allocated_bytes: u64,
    /// Allocations recorded there (sampled ones in sampled mode).
    pub allocations: u64,
}

/// The allocation profile of the whole tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// How allocations were recorded.
    pub mode: ProfileMode,
    /// Mean sampling interval in bytes (`null` in exact mode).
    pub sample_bytes: Option<u64>,
    /// The tree's heap peak: the highest the profiled processes' heap ever was together,
    /// measured by a counter all of them share (`peak_method: measured`); for captures
    /// without that counter, the sum of each process's own peak (`summed`), an upper bound
    /// when processes peak at different moments.
    pub peak_bytes: u64,
    /// Heap still held when the programs finished (before interpreter teardown), or when
    /// the process died.
    pub leaked_bytes: u64,
    /// The requested heap's peak (bytes asked for and live, as tracemalloc and memray
    /// count them, untouched pages included), which may come at another moment than
    /// `peak_bytes`: measured by the tree's counter as `peak_bytes` is (`summed`: the sum
    /// over processes of each one's own highest).
    #[serde(default)]
    pub requested_peak_bytes: u64,
    /// Bytes requested but never touched at the peak (large mappings and malloc blocks
    /// whose pages were not written: reserved, not committed), left out of `peak_bytes`:
    /// the sum of `reserved_bytes` over the stacks at the peak.
    #[serde(default)]
    pub reserved_bytes: u64,
    /// Bytes allocated over the run.
    pub allocated_bytes: u64,
    /// In sampled mode, a bound on the standard error of `peak_bytes`: sqrt(peak × sample
    /// bytes), reached only when every allocation is much smaller than a sample interval;
    /// buffers larger than the interval are measured almost exactly. 0 in exact mode.
    pub peak_error_bytes: u64,
    /// Stacks holding memory at the peak, largest first.
    pub at_peak: Vec<StackBytes>,
    /// Stacks still holding memory at exit, largest first.
    pub leaked: Vec<StackBytes>,
    /// Lines that allocated the most over the run.
    pub top_lines: Vec<LineAllocations>,
    /// Processes that left a capture.
    pub processes_profiled: u32,
    /// Allocations that could not be tracked because a table was full.
    pub dropped_allocations: u64,
    /// How `peak_bytes` was had.
    #[serde(default)]
    pub peak_method: PeakMethod,
    /// When the tree's heap peaked, seconds after the start (`null` when summed).
    #[serde(default)]
    pub peak_at_s: Option<f64>,
    /// Bytes held by every stack of the view `at_peak` ranks (it lists the largest): when
    /// measured, each process's stacks as read nearest the tree's peak; compare with
    /// `peak_bytes`.
    #[serde(default)]
    pub at_peak_bytes: u64,
    /// How far in time from the tree's peak the furthest process's stacks in `at_peak` were
    /// read, in seconds (0 when each was read at that instant); `null` when summed.
    #[serde(default)]
    pub at_peak_gap_s: Option<f64>,
    /// The tree's heap at each monitor tick and its heaviest stacks (bounded in length as
    /// the run's `timeline` is: neighbouring ticks merged by keeping the heavier).
    #[serde(default)]
    pub timeline: Vec<HeapTimelinePoint>,
    /// The stacks `timeline` refers to, by `stack_id` (an index into this list).
    #[serde(default)]
    pub timeline_stacks: Vec<Vec<StackFrame>>,
    /// Per line (the innermost frame with a line number): bytes at the peak, at exit,
    /// allocated over the run; the lines that matter most, by the largest of those
    /// (bounded, see `docs/report-schema.md`).
    #[serde(default)]
    pub lines: Vec<LineStats>,
    /// Every stack at the peak for flame graphs, frames holding under 0.1% of the peak
    /// merged into an `[other]` frame under their caller.
    #[serde(default)]
    pub flame_at_peak: Vec<StackBytes>,
    /// As `flame_at_peak`, for the memory still held at exit.
    #[serde(default)]
    pub flame_leaked: Vec<StackBytes>,
    /// The text of the lines the report names, read when the run ended, so a report can be
    /// rendered (and advised on) without the program's files.
    #[serde(default)]
    pub source_lines: Vec<SourceLine>,
    /// glibc's malloc at the peak snapshot (`mallinfo2`), summed over the processes that
    /// could read it, each at its own peak; `null` when none could.
    #[serde(default)]
    pub malloc_at_peak: Option<MallocFigures>,
}

impl Profile {
    /// A profile with nothing recorded yet, for builders to fill (`..Profile::empty(mode)`).
    pub fn empty(mode: ProfileMode) -> Profile {
        Profile {
            mode,
            sample_bytes: None,
            peak_bytes: 0,
            leaked_bytes: 0,
            requested_peak_bytes: 0,
            reserved_bytes: 0,
            allocated_bytes: 0,
            peak_error_bytes: 0,
            at_peak: Vec::new(),
            leaked: Vec::new(),
            top_lines: Vec::new(),
            processes_profiled: 0,
            dropped_allocations: 0,
            peak_method: PeakMethod::Summed,
            peak_at_s: None,
            at_peak_bytes: 0,
            at_peak_gap_s: None,
            timeline: Vec::new(),
            timeline_stacks: Vec::new(),
            lines: Vec::new(),
            flame_at_peak: Vec::new(),
            flame_leaked: Vec::new(),
            source_lines: Vec::new(),
            malloc_at_peak: None,
        }
    }
}

/// One line's figures over the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineStats {
    /// The line (its frame, `imports` included).
    pub frame: StackFrame,
    /// Committed bytes held by stacks allocated at this line, at the tree's peak.
    pub peak_bytes: u64,
    /// Of `peak_bytes`, bytes of Python's small-object arenas (objects under 512 bytes).
    pub small_object_bytes: u64,
    /// Bytes held at exit.
    pub leaked_bytes: u64,
    /// Bytes allocated there over the run, freed or not.
    pub allocated_bytes: u64,
    /// Allocations recorded there: every one in exact mode, sampled ones in sampled mode
    /// (a sample count, not an object count).
    pub allocations: u64,
}

/// The text of one source line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceLine {
    /// The file, as frames name it.
    pub file: String,
    /// Line number.
    pub line: u32,
    /// The line's text, without its indentation (cut at 240 characters).
    pub text: String,
}

/// glibc's malloc figures (`mallinfo2`) at a peak snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MallocFigures {
    /// Bytes free inside malloc's arenas: resident, not heap (`fordblks`).
    pub free_bytes: u64,
    /// Bytes of malloc's arenas (`arena`).
    pub arena_bytes: u64,
    /// Bytes in chunks malloc mapped on their own (`hblkhd`).
    pub mmapped_bytes: u64,
}

/// How the tree's heap peak was had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeakMethod {
    /// Each process's own peak, added (captures written without the tree counter).
    #[default]
    Summed,
    /// The high-water mark of the counter every profiled process of the run adds to.
    Measured,
}

/// The tree's heap at one monitor tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeapTimelinePoint {
    /// Seconds after the start.
    pub t_s: f64,
    /// Live bytes of every profiled process running then, together.
    pub heap_bytes: u64,
    /// The stacks holding the most then (at most five), largest first.
    pub top: Vec<TimelineStackBytes>,
}

/// Bytes one stack held at a timeline point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineStackBytes {
    /// Index into the profile's `timeline_stacks`.
    pub stack_id: u32,
    /// Bytes held, over all processes.
    pub bytes: u64,
}

/// One process's allocation profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessProfile {
    /// The interpreter whose frames were read, e.g. `3.11.7`; `null` for a process without
    /// readable Python frames.
    pub python: Option<String>,
    /// Heap at this process's peak: committed bytes (requested, less the pages of large
    /// ranges never touched), at the moment they were highest.
    pub peak_bytes: u64,
    /// When that peak was reached, seconds after the run's start.
    pub peak_at_s: Option<f64>,
    /// The highest its requested heap was (untouched pages included).
    #[serde(default)]
    pub requested_peak_bytes: u64,
    /// Bytes requested but never touched at its peak, left out of `peak_bytes`.
    #[serde(default)]
    pub reserved_bytes: u64,
    /// Heap still held at exit (or death).
    pub leaked_bytes: u64,
    /// Whether the process closed its capture itself (false: killed, or `os._exit`).
    pub exited_cleanly: bool,
    /// Stacks at this process's peak.
    pub at_peak: Vec<StackBytes>,
    /// Stacks still holding memory at exit.
    pub leaked: Vec<StackBytes>,
}

/// How the command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Exit code when the command exited normally.
    pub code: Option<i32>,
    /// Signal number when the command was killed by a signal.
    pub signal: Option<i32>,
    /// Signal name (`SIGKILL`), when killed by a signal.
    pub signal_name: Option<String>,
    /// True when the command was killed for exceeding a memory limit.
    pub oom_killed: bool,
    /// Who killed it: `kernel` (cgroup OOM killer) or `watchdog` (memwarden's own).
    pub oom_killed_by: Option<String>,
    /// Memory charged to the tree when it was killed.
    pub oom_at_bytes: Option<u64>,
    /// The status memwarden itself exits with (see docs/cli.md, "Exit codes"); -1 when
    /// memwarden died before it could exit itself (see `interrupted`).
    pub memwarden_exit_code: i32,
    /// `supervisor_killed` when memwarden died during the run and the run was recorded
    /// from its journal afterwards (by its guardian or a later memwarden); null otherwise.
    /// Absent in reports written before it existed.
    #[serde(default)]
    pub interrupted: Option<String>,
}

/// Where a peak figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeakSource {
    /// The kernel's per-process high-water mark, `VmHWM` in `/proc/PID/status`.
    #[serde(rename = "VmHWM")]
    VmHwm,
    /// `ru_maxrss` of a reaped process: the kernel's high-water mark, read at exit.
    #[serde(rename = "ru_maxrss")]
    RuMaxrss,
    /// The cgroup's own peak counter (`memory.peak` or `memory.max_usage_in_bytes`).
    #[serde(rename = "cgroup")]
    Cgroup,
    /// The largest of memwarden's samples: a lower bound, exact only if the peak was held
    /// for longer than the sampling interval.
    #[serde(rename = "sampled")]
    Sampled,
    /// NVML's per-process GPU memory, sampled.
    #[serde(rename = "nvml")]
    Nvml,
}

/// The run's peak memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// Peak resident set of the tree: the larger of the largest sampled tree total and the
    /// largest per-process kernel high-water mark.
    pub rss_bytes: u64,
    /// Source of `rss_bytes`.
    pub source: PeakSource,
    /// Peak proportional set size of the tree (shared pages split among sharers).
    pub pss_bytes: Option<u64>,
    /// Peak unique set size of the tree (private pages only).
    pub uss_bytes: Option<u64>,
    /// Anonymous, file-backed and shared-memory resident bytes at the sampled RSS peak.
    pub anon_bytes: Option<u64>,
    /// See `anon_bytes`.
    pub file_bytes: Option<u64>,
    /// See `anon_bytes`.
    pub shmem_bytes: Option<u64>,
    /// Peak of the run's own cgroup (includes page cache and kernel memory charged to it).
    pub cgroup_bytes: Option<u64>,
    /// Heap bytes at the peak, from the allocation profiler (`null` without `--profile`).
    pub heap_bytes: Option<u64>,
    /// Peak GPU memory of the tree, when NVML is available.
    pub gpu_bytes: Option<u64>,
    /// Seconds after the start at which the sampled tree RSS was highest.
    pub at_s: f64,
    /// The process with the largest high-water mark.
    pub pid: Option<i32>,
    /// Source of each figure above, by field name.
    pub sources: std::collections::BTreeMap<String, PeakSource>,
}

impl Peak {
    /// A peak of `rss_bytes` from `source`, with no other figure (yet), at the start.
    pub fn new(rss_bytes: u64, source: PeakSource) -> Peak {
        Peak {
            rss_bytes,
            source,
            pss_bytes: None,
            uss_bytes: None,
            anon_bytes: None,
            file_bytes: None,
            shmem_bytes: None,
            cgroup_bytes: None,
            heap_bytes: None,
            gpu_bytes: None,
            at_s: 0.0,
            pid: None,
            sources: Default::default(),
        }
    }
}

/// Memory limits in force and the headroom left.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// cgroup version memwarden found for its own memory cgroup (1 or 2), if any.
    pub cgroup_version: Option<u8>,
    /// Path of that cgroup, relative to the cgroup filesystem.
    pub cgroup_path: Option<String>,
    /// The effective limit of the enclosing cgroups (the smallest along the path).
    pub cgroup_limit_bytes: Option<u64>,
    /// The enclosing cgroup's usage when the run started.
    pub cgroup_usage_at_start_bytes: Option<u64>,
    /// OOM kills recorded by the enclosing cgroup during the run.
    pub cgroup_oom_kills_during_run: Option<u64>,
    /// Physical memory of the machine.
    pub system_total_bytes: u64,
    /// `MemAvailable` when the run started.
    pub system_available_at_start_bytes: u64,
    /// The tightest limit: smallest of the hard limit, the cgroup limit and physical memory.
    pub tightest_limit_bytes: u64,
    /// Which limit is tightest: `hard_limit`, `cgroup` or `system`.
    pub tightest_limit_source: String,
    /// `tightest_limit_bytes - peak.rss_bytes` (negative when over).
    pub headroom_bytes: i64,
}

/// The verdict on `--budget` and how `--hard-limit` was enforced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// `--budget`, when given.
    pub limit_bytes: Option<u64>,
    /// The figure compared with the budget (`peak.rss_bytes`).
    pub metric: String,
    /// `pass`, `fail` or `unset`.
    pub status: BudgetStatus,
    /// `--hard-limit`, when given.
    pub hard_limit_bytes: Option<u64>,
    /// `cgroup`, `watchdog` or `none`.
    pub enforced_by: Enforcement,
    /// Why the hard limit is enforced the way it is (e.g. why the cgroup fell back).
    pub enforcement_note: Option<String>,
}

impl Budget {
    /// No budget and no hard limit.
    pub fn unset() -> Budget {
        Budget {
            limit_bytes: None,
            metric: "peak.rss_bytes".to_owned(),
            status: BudgetStatus::Unset,
            hard_limit_bytes: None,
            enforced_by: Enforcement::None,
            enforcement_note: None,
        }
    }
}

/// Outcome of the budget check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetStatus {
    /// Peak at or under the budget.
    Pass,
    /// Peak over the budget.
    Fail,
    /// No budget given.
    Unset,
}

impl BudgetStatus {
    /// The verdict on `measured` bytes against the budget `limit` (none: unset).
    pub fn of(limit: Option<u64>, measured: u64) -> BudgetStatus {
        match limit {
            None => BudgetStatus::Unset,
            Some(limit) if measured > limit => BudgetStatus::Fail,
            Some(_) => BudgetStatus::Pass,
        }
    }
}

/// How a hard memory limit is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// The command runs in its own memory cgroup with the limit; the kernel enforces it.
    Cgroup,
    /// memwarden kills the tree when its sampled RSS crosses the limit.
    Watchdog,
    /// No hard limit.
    None,
}

/// GPU memory, when NVML is present.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    /// `available` or `unavailable`.
    pub status: String,
    /// Why it is unavailable (no driver, no device...).
    pub reason: Option<String>,
    /// Devices seen.
    pub devices: Vec<GpuDevice>,
}

/// One GPU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuDevice {
    /// NVML index.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// Total memory of the device.
    pub total_bytes: u64,
    /// Peak memory used on this device by processes of the tree.
    pub peak_tree_bytes: u64,
}

/// The monitor's own settings and cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MonitorInfo {
    /// Sampling interval.
    pub interval_ms: u64,
    /// Samples taken.
    pub samples: u64,
    /// CPU time memwarden itself used (user + system), from `getrusage(RUSAGE_SELF)`.
    pub self_cpu_s: f64,
    /// `self_cpu_s / duration_s`: the share of one core the monitor used.
    pub self_cpu_share: f64,
    /// Whether the command ran in a cgroup memwarden created for it.
    pub own_cgroup: bool,
}

/// One process of the tree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessReport {
    /// Process id.
    pub pid: i32,
    /// Parent process id when first seen.
    pub ppid: i32,
    /// Command line (empty when the process vanished before it could be read).
    pub cmdline: Vec<String>,
    /// First seen, seconds after the start.
    pub first_seen_s: f64,
    /// Last seen alive, seconds after the start.
    pub last_seen_s: f64,
    /// Exit code, when memwarden reaped it.
    pub exit_code: Option<i32>,
    /// Killing signal, when memwarden reaped it.
    pub exit_signal: Option<i32>,
    /// Peak resident set; `null` when nothing measured it (see `peak_rss_unmeasured`).
    pub peak_rss_bytes: Option<u64>,
    /// Source of `peak_rss_bytes`.
    pub peak_rss_source: Option<PeakSource>,
    /// Why `peak_rss_bytes` is `null`: the process came and went between two of the
    /// monitor's readings, was not memwarden's child (no `ru_maxrss`), and left no
    /// high-water mark of its own (not profiled, or killed before it could write one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_unmeasured: Option<String>,
    /// Its sampled peaks, as keys of this object (`peak_pss_bytes`...).
    #[serde(flatten)]
    pub peaks: ProcessPeaks,
    /// Its allocation profile, from `--profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProcessProfile>,
}

/// A process's peaks as the monitor sampled them, each `None` until read: kept by the
/// monitor as the process runs, and reported as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPeaks {
    /// Peak proportional set size.
    pub peak_pss_bytes: Option<u64>,
    /// Peak unique set size.
    pub peak_uss_bytes: Option<u64>,
    /// Peak anonymous resident bytes.
    pub peak_anon_bytes: Option<u64>,
    /// Peak file-backed resident bytes.
    pub peak_file_bytes: Option<u64>,
    /// Peak shared-memory resident bytes.
    pub peak_shmem_bytes: Option<u64>,
    /// Peak GPU memory (through NVML).
    pub peak_gpu_bytes: Option<u64>,
}

/// Tree totals at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds after the start.
    pub t_s: f64,
    /// Sum of the processes' resident sets.
    pub rss_bytes: u64,
    /// Sum of the processes' proportional set sizes.
    pub pss_bytes: u64,
    /// Sum of the processes' unique set sizes.
    pub uss_bytes: u64,
    /// Anonymous resident bytes.
    pub anon_bytes: u64,
    /// File-backed resident bytes.
    pub file_bytes: u64,
    /// Shared-memory resident bytes.
    pub shmem_bytes: u64,
    /// Usage of the run's own cgroup, when it has one.
    pub cgroup_bytes: Option<u64>,
    /// GPU memory of the tree, when NVML is available.
    pub gpu_bytes: Option<u64>,
    /// Processes alive.
    pub processes: u32,
}

impl TimelinePoint {
    /// Merges two neighbouring points into one that keeps the larger of each figure, so a
    /// shortened timeline never hides a peak.
    pub fn merge_max(&self, other: &TimelinePoint) -> TimelinePoint {
        let max_opt = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        TimelinePoint {
            t_s: if other.rss_bytes > self.rss_bytes {
                other.t_s
            } else {
                self.t_s
            },
            rss_bytes: self.rss_bytes.max(other.rss_bytes),
            pss_bytes: self.pss_bytes.max(other.pss_bytes),
            uss_bytes: self.uss_bytes.max(other.uss_bytes),
            anon_bytes: self.anon_bytes.max(other.anon_bytes),
            file_bytes: self.file_bytes.max(other.file_bytes),
            shmem_bytes: self.shmem_bytes.max(other.shmem_bytes),
            cgroup_bytes: max_opt(self.cgroup_bytes, other.cgroup_bytes),
            gpu_bytes: max_opt(self.gpu_bytes, other.gpu_bytes),
            processes: self.processes.max(other.processes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_sources_serialize_as_documented() {
        let names: Vec<String> = [
            PeakSource::VmHwm,
            PeakSource::RuMaxrss,
            PeakSource::Cgroup,
            PeakSource::Sampled,
            PeakSource::Nvml,
        ]
        .iter()
        .map(|s| serde_json::to_string(s).expect("serializes"))
        .collect();
        assert_eq!(
            names,
            [
                "\"VmHWM\"",
                "\"ru_maxrss\"",
                "\"cgroup\"",
                "\"sampled\"",
                "\"nvml\""
            ]
        );
        assert_eq!(
            serde_json::to_string(&BudgetStatus::Fail).expect("ok"),
            "\"fail\""
        );
        assert_eq!(
            serde_json::to_string(&Enforcement::Watchdog).expect("ok"),
            "\"watchdog\""
        );
    }

    /// The process entries of a report keep their JSON: keys, order and `null`s.
    #[test]
    fn a_process_serializes_as_documented_and_reads_back() {
        let process = ProcessReport {
            pid: 7,
            ppid: 1,
            cmdline: vec!["python".to_owned()],
            first_seen_s: 0.5,
            last_seen_s: 2.0,
            exit_code: Some(0),
            exit_signal: None,
            peak_rss_bytes: None,
            peak_rss_source: None,
            peak_rss_unmeasured: Some("gone".to_owned()),
            peaks: ProcessPeaks {
                peak_pss_bytes: Some(1),
                peak_uss_bytes: Some(2),
                peak_anon_bytes: Some(3),
                peak_file_bytes: Some(4),
                peak_shmem_bytes: Some(5),
                peak_gpu_bytes: None,
            },
            profile: None,
        };
        let json = serde_json::to_string(&process).expect("serializes");
        assert_eq!(
            json,
            concat!(
                r#"{"pid":7,"ppid":1,"cmdline":["python"],"first_seen_s":0.5,"last_seen_s":2.0,"#,
                r#""exit_code":0,"exit_signal":null,"peak_rss_bytes":null,"peak_rss_source":null,"#,
                r#""peak_rss_unmeasured":"gone","peak_pss_bytes":1,"peak_uss_bytes":2,"#,
                r#""peak_anon_bytes":3,"peak_file_bytes":4,"peak_shmem_bytes":5,"peak_gpu_bytes":null}"#
            )
        );
        let read: ProcessReport = serde_json::from_str(&json).expect("reads back");
        assert_eq!(read, process);
        let without_peaks: ProcessReport = serde_json::from_str(
            r#"{"pid":7,"ppid":1,"cmdline":[],"first_seen_s":0,"last_seen_s":1,"exit_code":null,"exit_signal":null,"peak_rss_bytes":9,"peak_rss_source":"VmHWM"}"#,
        )
        .expect("a process without sampled peaks reads");
        assert_eq!(without_peaks.peaks, ProcessPeaks::default());
        assert_eq!(without_peaks.last_seen_s, 1.0);
    }

    #[test]
    fn merged_points_keep_every_maximum() {
        let a = TimelinePoint {
            t_s: 1.0,
            rss_bytes: 10,
            pss_bytes: 9,
            gpu_bytes: None,
            processes: 3,
            ..Default::default()
        };
        let b = TimelinePoint {
            t_s: 2.0,
            rss_bytes: 20,
            pss_bytes: 5,
            gpu_bytes: Some(4),
            processes: 1,
            ..Default::default()
        };
        let m = a.merge_max(&b);
        assert_eq!(
            (m.t_s, m.rss_bytes, m.pss_bytes, m.gpu_bytes, m.processes),
            (2.0, 20, 9, Some(4), 3)
        );
    }
}
