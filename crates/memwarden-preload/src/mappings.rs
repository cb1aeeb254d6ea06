//! Anonymous mappings and large malloc blocks, followed by address range, and how much of
//! each the kernel has committed.
//!
//! The kernel releases a mapping a piece at a time: `munmap` of its head, its tail or its
//! middle, one `munmap` across several adjacent mappings, `mremap` (shrink, grow, move), or
//! a `MAP_FIXED` mapping laid over part of it. It keeps exactly the pages outside the
//! released range, so this table keeps each tracked mapping as a range [start, end) with
//! the stack it is charged to and its weight, spread evenly over the range (bytes in exact
//! mode; the sample's weight in sampled mode), and a release charges back exactly the share
//! of the bytes it covered. A release in the middle splits a mapping in two.
//!
//! Which mappings are tracked, and with what weight, is decided by the same sampler as
//! `malloc`'s (`crate::on_alloc`, called by [`track`]), which files the charge here
//! ([`track_mapping`]) before counting it.
//!
//! **Requested, committed, reserved.** A mapping's pages cost memory only once touched: a
//! library that maps 64 MiB of buffers and touches 100 KiB of them (OpenBLAS, once per
//! thread) has requested 64 MiB and committed 100 KiB. So the table also holds, as ranges,
//! the malloc blocks of [`LARGE_BYTES`] or more (glibc maps them itself, out of the hooks'
//! sight; `np.empty` is one, untouched until written), charged through the address table
//! as any block is and only measured here. At each snapshot, [`measure`] asks the kernel
//! which pages of each range of [`LARGE_BYTES`] or more are resident (`mincore`, into a
//! buffer of our own, 256 MiB of range per call) and keeps the share of the range's weight
//! whose pages are not, its *untouched* bytes, per stack in the capture's `RESERVED`
//! counter. A range found whole is not measured again (pages only come, unless `madvise`
//! takes them back, which clears the mark) except at exit. Smaller ranges count as touched.
//! A new range is *pending* for [`PENDING_CYCLES`]: taken as written (a program writes what
//! it allocates, just after the snapshot taken as it is counted, and a process killed then
//! must still show it), then measured; untouched pages found in a range the peak snapshot
//! took as written are taken off it ([`IN_PEAK`]).
//!
//! Mappings are few (pymalloc's arenas, `mmap` objects, libraries' own pools: thousands,
//! not millions) and every operation here comes with a system call that costs more, so the
//! table is a sorted array in memory from `mmap`, searched by bisection, behind one spin
//! lock. The live entries sit in the middle of the array and an insertion or a removal
//! shifts the shorter side: new mappings mostly come at ever lower addresses (the kernel
//! places them top-down), which then costs no shift at all.
//!
//! A call that releases tracked memory (`munmap`, a `MAP_FIXED` `mmap`, `mremap`) holds the
//! lock across its system call: otherwise another thread could map a new range at a freed
//! address between the call and the table's update, and have its new mapping taken for the
//! old one. A call over untracked memory, the common case in sampled mode, only looks.
//! Snapshots (`crate::writer`) hold the lock while they measure and copy, so no range is
//! released under them; a thread holding the lock is marked busy, so nothing it calls, nor
//! a signal handler on it, comes back here.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use libc::{c_int, c_void};
use memwarden_format::capture::field;

use crate::sys::{self, SpinGuard, SpinLock};
use crate::writer::CAPTURE;
use crate::ThreadState;

/// Page size on x86-64 Linux, the only target of this crate: the kernel rounds the lengths
/// of `munmap` and `mremap` up to it.
const PAGE_BYTES: u64 = 4096;
/// Most mappings tracked at once (40 bytes each; pages of the array count only once used).
const CAPACITY: usize = 1 << 16;
/// Ranges this long or longer are measured, and malloc blocks this large are followed by
/// range.
pub const LARGE_BYTES: usize = 1 << 20;
/// Bytes of `mincore`'s answer per call: one byte per page, so 256 MiB of range a call.
const RESIDENCY_BUFFER: usize = 64 << 10;

/// [`Mapping::flags`]: a malloc block, charged and released through the address table; a
/// release here only stops measuring it.
const BLOCK: u32 = 1;
/// Measured at least once. A large range is *pending* until then: taken as written.
const MEASURED: u32 = 1 << 1;
/// Pending, and taken as written by the peak snapshot now kept: when measured, the pages
/// found untouched are taken off that snapshot.
const IN_PEAK: u32 = 1 << 2;
/// Every page was resident at the last measure.
const WHOLE: u32 = 1 << 3;
/// Cycles (`sys::cycles`) a large range stays pending after it is tracked, about 10 ms at
/// 3.3 GHz (15 at 2.3): a program writes a buffer soon after it allocates it, and a
/// snapshot taken in between (often as the block is counted) must not take it for a
/// reservation, nor must a process killed then lose it. A range still untouched by then
/// is measured as such at the next recorded call ([`pending_due`]); one written later is
/// found written by a later snapshot.
pub const PENDING_CYCLES: u64 = 1 << 25;

/// One tracked range, or what is left of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    /// Bytes charged for the whole range.
    weight: u64,
    /// Of `weight`, the share whose pages were not resident at the last measure.
    untouched: u64,
    /// `sys::cycles()` when it was tracked.
    born: u64,
    /// Calling-context node charged.
    node: u32,
    /// [`BLOCK`], [`MEASURED`], [`IN_PEAK`], [`WHOLE`].
    flags: u32,
}

impl Mapping {
    /// A range just tracked, not measured yet.
    fn new(start: u64, end: u64, weight: u64, node: u32, flags: u32, born: u64) -> Mapping {
        Mapping {
            start,
            end,
            weight,
            untouched: 0,
            born,
            node,
            flags,
        }
    }

