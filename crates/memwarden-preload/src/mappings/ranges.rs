//! The range table itself, and how much of a range the kernel holds resident.

use super::*;

/// One tracked range, or what is left of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mapping {
    pub(super) start: u64,
    pub(super) end: u64,
    /// Bytes charged for the whole range.
    pub(super) weight: u64,
    /// Of `weight`, the share whose pages were not resident at the last measure.
    pub(super) untouched: u64,
    /// `sys::cycles()` when it was tracked.
    pub(super) born: u64,
    /// Calling-context node charged.
    pub(super) node: u32,
    /// [`BLOCK`], [`MEASURED`], [`IN_PEAK`], [`WHOLE`].
    pub(super) flags: u32,
}

impl Mapping {
    /// A range just tracked, not measured yet.
    pub(super) fn new(
        start: u64,
        end: u64,
        weight: u64,
        node: u32,
        flags: u32,
        born: u64,
    ) -> Mapping {
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

    pub(super) fn is_large(&self) -> bool {
        self.end - self.start >= LARGE_BYTES as u64
    }

    /// Large and never measured: taken as written.
    pub(super) fn is_pending(&self) -> bool {
        self.is_large() && self.flags & MEASURED == 0
    }

    /// The share of `value` (spread evenly over this range) that falls on [from, to).
    pub(super) fn share(&self, value: u64, from: u64, to: u64) -> u64 {
        let length = self.end - self.start;
        (u128::from(value) * u128::from(to - from) / u128::from(length)) as u64
    }

    /// The part [from, to) of this range, with its shares of weight and untouched bytes.
    pub(super) fn part(&self, from: u64, to: u64) -> Mapping {
        Mapping {
            start: from,
            end: to,
            weight: self.share(self.weight, from, to),
            untouched: self.share(self.untouched, from, to),
            ..*self
        }
    }

    /// What is left of this range once `kept` (parts of it) are kept.
    pub(super) fn less(&self, kept: &[Mapping]) -> Released {
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
pub(super) struct Released {
    pub(super) node: u32,
    pub(super) flags: u32,
    pub(super) weight: u64,
    pub(super) untouched: u64,
}

/// The sorted, disjoint ranges: slots `head..tail` of an array of `capacity` slots.
pub(crate) struct Ranges {
    pub(super) slots: *mut Mapping,
    pub(super) capacity: usize,
    pub(super) head: usize,
    pub(super) tail: usize,
    /// [`RESIDENCY_BUFFER`] bytes for `mincore`, mapped at the first measure.
    pub(super) residency: *mut u8,
}

impl Ranges {
    pub(super) const EMPTY: Ranges = Ranges {
        slots: std::ptr::null_mut(),
        capacity: 0,
        head: 0,
        tail: 0,
        residency: std::ptr::null_mut(),
    };

    /// Maps the array on first use; false if the kernel refused the memory.
    pub(super) fn ensure_array(&mut self, capacity: usize) -> bool {
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
    pub(super) fn clear(&mut self) {
        self.head = self.capacity / 2;
        self.tail = self.head;
    }

    pub(super) fn array(&mut self) -> &mut [Mapping] {
        if self.slots.is_null() {
            return &mut [];
        }
        // SAFETY: `slots` is a private mapping of `capacity` slots made in `ensure_array`,
        // never unmapped, and reached only through `&mut self`; zeroed memory is a valid
        // `Mapping` (plain integers).
        unsafe { std::slice::from_raw_parts_mut(self.slots, self.capacity) }
    }

    pub(super) fn live(&mut self) -> &mut [Mapping] {
        let (head, tail) = (self.head, self.tail);
        &mut self.array()[head..tail]
    }

    /// Index (into `live`) of the first mapping that ends after `address`.
    pub(super) fn first_ending_after(&mut self, address: u64) -> usize {
        self.live().partition_point(|m| m.end <= address)
    }

    /// Whether any tracked mapping overlaps [start, end).
    pub(super) fn overlaps(&mut self, start: u64, end: u64) -> bool {
        let at = self.first_ending_after(start);
        self.live().get(at).is_some_and(|m| m.start < end)
    }

    /// Puts `mapping` at live index `at`, shifting the shorter side; false when full.
    pub(super) fn insert_at(&mut self, at: usize, mapping: Mapping) -> bool {
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
    pub(super) fn remove_at(&mut self, at: usize) {
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
    pub(super) fn insert(&mut self, mapping: Mapping) -> bool {
        let at = self.live().partition_point(|m| m.start < mapping.start);
        self.insert_at(at, mapping)
    }

    /// Releases every tracked byte in [start, end): `freed` hears what each range lost.
    /// Returns how many pieces could not be kept because the table was full (a release in
    /// the middle of a mapping needs one more slot; without it, the part after the hole is
    /// released too).
    pub(super) fn release(
        &mut self,
        start: u64,
        end: u64,
        freed: &mut impl FnMut(Released),
    ) -> u64 {
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
    pub(super) fn split_at(&mut self, address: u64) -> bool {
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
    pub(super) fn relocate(
        &mut self,
        start: u64,
        end: u64,
        to: u64,
        freed: &mut impl FnMut(Released),
    ) -> u64 {
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
    pub(super) fn remove_block(&mut self, start: u64) -> Option<Mapping> {
        let at = self.live().partition_point(|m| m.start < start);
        let mapping = *self.live().get(at)?;
        if mapping.start != start || mapping.flags & BLOCK == 0 {
            return None;
        }
        self.remove_at(at);
        Some(mapping)
    }

    /// Marks the ranges overlapping [start, end) as needing a new measure.
    pub(super) fn forget_residency(&mut self, start: u64, end: u64) {
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
    pub(super) fn measure(
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
    pub(super) fn has_untouched(&mut self, start: u64, end: u64) -> bool {
        let at = self.first_ending_after(start);
        self.live()[at..]
            .iter()
            .take_while(|m| m.start < end)
            .any(|m| m.untouched > 0)
    }

    /// Marks the pending ranges as taken as written by the peak snapshot just taken (and
    /// no other range).
    pub(super) fn mark_pending_in_peak(&mut self) {
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
pub(super) fn resident_pages(start: u64, end: u64, buffer: &mut [u8]) -> Option<(u64, u64)> {
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
pub(super) fn count_resident(answer: &[u8]) -> u64 {
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
