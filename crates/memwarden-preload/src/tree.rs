//! The run's tree counter (format: `memwarden_format::tree`): the heap of every profiled
//! process of the run together, and its high-water mark, in one page shared by all of them.
//! The heap is live bytes less reserved ones: the pages of large ranges found untouched
//! when last measured ([`reserved_changed`]). A range not measured yet counts as written: a
//! process measures only at its own snapshots, which may come long after the pages were
//! written (a worker that fills a buffer and then waits), and the tree's peak cannot wait
//! for it; a range found untouched later lowers a peak it was counted in
//! ([`pending_found_untouched`]). The peak of live bytes alone is kept beside it.
//!
//! Each image also writes its own high-water mark as it ends ([`record_exit`]).
//!
//! The runner creates the file in the capture directory; [`attach`] maps it at start. A
//! child forked without `exec` inherits the mapping (`MAP_SHARED` survives `fork`), so it
//! counts into the same page; an `exec`'d image maps it again in its own constructor.
//!
//! Only the recorded path comes here (sampled allocations and releases of recorded blocks,
//! through `Writer::allocated` and `Writer::freed`): one atomic add on the shared page, and
//! a compare-and-swap loop on the peak only while the tree's heap is at a new high. Nothing
//! allocates, nothing blocks, and without the file (an older runner, or not under memwarden)
//! nothing changes.
//!
//! A process's share of the counters is its capture's live bytes and the reserved bytes it
//! reported here (its capture's `TREE_RESERVED_BYTES`). It is taken out once, when
//! the process ends: here in [`withdraw`] (from the library's destructor at `exit`, and from
//! the `_exit` hook), or by the runner for a process that could not (killed by a signal,
//! replaced by `exec`). The capture's `TREE_STATE` says which, and a compare-and-swap on it
//! makes sure only one of them does it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, Ordering};

use memwarden_format::capture::{field as capture_field, tree_state};
use memwarden_format::tree::{self as fmt, field};

use crate::sys::{self, StackBuf};
use crate::writer::CAPTURE;

/// The shared page; null without a tree counter.
static TREE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
/// Whether this image's recorded allocations go into the tree counter: set when its capture
/// opens with the page mapped, cleared once its share is withdrawn.
static COUNTING: AtomicBool = AtomicBool::new(false);

fn word<T>(tree: *mut u8, offset: usize) -> &'static T {
    // SAFETY: `tree` is the page mapped in `attach`, never unmapped (a forked child keeps
    // it too); every field offset is 8-byte aligned and inside the page, and the page is
    // only accessed through atomics, here and in the runner.
    unsafe { &*tree.add(offset).cast::<T>() }
}

