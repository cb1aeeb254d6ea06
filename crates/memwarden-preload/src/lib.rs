//! memwarden's allocation profiler, loaded into profiled processes with `LD_PRELOAD`.
//!
//! `memwarden run --profile` puts this library in the command's environment, so the
//! command and every process it starts (exec'd children inherit the variable; a forked
//! child starts a capture of its own from an atfork handler) load it first. It interposes the
//! malloc family and anonymous `mmap`/`munmap`/`mremap` and forwards every call to glibc.
//! It also interposes `dlsym` on x86-64 (`dlsym.rs`), so that glibc's own `malloc` looked up
//! in libc's handle (`ctypes.CDLL("libc.so.6").malloc`) comes back as our hook.
//!
//! - **Sampled mode** (default): each allocated byte is a sample point with probability
//!   1/R (`MEMWARDEN_SAMPLE_BYTES`, R = 512 KiB by default), drawn as geometric intervals
//!   from a per-thread countdown, so the fast path touches only thread-local state. Each
//!   thread draws from a random stream of its own, seeded from the kernel's random source
//!   (see [`seed_thread`]), so threads started together are sampled independently. A
//!   sampled allocation of `s` bytes is attributed `s / (1 - e^(-s/R))` bytes, which keeps
//!   totals unbiased and attributes buffers larger than R almost exactly.
//! - **Exact mode** (`MEMWARDEN_PROFILE_MODE=exact`): every allocation is recorded.
//!
//! A recorded allocation is charged to the allocating thread's Python stack, read in
//! place ([`python`]); a thread without Python frames is charged to the stack of the thread
//! that created it, plus its name. Results go to a capture file the runner reads after the
//! process ends (`memwarden_format::capture`), created at the first recorded allocation
//! (a program that records nothing leaves none) and updated in place so that a killed
//! process leaves everything up to its last instant. As it ends, each process also writes
//! its own peak RSS into the run's tree counter ([`tree::image_ends`]).
//!
//! House rules for this crate: nothing here allocates through the hooked allocator (memory
//! comes from `mmap` system calls), no lock is shared with the target, no system call sits
//! on the allocation fast path, and no Rust panic can cross the C boundary (every exported
//! function is `extern "C"`, which aborts instead of unwinding; the code is written not to
//! panic). Without `MEMWARDEN_CAPTURE_DIR` the library only forwards.
// An allocator interposer is unsafe by nature; each block says why it holds. The exported
// hooks that take the caller's pointers are `unsafe fn`s (`hooks.rs`), and in them too each
// unsafe operation sits in a block of its own that says why it holds.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

mod api;
mod dlsym;
mod hooks;
mod malloc_info;
mod mappings;
pub mod python;
mod sys;
mod table;
mod threads;
mod tree;
mod writer;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use memwarden_format::capture::{self as fmt, kind};

use table::{AddressTable, Entry};
use writer::{Settings, CAPTURE};

const INACTIVE: u8 = 0;
const ACTIVE: u8 = 1;

static STATE: AtomicU8 = AtomicU8::new(INACTIVE);
static EXACT: AtomicBool = AtomicBool::new(false);
static SAMPLE_BYTES: AtomicU64 = AtomicU64::new(512 << 10);
static IS_PYTHON: AtomicBool = AtomicBool::new(false);
/// Length of a pymalloc arena of the running interpreter, set at start when its frames can
/// be read; 0 otherwise (no mapping is then taken for an arena).
static ARENA_BYTES: AtomicU64 = AtomicU64::new(0);
/// Bumped in every forked child, so threads' cached node ids from the parent are dropped.
static GENERATION: AtomicU32 = AtomicU32::new(0);
/// This process's seed for its threads' random streams, from `getrandom`: drawn at start,
/// before ACTIVE is published, and drawn again in a forked child (see [`seed_process`]).
static PROCESS_SEED: AtomicU64 = AtomicU64::new(0);
/// Threads given a stream so far: each thread's number, mixed with the process seed, seeds
/// its stream. Touched once per thread, on its first sampled-mode record, never on the
/// fast path.
static THREADS_SEEDED: AtomicU64 = AtomicU64::new(0);