    fn is_large(&self) -> bool {
        self.end - self.start >= LARGE_BYTES as u64
    }

    /// Large and never measured: taken as written.
    fn is_pending(&self) -> bool {
        self.is_large() && self.flags & MEASURED == 0
    }

    /// The share of `value` (spread evenly over this range) that falls on [from, to).
    fn share(&self, value: u64, from: u64, to: u64) -> u64 {
        let length = self.end - self.start;
        (u128::from(value) * u128::from(to - from) / u128::from(length)) as u64
    }

    /// The part [from, to) of this range, with its shares of weight and untouched bytes.
    fn part(&self, from: u64, to: u64) -> Mapping {
        Mapping {
            start: from,
            end: to,
            weight: self.share(self.weight, from, to),
            untouched: self.share(self.untouched, from, to),
            ..*self
        }
    }

    /// What is left of this range once `kept` (parts of it) are kept.
    fn less(&self, kept: &[Mapping]) -> Released {
        Released {
            node: self.node,
            flags: self.flags,
            weight: self.weight - kept.iter().map(|m| m.weight).sum::<u64>(),
            untouched: self.untouched - kept.iter().map(|m| m.untouched).sum::<u64>(),
        }
    }
}

/// What a release took from one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Released {
    node: u32,
    flags: u32,
    weight: u64,
    untouched: u64,
}

/// The sorted, disjoint ranges: slots `head..tail` of an array of `capacity` slots.
pub(crate) struct Ranges {
    slots: *mut Mapping,
    capacity: usize,
    head: usize,
    tail: usize,
    /// [`RESIDENCY_BUFFER`] bytes for `mincore`, mapped at the first measure.
    residency: *mut u8,
}

impl Ranges {
    const EMPTY: Ranges = Ranges {
        slots: std::ptr::null_mut(),
        capacity: 0,
        head: 0,
        tail: 0,
        residency: std::ptr::null_mut(),
    };

    /// Maps the array on first use; false if the kernel refused the memory.
    fn ensure_array(&mut self, capacity: usize) -> bool {
        if self.slots.is_null() {
            let slots = sys::map_anonymous(capacity * std::mem::size_of::<Mapping>());
            if slots.is_null() {
                return false;
            }
            self.slots = slots.cast();
            self.capacity = capacity;
            self.clear();
        }
        true
    }

    /// Forgets every mapping.
    fn clear(&mut self) {
        self.head = self.capacity / 2;
        self.tail = self.head;
    }

    fn array(&mut self) -> &mut [Mapping] {
        if self.slots.is_null() {
            return &mut [];
        }
        // SAFETY: `slots` is a private mapping of `capacity` slots made in `ensure_array`,
        // never unmapped, and reached only through `&mut self`; zeroed memory is a valid
        // `Mapping` (plain integers).
        unsafe { std::slice::from_raw_parts_mut(self.slots, self.capacity) }
    }

    fn live(&mut self) -> &mut [Mapping] {
        let (head, tail) = (self.head, self.tail);
        &mut self.array()[head..tail]
    }

    /// Index (into `live`) of the first mapping that ends after `address`.
    fn first_ending_after(&mut self, address: u64) -> usize {
        self.live().partition_point(|m| m.end <= address)
    }

    /// Whether any tracked mapping overlaps [start, end).
    fn overlaps(&mut self, start: u64, end: u64) -> bool {
        let at = self.first_ending_after(start);
        self.live().get(at).is_some_and(|m| m.start < end)
    }

    /// Puts `mapping` at live index `at`, shifting the shorter side; false when full.
    fn insert_at(&mut self, at: usize, mapping: Mapping) -> bool {
        let (head, tail, capacity) = (self.head, self.tail, self.capacity);
        let at = head + at;
        let left_is_shorter = at - head <= tail - at;
        if head > 0 && (left_is_shorter || tail == capacity) {
            self.array().copy_within(head..at, head - 1);
            self.array()[at - 1] = mapping;
            self.head -= 1;
        } else if tail < capacity {
            self.array().copy_within(at..tail, at + 1);
            self.array()[at] = mapping;
            self.tail += 1;
        } else {
            return false;
        }
        true
    }

    /// Removes the mapping at live index `at`, shifting the shorter side.
    fn remove_at(&mut self, at: usize) {
        let (head, tail) = (self.head, self.tail);
        let at = head + at;
        if at - head < tail - 1 - at {
            self.array().copy_within(head..at, head + 1);
            self.head += 1;
        } else {
            self.array().copy_within(at + 1..tail, at);
            self.tail -= 1;
        }
    }

    /// Adds a mapping over a range no tracked mapping overlaps; false when full.
    fn insert(&mut self, mapping: Mapping) -> bool {
        let at = self.live().partition_point(|m| m.start < mapping.start);
        self.insert_at(at, mapping)
    }

    /// Releases every tracked byte in [start, end): `freed` hears what each range lost.
    /// Returns how many pieces could not be kept because the table was full (a release in
    /// the middle of a mapping needs one more slot; without it, the part after the hole is
    /// released too).
    fn release(&mut self, start: u64, end: u64, freed: &mut impl FnMut(Released)) -> u64 {
        let mut dropped = 0;
        let mut at = self.first_ending_after(start);
        while let Some(&mapping) = self.live().get(at) {
            if mapping.start >= end {
                break;
            }
            let left = (mapping.start < start).then(|| mapping.part(mapping.start, start));
            let right = (mapping.end > end).then(|| mapping.part(end, mapping.end));
            let released = match (left, right) {
                (None, None) => {
                    self.remove_at(at);
                    mapping.less(&[])
                }
                (Some(piece), None) | (None, Some(piece)) => {
                    self.live()[at] = piece;
                    at += 1;
                    mapping.less(&[piece])
                }
                (Some(left), Some(right)) => {
                    self.live()[at] = left;
                    at += 2;
                    if self.insert_at(at - 1, right) {
                        mapping.less(&[left, right])
                    } else {
                        dropped += 1;
                        mapping.less(&[left])
                    }
                }
            };
            freed(released);
        }
        dropped
    }

