//! The tree's heap counter (`memwarden-tree/1`): one small file shared by every profiled
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
//! | 8 | version (1) |
//! | 16 | live bytes of the tree, requested (`i64`) |
//! | 24 | the tree's heap peak: highest live less reserved bytes (`i64`), lowered by the bytes of large ranges it counted as written and a later measure found untouched |
//! | 32 | when that peak was last raised, ns since the epoch |
//! | 40 | images counted so far (a process counts again after each `exec`) |
//! | 48 | shares taken back by the runner (processes that could not do it themselves) |
//! | 56 | of the live bytes, those in large ranges untouched when last measured (`i64`) |
//! | 64 | highest live bytes, requested (`i64`) |
//! | 72 | pid of the process whose allocation last raised the peak |
//! | 80 | when the peak was last raised, in time-stamp counter cycles |
//!
//! All fields are little-endian 8-byte words, updated with atomic instructions.

use std::path::Path;

/// The file's name in the capture directory (not a `*.mwcap`, so never read as a capture).
pub const FILE_NAME: &str = "tree.mwtree";
/// First eight bytes of the file.
pub const MAGIC: [u8; 8] = *b"MWTREE\0\x01";
/// Format version, in [`field::VERSION`].
pub const VERSION: u64 = 1;
/// Length of the file: one page.
pub const SIZE: u64 = 4096;

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

/// The bytes of a fresh counter (zeros but for the magic and the version), as the runner
/// writes them before the command starts.
pub fn initial_bytes() -> Vec<u8> {
    let mut bytes = vec![0u8; SIZE as usize];
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
        if bytes.len() < 88 || bytes[..8] != MAGIC {
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
        }
    }

    /// Reads `<dir>/`[`FILE_NAME`]; `Ok(None)` when there is none (captures written by a
    /// memwarden that did not keep one).
    pub fn read_dir(dir: &Path) -> Result<Option<TreeHeap>, TreeError> {
        let path = dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => TreeHeap::parse(&path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TreeError::Io { path, source }),
        }
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
        newer[field::VERSION] = 2;
        assert!(TreeHeap::parse(path, &newer)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
    }
}
