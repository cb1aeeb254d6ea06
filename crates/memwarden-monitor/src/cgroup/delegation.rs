//! cgroup v2: making room for the command's cgroup below memwarden's own.
//!
//! A v2 child cgroup gets `memory.*` files only once its parent lists `memory` in
//! `cgroup.subtree_control`, and the kernel refuses that (EBUSY) while the parent holds
//! processes of its own: the "no internal processes" rule. memwarden's cgroup always holds
//! memwarden, so on its own the write fails. What can be done about it:
//!
//! 1. memwarden's cgroup already enables `memory` for its children: nothing to do.
//! 2. The write succeeds (the hierarchy's root is exempt from the rule).
//! 3. memwarden (with children of its own) is the only process there, as the entry point of
//!    a container or alone in a systemd service or scope: it moves into a leaf
//!    `memwarden-supervisor-PID`, enables `memory`, and the command's cgroup becomes the
//!    leaf's sibling. Everything stays inside the cgroup memwarden was started in, so the
//!    limits and kill policies of whoever started it still cover the run.
//! 4. Other processes share the cgroup (the shell that started memwarden): they cannot be
//!    moved, so memwarden asks systemd, where it runs as the cgroup manager, for a transient
//!    scope with `Delegate=yes` holding memwarden alone, then does 1–3 there.
//! 5. Otherwise the refusal names the cgroup, what blocked (memory not delegated, no write
//!    permission, which other processes), why systemd did not help, and what to do.
//!
//! [`restore`] undoes 2 and 3 when the run's cgroup is removed: `memory` is disabled again
//! and memwarden moves back, unless another cgroup below (a concurrent run) still needs it.

use std::io;
use std::path::{Path, PathBuf};

use super::kernel::Kernel;
use super::systemd::ServiceManager;
use super::{Cgroup, CgroupError};
use crate::procfs;

/// The controller the command's cgroup needs.
pub(crate) const MEMORY: &str = "memory";

/// Prefix of the leaf memwarden moves into; the pid follows.
pub(crate) const SUPERVISOR_PREFIX: &str = "memwarden-supervisor-";

/// What memwarden changed so that its cgroup could hold the command's cgroup with the memory
/// controller; [`Cgroup::remove`] undoes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// memwarden's cgroup (or its systemd scope), which now enables the controller for its
    /// children.
    pub parent_dir: PathBuf,
    /// The leaf memwarden and its own children moved into, when they had to move.
    pub supervisor_dir: Option<PathBuf>,
    /// Whether memwarden enabled the controller itself (and so disables it again).
    pub enabled_controller: bool,
    /// The systemd scope memwarden moved itself into first, when it had to.
    pub systemd_scope: Option<String>,
    controller: String,
}

impl Delegation {
    /// One sentence on what memwarden did, for a report; `None` when it changed nothing.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(scope) = &self.systemd_scope {
            parts.push(format!(
                "moved itself into the systemd scope {scope} ({})",
                self.parent_dir.display()
            ));
        }
        if let Some(leaf) = &self.supervisor_dir {
            parts.push(format!(
                "moved itself into the leaf cgroup {}",
                leaf.display()
            ));
        }
        if self.enabled_controller {
            parts.push(format!(
                "enabled the {} controller in {}/cgroup.subtree_control",
                self.controller,
                self.parent_dir.display()
            ));
        }
        (!parts.is_empty()).then(|| {
            format!(
                "cgroup v2: memwarden {} so that the command could have a memory cgroup of its own",
                parts.join(", ")
            )
        })
    }
}

/// What kept memwarden's v2 cgroup from enabling the memory controller for a child.
#[derive(Debug)]
pub enum Blocker {
    /// `memory` is not in the cgroup's `cgroup.controllers`: the parent does not delegate it.
    NotDelegated {
        /// The controllers that are delegated.
        controllers: Vec<String>,
    },
    /// A control file memwarden needed to write refused it (permission, read-only mount).
    NotWritable {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
        /// memwarden's effective user id.
        uid: u32,
    },
    /// Processes other than memwarden and its own children share the cgroup.
    OtherProcesses {
        /// `PID (name)` of each.
        others: Vec<String>,
    },
}

