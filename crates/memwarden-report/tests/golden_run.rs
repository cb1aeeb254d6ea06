//! Golden files of the run summary (`memwarden run`, and `memwarden analyze`'s profile
//! section), on deterministic reports: fixed times, pids and paths.
//!
//! Refresh deliberately: `MEMWARDEN_BLESS=1 cargo test -p memwarden-report`, then read
//! `git diff crates/memwarden-report/tests/golden/` (see `support/mod.rs`).

mod support;

use memwarden_format::advice::{Advice, Technique};
use memwarden_format::report::{
    Budget, BudgetStatus, Enforcement, Exit, Gpu, Limits, MonitorInfo, Peak, PeakMethod,
    PeakSource, ProcessReport, Profile, ProfileMode, Report, StackBytes, StackFrame, SCHEMA,
};
use memwarden_report::text::{profile_section, summary};
use support::assert_golden;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn process(pid: i32, ppid: i32, cmdline: &[&str]) -> ProcessReport {
    ProcessReport {
        pid,
        ppid,
        cmdline: args(cmdline),
        ..ProcessReport::default()
    }
}

fn peak(rss_bytes: u64, source: PeakSource, at_s: f64, pid: Option<i32>) -> Peak {
    Peak {
        at_s,
        pid,
        ..Peak::new(rss_bytes, source)
    }
}

fn base_report(command: &[&str], peak: Peak) -> Report {
    Report {
        schema: SCHEMA.to_owned(),
        memwarden_version: "0.1.0".to_owned(),
        model: None,
        command: args(command),
        cwd: "/work/project".to_owned(),
        started_at_unix_s: 1_795_000_000.0,
        duration_s: 3.0,
        exit: Exit {
            code: Some(0),
            ..Exit::default()
        },
        peak,
        limits: Limits {
            system_total_bytes: 16 * GIB,
            tightest_limit_bytes: 16 * GIB,
            tightest_limit_source: "system".to_owned(),
            headroom_bytes: (16 * GIB - 900 * MIB) as i64,
            ..Limits::default()
        },
        budget: Budget::unset(),
        gpu: Gpu {
            status: "unavailable".to_owned(),
            ..Gpu::default()
        },
        monitor: MonitorInfo::default(),
        processes: Vec::new(),
        timeline: Vec::new(),
        warnings: Vec::new(),
        profile: None,
        advice: Vec::new(),
    }
}

fn frame(file: &str, line: u32, function: &str) -> StackFrame {
    StackFrame::new(file, line, function)
}

fn stack(frames: Vec<StackFrame>, bytes: u64, reserved_bytes: Option<u64>) -> StackBytes {
    StackBytes {
        stack: frames,
        bytes,
        requested_bytes: reserved_bytes.map(|r| bytes + r),
        reserved_bytes,
    }
}

/// One Python process, within a passing budget, on a machine with a GPU it did not use.
#[test]
fn run_single_process() {
    let mut report = base_report(
        &["python", "train.py", "--epochs=3", "--note", "it's fine"],
        Peak {
            pss_bytes: Some(880 * MIB),
            uss_bytes: Some(860 * MIB),
            ..peak(900 * MIB, PeakSource::VmHwm, 2.5, Some(4242))
        },
    );
    report.duration_s = 3.137;
    report.processes = vec![process(4242, 1, &["python", "train.py", "--epochs=3"])];
    report.limits = Limits {
        cgroup_version: Some(1),
        cgroup_limit_bytes: Some(2 * GIB),
        system_total_bytes: 16 * GIB,
        tightest_limit_bytes: 2 * GIB,
        tightest_limit_source: "cgroup".to_owned(),
        headroom_bytes: (2 * GIB - 900 * MIB) as i64,
        ..Limits::default()
    };
    report.budget = Budget {
        limit_bytes: Some(GIB),
        status: BudgetStatus::Pass,
        ..Budget::unset()
    };
    report.gpu.status = "available".to_owned();
    assert_golden("run_single_process", &summary(&report));
}

/// The profile of a three-process tree: a measured tree peak, stacks at it (more than a
/// table shows, callers cut, an import, reserved pages, a name with a line break), and what
/// each process still held as it ended.
fn tree_profile() -> Profile {
    let cwd = "/work/project";
    let at = |line: u32, function: &str| frame(&format!("{cwd}/train.py"), line, function);
    let mut import = frame(&format!("{cwd}/train.py"), 1, "<module>");
    import.imports = Some("torch".to_owned());
    let at_peak = vec![
        stack(
            vec![
                frame(
                    "/usr/lib/python3.11/site-packages/numpy/lib/npyio.py",
                    456,
                    "load",
                ),
                at(40, "load_features"),
                at(80, "prepare"),
                at(120, "main"),
                at(130, "<module>"),
            ],
            1200 * MIB,
            Some(300 * MIB),
        ),
        stack(vec![at(55, "augment"), at(81, "prepare")], 400 * MIB, None),
        stack(vec![import], 310 * MIB, None),
        stack(
            vec![frame(&format!("{cwd}/loader.py"), 12, "worker\nloop")],
            120 * MIB,
            Some(MIB / 2),
        ),
        stack(
            vec![frame("/usr/bin/python3.11", 0, "[before Python started]")],
            8 * MIB,
            None,
        ),
        stack(vec![at(99, "never_shown")], MIB, None),
    ];
    let leaked = vec![
        stack(
            vec![at(60, "cache_batches"), at(120, "main")],
            700 * MIB,
            None,
        ),
        stack(vec![], 2 * MIB, None),
    ];
    Profile {
        mode: ProfileMode::Sampled,
        sample_bytes: Some(512 * 1024),
        peak_bytes: 2040 * MIB,
        leaked_bytes: 702 * MIB,
        requested_peak_bytes: 2340 * MIB,
        reserved_bytes: 300 * MIB,
        allocated_bytes: 9 * GIB,
        peak_error_bytes: 33 * MIB,
        at_peak,
        leaked,
        top_lines: Vec::new(),
        processes_profiled: 3,
        dropped_allocations: 0,
        peak_method: PeakMethod::Measured,
        peak_at_s: Some(7.25),
        at_peak_bytes: 2039 * MIB,
        at_peak_gap_s: Some(0.012),
        ..Profile::empty(ProfileMode::Sampled)
    }
}

