//! The `memwarden` command.
//!
//! `main` parses the arguments ([`cli`]), validates them into a configuration before any
//! work starts, runs the subcommand, and maps the outcome to a documented exit status
//! ([`exit`]).

mod cli;
mod exit;
mod run;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let status = match cli.command {
        cli::Command::Run(args) => run::main(args),
    };
    ExitCode::from(status.code())
}
