//! The range table on ranges made up in the test.

use super::*;

const MIB: u64 = 1 << 20;

fn ranges(capacity: usize) -> Ranges {
    let mut ranges = Ranges::EMPTY;
    assert!(ranges.ensure_array(capacity));
    ranges
}

fn mapping(start_mib: u64, end_mib: u64, node: u32) -> Mapping {
    Mapping::new(
        start_mib * MIB,
        end_mib * MIB,
        (end_mib - start_mib) * MIB,
        node,
        0,
        0,
    )
}

/// (start MiB, end MiB, weight MiB, node) of every tracked mapping.
fn contents(ranges: &mut Ranges) -> Vec<(u64, u64, u64, u32)> {
    ranges
        .live()
        .iter()
        .map(|m| (m.start / MIB, m.end / MIB, m.weight / MIB, m.node))
        .collect()
}

/// Releases [start, end) MiB; (node, MiB) of each charge released.
fn release(ranges: &mut Ranges, start_mib: u64, end_mib: u64) -> Vec<(u32, u64)> {
    let mut freed = Vec::new();
    let dropped = ranges.release(start_mib * MIB, end_mib * MIB, &mut |r: Released| {
        freed.push((r.node, r.weight / MIB))
    });
    assert_eq!(dropped, 0);
    freed
}

#[test]
fn a_release_takes_exactly_the_overlapped_bytes() {
    let mut table = ranges(64);
    for (start, node) in [(100, 1), (200, 2), (300, 3), (400, 4)] {
        assert!(table.insert(mapping(start, start + 100, node)));
    }
    assert_eq!(release(&mut table, 100, 150), [(1, 50)], "head");
    assert_eq!(release(&mut table, 280, 300), [(2, 20)], "tail");
    assert_eq!(release(&mut table, 325, 350), [(3, 25)], "middle");
    assert_eq!(
        contents(&mut table),
        [
            (150, 200, 50, 1),
            (200, 280, 80, 2),
            (300, 325, 25, 3),
            (350, 400, 50, 3),
            (400, 500, 100, 4)
        ]
    );
    assert_eq!(
        release(&mut table, 0, 1000),
        [(1, 50), (2, 80), (3, 25), (3, 50), (4, 100)],
        "one release across all of them"
    );
    assert!(table.live().is_empty());
}

#[test]
fn sampled_weights_are_shared_in_proportion_and_never_lost() {
    let mut table = ranges(64);
    let weight = 1_000_003;
    assert!(table.insert(Mapping::new(0, 3 * PAGE_BYTES, weight, 7, 0, 0)));
    let mut freed = 0;
    table.release(PAGE_BYTES, 2 * PAGE_BYTES, &mut |r: Released| {
        freed += r.weight
    });
    assert!((333_333..=333_335).contains(&freed), "{freed}");
    let kept: u64 = table.live().iter().map(|m| m.weight).sum();
    assert_eq!(kept + freed, weight);
}

#[test]
fn a_full_table_releases_the_part_it_cannot_keep() {
    let mut table = ranges(1);
    assert!(table.insert(mapping(0, 100, 1)));
    assert!(!table.insert(mapping(200, 300, 2)));
    let mut freed = Vec::new();
    let dropped = table.release(40 * MIB, 60 * MIB, &mut |r: Released| {
        freed.push((r.node, r.weight / MIB))
    });
    assert_eq!((dropped, freed), (1, vec![(1, 60)]));
    assert_eq!(contents(&mut table), [(0, 40, 40, 1)]);
}

