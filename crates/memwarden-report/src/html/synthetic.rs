//! A large synthetic run for the page's size and speed checks: 200 processes with 25
//! stacks each at their peaks, 100 000 distinct stacks pruned for the flame graphs, and a
//! 2000-point timeline with its stacks. The unit tests of `html` use it, and so does the
//! browser test of `memwarden-cli` (`tests/html_report.rs` includes this file), which
//! passes its own path to `memwarden_report::flame::prune`.

use memwarden_format::report::{
    Budget, Exit, Gpu, HeapTimelinePoint, Limits, LineStats, MonitorInfo, Peak, PeakSource,
    ProcessProfile, ProcessReport, Profile, ProfileMode, Report, SourceLine, StackBytes,
    StackFrame, TimelinePoint, TimelineStackBytes, SCHEMA,
};

const MIB: u64 = 1 << 20;
const PROCESSES: usize = 200;
const STACKS_PER_PROCESS: usize = 25;
const DISTINCT_STACKS: usize = 100_000;
const TIMELINE_POINTS: usize = 2000;

/// A deep stack, innermost first, as a training loop in a library would make: `depth`
/// frames, the innermost ones named by `leaf`.
fn stack(leaf: usize, depth: u32, module: usize) -> Vec<StackFrame> {
    let mut frames: Vec<StackFrame> = (0..depth)
        .map(|level| {
            StackFrame::new(
                format!("/srv/venv/lib/python3.11/site-packages/pkg{module}/layer{level}.py"),
                100 + level * 7,
                format!("Layer{level}.forward"),
            )
        })
        .collect();
    frames[0] = StackFrame::new(
        format!("/srv/project/data/shard_{}.py", leaf % 997),
        10 + (leaf % 400) as u32,
        format!("load_batch_{leaf}"),
    );
    frames.push(StackFrame::new(
        "/srv/project/train.py".to_owned(),
        12,
        "<module>".to_owned(),
    ));
    frames
}

/// The large run; `prune` is `memwarden_report::flame::prune`.
pub fn large_report(prune: impl Fn(&[StackBytes], u64) -> Vec<StackBytes>) -> Report {
    let distinct: Vec<StackBytes> = (0..DISTINCT_STACKS)
        .map(|i| StackBytes::new(stack(i, 10, i % 13), 4096 + (i as u64 * 7919) % 200_000))
        .collect();
    let peak_bytes: u64 = distinct.iter().map(|s| s.bytes).sum();
    let flame_at_peak = prune(&distinct, peak_bytes);
    let flame_leaked = prune(&distinct[..DISTINCT_STACKS / 3], peak_bytes);
    let timeline_stacks: Vec<Vec<StackFrame>> = (0..TIMELINE_POINTS)
        .map(|i| stack(i * 31, 12, i % 7))
        .collect();
    let heap_timeline = (0..TIMELINE_POINTS)
        .map(|i| HeapTimelinePoint {
            t_s: i as f64 * 0.05,
            heap_bytes: (i as u64 % 500) * MIB,
            top: (0..5)
                .map(|k| TimelineStackBytes {
                    stack_id: ((i + k * 97) % TIMELINE_POINTS) as u32,
                    bytes: (5 - k as u64) * MIB,
                })
                .collect(),
        })
        .collect();
    let timeline = (0..TIMELINE_POINTS)
        .map(|i| TimelinePoint {
            t_s: i as f64 * 0.05,
            rss_bytes: (600 + i as u64 % 500) * MIB,
            pss_bytes: (400 + i as u64 % 500) * MIB,
            processes: PROCESSES as u32,
            ..TimelinePoint::default()
        })
        .collect();
    let lines: Vec<LineStats> = distinct[..500]
        .iter()
        .map(|s| LineStats {
            frame: s.stack[0].clone(),
            peak_bytes: s.bytes,
            small_object_bytes: 0,
            leaked_bytes: s.bytes / 3,
            allocated_bytes: s.bytes * 4,
            allocations: 17,
        })
        .collect();
    let source_lines = lines
        .iter()
        .map(|line| SourceLine {
            file: line.frame.file.clone(),
            line: line.frame.line,
            text: format!(
                "batch = torch.stack([decode(x) for x in shard[{}]])",
                line.frame.line
            ),
        })
        .collect();
    let processes = (0..PROCESSES)
        .map(|p| ProcessReport {
            pid: 10_000 + p as i32,
            ppid: 10_000,
            cmdline: vec![
                "/srv/venv/bin/python".to_owned(),
                "-m".to_owned(),
                "torch.distributed.run".to_owned(),
                format!("--worker={p}"),
            ],
            first_seen_s: p as f64 * 0.3,
            last_seen_s: p as f64 * 0.3 + 30.0,
            peak_rss_bytes: Some((300 + p as u64) * MIB),
            peak_rss_source: Some(PeakSource::VmHwm),
            profile: Some(ProcessProfile {
                python: Some("3.11.7".to_owned()),
                peak_bytes: 250 * MIB,
                peak_at_s: Some(p as f64 * 0.3 + 10.0),
                requested_peak_bytes: 250 * MIB,
                reserved_bytes: 0,
                leaked_bytes: 10 * MIB,
                exited_cleanly: true,
                at_peak: (0..STACKS_PER_PROCESS)
                    .map(|k| {
                        StackBytes::new(stack(p * 1000 + k, 14, p % 11), (25 - k as u64) * MIB)
                    })
                    .collect(),
                leaked: Vec::new(),
            }),
            ..ProcessReport::default()
        })
        .collect();
    let gib = 1u64 << 30;
    Report {
        schema: SCHEMA.to_owned(),
        memwarden_version: "0.1.0".to_owned(),
        model: None,
        command: vec!["python".to_owned(), "train.py".to_owned()],
        cwd: "/srv/project".to_owned(),
        started_at_unix_s: 1_795_000_000.0,
        duration_s: TIMELINE_POINTS as f64 * 0.05,
        exit: Exit {
            code: Some(0),
            ..Exit::default()
        },
        peak: Peak {
            pss_bytes: Some(900 * MIB),
            heap_bytes: Some(peak_bytes),
            at_s: 50.0,
            pid: Some(10_000),
            ..Peak::new(1100 * MIB, PeakSource::Sampled)
        },
        limits: Limits {
            system_total_bytes: 64 * gib,
            tightest_limit_bytes: 64 * gib,
            tightest_limit_source: "system".to_owned(),
            headroom_bytes: (63 * gib) as i64,
            ..Limits::default()
        },
        budget: Budget::unset(),
        gpu: Gpu::default(),
        monitor: MonitorInfo::default(),
        processes,
        timeline,
        warnings: Vec::new(),
        profile: Some(Profile {
            peak_bytes,
            peak_at_s: Some(50.0),
            timeline: heap_timeline,
            timeline_stacks,
            lines,
            flame_at_peak,
            flame_leaked,
            source_lines,
            ..Profile::empty(ProfileMode::Sampled)
        }),
        advice: Vec::new(),
    }
}