/// The capture directory, copied at start (the program may change its environment).
struct Directory {
    bytes: std::cell::UnsafeCell<[u8; 4096]>,
    len: AtomicU64,
}
// SAFETY: written once in the constructor before any other thread can read it.
unsafe impl Sync for Directory {}
static DIRECTORY: Directory = Directory {
    bytes: std::cell::UnsafeCell::new([0; 4096]),
    len: AtomicU64::new(0),
};

fn directory() -> &'static [u8] {
    let len = DIRECTORY.len.load(Ordering::Acquire) as usize;
    // SAFETY: the buffer is only written before `len` is published.
    unsafe { &(&*DIRECTORY.bytes.get())[..len] }
}

/// The table of tracked allocations, created at start.
struct Tracked(std::cell::UnsafeCell<Option<AddressTable>>);
// SAFETY: set once in the constructor, before ACTIVE is published.
unsafe impl Sync for Tracked {}
static TRACKED: Tracked = Tracked(std::cell::UnsafeCell::new(None));

fn tracked() -> Option<&'static AddressTable> {
    // SAFETY: only read after STATE is ACTIVE, which is published after the write.
    unsafe { (*TRACKED.0.get()).as_ref() }
}

/// Per-thread state, in initial-exec TLS defined in `thread_state.c` (whose struct this
/// mirrors: `Cell<T>` has `T`'s layout). Never touched through Rust's own thread locals,
/// which could call `__tls_get_addr`, and so `malloc`, from inside `free`.
#[repr(C)]
struct ThreadState {
    /// Bytes left until the next sample point.
    countdown: Cell<i64>,
    /// splitmix64 state (see [`next_random`]); 0 until the thread's first sampled-mode record.
    rng: Cell<u64>,
    /// Inside our own code: a nested call (a signal handler, our own allocation) forwards.
    busy: Cell<bool>,
    /// Node of the stack that created this thread (see `threads`).
    inherited: Cell<u32>,
    generation: Cell<u32>,
    /// The frame naming this thread, refreshed now and then.
    name_frame: Cell<u32>,
    name_age: Cell<u32>,
    /// The last Python stack seen.
    last_stack: python::LastStack,
}

extern "C" {
    fn memwarden_thread_state() -> *mut ThreadState;
}

/// The calling thread's state.
fn thread() -> &'static ThreadState {
    // SAFETY: the C side returns the address of this thread's own initial-exec variable,
    // valid for the thread's whole life; `ThreadState` is not `Sync`, so the reference
    // cannot reach another thread.
    unsafe { &*memwarden_thread_state() }
}

/// splitmix64's increment: 2^64 / φ, odd, so the state visits every u64 once per period.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function (Stafford's "variant 13" of MurmurHash3's finaliser): a
/// bijection on u64 in which every input bit flips every output bit with probability close
/// to 1/2, so inputs that differ by little give unrelated outputs.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Draws this process's seed: `getrandom` when the kernel gives it, else the bytes the
/// kernel gave the program at exec mixed with the process id and the clock (a forked child
/// shares its parent's exec bytes, never its process id). Called single-threaded, before
/// ACTIVE is published: at start and in a forked child.
fn seed_process() {
    let seed = sys::getrandom_u64().unwrap_or_else(|| {
        mix64(sys::exec_random() ^ sys::now_ns() ^ u64::from(std::process::id()).rotate_left(32))
    });
    PROCESS_SEED.store(seed, Ordering::Relaxed);
}

/// Gives the calling thread a stream of its own, starting at the mix of the process seed
/// and the thread's number (the seed's own splitmix64 sequence), so that two threads'
/// streams start at unrelated points whatever their addresses, start times or order. It
/// replaces a seed of (thread-state address XOR wall clock XOR a constant), which threads
/// started close together shared in most bits: they drew nearly the same first interval
/// and were sampled together (all or none of 1,000 threads each allocating 1 MB).
fn seed_thread(thread: &ThreadState) {
    let number = THREADS_SEEDED.fetch_add(1, Ordering::Relaxed);
    let state = mix64(
        PROCESS_SEED
            .load(Ordering::Relaxed)
            .wrapping_add(number.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)),
    );
    // 0 marks a thread not yet seeded (mix64 gives it for one input in 2^64).
    thread
        .rng
        .set(if state == 0 { GOLDEN_GAMMA } else { state });
}

