//! Exports for other tools: folded stacks (flamegraph.pl, inferno), speedscope's JSON file
//! format, and the timeline as CSV.

mod csv;
mod folded;
mod speedscope;

pub use csv::timeline_csv;
pub use folded::folded;
pub use speedscope::speedscope;
