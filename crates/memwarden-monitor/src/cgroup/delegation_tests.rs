//! cgroup v2 delegation against the fake kernel of `fake_kernel.rs`, which models the
//! kernel's EBUSY rules explicitly (plain files alone would accept every write). What these
//! tests establish is memwarden's logic; `live_v2_tests.rs` checks the rules themselves
//! against this machine's kernel.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::delegation::{self, create_child_v2, restore, MEMORY};
use super::fake_kernel::{FakeKernel, FakeProcesses, FakeSystemd};
use super::kernel::Kernel;
use super::systemd::{scope_request, unit_to_follow};
use super::{Blocker, Cgroup, CgroupError, Version};

const OWN: i32 = 100;
const NO_SYSTEMD: FakeSystemd<'static> =
    FakeSystemd::Absent("systemd is not running here (no /run/systemd/system)");

fn hierarchy() -> (tempfile::TempDir, FakeKernel) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kernel = FakeKernel::new(tmp.path(), "cpu io memory pids");
    (tmp, kernel)
}

/// memwarden's cgroup at `relative`, holding `pids`.
fn memwardens_cgroup(kernel: &FakeKernel, relative: &str, pids: &[i32]) -> Cgroup {
    let dir = kernel.cgroup(relative, pids, "");
    Cgroup {
        version: Version::V2,
        dir,
        path: format!("/{relative}"),
        mount_point: kernel.root.clone(),
        delegation: None,
    }
}

fn words(kernel: &FakeKernel, path: &Path) -> Vec<String> {
    kernel.words(path)
}

fn children(kernel: &FakeKernel, dir: &Path) -> Vec<String> {
    kernel
        .child_dirs(dir)
        .expect("list")
        .iter()
        .map(|d| d.file_name().expect("name").to_string_lossy().into_owned())
        .collect()
}

/// The cgroup as memwarden found it: its processes, nothing enabled, no children.
fn assert_untouched(kernel: &FakeKernel, dir: &Path, pids: &[i32]) {
    assert_eq!(kernel.pids(&dir.join("cgroup.procs")), pids);
    assert!(words(kernel, &dir.join("cgroup.subtree_control")).is_empty());
    assert!(
        children(kernel, dir).is_empty(),
        "{:?}",
        children(kernel, dir)
    );
}

#[test]
fn alone_in_its_cgroup_memwarden_moves_into_a_leaf_and_the_command_gets_memory_max() {
    let (_tmp, kernel) = hierarchy();
    let own = memwardens_cgroup(&kernel, "container", &[OWN]);
    let processes = FakeProcesses::memwarden(OWN);
    let run = create_child_v2(
        &own,
        "memwarden-100",
        Some(1 << 30),
        &kernel,
        &processes,
        &NO_SYSTEMD,
    )
    .expect("delegated");

    let leaf = own.dir.join("memwarden-supervisor-100");
    assert_eq!(run.dir, own.dir.join("memwarden-100"));
    assert_eq!(run.path, "/container/memwarden-100");
    assert_eq!(kernel.pids(&leaf.join("cgroup.procs")), [OWN]);
    assert!(kernel.pids(&own.dir.join("cgroup.procs")).is_empty());
    assert_eq!(
        words(&kernel, &own.dir.join("cgroup.subtree_control")),
        [MEMORY]
    );
    assert_eq!(
        fs::read_to_string(run.dir.join("memory.max")).expect("max"),
        "1073741824"
    );
    assert_eq!(
        fs::read_to_string(run.dir.join("memory.swap.max")).expect("swap"),
        "0"
    );
    let delegation = run.delegation().expect("recorded");
    assert_eq!(delegation.supervisor_dir.as_deref(), Some(leaf.as_path()));
    assert!(delegation.enabled_controller);
    let note = delegation.describe().expect("something was done");
    assert!(
        note.contains("memwarden-supervisor-100") && note.contains("memory"),
        "{note}"
    );

    run.remove_with(&own, &kernel, &processes)
        .expect("removed and restored");
    assert_untouched(&kernel, &own.dir, &[OWN]);
}

