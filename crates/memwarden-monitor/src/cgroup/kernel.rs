//! The cgroup filesystem operations that creating, delegating and removing a cgroup perform.
//!
//! They go through [`Kernel`] rather than `std::fs` directly because what matters in them is
//! how the kernel answers (EBUSY for a cgroup with processes of its own, a process moving
//! out of one `cgroup.procs` into another, `memory.*` files appearing once a controller is
//! enabled), and plain files cannot answer like that. Production code uses [`LiveKernel`];
//! the unit tests use a fake kernel that models those rules explicitly (`fake_kernel.rs`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The cgroup filesystem as memwarden writes to it.
pub(crate) trait Kernel {
    /// Reads a control file.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Writes one value to a control file (`+memory`, a pid, a limit).
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Creates a cgroup.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty cgroup.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// The child cgroups of a cgroup.
    fn child_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>>;

    /// Whether a control file exists.
    fn exists(&self, path: &Path) -> bool {
        self.read(path).is_ok()
    }

    /// The whitespace-separated words of a control file (controllers), empty when unreadable.
    fn words(&self, path: &Path) -> Vec<String> {
        self.read(path)
            .map(|text| text.split_ascii_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// The pids listed in a `cgroup.procs`.
    fn pids(&self, path: &Path) -> Vec<i32> {
        self.read(path)
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

/// The real cgroup filesystem.
pub(crate) struct LiveKernel;

impl Kernel for LiveKernel {
    fn read(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        fs::write(path, value)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn child_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        Ok(dirs)
    }
}
