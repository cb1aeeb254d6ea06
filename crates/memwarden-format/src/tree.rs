//! The tree's heap counter (`memwarden-tree/2`): one small file shared by every profiled
//! process of a run.
//!
//! Each process keeps its own heap in its capture ([`crate::capture`]); summing their peaks
//! overstates the tree whenever processes peak at different moments (200 children run one
//! after another would count 200 peaks). So the runner creates [`FILE_NAME`] in the capture
//! directory, every profiled process maps it shared, and each recorded allocation and each
//! release of a recorded block adds its weight to one counter of live bytes, the tree's
//! heap, whose high-water mark the processes keep beside it. A process forked without `exec`
//! shares the parent's mapping; an `exec`'d one maps the file again at start.
//!
//! The tree's heap is committed bytes: live bytes less the untouched pages of large ranges
//! (`capture::field::RESERVED_BYTES`, as each process last measured them; a range not
//! measured yet counts as written, and one found untouched later lowers a peak it was
//! counted in); without such measurements the two are the same.
//!
//! A process's share of the counters is its capture's live bytes and the reserved bytes it
//! reported to the counter (`capture::field::LIVE_BYTES`, `capture::field::TREE_RESERVED_BYTES`)
//! while its capture's [`crate::capture::field::TREE_STATE`] is
//! [`crate::capture::tree_state::COUNTED`]. When it ends, that share is taken back out, once:
//! by the process itself as it exits (`exit`, `_exit`), else by the runner when it sees the
//! process gone (killed by a signal, replaced by `exec`). See docs/capture-format.md.
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `MWTREE\0\x01` |
//! | 8 | version (2) |
//! | 16 | live bytes of the tree, requested (`i64`) |
//! | 24 | the tree's heap peak: highest live less reserved bytes (`i64`), lowered by the bytes of large ranges it counted as written and a later measure found untouched |
//! | 32 | when that peak was last raised, ns since the epoch |
//! | 40 | images counted so far (a process counts again after each `exec`) |
//! | 48 | shares taken back by the runner (processes that could not do it themselves) |
//! | 56 | of the live bytes, those in large ranges untouched when last measured (`i64`) |
//! | 64 | highest live bytes, requested (`i64`) |
//! | 72 | pid of the process whose allocation last raised the peak |
//! | 80 | when the peak was last raised, in time-stamp counter cycles |
//! | 88 | images that loaded the profiler with this file mapped (whether or not they ever recorded anything, and so opened a capture) |
//! | 96 | exit records claimed (may exceed [`EXIT_SLOTS`]: those past it were not kept) |
//! | 104 | highest live bytes since code in the tree last set a mark (`i64`; `memwarden_tree_mark`, which the pytest plugin reads a test's tree peak with) |
//! | 4096 | [`EXIT_SLOTS`] exit records of [`EXIT_RECORD_SIZE`] bytes ([`ExitMark`]) |
//!
//! All fields are little-endian 8-byte words, updated with atomic instructions.
//!
//! **Exit records.** Every profiled image writes one record as it ends (`exit`, `_exit`,
//! `os._exit`): its pid, the kernel's high-water mark of its resident set (`VmHWM`, read
//! from `/proc/self/status` by the process itself) and the time. So a process too short for
//! the monitor to read, or one that is not memwarden's child (whose `ru_maxrss` memwarden
//! never gets), still has a measured peak RSS. A record is claimed by an atomic add on
//! [`field::EXITS`], filled, and published by writing the pid last: a record whose pid is 0
//! was never finished (the process was killed while writing it) and is skipped. The file is
//! sparse: records take space only once written.

use std::path::Path;

/// The file's name in the capture directory (not a `*.mwcap`, so never read as a capture).
pub const FILE_NAME: &str = "tree.mwtree";
/// First eight bytes of the file.
pub const MAGIC: [u8; 8] = *b"MWTREE\0\x01";
/// Format version, in [`field::VERSION`].
pub const VERSION: u64 = 2;
/// Length of the header: one page.
pub const HEADER_SIZE: u64 = 4096;
/// Exit records kept; later ones are counted in [`field::EXITS`] but not kept.
pub const EXIT_SLOTS: u64 = 1 << 16;
/// Size of one exit record: pid, `VmHWM` in bytes, end time in ns since the epoch (three
/// little-endian 8-byte words).
pub const EXIT_RECORD_SIZE: u64 = 24;
/// Length of the file (sparse): the header and the exit records.
pub const SIZE: u64 = HEADER_SIZE + EXIT_SLOTS * EXIT_RECORD_SIZE;

