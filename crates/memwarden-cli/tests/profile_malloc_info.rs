//! glibc's own figures at the peak: each peak snapshot records `mallinfo2()` (bytes free
//! inside malloc's arenas, the arenas' bytes, the bytes of its mapped chunks) into the
//! capture's header, and sets the flag that says so. The captures are kept with
//! `--capture-dir` and read back with `memwarden_format::capture`.

mod util;

use memwarden_format::capture::{flag, Capture};
use util::python;

const MIB: u64 = 1 << 20;

/// Python that leaves holes in malloc's heap (blocks over pymalloc's 512-byte limit, every
/// other one freed), then holds a 200 MiB numpy buffer (one chunk glibc maps by itself) at
/// the peak. `mallinfo2` walks every free chunk, so after a slow call the next is skipped
/// for 32 times as long: the pause lets the buffer's snapshot read it.
const SCRIPT: &str = "\
import numpy as np, time
blocks = [bytes(2000 + i % 100) for i in range(20000)]
del blocks[::2]
time.sleep(0.2)
def load():
    return np.ones(200 * 1024 * 1024 // 8)
a = load()
print(a.sum(), len(blocks))
";

/// The capture of the process that ran the script (Python frames were read in it).
fn python_capture(dir: &std::path::Path) -> Capture {
    let captures: Vec<Capture> = std::fs::read_dir(dir)
        .expect("capture dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "mwcap"))
        .map(|p| Capture::read(&p).expect("a readable capture"))
        .filter(|c| c.python_hexversion.is_some())
        .collect();
    assert_eq!(captures.len(), 1, "{captures:#?}");
    captures.into_iter().next().expect("one capture")
}

#[test]
fn the_peak_snapshot_records_mallocs_own_figures() {
    for mode in ["--profile", "--profile=exact"] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("workload.py"), SCRIPT).expect("write script");
        let captures = dir.path().join("captures");
        let python = python();
        let run = util::run_in(
            dir,
            &[mode, "--capture-dir", captures.to_str().expect("utf-8")],
            &[python.to_str().expect("utf-8"), "workload.py"],
        );
        assert_eq!(run.code(), 0, "{mode}: {}", run.stderr());
        let capture = python_capture(&captures);
        assert_ne!(capture.flags & flag::MALLOC_INFO, 0, "{mode}: {capture:#?}");
        let free = capture.malloc_free_at_peak_bytes.expect("free bytes");
        let arena = capture.malloc_arena_at_peak_bytes.expect("arena bytes");
        let mmapped = capture.malloc_mmapped_at_peak_bytes.expect("mapped bytes");
        // Python's own malloc'd objects and the freed 2 KB blocks: an arena with holes.
        assert!(
            free > 0 && arena > 0 && free <= arena,
            "{mode}: free {free}, arena {arena}"
        );
        assert!(
            arena < 2 * 1024 * MIB,
            "{mode}: an implausible arena of {arena} bytes"
        );
        // Read by a peak snapshot: the last one, or one a moment before it when the last
        // came too soon after a slow call (a measure of the buffer's pages 10 ms later).
        let read_ns = capture.malloc_read_ns.expect("read time");
        assert!(
            read_ns >= capture.start_ns
                && read_ns <= capture.peak_ns
                && capture.peak_ns - read_ns < 150_000_000,
            "{mode}: read at {read_ns}, peak snapshot at {}",
            capture.peak_ns
        );
        // The numpy buffer is live at the peak, in a chunk of its own.
        assert!(
            (200 * MIB..400 * MIB).contains(&mmapped),
            "{mode}: {mmapped} bytes in mapped chunks at the peak"
        );
    }
}
