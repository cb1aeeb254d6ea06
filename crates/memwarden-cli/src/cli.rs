//! Command-line arguments (clap derive). Raw arguments only: `memwarden_run::RunConfig` validates them.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exit::Failure;

/// Memory governance for Python machine-learning workloads.
#[derive(Debug, Parser)]
#[command(name = "memwarden", version, about, long_about = None, after_help = PYTHON_COMMANDS)]
pub struct Cli {
    /// The ledger: a file path or sqlite:///path (default: ledger.sqlite in memwarden's data
    /// directory, see docs/ledger.md), or postgres://user@host/db for a shared one.
    #[arg(long, global = true, env = "MEMWARDEN_LEDGER", value_name = "URL")]
    pub ledger: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command and measure the memory of its whole process tree.
    #[command(after_long_help = RUN_EXAMPLES, after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Analyse capture files kept by `memwarden run --profile --capture-dir DIR` (also those
    /// of killed processes): the stacks at the peak and at exit. Exit 6 when a capture
    /// cannot be read.
    #[command(
        after_help = "Example:\n  memwarden run --profile --capture-dir caps -- python train.py\n  memwarden analyze caps --folded peak.folded"
    )]
    Analyze {
        /// Capture files (*.mwcap) or directories holding them.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Write the profile as JSON to PATH (`-` for stdout, instead of the text).
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
        /// Write the stacks at the peak as folded stacks.
        #[arg(long, value_name = "PATH")]
        folded: Option<PathBuf>,
        /// Show every frame as recorded, import machinery included (by default memory
        /// allocated by an import is charged to the line that imported, `[import NAME]`).
        #[arg(long)]
        raw_frames: bool,
    },
    /// Render a run's report again, from its JSON (`memwarden run --json`): as one HTML page,
    /// speedscope's format, folded stacks, the timeline as CSV, or the summary with the top
    /// lines. With --capture-dir the profile is analysed again from the kept captures.
    /// Exit 6 when the report or a capture cannot be read, 2 when an output cannot be
    /// written.
    #[command(after_help = REPORT_EXAMPLES)]
    Report(ReportArgs),
    /// Show a model's versions over time, per stage.
    History {
        /// The model.
        model: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Compare two versions of a model side by side.
    #[command(after_help = "Example:\n  memwarden diff fraud-detector@2 fraud-detector@3")]
    Diff {
        /// The first version, MODEL@VERSION.
        a: String,
        /// The second version, MODEL@VERSION (or just VERSION, for the same model).
        b: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Gate a version: its latest runs against the policy's budgets and its previous
    /// version. Exit 0 on pass, 3 on fail.
    #[command(after_help = "Example:\n  memwarden check fraud-detector@3 --policy memwarden.toml")]
    Check {
        /// MODEL@VERSION.
        spec: String,
        /// The policy file (default: ./memwarden.toml when present, else built-in defaults).
        #[arg(long, value_name = "PATH")]
        policy: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Inspect model files without loading them: inventory, predicted load peak, and
    /// whether loading would run code. Files are read the way their loaders read them, by
    /// content; a file that cannot be verified is unsafe. Exit 0 when all are safe and within
    /// policy, 3 when any is flagged or cannot be verified, 6 when a file is no model any
    /// loader could read.
    #[command(after_help = INSPECT_EXAMPLES)]
    Inspect {
        /// Files or directories (walked following links; every file is classified by its
        /// content, not its name).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Write the findings as JSON to PATH (`-` for stdout, instead of the text).
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
        /// The policy file (default: ./memwarden.toml when present): its [inspect] table sets
        /// the least safe verdict accepted, the largest predicted load peak, and a team's
        /// own exact names a pickle may call (`allow = ["module:Class"]`).
        #[arg(long, value_name = "PATH")]
        policy: Option<PathBuf>,
        /// Load the model (only when judged safe, or with --trust) in child Python processes,
        /// re-save it in every format that fits, and measure each format's file size, save
        /// time, load time and load peak; recommend the leanest.
        #[arg(long)]
        measure: bool,
        /// With --measure: load the file even when it is not judged safe.
        #[arg(long, requires = "measure")]
        trust: bool,
        /// With --measure: the Python interpreter to load with (default: python3, or
        /// MEMWARDEN_PYTHON).
        #[arg(
            long,
            value_name = "PATH",
            env = "MEMWARDEN_PYTHON",
            default_value = "python3"
        )]
        python: PathBuf,
        /// With --measure: record each format's load in the ledger under this model (with
        /// --version), stage inference, tagged serialization=FORMAT.
        #[arg(long, value_name = "NAME", requires_all = ["measure", "model_version"])]
        model: Option<String>,
        /// With --measure --model: the model's version.
        #[arg(long = "version", value_name = "VERSION", requires = "model")]
        model_version: Option<String>,
    },
    /// memwarden's guardian of one run (started by `memwarden run`, never by hand).
    #[command(name = "__guardian", hide = true)]
    Guardian {
        /// The run's journal lock file.
        lock: PathBuf,
    },
    /// Ledger maintenance.
    Ledger {
        /// What to do with the ledger.
        #[command(subcommand)]
        command: LedgerCommand,
    },
}

