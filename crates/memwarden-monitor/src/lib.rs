//! memwarden's process-tree memory monitor.
//!
//! It answers "how much memory did this command need" for a whole tree of processes,
//! cheaply enough to leave on and exactly where the kernel allows it:
//!
//! - [`procfs`] parses the per-process files the monitor reads (`statm`, `status`,
//!   `smaps_rollup`, `stat`, `cmdline`) and `/proc/meminfo`;
//! - [`tree`] finds every process of the tree and samples it: RSS each tick from a kept-open
//!   `statm`, the kernel high-water mark (`VmHWM`) and PSS/USS (`smaps_rollup`) when they
//!   can have changed, per-process and tree peaks;
//! - [`cgroup`] reads the cgroup memwarden runs in (v1 and v2: limit, usage, peak, OOM
//!   kills) and creates a cgroup of its own for the command, with a hard limit if asked (on
//!   v2 moving memwarden into a leaf, or a systemd scope, when the kernel requires it);
//! - [`gpu`] reads per-process GPU memory through NVML, loaded at run time when present.
//!
//! The crate never spawns or signals the command: the CLI owns its life. The one process it
//! may start is systemd's `busctl`, to ask for a scope (see [`cgroup`]).

pub mod cgroup;
pub mod gpu;
pub mod procfs;
pub mod tree;