#[test]
fn inserts_at_either_end_fill_the_whole_array() {
    let mut table = ranges(8);
    for i in 0..4 {
        assert!(
            table.insert(mapping(100 - i * 10, 105 - i * 10, 1)),
            "lower"
        );
    }
    for i in 0..4 {
        assert!(
            table.insert(mapping(200 + i * 10, 205 + i * 10, 1)),
            "higher"
        );
    }
    assert!(!table.insert(mapping(150, 155, 1)));
    let starts: Vec<u64> = contents(&mut table).iter().map(|m| m.0).collect();
    assert_eq!(starts, [70, 80, 90, 100, 200, 210, 220, 230]);
    release(&mut table, 85, 215);
    let starts: Vec<u64> = contents(&mut table).iter().map(|m| m.0).collect();
    assert_eq!(starts, [70, 80, 220, 230]);
    assert!(table.insert(mapping(150, 155, 1)));
}

#[test]
fn relocation_carries_pieces_and_charges_to_the_new_place() {
    let mut table = ranges(64);
    for (start, node) in [(100, 1), (200, 2), (300, 3)] {
        assert!(table.insert(mapping(start, start + 100, node)));
    }
    // Part of mapping 2 moves below everything, then above everything.
    let mut nothing = |_: Released| panic!("nothing is released");
    assert_eq!(
        table.relocate(250 * MIB, 280 * MIB, 10 * MIB, &mut nothing),
        0
    );
    assert_eq!(
        contents(&mut table),
        [
            (10, 40, 30, 2),
            (100, 200, 100, 1),
            (200, 250, 50, 2),
            (280, 300, 20, 2),
            (300, 400, 100, 3)
        ]
    );
    assert_eq!(table.relocate(0, 150 * MIB, 1000 * MIB, &mut nothing), 0);
    assert_eq!(
        contents(&mut table),
        [
            (150, 200, 50, 1),
            (200, 250, 50, 2),
            (280, 300, 20, 2),
            (300, 400, 100, 3),
            (1010, 1040, 30, 2),
            (1100, 1150, 50, 1)
        ]
    );
}

/// A real anonymous mapping of `mib` MiB with its first `touched_mib` MiB written.
fn real_mapping(mib: u64, touched_mib: u64) -> u64 {
    let address = sys::map_anonymous((mib * MIB) as usize);
    assert!(!address.is_null());
    // SAFETY: the first `touched_mib` MiB of the mapping just made.
    unsafe { std::ptr::write_bytes(address, 1, (touched_mib * MIB) as usize) };
    address as u64
}

/// (node, change of untouched bytes) and (node, bytes taken off the peak), as heard.
type Heard = (Vec<(u32, i64)>, Vec<(u32, u64)>);

/// Measures `table` at `now`; (node, change of untouched bytes) and (node, bytes taken
/// off the peak) heard.
fn measure(table: &mut Ranges, everything: bool, now: u64) -> Heard {
    let (mut changes, mut taken) = (Vec::new(), Vec::new());
    table.measure(
        everything,
        now,
        &mut |node, bytes| changes.push((node, bytes)),
        &mut |node, bytes| taken.push((node, bytes)),
    );
    (changes, taken)
}

#[test]
fn a_range_is_taken_as_written_until_old_enough_then_measured() {
    let mut table = ranges(64);
    let start = real_mapping(8, 2);
    // Sampled: the range weighs 10 MiB, so its untouched 3/4 weigh 7.5 MiB.
    assert!(table.insert(Mapping::new(start, start + 8 * MIB, 10 * MIB, 3, 0, 1000)));
    let young = 1000 + PENDING_CYCLES - 1;
    assert_eq!(
        measure(&mut table, false, young),
        (vec![], vec![]),
        "pending"
    );
    table.mark_pending_in_peak();
    assert_ne!(table.live()[0].flags & IN_PEAK, 0);
    let old = young + 1;
    let untouched = 15 * MIB / 2;
    assert_eq!(
        measure(&mut table, false, old),
        (vec![(3, untouched as i64)], vec![(3, untouched)]),
        "measured, and taken off the peak that took it as written"
    );
    assert_eq!(table.live()[0].flags & IN_PEAK, 0);
    assert_eq!(
        measure(&mut table, false, old),
        (vec![], vec![]),
        "nothing new"
    );
    // SAFETY: the whole mapping, which is ours.
    unsafe { std::ptr::write_bytes(start as *mut u8, 1, (8 * MIB) as usize) };
    assert_eq!(
        measure(&mut table, false, old),
        (vec![(3, -(untouched as i64))], vec![]),
        "written since"
    );
    assert_ne!(table.live()[0].flags & WHOLE, 0);
    // SAFETY: as above.
    unsafe {
        libc::madvise(
            start as *mut c_void,
            (8 * MIB) as usize,
            libc::MADV_DONTNEED,
        )
    };
    assert_eq!(
        measure(&mut table, false, old),
        (vec![], vec![]),
        "whole: not measured"
    );
    table.forget_residency(start, start + MIB);
    assert_eq!(
        measure(&mut table, false, old),
        (vec![(3, (10 * MIB) as i64)], vec![]),
        "measured again after madvise"
    );
    sys::unmap(start as *mut u8, (8 * MIB) as usize);
}

