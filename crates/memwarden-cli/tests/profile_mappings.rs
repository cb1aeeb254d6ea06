//! Anonymous mappings followed by range (issue 10, item 7): the cases of memray's mapping
//! tests, scaled to MiB. A script maps with `libc.mmap` through ctypes on lines marked
//! `# @name`, releases parts with `munmap`, `mremap` or `MAP_FIXED`, and the report must
//! hold, at exit and at the peak, exactly the bytes the kernel keeps mapped, on the line
//! that mapped them.
//!
//! Runs use `PYTHONMALLOC=malloc`, so that no pymalloc arena (1 MiB, charged to whichever
//! line needed it) lands on a marked line: a line's figure is then its mappings plus the few
//! small objects it keeps, which [`SLACK`] allows for. Every mapping is written whole
//! (`mapped` does it, and a grown one is written again), so that its committed bytes, which
//! the report gives, are the bytes mapped (untouched pages are reserved, not committed:
//! `tests/profile_committed.rs`).

mod util;

use util::{python, run_in_with, within, Run};

const MIB: u64 = 1 << 20;
/// What a marked line may hold besides its mappings: the Python objects it keeps.
const SLACK: u64 = 64 << 10;

/// ctypes bindings and helpers every script starts with (no marker in it).
const PRELUDE: &str = "\
import ctypes, mmap
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
MIB = 1 << 20
FAILED = ctypes.c_void_p(-1).value
RW = mmap.PROT_READ | mmap.PROT_WRITE
PROT_NONE = 0
ANON = mmap.MAP_ANONYMOUS | mmap.MAP_PRIVATE
FIXED = 0x10
MAYMOVE, REMAP_FIXED = 1, 2
def check(address):
    if address is None or address == FAILED:
        raise OSError(ctypes.get_errno(), 'mapping failed')
    return address
def mapped(mib, at=None, prot=RW):
    address = check(libc.mmap(at, mib * MIB, prot, ANON | (FIXED if at else 0), -1, 0))
    if prot != PROT_NONE:
        ctypes.memset(address, 1, mib * MIB)
    return address
def reserved(mib):
    return mapped(mib, prot=PROT_NONE)
def unmap(address, mib):
    if libc.munmap(address, mib * MIB) != 0:
        raise OSError(ctypes.get_errno(), 'munmap failed')
";

/// The script: the prelude, then `body`.
fn script(body: &str) -> String {
    format!("{PRELUDE}{body}")
}

/// Runs `script` as workload.py under `memwarden run --profile[=MODE]`.
fn profile(mode: &str, script: &str) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("workload.py"), script).expect("write script");
    let python = python();
    let run = run_in_with(
        dir,
        &[mode],
        &[python.as_os_str(), "workload.py".as_ref()],
        |c| {
            c.env("PYTHONMALLOC", "malloc");
        },
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(
        String::from_utf8_lossy(&run.output.stdout).trim(),
        "ok",
        "the script ran to its end: {}",
        run.stderr()
    );
    run
}

/// Asserts that the line marked `name` holds `mib` MiB in `list` (within [`SLACK`]).
#[track_caller]
fn assert_holds(run: &Run, script: &str, list: &str, name: &str, mib: u64) {
    let bytes = util::bytes_at(run, script, list, name);
    let expected = mib * MIB;
    assert!(
        bytes.abs_diff(expected) <= SLACK,
        "{list} at @{name}: {bytes} bytes ({:.2} MiB), expected {mib} MiB\n{:#}",
        bytes as f64 / MIB as f64,
        run.report()["profile"][list]
    );
}

#[test]
fn unmapping_the_head_keeps_the_tail_charged() {
    let script = script(
        "\
def head():
    return mapped(100)  # @head
address = head()
unmap(address, 50)
print('ok')
",
    );
    let run = profile("--profile=exact", &script);
    assert_holds(&run, &script, "at_peak", "head", 100);
    assert_holds(&run, &script, "leaked", "head", 50);
}

#[test]
fn one_munmap_across_adjacent_mappings_releases_each_overlapped_part() {
    let script = script(
        "\
space = reserved(600)
a = mapped(100, space)  # @all_first
mapped(100, a + 100 * MIB)  # @all_second
mapped(100, a + 200 * MIB)  # @all_third
b = mapped(100, space + 300 * MIB)  # @part_first
mapped(100, b + 100 * MIB)  # @part_second
mapped(100, b + 200 * MIB)  # @part_third
unmap(a, 300)
unmap(b + 50 * MIB, 200)
print('ok')
",
    );
    let run = profile("--profile=exact", &script);
    for name in ["all_first", "all_second", "all_third"] {
        assert_holds(&run, &script, "at_peak", name, 100);
        assert_holds(&run, &script, "leaked", name, 0);
    }
    assert_holds(&run, &script, "leaked", "part_first", 50);
    assert_holds(&run, &script, "leaked", "part_second", 0);
    assert_holds(&run, &script, "leaked", "part_third", 50);
}

#[test]
fn unmapping_the_middle_keeps_both_ends_charged() {
    let script = script(
        "\
middle = mapped(100)  # @middle
unmap(middle + 25 * MIB, 50)
ends = mapped(100)  # @ends
unmap(ends + 40 * MIB, 20)
unmap(ends, 40)
holes = mapped(100)  # @holes
for at in (10, 30, 50, 70):
    unmap(holes + at * MIB, 10)
print('ok')
",
    );
    let run = profile("--profile=exact", &script);
    assert_holds(&run, &script, "leaked", "middle", 50);
    assert_holds(&run, &script, "leaked", "ends", 40);
    assert_holds(&run, &script, "leaked", "holes", 60);
    // The peak came when the last was mapped whole, the first two already cut.
    assert_holds(&run, &script, "at_peak", "middle", 50);
    assert_holds(&run, &script, "at_peak", "ends", 40);
    assert_holds(&run, &script, "at_peak", "holes", 100);
}

