//! The data the page's script reads, built from a [`Report`] and kept compact: every
//! string is interned once (`strings`), every frame once (`frames`, indices into
//! `strings`), every stack once (`stacks`, indices into `frames`), and each flame graph is
//! a node table (parallel arrays, preorder, largest child first) instead of a list of whole
//! stacks. So a page for a run with hundreds of processes stays a few MiB.

use std::collections::{BTreeMap, HashMap};

use memwarden_format::report::{
    PeakSource, ProcessReport, Profile, ProfileMode, Report, StackBytes, StackFrame,
};
use serde::Serialize;

/// Absent index in the tables (no imports note, no source line, no parent).
const NONE: i64 = -1;

/// Everything the script draws.
#[derive(Serialize)]
pub struct Model<'a> {
    strings: Vec<&'a str>,
    /// `[file, line, function, imports, source, library]`: string indices, `-1` when
    /// absent; `library` 1 for library code by the report's one rule
    /// (`crate::lines::is_library`), else 0.
    frames: Vec<[i64; 6]>,
    /// Frame indices, innermost first (as in the report).
    stacks: Vec<Vec<u32>>,
    cwd: &'a str,
    duration_s: f64,
    /// `sampled`, `exact`, or `null` without `--profile`.
    mode: Option<&'static str>,
    peak: PeakModel,
    budget_bytes: Option<u64>,
    limit_bytes: u64,
    limit_source: &'a str,
    timeline: Timeline,
    heap: HeapTimeline,
    /// `[frame, peak, small objects, held at exit, allocated, allocations]`.
    lines: Vec<[u64; 6]>,
    flame_peak: Flame,
    flame_leaked: Flame,
    processes: Vec<ProcessModel<'a>>,
}

#[derive(Serialize)]
struct PeakModel {
    rss_bytes: u64,
    rss_at_s: f64,
    pss_bytes: Option<u64>,
    gpu_bytes: Option<u64>,
    heap_bytes: Option<u64>,
    heap_at_s: Option<f64>,
}

/// The tree's totals, one array per figure.
#[derive(Serialize)]
struct Timeline {
    t_s: Vec<f64>,
    rss: Vec<u64>,
    pss: Vec<u64>,
    /// `null` when no point has a GPU figure.
    gpu: Option<Vec<Option<u64>>>,
}

/// The profiled heap over time and the heaviest stacks at each point.
#[derive(Serialize)]
struct HeapTimeline {
    t_s: Vec<f64>,
    bytes: Vec<u64>,
    /// Per point, `[stack, bytes]` pairs, largest first.
    top: Vec<Vec<[u64; 2]>>,
}

/// A calling tree as parallel arrays; node 0 is the root (all memory), each node's parent
/// comes before it.
#[derive(Serialize, Default)]
struct Flame {
    parent: Vec<i64>,
    frame: Vec<i64>,
    bytes: Vec<u64>,
}

#[derive(Serialize)]
struct ProcessModel<'a> {
    pid: i32,
    ppid: i32,
    cmdline: &'a [String],
    first_seen_s: f64,
    last_seen_s: f64,
    exit_code: Option<i32>,
    exit_signal: Option<i32>,
    rss_bytes: Option<u64>,
    rss_source: Option<&'static str>,
    pss_bytes: Option<u64>,
    heap_bytes: Option<u64>,
    leaked_bytes: Option<u64>,
    exited_cleanly: Option<bool>,
    python: Option<&'a str>,
    /// `[stack, bytes]` at this process's own peak, largest first.
    at_peak: Vec<[u64; 2]>,
}

/// Where a peak figure came from, in words.
pub fn source_name(source: PeakSource) -> &'static str {
    match source {
        PeakSource::VmHwm => "kernel high-water mark (VmHWM)",
        PeakSource::RuMaxrss => "kernel high-water mark (ru_maxrss)",
        PeakSource::Cgroup => "cgroup peak counter",
        PeakSource::Sampled => "largest sample",
        PeakSource::Nvml => "NVML, sampled",
    }
}

