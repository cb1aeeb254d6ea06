//! The capture file: what one profiled process leaves behind (`memwarden-capture/2`).
//!
//! The preload library (`memwarden-preload`) maps this file shared into the process it
//! profiles and updates it in place: no write system call, no buffer to flush, no I/O on the
//! target's allocation path. Because the pages belong to the file, everything written up to
//! the instant a process dies (SIGKILL, the OOM killer, `os._exit`) is still there for the
//! runner to read. The file is sparse: only the parts in use take space.
//!
//! Rather than a stream of events, the file holds the aggregates the analysis needs, so its
//! size is bounded by the number of distinct stacks, not by run time:
//!
//! | region   | offset               | content                                             |
//! |----------|----------------------|-----------------------------------------------------|
//! | header   | 0                    | [`field`] offsets, all little-endian `u64`           |
//! | strings  | [`STRINGS_OFFSET`]   | `u16` length + the name's bytes, referenced by offset |
//! | frames   | [`FRAMES_OFFSET`]    | [`FRAME_SIZE`]-byte records: file, function, line    |
//! | nodes    | [`NODES_OFFSET`]     | calling-context tree: `u32` parent node, `u32` frame |
//! | counters | [`COUNTERS_OFFSET`]  | per node: live, at peak, at exit, allocated, count, reserved, committed at peak and at exit |
//!
//! A stack is a node: its frames are found by following parents to the root (node 0). Only
//! records below the header's `*_used` counts are valid; the writer publishes a record
//! before it raises the count, so a process killed mid-update leaves a readable file.
//!
//! Strings are a name's bytes as the system knows it, which need not be UTF-8: a file name
//! as `os.fsencode` gives it (a Python `str` with surrogate escapes U+DC80–U+DCFF back to
//! the bytes they stand for; any other lone surrogate as its three `surrogatepass` bytes).
//! The reader turns them into text with [`crate::names::escape_bytes`], so [`Frame`] names
//! are always valid UTF-8 and two different names stay two frames.
//! Documented for users in `docs/capture-format.md`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::names::escape_bytes;

/// First eight bytes of every capture.
pub const MAGIC: [u8; 8] = *b"MWCAP\0\0\x01";
/// Format version, in [`field::VERSION`] (2: committed and reserved bytes, [`counter`]).
pub const VERSION: u64 = 2;
/// File name suffix of captures.
pub const SUFFIX: &str = "mwcap";

