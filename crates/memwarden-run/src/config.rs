//! A run's options, validated before anything starts.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use memwarden_format::units::parse_size;
use memwarden_ledger::LedgerLocation;

use memwarden_format::report::ProfileMode;

use super::profiling::Profiling;
use crate::{Protection, RunError};

/// How the command gets a cgroup of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Use a cgroup of its own when the kernel allows it, else go on without (a hard limit
    /// then falls back to the watchdog).
    Auto,
    /// Fail if the command cannot get a cgroup of its own.
    Require,
    /// Never create a cgroup (a hard limit is enforced by the watchdog).
    Off,
}

/// The options of a run as a user gives them (`memwarden run`'s arguments): plain text
/// and paths, validated by [`RunConfig::new`]. The defaults are `memwarden run`'s.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The command, program first (any bytes: it is passed on as given).
    pub command: Vec<OsString>,
    /// Sampling interval, e.g. `50ms`, `0.2s` (see [`parse_interval`]).
    pub interval: String,
    /// Memory budget, a size such as `2GiB`.
    pub budget: Option<String>,
    /// Hard memory limit, a size.
    pub hard_limit: Option<String>,
    /// Whether the command runs in a memory cgroup of its own.
    pub cgroup: CgroupMode,
    /// Where to write the report as JSON.
    pub json: Option<PathBuf>,
    /// Where to write the report as one HTML page (default, with `profile`:
    /// `memwarden-report/RUN-ID.html`).
    pub html: Option<PathBuf>,
    /// No status line while the command runs.
    pub quiet: bool,
    /// Record the run in the ledger under this model (with `model_version`).
    pub model: Option<String>,
    /// The model's version, for the ledger (with `model`).
    pub model_version: Option<String>,
    /// The stage's name in the ledger (`train`, `eval`, `inference`, `test`).
    pub stage: String,
    /// Tags for the ledger record, `KEY=VALUE`.
    pub tags: Vec<String>,
    /// Input files or directories whose hashes go into the record.
    pub inputs: Vec<PathBuf>,
    /// Profile allocations, in this mode.
    pub profile: Option<ProfileMode>,
    /// Mean bytes between samples in sampled mode, a size (default 512KiB).
    pub sample_bytes: Option<String>,
    /// Where to write the stacks at the peak as folded stacks.
    pub folded: Option<PathBuf>,
    /// Keep the per-process capture files in this directory.
    pub capture_dir: Option<PathBuf>,
    /// Show every frame as recorded, import machinery included.
    pub raw_frames: bool,
    /// Leave the command running should memwarden itself die.
    pub survive_memwarden: bool,
}

/// Where and under which key a run is recorded (`--model`, `--version`...).
#[derive(Debug)]
pub struct Governance {
    /// The ledger.
    pub ledger: LedgerLocation,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Stage name.
    pub stage: String,
    /// `--tag`s.
    pub tags: BTreeMap<String, String>,
    /// `--input`s, checked to exist.
    pub inputs: Vec<PathBuf>,
}

impl Governance {
    /// The report's name for a run of this model, version and stage, with id `run_id`.
    pub fn model_run(&self, run_id: &str) -> memwarden_format::report::ModelRun {
        memwarden_format::report::ModelRun {
            name: self.model.clone(),
            version: self.version.clone(),
            stage: self.stage.clone(),
            run_id: run_id.to_owned(),
        }
    }
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            command: Vec::new(),
            interval: "50ms".into(),
            budget: None,
            hard_limit: None,
            cgroup: CgroupMode::Auto,
            json: None,
            html: None,
            quiet: false,
            model: None,
            model_version: None,
            stage: "train".into(),
            tags: Vec::new(),
            inputs: Vec::new(),
            profile: None,
            sample_bytes: None,
            folded: None,
            capture_dir: None,
            raw_frames: false,
            survive_memwarden: false,
        }
    }
}

