//! The run's tree counter (`memwarden_format::tree`) as the runner holds it: created in the
//! capture directory before the command starts, read at every monitor tick, and cleared of
//! the share of a process that ended without taking it out itself (killed by a signal,
//! replaced by `exec`), so that memory the kernel already took back never adds to a later
//! peak of the tree.
#![allow(unsafe_code)] // Shared atomics in a file mapped by every profiled process.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use memwarden_format::capture::{self, tree_state};
use memwarden_format::tree::{self, field, TreeHeap};
use memwarden_monitor::procfs;

/// The first page of a file, mapped shared.
#[derive(Debug)]
struct Page(NonNull<u8>);

/// Length of a [`Page`]; the tree file's whole length and a capture's header.
const PAGE: usize = 4096;
const _: () = assert!(tree::HEADER_SIZE as usize == PAGE && capture::HEADER_SIZE as usize == PAGE);

impl Page {
    /// Maps the first page of `file`, which must be at least that long (else touching the
    /// mapping would raise SIGBUS).
    fn map(file: &File) -> io::Result<Page> {
        if file.metadata()?.len() < PAGE as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shorter than one page",
            ));
        }
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of a descriptor we hold, checked long enough above;
        // the kernel picks the address.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(address.cast())
            .map(Page)
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= PAGE);
        // SAFETY: inside the mapped page (checked above) and 8-byte aligned (the page is
        // page-aligned); the other processes touch these words only through atomics too.
        unsafe { &*self.0.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn i64_at(&self, offset: usize) -> &AtomicI64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= PAGE);
        // SAFETY: as in `u64_at`.
        unsafe { &*self.0.as_ptr().add(offset).cast::<AtomicI64>() }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: our own mapping of PAGE bytes, no longer referenced (borrows of its words
        // cannot outlive `self`).
        unsafe { libc::munmap(self.0.as_ptr().cast(), PAGE) };
    }
}

/// The tree counter of one run.
#[derive(Debug)]
pub struct SharedTree {
    page: Page,
}

impl SharedTree {
    /// Creates `<dir>/tree.mwtree` (replacing one left by an earlier run in a kept
    /// directory) and maps it.
    pub fn create(dir: &Path) -> io::Result<SharedTree> {
        let path = dir.join(tree::FILE_NAME);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(&tree::initial_bytes())?;
        // The exit records follow the header; the file stays sparse until they are written.
        file.set_len(tree::SIZE)?;
        let page = Page::map(&file)?;
        Ok(SharedTree { page })
    }

    /// Maps the counter an earlier [`SharedTree::create`] made in `dir`.
    pub fn open(dir: &Path) -> io::Result<SharedTree> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(tree::FILE_NAME))?;
        let page = Page::map(&file)?;
        if page.u64_at(field::MAGIC).load(Ordering::Acquire) != u64::from_le_bytes(tree::MAGIC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a memwarden tree counter",
            ));
        }
        Ok(SharedTree { page })
    }

    /// Takes out the share of every image of `dir` that ended without doing it (killed by a
    /// signal, replaced by `exec`), as the runner's ticks do, for code that measures the
    /// tree without a runner (the pytest plugin, between tests). An image has ended when a
    /// later capture of the same pid exists (it `exec`'d) or its process is gone or a
    /// zombie. Returns how many shares were taken out.
    pub fn withdraw_ended(&self, dir: &Path) -> io::Result<usize> {
        let mut latest: std::collections::HashMap<u32, u64> = Default::default();
        let mut images = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some((pid, seq)) = capture::parse_file_name(&path) else {
                continue;
            };
            let newest = latest.entry(pid).or_insert(seq);
            *newest = (*newest).max(seq);
            images.push((pid, seq, path));
        }
        let mut withdrawn = 0;
        for (pid, seq, path) in images {
            let replaced = latest[&pid] != seq;
            if (replaced || process_start(pid).is_none()) && self.withdraw(&path)?.is_some() {
                withdrawn += 1;
            }
        }
        Ok(withdrawn)
    }

    /// The counter's figures now.
    pub fn figures(&self) -> TreeHeap {
        TreeHeap::from_fields(|offset| self.page.u64_at(offset).load(Ordering::Acquire))
    }

    /// Takes the share of the image that wrote `capture` out of the tree, if it still counts
    /// there: call only once that image has ended. Its capture's state moves from counted to
    /// withdrawn by compare-and-swap, so a share is never taken twice (the process itself
    /// may have done it). Returns the bytes taken out.
    pub fn withdraw(&self, capture: &Path) -> io::Result<Option<i64>> {
        let file = OpenOptions::new().read(true).write(true).open(capture)?;
        let header = Page::map(&file)?;
        if header.u64_at(capture::field::MAGIC).load(Ordering::Acquire)
            != u64::from_le_bytes(capture::MAGIC)
        {
            return Ok(None);
        }
        let won = header
            .u64_at(capture::field::TREE_STATE)
            .compare_exchange(
                tree_state::COUNTED,
                tree_state::WITHDRAWN_BY_RUNNER,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok();
        if !won {
            return Ok(None);
        }
        let held = header
            .i64_at(capture::field::LIVE_BYTES)
            .load(Ordering::Acquire);
        let reserved = header
            .i64_at(capture::field::TREE_RESERVED_BYTES)
            .load(Ordering::Acquire);
        self.page
            .i64_at(field::LIVE_BYTES)
            .fetch_sub(held, Ordering::AcqRel);
        self.page
            .i64_at(field::RESERVED_BYTES)
            .fetch_sub(reserved, Ordering::AcqRel);
        self.page
            .u64_at(field::RUNNER_WITHDRAWALS)
            .fetch_add(1, Ordering::Relaxed);
        Ok(Some(held))
    }
}

/// The start time of process `pid` (clock ticks after boot, `/proc/PID/stat`'s field 22)
/// while it runs; `None` once it is gone or a zombie. Two readings that differ mean the pid
/// now belongs to another process.
pub fn process_start(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    procfs::parse_stat(&text)
        .filter(procfs::Stat::running)?
        .start_ticks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_taken_out_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = SharedTree::create(dir.path()).expect("created");
        tree.page
            .i64_at(field::LIVE_BYTES)
            .store(700, Ordering::Relaxed);
        let capture_path = dir.path().join("1-0.mwcap");
        let mut header = vec![0u8; PAGE];
        header[..8].copy_from_slice(&capture::MAGIC);
        let put = |header: &mut Vec<u8>, at: usize, value: u64| {
            header[at..at + 8].copy_from_slice(&value.to_le_bytes());
        };
        put(&mut header, capture::field::LIVE_BYTES, 300);
        put(&mut header, capture::field::TREE_STATE, tree_state::COUNTED);
        std::fs::write(&capture_path, &header).expect("capture");
        assert_eq!(tree.withdraw(&capture_path).expect("read"), Some(300));
        assert_eq!(tree.withdraw(&capture_path).expect("read"), None);
        let figures = tree.figures();
        assert_eq!((figures.live_bytes, figures.runner_withdrawals), (400, 1));
        let bytes = std::fs::read(&capture_path).expect("capture");
        assert_eq!(
            bytes[capture::field::TREE_STATE],
            tree_state::WITHDRAWN_BY_RUNNER as u8
        );
    }

    #[test]
    fn this_process_runs_and_a_missing_one_does_not() {
        let start = process_start(std::process::id()).expect("this process");
        assert_eq!(process_start(std::process::id()), Some(start));
        assert_eq!(process_start(u32::MAX - 1), None);
    }
}
