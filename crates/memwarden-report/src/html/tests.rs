use memwarden_format::advice::{Advice, Technique};
use memwarden_format::report::{
    Budget, BudgetStatus, Enforcement, Exit, Gpu, HeapTimelinePoint, Limits, LineStats, ModelRun,
    MonitorInfo, Peak, PeakSource, ProcessProfile, ProcessReport, Profile, ProfileMode, Report,
    SourceLine, StackBytes, StackFrame, TimelinePoint, TimelineStackBytes, SCHEMA,
};

use super::{render, synthetic};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Names a profiled program could give its files, functions and threads to break out of
/// the page: markup, a comment, quotes, a line separator, a byte that is not UTF-8.
const HOSTILE: [&str; 6] = [
    "</script><script>window.__pwned=1</script>",
    "<!--<script>",
    r#""><img src=x onerror="window.__pwned=2">"#,
    "it's & \u{2028}\u{2029} done",
    r"caf\xe9.py",
    "--></style></head>",
];

fn frame(file: &str, line: u32, function: &str) -> StackFrame {
    StackFrame::new(file, line, function)
}

/// A small profiled run of two processes, with its model, a budget, two pieces of advice,
/// and `names` as the file, function and thread names of its stacks.
fn report(names: &[&str]) -> Report {
    let main = frame("/work/project/train.py", 30, "main");
    let mut stacks = vec![StackBytes::new(
        vec![frame("/work/project/train.py", 12, "load"), main.clone()],
        600 * MIB,
    )];
    for (i, name) in names.iter().enumerate() {
        stacks.push(StackBytes::new(
            vec![
                frame(name, 7, name),
                frame("/work/project/train.py", 40, name),
            ],
            (50 + i as u64) * MIB,
        ));
    }
    let mut import = frame("/work/project/train.py", 1, "<module>");
    import.imports = Some("numpy".to_owned());
    stacks.push(StackBytes::new(vec![import.clone()], 40 * MIB));
    let peak_bytes: u64 = stacks.iter().map(|s| s.bytes).sum();
    let timeline_stacks: Vec<Vec<StackFrame>> = stacks.iter().map(|s| s.stack.clone()).collect();
    let source_lines = vec![SourceLine {
        file: "/work/project/train.py".to_owned(),
        line: 12,
        text: "rows = f.readlines()  # </script> & <b>".to_owned(),
    }];
    let mut lines: Vec<LineStats> = stacks
        .iter()
        .map(|s| LineStats {
            frame: s.stack[0].clone(),
            peak_bytes: s.bytes,
            small_object_bytes: 0,
            leaked_bytes: 0,
            allocated_bytes: s.bytes * 2,
            allocations: 3,
        })
        .collect();
    lines[0].leaked_bytes = 200 * MIB;
    let profile = Profile {
        peak_bytes,
        peak_at_s: Some(1.5),
        leaked_bytes: 200 * MIB,
        timeline: (0..4)
            .map(|i| HeapTimelinePoint {
                t_s: i as f64 * 0.5,
                heap_bytes: peak_bytes / 4 * (i + 1),
                top: vec![TimelineStackBytes {
                    stack_id: i as u32 % timeline_stacks.len() as u32,
                    bytes: MIB * (i + 1),
                }],
            })
            .collect(),
        timeline_stacks,
        lines,
        flame_at_peak: stacks.clone(),
        flame_leaked: vec![stacks[0].clone()],
        source_lines,
        at_peak: stacks.clone(),
        ..Profile::empty(ProfileMode::Exact)
    };
    let process = |pid: i32, ppid: i32, cmdline: Vec<String>| ProcessReport {
        pid,
        ppid,
        cmdline,
        first_seen_s: 0.1,
        last_seen_s: 1.9,
        exit_code: Some(0),
        peak_rss_bytes: Some(500 * MIB),
        peak_rss_source: Some(PeakSource::VmHwm),
        profile: Some(ProcessProfile {
            python: Some("3.11.7".to_owned()),
            peak_bytes: 400 * MIB,
            peak_at_s: Some(1.0),
            requested_peak_bytes: 400 * MIB,
            reserved_bytes: 0,
            leaked_bytes: 0,
            exited_cleanly: true,
            at_peak: stacks.clone(),
            leaked: Vec::new(),
        }),
        ..ProcessReport::default()
    };
    let mut command = vec!["python".to_owned(), "train.py".to_owned()];
    command.extend(names.iter().map(|n| n.to_string()));
    Report {
        schema: SCHEMA.to_owned(),
        memwarden_version: "0.1.0".to_owned(),
        model: Some(ModelRun {
            name: "fraud".to_owned(),
            version: "3".to_owned(),
            stage: "train".to_owned(),
            run_id: "r-42".to_owned(),
        }),
        processes: vec![
            process(100, 1, command.clone()),
            process(101, 100, names.iter().map(|n| n.to_string()).collect()),
        ],
        command,
        cwd: "/work/project".to_owned(),
        started_at_unix_s: 1_795_000_000.0,
        duration_s: 2.0,
        exit: Exit {
            code: Some(0),
            ..Exit::default()
        },
        peak: Peak {
            pss_bytes: Some(800 * MIB),
            heap_bytes: Some(peak_bytes),
            at_s: 1.5,
            pid: Some(100),
            sources: [("pss_bytes".to_owned(), PeakSource::Sampled)].into(),
            ..Peak::new(900 * MIB, PeakSource::VmHwm)
        },
        limits: Limits {
            cgroup_limit_bytes: Some(2 * GIB),
            system_total_bytes: 16 * GIB,
            tightest_limit_bytes: 2 * GIB,
            tightest_limit_source: "cgroup".to_owned(),
            headroom_bytes: (2 * GIB - 900 * MIB) as i64,
            ..Limits::default()
        },
        budget: Budget {
            limit_bytes: Some(GIB),
            metric: "peak.rss_bytes".to_owned(),
            status: BudgetStatus::Pass,
            hard_limit_bytes: None,
            enforced_by: Enforcement::None,
            enforcement_note: None,
        },
        gpu: Gpu {
            status: "unavailable".to_owned(),
            reason: Some("no NVML".to_owned()),
            devices: Vec::new(),
        },
        monitor: MonitorInfo::default(),
        timeline: (0..5)
            .map(|i| TimelinePoint {
                t_s: i as f64 * 0.5,
                rss_bytes: 200 * MIB * (i + 1),
                pss_bytes: 150 * MIB * (i + 1),
                ..TimelinePoint::default()
            })
            .collect(),
        warnings: names.iter().map(|n| format!("warning about {n}")).collect(),
        profile: Some(profile),
        advice: vec![
            Advice {
                technique: Technique::Stream,
                rule: "materialised_read".to_owned(),
                frame: Some(frame("/work/project/train.py", 12, "load")),
                source: Some("rows = f.readlines()".to_owned()),
                evidence: "600.00 MiB held at the peak by a whole-file read".to_owned(),
                saving_bytes: Some(550 * MIB),
                saving_basis: "the read's bytes at the peak, less one chunk".to_owned(),
                fix: "iterate over the file instead of readlines()".to_owned(),
            },
            Advice {
                technique: Technique::Headroom,
                rule: "headroom".to_owned(),
                frame: None,
                source: None,
                evidence: "the peak used 44% of the cgroup limit".to_owned(),
                saving_bytes: None,
                saving_basis: "no estimate".to_owned(),
                fix: "keep the budget at 1.00 GiB".to_owned(),
            },
        ],
    }
}