/// Maps `<dir>/tree.mwtree` if the runner made one. Called from the constructor, before
/// any other thread can allocate.
pub fn attach(dir: &[u8]) {
    let mut path = StackBuf::<4200>::new();
    if !(path.push(dir) && path.push(b"/") && path.push(fmt::FILE_NAME.as_bytes())) {
        return;
    }
    // SAFETY: `path` is NUL-terminated; open does not allocate.
    let fd = unsafe { libc::open(path.as_c_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return;
    }
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on our own descriptor into our own buffer. The length is checked before
    // mapping: touching a page past the end of a shorter file would raise SIGBUS.
    let long_enough =
        unsafe { libc::fstat(fd, &mut stat) } == 0 && stat.st_size >= fmt::SIZE as i64;
    let page = if long_enough {
        sys::map_shared_file(fd, fmt::SIZE as usize)
    } else {
        std::ptr::null_mut()
    };
    // SAFETY: our descriptor; the mapping stays valid after it is closed.
    unsafe { libc::close(fd) };
    if page.is_null() {
        return;
    }
    let magic = word::<AtomicU64>(page, field::MAGIC).load(Ordering::Acquire);
    let version = word::<AtomicU64>(page, field::VERSION).load(Ordering::Relaxed);
    if magic != u64::from_le_bytes(fmt::MAGIC) || version != fmt::VERSION {
        sys::unmap(page, fmt::SIZE as usize);
        return;
    }
    word::<AtomicU64>(page, field::LOADED).fetch_add(1, Ordering::Relaxed);
    IMAGE_PID.store(u64::from(std::process::id()), Ordering::Relaxed);
    TREE.store(page, Ordering::Release);
}

/// The pid of the process this image runs in (set at start and in a forked child): a
/// `vfork` child runs in its parent's memory, with another pid, and must not write its
/// parent's figures as its own.
static IMAGE_PID: AtomicU64 = AtomicU64::new(0);
/// Whether this image wrote its exit record.
static EXIT_RECORDED: AtomicBool = AtomicBool::new(false);

/// As this image ends (the library's destructor at `exit`, and the `_exit` hook): takes
/// its share out of the tree ([`withdraw`]) and writes its exit record ([`record_exit`]).
/// Nothing in a `vfork` child, which runs in its parent's memory under another pid: the
/// share and the figures there are the parent's. (`std::process::id` is a getpid system
/// call each time, neither std nor glibc caches it, and it does not allocate.)
pub fn image_ends() {
    let pid = u64::from(std::process::id());
    if pid != IMAGE_PID.load(Ordering::Relaxed) {
        return;
    }
    withdraw();
    record_exit(pid);
}

/// Writes this image's exit record (`memwarden_format::tree`): its pid, the kernel's
/// high-water mark of its resident set, and the time. Once per image; the runner gives
/// each process this peak where its own readings were lower or missing (a process too
/// short to be read between two ticks, or not memwarden's child).
fn record_exit(pid: u64) {
    let tree = TREE.load(Ordering::Acquire);
    if tree.is_null() || EXIT_RECORDED.swap(true, Ordering::AcqRel) {
        return;
    }
    let Some(high_water) = sys::vm_hwm_bytes() else {
        return;
    };
    let slot = word::<AtomicU64>(tree, field::EXITS).fetch_add(1, Ordering::Relaxed);
    if slot >= fmt::EXIT_SLOTS {
        return;
    }
    let record = (fmt::HEADER_SIZE + slot * fmt::EXIT_RECORD_SIZE) as usize;
    word::<AtomicU64>(tree, record + 8).store(high_water, Ordering::Relaxed);
    word::<AtomicU64>(tree, record + 16).store(sys::now_ns(), Ordering::Relaxed);
    // The pid last: a record without it was never finished.
    word::<AtomicU64>(tree, record).store(pid, Ordering::Release);
}

/// Joins the tree counter at `<dir>/tree.mwtree` after the process started, when it counts
/// in none (a pytest-xdist worker, whose siblings must not share its counter): maps it as
/// [`attach`] does and, when the capture is already open, begins counting as a new capture
/// does ([`begin_capture`]) and adds what the process holds now ([`add`]), so that its
/// share, taken out as it ends, is what it added. Returns whether the process counts in
/// that tree now. Another thread's allocation between the reading of what is held and the
/// start of counting is left out of the tree; at the process's end that much is taken out
/// too many.
pub fn adopt(dir: &[u8]) -> bool {
    if !TREE.load(Ordering::Acquire).is_null() {
        return false;
    }
    attach(dir);
    let tree = TREE.load(Ordering::Acquire);
    if tree.is_null() {
        return false;
    }
    if CAPTURE.is_open() {
        let held = CAPTURE
            .header(capture_field::LIVE_BYTES)
            .load(Ordering::Acquire) as i64;
        begin_capture();
        add(held.max(0) as u64);
    }
    true
}

/// Starts counting this image into the tree, right after its capture opened (at start, or
/// in a forked child, whose new capture starts from nothing held).
pub fn begin_capture() {
    let tree = TREE.load(Ordering::Acquire);
    let state = if tree.is_null() {
        tree_state::NONE
    } else {
        word::<AtomicU64>(tree, field::IMAGES).fetch_add(1, Ordering::Relaxed);
        tree_state::COUNTED
    };
    CAPTURE
        .header(capture_field::TREE_RESERVED_BYTES)
        .store(0, Ordering::Relaxed);
    CAPTURE
        .header(capture_field::TREE_STATE)
        .store(state, Ordering::Release);
    COUNTING.store(state == tree_state::COUNTED, Ordering::Release);
}

/// In a child just after `fork`: the parent's share is the parent's; the child counts only
/// once its own capture is open ([`begin_capture`]), and writes an exit record of its own.
pub fn forked() {
    COUNTING.store(false, Ordering::Release);
    EXIT_RECORDED.store(false, Ordering::Relaxed);
    IMAGE_PID.store(u64::from(std::process::id()), Ordering::Relaxed);
}

/// Raises the tree's heap peak (live less reserved) to `committed` if that is a new high.
fn raise_peak(tree: *mut u8, committed: i64) {
    let peak = word::<AtomicI64>(tree, field::PEAK_BYTES);
    let mut seen = peak.load(Ordering::Relaxed);
    while committed > seen {
        match peak.compare_exchange_weak(seen, committed, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                // Two processes raising the peak at once may store their times in either
                // order; the later time wins, within the few instructions between the two.
                word::<AtomicU64>(tree, field::PEAK_NS).fetch_max(sys::now_ns(), Ordering::Relaxed);
                word::<AtomicU64>(tree, field::PEAK_CYCLES)
                    .fetch_max(sys::cycles(), Ordering::Relaxed);
                let pid = CAPTURE.header(capture_field::PID).load(Ordering::Relaxed);
                word::<AtomicU64>(tree, field::PEAK_PID).store(pid, Ordering::Relaxed);
                return;
            }
            Err(current) => seen = current,
        }
    }
}

