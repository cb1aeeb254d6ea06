//! The memory cgroup memwarden runs in, and the one it creates for the command.
//!
//! Both hierarchies are supported. cgroup v1 keeps memory in its own mount
//! (`/sys/fs/cgroup/memory`) with `memory.limit_in_bytes`, `memory.max_usage_in_bytes` and
//! the `oom_kill` line of `memory.oom_control`; cgroup v2 has one unified mount with
//! `memory.max`, `memory.peak` and the `oom_kill` line of `memory.events`. Which one holds
//! the memory controller for this process is read from `/proc/self/mountinfo` and
//! `/proc/self/cgroup`; the parsers take text and every reader takes a directory, so the
//! tests run both versions from fixture directories.
//!
//! On v2 a child cgroup gets `memory.*` only once its parent enables the controller in
//! `cgroup.subtree_control`, which the kernel refuses while the parent holds processes of
//! its own ("no internal processes"). [`Cgroup::create_child`] deals with that itself (see
//! [`delegation`](Delegation)): it moves memwarden into a leaf beside the command's cgroup,
//! or into a systemd scope, and [`Cgroup::remove`] puts things back.

mod delegation;
mod kernel;
mod mounts;
mod systemd;

#[cfg(test)]
mod delegation_tests;
#[cfg(test)]
mod fake_kernel;
#[cfg(test)]
mod live_v2_tests;
#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use delegation::{Blocker, Delegation};
use kernel::{Kernel, LiveKernel};
use mounts::{parse_mounts, strip_mount_root};

/// Limits at or above this are the kernel's way of saying "no limit" (v1 writes
/// `9223372036854771712`).
const UNLIMITED_THRESHOLD: u64 = 1 << 60;

/// cgroup hierarchy version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Legacy hierarchy with a memory controller mount of its own.
    V1,
    /// Unified hierarchy.
    V2,
}

impl Version {
    /// `1` or `2`.
    pub fn number(self) -> u8 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }
}

/// Why a cgroup could not be created or used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A file or directory of the cgroup filesystem could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What memwarden was doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The directory memwarden created did not get the kernel's control files: the parent
    /// is not a cgroup filesystem, or the memory controller is not enabled for children.
    #[error("{path} has no {control_file}: the memory controller is not available there ({hint})")]
    NoMemoryController {
        /// The created directory.
        path: PathBuf,
        /// The control file that should have appeared.
        control_file: &'static str,
        /// Why the control file is missing.
        hint: String,
    },
    /// cgroup v2 does not let memwarden give the command a memory cgroup below its own, and
    /// neither moving memwarden into a leaf nor a systemd scope got round it.
    #[error("cgroup v2: {}", delegation::refusal(.dir, .blocker, .systemd.as_deref()))]
    V2Delegation {
        /// memwarden's cgroup (or the systemd scope it moved into).
        dir: PathBuf,
        /// What stood in the way there.
        blocker: Blocker,
        /// Why a systemd scope was not used or did not help; `None` when not tried.
        systemd: Option<String>,
    },
    /// The run's cgroup is gone, but memwarden could not put its own cgroup back as it found
    /// it: the memory controller stays enabled in `parent` and memwarden stays in `leaf`.
    #[error("memwarden left the memory controller enabled in {} and stays in {} ({reason}): remove {} (rmdir) once memwarden has exited", .parent.display(), .leaf.display(), .leaf.display())]
    LeftDelegated {
        /// memwarden's former cgroup.
        parent: PathBuf,
        /// The leaf memwarden moved into.
        leaf: PathBuf,
        /// Why it was not undone.
        reason: String,
    },
}

/// A memory cgroup: its version, its directory and its path inside the hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// Hierarchy version.
    pub version: Version,
    /// Directory of the cgroup in the mounted filesystem.
    pub dir: PathBuf,
    /// Path relative to the hierarchy root, as `/proc/PID/cgroup` shows it.
    pub path: String,
    /// Mount point of the hierarchy; walks up for limits stop here.
    pub mount_point: PathBuf,
    /// What memwarden changed around it so that this cgroup could exist (v2 only).
    delegation: Option<Delegation>,
}

/// Finds the memory cgroup described by `/proc/PID/cgroup` text among the mounts described
/// by `/proc/PID/mountinfo` text. `fs_root` is prefixed to mount points (`/` on a live
/// system, a fixture directory in tests). v1 wins when both hierarchies are mounted and v1
/// has the memory controller, because then v2 has no memory controller to offer.
pub fn locate(mountinfo: &str, proc_cgroup: &str, fs_root: &Path) -> Option<Cgroup> {
    let mounts = parse_mounts(mountinfo);
    let mut v1_path = None;
    let mut v2_path = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if hierarchy == "0" && controllers.is_empty() {
            v2_path = Some(path.to_owned());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1_path = Some(path.to_owned());
        }
    }
    let candidates = [(Version::V1, v1_path), (Version::V2, v2_path)];
    for (version, path) in candidates {
        let Some(path) = path else { continue };
        for mount in mounts.iter().filter(|m| m.version == version) {
            let Some(inside) = strip_mount_root(&path, &mount.root) else {
                continue;
            };
            let mount_point = fs_root.join(
                mount
                    .mount_point
                    .strip_prefix("/")
                    .unwrap_or(&mount.mount_point),
            );
            let dir = mount_point.join(inside.trim_start_matches('/'));
            let control = match version {
                Version::V1 => "memory.limit_in_bytes",
                Version::V2 => "memory.current",
            };
            // The root of a v2 hierarchy has no memory.current; its controllers file says.
            let has_memory = dir.join(control).exists()
                || version == Version::V2 && controllers_of(&dir).iter().any(|c| c == "memory");
            if has_memory {
                return Some(Cgroup {
                    version,
                    dir,
                    path: path.clone(),
                    mount_point,
                    delegation: None,
                });
            }
        }
    }
    None
}