/// Milliseconds are all a chart can show; fewer digits, smaller page.
fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

/// The interning tables.
#[derive(Default)]
struct Tables<'a> {
    strings: Vec<&'a str>,
    string_ids: HashMap<&'a str, u32>,
    frames: Vec<[i64; 6]>,
    frame_ids: HashMap<&'a StackFrame, u32>,
    stacks: Vec<Vec<u32>>,
    stack_ids: HashMap<Vec<u32>, u32>,
    sources: HashMap<(&'a str, u32), &'a str>,
}

impl<'a> Tables<'a> {
    fn string(&mut self, text: &'a str) -> u32 {
        if let Some(&id) = self.string_ids.get(text) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(text);
        self.string_ids.insert(text, id);
        id
    }

    fn frame(&mut self, frame: &'a StackFrame) -> u32 {
        if let Some(&id) = self.frame_ids.get(frame) {
            return id;
        }
        let imports = frame
            .imports
            .as_deref()
            .map_or(NONE, |module| i64::from(self.string(module)));
        let source = self
            .sources
            .get(&(frame.file.as_str(), frame.line))
            .copied()
            .map_or(NONE, |text| i64::from(self.string(text)));
        let entry = [
            i64::from(self.string(&frame.file)),
            i64::from(frame.line),
            i64::from(self.string(&frame.function)),
            imports,
            source,
            i64::from(crate::lines::is_library(&frame.file)),
        ];
        let id = self.frames.len() as u32;
        self.frames.push(entry);
        self.frame_ids.insert(frame, id);
        id
    }

    fn stack(&mut self, stack: &'a [StackFrame]) -> u32 {
        let frames: Vec<u32> = stack.iter().map(|frame| self.frame(frame)).collect();
        if let Some(&id) = self.stack_ids.get(&frames) {
            return id;
        }
        let id = self.stacks.len() as u32;
        self.stacks.push(frames.clone());
        self.stack_ids.insert(frames, id);
        id
    }

    fn flame(&mut self, stacks: &'a [StackBytes]) -> Flame {
        #[derive(Default)]
        struct Node {
            bytes: u64,
            children: BTreeMap<u32, Node>,
        }
        fn emit(node: &Node, frame: i64, parent: i64, out: &mut Flame) {
            let id = out.parent.len() as i64;
            out.parent.push(parent);
            out.frame.push(frame);
            out.bytes.push(node.bytes);
            let mut children: Vec<(&u32, &Node)> = node.children.iter().collect();
            children.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then(a.0.cmp(b.0)));
            for (&child_frame, child) in children {
                emit(child, i64::from(child_frame), id, out);
            }
        }
        let mut root = Node::default();
        for entry in stacks.iter().filter(|entry| entry.bytes > 0) {
            root.bytes += entry.bytes;
            let mut node = &mut root;
            for frame in entry.stack.iter().rev() {
                let id = self.frame(frame);
                node = node.children.entry(id).or_default();
                node.bytes += entry.bytes;
            }
        }
        let mut flame = Flame::default();
        emit(&root, NONE, NONE, &mut flame);
        flame
    }
}

