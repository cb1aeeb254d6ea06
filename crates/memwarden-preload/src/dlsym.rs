//! `dlsym`, interposed so that memory allocated through a looked-up libc is seen.
//!
//! `ctypes.CDLL("libc.so.6").malloc`, or C code doing `dlopen("libc.so.6")` and then
//! `dlsym(handle, "malloc")`, searches libc's own scope, which the preloaded hooks are not
//! part of, and gets glibc's `malloc` itself: everything allocated through it escaped the
//! profiler. Our `dlsym` forwards every lookup to the real one and, when a lookup *in a
//! given library* returns one of glibc's own functions that we hook, returns our hook
//! instead, which forwards to glibc in turn. The match is by address (libc's definition of
//! each hooked name), so every alias (`__libc_malloc`, `__mmap`, `aligned_alloc` and
//! `memalign`...) is caught, and a malloc of another library (jemalloc opened with
//! `dlopen`, a second libc in a `dlmopen` namespace) is left alone. The hook handed out is
//! our own function (build.rs links the library with `-Bsymbolic-functions`), never what
//! the name is bound to in the process: a library preloaded before us that defines
//! `malloc` and looks libc's up in libc's handle to forward to gets our hook, which goes
//! straight to glibc, not its own `malloc` back. It substitutes whether or not this
//! process is being profiled: with profiling off the hooks only forward, as they do for
//! every other caller of `malloc`, and a lookup made before our constructor ran (in
//! another library's constructor) is caught all the same.
//!
//! glibc resolves `RTLD_NEXT`, and the scope of `RTLD_DEFAULT`, relative to the object
//! that called `dlsym`, found from its return address. So for those two handles our
//! `dlsym` is a tail jump to the real one, the stack untouched, written in assembly (a
//! compiler's sibling-call optimisation is not a guarantee): other interposers'
//! `dlsym(RTLD_NEXT, "malloc")` still gets the object after *them*, and so does our own
//! (`threads.rs`). Those lookups are never substituted, which leaves out a
//! `dlsym(RTLD_DEFAULT, ...)` from an object whose scope puts libc first (`RTLD_DEEPBIND`).
//! For any other handle glibc needs no caller (bar `LD_AUDIT`'s `symbind` callback, which
//! then names this library as the binder), so the trampoline calls the real `dlsym` and
//! maps its result.
//!
//! The real `dlsym` is found on the first call, whoever makes it (our constructor's own
//! `dlsym(RTLD_NEXT, "pthread_create")` in practice), before it is used: there is no
//! moment when a lookup has nowhere to go. `dlvsym` is not interposed: a versioned lookup of
//! `malloc` still escapes (rare: it needs the version string).
//!
//! x86-64 only (the trampoline is x86-64 assembly, a naked function: Rust 1.88); elsewhere
//! `dlsym` is not interposed and such lookups escape.
#![cfg(target_arch = "x86_64")]

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use libc::{c_char, c_void};

use crate::hooks;

/// The real `dlsym` (glibc's, or the next interposer's): 0 until the first call resolves it.
/// Read by the trampoline, which on x86-64 is an acquire load like any load.
static REAL_DLSYM: AtomicUsize = AtomicUsize::new(0);

/// Whether [`SUBSTITUTES`] is filled: until then (during the first call), nothing is
/// substituted.
static SUBSTITUTES_READY: AtomicBool = AtomicBool::new(false);

/// A glibc function that we hook: its address in libc and our hook's.
struct Substitute {
    libc: AtomicUsize,
    hook: AtomicUsize,
}

/// How many functions we hook (the length of [`hooked`]'s list).
const HOOKED: usize = 15;

/// An entry whose `libc` is 0 matches nothing.
static SUBSTITUTES: [Substitute; HOOKED] = [const {
    Substitute {
        libc: AtomicUsize::new(0),
        hook: AtomicUsize::new(0),
    }
}; HOOKED];

/// The functions `hooks.rs` interposes: libc's name and symbol version for each (x86-64's,
/// fixed by the ABI), and our hook's address. Taking an `unsafe fn`'s address is safe: the
/// code that gets it from `dlsym` calls it under C's contract, as it would glibc's function.
fn hooked() -> [(&'static CStr, &'static CStr, *const ()); HOOKED] {
    const BASE: &CStr = c"GLIBC_2.2.5";
    [
        (c"malloc", BASE, hooks::malloc as *const ()),
        (c"calloc", BASE, hooks::calloc as *const ()),
        (c"realloc", BASE, hooks::realloc as *const ()),
        (c"free", BASE, hooks::free as *const ()),
        (
            c"reallocarray",
            c"GLIBC_2.26",
            hooks::reallocarray as *const (),
        ),
        (c"posix_memalign", BASE, hooks::posix_memalign as *const ()),
        (
            c"aligned_alloc",
            c"GLIBC_2.16",
            hooks::aligned_alloc as *const (),
        ),
        (c"memalign", BASE, hooks::memalign as *const ()),
        (c"valloc", BASE, hooks::valloc as *const ()),
        (c"pvalloc", BASE, hooks::pvalloc as *const ()),
        (c"mmap", BASE, hooks::mmap as *const ()),
        (c"mmap64", BASE, hooks::mmap64 as *const ()),
        (c"munmap", BASE, hooks::munmap as *const ()),
        (c"mremap", BASE, hooks::mremap as *const ()),
        (c"madvise", BASE, hooks::madvise as *const ()),
    ]
}

extern "C" {
    /// glibc's malloc, which the hooks forward to: it tells which object is libc.
    fn __libc_malloc(size: libc::size_t) -> *mut c_void;
}

