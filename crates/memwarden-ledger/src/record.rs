//! The run record.

use std::collections::BTreeMap;

use memwarden_format::report::StackBytes;
use serde::{Deserialize, Serialize};

/// One run of a model version, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Unique id of the run (time-ordered).
    pub run_id: String,
    /// Model name.
    pub model: String,
    /// Model version, as the user names it (`3`, `2024-06-01`, `v1.2.0`).
    pub version: String,
    /// `train`, `eval`, `inference` or `test`.
    pub stage: String,
    /// Free-form `key=value` tags.
    pub tags: BTreeMap<String, String>,
    /// The command, program first.
    pub command: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// Exit code, when the command exited.
    pub exit_code: Option<i32>,
    /// Killing signal, when a signal ended it.
    pub exit_signal: Option<i32>,
    /// Killed for exceeding a memory limit.
    pub oom_killed: bool,
    /// Start, seconds since the Unix epoch.
    pub started_at_unix_s: f64,
    /// End, seconds since the Unix epoch.
    pub ended_at_unix_s: f64,
    /// The machine.
    pub host: Host,
    /// The container's memory limit (the cgroup's), when there is one.
    pub container_limit_bytes: Option<u64>,
    /// The Python environment, when the command runs Python.
    pub python: Option<PythonEnv>,
    /// Git state of the working directory, when it is in a repository.
    pub git: Option<GitState>,
    /// BLAKE3 hashes of the `--input` files.
    pub inputs: Vec<InputHash>,
    /// Every peak figure, with its source.
    pub peaks: Peaks,
    /// Budget verdict of the run itself (`pass`, `fail`, `unset`).
    pub budget_status: String,
    /// `--budget`, when given.
    pub budget_bytes: Option<u64>,
    /// `--hard-limit`, when given.
    pub hard_limit_bytes: Option<u64>,
    /// What enforced the hard limit.
    pub enforced_by: String,
    /// The profile's top stacks at the peak (empty when the run was not profiled), as the
    /// report writes them.
    pub top_stacks_at_peak: Vec<StackBytes>,
    /// Where the full report was written.
    pub report_path: Option<String>,
    /// memwarden version that made the record.
    pub memwarden_version: String,
    /// `supervisor_killed` when memwarden died during the run and the record was made
    /// from the run's journal afterwards (the figures are those up to its death). Absent
    /// (not null) otherwise, so records without it hash as they always did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
    /// The report's advice (what to change to need less memory, with its evidence). Absent
    /// (not empty) when there is none, so records without it hash as they always did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advice: Vec<memwarden_format::advice::Advice>,
}

/// The machine a run ran on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// Host name.
    pub hostname: String,
    /// Kernel release.
    pub kernel: String,
    /// CPU model name.
    pub cpu_model: String,
    /// CPUs this process may use.
    pub cpus: u32,
    /// Physical memory.
    pub memory_total_bytes: u64,
}

/// The Python environment of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PythonEnv {
    /// The interpreter.
    pub executable: String,
    /// `sys.version`, first word.
    pub version: String,
    /// BLAKE3 of the sorted `name==version` lines of every installed distribution.
    pub packages_blake3: String,
    /// How many distributions are installed.
    pub packages: u32,
}

/// Git state of the working directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitState {
    /// `HEAD` commit.
    pub commit: String,
    /// Uncommitted changes to tracked files, or untracked files.
    pub dirty: bool,
}

/// One input file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputHash {
    /// Path as given.
    pub path: String,
    /// BLAKE3 of the content (of a directory: of its files' relative paths and hashes).
    pub blake3: String,
    /// Size in bytes (of a directory: of all its files).
    pub bytes: u64,
}

/// Peak figures of a run and their sources (as in the report).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Peaks {
    /// Peak RSS of the tree.
    pub rss_bytes: u64,
    /// Source of `rss_bytes`.
    pub rss_source: String,
    /// Peak PSS of the tree.
    pub pss_bytes: Option<u64>,
    /// Peak USS of the tree.
    pub uss_bytes: Option<u64>,
    /// Peak of the run's own cgroup.
    pub cgroup_bytes: Option<u64>,
    /// Peak GPU memory.
    pub gpu_bytes: Option<u64>,
    /// Heap at the peak (profiler).
    pub heap_bytes: Option<u64>,
    /// Bytes still allocated at exit (profiler).
    pub leaked_bytes: Option<u64>,
    /// Wall-clock duration.
    pub duration_s: f64,
    /// The version of the method behind each figure that has changed since the first
    /// (`heap`, `leaked`: 2 for the committed heap and the measured tree peak); a figure
    /// absent here was made by method 1. Gates compare a figure only with figures made
    /// the same way. Absent in records written before it existed.
    #[serde(default)]
    pub methods: BTreeMap<String, u32>,
}

