//! Analysis and rendering of memwarden run reports.
//!
//! - [`profile`]: analysis of allocation captures (`--profile`) into the report and folded stacks;
//! - [`imports`]: import machinery folded into the line that imported (used by [`profile`]);
//! - [`tree`]: the tree's heap measured across processes: its peak, the stacks at it, a
//!   timeline;
//! - [`text`]: every terminal renderer: the run summary, `check`, `diff`, `history`,
//!   `inspect` and its format trials.
//!
//! Reports themselves are defined in `memwarden-format`, the gate's models in
//! `memwarden-ledger` and `memwarden-inspect`; this crate only reads them, so every
//! renderer works the same on a live run and on a model loaded from disk, and those crates
//! never depend on this one.

pub mod imports;
pub mod profile;
pub mod text;
pub mod tree;
