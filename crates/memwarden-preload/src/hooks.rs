//! The interposed allocation functions. Each forwards to glibc's own implementation
//! (`__libc_*`, which needs no `dlsym` and so works from the first allocation) or to the
//! system call, and reports to the sampler after the fact.

use libc::{c_int, c_void, size_t};

use crate::{apply_free, mappings, on_alloc, on_free, restore, Kind};

extern "C" {
    fn __libc_malloc(size: size_t) -> *mut c_void;
    fn __libc_calloc(count: size_t, size: size_t) -> *mut c_void;
    fn __libc_realloc(pointer: *mut c_void, size: size_t) -> *mut c_void;
    fn __libc_free(pointer: *mut c_void);
    fn __libc_memalign(alignment: size_t, size: size_t) -> *mut c_void;
    fn __libc_valloc(size: size_t) -> *mut c_void;
    fn __libc_pvalloc(size: size_t) -> *mut c_void;
}

fn set_errno(value: c_int) {
    // SAFETY: errno is thread-local and always valid to write.
    unsafe { *libc::__errno_location() = value };
}

fn track(pointer: *mut c_void, size: usize) -> *mut c_void {
    if !pointer.is_null() {
        let kind = match size >= mappings::LARGE_BYTES {
            true => Kind::LargeBlock,
            false => Kind::Block,
        };
        on_alloc(pointer as usize, size, kind);
    }
    pointer
}

/// `malloc`.
#[no_mangle]
pub extern "C" fn malloc(size: size_t) -> *mut c_void {
    // SAFETY: glibc's malloc, same contract.
    track(unsafe { __libc_malloc(size) }, size)
}

/// `calloc`.
#[no_mangle]
pub extern "C" fn calloc(count: size_t, size: size_t) -> *mut c_void {
    // SAFETY: glibc's calloc, same contract (it checks the multiplication itself).
    let pointer = unsafe { __libc_calloc(count, size) };
    track(pointer, count.saturating_mul(size))
}

/// `free`.
#[no_mangle]
pub extern "C" fn free(pointer: *mut c_void) {
    if let Some(entry) = on_free(pointer as usize) {
        apply_free(pointer as usize, entry);
    }
    // SAFETY: glibc's free, same contract.
    unsafe { __libc_free(pointer) }
}

/// `realloc`: a release of the old block and an allocation of the new one.
#[no_mangle]
pub extern "C" fn realloc(pointer: *mut c_void, size: size_t) -> *mut c_void {
    let old = on_free(pointer as usize);
    // SAFETY: glibc's realloc, same contract.
    let moved = unsafe { __libc_realloc(pointer, size) };
    if moved.is_null() && size != 0 {
        // Failed: the old block is still there and still charged.
        if let Some(entry) = old {
            restore(pointer as usize, entry);
        }
        return moved;
    }
    if let Some(entry) = old {
        apply_free(pointer as usize, entry);
    }
    track(moved, size)
}

/// `reallocarray` (glibc's calls its realloc internally, out of our reach).
#[no_mangle]
pub extern "C" fn reallocarray(pointer: *mut c_void, count: size_t, size: size_t) -> *mut c_void {
    match count.checked_mul(size) {
        Some(total) => realloc(pointer, total),
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

/// `posix_memalign`.
#[no_mangle]
pub extern "C" fn posix_memalign(out: *mut *mut c_void, alignment: size_t, size: size_t) -> c_int {
    if !alignment.is_power_of_two() || !alignment.is_multiple_of(std::mem::size_of::<*mut c_void>())
    {
        return libc::EINVAL;
    }
    // SAFETY: glibc's memalign with a valid alignment.
    let pointer = unsafe { __libc_memalign(alignment, size) };
    if pointer.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a valid out-pointer, as posix_memalign requires.
    unsafe { *out = track(pointer, size) };
    0
}

/// `aligned_alloc`.
#[no_mangle]
pub extern "C" fn aligned_alloc(alignment: size_t, size: size_t) -> *mut c_void {
    // SAFETY: glibc's memalign validates the alignment itself.
    track(unsafe { __libc_memalign(alignment, size) }, size)
}

/// `memalign`.
#[no_mangle]
pub extern "C" fn memalign(alignment: size_t, size: size_t) -> *mut c_void {
    // SAFETY: glibc's memalign, same contract.
    track(unsafe { __libc_memalign(alignment, size) }, size)
}

/// `valloc`.
#[no_mangle]
pub extern "C" fn valloc(size: size_t) -> *mut c_void {
    // SAFETY: glibc's valloc, same contract.
    track(unsafe { __libc_valloc(size) }, size)
}

/// `pvalloc`.
#[no_mangle]
pub extern "C" fn pvalloc(size: size_t) -> *mut c_void {
    // SAFETY: glibc's pvalloc, same contract.
    track(unsafe { __libc_pvalloc(size) }, size)
}

/// `mmap`: anonymous mappings that can hold data are allocations (Python's object arenas
/// come this way), followed by range in [`crate::mappings`].
#[no_mangle]
pub extern "C" fn mmap(
    address: *mut c_void,
    length: size_t,
    protection: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off_t,
) -> *mut c_void {
    mappings::mmap(address, length, protection, flags, || {
        crate::sys::mmap(address, length, protection, flags, fd, offset)
    })
}

/// `mmap64`, the same function on 64-bit Linux.
#[no_mangle]
pub extern "C" fn mmap64(
    address: *mut c_void,
    length: size_t,
    protection: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off_t,
) -> *mut c_void {
    mmap(address, length, protection, flags, fd, offset)
}

/// `munmap`: releases exactly the tracked bytes in the range, whichever mappings they
/// belong to.
#[no_mangle]
pub extern "C" fn munmap(address: *mut c_void, length: size_t) -> c_int {
    mappings::munmap(address, length, || {
        // SAFETY: the munmap system call with the caller's own arguments.
        unsafe { libc::syscall(libc::SYS_munmap, address, length) as c_int }
    })
}

/// `mremap`. The fifth argument (`new_address`) is variadic in C; on x86-64 a variadic
/// argument travels in the same register as a fixed one, and it is only read with
/// MREMAP_FIXED.
#[no_mangle]
pub extern "C" fn mremap(
    old: *mut c_void,
    old_size: size_t,
    new_size: size_t,
    flags: c_int,
    new_address: *mut c_void,
) -> *mut c_void {
    mappings::mremap(old, old_size, new_size, flags, new_address, || {
        // SAFETY: the mremap system call with the caller's own arguments.
        unsafe {
            libc::syscall(
                libc::SYS_mremap,
                old,
                old_size,
                new_size,
                flags,
                new_address,
            ) as *mut c_void
        }
    })
}

/// `madvise`: advice that takes pages away makes the tracked ranges it covers be measured
/// again ([`crate::mappings::madvise`]).
#[no_mangle]
pub extern "C" fn madvise(address: *mut c_void, length: size_t, advice: c_int) -> c_int {
    mappings::madvise(address, length, advice, || {
        // SAFETY: the madvise system call with the caller's own arguments.
        unsafe { libc::syscall(libc::SYS_madvise, address, length, advice) as c_int }
    })
}
