//! The zip reader against archives built byte by byte.

use super::*;
use std::io::Write;

struct M {
    name: Vec<u8>,
    local: Option<Vec<u8>>,
    data: Vec<u8>,
    method: u16,
    flags: u16,
    size: u64,
    crc: u32,
    zip64: bool,
}

fn stored(name: &str, data: &[u8]) -> M {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    M {
        name: name.into(),
        local: None,
        data: data.to_vec(),
        method: 0,
        flags: 0,
        size: data.len() as u64,
        crc: crc.sum(),
        zip64: false,
    }
}

fn deflated(name: &str, data: &[u8]) -> M {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    M {
        data: enc.finish().unwrap(),
        method: 8,
        ..stored(name, data)
    }
}

/// Little-endian fields, each `widths` digit giving one's bytes.
fn put(out: &mut Vec<u8>, widths: &str, values: &[u64]) {
    for (w, v) in widths.bytes().zip(values) {
        out.extend(&v.to_le_bytes()[..usize::from(w - b'0')]);
    }
}

/// A zip after `prefix`; `fix` records offsets from the start of the file (as `zip -A`
/// does), else from the start of the archive (as plain concatenation leaves them).
fn build(members: &[M], prefix: &[u8], fix: bool, zip64_end: bool) -> Vec<u8> {
    let mut out = prefix.to_vec();
    let base = if fix { 0 } else { prefix.len() as u64 };
    let mut cd = Vec::new();
    for m in members {
        let lho = out.len() as u64 - base;
        let local = m.local.clone().unwrap_or_else(|| m.name.clone());
        let packed = m.data.len() as u64;
        let (mut lx, mut cx) = (Vec::new(), Vec::new());
        let (c, u, o) = match m.zip64 {
            true => (U32_MAX, U32_MAX, U32_MAX),
            false => (packed, m.size, lho),
        };
        if m.zip64 {
            put(&mut lx, "2288", &[1, 16, m.size, packed]);
            put(&mut cx, "22888", &[1, 24, m.size, packed, lho]);
        }
        let (flags, method, crc) = (m.flags.into(), m.method.into(), m.crc.into());
        let common = [flags, method, 0, 0x21, crc, c, u];
        let (nl, ll, lxl, cxl) = (m.name.len(), local.len(), lx.len(), cx.len());
        put(
            &mut out,
            "422222444",
            &[0x0403_4b50, 45, flags, method, 0, 0x21, crc, c, u],
        );
        put(&mut out, "22", &[ll as u64, lxl as u64]);
        out.extend(local.iter().chain(&lx).chain(&m.data));
        put(&mut cd, "422", &[0x0201_4b50, 0x32d, 45]);
        put(&mut cd, "2222444", &common);
        put(
            &mut cd,
            "2222244",
            &[nl as u64, cxl as u64, 0, 0, 0, 0x81A4_0000, o],
        );
        cd.extend(m.name.iter().chain(&cx));
    }
    let (cd_ofs, cd_len, n) = (
        out.len() as u64 - base,
        cd.len() as u64,
        members.len() as u64,
    );
    out.extend(&cd);
    if zip64_end {
        let at = out.len() as u64 - base;
        put(
            &mut out,
            "4822448888",
            &[0x0606_4b50, 44, 45, 45, 0, 0, n, n, cd_len, cd_ofs],
        );
        put(&mut out, "4484", &[0x0706_4b50, 0, at, 1]);
    }
    let (n, cd_len, cd_ofs) = match zip64_end {
        true => (0xFFFF, U32_MAX, U32_MAX),
        false => (n, cd_len, cd_ofs),
    };
    put(
        &mut out,
        "42222442",
        &[0x0605_4b50, 0, 0, n, n, cd_len, cd_ofs, 0],
    );
    out
}

fn plain(members: Vec<M>) -> Vec<u8> {
    build(&members, b"", true, false)
}

fn read(bytes: &[u8]) -> Result<ZipArchive, InspectError> {
    read_directory(
        &mut Cursor::new(bytes),
        bytes.len() as u64,
        &Limits::default(),
    )
}

fn has(archive: &ZipArchive, text: &str) -> bool {
    archive.findings.iter().any(|f| f.contains(text))
}

fn content(bytes: &[u8], entry: &ZipEntry, limits: &Limits) -> io::Result<Vec<u8>> {
    let mut cursor = Cursor::new(bytes);
    let mut out = Vec::new();
    let mut source = open_entry(&mut cursor, entry, limits).map_err(io::Error::other)?;
    source.read_to_end(&mut out)?;
    Ok(out)
}

