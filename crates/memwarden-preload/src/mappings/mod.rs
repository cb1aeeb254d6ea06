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

mod ranges;
pub(crate) use ranges::Ranges;
use ranges::*;

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
fn track(start: usize, length: usize, kind: crate::Kind) {
    crate::on_alloc(start, length, kind);
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
        let kind = crate::arena_kind(length, protection & libc::PROT_WRITE != 0);
        track(mapped as usize, length, kind);
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
        track(
            moved as usize + old_size,
            new_size - old_size,
            crate::Kind::Mapping,
        );
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
mod tests;