    /// Cuts the mapping that strictly contains `address`, if any, in two; false when that
    /// needed a slot and the table was full.
    fn split_at(&mut self, address: u64) -> bool {
        let at = self.first_ending_after(address);
        let Some(&mapping) = self.live().get(at) else {
            return true;
        };
        if mapping.start >= address {
            return true;
        }
        let left = mapping.part(mapping.start, address);
        self.live()[at] = left;
        let right = Mapping {
            start: address,
            weight: mapping.weight - left.weight,
            untouched: mapping.untouched - left.untouched,
            ..mapping
        };
        if self.insert_at(at + 1, right) {
            return true;
        }
        self.live()[at] = mapping;
        false
    }

    /// Moves what is tracked in [start, end) to start at `to`, where nothing is tracked (the
    /// kernel moved those pages there). Returns how many pieces were released instead
    /// because the table was full.
    fn relocate(&mut self, start: u64, end: u64, to: u64, freed: &mut impl FnMut(Released)) -> u64 {
        if start >= end || to == start {
            return 0;
        }
        if !self.split_at(start) || !self.split_at(end) {
            return 1 + self.release(start, end, freed);
        }
        let first = self.first_ending_after(start);
        let last = self.live().partition_point(|m| m.start < end);
        let count = last - first;
        if count == 0 {
            return 0;
        }
        let destination = self.live().partition_point(|m| m.start < to);
        let live = self.live();
        let moved = if destination >= last {
            live[first..destination].rotate_left(count);
            destination - count..destination
        } else {
            live[destination..last].rotate_right(count);
            destination..destination + count
        };
        for mapping in &mut live[moved] {
            mapping.start = mapping.start - start + to;
            mapping.end = mapping.end - start + to;
        }
        0
    }

    /// The malloc block tracked at `start`, taken out of the table.
    fn remove_block(&mut self, start: u64) -> Option<Mapping> {
        let at = self.live().partition_point(|m| m.start < start);
        let mapping = *self.live().get(at)?;
        if mapping.start != start || mapping.flags & BLOCK == 0 {
            return None;
        }
        self.remove_at(at);
        Some(mapping)
    }

    /// Marks the ranges overlapping [start, end) as needing a new measure.
    fn forget_residency(&mut self, start: u64, end: u64) {
        let at = self.first_ending_after(start);
        for mapping in &mut self.live()[at..] {
            if mapping.start >= end {
                break;
            }
            mapping.flags &= !WHOLE;
        }
    }

    /// Asks the kernel which pages of each range of [`LARGE_BYTES`] or more are resident,
    /// and sets each one's untouched bytes (its weight's share of the pages that are not).
    /// Skipped unless `everything`: ranges found whole at their last measure, and pending
    /// ones younger than [`PENDING_CYCLES`] at `now` (cycles). `changed(node, bytes)` hears
    /// each change of a range's untouched bytes; `taken_off(node, bytes)` the untouched
    /// bytes of a range the peak snapshot took as written ([`IN_PEAK`]).
    fn measure(
        &mut self,
        everything: bool,
        now: u64,
        changed: &mut impl FnMut(u32, i64),
        taken_off: &mut impl FnMut(u32, u64),
    ) {
        if self.residency.is_null() {
            self.residency = sys::map_anonymous(RESIDENCY_BUFFER);
            if self.residency.is_null() {
                return;
            }
        }
        // SAFETY: a private mapping of RESIDENCY_BUFFER bytes made just above or by an
        // earlier call, never unmapped, reached only through `&mut self`.
        let buffer = unsafe { std::slice::from_raw_parts_mut(self.residency, RESIDENCY_BUFFER) };
        let (head, tail) = (self.head, self.tail);
        if self.slots.is_null() {
            return;
        }
        // SAFETY: as in `array`; `buffer` is a different mapping.
        let live = unsafe { std::slice::from_raw_parts_mut(self.slots.add(head), tail - head) };
        let mut oldest_pending = 0u64;
        for mapping in live {
            if mapping.is_pending()
                && !everything
                && now.wrapping_sub(mapping.born) < PENDING_CYCLES
            {
                if oldest_pending == 0 || mapping.born < oldest_pending {
                    oldest_pending = mapping.born;
                }
                continue;
            }
            let skip = if !mapping.is_large() {
                // A piece of a large range keeps being measured while it holds untouched
                // bytes; small ranges count as written.
                mapping.untouched == 0
            } else if everything || mapping.flags & MEASURED == 0 {
                false
            } else {
                mapping.flags & WHOLE != 0
            };
            if skip {
                continue;
            }
            let Some((resident, pages)) = resident_pages(mapping.start, mapping.end, buffer) else {
                // Not all mapped (unmapped behind our back): keep what was known.
                continue;
            };
            let before = mapping.untouched;
            let absent = pages - resident.min(pages);
            mapping.untouched =
                (u128::from(mapping.weight) * u128::from(absent) / u128::from(pages)) as u64;
            if mapping.flags & IN_PEAK != 0 && mapping.untouched > 0 {
                // Pages only come between measures (unless `madvise` takes them), so these
                // were untouched at the peak snapshot too.
                taken_off(mapping.node, mapping.untouched);
            }
            let was_pending = mapping.is_pending();
            mapping.flags = (mapping.flags | MEASURED) & !IN_PEAK;
            if absent == 0 {
                mapping.flags |= WHOLE;
            } else {
                mapping.flags &= !WHOLE;
            }
            let untouched = mapping.untouched as i64 - before as i64;
            if untouched != 0 {
                changed(mapping.node, untouched);
            }
            if was_pending {
                // Likewise for the tree's peak, which counted it as written too.
                crate::tree::pending_found_untouched(mapping.born, mapping.untouched);
            }
        }
        PENDING_SINCE.store(oldest_pending, Ordering::Relaxed);
    }

