//! The memory cgroup memwarden runs in, and the one it creates for the command.
//!
//! Both hierarchies are supported. cgroup v1 keeps memory in its own mount
//! (`/sys/fs/cgroup/memory`) with `memory.limit_in_bytes`, `memory.max_usage_in_bytes` and
//! the `oom_kill` line of `memory.oom_control`; cgroup v2 has one unified mount with
//! `memory.max`, `memory.peak` and the `oom_kill` line of `memory.events`. Which one holds
//! the memory controller for this process is read from `/proc/self/mountinfo` and
//! `/proc/self/cgroup`; the parsers take text and every reader takes a directory, so the
//! tests run both versions from fixture directories.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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
        /// What the kernel said when memwarden tried to enable it, or why it did not try.
        hint: String,
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
}

/// A mount line of `/proc/self/mountinfo` that carries a cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    version: Version,
    /// The part of the hierarchy this mount shows (`/` unless bind-mounted from inside).
    root: String,
    mount_point: PathBuf,
}

fn parse_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        // Fields: id parent major:minor root mount-point options [optional...] - fstype source super-options
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = before.split_ascii_whitespace().collect();
        let tail: Vec<&str> = after.split_ascii_whitespace().collect();
        if fields.len() < 5 || tail.is_empty() {
            continue;
        }
        let version = match tail[0] {
            "cgroup2" => Version::V2,
            "cgroup"
                if tail
                    .get(2)
                    .is_some_and(|opts| opts.split(',').any(|o| o == "memory")) =>
            {
                Version::V1
            }
            _ => continue,
        };
        mounts.push(CgroupMount {
            version,
            root: unescape_mount_field(fields[3]),
            mount_point: PathBuf::from(unescape_mount_field(fields[4])),
        });
    }
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as three-digit octal.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let code =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
                });
            }
        }
    }
    None
}