/// Builds the page's data from `report`.
pub fn build(report: &Report) -> Model<'_> {
    let mut tables = Tables::default();
    let profile = report.profile.as_ref();
    if let Some(profile) = profile {
        tables.sources = profile
            .source_lines
            .iter()
            .map(|source| ((source.file.as_str(), source.line), source.text.as_str()))
            .collect();
    }
    let heap = profile.map_or(
        HeapTimeline {
            t_s: Vec::new(),
            bytes: Vec::new(),
            top: Vec::new(),
        },
        |profile| heap_timeline(&mut tables, profile),
    );
    let lines = profile.map_or_else(Vec::new, |profile| {
        profile
            .lines
            .iter()
            .map(|line| {
                [
                    u64::from(tables.frame(&line.frame)),
                    line.peak_bytes,
                    line.small_object_bytes,
                    line.leaked_bytes,
                    line.allocated_bytes,
                    line.allocations,
                ]
            })
            .collect()
    });
    let flame_peak = profile.map_or_else(Flame::default, |p| tables.flame(&p.flame_at_peak));
    let flame_leaked = profile.map_or_else(Flame::default, |p| tables.flame(&p.flame_leaked));
    let processes = report
        .processes
        .iter()
        .map(|process| process_model(&mut tables, process))
        .collect();
    let has_gpu = report
        .timeline
        .iter()
        .any(|point| point.gpu_bytes.is_some());
    Model {
        cwd: &report.cwd,
        duration_s: round_ms(report.duration_s),
        mode: profile.map(|profile| match profile.mode {
            ProfileMode::Sampled => "sampled",
            ProfileMode::Exact => "exact",
        }),
        peak: PeakModel {
            rss_bytes: report.peak.rss_bytes,
            rss_at_s: round_ms(report.peak.at_s),
            pss_bytes: report.peak.pss_bytes,
            gpu_bytes: report.peak.gpu_bytes,
            heap_bytes: profile.map(|profile| profile.peak_bytes),
            heap_at_s: profile.and_then(|profile| profile.peak_at_s).map(round_ms),
        },
        budget_bytes: report.budget.limit_bytes,
        limit_bytes: report.limits.tightest_limit_bytes,
        limit_source: &report.limits.tightest_limit_source,
        timeline: Timeline {
            t_s: report.timeline.iter().map(|p| round_ms(p.t_s)).collect(),
            rss: report.timeline.iter().map(|p| p.rss_bytes).collect(),
            pss: report.timeline.iter().map(|p| p.pss_bytes).collect(),
            gpu: has_gpu.then(|| report.timeline.iter().map(|p| p.gpu_bytes).collect()),
        },
        heap,
        lines,
        flame_peak,
        flame_leaked,
        processes,
        strings: tables.strings,
        frames: tables.frames,
        stacks: tables.stacks,
    }
}

fn heap_timeline<'a>(tables: &mut Tables<'a>, profile: &'a Profile) -> HeapTimeline {
    // The report's stack ids index `timeline_stacks`; the page's index its shared table.
    let mut stack_ids: Vec<Option<u32>> = vec![None; profile.timeline_stacks.len()];
    let mut top = Vec::with_capacity(profile.timeline.len());
    for point in &profile.timeline {
        let mut held = Vec::with_capacity(point.top.len());
        for entry in &point.top {
            let index = entry.stack_id as usize;
            let Some(stack) = profile.timeline_stacks.get(index) else {
                continue;
            };
            let id = *stack_ids[index].get_or_insert_with(|| tables.stack(stack));
            held.push([u64::from(id), entry.bytes]);
        }
        top.push(held);
    }
    HeapTimeline {
        t_s: profile.timeline.iter().map(|p| round_ms(p.t_s)).collect(),
        bytes: profile.timeline.iter().map(|p| p.heap_bytes).collect(),
        top,
    }
}

fn process_model<'a>(tables: &mut Tables<'a>, process: &'a ProcessReport) -> ProcessModel<'a> {
    let profile = process.profile.as_ref();
    ProcessModel {
        pid: process.pid,
        ppid: process.ppid,
        cmdline: &process.cmdline,
        first_seen_s: round_ms(process.first_seen_s),
        last_seen_s: round_ms(process.last_seen_s),
        exit_code: process.exit_code,
        exit_signal: process.exit_signal,
        rss_bytes: process.peak_rss_bytes,
        rss_source: process.peak_rss_source.map(source_name),
        pss_bytes: process.peaks.peak_pss_bytes,
        heap_bytes: profile.map(|profile| profile.peak_bytes),
        leaked_bytes: profile.map(|profile| profile.leaked_bytes),
        exited_cleanly: profile.map(|profile| profile.exited_cleanly),
        python: profile.and_then(|profile| profile.python.as_deref()),
        at_peak: profile.map_or_else(Vec::new, |profile| {
            profile
                .at_peak
                .iter()
                .map(|entry| [u64::from(tables.stack(&entry.stack)), entry.bytes])
                .collect()
        }),
    }
}
