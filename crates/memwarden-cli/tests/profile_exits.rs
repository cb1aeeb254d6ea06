//! Short-lived processes under `memwarden run --profile`: each one's peak RSS is measured
//! (its own high-water mark, written as it ends), never reported as `0`, and a program too
//! small to record anything leaves no capture file behind.

mod util;

use serde_json::Value;

fn processes(run: &util::Run) -> Vec<Value> {
    run.report()["processes"]
        .as_array()
        .expect("processes")
        .clone()
}

/// Every process has a peak RSS or says why not; none is `0`.
fn check_every_peak_is_measured(run: &util::Run) {
    for process in processes(run) {
        let peak = &process["peak_rss_bytes"];
        assert!(
            peak.as_u64().is_some_and(|bytes| bytes > 0),
            "a process without a measured peak: {process:#}"
        );
        assert!(process.get("peak_rss_unmeasured").is_none(), "{process:#}");
    }
}

#[test]
fn thirty_tiny_processes_each_have_a_measured_peak_and_leave_no_capture() {
    let dir = tempfile::tempdir().expect("tempdir");
    let captures = dir.path().join("captures");
    let run = util::run_in(
        dir,
        &[
            "--profile",
            "--capture-dir",
            captures.to_str().expect("utf-8"),
        ],
        &[
            "bash",
            "-c",
            "for i in $(seq 30); do /bin/true; done; exit 0",
        ],
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let processes = processes(&run);
    // bash, seq's subshell, and the thirty `true`s: the monitor reads few of them, but each
    // wrote its own high-water mark as it ended.
    assert!(
        processes.len() >= 31,
        "{} processes: {processes:#?}",
        processes.len()
    );
    check_every_peak_is_measured(&run);
    let from_exit_records = processes
        .iter()
        .filter(|p| p["peak_rss_source"] == "VmHWM")
        .count();
    assert!(from_exit_records >= 25, "{processes:#?}");
    // `true` allocates far less than the sampling interval: it records nothing, so it
    // creates no capture (creating one costs milliseconds on a disk file system).
    let files = std::fs::read_dir(&captures)
        .expect("capture dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "mwcap"))
        .count();
    assert!(files <= 2, "{files} captures for 32 tiny processes");
}

#[test]
fn forked_children_that_exit_at_once_have_their_peak_rss_not_a_trace_of_it() {
    // Each child fills 40 MiB and leaves through os._exit at once, as multiprocessing
    // workers do: too fast for the monitor, and reaped by Python, not memwarden.
    let script = "import os\n\
                  pids = []\n\
                  for _ in range(6):\n\
                  \x20   pid = os.fork()\n\
                  \x20   if pid == 0:\n\
                  \x20       block = b'x' * (40 << 20)\n\
                  \x20       os._exit(0)\n\
                  \x20   pids.append(pid)\n\
                  for pid in pids:\n\
                  \x20   os.waitpid(pid, 0)\n";
    let run = util::run_script(&["--profile"], &util::python(), script, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    check_every_peak_is_measured(&run);
    let parent = processes(&run)[0]["pid"].as_i64().expect("pid");
    let children: Vec<Value> = processes(&run)
        .into_iter()
        .filter(|p| p["ppid"].as_i64() == Some(parent))
        .collect();
    assert_eq!(children.len(), 6, "{children:#?}");
    for child in &children {
        let rss = child["peak_rss_bytes"].as_u64().expect("measured");
        assert!(
            rss >= 40 << 20,
            "a child's peak RSS below what it wrote: {child:#}"
        );
        if let Some(heap) = child.pointer("/profile/peak_bytes").and_then(Value::as_u64) {
            assert!(heap <= rss, "heap above the peak RSS: {child:#}");
        }
    }
}

#[test]
fn a_reaped_command_has_a_peak_and_what_was_not_read_is_null() {
    let run = util::run(&[], &["true"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    check_every_peak_is_measured(&run);
    let process = &processes(&run)[0];
    assert_eq!(process["peak_rss_source"], "ru_maxrss", "{process:#}");
    // Read or not, depending on whether a tick came before it ended: never a false 0.
    let pss = &run.report()["peak"]["pss_bytes"];
    assert!(pss.is_null() || pss.as_u64() > Some(0), "{pss}");
}

#[test]
fn no_process_holds_more_at_its_end_than_at_its_peak() {
    // Native programs that allocate a little and exit, one exec'd over a forked shell:
    // each image's end state counts toward its peak, and an image replaced by `exec` holds
    // nothing at the process's end.
    for command in [
        &["seq", "3"][..],
        &["bash", "-c", "seq 3 >/dev/null; /bin/true; sleep 0.01"][..],
    ] {
        let run = util::run(&["--profile=exact"], command);
        assert_eq!(run.code(), 0, "{}", run.stderr());
        for process in processes(&run) {
            let Some(profile) = process.get("profile") else {
                continue;
            };
            let (peak, leaked) = (
                profile["peak_bytes"].as_u64().expect("peak"),
                profile["leaked_bytes"].as_u64().expect("leaked"),
            );
            assert!(leaked <= peak, "{command:?}: {process:#}");
        }
        let summary = String::from_utf8_lossy(&run.output.stdout).into_owned() + &run.stderr();
        if run.u64_at("/profile/processes_profiled") > 1 {
            assert!(
                summary.contains("summed over") && summary.contains("each at its own end"),
                "{summary}"
            );
        } else {
            assert!(
                run.u64_at("/profile/leaked_bytes") <= run.u64_at("/profile/peak_bytes"),
                "{summary}"
            );
        }
    }
}
