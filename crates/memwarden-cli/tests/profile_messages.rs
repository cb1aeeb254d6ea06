//! What `memwarden run --profile` says when there is little or nothing to profile: each
//! message names the real cause.

mod util;

use serde_json::Value;

fn python() -> String {
    util::python().to_string_lossy().into_owned()
}

fn warnings_of(args: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let status = util::memwarden()
        .args(["run", "-q", "--json"])
        .arg(&json)
        .args(args)
        .status()
        .expect("memwarden runs");
    assert!(status.success(), "{args:?}: {status}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("JSON");
    report["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_dynamic_program_that_allocates_little_is_not_called_static() {
    // `sleep` is dynamically linked: the profiler loads, but nothing reaches a sample point
    // (each thread's first interval is drawn at random, so a small program is sampled now
    // and then; with a 1 GiB mean interval, `sleep`'s few kilobytes are sampled with a
    // probability of about 1 in 10^4).
    let warnings = warnings_of(&["--profile", "--sample-bytes", "1GiB", "--", "sleep", "0.1"]);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("no allocation was sampled") && w.contains("--profile=exact")),
        "{warnings:?}"
    );
    assert!(
        !warnings.iter().any(|w| w.contains("static executable")),
        "{warnings:?}"
    );
}

#[test]
fn a_static_program_is_named_as_out_of_the_profilers_reach() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("static.c");
    std::fs::write(
        &source,
        "#include <stdlib.h>\n#include <string.h>\nint main(void) { char *p = malloc(4 << 20); memset(p, 1, 4 << 20); return p[7] - 1; }\n",
    )
    .expect("write");
    let binary = dir.path().join("static");
    let built = std::process::Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("cc runs");
    assert!(
        built.success(),
        "cc -static (glibc's static library, libc6-dev) must work here"
    );
    let binary = binary.to_string_lossy().into_owned();
    let warnings = warnings_of(&["--profile", "--", &binary]);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("no process loaded the profiler")),
        "{warnings:?}"
    );
}

fn unseen(warnings: &[String]) -> Vec<&String> {
    warnings
        .iter()
        .filter(|w| w.contains("was not seen by the profiler"))
        .collect()
}

#[test]
fn a_child_started_without_the_profiler_is_named_with_its_unseen_memory() {
    let script = "import os, subprocess, sys\n\
env = {k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'}\n\
subprocess.run([sys.executable, '-c', 'import time; x = bytearray(200 << 20); time.sleep(0.6)'], env=env, check=True)\n";
    let python = python();
    let warnings = warnings_of(&["--profile", "--", &python, "-c", script]);
    let named = unseen(&warnings);
    assert_eq!(named.len(), 1, "{warnings:#?}");
    assert!(named[0].contains("not profiled at all"), "{named:?}");
    assert!(
        named[0].contains("bytearray"),
        "the child is named by its command: {named:?}"
    );
}

#[test]
fn memory_mapped_outside_the_hooks_is_named_as_unseen() {
    // The mmap system call made through syscall(2), which no hook sees. (malloc looked up
    // in libc's own handle used to be the example; it is seen now: tests/profile_dlsym.rs.)
    let script = "import ctypes, time\n\
libc = ctypes.CDLL(None)\n\
libc.syscall.restype = ctypes.c_void_p\n\
libc.syscall.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n\
p = libc.syscall(9, None, 150 << 20, 3, 0x22, -1, 0)\n\
ctypes.memset(p, 1, 150 << 20)\n\
time.sleep(0.6)\n";
    let python = python();
    let warnings = warnings_of(&["--profile", "--", &python, "-c", script]);
    let named = unseen(&warnings);
    assert_eq!(named.len(), 1, "{warnings:#?}");
    assert!(named[0].contains("outside the hooked malloc"), "{named:?}");
}

#[test]
fn memory_the_profiler_saw_raises_no_unseen_warning() {
    let script = "import time\nimport numpy as np\nx = np.ones(200 << 17)\ntime.sleep(0.6)\n";
    let python = python();
    for mode in ["--profile", "--profile=exact"] {
        let warnings = warnings_of(&[mode, "--", &python, "-c", script]);
        assert!(unseen(&warnings).is_empty(), "{mode}: {warnings:#?}");
    }
}

#[test]
fn a_forked_workers_inherited_memory_is_not_called_unseen() {
    // The parent allocates (and the profiler sees) 250 MiB, then forks workers that
    // share those pages without allocating them: they are the parent's memory, not
    // memory the workers' profilers missed.
    let script = "import os, time\nimport numpy as np\nx = np.ones(250 << 17)\n\
pids = []\n\
for _ in range(2):\n    pid = os.fork()\n    if pid == 0:\n        y = np.ones(5 << 17)\n        time.sleep(0.6)\n        os._exit(0)\n    pids.append(pid)\n\
for pid in pids:\n    os.waitpid(pid, 0)\n";
    let python = python();
    let warnings = warnings_of(&["--profile", "--", &python, "-c", script]);
    assert!(unseen(&warnings).is_empty(), "{warnings:#?}");
}
