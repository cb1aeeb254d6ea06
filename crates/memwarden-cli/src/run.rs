//! `memwarden run` and `memwarden __guardian`: arguments into a [`RunConfig`], the run
//! loop of [`memwarden_run`], then the summary and the exit status.

use std::path::Path;

use memwarden_ledger::LedgerLocation;
use memwarden_run::{
    CgroupMode, ProfileMode, RunConfig, RunError, RunErrorKind, RunOptions, Verdict,
};

use crate::cli::{CgroupArg, ProfileArg, RunArgs};
use crate::exit::{Failure, Status};

/// Runs `memwarden run` and returns the exit status.
pub fn main(args: RunArgs, ledger: Option<&str>) -> Result<Status, Failure> {
    let quiet = args.quiet;
    let config = RunConfig::new(options(args), ledger)?;
    // Earlier runs whose memwarden and guardian both died: finished before this one.
    let invoker = LedgerLocation::resolve(ledger).ok();
    for line in memwarden_run::recover::dead_runs(invoker.as_ref()) {
        if !quiet || line.starts_with("warning") {
            eprintln!("memwarden: {line}");
        }
    }
    let outcome = memwarden_run::run(config)?;
    if !quiet {
        eprint!("{}", memwarden_report::text::summary(&outcome.report));
    }
    match &outcome.html {
        Some(Ok(path)) if !quiet => {
            eprintln!("  report       {} (open it in a browser)", path.display())
        }
        Some(Ok(_)) | None => {}
        Some(Err(warning)) => eprintln!("memwarden: warning: {warning}"),
    }
    match outcome.recorded {
        Some(Ok(line)) if !quiet => eprintln!("  ledger       {line}"),
        Some(Ok(_)) | None => {}
        Some(Err(warning)) => eprintln!("memwarden: warning: {warning}"),
    }
    match outcome.report_failure {
        Some(failure) => Err(failure.into()),
        None => Ok(outcome.verdict.into()),
    }
}

/// `memwarden __guardian LOCK` (see [`memwarden_run::guardian`]).
pub fn guardian(lock_path: &Path, ledger: Option<&str>) -> Result<Status, Failure> {
    memwarden_run::guardian::main(lock_path, ledger)?;
    Ok(Status::Command(0))
}

/// The arguments as the run crate's plain options.
fn options(args: RunArgs) -> RunOptions {
    RunOptions {
        command: args.command,
        interval: args.interval,
        budget: args.budget,
        hard_limit: args.hard_limit,
        cgroup: match args.cgroup {
            CgroupArg::Auto => CgroupMode::Auto,
            CgroupArg::Require => CgroupMode::Require,
            CgroupArg::Off => CgroupMode::Off,
        },
        json: args.json,
        html: args.html,
        quiet: args.quiet,
        model: args.model,
        model_version: args.model_version,
        stage: args.stage.name().to_owned(),
        tags: args.tags,
        inputs: args.inputs,
        profile: args.profile.map(|mode| match mode {
            ProfileArg::Sampled => ProfileMode::Sampled,
            ProfileArg::Exact => ProfileMode::Exact,
        }),
        sample_bytes: args.sample_bytes,
        folded: args.folded,
        capture_dir: args.capture_dir,
        raw_frames: args.raw_frames,
        survive_memwarden: args.survive_memwarden,
    }
}

impl From<Verdict> for Status {
    fn from(verdict: Verdict) -> Status {
        match verdict {
            Verdict::Command(code) => Status::Command(code),
            Verdict::BudgetExceeded => Status::BudgetExceeded,
        }
    }
}

impl From<RunError> for Failure {
    fn from(error: RunError) -> Failure {
        let status = match error.kind {
            RunErrorKind::Usage => Status::Usage,
            RunErrorKind::CannotExecute => Status::CannotExecute,
            RunErrorKind::NotFound => Status::NotFound,
            RunErrorKind::Internal => Status::Internal,
        };
        Failure::new(status, error.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_exits_with_the_code_its_report_records() {
        for verdict in [
            Verdict::Command(0),
            Verdict::Command(137),
            Verdict::BudgetExceeded,
        ] {
            assert_eq!(Status::from(verdict).code(), verdict.code());
        }
    }
}
