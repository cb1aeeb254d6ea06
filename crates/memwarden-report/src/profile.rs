//! Analysis of allocation captures: the report's `profile` section, per process and for
//! the whole tree, and folded stacks for flame graphs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memwarden_format::capture::{
    kind, Capture, CaptureError, Frame, SMALL_OBJECTS_FILE, SMALL_OBJECTS_FUNCTION, SUFFIX,
};
use memwarden_format::report::{
    LineAllocations, MallocFigures, PeakMethod, ProcessProfile, Profile, ProfileMode, StackBytes,
    StackFrame,
};

pub use crate::imports::Frames;
use crate::imports::{report_stack, ImportNames};

/// Stacks and lines kept in each list of the report.
pub const TOP: usize = 25;

/// The capture files (`*.mwcap`) in `dir`, in name order.
pub fn capture_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == SUFFIX))
        .collect();
    paths.sort();
    Ok(paths)
}

/// The mode `capture` was recorded in.
pub fn mode_of(capture: &Capture) -> ProfileMode {
    if capture.exact {
        ProfileMode::Exact
    } else {
        ProfileMode::Sampled
    }
}

/// Reads capture files. Captures that cannot be read are returned as errors beside the
/// good ones (one bad process does not hide the others); captures of processes that never
/// had an allocation recorded are skipped.
pub fn read_captures(paths: &[PathBuf]) -> (Vec<Capture>, Vec<CaptureError>) {
    let mut captures = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match Capture::read(path) {
            Ok(capture) if capture.samples > 0 => captures.push(capture),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    (captures, errors)
}

/// Reads every capture in `dir` (see [`read_captures`]).
pub fn read_dir(dir: &Path) -> std::io::Result<(Vec<Capture>, Vec<CaptureError>)> {
    Ok(read_captures(&capture_files(dir)?))
}

/// A capture frame as the report shows it.
pub(crate) fn stack_frame(frame: &Frame) -> StackFrame {
    if frame.kind == kind::SMALL_OBJECTS {
        // Memory of CPython's small objects (a pymalloc arena), under the line that needed it.
        return StackFrame {
            file: SMALL_OBJECTS_FILE.to_owned(),
            line: 0,
            function: SMALL_OBJECTS_FUNCTION.to_owned(),
            imports: None,
        };
    }
    let function = match frame.kind {
        kind::THREAD => format!("[thread {}]", frame.function),
        _ => frame.function.clone(),
    };
    StackFrame {
        file: frame.file.clone(),
        line: frame.line,
        function,
        imports: None,
    }
}

/// One line's counters in a capture, summed over the stacks charged to it
/// ([`crate::lines::line_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTotals {
    /// The line.
    pub frame: StackFrame,
    /// Bytes live now (or at the process's death).
    pub live_bytes: i64,
    /// Bytes allocated over the capture's life.
    pub allocated_bytes: u64,
    /// Allocations recorded (samples, in sampled mode).
    pub allocations: u64,
}

/// Each line's counters in one capture (import machinery folded, as in reports), for
/// code that compares them over time, such as the Python package's blocks: `since` and
/// `until` hold what each node had allocated, `(bytes, allocations)`, at two earlier
/// readings ([`memwarden_format::capture::read_allocated`]); what was allocated between
/// them is counted (`since` empty: from the start; `until` empty: to now; nodes made after
/// `until`'s reading count nothing then).
pub fn line_totals(
    capture: &Capture,
    since: &[(u64, u64)],
    until: &[(u64, u64)],
) -> Vec<LineTotals> {
    let mut stacks = Stacks {
        frames: Frames::Folded,
        names: ImportNames::default(),
    };
    stacks.names.learn(capture);
    let mut by_line: HashMap<StackFrame, LineTotals> = HashMap::new();
    for (node, counters) in capture.counters.iter().enumerate().skip(1) {
        let end = match until {
            [] => (counters.allocated, counters.count),
            _ => until.get(node).copied().unwrap_or((0, 0)),
        };
        let start = since.get(node).copied().unwrap_or((0, 0));
        let allocated = end.0.saturating_sub(start.0);
        if allocated == 0 && (counters.live == 0 || !since.is_empty()) {
            continue;
        }
        let stack = stack_of(capture, node as u32, &stacks);
        let Some(line) = crate::lines::line_of(&stack) else {
            continue;
        };
        let totals = by_line.entry(line.clone()).or_insert_with(|| LineTotals {
            frame: line.clone(),
            live_bytes: 0,
            allocated_bytes: 0,
            allocations: 0,
        });
        totals.live_bytes += counters.live;
        totals.allocated_bytes += allocated;
        totals.allocations += end.1.saturating_sub(start.1);
    }
    let mut lines: Vec<LineTotals> = by_line.into_values().collect();
    lines.sort_by(|a, b| {
        b.allocated_bytes
            .cmp(&a.allocated_bytes)
            .then_with(|| a.frame.cmp(&b.frame))
    });
    lines
}

