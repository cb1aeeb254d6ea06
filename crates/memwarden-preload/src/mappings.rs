//! Anonymous mappings, followed by address range.
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
//! `malloc`'s (`crate::on_alloc`, which files the charge in the address table under the
//! mapping's start); [`track`] moves it from there into this table at once.
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

use std::cell::UnsafeCell;
use std::sync::atomic::Ordering;

use libc::{c_int, c_void};
use memwarden_format::capture::field;

use crate::sys::{self, SpinGuard, SpinLock};
use crate::writer::CAPTURE;
use crate::ThreadState;

/// Page size on x86-64 Linux, the only target of this crate: the kernel rounds the lengths
/// of `munmap` and `mremap` up to it.
const PAGE_BYTES: u64 = 4096;
/// Most mappings tracked at once (32 bytes each; pages of the array count only once used).
const CAPACITY: usize = 1 << 16;

/// One tracked mapping, or what is left of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    /// Bytes charged for the whole range.
    weight: u64,
    /// Calling-context node charged.
    node: u32,
}

impl Mapping {
    /// The share of this mapping's weight that falls on [from, to), a part of its range.
    fn share(&self, from: u64, to: u64) -> u64 {
        let length = self.end - self.start;
        (u128::from(self.weight) * u128::from(to - from) / u128::from(length)) as u64
    }
}

/// The sorted, disjoint ranges: slots `head..tail` of an array of `capacity` slots.
struct Ranges {
    slots: *mut Mapping,
    capacity: usize,
    head: usize,
    tail: usize,
}