fn controllers_of(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|text| text.split_ascii_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The memory cgroup of this process, if the memory controller is mounted and visible.
pub fn current() -> Option<Cgroup> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let proc_cgroup = fs::read_to_string("/proc/self/cgroup").ok()?;
    locate(&mountinfo, &proc_cgroup, Path::new("/"))
}

/// Process ids in the cgroup directory `dir` (for a cgroup known only by its path, such as
/// the one an interrupted run's journal names).
pub fn pids_in(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The kernel's high-water mark of the usage of the cgroup directory `dir` (see
/// [`Cgroup::peak_bytes`]).
pub fn peak_bytes_in(version: Version, dir: &Path) -> Option<u64> {
    match version {
        Version::V1 => read_u64(&dir.join("memory.max_usage_in_bytes")),
        Version::V2 => read_u64(&dir.join("memory.peak")),
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let value = text.trim();
    if value == "max" {
        return Some(u64::MAX);
    }
    value.parse().ok()
}

fn limit_from(raw: Option<u64>) -> Option<u64> {
    raw.filter(|&v| v < UNLIMITED_THRESHOLD)
}

/// The value of `key` in a flat keyed file such as `memory.events` or `memory.stat`.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl Cgroup {
    /// The effective memory limit: the smallest limit on the path from this cgroup up to the
    /// visible root, `None` when nothing limits it.
    pub fn limit_bytes(&self) -> Option<u64> {
        match self.version {
            Version::V1 => {
                let stat = fs::read_to_string(self.dir.join("memory.stat")).ok();
                let hierarchical = stat
                    .as_deref()
                    .and_then(|s| keyed_value(s, "hierarchical_memory_limit"));
                limit_from(
                    hierarchical.or_else(|| read_u64(&self.dir.join("memory.limit_in_bytes"))),
                )
            }
            Version::V2 => {
                let mut tightest: Option<u64> = None;
                let mut dir = self.dir.as_path();
                loop {
                    if let Some(limit) = limit_from(read_u64(&dir.join("memory.max"))) {
                        tightest = Some(tightest.map_or(limit, |t| t.min(limit)));
                    }
                    if dir == self.mount_point {
                        break;
                    }
                    match dir.parent() {
                        Some(parent) if parent.starts_with(&self.mount_point) => dir = parent,
                        _ => break,
                    }
                }
                tightest
            }
        }
    }

    /// Memory charged to the cgroup now.
    pub fn usage_bytes(&self) -> Option<u64> {
        read_u64(&self.dir.join(self.usage_file()))
    }

    /// Name of the usage file, for callers that keep it open.
    pub fn usage_file(&self) -> &'static str {
        match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        }
    }

    /// The kernel's high-water mark of the cgroup's usage (`None` on v2 kernels before 5.19,
    /// which lack `memory.peak`).
    pub fn peak_bytes(&self) -> Option<u64> {
        peak_bytes_in(self.version, &self.dir)
    }

    /// Processes the kernel's OOM killer killed in this cgroup (and, on v2, below it).
    pub fn oom_kills(&self) -> Option<u64> {
        let (file, key) = match self.version {
            Version::V1 => ("memory.oom_control", "oom_kill"),
            Version::V2 => ("memory.events", "oom_kill"),
        };
        keyed_value(&fs::read_to_string(self.dir.join(file)).ok()?, key)
    }

    /// Process ids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.dir)
    }

    /// Creates a child cgroup `name`, with `limit_bytes` as its hard memory limit (swap
    /// included, so the limit cannot be escaped by swapping). Fails without leaving a
    /// directory behind when the kernel does not provide the memory controller there.
    ///
    /// On cgroup v2 this may move memwarden itself: into a leaf `memwarden-supervisor-PID`
    /// beside the new cgroup when memwarden (with its own children) is alone in its cgroup,
    /// else into a systemd transient scope with `Delegate=yes` where systemd runs. What was
    /// done is in [`Cgroup::delegation`] and is undone by [`Cgroup::remove`]. cgroup v1 needs
    /// none of this.
    pub fn create_child(
        &self,
        name: &str,
        limit_bytes: Option<u64>,
    ) -> Result<Cgroup, CgroupError> {
        match self.version {
            Version::V1 => self.make_child(name, limit_bytes, &LiveKernel),
            Version::V2 => delegation::create_child_v2(
                self,
                name,
                limit_bytes,
                &LiveKernel,
                &delegation::LiveProcesses::of_this_process(),
                &systemd::Systemd::detect(),
            ),
        }
    }

    /// What memwarden changed around this cgroup to create it (v2), if anything.
    pub fn delegation(&self) -> Option<&Delegation> {
        self.delegation.as_ref()
    }

    /// Creates `name` under this cgroup, which must already offer the memory controller to
    /// its children, and sets its limits.
    fn make_child(
        &self,
        name: &str,
        limit_bytes: Option<u64>,
        kernel: &dyn Kernel,
    ) -> Result<Cgroup, CgroupError> {
        let dir = self.dir.join(name);
        kernel.create_dir(&dir).map_err(|source| CgroupError::Io {
            action: "cannot create cgroup",
            path: dir.clone(),
            source,
        })?;
        let child = Cgroup {
            version: self.version,
            dir: dir.clone(),
            path: format!("{}/{name}", self.path.trim_end_matches('/')),
            mount_point: self.mount_point.clone(),
            delegation: None,
        };
        let result = child.apply_limit(limit_bytes, kernel);
        if result.is_err() {
            let _ = kernel.remove_dir(&dir);
        }
        result.map(|()| child)
    }

    fn apply_limit(
        &self,
        limit_bytes: Option<u64>,
        kernel: &dyn Kernel,
    ) -> Result<(), CgroupError> {
        let control_file = match self.version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        };
        if !kernel.exists(&self.dir.join(control_file)) {
            let hint = match self.version {
                Version::V1 => "the parent directory is not a cgroup v1 memory hierarchy",
                Version::V2 => "the parent directory is not a cgroup v2 filesystem",
            };
            return Err(CgroupError::NoMemoryController {
                path: self.dir.clone(),
                control_file,
                hint: hint.to_owned(),
            });
        }
        if let Some(limit) = limit_bytes {
            self.write(control_file, &limit.to_string(), kernel)?;
            let swap_file = match self.version {
                Version::V1 => "memory.memsw.limit_in_bytes",
                Version::V2 => "memory.swap.max",
            };
            if kernel.exists(&self.dir.join(swap_file)) {
                let swap_limit = match self.version {
                    Version::V1 => limit,
                    Version::V2 => 0,
                };
                self.write(swap_file, &swap_limit.to_string(), kernel)?;
            }
        }
        Ok(())
    }

    fn write(&self, file: &str, value: &str, kernel: &dyn Kernel) -> Result<(), CgroupError> {
        let path = self.dir.join(file);
        kernel
            .write(&path, value)
            .map_err(|source| CgroupError::Io {
                action: "cannot write",
                path,
                source,
            })
    }

    /// Opens `cgroup.procs` for writing, close-on-exec, so that a child can join the cgroup
    /// between fork and exec by writing `0` (meaning "me") to it.
    pub fn open_procs_for_join(&self) -> Result<File, CgroupError> {
        let path = self.dir.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| CgroupError::Io {
                action: "cannot open",
                path,
                source,
            })
    }

    /// Removes a cgroup memwarden created. Processes still in it (daemons the command left
    /// behind) are moved out first so that the directory can go: to `parent`, or on v2 to
    /// memwarden's leaf when memwarden moved into one. Then what [`Cgroup::create_child`]
    /// changed to make room is undone.
    pub fn remove(&self, parent: &Cgroup) -> Result<(), CgroupError> {
        self.remove_with(
            parent,
            &LiveKernel,
            &delegation::LiveProcesses::of_this_process(),
        )
    }

    fn remove_with(
        &self,
        parent: &Cgroup,
        kernel: &dyn Kernel,
        processes: &dyn delegation::Processes,
    ) -> Result<(), CgroupError> {
        // With delegation the parent enables a controller for its children, so the kernel
        // refuses processes there: leftovers join memwarden in its leaf instead.
        let refuge = match &self.delegation {
            Some(delegation) => delegation
                .supervisor_dir
                .as_deref()
                .unwrap_or(&delegation.parent_dir),
            None => parent.dir.as_path(),
        };
        self.remove_dir_emptying_into(refuge, kernel)?;
        match &self.delegation {
            Some(delegation) => delegation::restore(delegation, kernel, processes),
            None => Ok(()),
        }
    }

    fn remove_dir_emptying_into(
        &self,
        refuge: &Path,
        kernel: &dyn Kernel,
    ) -> Result<(), CgroupError> {
        for attempt in 0..20 {
            match kernel.remove_dir(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if attempt == 19 => {
                    return Err(CgroupError::Io {
                        action: "cannot remove cgroup",
                        path: self.dir.clone(),
                        source: e,
                    })
                }
                Err(_) => {
                    for pid in kernel.pids(&self.dir.join("cgroup.procs")) {
                        let _ = kernel.write(&refuge.join("cgroup.procs"), &pid.to_string());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
        Ok(())
    }
}