const INSPECT_EXAMPLES: &str = "\
Examples:
  memwarden inspect model.joblib
  memwarden inspect model.pt --json out.json
  memwarden inspect models/ --policy memwarden.toml     # CI gate over a folder of artifacts
  memwarden inspect model.joblib --measure   # loads it (only if judged safe, or with --trust)
                                             # and measures every format for this very model

Formats: pickle (protocols 0-5), joblib (plain or compressed: zlib, gzip, bz2, xz, lzma,
lz4), PyTorch zip (.pt/.pth) and legacy,
safetensors, .npy/.npz, ONNX; HDF5 by signature. Nothing in the files is executed.";

const REPORT_EXAMPLES: &str = "\
Examples:
  memwarden report out/report.json                       # the summary and the top lines
  memwarden report out/report.json --html out/run.html
  memwarden report out/report.json --top 20
  memwarden report out/report.json --speedscope out/speedscope.json --folded out/peak.folded
  memwarden report out/report.json --csv out/timeline.csv
  memwarden report out/report.json --capture-dir caps --raw-frames --html out/raw.html";

/// Arguments of `memwarden report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run's JSON report (default with --capture-dir: DIR/report.json).
    #[arg(value_name = "REPORT", required_unless_present = "capture_dir")]
    pub report: Option<PathBuf>,
    /// Analyse the profile again from the captures kept with `memwarden run --profile
    /// --capture-dir DIR`.
    #[arg(long, value_name = "DIR")]
    pub capture_dir: Option<PathBuf>,
    /// With --capture-dir: show every frame as recorded, import machinery included.
    #[arg(long, requires = "capture_dir")]
    pub raw_frames: bool,
    /// Write the report as one self-contained HTML page.
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
    /// Write the memory at the peak and at exit in speedscope's file format
    /// (https://www.speedscope.app).
    #[arg(long, value_name = "PATH")]
    pub speedscope: Option<PathBuf>,
    /// Write the stacks at the peak as folded stacks (flamegraph.pl, inferno).
    #[arg(long, value_name = "PATH")]
    pub folded: Option<PathBuf>,
    /// Write the timeline (tree memory and heap over time) as CSV.
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,
    /// Write the report (with fresh advice, and the profile analysed again with
    /// --capture-dir) as JSON (`-` for stdout).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Lines to list in the summary, heaviest at the peak first.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
}

