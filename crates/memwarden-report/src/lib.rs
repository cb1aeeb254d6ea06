//! Analysis and rendering of memwarden run reports.
//!
//! - [`advice`]: the advice engine, one rule per module, each with its evidence;
//! - [`profile`]: analysis of allocation captures (`--profile`) into the report and folded stacks;
//! - [`lines`]: the per-line table (bytes at the peak, at exit, allocated);
//! - [`export`]: folded stacks, speedscope's format and the timeline as CSV;
//! - [`flame`]: every stack for flame graphs, frames too small to see merged;
//! - [`sources`]: the text of the lines a report names, read when the run ends;
//! - [`imports`]: import machinery folded into the line that imported (used by [`profile`]);
//! - [`tree`]: the tree's heap measured across processes: its peak, the stacks at it, a
//!   timeline;
//! - [`html`]: the run report as one self-contained HTML page (timeline, flame graphs,
//!   lines, processes, advice);
//! - [`text`]: every terminal renderer: the run summary, `check`, `diff`, `history`,
//!   `inspect` and its format trials.
//!
//! Reports themselves are defined in `memwarden-format`, the gate's models in
//! `memwarden-ledger` and `memwarden-inspect`; this crate only reads them, so every
//! renderer works the same on a live run and on a model loaded from disk, and those crates
//! never depend on this one.

pub mod advice;
pub mod export;
pub mod flame;
pub mod html;
pub mod imports;
pub mod lines;
pub mod profile;
pub mod sources;
pub mod text;
pub mod tree;
