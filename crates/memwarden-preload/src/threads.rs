//! Threads: new threads inherit their creator's stack, and forked children get their own
//! capture.

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_int, c_void, pthread_attr_t, pthread_t};
use memwarden_format::capture::kind;

use crate::writer::CAPTURE;
use crate::{current_node, forked_child};

type StartRoutine = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type CreateFn =
    unsafe extern "C" fn(*mut pthread_t, *const pthread_attr_t, StartRoutine, *mut c_void) -> c_int;

/// glibc's `pthread_create`, found at start.
static REAL_CREATE: AtomicUsize = AtomicUsize::new(0);

extern "C" {
    fn __libc_malloc(size: libc::size_t) -> *mut c_void;
    fn __libc_free(pointer: *mut c_void);
}

/// glibc's `pthread_create`, looked up on first need. Our `pthread_create` is exported
/// whether or not profiling is on, so it must always be able to forward.
fn real_create() -> usize {
    let known = REAL_CREATE.load(Ordering::Acquire);
    if known != 0 {
        return known;
    }
    // SAFETY: dlsym(RTLD_NEXT) with a NUL-terminated name; called from the constructor or
    // from pthread_create, never inside an allocation hook.
    let real = unsafe { libc::dlsym(libc::RTLD_NEXT, c"pthread_create".as_ptr()) } as usize;
    REAL_CREATE.store(real, Ordering::Release);
    real
}

/// Resolves the real `pthread_create` (called from the constructor, profiling on or
/// off) and, when profiling, registers the fork handler.
pub fn install(profiling: bool) {
    real_create();
    if profiling {
        // SAFETY: registers a plain function; pthread_atfork has no other preconditions.
        unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
    }
}

/// Handed from the creating thread to the new one.
#[repr(C)]
struct Handoff {
    start: StartRoutine,
    argument: *mut c_void,
    node: u32,
}

/// The new thread's start: takes the creator's node, then runs the caller's routine.
///
/// # Safety
///
/// `handoff` is the block `pthread_create` filled, owned by this thread from now on.
unsafe extern "C" fn trampoline(handoff: *mut c_void) -> *mut c_void {
    let handoff = handoff.cast::<Handoff>();
    // SAFETY: `handoff` was filled by `pthread_create` below and is owned by this thread.
    let (start, argument, node) =
        unsafe { ((*handoff).start, (*handoff).argument, (*handoff).node) };
    // SAFETY: allocated with __libc_malloc below.
    unsafe { __libc_free(handoff.cast()) };
    crate::thread().inherited.set(node);
    // SAFETY: the routine and argument that `pthread_create`'s caller vouched for.
    unsafe { start(argument) }
}

/// `pthread_create`: remembers the creator's stack for the new thread.
///
/// # Safety
///
/// C's contract: `thread` is valid for writing a `pthread_t`; `attributes` is null or an
/// initialised attribute object; `start` may be run with `argument` on a new thread, with
/// whatever `argument` points to living as long as `start` uses it.
#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    thread: *mut pthread_t,
    attributes: *const pthread_attr_t,
    start: StartRoutine,
    argument: *mut c_void,
) -> c_int {
    let real = real_create();
    if real == 0 {
        return libc::EAGAIN;
    }
    // SAFETY: the address dlsym gave for pthread_create, which has this signature.
    let real: CreateFn = unsafe { std::mem::transmute(real) };
    // A thread's stack is the creator's: the capture opens now if nothing was recorded
    // yet, so that what the thread allocates is charged to where it was started.
    let node = if crate::active() && !crate::thread().busy.replace(true) {
        let state = crate::thread();
        let node = crate::capture_open().then(|| current_node(state));
        state.busy.set(false);
        node
    } else {
        None
    };
    let Some(node) = node else {
        // SAFETY: our caller's arguments, under the contract it vouched for.
        return unsafe { real(thread, attributes, start, argument) };
    };
    // SAFETY: glibc's malloc, for a block the new thread frees.
    let handoff = unsafe { __libc_malloc(std::mem::size_of::<Handoff>()) }.cast::<Handoff>();
    if handoff.is_null() {
        // SAFETY: as above.
        return unsafe { real(thread, attributes, start, argument) };
    }
    // SAFETY: `handoff` is a fresh block of the right size.
    unsafe {
        handoff.write(Handoff {
            start,
            argument,
            node,
        })
    };
    // SAFETY: our caller's `thread` and `attributes`; the trampoline runs the caller's
    // `start` with its `argument` from the block it owns from here on.
    let result = unsafe { real(thread, attributes, trampoline, handoff.cast()) };
    if result != 0 {
        // SAFETY: the thread was not created, so the block is still ours.
        unsafe { __libc_free(handoff.cast()) };
    }
    result
}

/// A frame naming the calling thread (its `comm`, as set by `pthread_setname_np`).
pub fn name_frame() -> Option<u32> {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into our buffer.
    if unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) } != 0 {
        return None;
    }
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    CAPTURE.frame(b"<thread>", &name[..len], 0, kind::THREAD)
}