    /// Whether a range overlapping [start, end) holds pages found untouched at its last
    /// measure (which may have been written since).
    fn has_untouched(&mut self, start: u64, end: u64) -> bool {
        let at = self.first_ending_after(start);
        self.live()[at..]
            .iter()
            .take_while(|m| m.start < end)
            .any(|m| m.untouched > 0)
    }

    /// Marks the pending ranges as taken as written by the peak snapshot just taken (and
    /// no other range).
    fn mark_pending_in_peak(&mut self) {
        for mapping in self.live() {
            if mapping.is_pending() {
                mapping.flags |= IN_PEAK;
            } else {
                mapping.flags &= !IN_PEAK;
            }
        }
    }
}

/// (resident pages, pages) of the pages holding [start, end); `None` when part of it is
/// not mapped. `buffer` takes `mincore`'s answer, one byte per page, a chunk at a time.
fn resident_pages(start: u64, end: u64, buffer: &mut [u8]) -> Option<(u64, u64)> {
    let first = start & !(PAGE_BYTES - 1);
    let last = end.div_ceil(PAGE_BYTES) * PAGE_BYTES;
    let mut resident = 0;
    let mut at = first;
    while at < last {
        let length = (last - at).min(buffer.len() as u64 * PAGE_BYTES);
        let pages = (length / PAGE_BYTES) as usize;
        // SAFETY: the mincore system call writes one byte per page of [at, at + length),
        // `pages` bytes, into `buffer`, which holds at least that many; it reads no memory
        // of the range itself and fails with ENOMEM where the range is not mapped.
        let failed = unsafe {
            libc::syscall(libc::SYS_mincore, at, length as usize, buffer.as_mut_ptr()) != 0
        };
        if failed {
            return None;
        }
        resident += count_resident(&buffer[..pages]);
        at += length;
    }
    Some((resident, (last - first) / PAGE_BYTES))
}

/// Pages marked resident (bit 0 of each byte; the kernel reserves the others).
fn count_resident(answer: &[u8]) -> u64 {
    let mut words = answer.chunks_exact(8);
    let mut count = 0;
    for word in &mut words {
        let word = u64::from_ne_bytes(word.try_into().unwrap_or([0; 8]));
        count += u64::from((word & 0x0101_0101_0101_0101).count_ones());
    }
    count
        + words
            .remainder()
            .iter()
            .map(|b| u64::from(b & 1))
            .sum::<u64>()
}

/// The process's table of tracked mappings.
struct MappingTable {
    lock: SpinLock,
    ranges: UnsafeCell<Ranges>,
}

// SAFETY: `ranges` is only reached through a `Held` or `with_ranges`, which hold `lock` (or
// in the child after fork, when only one thread exists).
unsafe impl Sync for MappingTable {}

static MAPPINGS: MappingTable = MappingTable {
    lock: SpinLock::new(),
    ranges: UnsafeCell::new(Ranges::EMPTY),
};

/// The thread holding the table's lock (the address of its state), 0 when none.
static OWNER: AtomicUsize = AtomicUsize::new(0);

/// `born` of the oldest pending range (see [`PENDING_CYCLES`]), 0 when none: set as one is
/// tracked, recomputed by each measure.
static PENDING_SINCE: AtomicU64 = AtomicU64::new(0);

/// Whether a pending range has grown old enough to be measured (a snapshot is then due):
/// one load, and the time-stamp counter only while a range is pending.
#[inline]
pub fn pending_due() -> bool {
    let since = PENDING_SINCE.load(Ordering::Relaxed);
    since != 0 && sys::cycles().wrapping_sub(since) >= PENDING_CYCLES
}

/// Notes the birth of a pending range.
fn pending_from(born: u64) {
    let _ = PENDING_SINCE.compare_exchange(0, born, Ordering::Relaxed, Ordering::Relaxed);
}

/// Books a change of a range's untouched bytes into the capture's `RESERVED` counter of
/// `node` and its total, and into the tree's heap (see `crate::tree`): pending ranges,
/// taken as written, hold none.
fn book_untouched(node: u32, untouched: i64) {
    if untouched != 0 {
        CAPTURE.add_reserved(node, untouched);
        crate::tree::reserved_changed(untouched);
    }
}

/// Books what a release took from a range: its charge (unless a malloc block, whose charge
/// the address table holds) and its untouched bytes, in that order: the committed heap
/// (requested less untouched) never rises on the way.
fn book_release(released: Released) {
    if released.flags & BLOCK == 0 {
        CAPTURE.freed(released.node, released.weight);
    }
    book_untouched(released.node, -(released.untouched as i64));
}

/// The table, locked by the calling thread, which is marked busy meanwhile: a signal
/// handler's `mmap` or `malloc` on this thread then only forwards, and never waits for
/// this lock.
struct Held {
    guard: Option<SpinGuard<'static>>,
    thread: &'static ThreadState,
    was_busy: bool,
}

impl Held {
    /// Locks the table, unless this thread is already inside the profiler or profiling is
    /// off.
    fn take() -> Option<Held> {
        if crate::STATE.load(Ordering::Relaxed) != crate::ACTIVE || crate::thread().busy.get() {
            return None;
        }
        Held::lock()
    }