#[test]
fn memwarden_takes_its_own_children_along_and_brings_them_back() {
    let (_tmp, kernel) = hierarchy();
    let own = memwardens_cgroup(&kernel, "system.slice/train.service", &[OWN, 101]);
    let mut processes = FakeProcesses::memwarden(OWN);
    processes.ours.insert(101);
    let run = create_child_v2(
        &own,
        "memwarden-100",
        None,
        &kernel,
        &processes,
        &NO_SYSTEMD,
    )
    .expect("delegated");
    let leaf = own.dir.join("memwarden-supervisor-100");
    assert_eq!(kernel.pids(&leaf.join("cgroup.procs")), [OWN, 101]);
    assert_eq!(
        fs::read_to_string(run.dir.join("memory.max")).expect("max"),
        "max\n"
    );
    run.remove_with(&own, &kernel, &processes)
        .expect("restored");
    assert_untouched(&kernel, &own.dir, &[OWN, 101]);
}

#[test]
fn what_the_command_left_behind_joins_memwarden_in_its_leaf_then_moves_back() {
    // The parent enables memory for its children, so the kernel refuses processes there:
    // leftovers of the command must go to the leaf, or the run's cgroup cannot be removed.
    let (_tmp, kernel) = hierarchy();
    let own = memwardens_cgroup(&kernel, "container", &[OWN]);
    let mut processes = FakeProcesses::memwarden(OWN);
    let run = create_child_v2(
        &own,
        "memwarden-100",
        None,
        &kernel,
        &processes,
        &NO_SYSTEMD,
    )
    .expect("delegated");
    kernel.cgroup("daemon-source", &[300], "");
    kernel
        .write(&run.dir.join("cgroup.procs"), "300")
        .expect("a daemon of the command");
    processes.ours.insert(300);
    run.remove_with(&own, &kernel, &processes).expect("removed");
    assert!(!run.dir.exists());
    assert_untouched(&kernel, &own.dir, &[OWN, 300]);
}

