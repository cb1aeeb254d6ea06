//! Terminal text, one module per thing rendered; each renders a typed model built by the
//! crate that owns it, and its whole output is pinned by a golden file
//! (`tests/golden/*.txt`, see `tests/golden.rs`).
//!
//! - [`run`]: the summary of `memwarden run` and the profile section of `memwarden analyze`;
//! - [`lines`]: the top lines of a profile, with their source text (`memwarden report`);
//! - [`check`], [`diff`], [`history`]: the ledger's gate (`memwarden_ledger::gate`);
//! - [`inspect`]: the inspect gate's outcome (`memwarden_inspect::gate`);
//! - [`trials`]: the format trials of `memwarden inspect --measure`.

pub mod check;
pub mod diff;
pub mod history;
pub mod inspect;
pub mod lines;
pub mod run;
pub mod trials;

pub use check::render_check;
pub use diff::render_diff;
pub use history::render_history;
pub use inspect::render_inspect;
pub use lines::top_lines;
pub use run::{display_command, profile_section, summary};
pub use trials::render_trials;