fn data(bytes: &[u8], entry: &ZipEntry) -> Vec<u8> {
    content(bytes, entry, &Limits::default()).unwrap()
}

const PICKLE: &[u8] = b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s.";

fn version() -> M {
    stored("archive/version", b"3\n")
}

#[test]
fn stored_and_deflated_members_read_as_torch_finds_them() {
    let zip = plain(vec![version(), deflated("archive/data.pkl", PICKLE)]);
    let archive = read(&zip).unwrap();
    assert!(archive.findings.is_empty(), "{:?}", archive.findings);
    assert!(archive.zipfile_entries.is_none());
    let found = lookup_like_torch(&archive, "data.pkl");
    assert_eq!(found.len(), 1);
    assert_eq!(data(&zip, found[0]), PICKLE);
    let version = lookup_like_torch(&archive, "version");
    assert_eq!(data(&zip, version[0]), b"3\n");
    let mut cursor = Cursor::new(&zip[..]);
    let mut source = open_entry(&mut cursor, version[0], &Limits::default()).unwrap();
    assert!(source.skip(2).is_ok() && source.skip(1).is_err());
}

#[test]
fn the_central_name_wins_over_the_local_one() {
    let mut evil = stored("archive/data.pkl", PICKLE);
    evil.local = Some(b"archive/notes.txt".to_vec());
    let zip = plain(vec![version(), evil]);
    let archive = read(&zip).unwrap();
    let found = lookup_like_torch(&archive, "data.pkl");
    assert_eq!(
        found[0].local_name.as_deref(),
        Some(&b"archive/notes.txt"[..])
    );
    assert_eq!(data(&zip, found[0]), PICKLE);
    assert!(has(&archive, "to its local header"));
}

