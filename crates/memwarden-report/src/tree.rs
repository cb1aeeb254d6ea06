//! The tree's heap over a run: its measured peak, the stacks of every process at that
//! moment, and a timeline of its heap and heaviest stacks.
//!
//! Each profiled process keeps its own heap in its capture, and all of them add to one
//! shared counter whose high-water mark is the tree's heap peak (`memwarden_format::tree`).
//! The counter says how high and when, not which stacks: those come from reading the
//! captures while the processes run. At each monitor tick, [`TreeWatch::tick`] reads every
//! running capture's header and, when it changed, its per-stack counters (no more: strings,
//! frames and stacks are append-only and read once, as they appear). Each process then has
//! two views of its stacks with their times: live at the tick, and its own peak snapshot.
//! When the tree's peak moves, the views of the ticks on either side of it are kept; at the
//! end, [`TreeWatch::apply`] takes, for each process running at the tree's peak, the view
//! nearest to it in time, and states the largest distance (`at_peak_gap_s`) and what the
//! views hold together (`at_peak_bytes`) beside the peak itself.
//!
//! Bytes are committed ones, as the counter counts them: live less the untouched pages of
//! large ranges as last measured (a range not measured yet counts as written); stacks at
//! the peak also
//! carry their requested bytes. The tree's peak is kept between the largest process's own
//! peak and the sum of all of theirs, both bounds of the truth.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memwarden_format::capture::{self as fmt, counter, field, tree_state, Capture, Frame};
use memwarden_format::names::escape_bytes;
use memwarden_format::report::{
    HeapTimelinePoint, PeakMethod, StackBytes, StackFrame, TimelineStackBytes,
};
use memwarden_format::tree::TreeHeap;

use crate::imports::{report_stack, Frames, ImportNames};
use crate::profile::{ranked as ranked_held, Analysis, Held, Totals, TOP};

/// Stacks kept at each timeline point.
pub const TIMELINE_TOP: usize = 5;
/// Stacks kept at each tick before import folding merges some (then cut to
/// [`TIMELINE_TOP`]).
const TICK_TOP: usize = 8;
/// Most timeline points kept; beyond, neighbours are merged (the heavier kept) and the
/// stride doubles, as the run's own timeline does.
pub const TIMELINE_MAX_POINTS: usize = 2000;

const HEADER: usize = fmt::HEADER_SIZE as usize;
/// Most bytes of one capture's counters read per second (see [`TreeWatch::tick`]): a
/// process with up to 80,000 stacks (5 MiB of counters) is read at every 50 ms tick.
const COUNTER_READ_BYTES_PER_S: u64 = 100 << 20;

/// One process's stacks at one moment: (stack id, bytes), nonzero only.
#[derive(Clone, Debug, Default)]
struct View {
    time_ns: u64,
    /// The process's own peak snapshot (else its live bytes at a tick).
    own_peak: bool,
    stacks: Vec<(u32, Held)>,
}

/// One process image's capture, followed while it runs.
#[derive(Debug)]
struct Image {
    path: PathBuf,
    pid: u32,
    /// `N` of `PID-N.mwcap`: a later image of the same pid replaced this one (`exec`).
    seq: u64,
    /// Open until the image has ended and been read a last time.
    file: Option<File>,
    /// The process's start time when first seen running, to tell a reused pid.
    identity: Option<u64>,
    start_ns: u64,
    /// Close time, when the process closed its capture.
    end_ns: Option<u64>,
    /// The tick at which the image was first seen ended.
    gone_seen_ns: Option<u64>,
    strings: Vec<u8>,
    /// Capture frame id → the watch's frame id.
    frames: Vec<u32>,
    /// Capture node id → the watch's stack id.
    node_stacks: Vec<u32>,
    /// Header words that, unchanged, mean the counters need no new read.
    signature: [u64; 9],
    /// Live less reserved bytes (header).
    heap_bytes: i64,
    /// When its counters were last read.
    counters_read_ns: u64,
    tree_state: u64,
    live: Option<View>,
    own_peak: Option<View>,
}

/// Views kept for the tree's peak at `peak_ns`: those of the ticks either side of it.
#[derive(Debug, Default)]
struct Bracket {
    peak_ns: u64,
    candidates: HashMap<usize, Vec<View>>,
}

