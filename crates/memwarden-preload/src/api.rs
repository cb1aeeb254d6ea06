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

use std::sync::atomic::Ordering;

use memwarden_format::capture::field;

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