#[test]
fn names_match_case_insensitively_and_every_duplicate_is_returned() {
    let (upper, x) = (
        stored("ARCHIVE/DATA.PKL", PICKLE),
        stored("archive/data.pkl", b"x"),
    );
    let y = stored("archive/data.pkl", b"y");
    let archive = read(&plain(vec![version(), upper, x, y])).unwrap();
    let found = lookup_like_torch(&archive, "data.pkl");
    assert_eq!(found.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(has(&archive, "3 times (ASCII case ignored)"));
    assert!(has(&archive, "2 times: Python's zipfile reads the last"));
    // The record name is a C string to miniz: it ends at the NUL.
    assert_eq!(lookup_like_torch(&archive, "data.pkl\0x").len(), 3);
}

#[test]
fn a_bad_crc_and_the_encryption_flag_do_not_stop_reading() {
    let mut member = stored("archive/data.pkl", PICKLE);
    (member.crc, member.flags) = (0xDEAD_BEEF, 1 | 8 | 0x800);
    let zip = plain(vec![member]);
    let archive = read(&zip).unwrap();
    assert_eq!(data(&zip, &archive.entries[0]), PICKLE);
    assert!(has(&archive, "encryption flag"));
}

#[test]
fn zip64_sizes_and_end_records() {
    let member = M {
        zip64: true,
        ..deflated("archive/data.pkl", PICKLE)
    };
    let zip = build(&[version(), member], b"", true, true);
    let archive = read(&zip).unwrap();
    assert!(archive.findings.is_empty(), "{:?}", archive.findings);
    assert_eq!(archive.entries[1].uncompressed_size, PICKLE.len() as u64);
    assert_eq!(data(&zip, &archive.entries[1]), PICKLE);
}

#[test]
fn bzip2_and_lzma_members_decompress_as_zipfile_reads_them() {
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
    bz.write_all(PICKLE).unwrap();
    let bz = M {
        data: bz.finish().unwrap(),
        method: 12,
        ..stored("a", PICKLE)
    };
    let options = xz2::stream::LzmaOptions::new_preset(6).unwrap();
    let stream = xz2::stream::Stream::new_lzma_encoder(&options).unwrap();
    let mut xz = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
    xz.write_all(PICKLE).unwrap();
    let alone = xz.finish().unwrap();
    let packed = [&[9, 4, 5, 0], &alone[..5], &alone[13..]].concat();
    let lz = M {
        data: packed,
        method: 14,
        flags: 2,
        ..stored("b", PICKLE)
    };
    let zip = plain(vec![
        bz,
        lz,
        M {
            method: 93,
            ..stored("c", b"")
        },
    ]);
    let archive = read(&zip).unwrap();
    assert!(has(&archive, "method 12"));
    assert_eq!(data(&zip, &archive.entries[0]), PICKLE);
    assert_eq!(data(&zip, &archive.entries[1]), PICKLE);
    let mut cursor = Cursor::new(&zip[..]);
    let zstd = open_entry(&mut cursor, &archive.entries[2], &Limits::default());
    assert!(matches!(zstd, Err(InspectError::Unsupported(_))));
}

#[test]
fn decompression_and_entries_are_capped() {
    let zip = plain(vec![deflated("bomb", &vec![0u8; 1 << 20])]);
    let archive = read(&zip).unwrap();
    let limits = Limits {
        max_decompression_ratio: 2,
        ..Limits::default()
    };
    assert!(content(&zip, &archive.entries[0], &limits).is_err());
    let limits = Limits {
        max_zip_entries: 0,
        ..Limits::default()
    };
    let refused = read_directory(&mut Cursor::new(&zip[..]), zip.len() as u64, &limits);
    assert!(matches!(refused, Err(InspectError::LimitExceeded { .. })));
}

#[test]
fn data_before_the_archive_is_read_as_each_loader_reads_it() {
    let members = [version(), stored("archive/data.pkl", PICKLE)];
    // Concatenated: miniz takes the offsets as written and fails; zipfile shifts them.
    let zip = build(&members, b"\x80\x02cos\nsystem\n", false, false);
    let archive = read(&zip).unwrap();
    assert!(archive.findings[0].contains("PyTorch's miniz rejects"));
    assert!(has(&archive, "13 bytes precede"));
    assert_eq!(data(&zip, &archive.entries[1]), PICKLE);
    // Offsets fixed: both read it; torch.load and np.load do not take it for a zip.
    let archive = read(&build(&members, b"\x80\x02cos\nsystem\n", true, false)).unwrap();
    assert_eq!(archive.entries.len(), 2);
    assert!(has(&archive, "13 bytes precede"));
}

#[test]
fn a_count_that_disagrees_with_the_directory_size_gives_two_views() {
    let mut zip = plain(vec![version(), stored("archive/data.pkl", PICKLE)]);
    let end = zip.len() - 22;
    zip[end + 8..end + 12].copy_from_slice(&[1, 0, 1, 0]);
    let archive = read(&zip).unwrap();
    assert_eq!(archive.entries.len(), 1);
    assert_eq!(archive.zipfile_entries.as_ref().map(Vec::len), Some(2));
}

#[test]
fn absurd_or_truncated_input_is_an_error_never_a_panic() {
    let zip = build(
        &[version(), deflated("archive/data.pkl", PICKLE)],
        b"",
        true,
        true,
    );
    for cut in 0..zip.len() {
        for entry in read(&zip[..cut]).map(|a| a.entries).unwrap_or_default() {
            let _ = content(&zip[..cut], &entry, &Limits::default());
        }
    }
    let (end, mut far) = (zip.len() - 22, zip.clone());
    far[end - 12..end - 4].copy_from_slice(&u64::MAX.to_le_bytes());
    // miniz follows the locator and fails; zipfile reads the record before it.
    let archive = read(&far).unwrap();
    assert!(archive.findings[0].contains("PyTorch's miniz rejects"));
    assert_eq!(archive.entries.len(), 2);
    let one = plain(vec![stored("archive/data.pkl", PICKLE)]);
    let end = one.len() - 22;
    for (at, value) in [
        (end + 16, u32::MAX),
        (end + 12, 1 << 31),
        (end - 20, u32::MAX - 3),
    ] {
        let mut bad = one.clone();
        bad[at..at + 4].copy_from_slice(&value.to_le_bytes());
        assert!(read(&bad).is_err(), "offset {at}");
    }
    assert!(read(b"PK\x05\x06").is_err());
    assert!(read(&[b"PK\x05\x06\0\0\0\0", &[0xFF; 12][..], b"\0\0"].concat()).is_err());
}

#[test]
fn names_as_zipfile_keys_them() {
    let archive = read(&plain(vec![stored("caf\u{e9}/", b"")])).unwrap();
    let mut e = archive.entries[0].clone();
    assert!(e.is_dir());
    assert_eq!(e.name_like_zipfile(), "caf\u{251c}\u{2310}/"); // cp437, as Python decodes
    e.flags |= 0x800;
    assert_eq!(e.name_like_zipfile(), "caf\u{e9}/");
    (e.name, e.flags) = (b"caf\x82.npy\0evil".to_vec(), 0);
    assert_eq!(e.name_like_zipfile(), "caf\u{e9}.npy");
    assert!(!e.is_dir());
}