/// How stacks are turned into report frames.
struct Stacks {
    frames: Frames,
    names: ImportNames,
}

fn stack_of(capture: &Capture, node: u32, stacks: &Stacks) -> Vec<StackFrame> {
    report_stack(&capture.stack(node), stacks.frames, &stacks.names)
}

/// Bytes one stack holds: committed (what lists are ranked by) and requested (committed
/// plus the untouched pages of its large ranges).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) committed: i64,
    pub(crate) requested: i64,
}

impl std::ops::AddAssign for Held {
    fn add_assign(&mut self, other: Held) {
        self.committed += other.committed;
        self.requested += other.requested;
    }
}

impl Held {
    fn is_empty(&self) -> bool {
        self.committed <= 0 && self.requested <= 0
    }

    /// Requested bytes never touched.
    fn reserved(&self) -> u64 {
        (self.requested - self.committed.max(0)).max(0) as u64
    }
}

/// Bytes per stack.
pub(crate) type Totals = HashMap<Vec<StackFrame>, Held>;

/// Bytes per stack, largest committed first (then largest requested: a stack holding only
/// untouched pages comes after every stack that committed memory), the `top` first kept.
pub(crate) fn ranked(totals: Totals, top: usize) -> Vec<StackBytes> {
    let mut entries: Vec<StackBytes> = totals
        .into_iter()
        .filter(|(_, held)| !held.is_empty())
        .map(|(stack, held)| StackBytes {
            stack,
            bytes: held.committed.max(0) as u64,
            requested_bytes: Some(held.requested.max(held.committed).max(0) as u64),
            reserved_bytes: Some(held.reserved()),
        })
        .collect();
    entries.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then_with(|| b.requested_bytes.cmp(&a.requested_bytes))
            .then_with(|| a.stack.cmp(&b.stack))
    });
    entries.truncate(top);
    entries
}

/// Bytes per stack in one pair of columns of a capture, added into `into`.
fn add_column(
    capture: &Capture,
    stacks: &Stacks,
    column: impl Fn(usize) -> Held,
    into: &mut Totals,
) {
    for node in 0..capture.nodes.len() {
        let held = column(node);
        if !held.is_empty() {
            *into
                .entry(stack_of(capture, node as u32, stacks))
                .or_default() += held;
        }
    }
}

/// Adds one process's bytes per stack into the tree's.
fn merge(process: &Totals, tree: &mut Totals) {
    for (stack, held) in process {
        *tree.entry(stack.clone()).or_default() += *held;
    }
}

/// Committed bytes held over all stacks.
fn held(totals: &Totals) -> u64 {
    totals
        .values()
        .map(|held| held.committed.max(0))
        .sum::<i64>() as u64
}

/// Requested bytes never touched, over all stacks.
fn reserved(totals: &Totals) -> u64 {
    totals.values().map(Held::reserved).sum()
}

/// Bytes at the peak snapshot.
fn peak_column(capture: &Capture) -> impl Fn(usize) -> Held + '_ {
    move |node| {
        let counters = capture.counters[node];
        Held {
            committed: counters.committed_at_peak,
            requested: counters.at_peak,
        }
    }
}

/// Bytes at the exit snapshot; for a process that died first, at its death (untouched
/// pages as last measured).
fn leaked_column(capture: &Capture) -> impl Fn(usize) -> Held + '_ {
    move |node| {
        let counters = capture.counters[node];
        if capture.has_exit_snapshot() {
            Held {
                committed: counters.committed_at_exit,
                requested: counters.at_exit,
            }
        } else {
            Held {
                committed: counters.live - counters.reserved,
                requested: counters.live,
            }
        }
    }
}

fn python_version(hexversion: u64) -> String {
    format!(
        "{}.{}.{}",
        hexversion >> 24,
        (hexversion >> 16) & 0xff,
        (hexversion >> 8) & 0xff
    )
}

