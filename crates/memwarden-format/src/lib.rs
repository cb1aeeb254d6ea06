//! memwarden's shared data formats.
//!
//! Everything that crosses a process or crate boundary is defined here, so that the
//! producer (the runner, later the preload library) and the consumers (renderers, the
//! ledger) agree on one definition:
//!
//! - [`advice`]: what to change to need less memory, with its evidence (report and ledger);
//! - [`capture`]: what the preload library leaves per profiled process (`memwarden-capture/2`);
//! - [`tree`]: the counter of the whole tree's heap, shared by every profiled process;
//! - [`report`]: the versioned run report (`memwarden.report/1`), written as JSON by
//!   `memwarden run --json` and documented in `docs/report-schema.md`;
//! - [`names`]: file and function names, arguments and paths as text, whatever their bytes
//!   (one escaping scheme for bytes that are not UTF-8);
//! - [`units`]: byte sizes as users write them (`512MiB`, `2GB`, `1.5GiB`, `1048576`) and
//!   as memwarden prints them.
//!
//! ```
//! use memwarden_format::units::{parse_size, format_size};
//! assert_eq!(parse_size("1.5GiB").unwrap(), 1_610_612_736);
//! assert_eq!(format_size(1_610_612_736), "1.50 GiB");
//! ```

pub mod advice;
pub mod capture;
pub mod names;
pub mod report;
pub mod tree;
pub mod units;