/// `memwarden ledger ...`.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Check the ledger: the hash chain, the heads anchored by earlier runs (truncation,
    /// recomputed chains), and the append-only guards; with --public-key, that every anchored
    /// head was signed by a team key for this ledger. Exit 0 when all hold, 4 naming what
    /// was edited, deleted, reordered, truncated, rewritten, disarmed or not signed, 7 when
    /// --expect-head does not hold.
    #[command(after_help = VERIFY_EXAMPLES)]
    Verify {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Record SEQ must have HASH (the full hash, as `memwarden run` prints it: `ledger
        /// head SEQ:HASH`). Later records by other writers are fine. With :SIGNATURE (as a
        /// signing run prints it), the head must also be signed by a --public-key.
        /// Repeatable.
        #[arg(long, value_name = "SEQ:HASH[:SIGNATURE]")]
        expect_head: Vec<String>,
        /// A team's public key (from `memwarden ledger keygen`): every line of the anchor
        /// file must be a head signed by one of the given keys for this ledger, else exit 4
        /// naming the line. Repeatable, for a team rotating its key.
        #[arg(long, value_name = "FILE")]
        public_key: Vec<PathBuf>,
    },
    /// Write the records spooled while the ledger was unreachable, and record the runs
    /// whose memwarden died (killing what is left of them, removing their cgroups and
    /// captures), unless another process is finishing them.
    Sync,
    /// Make an ed25519 key pair for signing ledger heads. Runs that have
    /// MEMWARDEN_LEDGER_KEY=<secret key file> sign every head they anchor; `ledger verify
    /// --public-key <public key file>` checks them. Existing files are never overwritten
    /// (exit 2).
    #[command(after_help = KEYGEN_EXAMPLES)]
    Keygen {
        /// Write memwarden-ledger.key (secret, mode 0600) and memwarden-ledger.pub (public)
        /// in DIR, created when missing.
        #[arg(
            long,
            value_name = "DIR",
            required_unless_present = "secret",
            conflicts_with_all = ["secret", "public"]
        )]
        out: Option<PathBuf>,
        /// Write the secret key to FILE (mode 0600); needs --public.
        #[arg(long, value_name = "FILE", requires = "public")]
        secret: Option<PathBuf>,
        /// Write the public key to FILE; needs --secret.
        #[arg(long, value_name = "FILE", requires = "secret")]
        public: Option<PathBuf>,
    },
}

const VERIFY_EXAMPLES: &str = "\
Examples:
  memwarden ledger verify
  memwarden ledger verify --public-key ci/memwarden-ledger.pub    # heads signed by the team key
  memwarden --ledger postgres://ci@db/ledger ledger verify --expect-head 42:<64 hex digits>
  memwarden --ledger postgres://ci@db/ledger ledger verify \\
            --expect-head 42:<hash>:<signature> --public-key ci/memwarden-ledger.pub";

const KEYGEN_EXAMPLES: &str = "\
Examples:
  memwarden ledger keygen --out keys/
  memwarden ledger keygen --secret ~/.secrets/ledger.key --public ci/memwarden-ledger.pub

Keep the secret key where only recording runs can read it (a CI secret) and set
MEMWARDEN_LEDGER_KEY to its path there; commit the public key. See docs/ledger.md.";

/// `--profile` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileArg {
    /// Byte sampling (every 512 KiB on average, unbiased; large buffers always caught).
    Sampled,
    /// Every allocation.
    Exact,
}

/// The stage of a model's life a run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StageArg {
    /// Training.
    Train,
    /// Evaluation.
    Eval,
    /// Inference or serving.
    Inference,
    /// Tests.
    Test,
}

impl StageArg {
    /// The stage's name in the ledger.
    pub fn name(self) -> &'static str {
        match self {
            StageArg::Train => "train",
            StageArg::Eval => "eval",
            StageArg::Inference => "inference",
            StageArg::Test => "test",
        }
    }
}

/// The commands the Python package's `memwarden` (installed with pip) adds before handing
/// the rest to this one (`python/memwarden/__main__.py`).
const PYTHON_COMMANDS: &str = "Installed with pip, `memwarden` also has:
  kernel install [--sys-prefix]  a Jupyter kernel that runs under the profiler (for %%memwarden)
  pytest [ARGS...]               pytest under the profiler from its first line: the plugin's
                                 limit_memory/limit_leaks markers need no restart (docs/python.md)";

const RUN_EXAMPLES: &str = "\
Examples:
  memwarden run -- python train.py
  memwarden run --budget 2GiB --json out/report.json -- python serve_bench.py
  memwarden run --hard-limit 4GiB -- python train.py      # the kernel enforces it
  memwarden run --profile -- python train.py        # + memwarden-report/RUN-ID.html
  memwarden run --profile --html out/run.html -- python train.py
  memwarden run --model fraud-detector --version 3 --stage inference \\
                --input data/sample.parquet -- python bench_inference.py

Sizes: 512MiB, 1.5GiB, 4Gi (powers of 1024); 2GB, 500MB (powers of 1000); plain bytes.