/// `PID-N.mwcap` (the N-th image of process PID, counting its `exec`s and forks) → (PID, N).
pub fn parse_file_name(path: &Path) -> Option<(u32, u64)> {
    if path.extension()? != SUFFIX {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    let (pid, seq) = stem.split_once('-')?;
    Some((pid.parse().ok()?, seq.parse().ok()?))
}

/// Size of the header region.
pub const HEADER_SIZE: u64 = 4096;
/// Capacity of the string region in bytes.
pub const STRINGS_CAPACITY: u64 = 8 << 20;
/// Longest string kept in bytes (longer ones are cut, at a UTF-8 character boundary when
/// the name is UTF-8 there).
pub const MAX_STRING: usize = 1024;
/// Most distinct frames.
pub const MAX_FRAMES: u64 = 1 << 18;
/// Size of one frame record: `u32` file string, `u32` function string, `u32` line, `u32` kind.
pub const FRAME_SIZE: u64 = 16;
/// Most distinct stacks (calling-context nodes).
pub const MAX_NODES: u64 = 1 << 18;
/// Size of one node record: `u32` parent, `u32` frame.
pub const NODE_SIZE: u64 = 8;
/// Size of one node's counters: eight `u64`/`i64` ([`counter`]).
pub const COUNTER_SIZE: u64 = 64;

/// Offset of the string region.
pub const STRINGS_OFFSET: u64 = HEADER_SIZE;
/// Offset of the frame records.
pub const FRAMES_OFFSET: u64 = STRINGS_OFFSET + STRINGS_CAPACITY;
/// Offset of the node records.
pub const NODES_OFFSET: u64 = FRAMES_OFFSET + MAX_FRAMES * FRAME_SIZE;
/// Offset of the per-node counters.
pub const COUNTERS_OFFSET: u64 = NODES_OFFSET + MAX_NODES * NODE_SIZE;
/// Full (sparse) length of a capture file.
pub const FILE_SIZE: u64 = COUNTERS_OFFSET + MAX_NODES * COUNTER_SIZE;

/// Header field offsets (each a little-endian `u64`).
pub mod field {
    /// [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// [`super::VERSION`].
    pub const VERSION: usize = 8;
    /// Process id.
    pub const PID: usize = 16;
    /// Parent process id.
    pub const PPID: usize = 24;
    /// 1 sampled, 2 exact.
    pub const MODE: usize = 32;
    /// Mean sampling interval in bytes (sampled mode).
    pub const SAMPLE_BYTES: usize = 40;
    /// `sys.hexversion` of the interpreter whose frames were read; 0 if none.
    pub const PYTHON_HEXVERSION: usize = 48;
    /// [`super::flag`] bits.
    pub const FLAGS: usize = 56;
    /// Bytes used in the string region.
    pub const STRINGS_USED: usize = 64;
    /// Frame records in use.
    pub const FRAMES_USED: usize = 72;
    /// Node records in use.
    pub const NODES_USED: usize = 80;
    /// Bytes requested and live now (estimated in sampled mode).
    pub const LIVE_BYTES: usize = 88;
    /// Highest requested live bytes seen (the peak as tracemalloc or memray count it).
    pub const PEAK_BYTES: usize = 96;
    /// Requested live bytes when the peak snapshot (counter `AT_PEAK`) was last taken.
    pub const PEAK_SNAPSHOT_BYTES: usize = 104;
    /// Requested live bytes when the exit snapshot (counter `AT_EXIT`) was taken.
    pub const EXIT_SNAPSHOT_BYTES: usize = 112;
    // 120 and 128 are unused: totals of allocations are summed from the node counters.
    /// Allocations that could not be tracked because a table was full.
    pub const DROPPED: usize = 136;
    /// Wall-clock start, nanoseconds since the Unix epoch.
    pub const START_NS: usize = 144;
    /// Wall-clock time of the last peak snapshot.
    pub const PEAK_NS: usize = 152;
    /// Wall-clock time the capture was closed (0 if the process died first).
    pub const END_NS: usize = 160;
    /// String offset + 1 of the executable's path (0: unknown).
    pub const EXE: usize = 168;
    /// [`super::Warning`] code.
    pub const WARNING: usize = 176;
    /// Committed bytes at the peak snapshot: the process's heap peak. The peak snapshot is
    /// the moment the committed heap (requested bytes less the untouched pages of large
    /// tracked ranges, counter `RESERVED`) was highest among those measured.
    pub const COMMITTED_PEAK_BYTES: usize = 184;
    /// Committed bytes at the exit snapshot.
    pub const COMMITTED_EXIT_BYTES: usize = 192;
    /// Bytes of large tracked ranges whose pages were untouched when last measured
    /// (requested but not committed), now: the sum of counter `RESERVED`.
    pub const RESERVED_BYTES: usize = 200;
    /// Residency passes made (`mincore` over the large tracked ranges, at snapshots).
    pub const RESIDENCY_PASSES: usize = 208;
    /// Nanoseconds spent in residency passes and the snapshots they led to.
    pub const RESIDENCY_NS: usize = 216;
    /// glibc's `mallinfo2().fordblks` at the last peak snapshot: bytes free inside malloc's
    /// own arenas (the top chunk included), resident (once touched) but no part of the heap.
    /// Valid when [`super::flag::MALLOC_INFO`] is set.
    pub const MALLOC_FREE_AT_PEAK: usize = 224;
    /// glibc's `mallinfo2().arena` at the last peak snapshot: bytes malloc got for its
    /// arenas (`sbrk` and its mapped heaps), free or in use. Valid with
    /// [`super::flag::MALLOC_INFO`].
    pub const MALLOC_ARENA_AT_PEAK: usize = 232;
    /// glibc's `mallinfo2().hblkhd` at the last peak snapshot: bytes in the chunks malloc
    /// mapped one by one (its large blocks). Valid with [`super::flag::MALLOC_INFO`].
    pub const MALLOC_MMAPPED_AT_PEAK: usize = 240;
    /// Wall-clock time (ns since the epoch) the `MALLOC_*_AT_PEAK` figures were read: the
    /// last peak snapshot's ([`PEAK_NS`]), or an earlier one's when `mallinfo2` was slow
    /// (many free chunks) and skipped at the later ones to bound its cost.
    pub const MALLOC_READ_NS: usize = 248;
    /// The highest requested live bytes since code in the process last set a mark
    /// (`memwarden_heap_mark`, the in-process API the Python package reads a block's heap
    /// peak with); from the capture's start until then.
    pub const MARK_PEAK_BYTES: usize = 256;
    /// Whether this image's live bytes are counted in the run's tree counter
    /// ([`crate::tree`]): one of [`super::tree_state`]. Offsets 1024 to 1087 are kept for
    /// the tree.
    pub const TREE_STATE: usize = 1024;
    /// Reserved bytes (`i64`) this image has added to the tree counter's own
    /// (`tree::field::RESERVED_BYTES`), taken out with its share.
    pub const TREE_RESERVED_BYTES: usize = 1032;
}

/// Values of [`field::TREE_STATE`]. An image's share of the tree counter is its
/// [`field::LIVE_BYTES`] and [`field::TREE_RESERVED_BYTES`] while
/// [`COUNTED`](tree_state::COUNTED); whoever moves it out of that state (with a
/// compare-and-swap) takes the share out of the counter, exactly once.
pub mod tree_state {
    /// No tree counter (none in the capture directory, or an older runner).
    pub const NONE: u64 = 0;
    /// Every recorded allocation and release is added to the tree counter.
    pub const COUNTED: u64 = 1;
    /// The process took its share back as it exited (`exit`, `_exit`).
    pub const WITHDRAWN: u64 = 2;
    /// The runner took it back, after the process ended without doing so (a signal, `exec`).
    pub const WITHDRAWN_BY_RUNNER: u64 = 3;
}

/// Bits of [`field::FLAGS`].
pub mod flag {
    /// Python frames were read in this process.
    pub const PYTHON: u64 = 1;
    /// The process closed the capture itself (normal exit).
    pub const CLOSED: u64 = 1 << 1;
    /// An exit snapshot was taken when the interpreter began to finalize.
    pub const EXIT_SNAPSHOT: u64 = 1 << 2;
    /// glibc's `mallinfo2` was read at the last peak snapshot: the `MALLOC_*_AT_PEAK`
    /// header fields hold its figures (clear with a glibc older than 2.33, which lacks it).
    pub const MALLOC_INFO: u64 = 1 << 3;
}

/// Counter offsets within a node's [`COUNTER_SIZE`] bytes.
pub mod counter {
    /// Bytes live now, allocated at this stack (`i64`).
    pub const LIVE: u64 = 0;
    /// Bytes live at the peak snapshot.
    pub const AT_PEAK: u64 = 8;
    /// Bytes live at the exit snapshot.
    pub const AT_EXIT: u64 = 16;
    /// Bytes allocated over the run.
    pub const ALLOCATED: u64 = 24;
    /// Allocations recorded.
    pub const COUNT: u64 = 32;
    /// Of `LIVE`, bytes in large ranges (anonymous mappings, malloc blocks of 1 MiB or
    /// more) whose pages were untouched when last measured: requested, not committed.
    pub const RESERVED: u64 = 40;
    /// Committed bytes (`LIVE` less `RESERVED`) at the peak snapshot.
    pub const COMMITTED_AT_PEAK: u64 = 48;
    /// Committed bytes at the exit snapshot.
    pub const COMMITTED_AT_EXIT: u64 = 56;
}

/// Frame kinds (the `kind` word of a frame record).
pub mod kind {
    /// A Python frame: file, function (qualified name), line.
    pub const PYTHON: u32 = 0;
    /// A thread with no Python frames of its own; `function` holds its name.
    pub const THREAD: u32 = 1;
    /// A process without Python frames; `file` holds the executable.
    pub const NATIVE: u32 = 2;
    /// The stack was deeper than the reader walks; outer frames are missing.
    pub const TRUNCATED: u32 = 3;
    /// The innermost frame of memory taken for CPython's small objects: an anonymous,
    /// writable mapping exactly the size of a pymalloc arena of the running interpreter
    /// (1 MiB on 3.10+, 256 KiB before), made while Python runs. `file` is
    /// [`super::SMALL_OBJECTS_FILE`], `function` [`super::SMALL_OBJECTS_FUNCTION`], line 0;
    /// the frames outside it are the stack whose allocation needed the arena.
    pub const SMALL_OBJECTS: u32 = 4;
}

/// `file` of the [`kind::SMALL_OBJECTS`] frame.
pub const SMALL_OBJECTS_FILE: &str = "<python objects>";
/// `function` of the [`kind::SMALL_OBJECTS`] frame.
pub const SMALL_OBJECTS_FUNCTION: &str = "[small objects]";

/// Why a capture has no Python frames though the process ran Python.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Warning {
    /// Nothing to say.
    None,
    /// A CPython minor version without a generated layout.
    UnknownPython,
    /// A free-threaded CPython build.
    FreeThreaded,
    /// The interpreter's structures did not look as the layout says.
    LayoutMismatch,
    /// A code this reader does not know.
    Other(u64),
}