/// The base address of the object that holds `address`, 0 if none does.
fn object_base(address: *const c_void) -> usize {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: `info` is a valid out-pointer; dladdr neither allocates nor keeps it.
    match unsafe { libc::dladdr(address, info.as_mut_ptr()) } {
        0 => 0,
        // SAFETY: dladdr filled `info` (it was zeroed before in any case).
        _ => unsafe { info.assume_init() }.dli_fbase as usize,
    }
}

/// Finds the real `dlsym` and then libc's addresses of the hooked functions; returns the
/// real `dlsym`, 0 if there is none (then every lookup returns null). Called by the
/// trampoline while [`REAL_DLSYM`] is 0, possibly by several threads at once: each stores
/// the same values.
///
/// Nothing here may allocate: the first `dlsym` of a process is often another interposer's
/// `dlsym(RTLD_NEXT, "malloc")`, made from inside its own `malloc`, before it can allocate.
/// So no `dlopen` for libc's handle (it allocates, and a link map that was not opened is
/// no handle): each hooked name is looked up after us with `dlvsym`, and the address kept
/// only if it lies in libc (the object holding `__libc_malloc`). A lookup that fails (and
/// so allocates its error message) cannot recurse: the real `dlsym` is published first.
extern "C" fn resolve() -> usize {
    // SAFETY: NUL-terminated strings. Called from this library, so RTLD_NEXT means the
    // object after us: glibc's dlsym (or the next interposer's), never ours. GLIBC_2.34 is
    // dlsym's version in libc since it left libdl; this library needs glibc 2.34 anyway.
    let real = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), c"GLIBC_2.34".as_ptr()) }
        as usize;
    if real == 0 {
        return 0;
    }
    REAL_DLSYM.store(real, Ordering::Release);
    let libc_base = object_base(__libc_malloc as *const c_void);
    let own_base = object_base(resolve as *const c_void);
    if libc_base != 0 && own_base != 0 {
        for ((name, version, hook), substitute) in hooked().into_iter().zip(&SUBSTITUTES) {
            // Our own function, linked with -Bsymbolic-functions. Were it linked otherwise,
            // this would be the name's binding in the process, perhaps another object's
            // (an interposer preloaded before us, which may be the one asking for libc's
            // function): leave such a name alone rather than hand an object its own.
            if object_base(hook.cast()) != own_base {
                continue;
            }
            // SAFETY: NUL-terminated strings. RTLD_NEXT from this library, with libc's
            // version of the name: a versioned lookup passes over the unversioned
            // definitions of objects between us and libc (another interposer's malloc).
            let address = unsafe { libc::dlvsym(libc::RTLD_NEXT, name.as_ptr(), version.as_ptr()) };
            if !address.is_null() && object_base(address) == libc_base {
                substitute.hook.store(hook as usize, Ordering::Relaxed);
                substitute.libc.store(address as usize, Ordering::Relaxed);
            }
        }
    }
    SUBSTITUTES_READY.store(true, Ordering::Release);
    real
}

/// What a lookup in a given library returns: our hook in place of glibc's own function.
extern "C" fn substitute(found: *mut c_void) -> *mut c_void {
    if found.is_null() || !SUBSTITUTES_READY.load(Ordering::Acquire) {
        return found;
    }
    SUBSTITUTES
        .iter()
        .find(|s| s.libc.load(Ordering::Relaxed) == found as usize)
        .map_or(found, |s| s.hook.load(Ordering::Relaxed) as *mut c_void)
}

/// `dlsym`: see the module documentation.
///
/// # Safety
///
/// `dlsym`'s contract: `handle` is `RTLD_DEFAULT`, `RTLD_NEXT` or a handle from `dlopen`,
/// and `symbol` a NUL-terminated string.
// SAFETY: a naked function: the assembly is the whole body. It follows the C calling
// convention: it reads only rdi (handle) and rsi (symbol), clobbers only caller-saved
// registers, keeps the stack 16-byte aligned at each call (one or three pushes over the
// 8 bytes of the return address), and leaves the stack as it found it before each jump.
// The CFI directives describe each push and pop, so that debuggers and crash reports
// unwind through it (the compiler writes none for a naked function); they hold in address
// order, the order in which the assembler reads them.
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        ".cfi_startproc",
        "mov rax, qword ptr [rip + {real}]",
        "test rax, rax",
        "jz 3f",
        // Resolved: rax holds the real dlsym.
        "2:",
        // RTLD_DEFAULT (0) or RTLD_NEXT (-1): the real one, from our caller's return address.
        "lea rcx, [rdi + 1]",
        "cmp rcx, 1",
        "jbe 4f",
        // A given library: call the real one, then hand its result to `substitute`, which
        // returns straight to our caller.
        "push rax",
        ".cfi_adjust_cfa_offset 8",
        "call rax",
        "pop rcx",
        ".cfi_adjust_cfa_offset -8",
        "mov rdi, rax",
        "jmp {substitute}",
        "4:",
        "jmp rax",
        // First call: resolve, keeping the arguments.
        "3:",
        "push rdi",
        ".cfi_adjust_cfa_offset 8",
        "push rsi",
        ".cfi_adjust_cfa_offset 8",
        "push rax",
        ".cfi_adjust_cfa_offset 8",
        "call {resolve}",
        "pop rcx",
        ".cfi_adjust_cfa_offset -8",
        "pop rsi",
        ".cfi_adjust_cfa_offset -8",
        "pop rdi",
        ".cfi_adjust_cfa_offset -8",
        "test rax, rax",
        "jnz 2b",
        "ret",
        ".cfi_endproc",
        real = sym REAL_DLSYM,
        substitute = sym substitute,
        resolve = sym resolve,
    )
}
