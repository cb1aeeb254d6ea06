//! `memwarden run` end to end: real commands, real numpy, real cgroups where the machine has
//! them. Each test states the behaviour it proves.

mod util;

use std::time::{Duration, Instant};

use serde_json::Value;
use util::{numpy_hold, run, run_python, within};

const MIB: u64 = 1 << 20;

#[test]
fn numpy_peak_comes_from_the_kernel_high_water_mark_within_3_percent() {
    let run = run_python(&[], &numpy_hold(600, 1.0));
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let true_peak: u64 = String::from_utf8_lossy(&run.output.stdout)
        .trim()
        .parse()
        .expect("child printed ru_maxrss");
    let reported = run.u64_at("/peak/rss_bytes");
    assert!(
        within(reported, true_peak, 0.03),
        "reported {reported} vs true {true_peak}"
    );
    let source = run.str_at("/peak/source");
    assert!(
        source == "VmHWM" || source == "ru_maxrss",
        "peak from a kernel counter, got {source}"
    );
    assert!(reported > 600 * MIB);
    for key in [
        "schema",
        "command",
        "exit",
        "duration_s",
        "peak",
        "limits",
        "budget",
        "processes",
        "timeline",
    ] {
        assert!(run.report().get(key).is_some(), "report lacks {key}");
    }
    assert_eq!(run.str_at("/schema"), "memwarden.report/1");
    assert!(run.report()["timeline"]
        .as_array()
        .is_some_and(|t| !t.is_empty()));
}

#[test]
fn exceeding_the_budget_fails_the_run() {
    let run = run_python(&["--budget", "100MiB"], &numpy_hold(600, 0.5));
    assert_eq!(
        run.code(),
        3,
        "budget failures exit 3; stderr: {}",
        run.stderr()
    );
    assert_eq!(run.str_at("/budget/status"), "fail");
    assert_eq!(run.u64_at("/budget/limit_bytes"), 100 * MIB);
    assert!(run.stderr().contains("FAIL"), "{}", run.stderr());
}