Exit status: the command's own (128+N when killed by signal N; 137 when a hard limit
killed it), else 2 for bad arguments, 3 when the command succeeded but exceeded
--budget, 125 when memwarden itself failed, 126 when the command cannot be executed,
127 when it is not found. See docs/cli.md.";

/// How the command gets a cgroup of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CgroupArg {
    /// Use a cgroup of its own when the kernel allows it, else go on without (a hard limit
    /// then falls back to the watchdog).
    Auto,
    /// Fail if the command cannot get a cgroup of its own.
    Require,
    /// Never create a cgroup (a hard limit is enforced by the watchdog).
    Off,
}

/// Arguments of `memwarden run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Sampling interval, e.g. 50ms, 0.2s (peaks come from kernel high-water marks, so a
    /// longer interval only coarsens the timeline).
    #[arg(long, value_name = "DURATION", default_value = "50ms")]
    pub interval: String,

    /// Memory budget: the run fails (exit status 3) when the tree's peak RSS exceeds it.
    #[arg(long, value_name = "SIZE")]
    pub budget: Option<String>,

    /// Hard memory limit: the tree is killed when it needs more. Enforced by the kernel in a
    /// cgroup of the command's own where possible, else by memwarden's watchdog.
    #[arg(long, value_name = "SIZE")]
    pub hard_limit: Option<String>,

    /// Whether the command runs in a memory cgroup of its own (exact tree peak, kernel-enforced
    /// hard limit).
    #[arg(long, value_enum, default_value_t = CgroupArg::Auto)]
    pub cgroup: CgroupArg,

    /// Write the report as JSON (schema memwarden.report/1, see docs/report-schema.md).
    /// Parent directories are created; the path is checked before the command starts.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Write the report as one self-contained HTML page: memory over time with the stacks
    /// held at each moment, flame graphs, the top lines, each process, and advice. With
    /// --profile it is written by default to memwarden-report/RUN-ID.html.
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,

    /// No status line and no summary; the exit status and --json still tell the outcome.
    #[arg(long, short)]
    pub quiet: bool,

    /// Record the run in the ledger under this model (needs --version).
    #[arg(long, value_name = "NAME", requires = "model_version")]
    pub model: Option<String>,

    /// The model's version, for the ledger (needs --model).
    #[arg(long = "version", value_name = "VERSION", requires = "model")]
    pub model_version: Option<String>,

    /// The stage of the model's life this run is.
    #[arg(long, value_enum, default_value_t = StageArg::Train, requires = "model")]
    pub stage: StageArg,

    /// A tag for the ledger record, KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE", requires = "model")]
    pub tags: Vec<String>,

    /// An input file or directory whose BLAKE3 hash goes into the record (repeatable).
    #[arg(long = "input", value_name = "PATH", requires = "model")]
    pub inputs: Vec<PathBuf>,

    /// Profile allocations: which Python lines hold memory at the peak and at exit, in the
    /// command and every process it starts. `sampled` (the default) samples by bytes and is
    /// cheap enough to leave on; `exact` records every allocation.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "sampled"
    )]
    pub profile: Option<ProfileArg>,

    /// Mean bytes between samples in sampled mode (default 512KiB); smaller is more
    /// precise and slower.
    #[arg(long, value_name = "SIZE", requires = "profile")]
    pub sample_bytes: Option<String>,

    /// Write the stacks at the peak as folded stacks (for flamegraph.pl, inferno,
    /// speedscope).
    #[arg(long, value_name = "PATH", requires = "profile")]
    pub folded: Option<PathBuf>,

    /// Keep the per-process capture files in this directory (default: a temporary one,
    /// removed after the run). Captures of an earlier run there are replaced.
    #[arg(long, value_name = "DIR", requires = "profile")]
    pub capture_dir: Option<PathBuf>,

    /// Show every frame as recorded, import machinery included (by default memory
    /// allocated by an import is charged to the line that imported, `[import NAME]`).
    #[arg(long, requires = "profile")]
    pub raw_frames: bool,

    /// Leave the command and everything it started running should memwarden itself die
    /// (killed, OOM-killed). By default a guardian process then kills the whole run. The
    /// run is recorded as interrupted either way.
    #[arg(long)]
    pub survive_memwarden: bool,

    /// The command to run, after `--` (any bytes: it is passed on as given).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