/// A timeline point before stacks are resolved.
#[derive(Clone, Debug)]
struct RawPoint {
    time_ns: u64,
    heap_bytes: i64,
    top: Vec<(u32, i64)>,
}

/// The bounded timeline: at most [`TIMELINE_MAX_POINTS`] points, each a real tick.
#[derive(Debug)]
struct Timeline {
    points: Vec<RawPoint>,
    pending: Option<(RawPoint, usize)>,
    stride: usize,
}

fn heavier(a: RawPoint, b: RawPoint) -> RawPoint {
    if b.heap_bytes > a.heap_bytes {
        b
    } else {
        a
    }
}

impl Timeline {
    fn push(&mut self, point: RawPoint) {
        let (merged, count) = match self.pending.take() {
            Some((pending, count)) => (heavier(pending, point), count + 1),
            None => (point, 1),
        };
        if count < self.stride {
            self.pending = Some((merged, count));
            return;
        }
        self.points.push(merged);
        if self.points.len() >= TIMELINE_MAX_POINTS {
            let points = std::mem::take(&mut self.points);
            let mut pairs = points.into_iter();
            while let Some(first) = pairs.next() {
                self.points.push(match pairs.next() {
                    Some(second) => heavier(first, second),
                    None => first,
                });
            }
            self.stride *= 2;
        }
    }

    fn all(&self) -> impl Iterator<Item = &RawPoint> {
        self.points
            .iter()
            .chain(self.pending.as_ref().map(|(point, _)| point))
    }
}

/// Follows the captures of a run while it runs (see the module's documentation).
#[derive(Debug)]
pub struct TreeWatch {
    dir: PathBuf,
    images: Vec<Image>,
    /// Paths of `images`.
    known: HashSet<PathBuf>,
    frame_ids: HashMap<Frame, u32>,
    frames: Vec<Frame>,
    stack_ids: HashMap<(u32, u32), u32>,
    /// Stack id → (parent stack id, frame id); stack 0 is the empty stack.
    stacks: Vec<(u32, u32)>,
    bracket: Option<Bracket>,
    timeline: Timeline,
}

/// A header or record field (0 when the bytes are short).
fn word(bytes: &[u8], offset: usize) -> u64 {
    fmt::u64_at(bytes, offset as u64).unwrap_or(0)
}

/// A 32-bit record field (0 when the bytes are short).
fn word32(bytes: &[u8], offset: usize) -> u32 {
    fmt::u32_at(bytes, offset as u64).unwrap_or(0)
}

impl TreeWatch {
    /// Follows the captures that appear in `dir`.
    pub fn new(dir: &Path) -> TreeWatch {
        TreeWatch {
            dir: dir.to_owned(),
            images: Vec::new(),
            known: HashSet::new(),
            frame_ids: HashMap::new(),
            frames: Vec::new(),
            stack_ids: HashMap::new(),
            stacks: vec![(u32::MAX, u32::MAX)],
            bracket: None,
            timeline: Timeline {
                points: Vec::new(),
                pending: None,
                stride: 1,
            },
        }
    }

    fn frame_id(&mut self, frame: Frame) -> u32 {
        if let Some(&id) = self.frame_ids.get(&frame) {
            return id;
        }
        let id = self.frames.len() as u32;
        self.frames.push(frame.clone());
        self.frame_ids.insert(frame, id);
        id
    }

    fn stack_id(&mut self, parent: u32, frame: u32) -> u32 {
        let next = self.stacks.len() as u32;
        let id = *self.stack_ids.entry((parent, frame)).or_insert(next);
        if id == next {
            self.stacks.push((parent, frame));
        }
        id
    }

    /// Starts following the captures that appeared since the last tick.
    fn discover(&mut self) {
        let Ok(paths) = crate::profile::capture_files(&self.dir) else {
            return;
        };
        for path in paths {
            if self.known.contains(&path) {
                continue;
            }
            let Some((pid, seq)) = memwarden_format::capture::parse_file_name(&path) else {
                continue;
            };
            let Ok(file) = File::open(&path) else {
                continue;
            };
            self.known.insert(path.clone());
            self.images.push(Image {
                path,
                pid,
                seq,
                file: Some(file),
                identity: None,
                start_ns: 0,
                end_ns: None,
                gone_seen_ns: None,
                strings: Vec::new(),
                frames: Vec::new(),
                node_stacks: vec![0],
                signature: [u64::MAX; 9],
                heap_bytes: 0,
                counters_read_ns: 0,
                tree_state: tree_state::NONE,
                live: None,
                own_peak: None,
            });
        }
    }

