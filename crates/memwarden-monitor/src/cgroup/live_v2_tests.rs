//! cgroup v2 delegation against the running kernel, where the machine allows it.
//!
//! What cannot be tested live on the development machine: there the memory controller is
//! bound to cgroup v1, and the v2 hierarchy (`/sys/fs/cgroup/unified`) offers no `memory`,
//! so no v2 memory cgroup can be created, and no end-to-end `memwarden run --hard-limit` on
//! v2 can run; systemd does not run there either, so the scope path is covered only by the
//! fakes in `delegation_tests.rs`. What can be tested is the mechanism: the kernel's
//! "no internal processes" rule applies to every domain controller, so these tests run the
//! same [`make_room`]/[`restore`] code with a domain controller the v2 hierarchy does offer
//! (`memory` when present, else `io`, `hugetlb`, `rdma` or `misc`), on `sleep` processes
//! standing in for memwarden and for a shell beside it. They need root and a writable v2
//! mount, and say SKIPPED when the machine has neither (a failure under scripts/test.sh,
//! which sets `MEMWARDEN_TEST_REQUIRE_ALL=1`). When the hierarchy's root does not
//! enable that controller for its children, a test enables it for its own duration and
//! disables it again (the tests take turns for this).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::delegation::{make_room, restore, LiveProcesses, Processes};
use super::kernel::{Kernel, LiveKernel};
use super::mounts::parse_mounts;
use super::{Blocker, CgroupError, Version};

/// Domain controllers: threaded ones (cpu, pids, cpuset) are exempt from the rule.
const DOMAIN_CONTROLLERS: [&str; 5] = ["memory", "io", "hugetlb", "rdma", "misc"];

/// The live tests take turns: one may enable a controller at the hierarchy's root, and
/// another must not disable it under it. A file lock, not a mutex: test runners such as
/// nextest run each test in a process of its own.
fn take_turn() -> fs::File {
    let path = std::env::temp_dir().join("memwarden-live-v2-tests.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("the tests' lock file");
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}", path.display());
    file
}

/// A test cgroup at the top of the live v2 hierarchy, with `sleep`s in it; everything is
/// killed and removed, and the root's `cgroup.subtree_control` restored, on drop.
struct Sandbox {
    dir: PathBuf,
    controller: String,
    sleepers: Vec<Child>,
    /// The root whose `cgroup.subtree_control` the sandbox enabled the controller in.
    enabled_at_root: Option<PathBuf>,
    _turn: fs::File,
}

impl Sandbox {
    fn new(test: &str) -> Option<Sandbox> {
        let skip = |why: String| {
            super::tests::skip(&format!("live_v2 {test}"), &why);
            None
        };
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let Some(mount) = parse_mounts(&mountinfo)
            .into_iter()
            .find(|m| m.version == Version::V2 && m.root == "/")
        else {
            return skip("no cgroup v2 hierarchy is mounted".to_owned());
        };
        let offered = LiveKernel.words(&mount.mount_point.join("cgroup.controllers"));
        let Some(controller) = DOMAIN_CONTROLLERS
            .iter()
            .find(|c| offered.iter().any(|o| o == *c))
        else {
            return skip(format!(
                "the v2 hierarchy at {} offers no domain controller (it offers: {offered:?})",
                mount.mount_point.display()
            ));
        };
        let turn = take_turn();
        let root_subtree = mount.mount_point.join("cgroup.subtree_control");
        let enabled_at_root = if LiveKernel
            .words(&root_subtree)
            .iter()
            .any(|c| c == controller)
        {
            None
        } else if let Err(e) = LiveKernel.write(&root_subtree, &format!("+{controller}")) {
            return skip(format!(
                "cannot enable {controller} in {} ({e}): needs root and a writable cgroup v2 mount",
                root_subtree.display()
            ));
        } else {
            Some(mount.mount_point.clone())
        };
        let dir = mount
            .mount_point
            .join(format!("memwarden-livetest-{}-{test}", std::process::id()));
        let sandbox = Sandbox {
            dir: dir.clone(),
            controller: (*controller).to_owned(),
            sleepers: Vec::new(),
            enabled_at_root,
            _turn: turn,
        };
        if let Err(e) = LiveKernel.create_dir(&dir) {
            return skip(format!(
                "cannot create {} ({e}): needs root and a writable cgroup v2 mount",
                dir.display()
            ));
        }
        Some(sandbox)
    }

    /// A new `sleep` inside the sandbox's cgroup.
    fn sleeper(&mut self) -> i32 {
        let child = Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        self.sleepers.push(child);
        LiveKernel
            .write(&self.dir.join("cgroup.procs"), &pid.to_string())
            .expect("move sleep into the test cgroup");
        pid
    }