/// The analysis of a block of one process (a notebook cell, `memwarden.track`), from its
/// capture as it is at the block's end: `since` holds what each node had allocated as the
/// block began ([`memwarden_format::capture::read_allocated`]), `start_ns` when it began
/// (wall clock), `peak_bytes` and `left_bytes` its heap figures (the block's own,
/// from the profiler's mark). The lines are what the block allocated; what it left is
/// each stack's live bytes, up to what the block allocated there. The stacks at the peak
/// are the process's peak snapshot when that peak came after the block began (the block
/// raised the process's highest heap, and its own peak is that moment; or it ended at its
/// highest and the next allocation after it, still holding all of it, took the snapshot);
/// otherwise none are kept, and the second value is false.
pub fn analyze_block(
    capture: &Capture,
    since: &[(u64, u64)],
    start_ns: u64,
    peak_bytes: u64,
    left_bytes: i64,
) -> (Analysis, bool) {
    let mode = mode_of(capture);
    let mut analysis = analyze(
        std::slice::from_ref(capture),
        mode,
        capture.sample_bytes,
        start_ns,
        Frames::Folded,
    );
    let peak_inside = capture.peak_ns >= start_ns;
    if !peak_inside {
        analysis.all_at_peak.clear();
        analysis.profile.at_peak.clear();
        analysis.profile.at_peak_bytes = 0;
        analysis.profile.peak_at_s = None;
    }
    analysis.all_lines = line_totals(capture, since, &[])
        .into_iter()
        .map(|line| LineAllocations {
            frame: line.frame,
            allocated_bytes: line.allocated_bytes,
            allocations: line.allocations,
        })
        .collect();
    let mut stacks = Stacks {
        frames: Frames::Folded,
        names: ImportNames::default(),
    };
    stacks.names.learn(capture);
    let mut left = Totals::new();
    add_column(
        capture,
        &stacks,
        |node| {
            let counters = capture.counters[node];
            let allocated = counters
                .allocated
                .saturating_sub(since.get(node).map_or(0, |&(bytes, _)| bytes));
            let requested = counters.live.min(allocated.min(i64::MAX as u64) as i64);
            Held {
                committed: requested - counters.reserved.clamp(0, requested.max(0)),
                requested,
            }
        },
        &mut left,
    );
    analysis.all_leaked = ranked(left, usize::MAX);
    let profile = &mut analysis.profile;
    profile.leaked = analysis.all_leaked.iter().take(TOP).cloned().collect();
    profile.leaked_bytes = left_bytes.max(0) as u64;
    profile.peak_bytes = peak_bytes;
    profile.requested_peak_bytes = peak_bytes;
    profile.allocated_bytes = analysis.all_lines.iter().map(|l| l.allocated_bytes).sum();
    profile.top_lines = analysis.all_lines.iter().take(TOP).cloned().collect();
    analysis.finish();
    (analysis, peak_inside)
}

/// Analyses the captures kept in one run's directory, `dir`, as `memwarden analyze` and the
/// recovery of an interrupted run do: [`analyze`], then the tree's measured peak from the
/// directory's tree counter (no ticks were recorded, so each process's own peak snapshot
/// is its view nearest that moment). When the counter cannot be read, the tree's peak stays
/// the sum of each process's, and the error says why.
pub fn analyze_kept(
    dir: &Path,
    captures: &[Capture],
    mode: ProfileMode,
    sample_bytes: u64,
    run_start_ns: u64,
    frames: Frames,
) -> (Analysis, Option<memwarden_format::tree::TreeError>) {
    let mut analysis = analyze(captures, mode, sample_bytes, run_start_ns, frames);
    let error = match memwarden_format::tree::TreeHeap::read_dir(dir) {
        Ok(Some((tree, _exits))) => {
            let mut watch = crate::tree::TreeWatch::new(dir);
            watch.tick(u64::MAX, Some(&tree), &mut |_| None);
            watch.apply(&mut analysis, captures, Some(&tree), frames, run_start_ns);
            None
        }
        Ok(None) => None,
        Err(e) => Some(e),
    };
    analysis.finish();
    (analysis, error)
}

/// The analysis of a run's captures.
#[derive(Debug)]
pub struct Analysis {
    /// The tree's profile.
    pub profile: Profile,
    /// Each process's profile, by pid (captures of one pid, before and after `exec`, merged).
    pub processes: Vec<(u32, ProcessProfile)>,
    /// Every stack at the peak (the report keeps the largest), for folded output.
    pub all_at_peak: Vec<StackBytes>,
    /// Every stack held at exit.
    pub all_leaked: Vec<StackBytes>,
    /// Every line's allocations over the run, most bytes first.
    pub all_lines: Vec<LineAllocations>,
}