#[test]
fn staying_under_the_budget_passes() {
    let run = run(&["--budget", "1GiB"], &["sleep", "0.2"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(run.str_at("/budget/status"), "pass");
}

#[test]
fn hard_limit_kills_the_command_and_reports_an_oom_kill() {
    let started = Instant::now();
    let run = run_python(&["--hard-limit", "300MiB"], &numpy_hold(600, 1.0));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "returned promptly"
    );
    assert_eq!(
        run.code(),
        137,
        "killed by SIGKILL; stderr: {}",
        run.stderr()
    );
    assert_eq!(run.report()["exit"]["oom_killed"], Value::Bool(true));
    assert_eq!(run.u64_at("/exit/signal"), 9);
    let at = run.u64_at("/exit/oom_at_bytes");
    assert!(
        at > 200 * MIB && at < 400 * MIB,
        "killed near the limit, at {at}"
    );
    let enforced_by = run.str_at("/budget/enforced_by");
    assert!(enforced_by == "cgroup" || enforced_by == "watchdog");
    assert!(run.stderr().contains("OOM-KILLED"), "{}", run.stderr());
}

#[test]
fn a_missing_command_exits_127_like_a_shell() {
    let run = run(&[], &["memwarden-no-such-command-anywhere"]);
    assert_eq!(run.code(), 127);
    assert!(
        run.stderr()
            .contains("command not found: memwarden-no-such-command-anywhere"),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_command_that_is_not_executable_exits_126() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("not-executable");
    std::fs::write(&script, "#!/bin/sh\necho ran\n").expect("write");
    let run = run(&[], &[script.to_str().expect("utf-8")]);
    assert!(!run.stderr().contains("ran"));
    assert_eq!(run.code(), 126, "{}", run.stderr());
}

#[test]
fn a_command_killed_by_a_signal_is_reported_with_128_plus_signal() {
    let run = run(&[], &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(run.code(), 128 + 15, "{}", run.stderr());
    assert_eq!(run.u64_at("/exit/signal"), 15);
    assert_eq!(run.str_at("/exit/signal_name"), "SIGTERM");
    assert_eq!(run.report()["exit"]["oom_killed"], Value::Bool(false));
}

#[test]
fn the_command_exit_code_passes_through() {
    let run = run(&[], &["sh", "-c", "exit 7"]);
    assert_eq!(run.code(), 7);
    assert_eq!(run.u64_at("/exit/code"), 7);
    assert_eq!(run.u64_at("/exit/memwarden_exit_code"), 7);
}

#[test]
fn a_command_that_exits_at_once_still_has_a_complete_report() {
    // With and without a cgroup of its own: the command may already be a zombie when it is
    // first listed, and must still be one process with its command line.
    for mode in ["auto", "off"] {
        let run = run(&["--cgroup", mode], &["true"]);
        assert_eq!(run.code(), 0, "{}", run.stderr());
        let processes = run.report()["processes"].as_array().expect("processes");
        assert_eq!(processes.len(), 1, "--cgroup {mode}: {processes:#?}");
        assert!(
            processes[0]["peak_rss_bytes"]
                .as_u64()
                .is_some_and(|b| b > 0),
            "{:#}",
            processes[0]
        );
        assert_eq!(processes[0]["cmdline"][0], "true");
        assert_eq!(processes[0]["exit_code"], 0);
        assert!(run.u64_at("/peak/rss_bytes") > 0);
    }
}

#[test]
fn what_was_not_measured_is_null_with_a_reason_never_zero() {
    // `true` often ends before the first reading of its memory maps; whether a given run
    // was read or not, a figure is either measured (above zero: a live process always has
    // resident pages) or null with a warning saying why.
    for attempt in 0..10 {
        let run = run(&["--cgroup", "off"], &["true"]);
        let report = run.report();
        let peak = &report["peak"];
        let pss = &peak["pss_bytes"];
        assert!(
            pss.is_null() || pss.as_u64().is_some_and(|b| b > 0),
            "attempt {attempt}: peak.pss_bytes = {pss}"
        );
        assert_eq!(peak["uss_bytes"].is_null(), pss.is_null(), "{peak:#}");
        let (anon, file) = (&peak["anon_bytes"], &peak["file_bytes"]);
        assert_eq!(anon.is_null(), file.is_null(), "{peak:#}");
        if !anon.is_null() {
            assert!(
                anon.as_u64().unwrap_or(0) + file.as_u64().unwrap_or(0) > 0,
                "{peak:#}"
            );
        }
        for field in ["pss_bytes", "uss_bytes", "anon_bytes", "file_bytes"] {
            assert_eq!(
                peak[field].is_null(),
                peak["sources"][field].is_null(),
                "attempt {attempt}: a source only for what was measured: {peak:#}"
            );
        }
        if report["peak"]["pss_bytes"].is_null() {
            assert!(
                report["warnings"].to_string().contains("were not measured"),
                "{:#}",
                report["warnings"]
            );
        }
    }
}

#[test]
fn two_hundred_short_lived_processes_leave_no_hole_in_the_figures() {
    let script = "for i in $(seq 200); do (echo $i > /dev/null) & done; wait";
    let run = run(&["--interval", "5ms"], &["sh", "-c", script]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let processes = run.report()["processes"].as_array().expect("processes");
    assert!(!processes.is_empty());
    for process in processes {
        let peak = process["peak_rss_bytes"].as_u64();
        assert!(
            peak.is_some_and(|b| b > 0),
            "every process has a positive peak: {process:#}"
        );
    }
    for point in run.report()["timeline"].as_array().expect("timeline") {
        assert!(
            point["rss_bytes"].as_u64().is_some() && point["pss_bytes"].as_u64().is_some(),
            "{point:#}"
        );
    }
}

#[test]
fn unparseable_sizes_are_refused_before_anything_runs() {
    for (option, value) in [
        ("--budget", "lots"),
        ("--hard-limit", "2G"),
        ("--budget", "-1MiB"),
    ] {
        let run = run(&[option, value], &["touch", "ran"]);
        assert_eq!(run.code(), 2, "{option} {value}");
        assert!(
            run.stderr().contains(option),
            "error names the option: {}",
            run.stderr()
        );
        assert!(
            !run.dir.path().join("ran").exists(),
            "the command did not start"
        );
    }
    let run = run(&["--hard-limit", "2G"], &["true"]);
    assert!(
        run.stderr().contains("GiB") && run.stderr().contains("GB"),
        "says what to write: {}",
        run.stderr()
    );
}

#[test]
fn an_unwritable_report_path_is_refused_before_the_command_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").expect("write");
    let marker = dir.path().join("ran");
    let output = util::memwarden()
        .args(["run", "--json"])
        .arg(blocker.join("report.json"))
        .args(["--", "touch"])
        .arg(&marker)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--json"));
    assert!(!marker.exists(), "the command did not start");
}

#[test]
fn orphans_are_adopted_reaped_and_reported() {
    // The subshell exits at once; its `sleep` is re-parented to memwarden (a subreaper).
    let run = run(&[], &["sh", "-c", "(sleep 0.4 &) ; sleep 0.8"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let processes = run.report()["processes"].as_array().expect("processes");
    let orphan = processes
        .iter()
        .find(|p| {
            p["cmdline"].as_array().is_some_and(|c| {
                c.first().and_then(Value::as_str) == Some("sleep")
                    && c.get(1).and_then(Value::as_str) == Some("0.4")
            })
        })
        .unwrap_or_else(|| panic!("orphaned sleep seen: {processes:#?}"));
    assert_eq!(
        orphan["exit_code"],
        Value::from(0),
        "memwarden reaped it: {orphan:#}"
    );
}

#[test]
fn sigterm_to_memwarden_is_forwarded_and_the_report_still_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let code = "import signal, sys, time\n\
                signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n\
                print('ready', flush=True)\n\
                time.sleep(30)\n";
    let mut child = util::memwarden()
        .args(["run", "--quiet", "--json"])
        .arg(&json)
        .arg("--")
        .arg(util::python())
        .args(["-c", code])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line.trim(), "ready");
    // SAFETY: kill has no memory-safety preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(42),
        "the command saw SIGTERM and chose its exit code"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("json");
    assert_eq!(report["exit"]["code"], Value::from(42));
    assert!(report["warnings"].to_string().contains("SIGTERM"));
}

#[test]
fn two_pool_workers_holding_300_mib_each_are_measured_per_process_and_in_total() {
    let code = r#"
import multiprocessing as mp, os, time, resource
import numpy as np

def smaps_pss():
    with open('/proc/self/smaps_rollup') as f:
        for line in f:
            if line.startswith('Pss:'):
                return int(line.split()[1]) * 1024

def hold(_):
    a = np.ones(300 * 1024 * 1024 // 8)
    time.sleep(1.5)
    pss = smaps_pss()
    time.sleep(0.5)
    return os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, pss

if __name__ == '__main__':
    mp.set_start_method('fork')
    with mp.Pool(2) as pool:
        results = pool.map(hold, [0, 1], chunksize=1)
        parent_pss = smaps_pss()
    for pid, maxrss, pss in results:
        print(pid, maxrss, pss)
    print('parent', parent_pss)
"#;
    let run = run_python(&["--interval", "20ms"], code);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let stdout = String::from_utf8_lossy(&run.output.stdout).into_owned();
    let mut truth_pss_total = 0;
    let processes = run.report()["processes"]
        .as_array()
        .expect("processes")
        .clone();
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields[0] == "parent" {
            truth_pss_total += fields[1].parse::<u64>().expect("pss");
            continue;
        }
        let (pid, maxrss, pss): (i64, u64, u64) = (
            fields[0].parse().expect("pid"),
            fields[1].parse().expect("rss"),
            fields[2].parse().expect("pss"),
        );
        truth_pss_total += pss;
        let record = processes
            .iter()
            .find(|p| p["pid"].as_i64() == Some(pid))
            .expect("worker in the report");
        let peak = record["peak_rss_bytes"].as_u64().expect("peak");
        assert!(
            within(peak, maxrss, 0.05),
            "worker {pid}: reported {peak} vs ru_maxrss {maxrss}"
        );
    }
    let pss_peak = run.u64_at("/peak/pss_bytes");
    assert!(
        within(pss_peak, truth_pss_total, 0.05),
        "tree PSS {pss_peak} vs the processes' own {truth_pss_total}"
    );
    assert!(pss_peak > 600 * MIB);
}

#[test]
fn quiet_runs_print_nothing_and_terminals_get_a_live_status_line() {
    let quiet = run(&["--quiet"], &["sleep", "0.1"]);
    assert_eq!(quiet.code(), 0);
    assert!(quiet.output.stderr.is_empty(), "quiet: {}", quiet.stderr());

    let piped = run(&[], &["sleep", "0.5"]);
    assert!(
        !piped.stderr().contains("\x1b[2K"),
        "no status line when stderr is not a terminal"
    );
    assert!(
        piped.stderr().contains("peak RSS"),
        "summary printed: {}",
        piped.stderr()
    );

    // `script` gives memwarden a pseudo-terminal.
    let binary = env!("CARGO_BIN_EXE_memwarden");
    let output = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("MEMWARDEN_NO_GPU=1 {binary} run --budget 1GiB -- sleep 1"),
            "/dev/null",
        ])
        .output();
    match output {
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stdout);
            assert!(
                text.contains("\x1b[2K") && text.contains("budget ["),
                "status line drawn: {text:?}"
            );
        }
        Err(e) => panic!("`script` (util-linux) is needed for the terminal test: {e}"),
    }
}

