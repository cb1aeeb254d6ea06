//! Test-only: a fake cgroup v2 kernel over a fixture directory, and fake processes and
//! systemd to go with it.
//!
//! Plain files cannot say EBUSY, so [`FakeKernel`] models, explicitly, the rules of the
//! kernel that delegation depends on (cgroup-v2.rst, "Top-down constraint" and "No internal
//! process constraint"), and nothing more:
//!
//! - a cgroup is a directory with `cgroup.procs`, `cgroup.controllers` and
//!   `cgroup.subtree_control`; a new one gets its parent's `subtree_control` as its
//!   `cgroup.controllers`, plus the `memory.*` files when `memory` is among them;
//! - `+c` in `cgroup.subtree_control` needs `c` in the cgroup's own `cgroup.controllers`
//!   (else ENOENT) and, except at the root, no processes in it (else EBUSY); children then
//!   get `c`; `-c` fails with EBUSY while a child enables `c` for its own children;
//! - a pid written to `cgroup.procs` leaves whichever cgroup held it; a non-root cgroup
//!   that enables controllers for its children refuses processes (EBUSY); an unknown pid is
//!   ESRCH;
//! - `rmdir` of a cgroup with processes or children is EBUSY;
//! - writes under a path marked read-only are EACCES (a cgroup not delegated to the user).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::delegation::Processes;
use super::kernel::Kernel;
use super::systemd::ServiceManager;
use super::{Cgroup, Version};

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// A v2 hierarchy mounted at `root` (a temporary directory).
pub(crate) struct FakeKernel {
    pub(crate) root: PathBuf,
    denied: RefCell<BTreeSet<PathBuf>>,
    /// A pid that enters `(cgroup)` right after the first process moves into a leaf, to
    /// model another process joining memwarden's cgroup mid-delegation.
    intruder: RefCell<Option<(PathBuf, i32)>>,
}

impl FakeKernel {
    /// The root cgroup with `controllers` available and enabled for its children.
    pub(crate) fn new(root: &Path, controllers: &str) -> FakeKernel {
        for (file, text) in [
            ("cgroup.procs", ""),
            ("cgroup.controllers", controllers),
            ("cgroup.subtree_control", controllers),
        ] {
            fs::write(root.join(file), text).expect("fixture root");
        }
        FakeKernel {
            root: root.to_owned(),
            denied: RefCell::new(BTreeSet::new()),
            intruder: RefCell::new(None),
        }
    }

