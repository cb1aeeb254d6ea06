//! System calls made directly, and a spin lock of our own.
//!
//! Calling `libc::mmap` or `libc::malloc` from inside this library would land in our own
//! interposed symbols, so memory for our tables comes from the `mmap` system call itself.
//! Nothing here allocates, and nothing takes a lock the target could hold.

use std::sync::atomic::{AtomicBool, Ordering};

/// The `mmap` system call itself (not the `mmap` symbol, which is ours); `MAP_FAILED`
/// with errno set on failure, as `mmap` does.
pub fn mmap(
    address: *mut libc::c_void,
    length: usize,
    protection: i32,
    flags: i32,
    fd: i32,
    offset: libc::off_t,
) -> *mut libc::c_void {
    // SAFETY: a plain mmap system call; callers pass either a fresh request or a range
    // they own (MAP_FIXED over our own tables), or forward a caller's own arguments.
    unsafe {
        libc::syscall(
            libc::SYS_mmap,
            address,
            length,
            protection,
            flags,
            fd,
            offset,
        ) as *mut libc::c_void
    }
}

fn or_null(address: *mut libc::c_void) -> *mut u8 {
    if address == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        address.cast()
    }
}

const READ_WRITE: i32 = libc::PROT_READ | libc::PROT_WRITE;
const PRIVATE_ANONYMOUS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// Anonymous, private, zeroed memory straight from the kernel (pages count only once
/// used); null on failure.
pub fn map_anonymous(bytes: usize) -> *mut u8 {
    or_null(mmap(
        std::ptr::null_mut(),
        bytes,
        READ_WRITE,
        PRIVATE_ANONYMOUS,
        -1,
        0,
    ))
}

/// Maps `bytes` of the file `fd` shared; null on failure.
pub fn map_shared_file(fd: i32, bytes: usize) -> *mut u8 {
    or_null(mmap(
        std::ptr::null_mut(),
        bytes,
        READ_WRITE,
        libc::MAP_SHARED,
        fd,
        0,
    ))
}

/// Replaces a mapping made by [`map_anonymous`] with fresh zero pages, which (unlike
/// writing zeros) gives untouched pages no memory. Only for memory no other thread uses
/// (the child just after fork).
pub fn zero_pages(address: *mut u8, bytes: usize) {
    mmap(
        address.cast(),
        bytes,
        READ_WRITE,
        PRIVATE_ANONYMOUS | libc::MAP_FIXED,
        -1,
        0,
    );
}