impl Ranges {
    const EMPTY: Ranges = Ranges {
        slots: std::ptr::null_mut(),
        capacity: 0,
        head: 0,
        tail: 0,
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

    /// Releases every tracked byte in [start, end): `freed(node, weight)` for each share
    /// released. Returns how many pieces could not be kept because the table was full (a
    /// release in the middle of a mapping needs one more slot; without it, the part after
    /// the hole is released too).
    fn release(&mut self, start: u64, end: u64, freed: &mut impl FnMut(u32, u64)) -> u64 {
        let mut dropped = 0;
        let mut at = self.first_ending_after(start);
        while let Some(&mapping) = self.live().get(at) {
            if mapping.start >= end {
                break;
            }
            let left = (mapping.start < start).then(|| Mapping {
                end: start,
                weight: mapping.share(mapping.start, start),
                ..mapping
            });
            let right = (mapping.end > end).then(|| Mapping {
                start: end,
                weight: mapping.share(end, mapping.end),
                ..mapping
            });
            let mut kept = 0;
            match (left, right) {
                (None, None) => self.remove_at(at),
                (Some(piece), None) | (None, Some(piece)) => {
                    self.live()[at] = piece;
                    kept = piece.weight;
                    at += 1;
                }
                (Some(left), Some(right)) => {
                    self.live()[at] = left;
                    kept = left.weight;
                    if self.insert_at(at + 1, right) {
                        kept += right.weight;
                    } else {
                        dropped += 1;
                    }
                    at += 2;
                }
            }
            freed(mapping.node, mapping.weight - kept);
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
        let left_weight = mapping.share(mapping.start, address);
        self.live()[at] = Mapping {
            end: address,
            weight: left_weight,
            ..mapping
        };
        let right = Mapping {
            start: address,
            weight: mapping.weight - left_weight,
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
    fn relocate(&mut self, start: u64, end: u64, to: u64, freed: &mut impl FnMut(u32, u64)) -> u64 {
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
}

/// The process's table of tracked mappings.
struct MappingTable {
    lock: SpinLock,
    ranges: UnsafeCell<Ranges>,
}

// SAFETY: `ranges` is only reached through a `Held`, which holds `lock` (or in the child
// after fork, when only one thread exists).
unsafe impl Sync for MappingTable {}

static MAPPINGS: MappingTable = MappingTable {
    lock: SpinLock::new(),
    ranges: UnsafeCell::new(Ranges::EMPTY),
};

/// The table, locked by the calling thread, which is marked busy meanwhile: a signal
/// handler's `mmap` or `malloc` on this thread then only forwards, and never waits for
/// this lock.
struct Held {
    guard: Option<SpinGuard<'static>>,
    thread: &'static ThreadState,
}

impl Held {
    /// Locks the table, unless this thread is already inside the profiler or profiling is
    /// off.
    fn take() -> Option<Held> {
        if crate::STATE.load(Ordering::Relaxed) != crate::ACTIVE {
            return None;
        }
        let thread = crate::thread();
        if thread.busy.get() {
            return None;
        }
        thread.busy.set(true);
        let mut held = Held {
            guard: Some(MAPPINGS.lock.lock()),
            thread,
        };
        if !held.ranges().ensure_array(CAPACITY) {
            return None;
        }
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

    /// Releases what is tracked in [start, end) from the capture's live bytes.
    fn release(&mut self, start: u64, end: u64) {
        let mut first = true;
        let dropped = self.ranges().release(start, end, &mut |node, weight| {
            if first {
                // A release seen after the interpreter began to shut down takes the exit
                // snapshot first, as `free` does.
                crate::shutting_down();
                first = false;
            }
            CAPTURE.freed(node, weight)
        });
        count_dropped(dropped);
    }

    /// Moves what is tracked in [start, end) to `to`.
    fn relocate(&mut self, start: u64, end: u64, to: u64) {
        let dropped = self.ranges().relocate(start, end, to, &mut |node, weight| {
            CAPTURE.freed(node, weight)
        });
        count_dropped(dropped);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Unlock first: a signal arriving in between must find the lock free.
        self.guard = None;
        self.thread.busy.set(false);
    }
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

/// Charges a new mapping of `length` bytes at `start`, if the sampler picks it. The sampler
/// files its charge in the address table under `start`, as for any allocation; it moves
/// from there into this table.
fn track(start: usize, length: usize) {
    crate::on_alloc(start, length);
    let Some(entry) = crate::on_free(start) else {
        return;
    };
    let mapping = Mapping {
        start: start as u64,
        end: start as u64 + length as u64,
        weight: entry.weight,
        node: entry.node,
    };
    let Some(mut held) = Held::take() else {
        CAPTURE.freed(entry.node, entry.weight);
        return;
    };
    // Whatever is still tracked there was unmapped behind our back (a raw system call, or
    // a signal handler's `munmap` while this thread was busy): it is gone.
    held.release(mapping.start, mapping.end);
    if !held.ranges().insert(mapping) {
        CAPTURE.freed(entry.node, entry.weight);
        count_dropped(1);
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
    let replaced = match flags & libc::MAP_FIXED != 0 {
        true => Held::take_if_tracked(&[(start, end)]),
        false => None,
    };
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
    let held = Held::take_if_tracked(&[(old_start, old_end), destination]);
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

/// Forgets every tracked mapping and any holder of the lock: for the child after `fork`,
/// which starts a capture of its own and where only the forking thread exists.
pub fn forget_all() {
    MAPPINGS.lock.reset();
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
        Mapping {
            start: start_mib * MIB,
            end: end_mib * MIB,
            weight: (end_mib - start_mib) * MIB,
            node,
        }
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
        let dropped = ranges.release(start_mib * MIB, end_mib * MIB, &mut |node, weight| {
            freed.push((node, weight / MIB))
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
        assert!(table.insert(Mapping {
            start: 0,
            end: 3 * PAGE_BYTES,
            weight,
            node: 7,
        }));
        let mut freed = 0;
        table.release(PAGE_BYTES, 2 * PAGE_BYTES, &mut |_, w| freed += w);
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
        let dropped = table.release(40 * MIB, 60 * MIB, &mut |node, weight| {
            freed.push((node, weight / MIB))
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
        let mut nothing = |_: u32, _: u64| panic!("nothing is released");
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

    #[test]
    fn page_ends_round_up() {
        assert_eq!(page_end(4096, 1), 8192);
        assert_eq!(page_end(4096, 4096), 8192);
        assert_eq!(page_end(u64::MAX - 10, 4096), u64::MAX);
    }
}