/// The thread's next 64 random bits. The stream is splitmix64 (Steele, Lea & Flood,
/// "Fast splittable pseudorandom number generators", 2014): its whole state is one u64,
/// all the room the thread state has (xoshiro256** needs four), and it passes BigCrush,
/// where the xorshift64 used before fails some tests and, worse here, makes each output a
/// linear (over GF(2)) function of the seed, so related seeds gave related intervals.
/// Threads' streams are stretches of one sequence of period 2^64 starting at independent
/// random points: two of T threads drawing D values each overlap with probability about
/// T²·D / 2^64, nil in practice.
fn next_random(thread: &ThreadState) -> u64 {
    let mut state = thread.rng.get().wrapping_add(GOLDEN_GAMMA);
    if state == 0 {
        // 0 marks a thread not yet seeded: step over it (once per 2^64 draws).
        state = GOLDEN_GAMMA;
    }
    thread.rng.set(state);
    mix64(state)
}

/// A geometric interval with mean `SAMPLE_BYTES`.
fn next_interval(thread: &ThreadState) -> i64 {
    let mean = SAMPLE_BYTES.load(Ordering::Relaxed) as f64;
    let uniform = ((next_random(thread) >> 11) + 1) as f64 / (1u64 << 53) as f64;
    (-uniform.ln() * mean).max(1.0) as i64
}

/// What an allocation is, which says where its charge is filed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A malloc block: in the address table.
    Block,
    /// A malloc block of [`mappings::LARGE_BYTES`] or more: in the address table, and in
    /// the table of ranges, which measures how much of it was touched.
    LargeBlock,
    /// An anonymous mapping (or the pages an `mremap` added): in the table of ranges.
    Mapping,
    /// An anonymous, writable mapping exactly as long as one of pymalloc's arenas
    /// ([`arena_kind`]): a [`Kind::Mapping`] charged under the small-objects frame.
    Arena,
}

/// The kind of a new anonymous mapping of `length` bytes that can be written: an
/// [`Kind::Arena`] when it has the length of the running interpreter's pymalloc arenas.
/// Memory that CPython's small-object allocator takes comes this way, an arena at a time;
/// another library's mapping of exactly that length would be taken for one.
#[inline]
fn arena_kind(length: usize, writable: bool) -> Kind {
    let arena = ARENA_BYTES.load(Ordering::Relaxed);
    match writable && arena != 0 && length as u64 == arena {
        true => Kind::Arena,
        false => Kind::Mapping,
    }
}

/// Called after every successful allocation of `size` bytes at `address`.
#[inline]
fn on_alloc(address: usize, size: usize, kind: Kind) {
    if STATE.load(Ordering::Relaxed) != ACTIVE || size == 0 {
        return;
    }
    let thread = thread();
    if thread.busy.get() {
        return;
    }
    let exact = EXACT.load(Ordering::Relaxed);
    if !exact {
        let left = thread.countdown.get() - size as i64;
        thread.countdown.set(left);
        if left > 0 {
            return;
        }
    }
    thread.busy.set(true);
    record_alloc(thread, address, size, exact, kind);
    thread.busy.set(false);
}