#[test]
fn other_processes_in_the_cgroup_are_named_and_nothing_changes() {
    let (_tmp, kernel) = hierarchy();
    let own = memwardens_cgroup(
        &kernel,
        "user.slice/user-1000.slice/session-3.scope",
        &[42, OWN],
    );
    let mut processes = FakeProcesses::memwarden(OWN);
    processes.names.insert(42, "bash");
    let err = create_child_v2(
        &own,
        "memwarden-100",
        Some(1 << 30),
        &kernel,
        &processes,
        &NO_SYSTEMD,
    )
    .expect_err("the shell cannot be moved");
    assert!(
        matches!(&err, CgroupError::V2Delegation { blocker: Blocker::OtherProcesses { others }, .. } if others == &["42 (bash)"]),
        "{err:?}"
    );
    let message = err.to_string();
    for part in [
        "cgroup v2: memwarden's cgroup",
        "session-3.scope holds other processes (1: 42 (bash))",
        "no internal processes",
        "no systemd scope either: systemd is not running here",
        "systemd-run --scope -p Delegate=yes",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    assert_untouched(&kernel, &own.dir, &[42, OWN]);
}

#[test]
fn memory_not_delegated_names_the_controllers_that_are() {
    let (_tmp, kernel) = hierarchy();
    kernel.cgroup("kubepods", &[], "cpu pids");
    let own = memwardens_cgroup(&kernel, "kubepods/pod7", &[OWN]);
    let processes = FakeProcesses::memwarden(OWN);
    let err = create_child_v2(
        &own,
        "memwarden-100",
        None,
        &kernel,
        &processes,
        &NO_SYSTEMD,
    )
    .expect_err("no memory here");
    let message = err.to_string();
    assert!(
        message.contains("memory controller is not delegated to memwarden's cgroup")
            && message.contains("pod7 (its cgroup.controllers lists cpu pids)")
            && message.contains("Delegate=yes"),
        "{message}"
    );
    assert_untouched(&kernel, &own.dir, &[OWN]);
}

#[test]
fn no_write_permission_names_the_file_and_the_user() {
    let (_tmp, kernel) = hierarchy();
    let own = memwardens_cgroup(
        &kernel,
        "user.slice/user-1000.slice/session-3.scope",
        &[OWN],
    );
    kernel.deny_writes_under(&own.dir);
    let processes = FakeProcesses::memwarden(OWN);
    let err = create_child_v2(
        &own,
        "memwarden-100",
        None,
        &kernel,
        &processes,
        &NO_SYSTEMD,
    )
    .expect_err("not ours to write");
    let message = err.to_string();
    assert!(
        message.contains("cannot write")
            && message.contains("session-3.scope/cgroup.subtree_control")
            && message.contains("is not delegated to it")
            && message.contains("(uid "),
        "{message}"
    );
    assert_untouched(&kernel, &own.dir, &[OWN]);
}

#[test]
fn a_cgroup_that_already_enables_memory_is_used_as_is() {
    // The hierarchy's root is exempt from the rule: memwarden may sit there with memory
    // enabled for children (as in a container without a cgroup namespace of its own).
    let (_tmp, kernel) = hierarchy();
    fs::write(kernel.root.join("cgroup.procs"), "1\n100\n").expect("init and memwarden");
    let own = Cgroup {
        version: Version::V2,
        dir: kernel.root.clone(),
        path: "/".to_owned(),
        mount_point: kernel.root.clone(),
        delegation: None,
    };
    let processes = FakeProcesses::memwarden(OWN);
    let run = create_child_v2(
        &own,
        "memwarden-100",
        None,
        &kernel,
        &processes,
        &NO_SYSTEMD,
    )
    .expect("nothing to do");
    assert_eq!(run.path, "/memwarden-100");
    assert_eq!(run.delegation().and_then(|d| d.describe()), None);
    run.remove_with(&own, &kernel, &processes).expect("removed");
    assert_eq!(
        words(&kernel, &kernel.root.join("cgroup.subtree_control")).len(),
        4
    );
}

#[test]
fn a_process_entering_mid_move_is_named_and_the_move_undone() {
    let (_tmp, kernel) = hierarchy();
    let own = memwardens_cgroup(&kernel, "container", &[OWN]);
    kernel.intrude_after_first_move(&own.dir, 77);
    let mut processes = FakeProcesses::memwarden(OWN);
    processes.names.insert(77, "sh");
    let err = create_child_v2(
        &own,
        "memwarden-100",
        None,
        &kernel,
        &processes,
        &NO_SYSTEMD,
    )
    .expect_err("someone came in");
    assert!(
        err.to_string().contains("other processes (1: 77 (sh))"),
        "{err}"
    );
    assert_untouched(&kernel, &own.dir, &[77, OWN]);
}

#[test]
fn systemd_scope_when_the_cgroup_is_shared() {
    let (_tmp, kernel) = hierarchy();
    kernel.cgroup(
        "user.slice/user-1000.slice/user@1000.service/app.slice",
        &[],
        "memory",
    );
    let own = memwardens_cgroup(
        &kernel,
        "user.slice/user-1000.slice/session-3.scope",
        &[42, OWN],
    );
    let processes = FakeProcesses::memwarden(OWN);
    let systemd = FakeSystemd::Creates {
        kernel: &kernel,
        slice: "user.slice/user-1000.slice/user@1000.service/app.slice",
        requests: RefCell::new(Vec::new()),
    };
    let run = create_child_v2(
        &own,
        "memwarden-100",
        Some(1 << 30),
        &kernel,
        &processes,
        &systemd,
    )
    .expect("a scope of its own");
    let scope = kernel
        .root
        .join("user.slice/user-1000.slice/user@1000.service/app.slice/memwarden-100.scope");
    assert_eq!(run.dir, scope.join("memwarden-100"));
    assert_eq!(
        run.path,
        "/user.slice/user-1000.slice/user@1000.service/app.slice/memwarden-100.scope/memwarden-100"
    );
    assert_eq!(
        kernel.pids(&scope.join("memwarden-supervisor-100/cgroup.procs")),
        [OWN]
    );
    assert_eq!(
        kernel.pids(&own.dir.join("cgroup.procs")),
        [42],
        "the shell stays"
    );
    let FakeSystemd::Creates { requests, .. } = &systemd else {
        unreachable!()
    };
    assert_eq!(
        *requests.borrow(),
        [("memwarden-100.scope".to_owned(), vec![OWN])]
    );
    let delegation = run.delegation().expect("recorded");
    assert_eq!(
        delegation.systemd_scope.as_deref(),
        Some("memwarden-100.scope")
    );

    run.remove_with(&own, &kernel, &processes)
        .expect("restored inside the scope");
    assert_untouched(&kernel, &scope, &[OWN]);
}

#[test]
fn systemd_refusing_is_part_of_the_reason() {
    let (_tmp, kernel) = hierarchy();
    let own = memwardens_cgroup(&kernel, "system.slice/ci-runner.service", &[42, OWN]);
    let processes = FakeProcesses::memwarden(OWN);
    let systemd = FakeSystemd::Refuses(
        "systemd refused the transient scope memwarden-100.scope: Access denied",
    );
    let err = create_child_v2(&own, "memwarden-100", None, &kernel, &processes, &systemd)
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("holds other processes (1: 42)")
            && message.contains("no systemd scope either: systemd refused the transient scope memwarden-100.scope: Access denied"),
        "{message}"
    );
    assert_untouched(&kernel, &own.dir, &[42, OWN]);
}