    /// Locks the table whatever the thread's busy mark (the allocation and release paths
    /// come here busy); `None` when this thread holds the lock already (a signal handler
    /// that ends the process while its thread was inside the table: the exit snapshot is
    /// then skipped rather than waiting for ever).
    fn lock() -> Option<Held> {
        let thread = crate::thread();
        let me = std::ptr::from_ref(thread) as usize;
        if OWNER.load(Ordering::Relaxed) == me {
            return None;
        }
        let was_busy = thread.busy.replace(true);
        let guard = MAPPINGS.lock.lock();
        OWNER.store(me, Ordering::Relaxed);
        let mut held = Held {
            guard: Some(guard),
            thread,
            was_busy,
        };
        // Without the array (the kernel refused 2.5 MiB of address space) the table stays
        // empty: nothing is tracked, and the calls below find nothing.
        held.ranges().ensure_array(CAPACITY);
        Some(held)
    }

    /// Locks the table if a tracked mapping overlaps one of `ranges` (empty ones included).
    fn take_if_tracked(ranges: &[(u64, u64)]) -> Option<Held> {
        let mut held = Held::take()?;
        let tracked = ranges
            .iter()
            .any(|&(start, end)| start < end && held.ranges().overlaps(start, end));
        tracked.then_some(held)
    }

    fn ranges(&mut self) -> &mut Ranges {
        // SAFETY: the lock is held for as long as `self` lives.
        unsafe { &mut *MAPPINGS.ranges.get() }
    }

    /// Takes the snapshot the moment calls for before the tracked memory in [start, end) is
    /// released (the heap is at a local high): called before the system call, while the
    /// pages are still there to be measured.
    fn before_release(&mut self, start: u64, end: u64) {
        let written_since = self.ranges().has_untouched(start, end);
        crate::before_release(Some(self.ranges()), written_since);
    }

    /// Releases what is tracked in [start, end) from the capture's live bytes (after the
    /// system call, or for ranges the kernel had already unmapped behind our back).
    fn release(&mut self, start: u64, end: u64) {
        let dropped = self.ranges().release(start, end, &mut book_release);
        count_dropped(dropped);
    }

    /// Moves what is tracked in [start, end) to `to`.
    fn relocate(&mut self, start: u64, end: u64, to: u64) {
        let dropped = self.ranges().relocate(start, end, to, &mut book_release);
        count_dropped(dropped);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Unlock first: a signal arriving in between must find the lock free.
        OWNER.store(0, Ordering::Relaxed);
        self.guard = None;
        self.thread.busy.set(self.was_busy);
    }
}

/// Runs `f` with the table of ranges: `held`, the caller's own when it holds the lock, else
/// locked for the call; `None` when it cannot be (see [`Held::lock`]).
pub(crate) fn with_ranges<T>(
    held: Option<&mut Ranges>,
    f: impl FnOnce(&mut Ranges) -> T,
) -> Option<T> {
    match held {
        Some(ranges) => Some(f(ranges)),
        None => Some(f(Held::lock()?.ranges())),
    }
}

/// Measures the residency of the large ranges (see [`Ranges::measure`]) and books what
/// changed into the capture, taking the untouched bytes of ranges the peak snapshot took
/// as written off that snapshot.
pub(crate) fn measure(ranges: &mut Ranges, everything: bool) {
    ranges.measure(
        everything,
        sys::cycles(),
        &mut book_untouched,
        &mut |node, bytes| CAPTURE.take_off_peak(node, bytes),
    );
}

/// After a peak snapshot: the pending ranges it took as written are to be corrected when
/// measured.
pub(crate) fn mark_pending_in_peak(ranges: &mut Ranges) {
    ranges.mark_pending_in_peak();
}

fn count_dropped(dropped: u64) {
    if dropped > 0 {
        CAPTURE
            .header(field::DROPPED)
            .fetch_add(dropped, Ordering::Relaxed);
    }
}

/// The end of [start, start + length) as the kernel rounds it, to whole pages.
fn page_end(start: u64, length: usize) -> u64 {
    let length = (length as u64).saturating_add(PAGE_BYTES - 1) & !(PAGE_BYTES - 1);
    start.saturating_add(length)
}

/// Charges a new mapping of `length` bytes at `start`, if the sampler picks it: the
/// sampler then calls [`track_mapping`].
fn track(start: usize, length: usize) {
    crate::on_alloc(start, length, crate::Kind::Mapping);
}

/// Follows a new mapping of `length` bytes at `start`, to be charged `weight` bytes at
/// `node`; false when the table is full (it is then not charged). Called on the recording
/// thread, marked busy, which does not hold the lock.
pub fn track_mapping(start: usize, length: usize, node: u32, weight: u64) -> bool {
    let start = start as u64;
    let end = start + length as u64;
    let Some(mut held) = Held::lock() else {
        return false;
    };
    // Whatever is still tracked there was unmapped behind our back (a raw system call, or
    // a signal handler's `munmap` while this thread was busy): it is gone.
    held.release(start, end);
    let born = sys::cycles().max(1);
    let tracked = held
        .ranges()
        .insert(Mapping::new(start, end, weight, node, 0, born));
    if tracked && length >= LARGE_BYTES {
        pending_from(born);
    }
    tracked
}

/// Follows a malloc block of `size` bytes at `address`, just charged `weight` bytes at
/// `node` in the address table, by range, so that its untouched pages are measured. False
/// when the table is full (the block is then counted as touched). Called on the recording
/// thread, marked busy, which does not hold the lock.
pub fn track_block(address: usize, size: usize, node: u32, weight: u64) -> bool {
    let start = address as u64;
    let Some(mut held) = Held::lock() else {
        return false;
    };
    // A block freed while its thread was busy (in a signal handler) was never taken out.
    held.release(start, start + size as u64);
    let born = sys::cycles().max(1);
    let tracked = held.ranges().insert(Mapping::new(
        start,
        start + size as u64,
        weight,
        node,
        BLOCK,
        born,
    ));
    if tracked {
        pending_from(born);
    }
    tracked
}