/// Field offsets (each a little-endian 8-byte word).
pub mod field {
    /// [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// [`super::VERSION`].
    pub const VERSION: usize = 8;
    /// Bytes requested and live in the tree now (`i64`; estimated in sampled mode).
    pub const LIVE_BYTES: usize = 16;
    /// Highest [`LIVE_BYTES`] less [`RESERVED_BYTES`] seen (`i64`): the tree's heap peak.
    pub const PEAK_BYTES: usize = 24;
    /// Wall-clock time [`PEAK_BYTES`] was last raised, ns since the Unix epoch.
    pub const PEAK_NS: usize = 32;
    /// Process images that began counting in the tree.
    pub const IMAGES: usize = 40;
    /// Shares the runner took back for processes that ended without doing it.
    pub const RUNNER_WITHDRAWALS: usize = 48;
    /// Of [`LIVE_BYTES`], bytes in large ranges whose pages were untouched when last
    /// measured (`i64`).
    pub const RESERVED_BYTES: usize = 56;
    /// Highest [`LIVE_BYTES`] seen (`i64`): the peak of requested bytes.
    pub const REQUESTED_PEAK_BYTES: usize = 64;
    /// Process id of the process whose allocation last raised [`PEAK_BYTES`].
    pub const PEAK_PID: usize = 72;
    /// [`PEAK_NS`] in time-stamp counter cycles (comparable with the cycles at which each
    /// process tracked its ranges).
    pub const PEAK_CYCLES: usize = 80;
    /// Images that loaded the profiler with this file mapped.
    pub const LOADED: usize = 88;
    /// Exit records claimed.
    pub const EXITS: usize = 96;
    /// The highest [`LIVE_BYTES`] since code in one of the tree's processes last set a mark
    /// (`memwarden_tree_mark`, the in-process API); since the file was made until then.
    /// The runner does not read it: marks never change its figures.
    pub const MARK_PEAK_BYTES: usize = 104;
}

/// One exit record: a profiled image's own high-water mark, written as it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitMark {
    /// Process id.
    pub pid: u32,
    /// The kernel's high-water mark of its resident set (`VmHWM`), in bytes.
    pub vm_hwm_bytes: u64,
    /// When it ended, ns since the Unix epoch.
    pub end_ns: u64,
}

/// The figures of a tree counter, read back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeHeap {
    /// Bytes requested and live now.
    pub live_bytes: i64,
    /// Of those, bytes untouched when last measured.
    pub reserved_bytes: i64,
    /// The tree's heap peak (committed: live less reserved).
    pub peak_bytes: i64,
    /// The peak of requested bytes.
    pub requested_peak_bytes: i64,
    /// The process whose allocation last raised the peak (0: none).
    pub peak_pid: u32,
    /// When it was reached, ns since the epoch (0: never raised).
    pub peak_ns: u64,
    /// Process images that counted.
    pub images: u64,
    /// Shares the runner took back.
    pub runner_withdrawals: u64,
    /// Images that loaded the profiler.
    pub loaded: u64,
    /// Exit records claimed.
    pub exits: u64,
}

/// Why a tree counter file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The file could not be read.
    #[error("cannot read the tree counter {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a tree counter, or a newer one.
    #[error("{path} is not a usable memwarden tree counter: {problem}")]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The header of a fresh counter (zeros but for the magic and the version), as the runner
/// writes it before the command starts; the file is then extended to [`SIZE`] (sparse).
pub fn initial_bytes() -> Vec<u8> {
    let mut bytes = vec![0u8; HEADER_SIZE as usize];
    bytes[field::MAGIC..field::MAGIC + 8].copy_from_slice(&MAGIC);
    bytes[field::VERSION..field::VERSION + 8].copy_from_slice(&VERSION.to_le_bytes());
    bytes
}

