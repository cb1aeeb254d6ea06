//! The interposed allocation functions. Each forwards to glibc's own implementation
//! (`__libc_*`, which needs no `dlsym` and so works from the first allocation) or to the
//! system call, and reports to the sampler after the fact.
//!
//! The hooks that take a pointer the caller vouches for (`free`, `realloc`,
//! `reallocarray`, `posix_memalign`'s out-pointer, and the mapping calls, whose address
//! ranges may hold memory others use) are `unsafe`: their contract is C's, stated in each
//! `# Safety` section, and a Rust caller must uphold it as a C caller does. The hooks that
//! only return fresh memory (`malloc`, `calloc`, the aligned allocators) have none and are
//! safe.

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
///
/// # Safety
///
/// C's contract: `pointer` is null or a block returned by this process's `malloc` family
/// and not freed since; it is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn free(pointer: *mut c_void) {
    if let Some(entry) = on_free(pointer as usize) {
        apply_free(pointer as usize, entry);
    }
    // SAFETY: glibc's free, with the pointer our caller vouched for.
    unsafe { __libc_free(pointer) }
}

/// `realloc`: a release of the old block and an allocation of the new one.
///
/// # Safety
///
/// C's contract: `pointer` is null or a live block of this process's `malloc` family; once
/// the call succeeds (or `size` is 0), the old block is not used again.
#[no_mangle]
pub unsafe extern "C" fn realloc(pointer: *mut c_void, size: size_t) -> *mut c_void {
    let old = on_free(pointer as usize);
    // SAFETY: glibc's realloc, with the pointer our caller vouched for.
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
///
/// # Safety
///
/// As [`realloc`]: `pointer` is null or a live block of this process's `malloc` family,
/// not used again once the call succeeds.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(
    pointer: *mut c_void,
    count: size_t,
    size: size_t,
) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: our caller's pointer, under the contract realloc states too.
        Some(total) => unsafe { realloc(pointer, total) },
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

/// `posix_memalign`. A null `out` gets `EINVAL` and nothing is allocated: glibc's own
/// writes through it and crashes, but a crash inside our hook would read as memwarden's
/// fault, and `EINVAL` is what POSIX returns for other invalid arguments.
///
/// # Safety
///
/// C's contract: `out` is null (refused, see above) or valid for writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(
    out: *mut *mut c_void,
    alignment: size_t,
    size: size_t,
) -> c_int {
    if out.is_null() {
        return libc::EINVAL;
    }
    if !alignment.is_power_of_two() || !alignment.is_multiple_of(std::mem::size_of::<*mut c_void>())
    {
        return libc::EINVAL;
    }
    // SAFETY: glibc's memalign with a valid alignment.
    let pointer = unsafe { __libc_memalign(alignment, size) };
    if pointer.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: `out` is not null, and our caller vouched that it is valid for writing.
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
///
/// # Safety
///
/// C's contract. With `MAP_FIXED` the new mapping replaces whatever `address..+length`
/// held, so nothing may still use memory there; `fd` and `offset` are as the system call
/// needs them.
#[no_mangle]
pub unsafe extern "C" fn mmap(
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
///
/// # Safety
///
/// As [`mmap`].
#[no_mangle]
pub unsafe extern "C" fn mmap64(
    address: *mut c_void,
    length: size_t,
    protection: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off_t,
) -> *mut c_void {
    // SAFETY: our caller's arguments, under the contract mmap states too.
    unsafe { mmap(address, length, protection, flags, fd, offset) }
}

/// `munmap`: releases exactly the tracked bytes in the range, whichever mappings they
/// belong to.
///
/// # Safety
///
/// C's contract: nothing uses memory in `address..+length` any more.
#[no_mangle]
pub unsafe extern "C" fn munmap(address: *mut c_void, length: size_t) -> c_int {
    mappings::munmap(address, length, || {
        // SAFETY: the munmap system call with the arguments our caller vouched for.
        unsafe { libc::syscall(libc::SYS_munmap, address, length) as c_int }
    })
}

/// `mremap`. The fifth argument (`new_address`) is variadic in C; on x86-64 a variadic
/// argument travels in the same register as a fixed one, and it is only read with
/// MREMAP_FIXED.
///
/// # Safety
///
/// C's contract: `old..+old_size` is a mapping that nothing uses through its old address
/// once it may move (`MREMAP_MAYMOVE`), and with `MREMAP_FIXED` nothing uses memory in
/// `new_address..+new_size`, which it replaces.
#[no_mangle]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_size: size_t,
    new_size: size_t,
    flags: c_int,
    new_address: *mut c_void,
) -> *mut c_void {
    mappings::mremap(old, old_size, new_size, flags, new_address, || {
        // SAFETY: the mremap system call with the arguments our caller vouched for.
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
///
/// # Safety
///
/// C's contract: advice that discards pages (`MADV_DONTNEED`, `MADV_FREE`, `MADV_REMOVE`)
/// is given only for memory whose contents nobody needs any more.
#[no_mangle]
pub unsafe extern "C" fn madvise(address: *mut c_void, length: size_t, advice: c_int) -> c_int {
    mappings::madvise(address, length, advice, || {
        // SAFETY: the madvise system call with the arguments our caller vouched for.
        unsafe { libc::syscall(libc::SYS_madvise, address, length, advice) as c_int }
    })
}