    fn pids(&self, dir: &Path) -> Vec<i32> {
        LiveKernel.pids(&dir.join("cgroup.procs"))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for child in &mut self.sleepers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for child in LiveKernel.child_dirs(&self.dir).unwrap_or_default() {
            let _ = LiveKernel.remove_dir(&child);
        }
        let _ = LiveKernel.remove_dir(&self.dir);
        if let Some(root) = &self.enabled_at_root {
            let _ = LiveKernel.write(
                &root.join("cgroup.subtree_control"),
                &format!("-{}", self.controller),
            );
        }
    }
}

/// `sleep` processes standing in for memwarden (`own`) and its children.
struct Stand {
    own: i32,
    ours: Vec<i32>,
}

impl Processes for Stand {
    fn own_pid(&self) -> i32 {
        self.own
    }
    fn is_ours(&self, pid: i32) -> bool {
        self.ours.contains(&pid)
    }
    fn describe(&self, pid: i32) -> String {
        LiveProcesses::of_this_process().describe(pid)
    }
    fn alive(&self, pid: i32) -> bool {
        LiveProcesses::of_this_process().alive(pid)
    }
}

#[test]
fn live_v2_a_lone_process_moves_into_a_leaf_and_its_cgroup_enables_the_controller() {
    let Some(mut sandbox) = Sandbox::new("leaf") else {
        return;
    };
    let stand_in = sandbox.sleeper();
    let subtree = sandbox.dir.join("cgroup.subtree_control");
    let enable = format!("+{}", sandbox.controller);

    // The rule the delegation exists for, as this kernel applies it.
    let refused = LiveKernel
        .write(&subtree, &enable)
        .expect_err("no internal processes");
    assert_eq!(refused.raw_os_error(), Some(libc::EBUSY), "{refused}");

    let processes = Stand {
        own: stand_in,
        ours: vec![stand_in],
    };
    let delegation =
        make_room(&sandbox.dir, &sandbox.controller, &LiveKernel, &processes).expect("delegated");
    let leaf = sandbox.dir.join(format!("memwarden-supervisor-{stand_in}"));
    assert_eq!(delegation.supervisor_dir.as_deref(), Some(leaf.as_path()));
    assert_eq!(sandbox.pids(&leaf), [stand_in]);
    assert!(sandbox.pids(&sandbox.dir).is_empty());
    assert!(LiveKernel.words(&subtree).contains(&sandbox.controller));

    // The other half of the rule: the cgroup now refuses processes.
    let refused = LiveKernel
        .write(&sandbox.dir.join("cgroup.procs"), &stand_in.to_string())
        .expect_err("no processes beside child cgroups with controllers");
    assert_eq!(refused.raw_os_error(), Some(libc::EBUSY), "{refused}");

    // The command's cgroup, beside the leaf, gets the controller.
    let run = sandbox.dir.join("memwarden-run");
    LiveKernel.create_dir(&run).expect("the run's cgroup");
    assert!(
        LiveKernel
            .words(&run.join("cgroup.controllers"))
            .contains(&sandbox.controller),
        "{:?}",
        LiveKernel.read(&run.join("cgroup.controllers"))
    );
    LiveKernel.remove_dir(&run).expect("rmdir");

    restore(&delegation, &LiveKernel, &processes).expect("restored");
    assert_eq!(sandbox.pids(&sandbox.dir), [stand_in]);
    assert!(LiveKernel.words(&subtree).is_empty());
    assert!(!leaf.exists());
}

#[test]
fn live_v2_another_process_in_the_cgroup_is_named_and_nothing_changes() {
    let Some(mut sandbox) = Sandbox::new("shared") else {
        return;
    };
    let stranger = sandbox.sleeper();
    let stand_in = sandbox.sleeper();
    let processes = Stand {
        own: stand_in,
        ours: vec![stand_in],
    };
    let err = make_room(&sandbox.dir, &sandbox.controller, &LiveKernel, &processes)
        .expect_err("the stranger cannot be moved");
    assert!(
        matches!(&err, CgroupError::V2Delegation { blocker: Blocker::OtherProcesses { others }, .. }
            if others == &[format!("{stranger} (sleep)")]),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("holds other processes (1: "),
        "{err}"
    );
    let mut pids = sandbox.pids(&sandbox.dir);
    pids.sort_unstable();
    let mut expected = vec![stranger, stand_in];
    expected.sort_unstable();
    assert_eq!(pids, expected);
    assert!(LiveKernel
        .words(&sandbox.dir.join("cgroup.subtree_control"))
        .is_empty());
    assert!(LiveKernel.child_dirs(&sandbox.dir).expect("ls").is_empty());
}
