//! The heap as the profiler counts it, for code running inside a profiled process:
//! memwarden's Python API (`memwarden.track`, the pytest plugin) finds these functions with
//! `dlsym` in its own process and measures a block's heap peak with them.
//!
//! Figures are the process's requested live bytes (what tracemalloc and memray count; an
//! unbiased estimate in sampled mode), all threads together. A mark sets the "peak since
//! the mark" to the heap now; every recorded allocation raises it, so reading it at a
//! block's end gives the block's highest heap, whatever it freed before the end. There is
//! one mark per process: callers that nest blocks credit the open ones before they set a
//! new mark. Before the capture exists (nothing recorded yet) every figure is 0.
//!
//! The `memwarden_tree_*` functions read the run's tree counter (`memwarden_format::tree`)
//! the same way: the live bytes of every profiled process of the tree together (this one,
//! its children, their children), and a mark of its own in the shared page, so that a
//! block's peak counts the workers it starts. Without a tree counter they return
//! `i64::MIN`.

use std::sync::atomic::Ordering;

use memwarden_format::capture::field;
use memwarden_format::tree::field as tree_field;

use crate::writer::CAPTURE;

/// A header field of the capture, 0 when there is none yet.
fn read(which: usize) -> u64 {
    if CAPTURE.is_open() {
        CAPTURE.header(which).load(Ordering::Relaxed)
    } else {
        0
    }
}

/// Requested live bytes now.
#[no_mangle]
pub extern "C" fn memwarden_heap_live() -> u64 {
    read(field::LIVE_BYTES)
}

/// Sets the mark: the peak since the mark becomes the live bytes now, which it returns.
#[no_mangle]
pub extern "C" fn memwarden_heap_mark() -> u64 {
    if !CAPTURE.is_open() {
        return 0;
    }
    let live = CAPTURE.header(field::LIVE_BYTES).load(Ordering::Relaxed);
    CAPTURE
        .header(field::MARK_PEAK_BYTES)
        .store(live, Ordering::Relaxed);
    live
}

/// The highest live bytes since the last mark (since the capture began, without one).
#[no_mangle]
pub extern "C" fn memwarden_heap_peak_since_mark() -> u64 {
    read(field::MARK_PEAK_BYTES)
}

/// Mean bytes between samples: 0 in exact mode (every allocation recorded); `u64::MAX` when
/// the profiler is loaded but records nothing in this process (no capture directory).
#[no_mangle]
pub extern "C" fn memwarden_heap_sample_bytes() -> u64 {
    if crate::DIRECTORY.len.load(Ordering::Acquire) == 0 {
        return u64::MAX;
    }
    let settings = crate::settings();
    if settings.exact {
        0
    } else {
        settings.sample_bytes
    }
}

/// 1 when the profiler reads this process's Python frames (a CPython it knows the layout
/// of), so allocations are charged to Python lines; 0 otherwise.
#[no_mangle]
pub extern "C" fn memwarden_python_frames() -> u64 {
    u64::from(crate::IS_PYTHON.load(Ordering::Relaxed))
}

/// The tree's live bytes now (every profiled process of the run); `i64::MIN` without a tree
/// counter.
#[no_mangle]
pub extern "C" fn memwarden_tree_live() -> i64 {
    crate::tree::page().map_or(i64::MIN, |tree| {
        crate::tree::signed(tree, tree_field::LIVE_BYTES).load(Ordering::Relaxed)
    })
}

/// Sets the tree's mark: its peak since the mark becomes its live bytes now, which it
/// returns; `i64::MIN` without a tree counter.
#[no_mangle]
pub extern "C" fn memwarden_tree_mark() -> i64 {
    crate::tree::page().map_or(i64::MIN, |tree| {
        let live = crate::tree::signed(tree, tree_field::LIVE_BYTES).load(Ordering::Relaxed);
        crate::tree::signed(tree, tree_field::MARK_PEAK_BYTES).store(live, Ordering::Relaxed);
        live
    })
}

/// The tree's highest live bytes since its last mark; `i64::MIN` without a tree counter.
#[no_mangle]
pub extern "C" fn memwarden_tree_peak_since_mark() -> i64 {
    crate::tree::page().map_or(i64::MIN, |tree| {
        crate::tree::signed(tree, tree_field::MARK_PEAK_BYTES).load(Ordering::Relaxed)
    })
}

/// Joins the tree counter at `<dir>/tree.mwtree` (`dir`: a NUL-terminated path) when this
/// process counts in none yet; 1 when it counts in that tree now, 0 otherwise. For a
/// process whose siblings must not share its counter (a pytest-xdist worker); its children
/// join that tree when `MEMWARDEN_CAPTURE_DIR` names `dir` as they start.
///
/// # Safety
/// `dir` must point to a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn memwarden_tree_adopt(dir: *const std::ffi::c_char) -> u32 {
    if dir.is_null() {
        return 0;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let dir = unsafe { std::ffi::CStr::from_ptr(dir) }.to_bytes();
    if dir.is_empty() || dir.len() >= 4096 {
        return 0;
    }
    u32::from(crate::tree::adopt(dir))
}

/// Process images that have counted in the tree so far (each `exec` counts again); 0
/// without a tree counter.
#[no_mangle]
pub extern "C" fn memwarden_tree_images() -> u64 {
    crate::tree::page().map_or(0, |tree| {
        crate::tree::signed(tree, tree_field::IMAGES).load(Ordering::Relaxed) as u64
    })
}

/// The N of this image's capture file, `$MEMWARDEN_CAPTURE_DIR/<pid>-<N>.mwcap`; -1 while
/// there is none (nothing recorded yet, or no capture directory).
#[no_mangle]
pub extern "C" fn memwarden_capture_number() -> i64 {
    if CAPTURE.is_open() {
        crate::writer::NUMBER.load(Ordering::Relaxed) as i64
    } else {
        -1
    }
}

/// Sets whether the calling thread's allocations and releases go unseen (1) or are
/// recorded again (0); returns the previous setting. For memwarden's own readings inside a
/// profiled process (the Python package reading its capture), which are not the program's
/// heap: the code run while it is set must free only what it allocated meanwhile, since
/// releases are not seen either.
#[no_mangle]
pub extern "C" fn memwarden_thread_quiet(quiet: u32) -> u32 {
    let thread = crate::thread();
    let was = thread.busy.get();
    thread.busy.set(quiet != 0);
    u32::from(was)
}