impl Warning {
    /// The code stored in [`field::WARNING`].
    pub const fn code(self) -> u64 {
        match self {
            Warning::None => 0,
            Warning::UnknownPython => 1,
            Warning::FreeThreaded => 2,
            Warning::LayoutMismatch => 3,
            Warning::Other(code) => code,
        }
    }

    /// Reads a stored code.
    pub const fn from_code(code: u64) -> Warning {
        match code {
            0 => Warning::None,
            1 => Warning::UnknownPython,
            2 => Warning::FreeThreaded,
            3 => Warning::LayoutMismatch,
            other => Warning::Other(other),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::None => f.write_str("none"),
            Warning::UnknownPython => f.write_str(
                "this CPython version has no frame layout in memwarden (3.10 to 3.13 do); memory is attributed to the process only",
            ),
            Warning::FreeThreaded => f.write_str(
                "free-threaded CPython is not supported yet; memory is attributed to the process only",
            ),
            Warning::LayoutMismatch => f.write_str(
                "the interpreter's structures did not match memwarden's layout for its version; Python frames were not read",
            ),
            Warning::Other(code) => write!(f, "unknown warning code {code}"),
        }
    }
}

/// A frame as the analysis sees it. Names are text in the [`crate::names`] scheme.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    /// File (Python), executable (native), or `<thread>`.
    pub file: String,
    /// Function (qualified name), or the thread's name.
    pub function: String,
    /// Line number; 0 when there is none.
    pub line: u32,
    /// One of [`kind`].
    pub kind: u32,
}