/// Where the HTML report of a run goes.
#[derive(Debug)]
pub enum HtmlOutput {
    /// None (a run without `--profile` or `--html`).
    None,
    /// `memwarden-report/RUN-ID.html` in the working directory, for a profiled run; a
    /// failure to write it is a warning.
    Default,
    /// `--html PATH`, with a temporary file beside it made when the arguments were checked
    /// (so a bad path fails before the command starts).
    At(PathBuf, tempfile::NamedTempFile),
}

/// Folder, under the working directory, of the HTML reports written by default.
pub const HTML_DIR: &str = "memwarden-report";
/// Environment variable naming another folder for them (a CI job's artifacts).
pub const HTML_DIR_VAR: &str = "MEMWARDEN_REPORT_DIR";

/// A validated run.
#[derive(Debug)]
pub struct RunConfig {
    /// The command, program first, as given (any bytes): what is executed.
    pub argv: Vec<OsString>,
    /// The same as text ([`memwarden_format::names`]), for messages and reports.
    pub command: Vec<String>,
    /// Sampling interval.
    pub interval: Duration,
    /// `--budget`.
    pub budget_bytes: Option<u64>,
    /// `--hard-limit`.
    pub hard_limit_bytes: Option<u64>,
    /// `--cgroup`.
    pub cgroup: CgroupMode,
    /// `--json`, with a temporary file beside it, created so that a bad path fails before
    /// the command runs; the report is written there and renamed over the path, so the path
    /// never holds a partial or empty report.
    pub json: Option<(PathBuf, tempfile::NamedTempFile)>,
    /// Where the HTML report goes.
    pub html: HtmlOutput,
    /// `--quiet`.
    pub quiet: bool,
    /// Recording in the ledger, when `--model` is given.
    pub governance: Option<Governance>,
    /// `--profile` and its options.
    pub profiling: Option<Profiling>,
    /// What the guardian needs should memwarden die.
    pub protection: Protection,
    /// The `--ledger` given (a path or URL), passed on to the guardian.
    pub ledger: Option<String>,
}

impl RunConfig {
    /// Validates `options`; `ledger`: the `--ledger` given, else the environment's or the
    /// default ledger is used. The error is a [`crate::RunErrorKind::Usage`] sentence.
    pub fn new(options: RunOptions, ledger: Option<&str>) -> Result<RunConfig, RunError> {
        RunConfig::from_options(options, ledger).map_err(RunError::usage)
    }

    fn from_options(args: RunOptions, ledger: Option<&str>) -> Result<RunConfig, String> {
        let protection = Protection {
            survive_memwarden: args.survive_memwarden,
            kept_captures: args.capture_dir.is_some(),
            raw_frames: args.raw_frames,
        };
        let interval = parse_interval(&args.interval)?;
        let budget_bytes = args
            .budget
            .as_deref()
            .map(|s| parse_size(s).map_err(|e| format!("--budget: {e}")))
            .transpose()?;
        let hard_limit_bytes = args
            .hard_limit
            .as_deref()
            .map(|s| parse_size(s).map_err(|e| format!("--hard-limit: {e}")))
            .transpose()?;
        if hard_limit_bytes.is_some_and(|b| b < (1 << 20)) {
            return Err("--hard-limit: a limit under 1 MiB would kill any process at start; give a larger size".into());
        }
        if args
            .command
            .first()
            .is_none_or(|program| program.is_empty())
        {
            return Err(
                "no command given: write it after `--`, e.g. memwarden run -- python train.py"
                    .into(),
            );
        }
        let governance = match (args.model, args.model_version) {
            (Some(model), Some(version)) => Some(governance(
                model,
                version,
                &args.stage,
                args.tags,
                args.inputs,
                ledger,
            )?),
            _ => None,
        };
        let profiling = args
            .profile
            .map(|mode| {
                Profiling::from_args(
                    mode,
                    args.sample_bytes.as_deref(),
                    args.capture_dir,
                    args.folded,
                    args.raw_frames,
                )
            })
            .transpose()?;
        let json = args
            .json
            .map(|path| open_output("--json", &path).map(|file| (path, file)))
            .transpose()?;
        let html = match args.html {
            Some(path) => HtmlOutput::At(path.clone(), open_output("--html", &path)?),
            None if profiling.is_some() => HtmlOutput::Default,
            None => HtmlOutput::None,
        };
        let command = args
            .command
            .iter()
            .map(|arg| memwarden_format::names::escape_os(arg).into_owned())
            .collect();
        Ok(RunConfig {
            argv: args.command,
            command,
            interval,
            budget_bytes,
            hard_limit_bytes,
            cgroup: args.cgroup,
            json,
            html,
            quiet: args.quiet,
            governance,
            profiling,
            protection,
            ledger: ledger.map(str::to_owned),
        })
    }
}