/// Whether the malloc block at `address` holds pages found untouched at its last measure
/// (which may have been written since): asked before it is freed.
pub fn block_has_untouched(address: usize) -> bool {
    let start = address as u64;
    Held::lock().is_some_and(|mut held| held.ranges().has_untouched(start, start + 1))
}

/// Stops following the malloc block at `address` (being freed; its charge is released
/// through the address table).
pub fn forget_block(address: usize) {
    let Some(mut held) = Held::lock() else {
        return;
    };
    if let Some(block) = held.ranges().remove_block(address as u64) {
        book_release(block.less(&[]));
    }
}

/// `mmap`: runs `map` (the system call with the caller's arguments) and follows what it
/// changed. A `MAP_FIXED` mapping of any kind replaces what was mapped in its range; an
/// anonymous one that can hold data (not `PROT_NONE`: CUDA reserves many GiB of address
/// space that way) is an allocation.
pub fn mmap(
    address: *mut c_void,
    length: usize,
    protection: c_int,
    flags: c_int,
    map: impl FnOnce() -> *mut c_void,
) -> *mut c_void {
    let start = address as u64;
    let end = page_end(start, length);
    let mut replaced = match flags & libc::MAP_FIXED != 0 {
        true => Held::take_if_tracked(&[(start, end)]),
        false => None,
    };
    if let Some(held) = replaced.as_mut() {
        held.before_release(start, end);
    }
    let mapped = map();
    if mapped == libc::MAP_FAILED {
        return mapped;
    }
    if let Some(mut held) = replaced {
        held.release(start, end);
    }
    if flags & libc::MAP_ANONYMOUS != 0 && protection != libc::PROT_NONE {
        track(mapped as usize, length);
    }
    mapped
}

/// `munmap`: runs `unmap` (the system call) and releases exactly what it unmapped.
pub fn munmap(address: *mut c_void, length: usize, unmap: impl FnOnce() -> c_int) -> c_int {
    let start = address as u64;
    let end = page_end(start, length);
    let Some(mut held) = Held::take_if_tracked(&[(start, end)]) else {
        return unmap();
    };
    held.before_release(start, end);
    let result = unmap();
    if result == 0 {
        held.release(start, end);
    }
    result
}

/// `mremap`: runs `remap` (the system call) and follows the pages. A shrink releases the
/// tail; a move takes the tracked pages, and their charges, to the new address (replacing
/// whatever `MREMAP_FIXED` unmapped there); the bytes a grow adds are a new allocation by
/// the caller, sampled like any other. (With `MREMAP_DONTUNMAP` the old range stays mapped
/// but empty: it is counted as released, like the reservation it has become.)
pub fn mremap(
    old: *mut c_void,
    old_size: usize,
    new_size: usize,
    flags: c_int,
    new_address: *mut c_void,
    remap: impl FnOnce() -> *mut c_void,
) -> *mut c_void {
    let old_start = old as u64;
    let old_end = page_end(old_start, old_size);
    let destination = match flags & libc::MREMAP_FIXED != 0 {
        true => (new_address as u64, page_end(new_address as u64, new_size)),
        false => (0, 0),
    };
    let mut held = Held::take_if_tracked(&[(old_start, old_end), destination]);
    if let Some(held) = held.as_mut() {
        held.before_release(old_start, old_end);
    }
    let moved = remap();
    if moved == libc::MAP_FAILED {
        return moved;
    }
    let moved_start = moved as u64;
    if let Some(mut held) = held {
        let new_length = page_end(0, new_size);
        if new_length < old_end - old_start {
            held.release(old_start + new_length, old_end);
        }
        if moved_start != old_start {
            // The kernel unmapped whatever was at the destination first.
            held.release(moved_start, page_end(moved_start, new_size));
            let kept_end = old_start + new_length.min(old_end - old_start);
            held.relocate(old_start, kept_end, moved_start);
        }
    }
    // An `old_size` of 0 asks for a second mapping of the same shared pages: no new memory.
    if new_size > old_size && old_size > 0 {
        track(moved as usize + old_size, new_size - old_size);
    }
    moved
}

/// `madvise`: runs `advise` (the system call). Advice that can take pages away
/// (`MADV_DONTNEED`, `MADV_FREE`, `MADV_REMOVE`, `MADV_PAGEOUT`...) makes the ranges it
/// covers be measured again at the next snapshot.
pub fn madvise(
    address: *mut c_void,
    length: usize,
    advice: c_int,
    advise: impl FnOnce() -> c_int,
) -> c_int {
    const DONTNEED_LOCKED: c_int = 24;
    let takes_pages = matches!(
        advice,
        libc::MADV_DONTNEED
            | libc::MADV_FREE
            | libc::MADV_REMOVE
            | libc::MADV_PAGEOUT
            | DONTNEED_LOCKED
    );
    let result = advise();
    if result == 0 && takes_pages {
        let start = address as u64;
        let end = page_end(start, length);
        if let Some(mut held) = Held::take_if_tracked(&[(start, end)]) {
            held.ranges().forget_residency(start, end);
        }
    }
    result
}

