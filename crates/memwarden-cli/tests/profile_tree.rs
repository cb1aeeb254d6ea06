//! The tree's heap peak, measured: workloads whose allocation schedule is known (children
//! run one after another, a pool whose workers peak at different moments, workers that peak
//! together), in exact mode so that every figure is exact. The tree's peak is the counter
//! every profiled process shares, not the sum of each process's own peak; the stacks at it
//! are each process's at (or nearest to) that moment; the timeline is bounded.

mod util;

use std::path::Path;

use serde_json::Value;
use util::{python, run_in_with, within, Run};

const MIB: u64 = 1 << 20;

/// Writes `files` into a fresh directory and runs `python workload.py` there under
/// `memwarden run --profile=exact <options>`, with memwarden's data directory (ledger,
/// reports) in `home` when given.
fn run_workload(files: &[(&str, &str)], options: &[&str], home: Option<&Path>) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write workload");
    }
    let mut all_options = vec!["--profile=exact"];
    all_options.extend_from_slice(options);
    let python = python();
    let run = run_in_with(
        dir,
        &all_options,
        &[python.as_os_str(), "workload.py".as_ref()],
        |command| {
            if let Some(home) = home {
                command
                    .env("MEMWARDEN_HOME", home)
                    .env_remove("MEMWARDEN_LEDGER");
            }
        },
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    run
}

/// A profiled process: pid, parent pid, own heap peak.
struct Profiled {
    pid: i64,
    ppid: i64,
    peak_bytes: u64,
}