/// The message of [`CgroupError::V2Delegation`]: what blocked, why systemd did not help, and
/// what the user can do.
pub(crate) fn refusal(dir: &Path, blocker: &Blocker, systemd: Option<&str>) -> String {
    let dir = dir.display();
    let systemd = systemd.map_or(String::new(), |why| {
        format!("; no systemd scope either: {why}")
    });
    match blocker {
        Blocker::NotDelegated { controllers } => {
            let listed = if controllers.is_empty() {
                "no controller".to_owned()
            } else {
                controllers.join(" ")
            };
            format!(
                "the memory controller is not delegated to memwarden's cgroup {dir} (its \
                 cgroup.controllers lists {listed}){systemd}. Enable it from above (as root, \
                 `echo +memory > PARENT/cgroup.subtree_control` for each ancestor that lacks \
                 it), or start memwarden in a systemd unit with `Delegate=yes`"
            )
        }
        Blocker::NotWritable { path, source, uid } => format!(
            "memwarden (uid {uid}) cannot write {}: {source}, so its cgroup {dir} is not \
             delegated to it{systemd}. Run memwarden as root, or in a cgroup delegated to its \
             user (`systemd-run --user --scope -p Delegate=yes memwarden run ...`)",
            path.display()
        ),
        Blocker::OtherProcesses { others } => {
            const SHOWN: usize = 5;
            let mut listed = others
                .iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if others.len() > SHOWN {
                listed.push_str(", ...");
            }
            format!(
                "memwarden's cgroup {dir} holds other processes ({}: {listed}), and the kernel \
                 enables the memory controller for child cgroups only in a cgroup without \
                 processes of its own (\"no internal processes\"){systemd}. Start memwarden as \
                 the only process of its cgroup: as the entry point of its container, or in a \
                 systemd service or scope of its own (`systemd-run --scope -p Delegate=yes \
                 memwarden run ...`, with `--user` when not root)",
                others.len()
            )
        }
    }
}

/// The processes delegation looks at: memwarden, its children, and who else is there.
pub(crate) trait Processes {
    /// memwarden's pid.
    fn own_pid(&self) -> i32;
    /// Whether `pid` is memwarden or a descendant of it (they may move with it).
    fn is_ours(&self, pid: i32) -> bool;
    /// `PID (name)`, for messages.
    fn describe(&self, pid: i32) -> String;
    /// Whether `pid` exists.
    fn alive(&self, pid: i32) -> bool;
}

/// This process, read from `/proc`.
pub(crate) struct LiveProcesses {
    own_pid: i32,
}

impl LiveProcesses {
    pub(crate) fn of_this_process() -> LiveProcesses {
        LiveProcesses {
            own_pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
        }
    }
}

impl Processes for LiveProcesses {
    fn own_pid(&self) -> i32 {
        self.own_pid
    }

    fn is_ours(&self, pid: i32) -> bool {
        let mut current = pid;
        // Bounded: a parent chain is short, and a pid reused mid-walk must not loop.
        for _ in 0..64 {
            if current == self.own_pid {
                return true;
            }
            let Some(stat) = procfs::read_text(Path::new(&format!("/proc/{current}/stat")))
                .as_deref()
                .and_then(procfs::parse_stat)
            else {
                return false;
            };
            if stat.ppid <= 1 {
                return false;
            }
            current = stat.ppid;
        }
        false
    }

    fn describe(&self, pid: i32) -> String {
        match procfs::read_text(Path::new(&format!("/proc/{pid}/comm"))) {
            Some(name) => format!("{pid} ({})", name.trim()),
            None => pid.to_string(),
        }
    }

    fn alive(&self, pid: i32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid()
    }
}

fn refused(dir: &Path, blocker: Blocker) -> CgroupError {
    CgroupError::V2Delegation {
        dir: dir.to_owned(),
        blocker,
        systemd: None,
    }
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> CgroupError {
    CgroupError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn is_busy(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EBUSY)
}

fn is_denied(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
    )
}

/// A write memwarden needs refused: a permission problem is a blocker, anything else an
/// I/O error.
fn write_refused(dir: &Path, path: &Path, action: &'static str, source: io::Error) -> CgroupError {
    if is_denied(&source) {
        refused(
            dir,
            Blocker::NotWritable {
                path: path.to_owned(),
                source,
                uid: effective_uid(),
            },
        )
    } else {
        io_error(action, path, source)
    }
}

