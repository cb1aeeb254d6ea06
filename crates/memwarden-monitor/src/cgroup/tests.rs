//! Readers of both hierarchies, from fixture directories (plain files stand in for the
//! kernel's control files: what is tested is the parsing and the walk, not the kernel).

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

/// Says that a live test cannot run on this machine, and why: a `SKIPPED` line on the real
/// stderr (past the harness's capture), or a failure when `MEMWARDEN_TEST_REQUIRE_ALL=1`,
/// as scripts/test.sh sets where every test must run. The CLI tests' `util::skip`, for this
/// crate's live tests (test crates share no code, and this is all of it).
pub(super) fn skip(test: &str, why: &str) {
    let required = std::env::var("MEMWARDEN_TEST_REQUIRE_ALL").as_deref() == Ok("1");
    assert!(
        !required,
        "{test} cannot run here: {why} (MEMWARDEN_TEST_REQUIRE_ALL=1)"
    );
    let line = format!("SKIPPED {test}: {why} (scripts/test.sh requires it)\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

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
    let cgroup = locate(mountinfo, "0::/kubepods/burstable/pod\n", root.path()).expect("located");
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
    let mounts = parse_mounts("37 30 0:33 / /mnt/my\\040cgroups rw - cgroup cgroup rw,memory\n");
    assert_eq!(mounts[0].mount_point, PathBuf::from("/mnt/my cgroups"));
}

#[test]
fn creating_a_child_outside_a_cgroup_filesystem_fails_cleanly() {
    let (_root, v1) = v1_fixture();
    let err = v1
        .create_child("memwarden-test", Some(1 << 20))
        .expect_err("fixture is no cgroupfs");
    assert!(
        matches!(err, CgroupError::NoMemoryController { .. }),
        "{err}"
    );
    assert!(
        !v1.dir.join("memwarden-test").exists(),
        "no directory left behind"
    );

    // v2 through the real filesystem calls but never the real systemd: a test must not move
    // itself into a scope.
    let (_root, v2) = v2_fixture();
    let err = delegation::create_child_v2(
        &v2,
        "memwarden-test",
        Some(1 << 20),
        &LiveKernel,
        &super::fake_kernel::FakeProcesses::memwarden(100),
        &super::fake_kernel::FakeSystemd::Absent("no systemd in a fixture"),
    )
    .expect_err("fixture is no cgroupfs");
    assert!(
        err.to_string()
            .contains("the memory controller is not delegated to memwarden's cgroup"),
        "{err}"
    );
    assert!(
        !v2.dir.join("memwarden-test").exists(),
        "no directory left behind"
    );
}

#[test]
fn real_cgroup_of_this_process_is_readable_when_present() {
    // Integration check on the live system: whatever version it has, figures are sane.
    let Some(cgroup) = current() else {
        return skip(
            "real_cgroup_of_this_process_is_readable_when_present",
            "no memory cgroup visible on this machine",
        );
    };
    assert!(
        cgroup.usage_bytes().is_some(),
        "usage readable in {}",
        cgroup.dir.display()
    );
}
