//! Analysis and rendering of memwarden run reports.
//!
//! - [`profile`]: analysis of allocation captures (`--profile`) into the report and folded stacks;
//! - [`imports`]: import machinery folded into the line that imported (used by [`profile`]);
//! - [`tree`]: the tree's heap measured across processes: its peak, the stacks at it, a
//!   timeline;
//! - [`text`]: the terminal summary printed at the end of `memwarden run`.
//!
//! Reports themselves are defined in `memwarden-format`; this crate only reads them, so
//! every renderer works the same on a live run and on a report loaded from disk.

pub mod imports;
pub mod profile;
pub mod text;
pub mod tree;