#[test]
fn hard_limit_falls_back_to_the_watchdog_when_cgroups_are_read_only() {
    // A private mount namespace in which every cgroup filesystem is read-only: memwarden
    // cannot create a cgroup and must say so, then enforce the limit itself.
    if !util::require(
        "hard_limit_falls_back_to_the_watchdog_when_cgroups_are_read_only",
        util::mount_namespace(),
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let python = util::python();
    let script = format!(
        "for m in $(awk '$9 == \"cgroup\" || $9 == \"cgroup2\" {{ print $5 }}' /proc/self/mountinfo); do \
             mount -o remount,bind,ro \"$m\" || exit 99; \
         done; \
         exec {binary} run --hard-limit 300MiB --json {json} -- {python} -c '{code}'",
        binary = env!("CARGO_BIN_EXE_memwarden"),
        json = json.display(),
        python = python.display(),
        code = numpy_hold(600, 1.0),
    );
    let started = Instant::now();
    let output = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env("MEMWARDEN_NO_GPU", "1")
        .output()
        .expect("unshare runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(137), "killed: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("json");
    assert_eq!(
        report["budget"]["enforced_by"], "watchdog",
        "{:#}",
        report["budget"]
    );
    let note = report["budget"]["enforcement_note"]
        .as_str()
        .expect("the report says why");
    assert!(
        note.contains("watchdog") && note.contains("cgroup"),
        "{note}"
    );
    assert_eq!(report["exit"]["oom_killed"], Value::Bool(true));
    assert_eq!(report["exit"]["oom_killed_by"], "watchdog");
    let at = report["exit"]["oom_at_bytes"].as_u64().expect("at");
    assert!(
        at > 300 * MIB && at < 450 * MIB,
        "killed soon after crossing the limit: {at}"
    );
    assert!(stderr.contains("watchdog"), "{stderr}");
}

#[test]
fn cgroup_off_enforces_the_hard_limit_with_the_watchdog() {
    let run = run_python(
        &["--hard-limit", "300MiB", "--cgroup", "off"],
        &numpy_hold(600, 1.0),
    );
    assert_eq!(run.code(), 137, "{}", run.stderr());
    assert_eq!(run.str_at("/budget/enforced_by"), "watchdog");
    assert_eq!(run.str_at("/exit/oom_killed_by"), "watchdog");
    assert_eq!(run.report()["monitor"]["own_cgroup"], Value::Bool(false));
}

#[test]
fn the_command_gets_a_cgroup_of_its_own_with_an_exact_peak_when_the_kernel_allows() {
    let run = run_python(&["--cgroup", "require"], &numpy_hold(200, 0.3));
    if run.code() == 2 && run.stderr().contains("--cgroup require") {
        return util::skip(
            "the_command_gets_a_cgroup_of_its_own_with_an_exact_peak_when_the_kernel_allows",
            &format!(
                "this machine gives memwarden no writable memory cgroup: {}",
                run.stderr().trim()
            ),
        );
    }
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(run.report()["monitor"]["own_cgroup"], Value::Bool(true));
    assert_eq!(run.str_at("/peak/sources/cgroup_bytes"), "cgroup");
    assert!(run.u64_at("/peak/cgroup_bytes") >= 200 * MIB);
    // Tests run in parallel, each memwarden with its own `memwarden-PID`: look for this one's.
    let memwarden_pid = run.u64_at("/processes/0/ppid");
    let path = run.str_at("/limits/cgroup_path");
    let leftovers: Vec<_> = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]
        .iter()
        .map(|mount| std::path::PathBuf::from(format!("{mount}{path}/memwarden-{memwarden_pid}")))
        .filter(|dir| dir.exists())
        .collect();
    assert!(
        leftovers.is_empty(),
        "the run's cgroup was removed: {leftovers:?}"
    );
}

#[test]
fn a_spike_shorter_than_the_interval_after_a_long_idle_is_still_the_peak() {
    // Idle long enough to be read only every fourth tick, then a 300 MiB spike that is
    // freed at once: only the kernel's high-water mark can have seen it.
    let code = "import numpy as np, time, resource\n\
                time.sleep(1.5)\n\
                a = np.ones(300 * 1024 * 1024 // 8); del a\n\
                time.sleep(0.6)\n\
                print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n";
    let run = run_python(&["--interval", "100ms"], code);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let true_peak: u64 = String::from_utf8_lossy(&run.output.stdout)
        .trim()
        .parse()
        .expect("ru_maxrss");
    let reported = run.u64_at("/peak/rss_bytes");
    assert!(
        within(reported, true_peak, 0.03),
        "reported {reported} vs true {true_peak}"
    );
    assert_ne!(run.str_at("/peak/source"), "sampled");
}