    /// Reads what image `index` added to its strings, frames and stacks since the last
    /// read. A record whose references are not readable yet (published between two words
    /// of the header read) is left for the next tick.
    fn read_new_records(&mut self, index: usize, header: &[u8]) -> std::io::Result<()> {
        let image = &mut self.images[index];
        let Some(file) = image.file.as_ref() else {
            return Ok(());
        };
        let strings_used = word(header, field::STRINGS_USED).min(fmt::STRINGS_CAPACITY) as usize;
        if strings_used > image.strings.len() {
            let old = image.strings.len();
            image.strings.resize(strings_used, 0);
            if let Err(e) =
                file.read_exact_at(&mut image.strings[old..], fmt::STRINGS_OFFSET + old as u64)
            {
                image.strings.truncate(old);
                return Err(e);
            }
        }
        let frames_used = word(header, field::FRAMES_USED).min(fmt::MAX_FRAMES) as usize;
        let old_frames = image.frames.len();
        let mut new_frames = Vec::new();
        if frames_used > old_frames {
            let mut records = vec![0u8; (frames_used - old_frames) * fmt::FRAME_SIZE as usize];
            file.read_exact_at(
                &mut records,
                fmt::FRAMES_OFFSET + old_frames as u64 * fmt::FRAME_SIZE,
            )?;
            let string = |offset: u32| -> Option<String> {
                fmt::string_at(&image.strings, offset as usize)
                    .map(|stored| escape_bytes(stored).into_owned())
            };
            for record in records.chunks_exact(fmt::FRAME_SIZE as usize) {
                let (Some(file), Some(function)) =
                    (string(word32(record, 0)), string(word32(record, 4)))
                else {
                    break;
                };
                new_frames.push(Frame {
                    file,
                    function,
                    line: word32(record, 8),
                    kind: word32(record, 12),
                });
            }
        }
        for frame in new_frames {
            let id = self.frame_id(frame);
            self.images[index].frames.push(id);
        }
        let image = &self.images[index];
        let Some(file) = image.file.as_ref() else {
            return Ok(());
        };
        let nodes_used = word(header, field::NODES_USED).min(fmt::MAX_NODES) as usize;
        let old_nodes = image.node_stacks.len();
        if nodes_used > old_nodes {
            let mut records = vec![0u8; (nodes_used - old_nodes) * fmt::NODE_SIZE as usize];
            file.read_exact_at(
                &mut records,
                fmt::NODES_OFFSET + old_nodes as u64 * fmt::NODE_SIZE,
            )?;
            for record in records.chunks_exact(fmt::NODE_SIZE as usize) {
                let image = &self.images[index];
                let (parent, frame) = (word32(record, 0) as usize, word32(record, 4) as usize);
                let (Some(&parent), Some(&frame)) =
                    (image.node_stacks.get(parent), image.frames.get(frame))
                else {
                    break;
                };
                let id = self.stack_id(parent, frame);
                self.images[index].node_stacks.push(id);
            }
        }
        Ok(())
    }

