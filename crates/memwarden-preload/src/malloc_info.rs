//! glibc's own account of its heap (`mallinfo2`), read at peak snapshots.
//!
//! The hooks see what the program asked malloc for; what malloc holds from the kernel is
//! more: freed chunks it keeps for reuse (fragmentation) and its top chunk. `mallinfo2`
//! says how much (`fordblks`, free bytes inside its arenas), out of how much (`arena`,
//! bytes of its arenas, and `hblkhd`, bytes of the chunks it mapped one by one). The figures
//! at the peak snapshot go into the capture's header (`MALLOC_*_AT_PEAK`, flag
//! `MALLOC_INFO`).
//!
//! `mallinfo2` came with glibc 2.33: it is looked up once, in the constructor, by its
//! versioned name, and a glibc without it leaves the flag clear. It is called only from
//! [`crate::writer::Writer`]'s peak snapshot, never on an ordinary allocation. It takes every
//! arena's lock in turn and walks every free chunk: half a microsecond on a young heap, but
//! 6 ms on one with 100,000 free chunks (measured here), while other threads' `malloc`
//! waits. So it has a budget of its own ([`read_spaced`]): after a call that took long, the
//! next waits [`SPACING`] times as long, and the figures then stand as of an earlier peak
//! snapshot (the header says when they were read).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::sys;

/// A call shorter than this (about 5 µs at 3.3 GHz) is not spaced out.
const SHORT_CYCLES: u64 = 1 << 14;
/// A longer call is followed by at least this many times its length without one: at most
/// about 3% of the process's time, and of its other threads' waits for malloc's locks.
const SPACING: u64 = 32;
/// `sys::cycles()` at the end of the last call, and how long it took.
static LAST_END: AtomicU64 = AtomicU64::new(0);
static LAST_SPAN: AtomicU64 = AtomicU64::new(0);

/// glibc's `struct mallinfo2` (`<malloc.h>`): ten `size_t`, of which three are read.
#[repr(C)]
#[allow(dead_code)]
struct MallInfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

/// glibc's `mallinfo2`, 0 when this glibc has none (or before [`resolve`]).
static MALLINFO2: AtomicUsize = AtomicUsize::new(0);

/// What `mallinfo2` says, in bytes.
pub struct Figures {
    /// `fordblks`: free bytes inside malloc's arenas (the top chunk included).
    pub free: u64,
    /// `arena`: bytes of malloc's arenas (`sbrk` and mapped heaps).
    pub arena: u64,
    /// `hblkhd`: bytes of the chunks malloc mapped one by one.
    pub mmapped: u64,
}

/// Looks `mallinfo2` up. Called from the constructor only, before profiling is switched on:
/// `dlvsym` takes the loader lock, and a failed lookup (glibc before 2.33) allocates its
/// error message, which the hooks then only forward.
pub fn resolve() {
    // SAFETY: NUL-terminated name and version. RTLD_NEXT from this library: the objects
    // after us, so glibc's definition (the only one of version GLIBC_2.33), which is the
    // malloc our hooks forward to, not another allocator's.
    let found = unsafe {
        libc::dlvsym(
            libc::RTLD_NEXT,
            c"mallinfo2".as_ptr(),
            c"GLIBC_2.33".as_ptr(),
        )
    };
    MALLINFO2.store(found as usize, Ordering::Release);
}

/// glibc's figures now, and the cycles the call took; `None` when this glibc has no
/// `mallinfo2`, or when the last call took long and ended too recently (see [`SPACING`]).
/// Same contract as [`read`].
pub fn read_spaced() -> Option<(Figures, u64)> {
    let span = LAST_SPAN.load(Ordering::Relaxed);
    if span >= SHORT_CYCLES
        && sys::cycles().wrapping_sub(LAST_END.load(Ordering::Relaxed)) < span * SPACING
    {
        return None;
    }
    let started = sys::cycles();
    let figures = read()?;
    let end = sys::cycles();
    let took = end.wrapping_sub(started);
    LAST_SPAN.store(took, Ordering::Relaxed);
    LAST_END.store(end, Ordering::Relaxed);
    Some((figures, took))
}

/// glibc's figures now; `None` when this glibc has no `mallinfo2`.
///
/// Call only where the calling thread holds none of malloc's locks: from the peak
/// snapshot, which the hooks reach after glibc's allocating call returned or before its
/// releasing call is made (see the SAFETY comment below).
pub fn read() -> Option<Figures> {
    let function = MALLINFO2.load(Ordering::Acquire);
    if function == 0 {
        return None;
    }
    // SAFETY: `function` is glibc's `mallinfo2` (found by its versioned name in
    // `resolve`): `struct mallinfo2 mallinfo2(void)`, returned by value, which this
    // signature and `MallInfo2`'s layout match. It locks each arena's mutex in turn
    // (non-recursive) and walks its free lists; it neither allocates nor calls any function
    // we hook. It cannot deadlock on this thread: the only caller is the peak snapshot
    // (`Writer::take_peak`), reached from our hooks after `__libc_malloc` & co. returned
    // (`on_alloc` runs on the returned block), before `__libc_free`/`__libc_realloc` are
    // called (`on_free`, `before_release`), around the mapping system calls (which glibc's
    // malloc makes through its own internal `__mmap`, never through our hooks, so no hook
    // runs inside malloc while it holds a lock), and from the exit snapshot, taken from a
    // hook or from the library's destructor, outside malloc too. The one way in while this
    // thread is inside malloc would be a signal handler calling `malloc`, `free`, `mmap` or
    // `munmap`, none of which POSIX allows in a handler. Another thread holding an arena's
    // lock only makes us wait for it: while inside glibc's malloc it never waits for a lock
    // of ours (the table of ranges, held by the snapshot), since it never enters our hooks.
    let info = unsafe {
        let mallinfo2: extern "C" fn() -> MallInfo2 = std::mem::transmute(function);
        mallinfo2()
    };
    Some(Figures {
        free: info.fordblks as u64,
        arena: info.arena as u64,
        mmapped: info.hblkhd as u64,
    })
}