#[cold]
fn record_alloc(thread: &ThreadState, address: usize, size: usize, exact: bool, kind: Kind) {
    let weight = if exact {
        size as u64
    } else {
        if thread.rng.get() == 0 {
            // A thread's first sampled-mode record (its countdown started at 0, so this is
            // its first allocation): seed, draw the first interval from the start of this
            // allocation, and only then decide.
            seed_thread(thread);
            let left = next_interval(thread) - size as i64;
            thread.countdown.set(left);
            if left > 0 {
                return;
            }
        }
        while thread.countdown.get() <= 0 {
            thread
                .countdown
                .set(thread.countdown.get() + next_interval(thread));
        }
        let mean = SAMPLE_BYTES.load(Ordering::Relaxed) as f64;
        let probability = 1.0 - (-(size as f64) / mean).exp();
        (size as f64 / probability.max(f64::MIN_POSITIVE)) as u64
    };
    if !capture_open() {
        return;
    }
    let mut node = current_node(thread);
    if kind == Kind::Arena {
        node = small_objects_node(node);
    }
    let Some(table) = tracked() else { return };
    // A range goes into the table of ranges before it is counted, so that a snapshot taken
    // as it is counted finds its pages untouched.
    if matches!(kind, Kind::Mapping | Kind::Arena) {
        if mappings::track_mapping(address, size, node, weight) {
            CAPTURE.allocated(node, weight);
        } else {
            CAPTURE
                .header(memwarden_format::capture::field::DROPPED)
                .fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let ranged = kind == Kind::LargeBlock && mappings::track_block(address, size, node, weight);
    if table.insert(
        address as u64,
        Entry {
            node,
            weight,
            ranged,
        },
    ) {
        CAPTURE.allocated(node, weight);
    } else {
        if ranged {
            mappings::forget_block(address);
        }
        CAPTURE
            .header(memwarden_format::capture::field::DROPPED)
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// The node an allocation by this thread is charged to.
fn current_node(thread: &ThreadState) -> u32 {
    let generation = GENERATION.load(Ordering::Relaxed);
    if thread.generation.get() != generation {
        thread.generation.set(generation);
        thread.inherited.set(0);
        thread.name_frame.set(u32::MAX);
        thread.last_stack.hash.set(0);
    }
    if shutting_down() {
        return pseudo_node(Pseudo::Shutdown);
    }
    if IS_PYTHON.load(Ordering::Relaxed) {
        if let Some(node) = python::current_node(&thread.last_stack) {
            return node;
        }
        if thread.inherited.get() == 0 {
            return match python::initialized() {
                true => pseudo_node(Pseudo::NoPythonFrames),
                false => pseudo_node(Pseudo::BeforePython),
            };
        }
    } else if thread.inherited.get() == 0 {
        return pseudo_node(Pseudo::Native);
    }
    let age = thread.name_age.get();
    if thread.name_frame.get() == u32::MAX || age >= 64 {
        thread
            .name_frame
            .set(threads::name_frame().unwrap_or(u32::MAX));
        thread.name_age.set(0);
    } else {
        thread.name_age.set(age + 1);
    }
    match thread.name_frame.get() {
        u32::MAX => thread.inherited.get(),
        frame => CAPTURE.node(thread.inherited.get(), frame),
    }
}

/// Cached frame id of the small-objects frame, as `generation << 32 | frame + 1`.
static SMALL_OBJECTS_FRAME: AtomicU64 = AtomicU64::new(0);

/// The stack `node` with the small-objects frame inside it, for a pymalloc arena mapped
/// while the interpreter runs (initialised; its frames are readable, or no arena length
/// would be known): `[small objects]` then the line whose object needed the arena. Before
/// the interpreter is initialised `node` is kept. The frame is interned once per capture
/// (per generation); looking up the node takes no lock once it exists.
fn small_objects_node(node: u32) -> u32 {
    if !python::initialized() {
        return node;
    }
    let generation = u64::from(GENERATION.load(Ordering::Relaxed));
    let cached = SMALL_OBJECTS_FRAME.load(Ordering::Relaxed);
    let frame = if cached != 0 && cached >> 32 == generation {
        (cached as u32).wrapping_sub(1)
    } else {
        let Some(frame) = CAPTURE.frame(
            fmt::SMALL_OBJECTS_FILE.as_bytes(),
            fmt::SMALL_OBJECTS_FUNCTION.as_bytes(),
            0,
            kind::SMALL_OBJECTS,
        ) else {
            return node;
        };
        SMALL_OBJECTS_FRAME.store((generation << 32) | u64::from(frame + 1), Ordering::Relaxed);
        frame
    };
    CAPTURE.node(node, frame)
}

/// Stacks for memory with no Python stack to charge.
#[derive(Clone, Copy)]
enum Pseudo {
    /// A process that does not run Python (or whose frames cannot be read).
    Native,
    /// A Python process before its interpreter is initialised.
    BeforePython,
    /// A Python process, on a thread with neither Python frames nor a creator's stack.
    NoPythonFrames,
    /// Module teardown and interpreter finalisation.
    Shutdown,
}

/// Cached node of each [`Pseudo`], as `generation << 32 | node + 1`.
static PSEUDO_NODES: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// A one-frame stack named after the executable.
fn pseudo_node(which: Pseudo) -> u32 {
    let generation = u64::from(GENERATION.load(Ordering::Relaxed));
    let cached = PSEUDO_NODES[which as usize].load(Ordering::Relaxed);
    if cached != 0 && cached >> 32 == generation {
        return (cached as u32).wrapping_sub(1);
    }
    let function: &[u8] = match which {
        Pseudo::Native => b"[no Python frames]",
        Pseudo::BeforePython => b"[before Python started]",
        Pseudo::NoPythonFrames => b"[thread without Python frames]",
        Pseudo::Shutdown => b"[interpreter shutdown]",
    };
    let mut buffer = [0u8; 512];
    let exe = sys::executable(&mut buffer);
    let node = match CAPTURE.frame(exe, function, 0, kind::NATIVE) {
        Some(frame) => CAPTURE.node(0, frame),
        None => 0,
    };
    PSEUDO_NODES[which as usize].store((generation << 32) | u64::from(node + 1), Ordering::Relaxed);
    node
}

/// Called before every release of a possibly tracked block; returns what it was charged.
#[inline]
fn on_free(address: usize) -> Option<Entry> {
    if STATE.load(Ordering::Relaxed) != ACTIVE || address == 0 {
        return None;
    }
    if thread().busy.get() {
        return None;
    }
    let entry = tracked()?.remove(address as u64)?;
    Some(entry)
}

/// Whether the interpreter has begun to shut down.
fn finalizing() -> bool {
    IS_PYTHON.load(Ordering::Relaxed) && python::finalizing()
}

/// Whether the interpreter has begun to shut down; the first time it is seen, the exit
/// snapshot is taken, before anything the program still held is released. Checked on
/// every recorded allocation and every release of a tracked block.
fn shutting_down() -> bool {
    let finalizing = finalizing();
    if finalizing {
        CAPTURE.exit_snapshot();
    }
    finalizing
}

/// Before tracked memory is released: the exit snapshot if the interpreter began to shut
/// down, else a peak snapshot if the committed heap may have passed the last one (it is at
/// a local high now), as it may when what is released held pages found untouched before
/// (`written_since`: they may have been written since, unseen). `held`: the table of
/// ranges, when the caller holds its lock.
fn before_release(held: Option<&mut mappings::Ranges>, written_since: bool) {
    if finalizing() {
        CAPTURE.exit_snapshot_in(held);
        return;
    }
    let live = CAPTURE
        .header(memwarden_format::capture::field::LIVE_BYTES)
        .load(Ordering::Relaxed);
    if CAPTURE.peak_due(live) || (written_since && CAPTURE.peak_possible(live)) {
        mappings::with_ranges(held, |ranges| CAPTURE.peak_snapshot(ranges));
    }
}

/// Applies a release, found by [`on_free`], of the block at `address`.
fn apply_free(address: usize, entry: Entry) {
    before_release(None, entry.ranged && mappings::block_has_untouched(address));
    CAPTURE.freed(entry.node, entry.weight);
    if entry.ranged {
        mappings::forget_block(address);
    }
}

/// Puts back an entry whose release failed (a `realloc` or `mremap` that returned an error).
fn restore(address: usize, entry: Entry) {
    if let Some(table) = tracked() {
        table.insert(address as u64, entry);
    }
}

fn settings() -> Settings {
    Settings {
        exact: EXACT.load(Ordering::Relaxed),
        sample_bytes: SAMPLE_BYTES.load(Ordering::Relaxed),
        start_ns: IMAGE_START_NS.load(Ordering::Relaxed),
    }
}

/// When this image started, or the process was forked (ns since the epoch).
static IMAGE_START_NS: AtomicU64 = AtomicU64::new(0);

/// Where this image's capture stands: not opened yet (nothing recorded so far), open, or
/// refused (the process then runs unprofiled).
static CAPTURE_STATE: AtomicU8 = AtomicU8::new(PENDING);
const PENDING: u8 = 0;
const OPEN: u8 = 1;
const REFUSED: u8 = 2;
/// Held while the capture is being opened.
static OPENING: sys::SpinLock = sys::SpinLock::new();

/// Whether profiling is on in this process.
fn active() -> bool {
    STATE.load(Ordering::Acquire) == ACTIVE
}

/// Whether the capture is open, opening it at the first call: captures are created lazily,
/// by the first allocation recorded, so a process that records none leaves no file.
#[inline]
fn capture_open() -> bool {
    CAPTURE_STATE.load(Ordering::Acquire) == OPEN || open_capture()
}

#[cold]
fn open_capture() -> bool {
    let _guard = OPENING.lock();
    match CAPTURE_STATE.load(Ordering::Acquire) {
        OPEN => return true,
        REFUSED => return false,
        _ => {}
    }
    if !CAPTURE.open(directory(), &settings()) {
        CAPTURE_STATE.store(REFUSED, Ordering::Release);
        return false;
    }
    python::write_header();
    tree::begin_capture();
    CAPTURE_STATE.store(OPEN, Ordering::Release);
    true
}

extern "C" fn start() {
    threads::install(false);
    let Some(dir) = sys::getenv(c"MEMWARDEN_CAPTURE_DIR") else {
        return;
    };
    if dir.is_empty() || dir.len() >= 4096 {
        return;
    }
    // SAFETY: single-threaded constructor; nothing reads the buffer before `len` is set.
    unsafe { (&mut *DIRECTORY.bytes.get())[..dir.len()].copy_from_slice(dir) };
    DIRECTORY.len.store(dir.len() as u64, Ordering::Release);
    if sys::getenv(c"MEMWARDEN_PROFILE_MODE") == Some(b"exact") {
        EXACT.store(true, Ordering::Relaxed);
    }
    if let Some(bytes) = sys::getenv(c"MEMWARDEN_SAMPLE_BYTES").and_then(sys::parse_u64) {
        SAMPLE_BYTES.store(bytes.clamp(1, 1 << 40), Ordering::Relaxed);
    }
    let slots = if EXACT.load(Ordering::Relaxed) {
        1 << 15
    } else {
        1 << 11
    };
    let Some(table) = AddressTable::new(slots) else {
        return;
    };
    // SAFETY: single-threaded constructor, before ACTIVE is published.
    unsafe { *TRACKED.0.get() = Some(table) };
    IMAGE_START_NS.store(sys::now_ns(), Ordering::Relaxed);
    tree::attach(directory());
    // An interpreter whose frames cannot be read is profiled like a native process.
    IS_PYTHON.store(python::detect() && python::readable(), Ordering::Relaxed);
    if IS_PYTHON.load(Ordering::Relaxed) {
        ARENA_BYTES.store(python::arena_bytes(), Ordering::Relaxed);
    }
    malloc_info::resolve();
    seed_process();
    threads::install(true);
    STATE.store(ACTIVE, Ordering::Release);
}

extern "C" fn stop() {
    if STATE.load(Ordering::Acquire) == ACTIVE {
        CAPTURE.close();
    }
    tree::image_ends();
}

/// In the child after `fork`: only the forking thread exists; it starts a capture of its
/// own.
extern "C" fn forked_child() {
    if STATE.load(Ordering::Acquire) != ACTIVE {
        return;
    }
    STATE.store(INACTIVE, Ordering::Release);
    tree::forked();
    GENERATION.fetch_add(1, Ordering::Relaxed);
    if let Some(table) = tracked() {
        table.reset_locks();
        table.clear();
    }
    mappings::forget_all();
    // The forking thread's stream and countdown are copies of its parent's: without fresh
    // ones both processes would sample the same allocations from here on. A fresh interval
    // drawn at the fork, a moment that does not depend on the allocations to come, keeps
    // the sampling unbiased.
    seed_process();
    if !EXACT.load(Ordering::Relaxed) {
        let thread = thread();
        seed_thread(thread);
        thread.countdown.set(next_interval(thread));
    }
    // The parent's capture is the parent's; the child opens its own at its first record.
    CAPTURE.forget_inherited();
    OPENING.reset();
    if CAPTURE_STATE.load(Ordering::Relaxed) != REFUSED {
        CAPTURE_STATE.store(PENDING, Ordering::Release);
    }
    IMAGE_START_NS.store(sys::now_ns(), Ordering::Relaxed);
    STATE.store(ACTIVE, Ordering::Release);
}

#[used]
#[link_section = ".init_array"]
static START: extern "C" fn() = start;

#[used]
#[link_section = ".fini_array"]
static STOP: extern "C" fn() = stop;