    /// Reads image `index`'s per-stack counters into its two views.
    fn read_views(&mut self, index: usize, header: &[u8], now_ns: u64) -> std::io::Result<()> {
        let image = &mut self.images[index];
        let Some(file) = image.file.as_ref() else {
            return Ok(());
        };
        let nodes = image.node_stacks.len();
        let mut counters = vec![0u8; nodes * fmt::COUNTER_SIZE as usize];
        file.read_exact_at(&mut counters, fmt::COUNTERS_OFFSET)?;
        let mut live = Vec::new();
        let mut own_peak = Vec::new();
        for (node, record) in counters
            .chunks_exact(fmt::COUNTER_SIZE as usize)
            .enumerate()
        {
            let value = |offset: u64| word(record, offset as usize) as i64;
            let stack = image.node_stacks[node];
            // Committed as the counter counts it: the process reports every change of its
            // untouched bytes there too.
            let held = Held {
                committed: value(counter::LIVE) - value(counter::RESERVED),
                requested: value(counter::LIVE),
            };
            if held != Held::default() {
                live.push((stack, held));
            }
            let at_peak = Held {
                committed: value(counter::COMMITTED_AT_PEAK),
                requested: value(counter::AT_PEAK),
            };
            if at_peak != Held::default() {
                own_peak.push((stack, at_peak));
            }
        }
        image.live = Some(View {
            time_ns: now_ns,
            own_peak: false,
            stacks: live,
        });
        let peak_ns = word(header, field::PEAK_NS);
        image.own_peak = (peak_ns != 0).then_some(View {
            time_ns: peak_ns,
            own_peak: true,
            stacks: own_peak,
        });
        Ok(())
    }

    /// One monitor tick at wall-clock `now_ns` (ns since the epoch), with the tree
    /// counter's figures read just before. `process_start(pid)` gives a running process's
    /// start time (`None` once it is gone or a zombie). Returns the captures of images that
    /// ended while their share still counts in the tree counter, for the caller to take out.
    pub fn tick(
        &mut self,
        now_ns: u64,
        tree: Option<&TreeHeap>,
        process_start: &mut dyn FnMut(u32) -> Option<u64>,
    ) -> Vec<PathBuf> {
        let peak_ns = tree.map_or(0, |t| t.peak_ns);
        let new_peak = peak_ns != 0 && self.bracket.as_ref().is_none_or(|b| b.peak_ns != peak_ns);
        if new_peak {
            // The peak came after the last tick: that tick's views are one side of it.
            let mut candidates = HashMap::new();
            for (index, image) in self.images.iter().enumerate() {
                let views: Vec<View> = image.live.iter().chain(&image.own_peak).cloned().collect();
                if !views.is_empty() {
                    candidates.insert(index, views);
                }
            }
            self.bracket = Some(Bracket {
                peak_ns,
                candidates,
            });
        }
        self.discover();
        let mut latest: HashMap<u32, u64> = HashMap::new();
        for image in &self.images {
            let seq = latest.entry(image.pid).or_insert(image.seq);
            *seq = (*seq).max(image.seq);
        }
        let mut ended = Vec::new();
        let mut finished = Vec::new();
        for index in 0..self.images.len() {
            let Some(file) = self.images[index].file.as_ref() else {
                continue;
            };
            let mut header = vec![0u8; HEADER];
            if file.read_exact_at(&mut header, 0).is_err()
                || header[..8] != fmt::MAGIC
                || word(&header, field::VERSION) != fmt::VERSION
            {
                continue;
            }
            let image = &mut self.images[index];
            let running = latest.get(&image.pid) == Some(&image.seq)
                && process_start(image.pid)
                    .is_some_and(|start| *image.identity.get_or_insert(start) == start);
            image.start_ns = word(&header, field::START_NS);
            image.end_ns = Some(word(&header, field::END_NS)).filter(|&ns| ns != 0);
            image.tree_state = word(&header, field::TREE_STATE);
            let reserved = match image.tree_state {
                tree_state::NONE => field::RESERVED_BYTES,
                _ => field::TREE_RESERVED_BYTES,
            };
            image.heap_bytes =
                word(&header, field::LIVE_BYTES) as i64 - word(&header, reserved) as i64;
            let signature = [
                field::LIVE_BYTES,
                field::RESERVED_BYTES,
                field::PEAK_NS,
                field::NODES_USED,
                field::FRAMES_USED,
                field::STRINGS_USED,
                field::PEAK_SNAPSHOT_BYTES,
                field::COMMITTED_PEAK_BYTES,
                field::TREE_RESERVED_BYTES,
            ]
            .map(|f| word(&header, f));
            // A process with very many stacks has its counters read less often than every
            // tick (its header, and so the heap's total, still is): at most about
            // COUNTER_READ_BYTES_PER_S for each, so the runner never costs the machine much.
            let counter_bytes = word(&header, field::NODES_USED) * fmt::COUNTER_SIZE;
            let due = !running
                || now_ns.saturating_sub(image.counters_read_ns)
                    >= counter_bytes.saturating_mul(1_000_000_000) / COUNTER_READ_BYTES_PER_S;
            if signature != image.signature && due {
                self.images[index].counters_read_ns = now_ns;
                let read = self
                    .read_new_records(index, &header)
                    .and_then(|()| self.read_views(index, &header, now_ns));
                if read.is_ok() {
                    self.images[index].signature = signature;
                }
            } else if signature == self.images[index].signature {
                if let Some(live) = self.images[index].live.as_mut() {
                    live.time_ns = now_ns;
                }
            }
            let image = &mut self.images[index];
            if !running {
                // Ended: its memory is the kernel's again, and this was its last read.
                image.live = None;
                image.gone_seen_ns = Some(now_ns);
                image.file = None;
                finished.push(index);
                if image.tree_state == tree_state::COUNTED {
                    ended.push(image.path.clone());
                }
            }
        }
        if new_peak {
            // ... and this tick's views the other side.
            if let Some(bracket) = self.bracket.as_mut() {
                for (index, image) in self.images.iter().enumerate() {
                    let views: Vec<View> =
                        image.live.iter().chain(&image.own_peak).cloned().collect();
                    if !views.is_empty() {
                        bracket.candidates.entry(index).or_default().extend(views);
                    }
                }
            }
        }
        self.record_point(now_ns);
        for index in finished {
            self.retire(index);
        }
        ended
    }