#[test]
fn an_exit_measures_everything_and_pieces_keep_their_share() {
    let mut table = ranges(64);
    let small = real_mapping(1, 0);
    let tiny = sys::map_anonymous(512 << 10) as u64;
    assert!(table.insert(Mapping::new(tiny, tiny + (512 << 10), 512 << 10, 1, 0, 0)));
    assert!(table.insert(Mapping::new(small, small + MIB, MIB, 2, 0, 0)));
    // Young, but an exit measures it; the small one counts as written.
    assert_eq!(
        measure(&mut table, true, 0),
        (vec![(2, MIB as i64)], vec![])
    );
    // Half of the untouched megabyte is unmapped: its untouched share goes with it.
    let mut released = Vec::new();
    table.release(small, small + MIB / 2, &mut |r: Released| released.push(r));
    assert_eq!(
        released,
        [Released {
            node: 2,
            flags: MEASURED,
            weight: MIB / 2,
            untouched: MIB / 2
        }]
    );
    // The half left, though small, is measured while it holds untouched bytes.
    // SAFETY: a byte of the half still mapped.
    unsafe { *((small + MIB / 2) as *mut u8) = 1 };
    let (changes, _) = measure(&mut table, false, 0);
    assert_eq!(changes, [(2, -4096)]);
    sys::unmap(tiny as *mut u8, 512 << 10);
    sys::unmap((small + MIB / 2) as *mut u8, (MIB / 2) as usize);
}

#[test]
fn an_unmapped_range_keeps_what_was_known() {
    let mut table = ranges(64);
    let start = real_mapping(4, 4);
    sys::unmap(start as *mut u8, (4 * MIB) as usize);
    assert!(table.insert(Mapping::new(start, start + 4 * MIB, 4 * MIB, 1, 0, 0)));
    assert_eq!(
        measure(&mut table, true, 0),
        (vec![], vec![]),
        "nothing known changes"
    );
    assert_eq!(table.live()[0].flags, 0);
}

#[test]
fn resident_pages_round_to_pages_and_count_in_chunks() {
    let mut buffer = vec![0u8; 8];
    let start = real_mapping(1, 0);
    // SAFETY: bytes inside the mapping just made.
    unsafe {
        *(start as *mut u8).add(100) = 1;
        *(start as *mut u8).add(5 * 4096 + 7) = 1;
    }
    // A block not aligned to a page, read 8 pages a call.
    let answer = resident_pages(start + 16, start + 20 * 4096 + 1, &mut buffer);
    assert_eq!(answer, Some((2, 21)));
    assert_eq!(count_resident(&[1, 0, 1, 1, 0, 0, 0, 1, 1, 0xfe]), 5);
    sys::unmap(start as *mut u8, MIB as usize);
}

#[test]
fn page_ends_round_up() {
    assert_eq!(page_end(4096, 1), 8192);
    assert_eq!(page_end(4096, 4096), 8192);
    assert_eq!(page_end(u64::MAX - 10, 4096), u64::MAX);
}