/// Forgets every tracked mapping and any holder of the lock: for the child after `fork`,
/// which starts a capture of its own and where only the forking thread exists.
pub fn forget_all() {
    MAPPINGS.lock.reset();
    OWNER.store(0, Ordering::Relaxed);
    PENDING_SINCE.store(0, Ordering::Relaxed);
    // SAFETY: only the forking thread exists in the child, and it holds no `Held`: fork
    // is never called from inside the profiler.
    unsafe { (*MAPPINGS.ranges.get()).clear() };
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ranges(capacity: usize) -> Ranges {
        let mut ranges = Ranges::EMPTY;
        assert!(ranges.ensure_array(capacity));
        ranges
    }

    fn mapping(start_mib: u64, end_mib: u64, node: u32) -> Mapping {
        Mapping::new(
            start_mib * MIB,
            end_mib * MIB,
            (end_mib - start_mib) * MIB,
            node,
            0,
            0,
        )
    }

    /// (start MiB, end MiB, weight MiB, node) of every tracked mapping.
    fn contents(ranges: &mut Ranges) -> Vec<(u64, u64, u64, u32)> {
        ranges
            .live()
            .iter()
            .map(|m| (m.start / MIB, m.end / MIB, m.weight / MIB, m.node))
            .collect()
    }

    /// Releases [start, end) MiB; (node, MiB) of each charge released.
    fn release(ranges: &mut Ranges, start_mib: u64, end_mib: u64) -> Vec<(u32, u64)> {
        let mut freed = Vec::new();
        let dropped = ranges.release(start_mib * MIB, end_mib * MIB, &mut |r: Released| {
            freed.push((r.node, r.weight / MIB))
        });
        assert_eq!(dropped, 0);
        freed
    }

    #[test]
    fn a_release_takes_exactly_the_overlapped_bytes() {
        let mut table = ranges(64);
        for (start, node) in [(100, 1), (200, 2), (300, 3), (400, 4)] {
            assert!(table.insert(mapping(start, start + 100, node)));
        }
        assert_eq!(release(&mut table, 100, 150), [(1, 50)], "head");
        assert_eq!(release(&mut table, 280, 300), [(2, 20)], "tail");
        assert_eq!(release(&mut table, 325, 350), [(3, 25)], "middle");
        assert_eq!(
            contents(&mut table),
            [
                (150, 200, 50, 1),
                (200, 280, 80, 2),
                (300, 325, 25, 3),
                (350, 400, 50, 3),
                (400, 500, 100, 4)
            ]
        );
        assert_eq!(
            release(&mut table, 0, 1000),
            [(1, 50), (2, 80), (3, 25), (3, 50), (4, 100)],
            "one release across all of them"
        );
        assert!(table.live().is_empty());
    }

    #[test]
    fn sampled_weights_are_shared_in_proportion_and_never_lost() {
        let mut table = ranges(64);
        let weight = 1_000_003;
        assert!(table.insert(Mapping::new(0, 3 * PAGE_BYTES, weight, 7, 0, 0)));
        let mut freed = 0;
        table.release(PAGE_BYTES, 2 * PAGE_BYTES, &mut |r: Released| {
            freed += r.weight
        });
        assert!((333_333..=333_335).contains(&freed), "{freed}");
        let kept: u64 = table.live().iter().map(|m| m.weight).sum();
        assert_eq!(kept + freed, weight);
    }

    #[test]
    fn a_full_table_releases_the_part_it_cannot_keep() {
        let mut table = ranges(1);
        assert!(table.insert(mapping(0, 100, 1)));
        assert!(!table.insert(mapping(200, 300, 2)));
        let mut freed = Vec::new();
        let dropped = table.release(40 * MIB, 60 * MIB, &mut |r: Released| {
            freed.push((r.node, r.weight / MIB))
        });
        assert_eq!((dropped, freed), (1, vec![(1, 60)]));
        assert_eq!(contents(&mut table), [(0, 40, 40, 1)]);
    }

    #[test]
    fn inserts_at_either_end_fill_the_whole_array() {
        let mut table = ranges(8);
        for i in 0..4 {
            assert!(
                table.insert(mapping(100 - i * 10, 105 - i * 10, 1)),
                "lower"
            );
        }
        for i in 0..4 {
            assert!(
                table.insert(mapping(200 + i * 10, 205 + i * 10, 1)),
                "higher"
            );
        }
        assert!(!table.insert(mapping(150, 155, 1)));
        let starts: Vec<u64> = contents(&mut table).iter().map(|m| m.0).collect();
        assert_eq!(starts, [70, 80, 90, 100, 200, 210, 220, 230]);
        release(&mut table, 85, 215);
        let starts: Vec<u64> = contents(&mut table).iter().map(|m| m.0).collect();
        assert_eq!(starts, [70, 80, 220, 230]);
        assert!(table.insert(mapping(150, 155, 1)));
    }

    #[test]
    fn relocation_carries_pieces_and_charges_to_the_new_place() {
        let mut table = ranges(64);
        for (start, node) in [(100, 1), (200, 2), (300, 3)] {
            assert!(table.insert(mapping(start, start + 100, node)));
        }
        // Part of mapping 2 moves below everything, then above everything.
        let mut nothing = |_: Released| panic!("nothing is released");
        assert_eq!(
            table.relocate(250 * MIB, 280 * MIB, 10 * MIB, &mut nothing),
            0
        );
        assert_eq!(
            contents(&mut table),
            [
                (10, 40, 30, 2),
                (100, 200, 100, 1),
                (200, 250, 50, 2),
                (280, 300, 20, 2),
                (300, 400, 100, 3)
            ]
        );
        assert_eq!(table.relocate(0, 150 * MIB, 1000 * MIB, &mut nothing), 0);
        assert_eq!(
            contents(&mut table),
            [
                (150, 200, 50, 1),
                (200, 250, 50, 2),
                (280, 300, 20, 2),
                (300, 400, 100, 3),
                (1010, 1040, 30, 2),
                (1100, 1150, 50, 1)
            ]
        );
    }

    /// A real anonymous mapping of `mib` MiB with its first `touched_mib` MiB written.
    fn real_mapping(mib: u64, touched_mib: u64) -> u64 {
        let address = sys::map_anonymous((mib * MIB) as usize);
        assert!(!address.is_null());
        // SAFETY: the first `touched_mib` MiB of the mapping just made.
        unsafe { std::ptr::write_bytes(address, 1, (touched_mib * MIB) as usize) };
        address as u64
    }

    /// (node, change of untouched bytes) and (node, bytes taken off the peak), as heard.
    type Heard = (Vec<(u32, i64)>, Vec<(u32, u64)>);

    /// Measures `table` at `now`; (node, change of untouched bytes) and (node, bytes taken
    /// off the peak) heard.
    fn measure(table: &mut Ranges, everything: bool, now: u64) -> Heard {
        let (mut changes, mut taken) = (Vec::new(), Vec::new());
        table.measure(
            everything,
            now,
            &mut |node, bytes| changes.push((node, bytes)),
            &mut |node, bytes| taken.push((node, bytes)),
        );
        (changes, taken)
    }

    #[test]
    fn a_range_is_taken_as_written_until_old_enough_then_measured() {
        let mut table = ranges(64);
        let start = real_mapping(8, 2);
        // Sampled: the range weighs 10 MiB, so its untouched 3/4 weigh 7.5 MiB.
        assert!(table.insert(Mapping::new(start, start + 8 * MIB, 10 * MIB, 3, 0, 1000)));
        let young = 1000 + PENDING_CYCLES - 1;
        assert_eq!(
            measure(&mut table, false, young),
            (vec![], vec![]),
            "pending"
        );
        table.mark_pending_in_peak();
        assert_ne!(table.live()[0].flags & IN_PEAK, 0);
        let old = young + 1;
        let untouched = 15 * MIB / 2;
        assert_eq!(
            measure(&mut table, false, old),
            (vec![(3, untouched as i64)], vec![(3, untouched)]),
            "measured, and taken off the peak that took it as written"
        );
        assert_eq!(table.live()[0].flags & IN_PEAK, 0);
        assert_eq!(
            measure(&mut table, false, old),
            (vec![], vec![]),
            "nothing new"
        );
        // SAFETY: the whole mapping, which is ours.
        unsafe { std::ptr::write_bytes(start as *mut u8, 1, (8 * MIB) as usize) };
        assert_eq!(
            measure(&mut table, false, old),
            (vec![(3, -(untouched as i64))], vec![]),
            "written since"
        );
        assert_ne!(table.live()[0].flags & WHOLE, 0);
        // SAFETY: as above.
        unsafe {
            libc::madvise(
                start as *mut c_void,
                (8 * MIB) as usize,
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(
            measure(&mut table, false, old),
            (vec![], vec![]),
            "whole: not measured"
        );
        table.forget_residency(start, start + MIB);
        assert_eq!(
            measure(&mut table, false, old),
            (vec![(3, (10 * MIB) as i64)], vec![]),
            "measured again after madvise"
        );
        sys::unmap(start as *mut u8, (8 * MIB) as usize);
    }

    #[test]
    fn an_exit_measures_everything_and_pieces_keep_their_share() {
        let mut table = ranges(64);
        let small = real_mapping(1, 0);
        let tiny = sys::map_anonymous(512 << 10) as u64;
        assert!(table.insert(Mapping::new(tiny, tiny + (512 << 10), 512 << 10, 1, 0, 0)));
        assert!(table.insert(Mapping::new(small, small + MIB, MIB, 2, 0, 0)));
        // Young, but an exit measures it; the small one counts as written.
        assert_eq!(
            measure(&mut table, true, 0),
            (vec![(2, MIB as i64)], vec![])
        );
        // Half of the untouched megabyte is unmapped: its untouched share goes with it.
        let mut released = Vec::new();
        table.release(small, small + MIB / 2, &mut |r: Released| released.push(r));
        assert_eq!(
            released,
            [Released {
                node: 2,
                flags: MEASURED,
                weight: MIB / 2,
                untouched: MIB / 2
            }]
        );
        // The half left, though small, is measured while it holds untouched bytes.
        // SAFETY: a byte of the half still mapped.
        unsafe { *((small + MIB / 2) as *mut u8) = 1 };
        let (changes, _) = measure(&mut table, false, 0);
        assert_eq!(changes, [(2, -4096)]);
        sys::unmap(tiny as *mut u8, 512 << 10);
        sys::unmap((small + MIB / 2) as *mut u8, (MIB / 2) as usize);
    }

    #[test]
    fn an_unmapped_range_keeps_what_was_known() {
        let mut table = ranges(64);
        let start = real_mapping(4, 4);
        sys::unmap(start as *mut u8, (4 * MIB) as usize);
        assert!(table.insert(Mapping::new(start, start + 4 * MIB, 4 * MIB, 1, 0, 0)));
        assert_eq!(
            measure(&mut table, true, 0),
            (vec![], vec![]),
            "nothing known changes"
        );
        assert_eq!(table.live()[0].flags, 0);
    }

    #[test]
    fn resident_pages_round_to_pages_and_count_in_chunks() {
        let mut buffer = vec![0u8; 8];
        let start = real_mapping(1, 0);
        // SAFETY: bytes inside the mapping just made.
        unsafe {
            *(start as *mut u8).add(100) = 1;
            *(start as *mut u8).add(5 * 4096 + 7) = 1;
        }
        // A block not aligned to a page, read 8 pages a call.
        let answer = resident_pages(start + 16, start + 20 * 4096 + 1, &mut buffer);
        assert_eq!(answer, Some((2, 21)));
        assert_eq!(count_resident(&[1, 0, 1, 1, 0, 0, 0, 1, 1, 0xfe]), 5);
        sys::unmap(start as *mut u8, MIB as usize);
    }

    #[test]
    fn page_ends_round_up() {
        assert_eq!(page_end(4096, 1), 8192);
        assert_eq!(page_end(4096, 4096), 8192);
        assert_eq!(page_end(u64::MAX - 10, 4096), u64::MAX);
    }
}