    /// Lets go of what an ended image no longer needs (a run may start thousands): its
    /// peak snapshot, read a last time, also replaces an earlier read of the same snapshot
    /// kept for the tree's peak (ranges it took as written may have been found untouched
    /// since).
    fn retire(&mut self, index: usize) {
        let image = &mut self.images[index];
        if let (Some(latest), Some(bracket)) = (image.own_peak.take(), self.bracket.as_mut()) {
            for view in bracket.candidates.get_mut(&index).into_iter().flatten() {
                if view.own_peak && view.time_ns == latest.time_ns {
                    view.stacks.clone_from(&latest.stacks);
                }
            }
        }
        image.strings = Vec::new();
        image.frames = Vec::new();
        image.node_stacks = Vec::new();
    }

    /// Adds the tree's heap now, and its heaviest stacks, to the timeline.
    fn record_point(&mut self, now_ns: u64) {
        let counted = |image: &&Image| {
            image.live.is_some()
                && !matches!(
                    image.tree_state,
                    tree_state::WITHDRAWN | tree_state::WITHDRAWN_BY_RUNNER
                )
        };
        if !self.images.iter().any(|image| counted(&image)) {
            return;
        }
        let mut heap_bytes = 0;
        let mut by_stack: HashMap<u32, i64> = HashMap::new();
        for image in self.images.iter().filter(counted) {
            heap_bytes += image.heap_bytes;
            let stacks: Vec<(u32, i64)> = image
                .live
                .iter()
                .flat_map(|view| &view.stacks)
                .map(|&(stack, held)| (stack, held.committed))
                .collect();
            // The header's total and the per-stack counters are read at different instants,
            // and a range's untouched bytes reach the two at different moments: stacks that
            // add up to more than the process's total at this tick are scaled down to it, so
            // a point never shows more under its stacks than in its heap.
            let total: i64 = stacks.iter().map(|&(_, bytes)| bytes.max(0)).sum();
            let limit = image.heap_bytes.max(0);
            for (stack, bytes) in stacks {
                let bytes = if total > limit && total > 0 {
                    (i128::from(bytes) * i128::from(limit) / i128::from(total)) as i64
                } else {
                    bytes
                };
                *by_stack.entry(stack).or_default() += bytes;
            }
        }
        let mut top: Vec<(u32, i64)> = by_stack.into_iter().filter(|(_, b)| *b > 0).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(TICK_TOP);
        self.timeline.push(RawPoint {
            time_ns: now_ns,
            heap_bytes,
            top,
        });
    }

