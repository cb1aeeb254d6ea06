//! The capture file, mapped shared and updated in place (format: `memwarden_format::capture`).
//!
//! Strings, frames and calling-context nodes are interned once, under one spin lock taken
//! only when something new is seen; counters are atomics. Lookups of known nodes and of
//! known (code object, instruction) pairs are lock-free.

use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU64, AtomicUsize, Ordering,
};

use memwarden_format::capture::{self as fmt, counter, field, flag};

use crate::mappings::Ranges;
use crate::sys::{self, SpinLock, StackBuf};

const STRING_SLOTS: usize = 1 << 14;
const FRAME_SLOTS: usize = 1 << 15;
const CODE_SLOTS: usize = 1 << 16;

/// The process's capture. One static instance, [`CAPTURE`].
pub struct Writer {
    base: AtomicPtr<u8>,
    /// (content hash, string offset + 1).
    strings: AtomicPtr<[AtomicU64; 2]>,
    /// (file << 32 | function, line << 32 | kind, frame id + 1).
    frames: AtomicPtr<[AtomicU64; 3]>,
    /// (parent << 32 | frame, node id + 1); published by storing the key last.
    nodes: AtomicPtr<[AtomicU64; 2]>,
    node_slots: AtomicUsize,
    /// (code address, instruction offset << 32 | frame id, identity tag).
    code: AtomicPtr<[AtomicU64; 3]>,
    intern: SpinLock,
    snapshotting: AtomicBool,
    exit_taken: AtomicBool,
    /// The capture's descriptor, kept to reserve disk blocks as regions grow.
    fd: AtomicI32,
    /// Per region (strings, frames, nodes, counters): bytes from its start with blocks
    /// reserved.
    reserved: [AtomicU64; 4],
}

/// Regions, in `Writer::reserved` order.
const STRINGS: usize = 0;
const FRAMES: usize = 1;
const NODES: usize = 2;
const COUNTERS: usize = 3;
const REGION_OFFSETS: [u64; 4] = [
    fmt::STRINGS_OFFSET,
    fmt::FRAMES_OFFSET,
    fmt::NODES_OFFSET,
    fmt::COUNTERS_OFFSET,
];
/// Blocks are reserved this many bytes at a time.
const RESERVE_CHUNK: u64 = 64 << 10;
/// `sys::cycles()` at the end of the last residency pass (see [`Writer::peak_due`]).
static LAST_PASS: AtomicU64 = AtomicU64::new(0);
/// Cycles after a residency pass when untouched pages may have been written unseen and a
/// new pass is due: about 20 ms at 3.3 GHz.
const RECHECK_CYCLES: u64 = 1 << 26;
/// How long the last residency pass took, in cycles.
static LAST_SPAN: AtomicU64 = AtomicU64::new(0);
/// A pass shorter than this (about 5 µs at 3.3 GHz) is not spaced out.
const SHORT_PASS_CYCLES: u64 = 1 << 14;
/// A longer pass is followed by at least this many times its length without one.
const SPACING: u64 = 8;
/// Cycles the current snapshot spent in `mallinfo2`, which has a budget of its own
/// (`malloc_info::read_spaced`) and so is left out of the pass's length.
static MALLOC_INFO_CYCLES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every field is an atomic or the lock; the mappings they point to are only written
// through atomics or under `intern`.
unsafe impl Sync for Writer {}

/// The process's capture.
pub static CAPTURE: Writer = Writer {
    base: AtomicPtr::new(std::ptr::null_mut()),
    strings: AtomicPtr::new(std::ptr::null_mut()),
    frames: AtomicPtr::new(std::ptr::null_mut()),
    nodes: AtomicPtr::new(std::ptr::null_mut()),
    node_slots: AtomicUsize::new(0),
    code: AtomicPtr::new(std::ptr::null_mut()),
    intern: SpinLock::new(),
    snapshotting: AtomicBool::new(false),
    exit_taken: AtomicBool::new(false),
    fd: AtomicI32::new(-1),
    reserved: [const { AtomicU64::new(0) }; 4],
};