fn profiled(run: &Run) -> Vec<Profiled> {
    run.report()["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter(|p| !p["profile"].is_null())
        .map(|p| Profiled {
            pid: p["pid"].as_i64().unwrap_or(0),
            ppid: p["ppid"].as_i64().unwrap_or(0),
            peak_bytes: p["profile"]["peak_bytes"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// The workload's own process (the one no other profiled process started) and the others.
fn parent_and_children(run: &Run) -> (Profiled, Vec<Profiled>) {
    let all = profiled(run);
    let pids: Vec<i64> = all.iter().map(|p| p.pid).collect();
    let (parents, children): (Vec<Profiled>, Vec<Profiled>) =
        all.into_iter().partition(|p| !pids.contains(&p.ppid));
    assert_eq!(parents.len(), 1, "one workload process: {:#}", run.report());
    (parents.into_iter().next().expect("parent"), children)
}

/// Bytes of the `at_peak` entries whose innermost workload frame is `file`:`line`.
fn at_peak_bytes_at(run: &Run, file: &str, line: u64) -> u64 {
    run.report()["profile"]["at_peak"]
        .as_array()
        .expect("at_peak")
        .iter()
        .filter(|entry| {
            entry["stack"].as_array().is_some_and(|stack| {
                stack.iter().any(|f| {
                    f["file"].as_str().is_some_and(|f| f.ends_with(file))
                        && f["line"].as_u64() == Some(line)
                })
            })
        })
        .map(|entry| entry["bytes"].as_u64().unwrap_or(0))
        .sum()
}

/// The timeline is there, bounded, and consistent with the stacks it names.
fn check_timeline(run: &Run) {
    let profile = &run.report()["profile"];
    let timeline = profile["timeline"].as_array().expect("profile.timeline");
    let stacks = profile["timeline_stacks"]
        .as_array()
        .expect("profile.timeline_stacks");
    assert!(!timeline.is_empty(), "a point per monitor tick");
    assert!(timeline.len() <= 2000);
    let mut last_t = -1.0;
    for point in timeline {
        let t = point["t_s"].as_f64().expect("t_s");
        assert!(t > last_t, "points in time order");
        last_t = t;
        let top = point["top"].as_array().expect("top");
        assert!(top.len() <= 5, "at most five stacks a point");
        let heap = point["heap_bytes"].as_u64().expect("heap_bytes");
        let held: u64 = top.iter().map(|s| s["bytes"].as_u64().unwrap_or(0)).sum();
        assert!(
            held <= heap + MIB,
            "top stacks {held} within the heap {heap}"
        );
        for entry in top {
            let id = entry["stack_id"].as_u64().expect("stack_id") as usize;
            assert!(id < stacks.len(), "stack {id} is in timeline_stacks");
        }
    }
}

const CHILD: &str = "\
import time
data = b'x' * (50 << 20)  # line 2: 50 MiB, written
time.sleep(0.05)
";

const SEQUENTIAL: &str = "\
import subprocess, sys
for _ in range(20):
    subprocess.run([sys.executable, 'child.py'], check=True)
";

#[test]
fn sequential_children_peak_at_one_child_not_twenty() {
    let home = tempfile::tempdir().expect("home");
    let run = run_workload(
        &[("workload.py", SEQUENTIAL), ("child.py", CHILD)],
        &["--model", "seq", "--version", "1", "--stage", "train"],
        Some(home.path()),
    );
    let (parent, children) = parent_and_children(&run);
    assert_eq!(children.len(), 20, "{}", run.stderr());
    let child_peak = children
        .iter()
        .map(|c| c.peak_bytes)
        .max()
        .expect("children");
    assert!(
        within(child_peak, 50 * MIB, 0.15),
        "a child's own peak is its 50 MiB and its interpreter: {child_peak}"
    );
    let summed: u64 = parent.peak_bytes + children.iter().map(|c| c.peak_bytes).sum::<u64>();
    assert!(
        summed > 1000 * MIB,
        "each child's own peak is kept: {summed}"
    );

    let expected = parent.peak_bytes + child_peak;
    let peak = run.u64_at("/profile/peak_bytes");
    assert!(
        within(peak, expected, 0.03),
        "tree heap peak {peak} against the schedule's {expected} (summed: {summed})"
    );
    assert_eq!(run.str_at("/profile/peak_method"), "measured");
    assert_eq!(run.u64_at("/peak/heap_bytes"), peak);
    assert!(
        run.stderr().contains("heap peak"),
        "terminal summary: {}",
        run.stderr()
    );
    // At the peak: one child's 50 MiB, read within a tick of the moment.
    let at_line = at_peak_bytes_at(&run, "child.py", 2);
    assert!(
        within(at_line, 50 * MIB, 0.03),
        "child.py:2 holds {at_line} at the tree's peak"
    );
    let gap_s = run.report()["profile"]["at_peak_gap_s"]
        .as_f64()
        .expect("the gap is stated");
    assert!(gap_s < 0.5, "gap {gap_s} s");
    let at_peak_bytes = run.u64_at("/profile/at_peak_bytes");
    assert!(
        within(at_peak_bytes, peak, 0.1),
        "the stacks shown hold {at_peak_bytes} of the {peak} peak"
    );
    check_timeline(&run);

    // The ledger records the measured figure, not the sum.
    let db = rusqlite::Connection::open(home.path().join("ledger.sqlite")).expect("ledger");
    let record: String = db
        .query_row(
            "SELECT record FROM memwarden_runs ORDER BY seq DESC LIMIT 1",
            [],
            |row| row.get(0),
        )
        .expect("a recorded run");
    let record: Value = serde_json::from_str(&record).expect("record");
    assert_eq!(
        record["peaks"]["heap_bytes"].as_u64(),
        Some(peak),
        "{record:#}"
    );
}

const STAGGERED_POOL: &str = "\
import multiprocessing as mp, time

def work(i):
    time.sleep(0.4 * i)
    data = b'x' * (100 << 20)  # line 5: 100 MiB, written
    time.sleep(0.1)
    del data
    return i

if __name__ == '__main__':
    with mp.Pool(4) as pool:
        print(pool.map(work, range(4), chunksize=1))
";

#[test]
fn pool_workers_peaking_in_turn_peak_at_one_worker() {
    let run = run_workload(&[("workload.py", STAGGERED_POOL)], &[], None);
    let (parent, workers) = parent_and_children(&run);
    assert_eq!(workers.len(), 4, "{}", run.stderr());
    // Each worker's own peak is its 100 MiB and what it holds anyway (its baseline): at the
    // tree's peak one worker holds its 100 MiB, the others their baselines.
    let baselines: u64 = workers
        .iter()
        .map(|w| w.peak_bytes.saturating_sub(100 * MIB))
        .sum();
    let expected = parent.peak_bytes + 100 * MIB + baselines;
    let peak = run.u64_at("/profile/peak_bytes");
    assert!(
        within(peak, expected, 0.03),
        "tree heap peak {peak} against the schedule's {expected}"
    );
    let at_line = at_peak_bytes_at(&run, "workload.py", 5);
    assert!(
        within(at_line, 100 * MIB, 0.03),
        "workload.py:5 holds {at_line} at the tree's peak (one worker's, not four)"
    );
    check_timeline(&run);
}

const TOGETHER: &str = "\
import multiprocessing as mp, time

def work(barrier):
    data = b'x' * (100 << 20)  # line 4: 100 MiB, written
    barrier.wait()
    time.sleep(0.3)

if __name__ == '__main__':
    barrier = mp.Barrier(4)
    workers = [mp.Process(target=work, args=(barrier,)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
";

#[test]
fn workers_peaking_together_peak_at_their_sum() {
    let run = run_workload(&[("workload.py", TOGETHER)], &[], None);
    let (parent, workers) = parent_and_children(&run);
    assert_eq!(workers.len(), 4, "{}", run.stderr());
    let expected = parent.peak_bytes + workers.iter().map(|w| w.peak_bytes).sum::<u64>();
    let peak = run.u64_at("/profile/peak_bytes");
    assert!(
        within(peak, expected, 0.03),
        "tree heap peak {peak} against the schedule's {expected}"
    );
    assert!(peak > 400 * MIB);
    let at_line = at_peak_bytes_at(&run, "workload.py", 4);
    assert!(
        within(at_line, 400 * MIB, 0.03),
        "workload.py:4 holds {at_line} at the tree's peak (all four workers')"
    );
    check_timeline(&run);
}

const NUMPY_CHILDREN: &str = "\
import subprocess, sys
for _ in range(10):
    subprocess.run([sys.executable, '-c', 'import numpy as np; a = np.ones(10 << 17)'], check=True)
";

#[test]
fn children_importing_numpy_keep_the_tree_heap_under_its_rss() {
    // Each child maps OpenBLAS's buffers as it imports numpy, counted as written until
    // measured (untouched) a moment later: the tree's peak must not keep them.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("workload.py"), NUMPY_CHILDREN).expect("write workload");
    let python = python();
    let run = util::run_in(
        dir,
        &["--profile"],
        &[python.to_str().expect("utf-8 path"), "workload.py"],
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let (parent, children) = parent_and_children(&run);
    assert_eq!(children.len(), 10, "{}", run.stderr());
    let largest_child = children
        .iter()
        .map(|c| c.peak_bytes)
        .max()
        .expect("children");
    let peak = run.u64_at("/profile/peak_bytes");
    let rss = run.u64_at("/peak/rss_bytes");
    assert!(
        peak <= rss,
        "tree heap peak {peak} above the tree's peak RSS {rss}"
    );
    assert!(
        peak <= parent.peak_bytes + largest_child + 2 * MIB,
        "tree heap peak {peak}: one child at a time ({} + {largest_child})",
        parent.peak_bytes
    );
    check_timeline(&run);
}

const KILLED_CHILD: &str = "\
import subprocess, sys, time
child = subprocess.Popen([sys.executable, 'child.py'], stdout=subprocess.PIPE)
child.stdout.readline()
child.kill()
child.wait()
time.sleep(0.3)
data = b'x' * (100 << 20)  # line 7: 100 MiB, after the child is gone
time.sleep(0.1)
";

const HOLDING_CHILD: &str = "\
import time
data = b'x' * (100 << 20)
print('ready', flush=True)
time.sleep(60)
";

#[test]
fn a_killed_childs_memory_leaves_the_tree_with_it() {
    // SIGKILL leaves no chance to take its share out: the runner does, at its next tick.
    let run = run_workload(
        &[("workload.py", KILLED_CHILD), ("child.py", HOLDING_CHILD)],
        &[],
        None,
    );
    let (parent, children) = parent_and_children(&run);
    assert_eq!(children.len(), 1, "{}", run.stderr());
    let expected = parent.peak_bytes.max(children[0].peak_bytes);
    let peak = run.u64_at("/profile/peak_bytes");
    assert!(
        within(peak, expected, 0.03),
        "tree heap peak {peak}: the child's 100 MiB or the parent's, never both ({expected})"
    );
    let parents = at_peak_bytes_at(&run, "workload.py", 7);
    let childs = at_peak_bytes_at(&run, "child.py", 2);
    assert!(
        within(parents + childs, 100 * MIB, 0.03),
        "at the tree's peak, one 100 MiB: the parent's {parents}, the child's {childs}"
    );
}