/// The executable's path, read into `buffer`.
pub fn executable(buffer: &mut [u8; 512]) -> &[u8] {
    // SAFETY: readlink writes at most `buffer.len()` bytes into our buffer.
    let len = unsafe {
        libc::readlink(
            c"/proc/self/exe".as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    &buffer[..len.max(0) as usize]
}

/// The kernel's high-water mark of this process's resident set (`VmHWM` in
/// `/proc/self/status`), in bytes; `None` when it cannot be read. Reads into a stack
/// buffer: no allocation.
pub fn vm_hwm_bytes() -> Option<u64> {
    // SAFETY: a NUL-terminated path; open does not allocate.
    let fd = unsafe {
        libc::open(
            c"/proc/self/status".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut buffer = [0u8; 4096];
    let mut len = 0;
    while len < buffer.len() {
        // SAFETY: read into the unused tail of our own buffer.
        let got = unsafe { libc::read(fd, buffer[len..].as_mut_ptr().cast(), buffer.len() - len) };
        if got <= 0 {
            break;
        }
        len += got as usize;
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    parse_vm_hwm(&buffer[..len])
}

/// The `VmHWM:` line of a `status` file, in bytes.
fn parse_vm_hwm(status: &[u8]) -> Option<u64> {
    let line = status
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"VmHWM:"))?;
    let digits: &[u8] = {
        let start = line.iter().position(u8::is_ascii_digit)?;
        let rest = &line[start..];
        &rest[..rest
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(rest.len())]
    };
    parse_u64(digits)?.checked_mul(1024)
}

/// Unmaps memory this module mapped.
pub fn unmap(address: *mut u8, bytes: usize) {
    // SAFETY: only called on a mapping made by this module and no longer referenced.
    unsafe {
        libc::syscall(libc::SYS_munmap, address, bytes);
    }
}

/// Wall-clock time in nanoseconds since the epoch (vDSO, no system call).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; clock_gettime neither allocates nor locks.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// A cycle count for measuring short intervals cheaply (the time-stamp counter: one
/// instruction, no system call); nanoseconds where there is none.
#[inline]
pub fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `rdtsc` exists on every x86-64 processor and only reads a counter.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        now_ns()
    }
}

/// Eight bytes from the kernel's random source, through the `getrandom` system call itself
/// (glibc's wrapper is a cancellation point, and a program may interpose it); the call
/// neither allocates nor locks. `GRND_NONBLOCK`, so it never waits (only possible early in
/// boot, before the entropy pool is ready). `None` when the kernel refuses: too old, a
/// seccomp filter, the pool not ready.
pub fn getrandom_u64() -> Option<u64> {
    let mut bytes = [0u8; 8];
    loop {
        // SAFETY: the kernel writes at most `bytes.len()` bytes into our buffer.
        let got = unsafe {
            libc::syscall(
                libc::SYS_getrandom,
                bytes.as_mut_ptr(),
                bytes.len(),
                libc::GRND_NONBLOCK,
            )
        };
        if got == bytes.len() as libc::c_long {
            return Some(u64::from_ne_bytes(bytes));
        }
        // Requests of up to 256 bytes are never cut short, but a signal may interrupt one.
        let interrupted =
            got < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
        if !interrupted {
            return None;
        }
    }
}

/// The 16 random bytes the kernel gives every program it executes (`AT_RANDOM`), folded
/// into eight; 0 when absent. A forked child has its parent's.
pub fn exec_random() -> u64 {
    // SAFETY: getauxval has no preconditions and neither allocates nor locks.
    let address = unsafe { libc::getauxval(libc::AT_RANDOM) } as *const [u64; 2];
    if address.is_null() {
        return 0;
    }
    // SAFETY: AT_RANDOM, when present, is the address of 16 bytes on the initial stack that
    // live as long as the process and are never written after start-up (read unaligned:
    // the kernel promises no alignment).
    let [low, high] = unsafe { address.read_unaligned() };
    low ^ high.rotate_left(32)
}

/// A test-and-test-and-set spin lock, used only around rare table inserts.
pub struct SpinLock(AtomicBool);

impl SpinLock {
    /// An unlocked lock.
    pub const fn new() -> SpinLock {
        SpinLock(AtomicBool::new(false))
    }

    /// Takes the lock; the guard releases it.
    pub fn lock(&self) -> SpinGuard<'_> {
        loop {
            if self
                .0
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return SpinGuard(self);
            }
            let mut spins = 0u32;
            while self.0.load(Ordering::Relaxed) {
                spins += 1;
                if spins > 64 {
                    // SAFETY: sched_yield has no preconditions.
                    unsafe { libc::sched_yield() };
                    spins = 0;
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }

    /// Forgets any holder: for the child after `fork`, where the holder no longer exists.
    pub fn reset(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Releases a [`SpinLock`] when dropped.
pub struct SpinGuard<'a>(&'a SpinLock);

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        (self.0).0.store(false, Ordering::Release);
    }
}

/// Reads an environment variable without allocating (libc's `getenv`).
pub fn getenv(name: &std::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv returns null or a pointer into the environment, which lives for the
    // process; we only read it.
    let value = unsafe { libc::getenv(name.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: a non-null getenv result is a NUL-terminated string.
    Some(unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes())
}

/// Parses a decimal `u64`.
pub fn parse_u64(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 {
        return None;
    }
    let mut value = 0u64;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(b - b'0');
    }
    Some(value)
}

/// A fixed-capacity byte buffer on the stack, for building paths without allocating.
pub struct StackBuf<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        StackBuf {
            bytes: [0; N],
            len: 0,
        }
    }

    /// Appends, returning false when it does not fit (one byte is kept for a NUL).
    pub fn push(&mut self, data: &[u8]) -> bool {
        if self.len + data.len() >= N {
            return false;
        }
        self.bytes[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
        true
    }

    /// Appends a number in decimal.
    pub fn push_u64(&mut self, mut value: u64) -> bool {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.push(&digits[at..])
    }

    /// The contents, NUL-terminated for system calls.
    pub fn as_c_ptr(&mut self) -> *const libc::c_char {
        self.bytes[self.len] = 0;
        self.bytes.as_ptr().cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_high_water_mark_is_read_from_status() {
        let status = b"Name:\tpython\nVmPeak:\t  20000 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(1234 * 1024));
        assert_eq!(parse_vm_hwm(b"Name:\tkthread\n"), None);
        let own = vm_hwm_bytes().expect("this process has a VmHWM");
        assert!(own > 1 << 20, "{own}");
    }
}