/// The hash of a two-word key, for the tables' slot indices (their low bits). Every bit of
/// both words reaches the low bits: the multiply-and-xor used before left the low 29 bits
/// of the product blind to `b`, so all instruction offsets of one code object (and all
/// lines of one function) started at the same slot; past the 16 probes of the code cache
/// every lookup missed and decoded the line table again (5% of the instructions of a
/// threaded numpy workload in exact mode).
fn mix(a: u64, b: u64) -> u64 {
    crate::mix64(a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(32))
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    hash
}

fn table<T>(slots: usize) -> *mut T {
    sys::map_anonymous(slots * std::mem::size_of::<T>()).cast()
}

/// Unmaps a table made by [`table`] with `slots` slots.
fn drop_table<T>(pointer: &AtomicPtr<T>, slots: usize) {
    let old = pointer.swap(std::ptr::null_mut(), Ordering::AcqRel);
    if !old.is_null() {
        sys::unmap(old.cast(), slots * std::mem::size_of::<T>());
    }
}

/// The N of the capture this image writes, `<pid>-<N>.mwcap` (set as it opens).
pub static NUMBER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Settings written into the header.
pub struct Settings {
    /// True for exact mode.
    pub exact: bool,
    /// Mean sampling interval.
    pub sample_bytes: u64,
    /// When this image started (or the process was forked), ns since the epoch.
    pub start_ns: u64,
}

impl Writer {
    /// Creates `<dir>/<pid>-<n>.mwcap` and maps it; false if that failed (the process then
    /// runs unprofiled). Called at a process's first recorded allocation, not at its start:
    /// a program too small to record anything (`true`, `sleep` in sampled mode) creates no
    /// file, which on a disk file system costs milliseconds of journal work.
    pub fn open(&self, dir: &[u8], settings: &Settings) -> bool {
        // getpid and getppid system calls: neither allocates.
        let (pid, ppid) = (std::process::id(), std::os::unix::process::parent_id());
        let (mut fd, mut number) = (-1, 0);
        for attempt in 0..1000u64 {
            number = attempt;
            let mut path = StackBuf::<4096>::new();
            let fits = path.push(dir)
                && path.push(b"/")
                && path.push_u64(pid as u64)
                && path.push(b"-")
                && path.push_u64(attempt)
                && path.push(b".")
                && path.push(fmt::SUFFIX.as_bytes());
            if !fits {
                return false;
            }
            // SAFETY: `path` is NUL-terminated; open does not allocate.
            fd = unsafe {
                libc::open(
                    path.as_c_ptr(),
                    libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                    0o600,
                )
            };
            // SAFETY: reading errno right after the failed call.
            if fd >= 0 || unsafe { *libc::__errno_location() } != libc::EEXIST {
                break;
            }
        }
        if fd < 0 {
            return false;
        }
        NUMBER.store(number, Ordering::Relaxed);
        // SAFETY: `fd` is ours; a sparse file of FILE_SIZE takes no space until written,
        // and the header's blocks are reserved now so that writing it cannot fault.
        let sized = unsafe {
            libc::ftruncate(fd, fmt::FILE_SIZE as libc::off_t) == 0
                && libc::fallocate(fd, 0, 0, fmt::HEADER_SIZE as libc::off_t) == 0
        };
        let base = if sized {
            sys::map_shared_file(fd, fmt::FILE_SIZE as usize)
        } else {
            std::ptr::null_mut()
        };
        if base.is_null() {
            // SAFETY: our descriptor, not used again.
            unsafe { libc::close(fd) };
            return false;
        }
        let old = self.fd.swap(fd, Ordering::AcqRel);
        if old >= 0 {
            // SAFETY: the previous capture's descriptor (a forked child starting its own).
            unsafe { libc::close(old) };
        }
        for reserved in &self.reserved {
            reserved.store(0, Ordering::Relaxed);
        }
        let exact = settings.exact;
        let node_slots = if exact { 1 << 18 } else { 1 << 16 };
        let tables = (
            table::<[AtomicU64; 2]>(STRING_SLOTS),
            table::<[AtomicU64; 3]>(FRAME_SLOTS),
            table::<[AtomicU64; 2]>(node_slots),
            table::<[AtomicU64; 3]>(CODE_SLOTS),
        );
        if tables.0.is_null() || tables.1.is_null() || tables.2.is_null() || tables.3.is_null() {
            sys::unmap(base, fmt::FILE_SIZE as usize);
            return false;
        }
        self.strings.store(tables.0, Ordering::Relaxed);
        self.frames.store(tables.1, Ordering::Relaxed);
        self.nodes.store(tables.2, Ordering::Relaxed);
        self.node_slots.store(node_slots, Ordering::Relaxed);
        self.code.store(tables.3, Ordering::Relaxed);
        self.exit_taken.store(false, Ordering::Relaxed);
        self.snapshotting.store(false, Ordering::Relaxed);
        self.intern.reset();
        self.base.store(base, Ordering::Release);
        let set = |f: usize, v: u64| self.header(f).store(v, Ordering::Relaxed);
        set(field::VERSION, fmt::VERSION);
        set(field::PID, pid as u64);
        set(field::PPID, ppid as u64);
        set(field::MODE, if exact { 2 } else { 1 });
        set(field::SAMPLE_BYTES, settings.sample_bytes);
        set(field::START_NS, settings.start_ns);
        set(field::NODES_USED, 1);
        self.record_executable();
        // The signature goes last: a file without it was never fully opened.
        self.header(field::MAGIC)
            .store(u64::from_le_bytes(fmt::MAGIC), Ordering::Release);
        true
    }