fn strip_mount_root<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    if root == "/" {
        return Some(path);
    }
    let rest = path.strip_prefix(root)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
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
        match self.version {
            Version::V1 => read_u64(&self.dir.join("memory.max_usage_in_bytes")),
            Version::V2 => read_u64(&self.dir.join("memory.peak")),
        }
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
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Creates a child cgroup `name`, with `limit_bytes` as its hard memory limit (swap
    /// included, so the limit cannot be escaped by swapping). Fails without leaving a
    /// directory behind when the kernel does not provide the memory controller there.
    pub fn create_child(
        &self,
        name: &str,
        limit_bytes: Option<u64>,
    ) -> Result<Cgroup, CgroupError> {
        let dir = self.dir.join(name);
        fs::create_dir(&dir).map_err(|source| CgroupError::Io {
            action: "cannot create cgroup",
            path: dir.clone(),
            source,
        })?;
        let child = Cgroup {
            version: self.version,
            dir: dir.clone(),
            path: format!("{}/{name}", self.path.trim_end_matches('/')),
            mount_point: self.mount_point.clone(),
        };
        let result = child.prepare(self, limit_bytes);
        if result.is_err() {
            let _ = fs::remove_dir(&dir);
        }
        result.map(|()| child)
    }

    fn prepare(&self, parent: &Cgroup, limit_bytes: Option<u64>) -> Result<(), CgroupError> {
        let control_file = match self.version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        };
        if !self.dir.join(control_file).exists() {
            let hint = match self.version {
                Version::V1 => {
                    "the parent directory is not a cgroup v1 memory hierarchy".to_owned()
                }
                Version::V2 => match parent.enable_memory_for_children() {
                    Ok(()) if self.dir.join(control_file).exists() => String::new(),
                    Ok(()) => "the parent directory is not a cgroup v2 filesystem".to_owned(),
                    Err(e) => format!("enabling it for children failed: {e}"),
                },
            };
            if !self.dir.join(control_file).exists() {
                return Err(CgroupError::NoMemoryController {
                    path: self.dir.clone(),
                    control_file,
                    hint,
                });
            }
        }
        if let Some(limit) = limit_bytes {
            self.write(control_file, &limit.to_string())?;
            let swap_file = match self.version {
                Version::V1 => "memory.memsw.limit_in_bytes",
                Version::V2 => "memory.swap.max",
            };
            if self.dir.join(swap_file).exists() {
                let swap_limit = match self.version {
                    Version::V1 => limit,
                    Version::V2 => 0,
                };
                self.write(swap_file, &swap_limit.to_string())?;
            }
        }
        Ok(())
    }

    /// On v2 a child only gets `memory.*` files once the parent lists `memory` in
    /// `cgroup.subtree_control`; the kernel refuses that while the parent holds processes.
    fn enable_memory_for_children(&self) -> Result<(), CgroupError> {
        let subtree = self.dir.join("cgroup.subtree_control");
        let enabled = fs::read_to_string(&subtree).unwrap_or_default();
        if enabled.split_ascii_whitespace().any(|c| c == "memory") {
            return Ok(());
        }
        fs::write(&subtree, "+memory").map_err(|source| CgroupError::Io {
            action: "cannot enable the memory controller in",
            path: subtree,
            source,
        })
    }

    fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.dir.join(file);
        fs::write(&path, value).map_err(|source| CgroupError::Io {
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
    /// behind) are moved to `parent` first so that the directory can go.
    pub fn remove(&self, parent: &Cgroup) -> Result<(), CgroupError> {
        for attempt in 0..20 {
            match fs::remove_dir(&self.dir) {
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
                    for pid in self.pids() {
                        let _ = fs::write(parent.dir.join("cgroup.procs"), pid.to_string());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
34 30 0:30 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
37 30 0:33 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const V1_CGROUP: &str = "9:name=systemd:/\n4:memory:/jobs/job7\n1:cpu:/\n0::/\n";

    const V2_MOUNTINFO: &str = "\
25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
";
    const V2_CGROUP: &str = "0::/user.slice/session-3.scope\n";

    fn write(dir: &Path, file: &str, content: &str) {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join(file), content).expect("write fixture");
    }

    fn v1_fixture() -> (tempfile::TempDir, Cgroup) {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("sys/fs/cgroup/memory/jobs/job7");
        write(&dir, "memory.limit_in_bytes", "4294967296\n");
        write(&dir, "memory.usage_in_bytes", "1048576000\n");
        write(&dir, "memory.max_usage_in_bytes", "2147483648\n");
        write(
            &dir,
            "memory.stat",
            "cache 4096\nrss 8192\nhierarchical_memory_limit 3221225472\n",
        );
        write(
            &dir,
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(&dir, "cgroup.procs", "100\n101\n");
        let cgroup = locate(V1_MOUNTINFO, V1_CGROUP, root.path()).expect("v1 located");
        (root, cgroup)
    }

    fn v2_fixture() -> (tempfile::TempDir, Cgroup) {
        let root = tempfile::tempdir().expect("tempdir");
        let mount = root.path().join("sys/fs/cgroup");
        write(&mount, "cgroup.controllers", "cpu io memory pids\n");
        write(&mount.join("user.slice"), "memory.max", "8589934592\n");
        let dir = mount.join("user.slice/session-3.scope");
        write(&dir, "memory.max", "max\n");
        write(&dir, "memory.current", "52428800\n");
        write(&dir, "memory.peak", "104857600\n");
        write(
            &dir,
            "memory.events",
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
        );
        let cgroup = locate(V2_MOUNTINFO, V2_CGROUP, root.path()).expect("v2 located");
        (root, cgroup)
    }

    #[test]
    fn v1_memory_controller_is_found_beside_an_empty_unified_mount() {
        let (root, cgroup) = v1_fixture();
        assert_eq!(cgroup.version, Version::V1);
        assert_eq!(cgroup.path, "/jobs/job7");
        assert_eq!(
            cgroup.dir,
            root.path().join("sys/fs/cgroup/memory/jobs/job7")
        );
    }

    #[test]
    fn v1_figures_use_the_hierarchical_limit() {
        let (_root, cgroup) = v1_fixture();
        assert_eq!(
            cgroup.limit_bytes(),
            Some(3 << 30),
            "an ancestor's tighter limit wins"
        );
        assert_eq!(cgroup.usage_bytes(), Some(1_048_576_000));
        assert_eq!(cgroup.peak_bytes(), Some(2 << 30));
        assert_eq!(cgroup.oom_kills(), Some(2));
        assert_eq!(cgroup.pids(), [100, 101]);
    }

    #[test]
    fn v1_unlimited_is_none() {
        let (_root, cgroup) = v1_fixture();
        fs::write(
            cgroup.dir.join("memory.stat"),
            "hierarchical_memory_limit 9223372036854771712\n",
        )
        .expect("w");
        fs::write(
            cgroup.dir.join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .expect("w");
        assert_eq!(cgroup.limit_bytes(), None);
    }

    #[test]
    fn v2_limit_is_the_tightest_ancestor() {
        let (_root, cgroup) = v2_fixture();
        assert_eq!(cgroup.version, Version::V2);
        assert_eq!(cgroup.limit_bytes(), Some(8 << 30));
        assert_eq!(cgroup.usage_bytes(), Some(50 << 20));
        assert_eq!(cgroup.peak_bytes(), Some(100 << 20));
        assert_eq!(cgroup.oom_kills(), Some(1));
    }

    #[test]
    fn v2_without_memory_peak_reports_none() {
        let (_root, cgroup) = v2_fixture();
        fs::remove_file(cgroup.dir.join("memory.peak")).expect("rm");
        assert_eq!(cgroup.peak_bytes(), None);
    }

    #[test]
    fn v2_bind_mounted_from_inside_the_hierarchy() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("sys/fs/cgroup/pod");
        write(&dir, "memory.current", "1\n");
        let mountinfo = "25 1 0:22 /kubepods/burstable /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        let cgroup =
            locate(mountinfo, "0::/kubepods/burstable/pod\n", root.path()).expect("located");
        assert_eq!(cgroup.dir, dir);
    }

    #[test]
    fn no_memory_controller_anywhere() {
        let root = tempfile::tempdir().expect("tempdir");
        assert_eq!(locate(V1_MOUNTINFO, "4:cpu:/\n", root.path()), None);
        assert_eq!(locate("", V2_CGROUP, root.path()), None);
    }

    #[test]
    fn mount_points_with_escaped_spaces() {
        let mounts =
            parse_mounts("37 30 0:33 / /mnt/my\\040cgroups rw - cgroup cgroup rw,memory\n");
        assert_eq!(mounts[0].mount_point, PathBuf::from("/mnt/my cgroups"));
    }

    #[test]
    fn creating_a_child_outside_a_cgroup_filesystem_fails_cleanly() {
        for (_root, cgroup) in [v1_fixture(), v2_fixture()] {
            let err = cgroup
                .create_child("memwarden-test", Some(1 << 20))
                .expect_err("fixture is no cgroupfs");
            assert!(
                matches!(err, CgroupError::NoMemoryController { .. }),
                "{err}"
            );
            assert!(
                !cgroup.dir.join("memwarden-test").exists(),
                "no directory left behind"
            );
        }
    }

    #[test]
    fn real_cgroup_of_this_process_is_readable_when_present() {
        // Integration check on the live system: whatever version it has, figures are sane.
        if let Some(cgroup) = current() {
            assert!(
                cgroup.usage_bytes().is_some(),
                "usage readable in {}",
                cgroup.dir.display()
            );
        } else {
            eprintln!("SKIPPED: no memory cgroup visible on this machine");
        }
    }
}