#[test]
fn a_concurrent_run_keeps_the_controller_enabled_and_memwarden_says_where_it_stays() {
    let (_tmp, kernel) = hierarchy();
    let own = memwardens_cgroup(&kernel, "container", &[OWN]);
    let processes = FakeProcesses::memwarden(OWN);
    let run = create_child_v2(
        &own,
        "memwarden-100",
        None,
        &kernel,
        &processes,
        &NO_SYSTEMD,
    )
    .expect("delegated");
    let other_run = own.dir.join("memwarden-200");
    kernel
        .create_dir(&other_run)
        .expect("a concurrent run's cgroup");

    let err = run
        .remove_with(&own, &kernel, &processes)
        .expect_err("cannot restore yet");
    let message = err.to_string();
    assert!(
        message.contains("stays in")
            && message.contains("memwarden-supervisor-100")
            && message.contains("memwarden-200"),
        "{message}"
    );
    assert!(
        !run.dir.exists(),
        "the run's own cgroup is gone all the same"
    );
    assert!(
        fs::read_to_string(other_run.join("memory.max")).is_ok(),
        "the other run keeps memory"
    );
}

#[test]
fn leaves_of_dead_memwardens_are_swept_and_live_ones_kept() {
    let (_tmp, kernel) = hierarchy();
    let own = memwardens_cgroup(&kernel, "container", &[OWN]);
    kernel
        .create_dir(&own.dir.join("memwarden-supervisor-7"))
        .expect("stale");
    kernel
        .create_dir(&own.dir.join("memwarden-supervisor-8"))
        .expect("live");
    let mut processes = FakeProcesses::memwarden(OWN);
    processes.dead = BTreeSet::from([7]);
    let delegation =
        delegation::make_room(&own.dir, MEMORY, &kernel, &processes).expect("delegated");
    // 7 is gone, so its leaf goes; 8 lives (it may be between creating its leaf and moving
    // into it), so its leaf stays, and memwarden will not take the controller from it.
    assert_eq!(
        children(&kernel, &own.dir),
        ["memwarden-supervisor-100", "memwarden-supervisor-8"]
    );
    let err = restore(&delegation, &kernel, &processes).expect_err("8 may still need it");
    assert!(err.to_string().contains("memwarden-supervisor-8"), "{err}");
}

#[test]
fn the_scope_request_is_start_transient_unit_with_delegate() {
    let args = scope_request(
        true,
        "memwarden-100.scope",
        &[100, 101],
        Some("app-term.scope"),
    );
    let expected = "--user --timeout=5 call org.freedesktop.systemd1 /org/freedesktop/systemd1 \
                    org.freedesktop.systemd1.Manager StartTransientUnit ssa(sv)a(sa(sv)) \
                    memwarden-100.scope fail 5 PIDs au 2 100 101 Delegate b true CollectMode s \
                    inactive-or-failed Description s memwarden run (pid 100) PartOf as 1 \
                    app-term.scope 0";
    assert_eq!(args.join(" "), expected);
    let system = scope_request(false, "memwarden-5.scope", &[5], None);
    assert_eq!(system[0], "--system");
    assert_eq!(system[10], "4", "four properties without PartOf");
}

#[test]
fn the_scope_follows_the_unit_memwarden_leaves_only_within_the_same_systemd() {
    assert_eq!(
        unit_to_follow("/system.slice/ci-runner.service", None).as_deref(),
        Some("ci-runner.service")
    );
    assert_eq!(
        unit_to_follow("/user.slice/user-1000.slice/session-3.scope", Some(1000)),
        None
    );
    assert_eq!(
        unit_to_follow(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-term.scope",
            Some(1000)
        )
        .as_deref(),
        Some("app-term.scope")
    );
    assert_eq!(
        unit_to_follow(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/x.service",
            None
        ),
        None
    );
    assert_eq!(unit_to_follow("/kubepods/pod7", None), None);
}