/// One stack's counters. `live`, `at_peak` and `at_exit` are requested bytes; the
/// committed ones leave out the untouched pages of large ranges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Live now (or at death).
    pub live: i64,
    /// Live at the peak snapshot.
    pub at_peak: i64,
    /// Live at the exit snapshot.
    pub at_exit: i64,
    /// Of `live`, bytes untouched when last measured.
    pub reserved: i64,
    /// Committed at the peak snapshot.
    pub committed_at_peak: i64,
    /// Committed at the exit snapshot.
    pub committed_at_exit: i64,
    /// Allocated over the run.
    pub allocated: u64,
    /// Allocations recorded.
    pub count: u64,
}

/// A capture read back and checked.
#[derive(Clone, Debug)]
pub struct Capture {
    /// The file it came from.
    pub path: PathBuf,
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// True for exact mode.
    pub exact: bool,
    /// Mean sampling interval.
    pub sample_bytes: u64,
    /// `sys.hexversion`, when Python frames were read.
    pub python_hexversion: Option<u64>,
    /// [`flag`] bits.
    pub flags: u64,
    /// Header [`field::LIVE_BYTES`].
    pub live_bytes: i64,
    /// Header [`field::PEAK_BYTES`].
    pub peak_bytes: i64,
    /// Header [`field::PEAK_SNAPSHOT_BYTES`].
    pub peak_snapshot_bytes: i64,
    /// Header [`field::COMMITTED_PEAK_BYTES`].
    pub committed_peak_bytes: i64,
    /// Header [`field::COMMITTED_EXIT_BYTES`].
    pub committed_exit_bytes: i64,
    /// Header [`field::RESERVED_BYTES`].
    pub reserved_bytes: i64,
    /// Header [`field::RESIDENCY_PASSES`].
    pub residency_passes: u64,
    /// Header [`field::RESIDENCY_NS`].
    pub residency_ns: u64,
    /// Header [`field::MALLOC_FREE_AT_PEAK`]: glibc's free bytes inside its arenas at the
    /// last peak snapshot; `None` when [`flag::MALLOC_INFO`] is clear.
    pub malloc_free_at_peak_bytes: Option<u64>,
    /// Header [`field::MALLOC_ARENA_AT_PEAK`]: bytes of glibc's arenas at the last peak
    /// snapshot; `None` when [`flag::MALLOC_INFO`] is clear.
    pub malloc_arena_at_peak_bytes: Option<u64>,
    /// Header [`field::MALLOC_MMAPPED_AT_PEAK`]: bytes of glibc's mapped chunks at the
    /// last peak snapshot; `None` when [`flag::MALLOC_INFO`] is clear.
    pub malloc_mmapped_at_peak_bytes: Option<u64>,
    /// Header [`field::MALLOC_READ_NS`]: when those figures were read (the last peak
    /// snapshot's time, [`Capture::peak_ns`], unless `mallinfo2` was skipped there to bound
    /// its cost); `None` when [`flag::MALLOC_INFO`] is clear.
    pub malloc_read_ns: Option<u64>,
    /// Bytes allocated over the run (estimated in sampled mode), summed over stacks.
    pub allocated_bytes: u64,
    /// Allocations recorded (sampled ones in sampled mode), summed over stacks.
    pub samples: u64,
    /// Header [`field::DROPPED`].
    pub dropped: u64,
    /// Start, nanoseconds since the epoch.
    pub start_ns: u64,
    /// Last peak snapshot, nanoseconds since the epoch.
    pub peak_ns: u64,
    /// Close time; `None` if the process died without closing.
    pub end_ns: Option<u64>,
    /// Executable path (text in the [`crate::names`] scheme).
    pub exe: Option<String>,
    /// Why Python frames are missing, if they are.
    pub warning: Warning,
    /// Frames by id.
    pub frames: Vec<Frame>,
    /// Node `i`: (parent node, frame id). Node 0 is the root.
    pub nodes: Vec<(u32, u32)>,
    /// Node `i`'s counters.
    pub counters: Vec<Counters>,
}