    /// Creates the cgroup `relative` (and missing ancestors) holding `pids`, with `subtree`
    /// enabled for its children; ancestors enable what their parent offers.
    pub(crate) fn cgroup(&self, relative: &str, pids: &[i32], subtree: &str) -> PathBuf {
        let mut dir = self.root.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            dir = dir.join(part);
            if !dir.exists() {
                self.create_dir(&dir).expect("fixture cgroup");
                let offered = self.words(&dir.join("cgroup.controllers")).join(" ");
                fs::write(dir.join("cgroup.subtree_control"), offered).expect("subtree");
                self.sync_children(&dir);
            }
        }
        fs::write(dir.join("cgroup.subtree_control"), subtree).expect("subtree");
        self.sync_children(&dir);
        let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
        fs::write(dir.join("cgroup.procs"), text).expect("procs");
        dir
    }

    /// Makes every write under `dir` fail with EACCES.
    pub(crate) fn deny_writes_under(&self, dir: &Path) {
        self.denied.borrow_mut().insert(dir.to_owned());
    }

    /// After the first successful move into a `memwarden-supervisor-*` leaf, `pid` appears
    /// in `cgroup`.
    pub(crate) fn intrude_after_first_move(&self, cgroup: &Path, pid: i32) {
        *self.intruder.borrow_mut() = Some((cgroup.to_owned(), pid));
    }

    fn is_denied(&self, path: &Path) -> bool {
        self.denied.borrow().iter().any(|d| path.starts_with(d))
    }

    fn all_cgroups(&self) -> Vec<PathBuf> {
        let mut found = vec![self.root.clone()];
        let mut i = 0;
        while i < found.len() {
            found.extend(self.child_dirs(&found[i]).unwrap_or_default());
            i += 1;
        }
        found
    }

    /// Gives each child of `dir` the controllers `dir` enables, with their files.
    fn sync_children(&self, dir: &Path) {
        let enabled = self.words(&dir.join("cgroup.subtree_control"));
        for child in self.child_dirs(dir).unwrap_or_default() {
            fs::write(child.join("cgroup.controllers"), enabled.join(" ")).expect("controllers");
            let memory_files = [
                ("memory.max", "max\n"),
                ("memory.swap.max", "max\n"),
                ("memory.current", "0\n"),
                ("memory.peak", "0\n"),
                ("memory.events", "oom 0\noom_kill 0\n"),
            ];
            for (file, text) in memory_files {
                let path = child.join(file);
                if enabled.iter().any(|c| c == "memory") {
                    if !path.exists() {
                        fs::write(path, text).expect("memory file");
                    }
                } else {
                    let _ = fs::remove_file(path);
                }
            }
        }
    }

    fn write_subtree_control(&self, dir: &Path, value: &str) -> io::Result<()> {
        let mut enabled = self.words(&dir.join("cgroup.subtree_control"));
        for token in value.split_ascii_whitespace() {
            let (sign, controller) = token.split_at(1);
            match sign {
                "+" => {
                    if !self
                        .words(&dir.join("cgroup.controllers"))
                        .iter()
                        .any(|c| c == controller)
                    {
                        return Err(errno(libc::ENOENT));
                    }
                    if *dir != self.root && !self.pids(&dir.join("cgroup.procs")).is_empty() {
                        return Err(errno(libc::EBUSY));
                    }
                    if !enabled.iter().any(|c| c == controller) {
                        enabled.push(controller.to_owned());
                    }
                }
                "-" => {
                    for child in self.child_dirs(dir)? {
                        let theirs = self.words(&child.join("cgroup.subtree_control"));
                        if theirs.iter().any(|c| c == controller) {
                            return Err(errno(libc::EBUSY));
                        }
                    }
                    enabled.retain(|c| c != controller);
                }
                _ => return Err(errno(libc::EINVAL)),
            }
        }
        fs::write(dir.join("cgroup.subtree_control"), enabled.join(" "))?;
        self.sync_children(dir);
        Ok(())
    }

    fn write_procs(&self, dir: &Path, value: &str) -> io::Result<()> {
        let pid: i32 = value.trim().parse().map_err(|_| errno(libc::EINVAL))?;
        if *dir != self.root && !self.words(&dir.join("cgroup.subtree_control")).is_empty() {
            return Err(errno(libc::EBUSY));
        }
        let holder = self
            .all_cgroups()
            .into_iter()
            .find(|c| self.pids(&c.join("cgroup.procs")).contains(&pid))
            .ok_or_else(|| errno(libc::ESRCH))?;
        let remaining: String = self
            .pids(&holder.join("cgroup.procs"))
            .into_iter()
            .filter(|&p| p != pid)
            .map(|p| format!("{p}\n"))
            .collect();
        fs::write(holder.join("cgroup.procs"), remaining)?;
        let mut text = fs::read_to_string(dir.join("cgroup.procs"))?;
        text.push_str(&format!("{pid}\n"));
        fs::write(dir.join("cgroup.procs"), text)?;
        let is_leaf = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(super::delegation::SUPERVISOR_PREFIX));
        if is_leaf {
            if let Some((cgroup, intruder)) = self.intruder.borrow_mut().take() {
                let mut text = fs::read_to_string(cgroup.join("cgroup.procs"))?;
                text.push_str(&format!("{intruder}\n"));
                fs::write(cgroup.join("cgroup.procs"), text)?;
            }
        }
        Ok(())
    }
}