#[test]
fn mremap_shrink_keeps_the_head() {
    let script = script(
        "\
shrunk = mapped(100)  # @shrunk
assert libc.mremap(shrunk, 100 * MIB, 40 * MIB, 0, None) == shrunk  # @shrink
print('ok')
",
    );
    let run = profile("--profile=exact", &script);
    assert_holds(&run, &script, "at_peak", "shrunk", 100);
    assert_holds(&run, &script, "leaked", "shrunk", 40);
    assert_holds(&run, &script, "leaked", "shrink", 0);
}

#[test]
fn mremap_grow_in_place_charges_the_growth_to_the_growing_line() {
    let script = script(
        "\
space = reserved(200)
grown = mapped(100, space)  # @grown
unmap(space + 100 * MIB, 100)
assert check(libc.mremap(grown, 100 * MIB, 150 * MIB, 0, None)) == grown  # @grow
ctypes.memset(grown, 2, 150 * MIB)
unmap(grown + 140 * MIB, 10)
print('ok')
",
    );
    let run = profile("--profile=exact", &script);
    assert_holds(&run, &script, "leaked", "grown", 100);
    assert_holds(&run, &script, "leaked", "grow", 40);
    assert_holds(&run, &script, "at_peak", "grow", 50);
}

#[test]
fn mremap_move_takes_the_charges_with_the_pages() {
    let script = script(
        "\
moved = mapped(100)  # @moved
target = reserved(100)
assert check(libc.mremap(moved, 100 * MIB, 100 * MIB, MAYMOVE | REMAP_FIXED, target)) == target  # @move
unmap(target, 30)
grown = mapped(100)  # @grown_and_moved
further = reserved(150)
assert check(libc.mremap(grown, 100 * MIB, 150 * MIB, MAYMOVE | REMAP_FIXED, further)) == further  # @move_grow
ctypes.memset(further, 2, 150 * MIB)
part = mapped(100)  # @part_moved
elsewhere = reserved(40)
assert check(libc.mremap(part + 60 * MIB, 40 * MIB, 40 * MIB, MAYMOVE | REMAP_FIXED, elsewhere)) == elsewhere  # @move_part
unmap(part, 10)
unmap(elsewhere, 10)
print('ok')
",
    );
    let run = profile("--profile=exact", &script);
    assert_holds(&run, &script, "leaked", "moved", 70);
    assert_holds(&run, &script, "leaked", "move", 0);
    assert_holds(&run, &script, "leaked", "grown_and_moved", 100);
    assert_holds(&run, &script, "leaked", "move_grow", 50);
    // 10 MiB unmapped from the head where it stayed, 10 from the part that moved away.
    assert_holds(&run, &script, "leaked", "part_moved", 80);
    assert_holds(&run, &script, "leaked", "move_part", 0);
}

#[test]
fn map_fixed_over_part_of_a_mapping_replaces_exactly_that_part() {
    let script = script(
        "\
base = mapped(100)  # @base
mapped(30, base + 20 * MIB)  # @overlay
guarded = mapped(100)  # @guarded
mapped(40, guarded, prot=PROT_NONE)  # @guard
space = reserved(200)
across = mapped(100, space)  # @across
mapped(100, space + 100 * MIB)  # @across_next
mapped(60, space + 70 * MIB)  # @straddle
print('ok')
",
    );
    let run = profile("--profile=exact", &script);
    assert_holds(&run, &script, "leaked", "base", 70);
    assert_holds(&run, &script, "leaked", "overlay", 30);
    assert_holds(&run, &script, "leaked", "guarded", 60);
    assert_holds(&run, &script, "leaked", "guard", 0);
    assert_holds(&run, &script, "leaked", "across", 70);
    assert_holds(&run, &script, "leaked", "across_next", 70);
    assert_holds(&run, &script, "leaked", "straddle", 60);
}

#[test]
fn sampled_partial_unmaps_stay_within_the_stated_error() {
    // 200 mappings of 256 KiB: each is sampled with probability 1 - e^(-1/2) and then
    // weighs 256 KiB / that; unmapping the first half of each keeps half of each weight.
    let script = script(
        "\
def small():
    address = check(libc.mmap(None, 256 << 10, RW, ANON, -1, 0))  # @small
    ctypes.memset(address, 1, 256 << 10)
    return address
addresses = [small() for _ in range(200)]
for address in addresses:
    assert libc.munmap(address, 128 << 10) == 0
print('ok')
",
    );
    let run = profile("--profile", &script);
    let held = util::bytes_at(&run, &script, "leaked", "small");
    let at_peak = util::bytes_at(&run, &script, "at_peak", "small");
    let sample_bytes = run.u64_at("/profile/sample_bytes");
    // The report's bound on the standard error of a total of B bytes: sqrt(B × R).
    let bound = |bytes: u64| ((bytes as f64) * (sample_bytes as f64)).sqrt();
    let expected = 25 * MIB;
    assert!(
        (held as f64 - expected as f64).abs() <= 3.0 * bound(expected),
        "held {held}, expected {expected} ± 3 × {:.0}",
        bound(expected)
    );
    assert!(
        within(
            at_peak,
            2 * expected,
            3.0 * bound(2 * expected) / (2 * expected) as f64
        ),
        "at the peak {at_peak}"
    );
    // Whatever was sampled, each sample keeps exactly half its weight: held is half the
    // peak's figure, up to a small object sampled on the line (one sample's weight).
    assert!(
        (2 * held).abs_diff(at_peak) <= 2 * sample_bytes,
        "held {held} is not half of {at_peak}"
    );
}