/// Adds a recorded allocation's weight to the tree, and raises the tree's peaks if this is
/// a new high.
pub fn add(weight: u64) {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    let tree = TREE.load(Ordering::Relaxed);
    let weight = weight as i64;
    let live =
        word::<AtomicI64>(tree, field::LIVE_BYTES).fetch_add(weight, Ordering::Relaxed) + weight;
    for high in [field::REQUESTED_PEAK_BYTES, field::MARK_PEAK_BYTES] {
        let high = word::<AtomicI64>(tree, high);
        if live > high.load(Ordering::Relaxed) {
            high.fetch_max(live, Ordering::Relaxed);
        }
    }
    let reserved = word::<AtomicI64>(tree, field::RESERVED_BYTES).load(Ordering::Relaxed);
    raise_peak(tree, live - reserved);
}

/// The tree's page, when this image has one (for `crate::api`).
pub fn page() -> Option<*mut u8> {
    let tree = TREE.load(Ordering::Acquire);
    (!tree.is_null()).then_some(tree)
}

/// A word of the tree's page as a signed integer (for `crate::api`).
pub fn signed(tree: *mut u8, offset: usize) -> &'static AtomicI64 {
    word::<AtomicI64>(tree, offset)
}

/// Takes a recorded block's weight out of the tree.
pub fn sub(weight: u64) {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    let tree = TREE.load(Ordering::Relaxed);
    word::<AtomicI64>(tree, field::LIVE_BYTES).fetch_sub(weight as i64, Ordering::Relaxed);
}

/// Mirrors a change of this image's reserved bytes (large ranges' pages found untouched
/// when last measured) into the tree, where the heap is live less those bytes; pages found
/// touched (a negative delta) can raise the tree's peak.
pub fn reserved_changed(delta: i64) {
    if delta == 0 || !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    CAPTURE
        .header(capture_field::TREE_RESERVED_BYTES)
        .fetch_add(delta as u64, Ordering::Relaxed);
    let tree = TREE.load(Ordering::Relaxed);
    let reserved =
        word::<AtomicI64>(tree, field::RESERVED_BYTES).fetch_add(delta, Ordering::Relaxed) + delta;
    if delta < 0 {
        let live = word::<AtomicI64>(tree, field::LIVE_BYTES).load(Ordering::Relaxed);
        raise_peak(tree, live - reserved);
    }
}

/// A large range tracked at `born` (time-stamp counter cycles) and measured for the first
/// time now, `untouched` bytes of it untouched. Until then the tree counted it as written,
/// so a peak raised since it was tracked counted those bytes, which were untouched then too
/// (pages only come between measures): the peak is lowered by them, so that it says no
/// more than was committed then and a later, real high can still raise it.
pub fn pending_found_untouched(born: u64, untouched: u64) {
    if untouched == 0 || !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    let tree = TREE.load(Ordering::Relaxed);
    if word::<AtomicU64>(tree, field::PEAK_CYCLES).load(Ordering::Relaxed) >= born {
        word::<AtomicI64>(tree, field::PEAK_BYTES).fetch_sub(untouched as i64, Ordering::Relaxed);
    }
}

/// Takes this image's share (what it still holds) out of the tree as the process ends, so
/// that memory the kernel is about to release does not count toward later peaks. Once.
fn withdraw() {
    if !COUNTING.load(Ordering::Acquire) || !CAPTURE.is_open() {
        return;
    }
    let won = CAPTURE
        .header(capture_field::TREE_STATE)
        .compare_exchange(
            tree_state::COUNTED,
            tree_state::WITHDRAWN,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok();
    COUNTING.store(false, Ordering::Release);
    if won {
        // Another thread recording between the flag's clear and here leaves its weight in
        // the tree: only at exit, one allocation at most per thread.
        let held = CAPTURE
            .header(capture_field::LIVE_BYTES)
            .load(Ordering::Acquire) as i64;
        let reserved = CAPTURE
            .header(capture_field::TREE_RESERVED_BYTES)
            .load(Ordering::Acquire) as i64;
        let tree = TREE.load(Ordering::Relaxed);
        word::<AtomicI64>(tree, field::LIVE_BYTES).fetch_sub(held, Ordering::Relaxed);
        word::<AtomicI64>(tree, field::RESERVED_BYTES).fetch_sub(reserved, Ordering::Relaxed);
    }
}

/// `_exit`, which Python's `os._exit` calls, and with it every multiprocessing worker
/// started by `fork`: no destructor runs on this way out, so the share is withdrawn and the
/// exit record written here, then the process ends as glibc's `_exit` ends it.
#[no_mangle]
pub extern "C" fn _exit(status: libc::c_int) -> ! {
    image_ends();
    loop {
        // SAFETY: exit_group ends every thread of the process and does not return; glibc's
        // `_exit` is this system call (and `exit` on the calling thread should it return).
        unsafe {
            libc::syscall(libc::SYS_exit_group, status);
            libc::syscall(libc::SYS_exit, status);
        }
    }
}

/// `_Exit`, C99's name for `_exit`.
#[allow(non_snake_case)]
#[no_mangle]
pub extern "C" fn _Exit(status: libc::c_int) -> ! {
    _exit(status)
}
