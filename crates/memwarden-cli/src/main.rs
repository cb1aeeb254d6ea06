//! The `memwarden` command.
//!
//! `main` parses the arguments ([`cli`]), validates them into a configuration before any
//! work starts, runs the subcommand, and maps the outcome to a documented exit status
//! ([`exit`]): a subcommand returns its status, or a [`exit::Failure`] that `main` prints,
//! once, as `memwarden: error: ...`.

mod analyze;
mod cli;
mod exit;
mod govern;
mod inspect;
mod report;
mod run;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Like other Unix filters: `memwarden inspect ... | head` ends quietly on a closed pipe
    // instead of panicking on the write. (Rust starts programs with SIGPIPE ignored.)
    // SAFETY: restoring a signal's default disposition before any thread starts.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(failure) => return ExitCode::from(failure.print().code()),
    };
    let ledger = cli.ledger.as_deref();
    let outcome = match cli.command {
        cli::Command::Run(args) => run::main(args, ledger),
        cli::Command::Analyze {
            paths,
            json,
            folded,
            raw_frames,
        } => analyze::main(&paths, json.as_deref(), folded.as_deref(), raw_frames),
        cli::Command::Report(args) => report::main(args),
        cli::Command::History { model, json } => govern::history(ledger, &model, json),
        cli::Command::Diff { a, b, json } => govern::diff(ledger, &a, &b, json),
        cli::Command::Check { spec, policy, json } => {
            govern::check(ledger, &spec, policy.as_deref(), json)
        }
        cli::Command::Inspect {
            paths,
            json,
            policy,
            measure,
            trust,
            python,
            model,
            model_version,
        } => {
            let record_as = model.zip(model_version);
            let measure = measure.then_some(inspect::Measure {
                trust,
                python,
                record_as,
                ledger: ledger.map(str::to_owned),
            });
            inspect::main(&paths, json.as_deref(), policy.as_deref(), measure.as_ref())
        }
        cli::Command::Guardian { lock } => run::guardian(&lock, ledger),
        cli::Command::Ledger { command } => match command {
            cli::LedgerCommand::Verify {
                json,
                expect_head,
                public_key,
            } => govern::verify(ledger, json, &expect_head, &public_key),
            cli::LedgerCommand::Sync => govern::sync(ledger),
            cli::LedgerCommand::Keygen {
                out,
                secret,
                public,
            } => govern::keygen(out.as_deref(), secret.as_deref(), public.as_deref()),
        },
    };
    let status = outcome.unwrap_or_else(|failure| failure.print());
    ExitCode::from(status.code())
}