/// A profiled tree of a parent and two DataLoader-style workers, with a GPU.
#[test]
fn run_profiled_tree() {
    let mut report = base_report(
        &["python", "train.py"],
        Peak {
            pss_bytes: Some(2300 * MIB),
            gpu_bytes: Some(3 * GIB),
            heap_bytes: Some(2040 * MIB),
            ..peak(2600 * MIB, PeakSource::Cgroup, 7.3, None)
        },
    );
    report.duration_s = 12.0;
    report.processes = vec![
        process(100, 1, &["python", "train.py"]),
        process(
            101,
            100,
            &[
                "python",
                "-c",
                "from multiprocessing.spawn import spawn_main",
            ],
        ),
        process(
            102,
            100,
            &[
                "python",
                "-c",
                "from multiprocessing.spawn import spawn_main",
            ],
        ),
    ];
    report.limits.headroom_bytes = (16 * GIB - 2600 * MIB) as i64;
    report.gpu.status = "available".to_owned();
    report.profile = Some(tree_profile());
    report.warnings = vec!["2 processes ended before their first sample".to_owned()];
    assert_golden("run_profiled_tree", &summary(&report));
}

/// `memwarden analyze`: the profile section alone, of a single exact-mode capture whose
/// tree peak was summed.
#[test]
fn run_profile_section_exact() {
    let mut profile = tree_profile();
    profile.mode = ProfileMode::Exact;
    profile.sample_bytes = None;
    profile.peak_error_bytes = 0;
    profile.peak_method = PeakMethod::Summed;
    profile.peak_at_s = None;
    profile.at_peak_gap_s = None;
    profile.reserved_bytes = 0;
    profile.processes_profiled = 1;
    profile.at_peak.truncate(3);
    let mut out = String::new();
    profile_section(&mut out, &profile, "/work/project");
    assert_golden("run_profile_section_exact", &out);
}

/// A run killed by the kernel's OOM killer under a hard limit, over its budget.
#[test]
fn run_oom_killed_over_budget() {
    let mut report = base_report(
        &["python", "train.py"],
        Peak {
            pss_bytes: Some(305 * MIB),
            uss_bytes: Some(300 * MIB),
            cgroup_bytes: Some(300 * MIB),
            ..peak(310 * MIB, PeakSource::VmHwm, 4.25, Some(42))
        },
    );
    report.cwd = "/work".to_owned();
    report.duration_s = 12.5;
    report.exit = Exit {
        signal: Some(9),
        signal_name: Some("SIGKILL".to_owned()),
        oom_killed: true,
        oom_killed_by: Some("kernel".to_owned()),
        oom_at_bytes: Some(300 * MIB),
        memwarden_exit_code: 137,
        ..Exit::default()
    };
    report.limits = Limits {
        tightest_limit_bytes: 300 * MIB,
        tightest_limit_source: "hard_limit".to_owned(),
        headroom_bytes: -(10 * MIB as i64),
        ..Limits::default()
    };
    report.budget = Budget {
        limit_bytes: Some(256 * MIB),
        status: BudgetStatus::Fail,
        hard_limit_bytes: Some(300 * MIB),
        enforced_by: Enforcement::Cgroup,
        ..Budget::unset()
    };
    report.processes = vec![process(42, 1, &["python", "train.py"])];
    report.warnings = vec!["something to know".to_owned()];
    assert_golden("run_oom_killed_over_budget", &summary(&report));
}

fn advice(technique: Technique, frame: Option<StackFrame>, saving_bytes: Option<u64>) -> Advice {
    Advice {
        technique,
        rule: format!("{technique:?}").to_lowercase(),
        frame,
        source: None,
        evidence: format!("the evidence for {}", technique.title().to_lowercase()),
        saving_bytes,
        saving_basis: "the basis".to_owned(),
        fix: format!("the fix for {}", technique.title().to_lowercase()),
    }
}

/// The profiled tree with five pieces of advice: the summary shows three, most saved first
/// as the engine sorted them (a line's location relative to the command's directory, the
/// run's as such, a line break in evidence escaped), and says where the rest are.
#[test]
fn run_with_advice() {
    let mut report = base_report(
        &["python", "train.py"],
        Peak {
            heap_bytes: Some(2040 * MIB),
            ..peak(2600 * MIB, PeakSource::VmHwm, 7.3, None)
        },
    );
    report.profile = Some(tree_profile());
    let mut stream = advice(
        Technique::Stream,
        Some(frame("/work/project/train.py", 40, "load_features")),
        Some(1200 * MIB),
    );
    stream.evidence = "held 1.17 GiB at the heap peak, 59% of 1.99 GiB (sampled estimate);\nnp.load without mmap_mode reads the whole array into the heap".to_owned();
    report.advice = vec![
        stream,
        advice(
            Technique::Release,
            Some(frame("/work/project/train.py", 60, "cache_batches")),
            Some(700 * MIB),
        ),
        advice(Technique::Headroom, None, None),
        advice(
            Technique::Temporaries,
            Some(frame("/work/project/train.py", 55, "augment")),
            None,
        ),
        advice(Technique::Headroom, None, None),
    ];
    assert_golden("run_with_advice", &summary(&report));
}