    /// The frames of stack `id`, innermost first.
    fn frames_of(&self, mut id: u32) -> Vec<&Frame> {
        let mut frames = Vec::new();
        // Parents are always interned before their children, so ids fall toward 0.
        while id != 0 {
            let Some(&(parent, frame)) = self.stacks.get(id as usize) else {
                break;
            };
            if let Some(frame) = self.frames.get(frame as usize) {
                frames.push(frame);
            }
            id = parent;
        }
        frames
    }

    /// Puts the tree's figures into `analysis`: `peak_bytes` (the counter's peak), the
    /// stacks at that peak from each process's nearest view, the gap, and the timeline.
    /// Without a tree counter (captures of an older memwarden) the summed figures stay.
    pub fn apply(
        &self,
        analysis: &mut Analysis,
        captures: &[Capture],
        tree: Option<&TreeHeap>,
        frames: Frames,
        run_start_ns: u64,
    ) {
        let mut names = ImportNames::default();
        if frames == Frames::Folded {
            for capture in captures {
                names.learn(capture);
            }
        }
        let mut resolved: HashMap<u32, Vec<StackFrame>> = HashMap::new();
        let mut resolve = |id: u32| -> Vec<StackFrame> {
            resolved
                .entry(id)
                .or_insert_with(|| report_stack(&self.frames_of(id), frames, &names))
                .clone()
        };
        let seconds = |ns: u64| (ns.saturating_sub(run_start_ns)) as f64 / 1e9;
        let profile = &mut analysis.profile;

        // The timeline, its stacks numbered in order of first use.
        let mut stack_numbers: HashMap<Vec<StackFrame>, u32> = HashMap::new();
        let mut timeline_stacks = Vec::new();
        for point in self.timeline.all() {
            let mut by_stack: HashMap<Vec<StackFrame>, i64> = HashMap::new();
            for &(id, bytes) in &point.top {
                *by_stack.entry(resolve(id)).or_default() += bytes;
            }
            let mut top: Vec<StackBytes> = ranked(by_stack, TIMELINE_TOP);
            let top = top
                .drain(..)
                .map(|entry| {
                    let next = timeline_stacks.len() as u32;
                    let stack_id = *stack_numbers.entry(entry.stack.clone()).or_insert(next);
                    if stack_id == next {
                        timeline_stacks.push(entry.stack);
                    }
                    TimelineStackBytes {
                        stack_id,
                        bytes: entry.bytes,
                    }
                })
                .collect();
            profile.timeline.push(HeapTimelinePoint {
                t_s: seconds(point.time_ns),
                heap_bytes: point.heap_bytes.max(0) as u64,
                top,
            });
        }
        profile.timeline_stacks = timeline_stacks;

        let Some(tree) = tree.filter(|t| t.images > 0) else {
            return;
        };
        let peak_ns = tree.peak_ns;
        profile.peak_method = PeakMethod::Measured;
        // Both bounds hold for the truth: at the largest process's own peak the tree held at
        // least that, and no moment held more than every process at its own peak.
        let own_peaks = analysis.processes.iter().map(|(_, p)| p.peak_bytes);
        let (largest, sum) = own_peaks.fold((0, 0), |(m, s), p| (m.max(p), s + p));
        let profile = &mut analysis.profile;
        let measured = tree.peak_bytes.max(0) as u64;
        profile.peak_bytes = measured.clamp(largest, sum.max(largest));
        profile.requested_peak_bytes = tree.requested_peak_bytes.max(0) as u64;
        profile.peak_at_s = (peak_ns != 0).then(|| seconds(peak_ns));
        if let Some(sample_bytes) = profile.sample_bytes {
            profile.peak_error_bytes =
                ((profile.peak_bytes as f64) * (sample_bytes as f64)).sqrt() as u64;
        }
        // One process: its own peak snapshot, taken at its (so the tree's) peak, is exact; a
        // tick's view can only be further from the moment.
        if analysis.processes.len() == 1 {
            analysis.profile.at_peak_gap_s = Some(0.0);
            analysis.profile.at_peak_bytes = analysis.all_at_peak.iter().map(|e| e.bytes).sum();
            return;
        }
        // The views kept around the peak; without any (no tick saw the captures), each
        // image's last ones.
        let latest: HashMap<usize, Vec<View>>;
        let candidates = match &self.bracket {
            Some(bracket) if bracket.peak_ns == peak_ns => &bracket.candidates,
            _ => {
                latest = self
                    .images
                    .iter()
                    .enumerate()
                    .map(|(i, image)| {
                        let views = image.live.iter().chain(&image.own_peak).cloned().collect();
                        (i, views)
                    })
                    .collect();
                &latest
            }
        };
        let mut at_peak: Totals = HashMap::new();
        let mut gap_ns: Option<u64> = None;
        for (&index, views) in candidates {
            let image = &self.images[index];
            let started_after = image.start_ns > peak_ns;
            let ended_before = image.end_ns.is_some_and(|end| end < peak_ns)
                || image.gone_seen_ns.is_some_and(|gone| gone <= peak_ns);
            if started_after || ended_before {
                continue;
            }
            // The process whose allocation raised the peak held it from that instant on: a
            // view of it from before lacks that allocation, so one from after is taken.
            let raised_it = image.pid == tree.peak_pid && !views.is_empty();
            let after = views.iter().filter(|v| v.time_ns >= peak_ns);
            let nearest = |views: &mut dyn Iterator<Item = &View>| {
                views.min_by_key(|v| v.time_ns.abs_diff(peak_ns)).cloned()
            };
            let chosen = match raised_it {
                true => nearest(&mut after.clone()).or_else(|| nearest(&mut views.iter())),
                false => nearest(&mut views.iter()),
            };
            let Some(mut view) = chosen else {
                continue;
            };
            // A peak snapshot read earlier may have been corrected since (ranges it took as
            // written found untouched): the last read of the same snapshot has it.
            if let Some(latest) = image.own_peak.as_ref() {
                if view.own_peak && latest.time_ns == view.time_ns {
                    view = latest.clone();
                }
            }
            gap_ns = Some(gap_ns.unwrap_or(0).max(view.time_ns.abs_diff(peak_ns)));
            for &(id, held) in &view.stacks {
                *at_peak.entry(resolve(id)).or_default() += held;
            }
        }
        let Some(gap_ns) = gap_ns else {
            return;
        };
        profile.at_peak_gap_s = Some(gap_ns as f64 / 1e9);
        profile.at_peak_bytes = at_peak.values().map(|h| h.committed.max(0)).sum::<i64>() as u64;
        analysis.all_at_peak = ranked_held(at_peak, usize::MAX);
        analysis.profile.reserved_bytes = analysis
            .all_at_peak
            .iter()
            .filter_map(|entry| entry.reserved_bytes)
            .sum();
        analysis.profile.at_peak = analysis.all_at_peak.iter().take(TOP).cloned().collect();
    }
}