/// Makes `dir` (memwarden's cgroup) offer `controller` to new child cgroups, moving
/// memwarden and its own children into a leaf when the kernel insists (steps 1–3 of the
/// module documentation). Fails with [`CgroupError::V2Delegation`] when something blocks, and
/// then leaves everything as it was.
pub(crate) fn make_room(
    dir: &Path,
    controller: &str,
    kernel: &dyn Kernel,
    processes: &dyn Processes,
) -> Result<Delegation, CgroupError> {
    let mut delegation = Delegation {
        parent_dir: dir.to_owned(),
        supervisor_dir: None,
        enabled_controller: false,
        systemd_scope: None,
        controller: controller.to_owned(),
    };
    let controllers = kernel.words(&dir.join("cgroup.controllers"));
    if !controllers.iter().any(|c| c == controller) {
        return Err(refused(dir, Blocker::NotDelegated { controllers }));
    }
    let subtree = dir.join("cgroup.subtree_control");
    if kernel.words(&subtree).iter().any(|c| c == controller) {
        return Ok(delegation);
    }
    let enable = format!("+{controller}");
    let action = "cannot enable a controller for child cgroups in";
    match kernel.write(&subtree, &enable) {
        Ok(()) => {
            delegation.enabled_controller = true;
            return Ok(delegation);
        }
        Err(e) if is_busy(&e) => {}
        Err(e) => return Err(write_refused(dir, &subtree, action, e)),
    }

    // EBUSY: processes of its own. Only memwarden's may move.
    let procs = dir.join("cgroup.procs");
    let others = other_processes(kernel.pids(&procs), processes);
    if !others.is_empty() {
        return Err(refused(dir, Blocker::OtherProcesses { others }));
    }
    sweep_stale_leaves(dir, kernel, processes);
    let leaf = dir.join(format!("{SUPERVISOR_PREFIX}{}", processes.own_pid()));
    kernel
        .create_dir(&leaf)
        .map_err(|e| write_refused(dir, &leaf, "cannot create cgroup", e))?;
    let moved = match move_pids(kernel.pids(&procs), &leaf, kernel) {
        Ok(moved) => moved,
        Err((moved, e)) => {
            undo_move(&moved, dir, &leaf, kernel);
            return Err(write_refused(
                dir,
                &leaf.join("cgroup.procs"),
                "cannot move into",
                e,
            ));
        }
    };
    match kernel.write(&subtree, &enable) {
        Ok(()) => {
            delegation.supervisor_dir = Some(leaf);
            delegation.enabled_controller = true;
            Ok(delegation)
        }
        Err(e) => {
            undo_move(&moved, dir, &leaf, kernel);
            // A process that entered between the move and the write is the usual culprit.
            let others = other_processes(kernel.pids(&procs), processes);
            if is_busy(&e) && !others.is_empty() {
                Err(refused(dir, Blocker::OtherProcesses { others }))
            } else {
                Err(write_refused(dir, &subtree, action, e))
            }
        }
    }
}

fn other_processes(pids: Vec<i32>, processes: &dyn Processes) -> Vec<String> {
    pids.into_iter()
        .filter(|&pid| !processes.is_ours(pid))
        .map(|pid| processes.describe(pid))
        .collect()
}

/// Moves each pid into `to`; a pid that exited meanwhile (ESRCH) is skipped. On failure,
/// returns what was moved so far with the error.
fn move_pids(
    pids: Vec<i32>,
    to: &Path,
    kernel: &dyn Kernel,
) -> Result<Vec<i32>, (Vec<i32>, io::Error)> {
    let procs = to.join("cgroup.procs");
    let mut moved = Vec::new();
    for pid in pids {
        match kernel.write(&procs, &pid.to_string()) {
            Ok(()) => moved.push(pid),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err((moved, e)),
        }
    }
    Ok(moved)
}

fn undo_move(moved: &[i32], back_to: &Path, leaf: &Path, kernel: &dyn Kernel) {
    for pid in moved {
        let _ = kernel.write(&back_to.join("cgroup.procs"), &pid.to_string());
    }
    let _ = kernel.remove_dir(leaf);
}

/// Removes leaves of memwarden processes that are gone (a memwarden killed mid-run never
/// restored). A live memwarden's leaf is left alone, and the kernel refuses to remove a
/// cgroup that still holds processes, so a reused pid cannot take a live leaf with it.
fn sweep_stale_leaves(dir: &Path, kernel: &dyn Kernel, processes: &dyn Processes) {
    for child in kernel.child_dirs(dir).unwrap_or_default() {
        let pid = child
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix(SUPERVISOR_PREFIX))
            .and_then(|pid| pid.parse::<i32>().ok());
        if let Some(pid) = pid {
            if pid != processes.own_pid() && !processes.alive(pid) {
                let _ = kernel.remove_dir(&child);
            }
        }
    }
}