impl Analysis {
    /// Fills the views made from the final stacks (once the tree's peak has chosen them,
    /// see [`crate::tree::TreeWatch::apply`]): the per-line table and the flame graphs'
    /// stacks.
    pub fn finish(&mut self) {
        let peak = self.profile.peak_bytes.max(self.profile.at_peak_bytes);
        self.profile.lines =
            crate::lines::line_stats(&self.all_at_peak, &self.all_leaked, &self.all_lines);
        self.profile.flame_at_peak = crate::flame::prune(&self.all_at_peak, peak);
        self.profile.flame_leaked = crate::flame::prune(&self.all_leaked, peak);
    }
}

/// Analyses the captures of one run. `run_start_ns` (wall clock, ns since the epoch) turns
/// capture times into seconds after the start; `frames` says whether import machinery is
/// folded into the importing line ([`Frames::Folded`], see [`crate::imports`]).
pub fn analyze(
    captures: &[Capture],
    mode: ProfileMode,
    sample_bytes: u64,
    run_start_ns: u64,
    frames: Frames,
) -> Analysis {
    let mut stacks = Stacks {
        frames,
        names: ImportNames::default(),
    };
    if frames == Frames::Folded {
        for capture in captures {
            stacks.names.learn(capture);
        }
    }
    let stacks = &stacks;
    let mut lines: HashMap<StackFrame, (u64, u64)> = HashMap::new();
    let mut by_pid: Vec<(u32, Vec<&Capture>)> = Vec::new();
    for capture in captures {
        match by_pid.iter_mut().find(|(pid, _)| *pid == capture.pid) {
            Some((_, list)) => list.push(capture),
            None => by_pid.push((capture.pid, vec![capture])),
        }
        for (node, counters) in capture.counters.iter().enumerate() {
            if counters.allocated == 0 || node == 0 {
                continue;
            }
            let stack = stack_of(capture, node as u32, stacks);
            if let Some(line) = crate::lines::line_of(&stack) {
                let entry = lines.entry(line.clone()).or_default();
                entry.0 += counters.allocated;
                entry.1 += counters.count;
            }
        }
    }
    // Each process's stacks are resolved once; the tree's totals are their sums.
    let mut tree_peak = HashMap::new();
    let mut tree_leaked = HashMap::new();
    let mut processes = Vec::new();
    for (pid, list) in &by_pid {
        // The images of one pid ran one after another (each `exec` replaced the last): the
        // process's peak is that of its highest image, and what it held at its end is what
        // its last image held (an `exec` gives back everything the image before it held).
        let highest = list
            .iter()
            .max_by_key(|c| c.committed_peak_bytes)
            .expect("a pid has a capture");
        let last = list
            .iter()
            .max_by_key(|c| c.start_ns)
            .expect("a pid has a capture");
        let mut at_peak = HashMap::new();
        let mut leaked = HashMap::new();
        add_column(highest, stacks, peak_column(highest), &mut at_peak);
        add_column(last, stacks, leaked_column(last), &mut leaked);
        merge(&at_peak, &mut tree_peak);
        merge(&leaked, &mut tree_leaked);
        let peak_bytes = highest.committed_peak_bytes.max(0) as u64;
        let peak_ns = Some(highest.peak_ns).filter(|&ns| ns >= run_start_ns && ns > 0);
        let requested_peak_bytes = list
            .iter()
            .map(|c| c.peak_bytes.max(0) as u64)
            .max()
            .unwrap_or(0);
        let reserved_bytes = reserved(&at_peak);
        processes.push((
            *pid,
            ProcessProfile {
                python: list
                    .iter()
                    .find_map(|c| {
                        c.python_hexversion
                            .filter(|_| c.flags & memwarden_format::capture::flag::PYTHON != 0)
                    })
                    .map(python_version),
                peak_bytes,
                peak_at_s: peak_ns.map(|ns| (ns - run_start_ns) as f64 / 1e9),
                requested_peak_bytes,
                reserved_bytes,
                leaked_bytes: held(&leaked),
                exited_cleanly: last.end_ns.is_some(),
                at_peak: ranked(at_peak, TOP),
                leaked: ranked(leaked, TOP),
            },
        ));
    }
    let peak_bytes: u64 = processes.iter().map(|(_, p)| p.peak_bytes).sum();
    // glibc's figures at each process's own peak snapshot, added over those that read them.
    let malloc_at_peak = by_pid
        .iter()
        .filter_map(|(_, list)| {
            let highest = list.iter().max_by_key(|c| c.committed_peak_bytes)?;
            Some(MallocFigures {
                free_bytes: highest.malloc_free_at_peak_bytes?,
                arena_bytes: highest.malloc_arena_at_peak_bytes?,
                mmapped_bytes: highest.malloc_mmapped_at_peak_bytes?,
            })
        })
        .reduce(|a, b| MallocFigures {
            free_bytes: a.free_bytes + b.free_bytes,
            arena_bytes: a.arena_bytes + b.arena_bytes,
            mmapped_bytes: a.mmapped_bytes + b.mmapped_bytes,
        });
    let requested_peak_bytes: u64 = processes.iter().map(|(_, p)| p.requested_peak_bytes).sum();
    let mut top_lines: Vec<LineAllocations> = lines
        .into_iter()
        .map(|(frame, (allocated_bytes, allocations))| LineAllocations {
            frame,
            allocated_bytes,
            allocations,
        })
        .collect();
    top_lines.sort_by(|a, b| {
        b.allocated_bytes
            .cmp(&a.allocated_bytes)
            .then_with(|| a.frame.cmp(&b.frame))
    });
    let all_lines = top_lines.clone();
    top_lines.truncate(TOP);
    let exact = mode == ProfileMode::Exact;
    let held_at_peak = held(&tree_peak);
    let reserved_at_peak = reserved(&tree_peak);
    let all_at_peak = ranked(tree_peak, usize::MAX);
    let leaked_bytes = held(&tree_leaked);
    let all_leaked = ranked(tree_leaked, usize::MAX);
    let profile = Profile {
        mode,
        sample_bytes: (!exact).then_some(sample_bytes),
        peak_bytes,
        leaked_bytes,
        requested_peak_bytes,
        reserved_bytes: reserved_at_peak,
        allocated_bytes: captures.iter().map(|c| c.allocated_bytes).sum(),
        peak_error_bytes: if exact {
            0
        } else {
            ((peak_bytes as f64) * (sample_bytes as f64)).sqrt() as u64
        },
        at_peak: all_at_peak.iter().take(TOP).cloned().collect(),
        leaked: all_leaked.iter().take(TOP).cloned().collect(),
        top_lines,
        processes_profiled: by_pid.len() as u32,
        dropped_allocations: captures.iter().map(|c| c.dropped).sum(),
        // Summed until `tree::TreeWatch::apply` puts in the tree counter's figures.
        peak_method: PeakMethod::Summed,
        peak_at_s: None,
        at_peak_bytes: held_at_peak,
        at_peak_gap_s: None,
        malloc_at_peak,
        // The timeline comes from `tree::TreeWatch::apply`; the tables made from the final
        // stacks from `Analysis::finish`.
        ..Profile::empty(mode)
    };
    Analysis {
        profile,
        processes,
        all_at_peak,
        all_leaked,
        all_lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(file: &str, line: u32, function: &str) -> StackFrame {
        StackFrame::new(file, line, function)
    }

    #[test]
    fn the_small_objects_frame_is_shown_by_its_exported_names() {
        let shown = stack_frame(&Frame {
            file: "<python objects>".to_owned(),
            function: "[small objects]".to_owned(),
            line: 0,
            kind: kind::SMALL_OBJECTS,
        });
        assert_eq!(shown, frame(SMALL_OBJECTS_FILE, 0, SMALL_OBJECTS_FUNCTION));
        assert_eq!(
            (shown.file.as_str(), shown.function.as_str()),
            ("<python objects>", "[small objects]")
        );
    }

    #[test]
    fn stacks_rank_by_committed_bytes_and_keep_what_was_requested() {
        let bytes = |committed, requested| Held {
            committed,
            requested,
        };
        let totals: Totals = [
            (vec![frame("/p/a.py", 1, "blas")], bytes(8, 72)),
            (vec![frame("/p/a.py", 2, "data")], bytes(100, 100)),
            (vec![frame("/p/a.py", 3, "empty")], bytes(0, 200)),
            (vec![frame("/p/a.py", 4, "gone")], bytes(0, 0)),
        ]
        .into_iter()
        .collect();
        assert_eq!((held(&totals), reserved(&totals)), (108, 264));
        let ranked = ranked(totals, 10);
        let figures: Vec<(u32, u64, Option<u64>, Option<u64>)> = ranked
            .iter()
            .map(|e| {
                (
                    e.stack[0].line,
                    e.bytes,
                    e.requested_bytes,
                    e.reserved_bytes,
                )
            })
            .collect();
        assert_eq!(
            figures,
            [
                (2, 100, Some(100), Some(0)),
                (1, 8, Some(72), Some(64)),
                (3, 0, Some(200), Some(200)),
            ]
        );
        assert_eq!(
            crate::export::folded(&ranked).lines().count(),
            2,
            "no flame for what holds nothing"
        );
    }
}
