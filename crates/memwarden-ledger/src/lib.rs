//! memwarden's ledger: every run of a model version, recorded for good.
//!
//! - [`provenance`]: the machine, Python environment, git state and input hashes of a run;
//! - [`record`]: what a run record holds (model, version, stage, command, exit, host,
//!   Python environment, git state, input hashes, every peak with its source, verdicts);
//! - [`chain`]: the hash chain that makes the ledger tamper-evident, and its verification;
//! - [`anchor`]: the chain's heads, remembered outside the database, which show truncation
//!   and recomputed chains; and `--expect-head`;
//! - [`signing`]: heads signed with a team's ed25519 key, key files and their formats, so
//!   that write access to the database and anchor file is not enough to forge history;
//! - [`guards`]: whether the append-only triggers are still as memwarden made them;
//! - [`store`]: the two backends with one schema, SQLite (embedded, the default) and
//!   PostgreSQL (a team's shared ledger), and their versioned migrations;
//! - [`spool`]: records that could not be written, kept on disk and written later;
//! - [`policy`]: `memwarden.toml`, budgets per model and stage and allowed regressions;
//! - [`gate`]: evaluating a version's runs against policy and its baseline (`check`),
//!   comparing versions (`diff`) and summarising history.
//!
//! Records are append-only: the backends refuse updates and deletes (triggers), and a
//! record changed behind their back (or deleted, or reordered) breaks the chain, which
//! `memwarden ledger verify` reports by sequence number and run id. The newest records
//! deleted, or the whole chain recomputed, leave a consistent chain: the anchored heads
//! show those; signed heads keep whoever can also write the anchor file from forging them.
//! docs/ledger.md tabulates what is and is not detected.

pub mod anchor;
pub mod chain;
pub mod gate;
pub mod guards;
pub mod policy;
pub mod provenance;
pub mod record;
pub mod signing;
pub mod spool;
pub mod store;

pub use record::RunRecord;
pub use store::{Ledger, LedgerError, LedgerLocation};
