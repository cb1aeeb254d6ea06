//! `memwarden run --profile` end to end: the preload library inside real Python processes
//! (numpy, pure Python, threads, every kind of child), and the faults the issue lists.
//! Scripts mark the lines they expect with `# @name`; tests look lines up by marker.

mod util;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use util::{line_of, memwarden, pyenv_python, python, run, run_script, within, Run};

const MIB: u64 = 1 << 20;

/// Whether `frame` is workload.py:line.
fn is_line(frame: &Value, line: u64) -> bool {
    frame["file"]
        .as_str()
        .is_some_and(|f| f.ends_with("workload.py"))
        && frame["line"].as_u64() == Some(line)
}

/// Bytes of the entries of `list` (a JSON pointer) whose stack passes through
/// workload.py:line (the line itself, or a library function it called, allocated).
fn bytes_at_line(run: &Run, list: &str, line: u64) -> u64 {
    run.report()
        .pointer(list)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{list} missing: {}", run.stderr()))
        .iter()
        .filter(|entry| {
            entry["stack"]
                .as_array()
                .is_some_and(|s| s.iter().any(|f| is_line(f, line)))
        })
        .map(|entry| entry["bytes"].as_u64().unwrap_or(0))
        .sum()
}

/// The first workload.py frame of the largest entry of `list`, as `workload.py:line function`.
fn top_leaf(run: &Run, list: &str) -> String {
    let stack = run.report().pointer(list).expect("list")[0]["stack"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let frame = stack
        .iter()
        .find(|f| {
            f["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("workload.py"))
        })
        .unwrap_or_else(|| panic!("no workload.py frame in the top stack: {stack:?}"));
    format!(
        "workload.py:{} {}",
        frame["line"],
        frame["function"].as_str().unwrap_or("?")
    )
}

const NUMPY_PEAK_AND_LEAK: &str = "\
import numpy as np
kept = []
def build_features(n):
    return np.ones(n, dtype=np.float64)  # @peak
def load_cache():
    kept.append(np.zeros(100 * 1024 * 1024 // 8) + 1)  # @leak
def main():
    features = build_features(400 * 1024 * 1024 // 8)
    total = float(features.sum())
    del features
    load_cache()
    print(total)
main()
";

fn check_numpy_profile(run: &Run, tolerance: f64) {
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(
        String::from_utf8_lossy(&run.output.stdout).trim(),
        "52428800.0",
        "target output untouched"
    );
    let peak_line = line_of(NUMPY_PEAK_AND_LEAK, "peak");
    let leak_line = line_of(NUMPY_PEAK_AND_LEAK, "leak");
    assert!(
        top_leaf(run, "/profile/at_peak")
            .contains(&format!("workload.py:{peak_line} build_features")),
        "{}",
        run.stderr()
    );
    let at_peak = bytes_at_line(run, "/profile/at_peak", peak_line);
    assert!(within(at_peak, 400 * MIB, tolerance), "at peak {at_peak}");
    let leaked = bytes_at_line(run, "/profile/leaked", leak_line);
    assert!(within(leaked, 100 * MIB, tolerance), "leaked {leaked}");
    let stack = run.report()["profile"]["at_peak"][0]["stack"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let at = stack
        .iter()
        .position(|f| is_line(f, peak_line))
        .expect("the line is in the stack");
    assert_eq!(
        stack[at + 1]["function"],
        "main",
        "the stack under the line is kept"
    );
    assert!(run.u64_at("/peak/heap_bytes") >= 400 * MIB);
    assert!(run.stderr().contains("held at the peak:"), "terminal table");
    let process = run.report()["processes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| !p["profile"].is_null()))
        .expect("a process with its own profile");
    assert!(process["profile"]["python"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.")));
}

#[test]
fn sampled_profile_names_the_numpy_peak_line_and_the_leak_within_3_percent() {
    let run = run_script(&["--profile"], &python(), NUMPY_PEAK_AND_LEAK, &[]);
    check_numpy_profile(&run, 0.03);
    assert_eq!(run.str_at("/profile/mode"), "sampled");
    assert_eq!(run.u64_at("/profile/sample_bytes"), 512 << 10);
}

#[test]
fn exact_profile_is_within_1_percent() {
    let run = run_script(&["--profile=exact"], &python(), NUMPY_PEAK_AND_LEAK, &[]);
    check_numpy_profile(&run, 0.01);
    assert_eq!(run.str_at("/profile/mode"), "exact");
}

const PURE_PYTHON: &str = "\
def records(n):
    return [(i, str(i), float(i)) for i in range(n)]  # @objects
rows = records(1_500_000)
print(len(rows))
";

#[test]
fn small_python_objects_are_charged_to_the_line_creating_them() {
    let run = run_script(&["--profile"], &python(), PURE_PYTHON, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let line = line_of(PURE_PYTHON, "objects");
    assert!(
        top_leaf(&run, "/profile/at_peak").contains(&format!("workload.py:{line}")),
        "{}",
        run.stderr()
    );
    // 1.5 M tuples of an int, a str and a float: about 230 MiB of objects and list.
    let bytes = bytes_at_line(&run, "/profile/at_peak", line);
    assert!(
        bytes > 150 * MIB,
        "only {bytes} bytes charged to the comprehension"
    );
}

const BYTEARRAY: &str = "\
class Loader:
    def read(self):
        return bytearray(120 * 1024 * 1024)  # @alloc
data = Loader().read()
print(len(data))
";

#[test]
fn frames_are_read_on_every_supported_python_and_others_degrade_with_a_warning() {
    let line = line_of(BYTEARRAY, "alloc");
    for version in ["3.10", "3.11", "3.12", "3.13"] {
        let interpreter = pyenv_python(version)
            .unwrap_or_else(|| panic!("Python {version} is needed (pyenv install {version})"));
        let run = run_script(&["--profile"], &interpreter, BYTEARRAY, &[]);
        assert_eq!(run.code(), 0, "{version}: {}", run.stderr());
        let leaf = top_leaf(&run, "/profile/at_peak");
        let function = if version == "3.10" {
            "read"
        } else {
            "Loader.read"
        };
        assert_eq!(
            leaf,
            format!("workload.py:{line} {function}"),
            "Python {version}"
        );
        assert!(within(
            bytes_at_line(&run, "/profile/at_peak", line),
            120 * MIB,
            0.01
        ));
        // Held by a global: still there when the interpreter starts shutting down.
        assert!(
            within(
                bytes_at_line(&run, "/profile/leaked", line),
                120 * MIB,
                0.01
            ),
            "Python {version}: the exit snapshot"
        );
    }
    // 3.9 has no generated layout: memory is still counted, charged to the process.
    let Some(old) = pyenv_python("3.9") else {
        return util::skip(
            "frames_are_read_on_every_supported_python_and_others_degrade_with_a_warning (its 3.9 part)",
            "Python 3.9 is needed (pyenv install 3.9)",
        );
    };
    let run = run_script(&["--profile"], &old, BYTEARRAY, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(run.stderr().contains("no frame layout"), "{}", run.stderr());
    assert!(run.u64_at("/profile/peak_bytes") >= 120 * MIB);
}

const THREADS: &str = "\
import threading
def churn(rounds):
    for _ in range(rounds):
        blocks = [bytearray(64 * 1024) for _ in range(64)]  # @churn
        del blocks
def hold(barrier, out):
    out.append(bytearray(20 * 1024 * 1024))  # @hold
    barrier.wait()
barrier = threading.Barrier(9)
held = []
threads = [threading.Thread(target=churn, args=(200,)) for _ in range(8)]
threads += [threading.Thread(target=hold, args=(barrier, held)) for _ in range(8)]
for t in threads: t.start()
barrier.wait()
for t in threads: t.join()
print('done', len(held))
";

#[test]
fn sixteen_threads_allocating_and_freeing_at_once() {
    let run = run_script(&["--profile"], &python(), THREADS, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(String::from_utf8_lossy(&run.output.stdout).trim(), "done 8");
    let held = bytes_at_line(&run, "/profile/leaked", line_of(THREADS, "hold"));
    assert!(within(held, 160 * MIB, 0.03), "held {held}");
    let churn_line = line_of(THREADS, "churn");
    let churned = run.report()["profile"]["top_lines"]
        .as_array()
        .expect("top_lines")
        .iter()
        .find(|l| l["frame"]["line"].as_u64() == Some(churn_line))
        .map(|l| l["allocated_bytes"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    // 8 threads × 200 rounds × 64 blocks × 64 KiB = 6.25 GiB allocated in all.
    assert!(within(churned, 6400 * MIB, 0.05), "churn {churned}");
}

const NATIVE_THREAD_C: &str = r#"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
static void *work(void *size) {
    pthread_setname_np(pthread_self(), "mw-native");
    char *p = malloc((size_t)size);
    memset(p, 1, (size_t)size);
    return p;
}
void *run_native_thread(size_t size) {
    pthread_t t; void *result;
    pthread_create(&t, NULL, work, (void *)size);
    pthread_join(t, &result);
    return result;
}
"#;

const NATIVE_THREAD_PY: &str = "\
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.run_native_thread.restype = ctypes.c_void_p
def fit():
    return lib.run_native_thread(ctypes.c_size_t(150 * 1024 * 1024))  # @spawn
block = fit()
print('ok')
";

#[test]
fn threads_without_python_frames_are_charged_to_their_creator_with_their_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("native.c");
    std::fs::write(&source, NATIVE_THREAD_C).expect("write");
    let library = dir.path().join("libnative.so");
    let built = Command::new("gcc")
        .args(["-shared", "-fPIC", "-pthread", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .expect("gcc runs");
    assert!(built.success());
    let run = run_script(
        &["--profile"],
        &python(),
        NATIVE_THREAD_PY,
        &[library.to_str().expect("utf-8")],
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let entries = run.report()["profile"]["leaked"]
        .as_array()
        .expect("leaked")
        .clone();
    let entry = entries
        .iter()
        .find(|e| e["stack"][0]["function"] == "[thread mw-native]")
        .unwrap_or_else(|| {
            panic!(
                "no entry for the native thread: {:#}",
                run.report()["profile"]
            )
        });
    assert!(within(
        entry["bytes"].as_u64().unwrap_or(0),
        150 * MIB,
        0.01
    ));
    let creator = &entry["stack"][1];
    assert_eq!(
        creator["line"].as_u64(),
        Some(line_of(NATIVE_THREAD_PY, "spawn"))
    );
    assert_eq!(creator["function"], "fit");
}

const CHILDREN: &str = "\
import os, sys, multiprocessing as mp
def work(_):
    block = bytearray(150 * 1024 * 1024)  # @child
    return len(block)
if __name__ == '__main__':
    how = sys.argv[1]
    if how == 'fork-no-exec':
        pid = os.fork()
        if pid == 0:
            work(0)
            os._exit(0)
        os.waitpid(pid, 0)
    else:
        with mp.get_context(how).Pool(1) as pool:
            print(pool.map(work, [0]))
";

#[test]
fn children_by_fork_spawn_and_forkserver_are_profiled_and_merged() {
    let line = line_of(CHILDREN, "child");
    for how in ["fork-no-exec", "fork", "spawn", "forkserver"] {
        let run = run_script(&["--profile"], &python(), CHILDREN, &[how]);
        assert_eq!(run.code(), 0, "{how}: {}", run.stderr());
        let bytes = bytes_at_line(&run, "/profile/at_peak", line);
        assert!(
            within(bytes, 150 * MIB, 0.03),
            "{how}: {bytes} at the child's line"
        );
        let main_pid = run.report()["processes"][0]["pid"].as_i64();
        let child_profiled = run.report()["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .any(|p| {
                p["pid"].as_i64() != main_pid
                    && p["profile"]["peak_bytes"]
                        .as_u64()
                        .is_some_and(|b| b >= 140 * MIB)
            });
        assert!(child_profiled, "{how}: the child has its own profile");
    }
}

const EXIT_EARLY: &str = "\
import os, signal, sys
held = bytearray(200 * 1024 * 1024)  # @held
sys.stdout.flush()
if sys.argv[1] == 'os-exit':
    os._exit(3)
os.kill(os.getpid(), signal.SIGKILL)
";

#[test]
fn os_exit_and_sigkill_still_yield_the_profile() {
    let line = line_of(EXIT_EARLY, "held");
    for (how, code) in [("os-exit", 3), ("sigkill", 137)] {
        let run = run_script(&["--profile"], &python(), EXIT_EARLY, &[how]);
        assert_eq!(run.code(), code, "{how}: {}", run.stderr());
        for list in ["/profile/at_peak", "/profile/leaked"] {
            let bytes = bytes_at_line(&run, list, line);
            assert!(
                within(bytes, 200 * MIB, 0.01),
                "{how}: {list} holds {bytes} at the line: {:#}",
                run.report()["profile"]
            );
        }
        let process = run.report()["processes"]
            .as_array()
            .and_then(|p| p.iter().find(|p| !p["profile"].is_null()))
            .expect("profiled process");
        assert_eq!(process["profile"]["exited_cleanly"], false, "{how}");
    }
}

const GROW: &str = "\
blocks = []
while True:
    blocks.append(bytearray(20 * 1024 * 1024))  # @grow
";

#[test]
fn an_oom_killed_target_shows_the_stacks_at_its_last_peak() {
    let run = run_script(
        &["--profile", "--hard-limit", "300MiB"],
        &python(),
        GROW,
        &[],
    );
    assert_eq!(run.code(), 137, "{}", run.stderr());
    assert!(run.report()["exit"]["oom_killed"]
        .as_bool()
        .unwrap_or(false));
    let bytes = bytes_at_line(&run, "/profile/at_peak", line_of(GROW, "grow"));
    assert!(
        bytes > 200 * MIB && bytes < 340 * MIB,
        "{bytes} at the growing line"
    );
}

const LATE_LOAD: &str = "\
import time, ctypes
time.sleep(0.2)
import decimal, json, numpy
buffer = ctypes.create_string_buffer(90 * 1024 * 1024)  # @late
print(len(buffer))
";

#[test]
fn extension_modules_loaded_after_start_are_profiled() {
    let run = run_script(&["--profile"], &python(), LATE_LOAD, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let bytes = bytes_at_line(&run, "/profile/at_peak", line_of(LATE_LOAD, "late"));
    assert!(within(bytes, 90 * MIB, 0.02), "{bytes}");
}

const SIGNALS: &str = "\
import signal, time
count = 0
def on_alarm(signum, frame):
    global count
    count += 1
    scratch = bytearray(100_000)
signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
end = time.time() + 1.5
while time.time() < end:
    data = [bytearray(4096) for _ in range(256)]
signal.setitimer(signal.ITIMER_REAL, 0, 0)
print('alarms', count > 50)
";

#[test]
fn signals_delivered_during_allocation_are_harmless() {
    let run = run_script(&["--profile=exact"], &python(), SIGNALS, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(
        String::from_utf8_lossy(&run.output.stdout).trim(),
        "alarms True"
    );
}

#[test]
fn non_python_children_run_untouched() {
    let run = run(
        &["--profile=exact"],
        &["sh", "-c", "seq 1 200000 | sort -n | tail -n 1"],
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(String::from_utf8_lossy(&run.output.stdout).trim(), "200000");
    assert!(run.u64_at("/profile/processes_profiled") >= 1);
}

#[test]
fn an_unwritable_capture_directory_is_refused_before_the_command_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let output = memwarden()
        .args([
            "run",
            "--profile",
            "--capture-dir",
            "/proc/memwarden-no-such-dir",
            "--",
            "touch",
        ])
        .arg(&marker)
        .output()
        .expect("memwarden runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--capture-dir") && stderr.contains("writable"),
        "{stderr}"
    );
    assert!(!marker.exists(), "the command must not run");
}

fn analyze(paths: &[&Path]) -> (i32, String, String) {
    let output = memwarden()
        .arg("analyze")
        .args(paths)
        .output()
        .expect("memwarden runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn kept_captures_are_analysed_and_damaged_ones_are_named() {
    let captures = tempfile::tempdir().expect("tempdir");
    let dir = captures.path().to_str().expect("utf-8");
    let run = run_script(
        &["--profile", "--capture-dir", dir],
        &python(),
        BYTEARRAY,
        &[],
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let (code, stdout, stderr) = analyze(&[captures.path()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("workload.py:{}", line_of(BYTEARRAY, "alloc"))),
        "{stdout}"
    );

    let good = std::fs::read_dir(captures.path())
        .expect("list")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
                && std::fs::read(p).is_ok_and(|b| b[..5] == *b"MWCAP")
        })
        .expect("a capture");
    let bytes = std::fs::read(&good).expect("read");
    let broken = tempfile::tempdir().expect("tempdir");
    let truncated = broken.path().join("truncated.mwcap");
    std::fs::write(&truncated, &bytes[..6000]).expect("write");
    let garbage = broken.path().join("garbage.mwcap");
    std::fs::write(&garbage, vec![0x5a; 100_000]).expect("write");
    for (file, expected) in [(&truncated, "truncated"), (&garbage, "signature")] {
        let (code, _, stderr) = analyze(&[file]);
        assert_eq!(code, 6, "{stderr}");
        assert!(
            stderr.contains(expected) && stderr.contains(file.to_str().expect("utf-8")),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn folded_stacks_are_written_for_flame_graphs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folded = dir.path().join("peak.folded");
    let run = run_script(
        &["--profile", "--folded", folded.to_str().expect("utf-8")],
        &python(),
        BYTEARRAY,
        &[],
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let text = std::fs::read_to_string(&folded).expect("folded written");
    let line = line_of(BYTEARRAY, "alloc");
    let top = text
        .lines()
        .find(|l| l.contains(&format!("workload.py:{line})")))
        .unwrap_or_else(|| panic!("{text}"));
    let (stack, bytes) = top.rsplit_once(' ').expect("count");
    assert!(
        stack.starts_with("<module> (") && stack.contains(";Loader.read ("),
        "outermost first: {stack}"
    );
    assert!(within(bytes.parse().expect("number"), 120 * MIB, 0.01));
}

const ANONYMOUS_MAPS: &str = "\
import mmap
def shared_buffer():
    return mmap.mmap(-1, 96 * 1024 * 1024)  # @mapped
def reservation():
    return mmap.mmap(-1, 1 << 30, prot=mmap.PROT_READ & 0)  # @reserved
buffer = shared_buffer()
for page in range(0, len(buffer), 4096):
    buffer[page] = 1
space = reservation()
buffer.close()
space.close()
print('ok')
";

#[test]
fn anonymous_mappings_count_until_unmapped_and_reservations_never() {
    let run = run_script(&["--profile=exact"], &python(), ANONYMOUS_MAPS, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let mapped = line_of(ANONYMOUS_MAPS, "mapped");
    assert!(within(
        bytes_at_line(&run, "/profile/at_peak", mapped),
        96 * MIB,
        0.01
    ));
    assert_eq!(
        bytes_at_line(&run, "/profile/leaked", mapped),
        0,
        "munmap releases it"
    );
    // PROT_NONE: a 1 GiB address-space reservation holds no memory.
    assert_eq!(
        bytes_at_line(
            &run,
            "/profile/at_peak",
            line_of(ANONYMOUS_MAPS, "reserved")
        ),
        0
    );
    assert!(run.u64_at("/profile/peak_bytes") < 200 * MIB);
}