/// Bytes per stack, largest first, the `top` largest kept.
fn ranked(totals: HashMap<Vec<StackFrame>, i64>, top: usize) -> Vec<StackBytes> {
    let mut entries: Vec<StackBytes> = totals
        .into_iter()
        .filter(|(_, bytes)| *bytes > 0)
        .map(|(stack, bytes)| StackBytes {
            stack,
            bytes: bytes as u64,
            // The timeline keeps committed bytes only.
            requested_bytes: None,
            reserved_bytes: None,
        })
        .collect();
    entries.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.stack.cmp(&b.stack)));
    entries.truncate(top);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_timeline_stays_bounded_and_keeps_its_heaviest_tick() {
        let mut timeline = Timeline {
            points: Vec::new(),
            pending: None,
            stride: 1,
        };
        for i in 0..72_000u64 {
            let heap_bytes = if i == 40_001 {
                1 << 40
            } else {
                (i % 97) as i64
            };
            timeline.push(RawPoint {
                time_ns: i * 50_000_000,
                heap_bytes,
                top: vec![(1, heap_bytes)],
            });
        }
        let points: Vec<&RawPoint> = timeline.all().collect();
        assert!(points.len() <= TIMELINE_MAX_POINTS, "{}", points.len());
        assert!(points.len() >= TIMELINE_MAX_POINTS / 2);
        let heaviest = points.iter().max_by_key(|p| p.heap_bytes).expect("points");
        assert_eq!(
            (heaviest.heap_bytes, heaviest.time_ns),
            (1 << 40, 40_001 * 50_000_000)
        );
        assert!(points.windows(2).all(|w| w[0].time_ns < w[1].time_ns));
    }
}