/// Parses the process's arguments. An argument that is not valid UTF-8 where text is
/// expected comes back as a usage failure naming it; on any other error clap prints its
/// own message (and help, version) and exits with status 2.
pub fn parse() -> Result<Cli, Failure> {
    let args: Vec<OsString> = std::env::args_os().collect();
    match Cli::try_parse_from(&args) {
        Ok(cli) => Ok(cli),
        Err(error) if error.kind() == clap::error::ErrorKind::InvalidUtf8 => {
            Err(Failure::usage(refused_argument(&args)))
        }
        Err(error) => error.exit(),
    }
}

/// Which argument clap refused as not UTF-8, as a sentence: the first one whose repair
/// (a lossy copy) makes the refusal go away. Only options that take text refuse; paths
/// and the command after `--` take any bytes.
fn refused_argument(args: &[OsString]) -> String {
    let suspects: Vec<usize> = (1..args.len())
        .filter(|&i| args[i].to_str().is_none())
        .collect();
    let mut repaired = args.to_vec();
    for &index in &suspects {
        repaired[index] = args[index].to_string_lossy().into_owned().into();
        let still_refused = matches!(
            Cli::try_parse_from(&repaired),
            Err(e) if e.kind() == clap::error::ErrorKind::InvalidUtf8
        );
        if !still_refused {
            return format!(
                "argument {index} is not valid UTF-8: '{}' (bytes that are not UTF-8 shown as \\xNN); only paths and the command after `--` may hold any bytes",
                memwarden_format::names::escape_os(&args[index])
            );
        }
    }
    match std::env::var_os("MEMWARDEN_LEDGER").filter(|v| v.to_str().is_none()) {
        Some(value) => format!(
            "MEMWARDEN_LEDGER is not valid UTF-8: '{}'",
            memwarden_format::names::escape_os(&value)
        ),
        None => "an argument is not valid UTF-8".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn run_takes_a_model_version_and_the_top_level_keeps_its_own() {
        let cli = Cli::try_parse_from([
            "memwarden",
            "--ledger",
            "x.sqlite",
            "run",
            "--model",
            "m",
            "--version",
            "3",
            "--",
            "true",
        ])
        .expect("parses");
        assert_eq!(cli.ledger.as_deref(), Some("x.sqlite"));
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        assert_eq!(
            (args.model.as_deref(), args.model_version.as_deref()),
            (Some("m"), Some("3"))
        );
        assert!(
            Cli::try_parse_from(["memwarden", "run", "--model", "m", "--", "true"]).is_err(),
            "--model needs --version"
        );
        let err = Cli::try_parse_from(["memwarden", "--version"]).expect_err("prints the version");
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_refused_argument_names_itself() {
        use std::os::unix::ffi::OsStringExt;
        let args: Vec<OsString> = vec![
            "memwarden".into(),
            "run".into(),
            "--json".into(),
            OsString::from_vec(b"r\xff.json".to_vec()),
            "--budget".into(),
            OsString::from_vec(b"1\xffGiB".to_vec()),
            "--".into(),
            OsString::from_vec(b"python\xfe".to_vec()),
        ];
        let err = Cli::try_parse_from(&args).expect_err("refused");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidUtf8);
        let sentence = refused_argument(&args);
        assert!(
            sentence.starts_with(r"argument 5 is not valid UTF-8: '1\xffGiB'"),
            "{sentence}"
        );
        let mut fine = args.clone();
        fine[5] = "1GiB".into();
        let cli = Cli::try_parse_from(&fine).expect("paths and the command take any bytes");
        let Command::Run(run) = cli.command else {
            panic!("run expected")
        };
        assert_eq!(run.command, [OsString::from_vec(b"python\xfe".to_vec())]);
    }

    #[test]
    fn command_arguments_are_not_taken_as_options() {
        let cli = Cli::try_parse_from([
            "memwarden",
            "run",
            "--budget",
            "1GiB",
            "--",
            "python",
            "-c",
            "x",
            "--json",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        assert_eq!(args.command, ["python", "-c", "x", "--json"]);
        assert_eq!(args.budget.as_deref(), Some("1GiB"));
        assert!(args.json.is_none());
    }
}