impl Peaks {
    /// The methods this memwarden measures with (see [`Peaks::methods`]).
    pub fn current_methods() -> BTreeMap<String, u32> {
        [("heap", 2), ("leaked", 2)]
            .into_iter()
            .map(|(figure, method)| (figure.to_owned(), method))
            .collect()
    }
}

/// How a figure was measured, which says how much two runs' figures may differ by chance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// A high-water mark the kernel keeps (`VmHWM`, `ru_maxrss`, the cgroup's peak): it
    /// misses nothing, and repeated runs differ only as the program's own memory does.
    KernelMark,
    /// The profiler's count of the heap (every allocation, or an unbiased sample).
    Profiler,
    /// The largest of readings taken at ticks (PSS, GPU, RSS without a kernel mark): a
    /// short peak between two ticks is missed, so runs differ by as much as the peak's
    /// shape against the tick.
    Sampled,
}

/// The metrics a policy can budget and a gate can compare, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// `peak_rss`.
    PeakRss,
    /// `peak_pss`.
    PeakPss,
    /// `peak_gpu`.
    PeakGpu,
    /// `leaked`.
    Leaked,
    /// `peak_heap`.
    PeakHeap,
}

impl Metric {
    /// All metrics, in display order.
    pub const ALL: [Metric; 5] = [
        Metric::PeakRss,
        Metric::PeakPss,
        Metric::PeakGpu,
        Metric::PeakHeap,
        Metric::Leaked,
    ];

    /// The name used in `memwarden.toml` and in output.
    pub fn name(self) -> &'static str {
        match self {
            Metric::PeakRss => "peak_rss",
            Metric::PeakPss => "peak_pss",
            Metric::PeakGpu => "peak_gpu",
            Metric::Leaked => "leaked",
            Metric::PeakHeap => "peak_heap",
        }
    }

    /// Parses a metric name.
    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// How the metric was measured in `record`.
    pub fn measure(self, record: &RunRecord) -> Measure {
        match self {
            Metric::PeakRss => match record.peaks.rss_source.as_str() {
                "VmHWM" | "ru_maxrss" | "cgroup" => Measure::KernelMark,
                _ => Measure::Sampled,
            },
            Metric::PeakPss | Metric::PeakGpu => Measure::Sampled,
            Metric::PeakHeap | Metric::Leaked => Measure::Profiler,
        }
    }

    /// The version of the method that made the metric's figure in `record`.
    pub fn method(self, record: &RunRecord) -> u32 {
        let figure = match self {
            Metric::PeakHeap => "heap",
            Metric::Leaked => "leaked",
            _ => self.name(),
        };
        record.peaks.methods.get(figure).copied().unwrap_or(1)
    }

    /// The metric's value in a record, when it was measured.
    pub fn of(self, record: &RunRecord) -> Option<u64> {
        match self {
            Metric::PeakRss => Some(record.peaks.rss_bytes),
            Metric::PeakPss => record.peaks.pss_bytes,
            Metric::PeakGpu => record.peaks.gpu_bytes,
            Metric::Leaked => record.peaks.leaked_bytes,
            Metric::PeakHeap => record.peaks.heap_bytes,
        }
    }
}

/// Records for tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A record of `model@version` (stage `inference`) peaking at `rss_bytes`.
    pub fn record(run_id: &str, model: &str, version: &str, rss_bytes: u64) -> RunRecord {
        RunRecord {
            run_id: run_id.to_owned(),
            model: model.to_owned(),
            version: version.to_owned(),
            stage: "inference".to_owned(),
            tags: BTreeMap::new(),
            command: vec!["python".to_owned(), "serve.py".to_owned()],
            cwd: "/work".to_owned(),
            exit_code: Some(0),
            exit_signal: None,
            oom_killed: false,
            started_at_unix_s: 1.0,
            ended_at_unix_s: 2.0,
            host: Host::default(),
            container_limit_bytes: None,
            python: None,
            git: None,
            inputs: Vec::new(),
            peaks: Peaks {
                rss_bytes,
                rss_source: "VmHWM".to_owned(),
                pss_bytes: Some(rss_bytes),
                ..Peaks::default()
            },
            budget_status: "unset".to_owned(),
            budget_bytes: None,
            hard_limit_bytes: None,
            enforced_by: "none".to_owned(),
            top_stacks_at_peak: Vec::new(),
            report_path: None,
            memwarden_version: "0.1.0".to_owned(),
            interrupted: None,
            advice: Vec::new(),
        }
    }
}
