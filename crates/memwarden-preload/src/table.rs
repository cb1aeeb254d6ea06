//! The table of tracked allocations: address → (stack node, bytes attributed).
//!
//! Every `free` in the process asks this table whether its address was tracked, so the
//! miss must be cheap and lock-free: readers probe with plain atomic loads and only take a
//! shard's lock on a hit. Shards use linear probing with backward-shift deletion; a shift can
//! move an entry past a concurrent reader, so each shard has a sequence number (odd while
//! entries move) and a reader that saw it change probes again.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::{self, SpinLock};

const SHARDS: usize = 64;
/// Bits of a value holding the attributed bytes; the node id (below 2^18) sits above them.
const WEIGHT_BITS: u32 = 44;
const WEIGHT_MASK: u64 = (1 << WEIGHT_BITS) - 1;
/// The value's top bit: the block is also followed by range (`crate::mappings`).
const RANGED: u64 = 1 << 63;
const NODE_MASK: u64 = (1 << (63 - WEIGHT_BITS)) - 1;

struct Slot {
    address: AtomicU64,
    value: AtomicU64,
}

struct Shard {
    lock: SpinLock,
    sequence: AtomicU64,
    used: AtomicU64,
}

/// The table; lives in memory from [`sys::map_anonymous`].
pub struct AddressTable {
    slots: *mut Slot,
    slots_per_shard: usize,
    shards: [Shard; SHARDS],
}

// SAFETY: all shared state is atomics or guarded by the shard locks.
unsafe impl Sync for AddressTable {}

/// What a tracked allocation was attributed.
#[derive(Clone, Copy)]
pub struct Entry {
    /// Calling-context node.
    pub node: u32,
    /// Bytes attributed (the sample's weight, or the size in exact mode).
    pub weight: u64,
    /// A large malloc block, also in the table of ranges, whose residency is measured.
    pub ranged: bool,
}

fn hash(address: u64) -> u64 {
    (address >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl AddressTable {
    /// A table with `slots_per_shard` (a power of two) slots in each of its shards; `None`
    /// if the kernel refused the memory.
    pub fn new(slots_per_shard: usize) -> Option<AddressTable> {
        let bytes = SHARDS * slots_per_shard * std::mem::size_of::<Slot>();
        let slots = sys::map_anonymous(bytes).cast::<Slot>();
        if slots.is_null() {
            return None;
        }
        Some(AddressTable {
            slots,
            slots_per_shard,
            shards: std::array::from_fn(|_| Shard {
                lock: SpinLock::new(),
                sequence: AtomicU64::new(0),
                used: AtomicU64::new(0),
            }),
        })
    }

    fn place(&self, address: u64) -> (usize, usize) {
        let h = hash(address);
        let shard = (h >> 58) as usize % SHARDS;
        (shard, (h as usize) & (self.slots_per_shard - 1))
    }

    fn slot(&self, shard: usize, index: usize) -> &Slot {
        // SAFETY: `shard < SHARDS` and `index` is masked below `slots_per_shard`, so the slot
        // lies inside the mapping made in `new`, which is never unmapped while in use.
        unsafe {
            &*self
                .slots
                .add(shard * self.slots_per_shard + (index & (self.slots_per_shard - 1)))
        }
    }

    /// Records a tracked allocation; false when the shard is too full (the caller counts it
    /// as dropped).
    pub fn insert(&self, address: u64, entry: Entry) -> bool {
        let (shard, mut index) = self.place(address);
        let state = &self.shards[shard];
        let _guard = state.lock.lock();
        if state.used.load(Ordering::Relaxed) as usize * 4 >= self.slots_per_shard * 3 {
            return false;
        }
        loop {
            let slot = self.slot(shard, index);
            let current = slot.address.load(Ordering::Relaxed);
            if current == 0 || current == address {
                let ranged = if entry.ranged { RANGED } else { 0 };
                slot.value.store(
                    ranged | (u64::from(entry.node) << WEIGHT_BITS) | entry.weight.min(WEIGHT_MASK),
                    Ordering::Relaxed,
                );
                slot.address.store(address, Ordering::Release);
                if current == 0 {
                    state.used.fetch_add(1, Ordering::Relaxed);
                }
                return true;
            }
            index = (index + 1) & (self.slots_per_shard - 1);
        }
    }

    /// Lock-free: whether `address` may be tracked (a miss is certain, a hit is checked
    /// again under the lock by [`AddressTable::remove`]).
    fn probe(&self, address: u64) -> bool {
        let (shard, start) = self.place(address);
        let state = &self.shards[shard];
        loop {
            let before = state.sequence.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut index = start;
            let mut found = false;
            for _ in 0..self.slots_per_shard {
                let current = self.slot(shard, index).address.load(Ordering::Acquire);
                if current == address {
                    found = true;
                    break;
                }
                if current == 0 {
                    break;
                }
                index = (index + 1) & (self.slots_per_shard - 1);
            }
            if found || state.sequence.load(Ordering::Acquire) == before {
                return found;
            }
        }
    }

    /// Forgets `address` and returns what it was attributed, if it was tracked.
    pub fn remove(&self, address: u64) -> Option<Entry> {
        if address == 0 || !self.probe(address) {
            return None;
        }
        let (shard, mut index) = self.place(address);
        let state = &self.shards[shard];
        let _guard = state.lock.lock();
        loop {
            let current = self.slot(shard, index).address.load(Ordering::Relaxed);
            if current == 0 {
                return None;
            }
            if current == address {
                break;
            }
            index = (index + 1) & (self.slots_per_shard - 1);
        }
        let value = self.slot(shard, index).value.load(Ordering::Relaxed);
        state.sequence.fetch_add(1, Ordering::AcqRel);
        // Backward-shift deletion: pull later entries of the cluster into the hole.
        let mask = self.slots_per_shard - 1;
        let mut hole = index;
        let mut next = (hole + 1) & mask;
        loop {
            let slot = self.slot(shard, next);
            let moving = slot.address.load(Ordering::Relaxed);
            if moving == 0 {
                break;
            }
            let home = self.place(moving).1;
            let distance_to_hole = hole.wrapping_sub(home) & mask;
            let distance_to_next = next.wrapping_sub(home) & mask;
            if distance_to_hole < distance_to_next {
                let target = self.slot(shard, hole);
                target
                    .value
                    .store(slot.value.load(Ordering::Relaxed), Ordering::Relaxed);
                target.address.store(moving, Ordering::Release);
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.slot(shard, hole).address.store(0, Ordering::Release);
        state.used.fetch_sub(1, Ordering::Relaxed);
        state.sequence.fetch_add(1, Ordering::AcqRel);
        Some(Entry {
            node: ((value >> WEIGHT_BITS) & NODE_MASK) as u32,
            weight: value & WEIGHT_MASK,
            ranged: value & RANGED != 0,
        })
    }

    /// Forgets every lock holder: for the child after `fork`.
    pub fn reset_locks(&self) {
        for shard in &self.shards {
            shard.lock.reset();
            let sequence = shard.sequence.load(Ordering::Relaxed);
            shard.sequence.store(sequence & !1, Ordering::Relaxed);
        }
    }

    /// Forgets every entry (the child after `fork` starts its own capture).
    pub fn clear(&self) {
        let bytes = SHARDS * self.slots_per_shard * std::mem::size_of::<Slot>();
        sys::zero_pages(self.slots.cast::<u8>(), bytes);
        for shard in &self.shards {
            shard.used.store(0, Ordering::Relaxed);
        }
    }
}