impl TreeHeap {
    /// Parses the file's bytes.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<TreeHeap, TreeError> {
        let invalid = |problem: String| TreeError::Invalid {
            path: path.to_owned(),
            problem,
        };
        if bytes.len() < HEADER_SIZE as usize || bytes[..8] != MAGIC {
            return Err(invalid(
                "it does not start with the tree counter's signature".into(),
            ));
        }
        let word = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let version = word(field::VERSION);
        if version != VERSION {
            return Err(invalid(format!(
                "format version {version}; this memwarden reads version {VERSION}"
            )));
        }
        Ok(TreeHeap::from_fields(word))
    }

    /// The figures, each read by `word(field offset)` (from the file's bytes, or from the
    /// live shared page).
    pub fn from_fields(word: impl Fn(usize) -> u64) -> TreeHeap {
        TreeHeap {
            live_bytes: word(field::LIVE_BYTES) as i64,
            reserved_bytes: word(field::RESERVED_BYTES) as i64,
            peak_bytes: word(field::PEAK_BYTES) as i64,
            requested_peak_bytes: word(field::REQUESTED_PEAK_BYTES) as i64,
            peak_pid: word(field::PEAK_PID) as u32,
            peak_ns: word(field::PEAK_NS),
            images: word(field::IMAGES),
            runner_withdrawals: word(field::RUNNER_WITHDRAWALS),
            loaded: word(field::LOADED),
            exits: word(field::EXITS),
        }
    }

    /// The finished exit records in `bytes` (the file's bytes, from its start; a file cut
    /// short yields the records it holds).
    pub fn exit_marks(&self, bytes: &[u8]) -> Vec<ExitMark> {
        let word = |at: usize| -> Option<u64> {
            let slice = bytes.get(at..at + 8)?;
            let mut word = [0u8; 8];
            word.copy_from_slice(slice);
            Some(u64::from_le_bytes(word))
        };
        (0..self.exits.min(EXIT_SLOTS))
            .map(|slot| (HEADER_SIZE + slot * EXIT_RECORD_SIZE) as usize)
            .filter_map(|at| {
                let pid = word(at)?;
                (pid != 0).then_some(ExitMark {
                    pid: pid as u32,
                    vm_hwm_bytes: word(at + 8)?,
                    end_ns: word(at + 16)?,
                })
            })
            .collect()
    }

    /// Reads `<dir>/`[`FILE_NAME`] and its exit records; `Ok(None)` when there is none
    /// (captures written by a memwarden that did not keep one). Only the records in use are
    /// read, not the whole sparse file.
    pub fn read_dir(dir: &Path) -> Result<Option<(TreeHeap, Vec<ExitMark>)>, TreeError> {
        use std::io::Read;
        let path = dir.join(FILE_NAME);
        let io = |source| TreeError::Io {
            path: path.clone(),
            source,
        };
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io(source)),
        };
        let mut bytes = vec![0u8; HEADER_SIZE as usize];
        file.read_exact(&mut bytes).map_err(io)?;
        let heap = TreeHeap::parse(&path, &bytes)?;
        let records = heap.exits.min(EXIT_SLOTS) * EXIT_RECORD_SIZE;
        file.take(records).read_to_end(&mut bytes).map_err(io)?;
        let marks = heap.exit_marks(&bytes);
        Ok(Some((heap, marks)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_counter_reads_as_zero_and_damage_is_refused() {
        let path = Path::new("tree.mwtree");
        let bytes = initial_bytes();
        assert_eq!(
            TreeHeap::parse(path, &bytes).expect("fresh"),
            TreeHeap::default()
        );
        let mut other = bytes.clone();
        other[0] = b'X';
        assert!(TreeHeap::parse(path, &other).is_err());
        let mut newer = bytes;
        newer[field::VERSION] = 3;
        assert!(TreeHeap::parse(path, &newer)
            .unwrap_err()
            .to_string()
            .contains("version 3"));
    }

    #[test]
    fn exit_records_are_read_when_finished_and_kept() {
        let mut bytes = initial_bytes();
        bytes.resize((HEADER_SIZE + 3 * EXIT_RECORD_SIZE) as usize, 0);
        let put = |bytes: &mut Vec<u8>, at: u64, value: u64| {
            bytes[at as usize..at as usize + 8].copy_from_slice(&value.to_le_bytes());
        };
        put(&mut bytes, field::EXITS as u64, 3);
        for (slot, pid) in [(0, 41), (1, 0), (2, 43)] {
            let at = HEADER_SIZE + slot * EXIT_RECORD_SIZE;
            put(&mut bytes, at, pid);
            put(&mut bytes, at + 8, pid << 20);
            put(&mut bytes, at + 16, 7);
        }
        let heap = TreeHeap::parse(Path::new("t"), &bytes).expect("parsed");
        let pids: Vec<(u32, u64)> = heap
            .exit_marks(&bytes)
            .iter()
            .map(|m| (m.pid, m.vm_hwm_bytes))
            .collect();
        assert_eq!(
            pids,
            [(41, 41 << 20), (43, 43 << 20)],
            "the unfinished one is skipped"
        );
        assert!(heap.exit_marks(&bytes[..HEADER_SIZE as usize + 30]).len() == 1);
    }
}
