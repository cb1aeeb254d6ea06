//! Synthetic reports for the rules' tests.

use memwarden_format::report::{
    Budget, Exit, Gpu, HeapTimelinePoint, Limits, MonitorInfo, Peak, PeakSource, Profile,
    ProfileMode, Report, SourceLine, StackBytes, StackFrame, TimelineStackBytes, SCHEMA,
};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// numpy's package directory in a virtual environment.
pub const NUMPY: &str = "/venv/lib/python3.11/site-packages/numpy";

pub fn frame(file: &str, line: u32, function: &str) -> StackFrame {
    StackFrame::new(file, line, function)
}

/// `train.py:line` in `main`.
pub fn user(line: u32) -> StackFrame {
    frame("train.py", line, "main")
}

/// Adds the text of `frame`'s line to the profile (kept sorted, as `sources::attach` does).
pub fn source(profile: &mut Profile, frame: &StackFrame, text: &str) {
    profile.source_lines.push(SourceLine {
        file: frame.file.clone(),
        line: frame.line,
        text: text.to_owned(),
    });
    profile
        .source_lines
        .sort_by(|a, b| (a.file.as_str(), a.line).cmp(&(b.file.as_str(), b.line)));
}

/// A profile whose heap peaked at `peak_bytes`, held by `at_peak`.
pub fn profile(mode: ProfileMode, peak_bytes: u64, at_peak: Vec<StackBytes>) -> Profile {
    Profile {
        peak_bytes,
        sample_bytes: (mode == ProfileMode::Sampled).then_some(512 << 10),
        at_peak,
        ..Profile::empty(mode)
    }
}

/// Appends a timeline point at `t_s` holding `stacks` (each a stack and its bytes).
pub fn tick(profile: &mut Profile, t_s: f64, stacks: &[(&[StackFrame], u64)]) {
    let mut top = Vec::new();
    for (stack, bytes) in stacks {
        let id = match profile.timeline_stacks.iter().position(|s| s == stack) {
            Some(id) => id,
            None => {
                profile.timeline_stacks.push(stack.to_vec());
                profile.timeline_stacks.len() - 1
            }
        };
        top.push(TimelineStackBytes {
            stack_id: id as u32,
            bytes: *bytes,
        });
    }
    profile.timeline.push(HeapTimelinePoint {
        t_s,
        heap_bytes: stacks.iter().map(|(_, b)| b).sum(),
        top,
    });
}

/// A finished run with `profile`: 16 GiB of memory, no budget, a peak RSS just over the heap.
pub fn report(profile: Profile) -> Report {
    let rss_bytes = profile.peak_bytes + 30 * MIB;
    Report {
        schema: SCHEMA.to_owned(),
        memwarden_version: "0.1.0".to_owned(),
        model: None,
        command: vec!["python".to_owned(), "train.py".to_owned()],
        cwd: "/work/project".to_owned(),
        started_at_unix_s: 0.0,
        duration_s: 3.0,
        exit: Exit {
            code: Some(0),
            ..Exit::default()
        },
        peak: Peak {
            anon_bytes: Some(rss_bytes - 20 * MIB),
            file_bytes: Some(20 * MIB),
            heap_bytes: Some(profile.peak_bytes),
            at_s: 1.0,
            ..Peak::new(rss_bytes, PeakSource::VmHwm)
        },
        limits: Limits {
            system_total_bytes: 16 * GIB,
            tightest_limit_bytes: 16 * GIB,
            tightest_limit_source: "system".to_owned(),
            headroom_bytes: (16 * GIB - rss_bytes) as i64,
            ..Limits::default()
        },
        budget: Budget::unset(),
        gpu: Gpu::default(),
        monitor: MonitorInfo::default(),
        processes: Vec::new(),
        timeline: Vec::new(),
        warnings: Vec::new(),
        profile: Some(profile),
        advice: Vec::new(),
    }
}