/// The JSON data island, read back as the script reads it.
fn data(page: &str) -> serde_json::Value {
    let start = page
        .find(r#"<script type="application/json" id="memwarden-data">"#)
        .expect("a data island");
    let text = &page[start..];
    let text = &text[text.find('>').expect("tag end") + 1..];
    let end = text.find("</script>").expect("island closed");
    serde_json::from_str(&text[..end]).expect("the island is JSON")
}

#[test]
fn the_header_names_the_run_its_peaks_against_budget_and_limit_and_its_advice() {
    let page = render(&report(&[]));
    for expected in [
        "python train.py",
        "fraud@3",
        ">train<",
        "exit 0",
        "900.00 MiB",
        "kernel high-water mark (VmHWM)",
        "88% of budget 1.00 GiB",
        "44% of limit 2.00 GiB (cgroup)",
        "800.00 MiB",
        "largest sample",
        "unavailable: no NVML",
        "within budget 1.00 GiB",
        "Stream instead of materialising",
        "/work/project/train.py:12  load",
        "rows = f.readlines()",
        "saves about 550.00 MiB",
        "iterate over the file instead of readlines()",
        "Budget and headroom",
        "the run",
        "saving not estimated",
    ] {
        assert!(page.contains(expected), "{expected:?} missing");
    }
    assert_eq!(page.matches(r#"data-testid="advice""#).count(), 2);
}

#[test]
fn without_advice_the_page_says_so_and_says_when_it_needs_the_profile() {
    let mut report = report(&[]);
    report.advice.clear();
    assert!(render(&report).contains("No advice: the measurement shows nothing to change."));
    report.profile = None;
    assert!(render(&report).contains("advice needs the allocation profile"));
}

#[test]
fn script_breaking_names_stay_text_and_never_end_the_script() {
    let page = render(&report(&HOSTILE));
    // Our own two scripts open and close; nothing from the data does.
    assert_eq!(page.matches("<script").count(), 2, "{page}");
    assert_eq!(page.matches("</script").count(), 2);
    assert!(!page.contains("<!--"));
    assert!(!page.contains("<img"));
    // Line separators in HTML text are harmless; in the script's data they are escaped.
    let island = &page[page.find("memwarden-data").expect("island")..];
    let island = &island[..island.find("</script>").expect("closed")];
    assert!(!island.contains('\u{2028}') && !island.contains('\u{2029}'));
    let island = data(&page);
    let strings: Vec<&str> = island["strings"]
        .as_array()
        .expect("strings")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for name in HOSTILE {
        assert!(strings.contains(&name), "{name:?} not kept exactly");
        assert!(page.contains(&super::escape::html(&format!("warning about {name}"))));
    }
}

#[test]
fn the_page_fetches_nothing() {
    let page = render(&report(&[]));
    assert!(page.contains("default-src 'none'"));
    for network in [
        "src=",
        "href=\"http",
        "url(",
        "@import",
        "fetch(",
        "XMLHttpRequest",
        "//cdn",
    ] {
        assert!(!page.contains(network), "{network}");
    }
    // The one URL is SVG's namespace name, which is never fetched.
    assert_eq!(page.matches("http://").count(), 1);
    assert!(!page.contains("https:"));
}

#[test]
fn the_data_interns_frames_and_keeps_stacks_whole() {
    let report = report(&[]);
    let island = data(&render(&report));
    let strings = island["strings"].as_array().expect("strings");
    let frames = island["frames"].as_array().expect("frames");
    let name = |id: &serde_json::Value| strings[id.as_u64().expect("id") as usize].clone();
    let stack = &island["stacks"][0];
    let first = &frames[stack[0].as_u64().expect("frame") as usize];
    assert_eq!(name(&first[0]), "/work/project/train.py");
    assert_eq!(first[1], 12);
    assert_eq!(name(&first[2]), "load");
    assert_eq!(name(&first[4]), "rows = f.readlines()  # </script> & <b>");
    let flame = &island["flame_peak"];
    assert_eq!(flame["parent"][0], -1);
    assert_eq!(
        flame["bytes"][0].as_u64(),
        report.profile.as_ref().map(|p| p.peak_bytes)
    );
    let profile_timeline = &island["heap"]["top"];
    assert_eq!(profile_timeline.as_array().map(Vec::len), Some(4));
}

#[test]
fn frames_are_library_code_or_the_users_by_the_reports_one_rule() {
    let mut report = report(&[]);
    let profile = report.profile.as_mut().expect("profile");
    profile.flame_at_peak.push(StackBytes::new(
        vec![
            frame("/usr/lib/python3.11/json/decoder.py", 353, "raw_decode"),
            frame("<frozen runpy>", 198, "_run_module_as_main"),
        ],
        MIB,
    ));
    let island = data(&render(&report));
    let strings = island["strings"].as_array().expect("strings");
    let library = |file: &str| {
        island["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .find(|f| strings[f[0].as_u64().expect("id") as usize] == file)
            .map(|f| f[5].clone())
    };
    assert_eq!(library("/work/project/train.py"), Some(0.into()));
    assert_eq!(
        library("/usr/lib/python3.11/json/decoder.py"),
        Some(1.into())
    );
    // The page once took this for the user's code: its own pattern knew no `<frozen ...>`.
    assert_eq!(library("<frozen runpy>"), Some(1.into()));
}

#[test]
fn a_run_of_200_processes_and_100k_stacks_makes_a_page_under_5_mib() {
    let report = synthetic::large_report(crate::flame::prune);
    let started = std::time::Instant::now();
    let page = render(&report);
    let elapsed = started.elapsed();
    eprintln!(
        "synthetic 200-process page: {} bytes, rendered in {elapsed:?}",
        page.len()
    );
    assert!(page.len() < 5 * 1024 * 1024, "{} bytes", page.len());
    let island = data(&page);
    assert_eq!(island["processes"].as_array().map(Vec::len), Some(200));
    assert_eq!(island["heap"]["t_s"].as_array().map(Vec::len), Some(2000));
}
