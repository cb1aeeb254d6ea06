//! Command-line arguments (clap derive). Raw arguments only: `run::config` validates them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Memory governance for Python machine-learning workloads.
#[derive(Debug, Parser)]
#[command(name = "memwarden", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
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
}

const RUN_EXAMPLES: &str = "\
Examples:
  memwarden run -- python train.py
  memwarden run --budget 2GiB --json out/report.json -- python serve_bench.py
  memwarden run --hard-limit 4GiB -- python train.py      # the kernel enforces it

Sizes: 512MiB, 1.5GiB, 4Gi (powers of 1024); 2GB, 500MB (powers of 1000); plain bytes.

Exit status: the command's own (128+N when killed by signal N; 137 when a hard limit
killed it), else 2 for bad arguments, 3 when the command succeeded but exceeded
--budget, 125 when memwarden itself failed, 126 when the command cannot be executed,
127 when it is not found. See docs/cli.md.";

/// How the command gets a cgroup of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CgroupMode {
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
    #[arg(long, value_enum, default_value_t = CgroupMode::Auto)]
    pub cgroup: CgroupMode,

    /// Write the report as JSON (schema memwarden.report/1, see docs/report-schema.md).
    /// Parent directories are created; the path is checked before the command starts.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// No status line and no summary; the exit status and --json still tell the outcome.
    #[arg(long, short)]
    pub quiet: bool,

    /// The command to run, after `--`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
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
        let Command::Run(args) = cli.command;
        assert_eq!(args.command, ["python", "-c", "x", "--json"]);
        assert_eq!(args.budget.as_deref(), Some("1GiB"));
        assert!(args.json.is_none());
    }
}