impl Kernel for FakeKernel {
    fn read(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        if self.is_denied(path) {
            return Err(errno(libc::EACCES));
        }
        let dir = path.parent().ok_or_else(|| errno(libc::EINVAL))?;
        match path.file_name().and_then(|n| n.to_str()) {
            Some("cgroup.subtree_control") => self.write_subtree_control(dir, value),
            Some("cgroup.procs") => self.write_procs(dir, value),
            // Control files exist or do not; writing never creates one.
            _ if path.is_file() => fs::write(path, value),
            _ => Err(errno(libc::ENOENT)),
        }
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        if self.is_denied(path) {
            return Err(errno(libc::EACCES));
        }
        let parent = path.parent().ok_or_else(|| errno(libc::EINVAL))?;
        fs::create_dir(path)?;
        fs::write(path.join("cgroup.procs"), "")?;
        fs::write(path.join("cgroup.subtree_control"), "")?;
        self.sync_children(parent);
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        if self.is_denied(path) {
            return Err(errno(libc::EACCES));
        }
        if !path.is_dir() {
            return Err(errno(libc::ENOENT));
        }
        if !self.pids(&path.join("cgroup.procs")).is_empty() || !self.child_dirs(path)?.is_empty() {
            return Err(errno(libc::EBUSY));
        }
        fs::remove_dir_all(path)
    }

    fn child_dirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        dirs.sort();
        Ok(dirs)
    }
}

/// memwarden as pid `own`, with `ours` as its children, and names for other pids.
pub(crate) struct FakeProcesses {
    pub(crate) own: i32,
    pub(crate) ours: BTreeSet<i32>,
    pub(crate) names: BTreeMap<i32, &'static str>,
    pub(crate) dead: BTreeSet<i32>,
}

impl FakeProcesses {
    pub(crate) fn memwarden(own: i32) -> FakeProcesses {
        FakeProcesses {
            own,
            ours: BTreeSet::from([own]),
            names: BTreeMap::from([(own, "memwarden")]),
            dead: BTreeSet::new(),
        }
    }
}

impl Processes for FakeProcesses {
    fn own_pid(&self) -> i32 {
        self.own
    }

    fn is_ours(&self, pid: i32) -> bool {
        self.ours.contains(&pid)
    }

    fn describe(&self, pid: i32) -> String {
        match self.names.get(&pid) {
            Some(name) => format!("{pid} ({name})"),
            None => pid.to_string(),
        }
    }

    fn alive(&self, pid: i32) -> bool {
        !self.dead.contains(&pid)
    }
}

/// systemd as the tests need it: absent, refusing, or creating scopes under `slice`.
pub(crate) enum FakeSystemd<'k> {
    /// `unavailable()` says this.
    Absent(&'static str),
    /// `move_into_scope` fails with this.
    Refuses(&'static str),
    /// Scopes are created in the fake kernel under this slice (relative to the root).
    Creates {
        kernel: &'k FakeKernel,
        slice: &'static str,
        requests: RefCell<Vec<(String, Vec<i32>)>>,
    },
}

impl ServiceManager for FakeSystemd<'_> {
    fn unavailable(&self) -> Option<String> {
        match self {
            FakeSystemd::Absent(why) => Some((*why).to_owned()),
            _ => None,
        }
    }

    fn move_into_scope(&self, unit: &str, pids: &[i32], from: &Cgroup) -> Result<Cgroup, String> {
        match self {
            FakeSystemd::Absent(why) => Err((*why).to_owned()),
            FakeSystemd::Refuses(why) => Err((*why).to_owned()),
            FakeSystemd::Creates {
                kernel,
                slice,
                requests,
            } => {
                requests.borrow_mut().push((unit.to_owned(), pids.to_vec()));
                // Delegate=yes: the scope gets what the slice offers, and nothing enabled.
                let path = format!("{slice}/{unit}");
                let dir = kernel.cgroup(&path, &[], "");
                for pid in pids {
                    kernel
                        .write(&dir.join("cgroup.procs"), &pid.to_string())
                        .map_err(|e| format!("fake systemd cannot move {pid}: {e}"))?;
                }
                Ok(Cgroup {
                    version: Version::V2,
                    dir,
                    path: format!("/{path}"),
                    mount_point: from.mount_point.clone(),
                    delegation: None,
                })
            }
        }
    }
}