/// Why a capture could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be read.
    #[error("cannot read capture {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a capture, a newer one, or damaged.
    #[error("{path} is not a usable memwarden capture: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, for a person.
        problem: String,
    },
}

/// The little-endian `u64` at `offset` in `bytes`, when it is all there.
pub fn u64_at(bytes: &[u8], offset: u64) -> Option<u64> {
    let start = usize::try_from(offset).ok()?;
    let chunk = bytes.get(start..start.checked_add(8)?)?;
    Some(u64::from_le_bytes(chunk.try_into().ok()?))
}

/// The little-endian `u32` at `offset` in `bytes`, when it is all there.
pub fn u32_at(bytes: &[u8], offset: u64) -> Option<u32> {
    let start = usize::try_from(offset).ok()?;
    let chunk = bytes.get(start..start.checked_add(4)?)?;
    Some(u32::from_le_bytes(chunk.try_into().ok()?))
}

/// The string stored at `offset` of the used part of the string region (a `u16` length,
/// then the bytes), when it lies wholly inside it.
pub fn string_at(region: &[u8], offset: usize) -> Option<&[u8]> {
    let len = usize::from(u16::from_le_bytes([
        *region.get(offset)?,
        *region.get(offset.checked_add(1)?)?,
    ]));
    let start = offset.checked_add(2)?;
    region.get(start..start.checked_add(len)?)
}

/// The bytes of a capture file, as long as the file, with its header and the used part of
/// each region read and the rest left zero.
fn read_used(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let length = file.metadata()?.len().min(FILE_SIZE) as usize;
    let mut bytes = vec![0u8; length];
    let fill = |bytes: &mut [u8], offset: u64, len: u64| -> std::io::Result<()> {
        let start = (offset as usize).min(length);
        let end = offset.saturating_add(len).min(length as u64) as usize;
        let mut at = start;
        while at < end {
            match file.read_at(&mut bytes[at..end], at as u64)? {
                0 => break,
                n => at += n,
            }
        }
        Ok(())
    };
    fill(&mut bytes, 0, HEADER_SIZE)?;
    let header = |offset: usize| u64_at(&bytes, offset as u64).unwrap_or(0);
    let (strings, frames, nodes) = (
        header(field::STRINGS_USED).min(STRINGS_CAPACITY),
        header(field::FRAMES_USED).min(MAX_FRAMES),
        header(field::NODES_USED).min(MAX_NODES),
    );
    fill(&mut bytes, STRINGS_OFFSET, strings)?;
    fill(&mut bytes, FRAMES_OFFSET, frames * FRAME_SIZE)?;
    fill(&mut bytes, NODES_OFFSET, nodes * NODE_SIZE)?;
    fill(&mut bytes, COUNTERS_OFFSET, nodes * COUNTER_SIZE)?;
    Ok(bytes)
}

/// What each stack (node) of a capture file has allocated so far, by node: `(bytes,
/// allocations)`. A cheap reading (the header and the counters in use) to compare a later
/// one with.
pub fn read_allocated(path: &Path) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let mut header = vec![0u8; HEADER_SIZE as usize];
    file.read_exact_at(&mut header, 0)?;
    if header[..8] != MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a memwarden capture file",
        ));
    }
    let nodes = u64_at(&header, field::NODES_USED as u64)
        .unwrap_or(0)
        .min(MAX_NODES);
    let mut counters = vec![0u8; (nodes * COUNTER_SIZE) as usize];
    file.read_exact_at(&mut counters, COUNTERS_OFFSET)?;
    let at = |node: u64, field: u64| u64_at(&counters, node * COUNTER_SIZE + field).unwrap_or(0);
    Ok((0..nodes)
        .map(|node| (at(node, counter::ALLOCATED), at(node, counter::COUNT)))
        .collect())
}

