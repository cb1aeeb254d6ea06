//! memwarden's exit statuses (documented in docs/cli.md, "Exit codes").
//!
//! When the command ran, memwarden exits with the command's own status (128 + N when a
//! signal N killed it, as shells do), so that `memwarden run -- CMD` can replace `CMD` in a
//! script. memwarden's own outcomes use the codes below, chosen to match what shells and
//! `env`/`docker run` use where they overlap.

use std::fmt;

/// An exit status of memwarden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The command's own status, passed through.
    Command(u8),
    /// Bad arguments: an unparseable size, an unwritable output path, a missing command.
    Usage,
    /// The command succeeded but its peak exceeded `--budget`.
    BudgetExceeded,
    /// `memwarden check`: the version fails its policy.
    PolicyFailed,
    /// `memwarden ledger verify`: the chain is broken (a record edited, deleted, reordered),
    /// contradicts an anchored head (truncated, recomputed), its guards were disarmed, or
    /// (with `--public-key`) an anchored head is unsigned or not signed by the team's key.
    LedgerTampered,
    /// `memwarden ledger verify --expect-head SEQ:HASH`: record SEQ is missing or has
    /// another hash (and nothing else is wrong, else [`Status::LedgerTampered`]).
    HeadMismatch,
    /// The ledger cannot be opened (unreachable, not a ledger, from a newer memwarden).
    LedgerUnavailable,
    /// `memwarden inspect` or `analyze`: a file could not be analysed.
    Unreadable,
    /// memwarden itself failed (could not set up monitoring, could not write the report).
    Internal,
    /// The command was found but could not be executed (permissions, bad binary).
    CannotExecute,
    /// The command was not found.
    NotFound,
}

impl Status {
    /// The number the process exits with.
    pub fn code(self) -> u8 {
        match self {
            Status::Command(code) => code,
            Status::Usage => 2,
            Status::BudgetExceeded | Status::PolicyFailed => 3,
            Status::LedgerTampered => 4,
            Status::LedgerUnavailable => 5,
            Status::Unreadable => 6,
            Status::HeadMismatch => 7,
            Status::Internal => 125,
            Status::CannotExecute => 126,
            Status::NotFound => 127,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

/// A failure of memwarden itself: the status to exit with and what to tell the user.
/// Every subcommand returns `Result<Status, Failure>`: the status once its work is done
/// (the command's own, a failed policy, a broken chain), or a failure that `main` prints
/// once (see [`Failure::print`]). What a subcommand reports on the way (warnings, its
/// normal output) is not a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The status memwarden exits with.
    pub status: Status,
    /// What went wrong, one problem each (`analyze` given several unreadable files has
    /// several). A problem may span lines, e.g. toml's pointer at the offending key of a
    /// policy file: it is printed as it is, after one prefix.
    pub messages: Vec<String>,
}

impl Failure {
    pub fn new(status: Status, message: impl fmt::Display) -> Failure {
        Failure {
            status,
            messages: vec![message.to_string()],
        }
    }

    /// Bad arguments ([`Status::Usage`]).
    pub fn usage(message: impl fmt::Display) -> Failure {
        Failure::new(Status::Usage, message)
    }

    /// Prints every problem to stderr as `memwarden: error: PROBLEM` and returns the
    /// status to exit with.
    pub fn print(&self) -> Status {
        eprint!("{self}");
        self.status
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for message in &self.messages {
            writeln!(f, "memwarden: error: {message}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_of_a_failure_carries_the_prefix() {
        let failure = Failure {
            status: Status::Unreadable,
            messages: vec!["a.cap: truncated".into(), "b.cap: not a capture".into()],
        };
        assert_eq!(
            failure.to_string(),
            "memwarden: error: a.cap: truncated\nmemwarden: error: b.cap: not a capture\n"
        );
        assert_eq!(Failure::usage("x").status.code(), 2);
    }
}