/// Undoes [`make_room`] once the run's cgroup is gone: disables the controller memwarden
/// enabled, moves memwarden (and whatever else is in its leaf) back, removes the leaf. When
/// another child cgroup (a concurrent run) still needs the controller, memwarden stays in its
/// leaf and says so.
pub(crate) fn restore(
    delegation: &Delegation,
    kernel: &dyn Kernel,
    processes: &dyn Processes,
) -> Result<(), CgroupError> {
    let parent = &delegation.parent_dir;
    sweep_stale_leaves(parent, kernel, processes);
    let leaf = delegation.supervisor_dir.as_deref();
    let others: Vec<PathBuf> = kernel
        .child_dirs(parent)
        .unwrap_or_default()
        .into_iter()
        .filter(|d| Some(d.as_path()) != leaf)
        .collect();
    let left = |reason: String| CgroupError::LeftDelegated {
        parent: parent.clone(),
        leaf: leaf.unwrap_or(parent).to_owned(),
        reason,
    };
    if !others.is_empty() {
        // Only the leaf needs a word: an enabled controller without it changes nothing for
        // anyone, and taking it away would strip the other cgroups of theirs.
        return match leaf {
            Some(_) => Err(left(format!(
                "other cgroups below it still need the controller: {}",
                others
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            None => Ok(()),
        };
    }
    if delegation.enabled_controller {
        let subtree = parent.join("cgroup.subtree_control");
        if let Err(e) = kernel.write(&subtree, &format!("-{}", delegation.controller)) {
            return match leaf {
                Some(_) => Err(left(format!("cannot write {}: {e}", subtree.display()))),
                None => Ok(()),
            };
        }
    }
    let Some(leaf) = leaf else { return Ok(()) };
    if let Err((_, e)) = move_pids(kernel.pids(&leaf.join("cgroup.procs")), parent, kernel) {
        return Err(left(format!(
            "cannot move back into {}: {e}",
            parent.display()
        )));
    }
    kernel
        .remove_dir(leaf)
        .map_err(|e| left(format!("cannot remove it: {e}")))
}

/// [`Cgroup::create_child`] on v2: makes room in memwarden's cgroup (or in a systemd scope
/// when its own cgroup cannot be used), then creates the command's cgroup there.
pub(crate) fn create_child_v2(
    parent: &Cgroup,
    name: &str,
    limit_bytes: Option<u64>,
    kernel: &dyn Kernel,
    processes: &dyn Processes,
    systemd: &dyn ServiceManager,
) -> Result<Cgroup, CgroupError> {
    let (base, delegation) = match make_room(&parent.dir, MEMORY, kernel, processes) {
        Ok(delegation) => (parent.clone(), delegation),
        Err(CgroupError::V2Delegation { dir, blocker, .. }) => {
            match in_systemd_scope(parent, kernel, processes, systemd) {
                Ok(found) => found,
                Err(why) => {
                    return Err(CgroupError::V2Delegation {
                        dir,
                        blocker,
                        systemd: Some(why),
                    })
                }
            }
        }
        Err(e) => return Err(e),
    };
    match base.make_child(name, limit_bytes, kernel) {
        Ok(mut child) => {
            child.delegation = Some(delegation);
            Ok(child)
        }
        Err(e) => {
            let _ = restore(&delegation, kernel, processes);
            Err(e)
        }
    }
}

/// Moves memwarden and its own children into a new systemd scope with `Delegate=yes` and
/// makes room there. The error says why this did not work, as a clause.
fn in_systemd_scope(
    parent: &Cgroup,
    kernel: &dyn Kernel,
    processes: &dyn Processes,
    systemd: &dyn ServiceManager,
) -> Result<(Cgroup, Delegation), String> {
    if let Some(why) = systemd.unavailable() {
        return Err(why);
    }
    let own = processes.own_pid();
    let mut pids: Vec<i32> = kernel
        .pids(&parent.dir.join("cgroup.procs"))
        .into_iter()
        .filter(|&pid| processes.is_ours(pid))
        .collect();
    if !pids.contains(&own) {
        pids.insert(0, own);
    }
    let unit = format!("memwarden-{own}.scope");
    let scope = systemd.move_into_scope(&unit, &pids, parent)?;
    match make_room(&scope.dir, MEMORY, kernel, processes) {
        Ok(mut delegation) => {
            delegation.systemd_scope = Some(unit);
            Ok((scope, delegation))
        }
        Err(e) => Err(format!(
            "memwarden moved itself into the systemd scope {unit}, and it was refused there \
             too ({e}); it stays in that scope until it exits"
        )),
    }
}