impl Capture {
    /// Reads and checks a capture file. Every offset and count is bounds-checked: a
    /// truncated, corrupt or foreign file gives [`CaptureError::Invalid`], never a panic.
    ///
    /// Only the parts in use are read (the header says how much of each region is): the
    /// file is sparse and mostly unused, and the buffer's unread pages are zero pages the
    /// system never materialises.
    pub fn read(path: &Path) -> Result<Capture, CaptureError> {
        let bytes = read_used(path).map_err(|source| CaptureError::Io {
            path: path.to_owned(),
            source,
        })?;
        Capture::parse(path, &bytes)
    }

    /// Parses capture bytes (see [`Capture::read`]).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Capture, CaptureError> {
        let invalid = |problem: String| CaptureError::Invalid {
            path: path.to_owned(),
            problem,
        };
        if bytes.len() < HEADER_SIZE as usize {
            return Err(invalid(format!(
                "it is {} bytes long, shorter than the {HEADER_SIZE}-byte header (truncated?)",
                bytes.len()
            )));
        }
        if bytes[..8] != MAGIC {
            return Err(invalid(
                "it does not start with the capture signature".into(),
            ));
        }
        let header = |offset: usize| u64_at(bytes, offset as u64).unwrap_or(0);
        let version = header(field::VERSION);
        if version != VERSION {
            return Err(invalid(format!(
                "format version {version}; this memwarden reads version {VERSION} (use the memwarden that wrote it)"
            )));
        }
        let strings_used = header(field::STRINGS_USED);
        let frames_used = header(field::FRAMES_USED);
        let nodes_used = header(field::NODES_USED);
        if strings_used > STRINGS_CAPACITY || frames_used > MAX_FRAMES || nodes_used > MAX_NODES {
            return Err(invalid(format!(
                "its header counts are out of range ({strings_used} string bytes, {frames_used} frames, {nodes_used} stacks)"
            )));
        }
        let need = COUNTERS_OFFSET + nodes_used * COUNTER_SIZE;
        if (bytes.len() as u64) < need {
            return Err(invalid(format!(
                "it is {} bytes long but its header describes {need} bytes (truncated?)",
                bytes.len()
            )));
        }
        let region = &bytes[STRINGS_OFFSET as usize..(STRINGS_OFFSET + strings_used) as usize];
        let string = |offset: u32| -> Result<String, CaptureError> {
            string_at(region, offset as usize)
                .map(|stored| escape_bytes(stored).into_owned())
                .ok_or_else(|| {
                    invalid(format!(
                        "a string reference ({offset}) points outside the string region"
                    ))
                })
        };
        let mut frames = Vec::with_capacity(frames_used as usize);
        for i in 0..frames_used {
            let at = FRAMES_OFFSET + i * FRAME_SIZE;
            let word = |k: u64| u32_at(bytes, at + 4 * k).unwrap_or(0);
            frames.push(Frame {
                file: string(word(0))?,
                function: string(word(1))?,
                line: word(2),
                kind: word(3),
            });
        }
        let mut nodes = Vec::with_capacity(nodes_used as usize);
        let mut counters = Vec::with_capacity(nodes_used as usize);
        for i in 0..nodes_used {
            let at = NODES_OFFSET + i * NODE_SIZE;
            let parent = u32_at(bytes, at).unwrap_or(0);
            let frame = u32_at(bytes, at + 4).unwrap_or(0);
            if i > 0 && (u64::from(parent) >= i || u64::from(frame) >= frames_used) {
                return Err(invalid(format!(
                    "stack record {i} refers to parent {parent} and frame {frame}, which do not exist"
                )));
            }
            nodes.push((parent, frame));
            let at = COUNTERS_OFFSET + i * COUNTER_SIZE;
            let value = |k: u64| u64_at(bytes, at + k).unwrap_or(0);
            counters.push(Counters {
                live: value(counter::LIVE) as i64,
                at_peak: value(counter::AT_PEAK) as i64,
                at_exit: value(counter::AT_EXIT) as i64,
                allocated: value(counter::ALLOCATED),
                count: value(counter::COUNT),
                reserved: value(counter::RESERVED) as i64,
                committed_at_peak: value(counter::COMMITTED_AT_PEAK) as i64,
                committed_at_exit: value(counter::COMMITTED_AT_EXIT) as i64,
            });
        }
        let exe = match header(field::EXE) {
            0 => None,
            offset => Some(string(u32::try_from(offset - 1).map_err(|_| {
                invalid("the executable's string reference is out of range".into())
            })?)?),
        };
        let hexversion = header(field::PYTHON_HEXVERSION);
        let end_ns = header(field::END_NS);
        let flags = header(field::FLAGS);
        let malloc = |offset: usize| (flags & flag::MALLOC_INFO != 0).then(|| header(offset));
        let mut capture = Capture {
            path: path.to_owned(),
            pid: header(field::PID) as u32,
            ppid: header(field::PPID) as u32,
            exact: header(field::MODE) == 2,
            sample_bytes: header(field::SAMPLE_BYTES),
            python_hexversion: (hexversion != 0).then_some(hexversion),
            flags,
            live_bytes: header(field::LIVE_BYTES) as i64,
            peak_bytes: header(field::PEAK_BYTES) as i64,
            peak_snapshot_bytes: header(field::PEAK_SNAPSHOT_BYTES) as i64,
            committed_peak_bytes: header(field::COMMITTED_PEAK_BYTES) as i64,
            committed_exit_bytes: header(field::COMMITTED_EXIT_BYTES) as i64,
            reserved_bytes: header(field::RESERVED_BYTES) as i64,
            residency_passes: header(field::RESIDENCY_PASSES),
            residency_ns: header(field::RESIDENCY_NS),
            malloc_free_at_peak_bytes: malloc(field::MALLOC_FREE_AT_PEAK),
            malloc_arena_at_peak_bytes: malloc(field::MALLOC_ARENA_AT_PEAK),
            malloc_mmapped_at_peak_bytes: malloc(field::MALLOC_MMAPPED_AT_PEAK),
            malloc_read_ns: malloc(field::MALLOC_READ_NS),
            allocated_bytes: counters.iter().map(|c| c.allocated).sum(),
            samples: counters.iter().map(|c| c.count).sum(),
            dropped: header(field::DROPPED),
            start_ns: header(field::START_NS),
            peak_ns: header(field::PEAK_NS),
            end_ns: (end_ns != 0).then_some(end_ns),
            exe,
            warning: Warning::from_code(header(field::WARNING)),
            frames,
            nodes,
            counters,
        };
        capture.settle_peak();
        Ok(capture)
    }

    /// A peak snapshot is taken only once the committed heap passes the last one by a
    /// margin (0.25%, at least 64 KiB), so an image read without an exit snapshot (replaced
    /// by `exec`, killed, or still running) may stand above its last one: its state as read
    /// is then its peak, and the peak columns say so. (An exit snapshot already raised the
    /// peak when it was higher.)
    fn settle_peak(&mut self) {
        let now = self.live_bytes - self.reserved_bytes;
        if self.has_exit_snapshot() || now <= self.committed_peak_bytes {
            return;
        }
        self.committed_peak_bytes = now;
        self.peak_snapshot_bytes = self.live_bytes;
        for counters in &mut self.counters {
            counters.at_peak = counters.live;
            counters.committed_at_peak = counters.live - counters.reserved;
        }
    }

    /// The frames of `node`, innermost first (node 0, the root, has none).
    pub fn stack(&self, node: u32) -> Vec<&Frame> {
        let mut frames = Vec::new();
        let mut current = node;
        // Parents are always smaller than their children (checked in `parse`), so this ends.
        while current != 0 {
            let Some(&(parent, frame)) = self.nodes.get(current as usize) else {
                break;
            };
            if let Some(frame) = self.frames.get(frame as usize) {
                frames.push(frame);
            }
            current = parent;
        }
        frames
    }

    /// Whether the exit snapshot was taken (else live-at-death stands for it).
    pub fn has_exit_snapshot(&self) -> bool {
        self.flags & flag::EXIT_SNAPSHOT != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_only() -> Vec<u8> {
        let mut bytes = vec![0u8; COUNTERS_OFFSET as usize];
        bytes[..8].copy_from_slice(&MAGIC);
        bytes[field::VERSION..field::VERSION + 8].copy_from_slice(&VERSION.to_le_bytes());
        bytes
    }

    #[test]
    fn empty_capture_parses() {
        let capture = Capture::parse(Path::new("x"), &header_only()).unwrap();
        assert!(capture.frames.is_empty() && capture.nodes.is_empty());
    }

    #[test]
    fn names_that_are_not_utf8_stay_apart_and_escaped() {
        let mut bytes = header_only();
        let mut strings = Vec::new();
        let mut offsets = Vec::new();
        for name in [&b"/w/a\xff.py"[..], b"/w/a\xfe.py", b"f\xed\xa0\x80"] {
            offsets.push(strings.len() as u32);
            strings.extend_from_slice(&(name.len() as u16).to_le_bytes());
            strings.extend_from_slice(name);
        }
        let at = STRINGS_OFFSET as usize;
        bytes[at..at + strings.len()].copy_from_slice(&strings);
        let put = |bytes: &mut Vec<u8>, field: usize, value: u64| {
            bytes[field..field + 8].copy_from_slice(&value.to_le_bytes());
        };
        put(&mut bytes, field::STRINGS_USED, strings.len() as u64);
        put(&mut bytes, field::FRAMES_USED, 2);
        for (i, file) in offsets[..2].iter().enumerate() {
            let at = FRAMES_OFFSET as usize + i * FRAME_SIZE as usize;
            bytes[at..at + 4].copy_from_slice(&file.to_le_bytes());
            bytes[at + 4..at + 8].copy_from_slice(&offsets[2].to_le_bytes());
        }
        let capture = Capture::parse(Path::new("x"), &bytes).unwrap();
        let files: Vec<&str> = capture.frames.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(files, [r"/w/a\xff.py", r"/w/a\xfe.py"]);
        assert_eq!(capture.frames[0].function, r"f\xed\xa0\x80");
    }

    #[test]
    fn malloc_figures_are_read_only_when_their_flag_is_set() {
        let mut bytes = header_only();
        let put = |bytes: &mut Vec<u8>, field: usize, value: u64| {
            bytes[field..field + 8].copy_from_slice(&value.to_le_bytes());
        };
        put(&mut bytes, field::MALLOC_FREE_AT_PEAK, 3 << 20);
        put(&mut bytes, field::MALLOC_ARENA_AT_PEAK, 40 << 20);
        put(&mut bytes, field::MALLOC_MMAPPED_AT_PEAK, 0);
        put(&mut bytes, field::MALLOC_READ_NS, 77);
        let capture = Capture::parse(Path::new("x"), &bytes).unwrap();
        assert_eq!(capture.malloc_free_at_peak_bytes, None);
        assert_eq!(capture.malloc_arena_at_peak_bytes, None);
        assert_eq!(capture.malloc_mmapped_at_peak_bytes, None);
        assert_eq!(capture.malloc_read_ns, None);
        put(&mut bytes, field::FLAGS, flag::PYTHON | flag::MALLOC_INFO);
        let capture = Capture::parse(Path::new("x"), &bytes).unwrap();
        assert_eq!(capture.malloc_free_at_peak_bytes, Some(3 << 20));
        assert_eq!(capture.malloc_arena_at_peak_bytes, Some(40 << 20));
        assert_eq!(capture.malloc_mmapped_at_peak_bytes, Some(0));
        assert_eq!(capture.malloc_read_ns, Some(77));
    }

    #[test]
    fn new_header_fields_take_unused_offsets() {
        let mut offsets = [
            field::MAGIC,
            field::VERSION,
            field::PID,
            field::PPID,
            field::MODE,
            field::SAMPLE_BYTES,
            field::PYTHON_HEXVERSION,
            field::FLAGS,
            field::STRINGS_USED,
            field::FRAMES_USED,
            field::NODES_USED,
            field::LIVE_BYTES,
            field::PEAK_BYTES,
            field::PEAK_SNAPSHOT_BYTES,
            field::EXIT_SNAPSHOT_BYTES,
            field::DROPPED,
            field::START_NS,
            field::PEAK_NS,
            field::END_NS,
            field::EXE,
            field::WARNING,
            field::COMMITTED_PEAK_BYTES,
            field::COMMITTED_EXIT_BYTES,
            field::RESERVED_BYTES,
            field::RESIDENCY_PASSES,
            field::RESIDENCY_NS,
            field::MALLOC_FREE_AT_PEAK,
            field::MALLOC_ARENA_AT_PEAK,
            field::MALLOC_MMAPPED_AT_PEAK,
            field::MALLOC_READ_NS,
            field::MARK_PEAK_BYTES,
            field::TREE_STATE,
            field::TREE_RESERVED_BYTES,
        ];
        assert!(offsets
            .iter()
            .all(|o| o % 8 == 0 && *o + 8 <= HEADER_SIZE as usize));
        offsets.sort_unstable();
        assert!(offsets.windows(2).all(|w| w[0] + 8 <= w[1]), "{offsets:?}");
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let path = Path::new("x.mwcap");
        assert!(Capture::parse(path, b"short").is_err());
        let mut bytes = header_only();
        bytes[0] = b'X';
        assert!(Capture::parse(path, &bytes)
            .unwrap_err()
            .to_string()
            .contains("signature"));
        let mut bytes = header_only();
        bytes[field::NODES_USED..field::NODES_USED + 8].copy_from_slice(&5u64.to_le_bytes());
        assert!(Capture::parse(path, &bytes)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        let mut bytes = header_only();
        bytes[field::FRAMES_USED..field::FRAMES_USED + 8].copy_from_slice(&1u64.to_le_bytes());
        bytes[FRAMES_OFFSET as usize] = 9;
        assert!(Capture::parse(path, &bytes)
            .unwrap_err()
            .to_string()
            .contains("string"));
    }
}