pub(crate) fn governance(
    model: String,
    version: String,
    stage: &str,
    tags: Vec<String>,
    inputs: Vec<PathBuf>,
    ledger: Option<&str>,
) -> Result<Governance, String> {
    if model.trim().is_empty() || version.trim().is_empty() || model.contains('@') {
        return Err(
            "--model and --version must be non-empty, and a model name cannot contain '@'".into(),
        );
    }
    let ledger = LedgerLocation::resolve(ledger).map_err(|e| format!("--ledger: {e}"))?;
    let mut parsed = BTreeMap::new();
    for tag in tags {
        match tag.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                parsed.insert(key.trim().to_owned(), value.to_owned());
            }
            _ => {
                return Err(format!(
                    "--tag '{tag}': write KEY=VALUE, e.g. --tag dataset=2024-06"
                ))
            }
        }
    }
    if let Some(missing) = inputs.iter().find(|p| !p.exists()) {
        return Err(format!(
            "--input {}: no such file or directory",
            missing.display()
        ));
    }
    Ok(Governance {
        ledger,
        model,
        version,
        stage: stage.to_owned(),
        tags: parsed,
        inputs,
    })
}

/// Parses `50ms`, `0.2s`, `1s` or a plain number of milliseconds.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("--interval: invalid duration '{text}': write e.g. 50ms or 0.5s"))?;
    let ms = value * scale_ms;
    if !(1.0..=60_000.0).contains(&ms) {
        return Err(format!(
            "--interval: '{text}' is out of range: choose between 1ms and 60s"
        ));
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

fn open_output(flag: &str, path: &Path) -> Result<tempfile::NamedTempFile, String> {
    if path.is_dir() {
        return Err(format!(
            "{flag} {}: is a directory; give a file path such as {}/{}",
            path.display(),
            path.display(),
            if flag == "--html" {
                "report.html"
            } else {
                "report.json"
            }
        ));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| {
            format!(
                "{flag} {}: cannot create directory {}: {e}",
                path.display(),
                parent.display()
            )
        })?;
    }
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => parent.to_owned(),
        None => PathBuf::from("."),
    };
    let name = path.file_name().map_or_else(
        || "report".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    let cannot = |e: std::io::Error| {
        format!(
            "{flag} {}: cannot write: {e}; choose a writable path",
            path.display()
        )
    };
    let temporary = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(cannot)?;
    Ok(temporary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_interval("0.2s"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_interval("10"), Ok(Duration::from_millis(10)));
        assert!(parse_interval("0ms").is_err());
        assert!(parse_interval("fast").unwrap_err().contains("50ms"));
        assert!(parse_interval("2h").is_err());
    }

    #[test]
    fn output_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            open_output("--json", &dir.path().join("a/b/report.json")).is_ok(),
            "parents are created"
        );
        let err = open_output("--html", dir.path()).unwrap_err();
        assert!(
            err.contains("is a directory") && err.contains("--html"),
            "{err}"
        );
        assert!(err.ends_with("/report.html"), "{err}");
        let file = dir.path().join("plain");
        fs::write(&file, "x").expect("write");
        let err = open_output("--json", &file.join("report.json")).unwrap_err();
        assert!(err.contains("cannot"), "{err}");
    }
}