    /// Lets go of the parent's capture in the child after `fork` (only one thread exists
    /// there): the child opens its own when it first records something.
    pub fn forget_inherited(&self) {
        let old = self.base.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !old.is_null() {
            sys::unmap(old, fmt::FILE_SIZE as usize);
        }
        let node_slots = self.node_slots.load(Ordering::Relaxed);
        drop_table(&self.strings, STRING_SLOTS);
        drop_table(&self.frames, FRAME_SLOTS);
        drop_table(&self.nodes, node_slots);
        drop_table(&self.code, CODE_SLOTS);
        let fd = self.fd.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: the parent's capture descriptor, inherited; the parent keeps its own.
            unsafe { libc::close(fd) };
        }
    }

    /// Makes sure the first `end` bytes of `region` have disk (or tmpfs) blocks, so that
    /// writing them through the mapping can never raise SIGBUS in the program when the
    /// file system is full. Called with `intern` held; false when the space is refused (the
    /// caller then records nothing new).
    fn reserve(&self, region: usize, end: u64) -> bool {
        let reserved = &self.reserved[region];
        let have = reserved.load(Ordering::Relaxed);
        if end <= have {
            return true;
        }
        let want = end.div_ceil(RESERVE_CHUNK) * RESERVE_CHUNK;
        let fd = self.fd.load(Ordering::Relaxed);
        // SAFETY: fallocate on our own descriptor, inside the file's length.
        let done = unsafe {
            libc::fallocate(
                fd,
                0,
                (REGION_OFFSETS[region] + have) as libc::off_t,
                (want - have) as libc::off_t,
            )
        } == 0;
        if done {
            reserved.store(want, Ordering::Relaxed);
        }
        done
    }

    /// Whether a capture is open.
    pub fn is_open(&self) -> bool {
        !self.base.load(Ordering::Acquire).is_null()
    }

    fn at<T>(&self, offset: u64) -> &T {
        let base = self.base.load(Ordering::Acquire);
        // SAFETY: callers pass offsets inside FILE_SIZE, aligned for T, and only while the
        // capture is open (base non-null and mapped for the life of the process).
        unsafe { &*base.add(offset as usize).cast::<T>() }
    }

    /// A header field.
    pub fn header(&self, f: usize) -> &AtomicU64 {
        self.at(f as u64)
    }

    fn counter(&self, node: u32, which: u64) -> &AtomicI64 {
        self.at(fmt::COUNTERS_OFFSET + u64::from(node) * fmt::COUNTER_SIZE + which)
    }

    fn slot<T>(pointer: &AtomicPtr<T>, index: usize) -> &T {
        // SAFETY: callers mask `index` below the table's slot count; tables are mapped in
        // `open` and only replaced in a single-threaded child.
        unsafe { &*pointer.load(Ordering::Relaxed).add(index) }
    }

    fn record_executable(&self) {
        let mut buffer = [0u8; 512];
        let exe = sys::executable(&mut buffer);
        if !exe.is_empty() {
            let _guard = self.intern.lock();
            if let Some(offset) = self.string(exe) {
                self.header(field::EXE)
                    .store(u64::from(offset) + 1, Ordering::Release);
            }
        }
    }

    /// Interns a string; call with `intern` held. `None` when the region is full.
    fn string(&self, text: &[u8]) -> Option<u32> {
        let mut len = text.len().min(fmt::MAX_STRING);
        // A long name is cut before a UTF-8 character it would split; names need not be
        // UTF-8, so this backs up over three continuation bytes at most.
        let least = len.saturating_sub(3);
        while len > least && len < text.len() && (text[len] & 0xC0) == 0x80 {
            len -= 1;
        }
        let text = &text[..len];
        let hash = fnv(text);
        let mut index = hash as usize & (STRING_SLOTS - 1);
        for _ in 0..STRING_SLOTS / 2 {
            let slot = Self::slot(&self.strings, index);
            let stored = slot[1].load(Ordering::Relaxed);
            if stored == 0 {
                break;
            }
            if slot[0].load(Ordering::Relaxed) == hash && self.string_at(stored - 1) == text {
                return Some((stored - 1) as u32);
            }
            index = (index + 1) & (STRING_SLOTS - 1);
        }
        let used = self.header(field::STRINGS_USED).load(Ordering::Relaxed);
        if used + 2 + len as u64 > fmt::STRINGS_CAPACITY
            || !self.reserve(STRINGS, used + 2 + len as u64)
        {
            return None;
        }
        let base = self.base.load(Ordering::Acquire);
        // SAFETY: the record fits inside the string region (checked just above).
        unsafe {
            let at = base.add((fmt::STRINGS_OFFSET + used) as usize);
            std::ptr::copy_nonoverlapping((len as u16).to_le_bytes().as_ptr(), at, 2);
            std::ptr::copy_nonoverlapping(text.as_ptr(), at.add(2), len);
        }
        self.header(field::STRINGS_USED)
            .store(used + 2 + len as u64, Ordering::Release);
        let slot = Self::slot(&self.strings, index);
        if slot[1].load(Ordering::Relaxed) == 0 {
            slot[0].store(hash, Ordering::Relaxed);
            slot[1].store(used + 1, Ordering::Relaxed);
        }
        Some(used as u32)
    }

    fn string_at(&self, offset: u64) -> &[u8] {
        let base = self.base.load(Ordering::Acquire);
        // SAFETY: `offset` came from `string`, so a length and that many bytes follow it.
        unsafe {
            let at = base.add((fmt::STRINGS_OFFSET + offset) as usize);
            let len = u16::from_le_bytes([*at, *at.add(1)]) as usize;
            std::slice::from_raw_parts(at.add(2), len)
        }
    }

    /// Interns a frame by content; `None` when a region is full.
    pub fn frame(&self, file: &[u8], function: &[u8], line: u32, kind: u32) -> Option<u32> {
        let _guard = self.intern.lock();
        let file = self.string(file)?;
        let function = self.string(function)?;
        let k1 = (u64::from(file) << 32) | u64::from(function);
        let k2 = (u64::from(line) << 32) | u64::from(kind);
        let mut index = mix(k1, k2) as usize & (FRAME_SLOTS - 1);
        for _ in 0..FRAME_SLOTS / 2 {
            let slot = Self::slot(&self.frames, index);
            let id = slot[2].load(Ordering::Relaxed);
            if id == 0 {
                let used = self.header(field::FRAMES_USED).load(Ordering::Relaxed);
                if used >= fmt::MAX_FRAMES || !self.reserve(FRAMES, (used + 1) * fmt::FRAME_SIZE) {
                    return None;
                }
                let record = fmt::FRAMES_OFFSET + used * fmt::FRAME_SIZE;
                for (k, word) in [file, function, line, kind].into_iter().enumerate() {
                    self.at::<std::sync::atomic::AtomicU32>(record + 4 * k as u64)
                        .store(word, Ordering::Relaxed);
                }
                self.header(field::FRAMES_USED)
                    .store(used + 1, Ordering::Release);
                slot[0].store(k1, Ordering::Relaxed);
                slot[1].store(k2, Ordering::Relaxed);
                slot[2].store(used + 1, Ordering::Relaxed);
                return Some(used as u32);
            }
            if slot[0].load(Ordering::Relaxed) == k1 && slot[1].load(Ordering::Relaxed) == k2 {
                return Some((id - 1) as u32);
            }
            index = (index + 1) & (FRAME_SLOTS - 1);
        }
        None
    }

    /// The frame already resolved for (code object, instruction offset, identity tag).
    pub fn cached_frame(&self, code: u64, offset: u32, tag: u64) -> Option<u32> {
        let mut index = mix(code, u64::from(offset)) as usize & (CODE_SLOTS - 1);
        for _ in 0..16 {
            let slot = Self::slot(&self.code, index);
            let key = slot[0].load(Ordering::Acquire);
            if key == 0 {
                return None;
            }
            let value = slot[1].load(Ordering::Relaxed);
            if key == code
                && (value >> 32) as u32 == offset
                && slot[2].load(Ordering::Relaxed) == tag
            {
                return Some(value as u32);
            }
            index = (index + 1) & (CODE_SLOTS - 1);
        }
        None
    }

    /// Remembers a resolved frame (best effort: a crowded neighbourhood is skipped).
    pub fn cache_frame(&self, code: u64, offset: u32, tag: u64, frame: u32) {
        let _guard = self.intern.lock();
        let mut index = mix(code, u64::from(offset)) as usize & (CODE_SLOTS - 1);
        for _ in 0..16 {
            let slot = Self::slot(&self.code, index);
            if slot[0].load(Ordering::Relaxed) == 0 {
                slot[1].store(
                    (u64::from(offset) << 32) | u64::from(frame),
                    Ordering::Relaxed,
                );
                slot[2].store(tag, Ordering::Relaxed);
                slot[0].store(code, Ordering::Release);
                return;
            }
            index = (index + 1) & (CODE_SLOTS - 1);
        }
    }

    /// The node for `frame` called from `parent`, created if new. When the tables are full
    /// the parent stands in for it (the stack is cut, never lost).
    pub fn node(&self, parent: u32, frame: u32) -> u32 {
        let key = ((u64::from(parent) << 32) | u64::from(frame)) + 1;
        let slots = self.node_slots.load(Ordering::Relaxed);
        let start = mix(key, 0x51) as usize & (slots - 1);
        let find = |insert: bool| -> Option<u32> {
            let mut index = start;
            for _ in 0..slots / 2 {
                let slot = Self::slot(&self.nodes, index);
                let stored = slot[0].load(Ordering::Acquire);
                if stored == key {
                    return Some(slot[1].load(Ordering::Relaxed) as u32);
                }
                if stored == 0 {
                    if !insert {
                        return None;
                    }
                    let id = self.header(field::NODES_USED).load(Ordering::Relaxed);
                    if id >= fmt::MAX_NODES
                        || id as usize * 10 >= slots * 7
                        || !self.reserve(NODES, (id + 1) * fmt::NODE_SIZE)
                        || !self.reserve(COUNTERS, (id + 1) * fmt::COUNTER_SIZE)
                    {
                        return Some(parent);
                    }
                    let record = fmt::NODES_OFFSET + id * fmt::NODE_SIZE;
                    self.at::<std::sync::atomic::AtomicU32>(record)
                        .store(parent, Ordering::Relaxed);
                    self.at::<std::sync::atomic::AtomicU32>(record + 4)
                        .store(frame, Ordering::Relaxed);
                    self.header(field::NODES_USED)
                        .store(id + 1, Ordering::Release);
                    slot[1].store(id, Ordering::Relaxed);
                    slot[0].store(key, Ordering::Release);
                    return Some(id as u32);
                }
                index = (index + 1) & (slots - 1);
            }
            Some(parent)
        };
        if let Some(node) = find(false) {
            return node;
        }
        let _guard = self.intern.lock();
        find(true).unwrap_or(parent)
    }

    /// Counts an allocation of `weight` bytes at `node`.
    pub fn allocated(&self, node: u32, weight: u64) {
        let w = weight as i64;
        self.counter(node, counter::LIVE)
            .fetch_add(w, Ordering::Relaxed);
        self.counter(node, counter::ALLOCATED)
            .fetch_add(w, Ordering::Relaxed);
        self.counter(node, counter::COUNT)
            .fetch_add(1, Ordering::Relaxed);
        // One read-modify-write on the shared header per allocation: in exact mode every
        // thread of the process comes through here. Totals of allocations are summed from
        // the per-node counters when the capture is read.
        let live = self
            .header(field::LIVE_BYTES)
            .fetch_add(weight, Ordering::Relaxed)
            + weight;
        for high in [field::PEAK_BYTES, field::MARK_PEAK_BYTES] {
            let high = self.header(high);
            if live > high.load(Ordering::Relaxed) {
                high.fetch_max(live, Ordering::Relaxed);
            }
        }
        crate::tree::add(weight);
        if self.peak_due(live) {
            crate::mappings::with_ranges(None, |ranges| self.peak_snapshot(ranges));
        }
    }

    /// Counts the release of what a tracked allocation was attributed.
    pub fn freed(&self, node: u32, weight: u64) {
        self.counter(node, counter::LIVE)
            .fetch_sub(weight as i64, Ordering::Relaxed);
        self.header(field::LIVE_BYTES)
            .fetch_sub(weight, Ordering::Relaxed);
        crate::tree::sub(weight);
    }

    /// Adds `bytes` (negative: takes them back) to the untouched bytes of `node`'s ranges.
    pub fn add_reserved(&self, node: u32, bytes: i64) {
        self.counter(node, counter::RESERVED)
            .fetch_add(bytes, Ordering::Relaxed);
        self.header(field::RESERVED_BYTES)
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Whether a peak snapshot is due, `live` being the requested heap now: whether the
    /// committed heap may have passed the last peak snapshot's by 0.25% (at least 64 KiB),
    /// so that the stacks at the peak are never more than that behind the true peak.
    /// Checked on every recorded allocation and before every release of tracked memory (the
    /// committed heap is at a local high just before a release: pages are written between
    /// calls, unseen), it costs two loads and a comparison unless the requested heap is
    /// past that mark.
    ///
    /// The committed heap is the requested one less the untouched bytes of the large
    /// ranges as last measured (a range is taken as written until measured, see
    /// `crate::mappings`). Pages found untouched can still be written later with no call to
    /// see it: while such ranges are live and the requested heap is past the mark, a
    /// snapshot is also due every [`RECHECK_CYCLES`].
    ///
    /// A snapshot is due as well once a large range has been pending for
    /// `mappings::PENDING_CYCLES`, to measure it. Whatever the reason, snapshots that take
    /// long (many large ranges partly touched) are spaced out ([`Writer::pass_allowed`]).
    #[inline]
    pub fn peak_due(&self, live: u64) -> bool {
        let due = crate::mappings::pending_due() || {
            let mark = self.peak_mark();
            live >= mark
                && (live.saturating_sub(self.header(field::RESERVED_BYTES).load(Ordering::Relaxed))
                    >= mark
                    || sys::cycles().wrapping_sub(LAST_PASS.load(Ordering::Relaxed))
                        >= RECHECK_CYCLES)
        };
        due && self.pass_allowed()
    }

    /// Whether the last snapshot ended long enough ago: at least [`SPACING`] times what it
    /// took, so that snapshots take at most a ninth of the process's time however many
    /// large ranges they measure. Free (no clock read) after a short snapshot.
    #[inline]
    fn pass_allowed(&self) -> bool {
        let span = LAST_SPAN.load(Ordering::Relaxed);
        span < SHORT_PASS_CYCLES
            || sys::cycles().wrapping_sub(LAST_PASS.load(Ordering::Relaxed)) >= span * SPACING
    }

    /// The committed heap a new peak snapshot must reach: the last one's plus 0.25% (at
    /// least 64 KiB).
    #[inline]
    fn peak_mark(&self) -> u64 {
        let peak = self
            .header(field::COMMITTED_PEAK_BYTES)
            .load(Ordering::Relaxed);
        peak + (peak / 400).max(64 << 10)
    }

    /// Whether the committed heap can have reached the mark, `live` being the requested
    /// heap (the committed one is at most that), and a snapshot may be taken now.
    #[inline]
    pub fn peak_possible(&self, live: u64) -> bool {
        live >= self.peak_mark() && self.pass_allowed()
    }

    /// Takes `bytes` off the peak snapshot's committed bytes of `node` (and its total):
    /// pages of a range it took as written, found untouched since.
    pub fn take_off_peak(&self, node: u32, bytes: u64) {
        self.counter(node, counter::COMMITTED_AT_PEAK)
            .fetch_sub(bytes as i64, Ordering::Relaxed);
        let total = self.header(field::COMMITTED_PEAK_BYTES);
        let _ = total.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |peak| {
            Some(peak.saturating_sub(bytes))
        });
    }

    /// Requested and committed bytes live now (committed: less the untouched bytes of the
    /// ranges, as last measured).
    fn heap_now(&self) -> (u64, u64) {
        let live = self.header(field::LIVE_BYTES).load(Ordering::Relaxed);
        let reserved = self.header(field::RESERVED_BYTES).load(Ordering::Relaxed);
        (live, (live as i64 - reserved as i64).max(0) as u64)
    }

    /// Copies every node's requested live bytes into column `requested` and its committed
    /// ones (requested less untouched) into column `committed`.
    fn copy_columns(&self, requested: u64, committed: u64) {
        let nodes = self.header(field::NODES_USED).load(Ordering::Acquire) as u32;
        for node in 0..nodes {
            let live = self.counter(node, counter::LIVE).load(Ordering::Relaxed);
            let reserved = self
                .counter(node, counter::RESERVED)
                .load(Ordering::Relaxed);
            self.counter(node, requested).store(live, Ordering::Relaxed);
            self.counter(node, committed)
                .store(live - reserved, Ordering::Relaxed);
        }
    }

    /// Makes the heap now the peak snapshot.
    fn take_peak(&self, ranges: &mut Ranges, live: u64, committed: u64) {
        crate::mappings::mark_pending_in_peak(ranges);
        self.copy_columns(counter::AT_PEAK, counter::COMMITTED_AT_PEAK);
        self.header(field::PEAK_SNAPSHOT_BYTES)
            .store(live, Ordering::Relaxed);
        self.header(field::COMMITTED_PEAK_BYTES)
            .store(committed, Ordering::Relaxed);
        let now = sys::now_ns();
        self.header(field::PEAK_NS).store(now, Ordering::Relaxed);
        self.record_malloc_info(now);
    }

    /// Records glibc's own figures (`mallinfo2`) with the peak snapshot being taken, `now`
    /// being its time: only here, never per allocation (it locks every arena and walks the
    /// free lists), and within its own budget (`malloc_info::read_spaced`): skipped, the
    /// figures of an earlier peak snapshot stand, with their time. Its cycles are kept out
    /// of the pass's length ([`MALLOC_INFO_CYCLES`]), so that a slow `mallinfo2` never
    /// spaces out the peak snapshots themselves. Reached from `take_peak` alone, which
    /// runs where this thread holds none of malloc's locks (see `malloc_info::read`).
    fn record_malloc_info(&self, now: u64) {
        let Some((figures, cycles)) = crate::malloc_info::read_spaced() else {
            return;
        };
        MALLOC_INFO_CYCLES.store(cycles, Ordering::Relaxed);
        self.header(field::MALLOC_FREE_AT_PEAK)
            .store(figures.free, Ordering::Relaxed);
        self.header(field::MALLOC_ARENA_AT_PEAK)
            .store(figures.arena, Ordering::Relaxed);
        self.header(field::MALLOC_MMAPPED_AT_PEAK)
            .store(figures.mmapped, Ordering::Relaxed);
        self.header(field::MALLOC_READ_NS)
            .store(now, Ordering::Relaxed);
        self.header(field::FLAGS)
            .fetch_or(flag::MALLOC_INFO, Ordering::Release);
    }

    /// Counts a residency pass that began at `started` (ns, cycles).
    fn count_pass(&self, started: (u64, u64)) {
        self.header(field::RESIDENCY_PASSES)
            .fetch_add(1, Ordering::Relaxed);
        self.header(field::RESIDENCY_NS)
            .fetch_add(sys::now_ns().saturating_sub(started.0), Ordering::Relaxed);
        let end = sys::cycles();
        let malloc_info = MALLOC_INFO_CYCLES.swap(0, Ordering::Relaxed);
        LAST_SPAN.store(
            end.wrapping_sub(started.1).saturating_sub(malloc_info),
            Ordering::Relaxed,
        );
        LAST_PASS.store(end, Ordering::Relaxed);
    }

    /// Measures the residency of the large ranges and, if the committed heap is higher than
    /// at the last peak snapshot, copies every node's figures into the peak columns.
    /// `ranges` is the table, locked by the caller: no range is released meanwhile.
    pub(crate) fn peak_snapshot(&self, ranges: &mut Ranges) {
        if self.snapshotting.swap(true, Ordering::Acquire) {
            return;
        }
        let started = (sys::now_ns(), sys::cycles());
        crate::mappings::measure(ranges, false);
        let (live, committed) = self.heap_now();
        self.take_peak_if_higher(ranges, live, committed);
        self.count_pass(started);
        self.snapshotting.store(false, Ordering::Release);
    }

    /// Copies every node's figures into the peak columns when the committed heap is higher
    /// than at the last peak snapshot.
    fn take_peak_if_higher(&self, ranges: &mut Ranges, live: u64, committed: u64) {
        let peak = self
            .header(field::COMMITTED_PEAK_BYTES)
            .load(Ordering::Relaxed);
        if committed > peak {
            self.take_peak(ranges, live, committed);
        }
    }

    /// Takes the exit snapshot (once): what is still live when the program's own code has
    /// finished, before the interpreter tears everything down.
    pub fn exit_snapshot(&self) {
        self.exit_snapshot_in(None);
    }

    /// [`Writer::exit_snapshot`], with the table of ranges when the caller holds it. Every
    /// large range is measured again, whole ones included; a committed heap higher than at
    /// the peak snapshot (memory written since the last one) becomes the peak.
    pub(crate) fn exit_snapshot_in(&self, held: Option<&mut Ranges>) {
        if !self.is_open() || self.exit_taken.load(Ordering::Acquire) {
            return;
        }
        crate::mappings::with_ranges(held, |ranges| {
            if self.exit_taken.swap(true, Ordering::AcqRel)
                || self.snapshotting.swap(true, Ordering::Acquire)
            {
                return;
            }
            let started = (sys::now_ns(), sys::cycles());
            crate::mappings::measure(ranges, true);
            let (live, committed) = self.heap_now();
            self.copy_columns(counter::AT_EXIT, counter::COMMITTED_AT_EXIT);
            self.header(field::EXIT_SNAPSHOT_BYTES)
                .store(live, Ordering::Relaxed);
            self.header(field::COMMITTED_EXIT_BYTES)
                .store(committed, Ordering::Relaxed);
            self.take_peak_if_higher(ranges, live, committed);
            self.count_pass(started);
            self.snapshotting.store(false, Ordering::Release);
            self.header(field::FLAGS)
                .fetch_or(flag::EXIT_SNAPSHOT, Ordering::Release);
        });
    }

    /// Marks the capture closed by the process itself.
    pub fn close(&self) {
        if !self.is_open() {
            return;
        }
        self.exit_snapshot();
        self.header(field::END_NS)
            .store(sys::now_ns(), Ordering::Relaxed);
        self.header(field::FLAGS)
            .fetch_or(flag::CLOSED, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differing_in_the_second_word_spread_over_the_slots() {
        // One code object, many instruction offsets; one function, many lines.
        let code = 0x7f12_3456_7890u64;
        let mut slots: Vec<usize> = (0..4096u64)
            .map(|offset| mix(code, offset * 2) as usize & (CODE_SLOTS - 1))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        assert!(slots.len() > 3900, "{} distinct slots of 4096", slots.len());
        let function = (7u64 << 32) | 9;
        let mut lines: Vec<usize> = (1..=2000u64)
            .map(|line| mix(function, line << 32) as usize & (FRAME_SLOTS - 1))
            .collect();
        lines.sort_unstable();
        lines.dedup();
        assert!(lines.len() > 1900, "{} distinct slots of 2000", lines.len());
    }
}
