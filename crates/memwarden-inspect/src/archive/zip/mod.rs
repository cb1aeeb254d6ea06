//! A zip reader of our own, reading as PyTorch's miniz and Python's `zipfile` read, and
//! saying where they disagree (a scanner that reads a different member than the loader is
//! bypassed). [`read_directory`] gives the entries as PyTorch reads them, Python's view when
//! it differs, and the disagreements; [`open_entry`] reads a member's data without checking
//! its CRC (neither loader stops a pickle on it); [`lookup_like_torch`] finds a record as
//! `torch.load` does, every duplicate included.
//
// How the loaders read a zip, from their sources:
//
// PyTorch: caffe2/serialize/inline_container.cc (`PyTorchStreamReader::init`,
// `getRecordID`, `getRecord`, `getRecordOffset`) over its vendored
// third_party/miniz-3.0.2/miniz.c.
// - Records are looked up as prefix + "/" + name, the prefix being the first
//   central-directory entry's name up to its first '/' (`init`); the name goes to
//   `mz_zip_reader_locate_file(ar, name.c_str(), nullptr, 0)`, so it ends at a NUL.
// - Flags 0: the directory is heap-sorted by ASCII-lowercased name at init
//   (`mz_zip_reader_sort_central_dir_offsets_by_filename`) and searched by binary search
//   (`mz_zip_locate_file_binary_search`, `mz_zip_filename_compare`: MZ_TOLOWER, ASCII only,
//   lengths equal). Names match ASCII-case-insensitively; among duplicates the one the
//   search lands on is unspecified, so every one of them must be scanned.
// - Names, sizes, method, flags and CRC come from the central directory only.
//   `mz_zip_reader_extract_to_mem_no_alloc1` reads the local header for its signature and
//   the lengths of its name and extra field: the local name is never compared.
// - No CRC check: cmake/Dependencies.cmake adds -DMINIZ_DISABLE_ZIP_READER_CRC32_CHECKS,
//   which compiles out every CRC comparison in miniz's extract functions.
// - Flag bit 0 (encrypted), 5 (patch) and 6 (strong encryption) fail extraction
//   (MZ_ZIP_UNSUPPORTED_ENCRYPTION); bit 13 fails the whole archive
//   (`mz_zip_reader_read_central_dir`); bit 3 (data descriptor) and 11 (UTF-8) are ignored.
// - Methods 0 (stored: the *uncompressed* size is read from the data offset) and 8 (raw
//   deflate, to exactly the uncompressed size); others fail (MZ_ZIP_UNSUPPORTED_METHOD).
//   A directory (name ending in '/' or DOS attribute 0x10) or compressed size 0 extracts
//   nothing (`mz_zip_reader_is_file_a_directory`).
// - The EOCD is the last signature with 22 bytes after it, within about 64 KiB of the end
//   (`mz_zip_reader_locate_header_sig`); the zip64 EOCD is read where the locator points;
//   the entry count is the EOCD's, and the directory must hold count × 46 bytes; offsets
//   are used as written (3.0.2 has no correction for data prepended to the archive); a
//   stored entry with method and time both 0 must have equal sizes; each entry's local
//   header + compressed size must lie in the file (`mz_zip_reader_read_central_dir`).
// - torch/serialization.py `_is_zipfile`: `torch.load` takes this path only when the file
//   starts with "PK\x03\x04" (else it tries the legacy tar, then unpickles from byte 0).
//
// Python's zipfile (Lib/zipfile/__init__.py; `np.load` opens a zip when the file starts
// with "PK\x03\x04" or "PK\x05\x06", numpy/lib/_npyio_impl.py `load`):
// - `_EndRecData`: the EOCD at end − 22 with an empty comment, else the *last* signature
//   in the last 64 KiB + 22 bytes, rejected if fewer than 22 bytes follow it.
//   `_EndRecData64`: the zip64 EOCD is read right before the locator, not where it points.
// - `_RealGetContents`: concat = EOCD position − directory size − directory offset (− 76
//   with zip64); the directory is read at offset + concat and every local header offset is
//   shifted by concat, so data prepended to a zip is tolerated. Entries are read until the
//   directory size is consumed (the EOCD count is ignored); extract version > 63 raises;
//   names decode as UTF-8 (bit 11) or cp437 and are cut at a NUL (`_sanitize_filename`);
//   `NameToInfo[x.filename] = x`: the last duplicate wins; `ZipInfo._decodeExtra` raises on
//   a malformed extra field and reads zip64 values in order.
// - `ZipFile.open`: a local name that differs from the central one (each decoded with its
//   own flags) raises BadZipFile; bit 0 needs a password, bits 5 and 6 raise; since 3.12 an
//   entry overlapping the next raises. Methods 0, 8, 12 (bzip2), 14 (LZMA: 2-byte version,
//   2-byte properties size, properties, raw LZMA1: `LZMADecompressor`), 93 (zstd, 3.14).
// - The CRC is checked only when a member is read to its end (`ZipExtFile._update_crc`):
//   `pickle.load` stops at STOP, so a pickle with a bad CRC runs all the same.

use std::collections::BTreeMap;
use std::io::{self, Cursor, Read, Seek, SeekFrom};

use crate::source::{Skip, StreamSource};
use crate::{InspectError, Limits};

const EOCD_SIG: &[u8] = b"PK\x05\x06";
const EOCD_LEN: u64 = 22;
const CDH_LEN: usize = 46;
const LFH_LEN: u64 = 30;
const U32_MAX: u64 = 0xFFFF_FFFF;
/// miniz scans back 4 KiB at a time until 64 KiB + 22 bytes are covered.
const MINIZ_SEARCH: u64 = 0xFFFF + EOCD_LEN + 4096;
const PYTHON_SEARCH: u64 = (1 << 16) + EOCD_LEN;
/// LZMA decoder memory (the dictionary a hostile header may ask for).
const LZMA_MEMLIMIT: u64 = 256 << 20;
const MAX_FINDINGS: usize = 64;
/// Python's cp437 decoding of bytes 0x80..=0xFF.
const CP437_HIGH: &str = concat!(
    "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘",
    "╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}"
);

/// One member as a loader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    /// Position in the central directory.
    pub index: usize,
    /// The central directory's name, raw: the one both loaders look members up by.
    pub name: Vec<u8>,
    /// The local header's name, raw (miniz ignores it; `zipfile` requires it equal).
    pub local_name: Option<Vec<u8>>,
    /// Compression method (0 stored, 8 deflate, 12 bzip2, 14 LZMA, 93 zstd).
    pub method: u16,
    /// General-purpose flags of the central directory.
    pub flags: u16,
    /// Compressed size (zip64 resolved).
    pub compressed_size: u64,
    /// Uncompressed size (zip64 resolved).
    pub uncompressed_size: u64,
    /// CRC-32 the directory claims (never checked, as by PyTorch).
    pub crc32: u32,
    /// Absolute offset of the local header in the file.
    pub local_header_offset: u64,
    /// Absolute offset of the member's data.
    pub data_offset: u64,
}

impl ZipEntry {
    /// The central name, invalid UTF-8 replaced.
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// The name as Python's `zipfile` keys it: UTF-8 when flag bit 11 is set, else cp437,
    /// cut at the first NUL.
    pub fn name_like_zipfile(&self) -> String {
        let name = self.name.split(|&b| b == 0).next().unwrap_or_default();
        if self.flags & 0x800 != 0 {
            return String::from_utf8_lossy(name).into_owned();
        }
        let cp437 = |b: u8| CP437_HIGH.chars().nth(usize::from(b & 0x7F)).unwrap_or('?');
        name.iter()
            .map(|&b| if b < 0x80 { char::from(b) } else { cp437(b) })
            .collect()
    }

    /// A directory to both loaders: the name ends with '/'.
    pub fn is_dir(&self) -> bool {
        self.name.ends_with(b"/")
    }
}

/// A zip's entries as PyTorch's miniz reads them, and where the loaders disagree.
#[derive(Debug, Clone, Default)]
pub struct ZipArchive {
    /// Entries in central-directory order, as PyTorch's miniz reads them; as Python's
    /// `zipfile` reads them when miniz rejects the archive (a finding says so).
    pub entries: Vec<ZipEntry>,
    /// Python's `zipfile` view when it differs from `entries` (data before the archive,
    /// another EOCD or zip64 record, an entry count that disagrees with the size).
    pub zipfile_entries: Option<Vec<ZipEntry>>,
    /// Disagreements noticed: names, flags, methods, duplicates, data before the archive.
    pub findings: Vec<String>,
}

/// A member's data as [`open_entry`] gives it: read it, or skip through it.
pub struct EntrySource<'a>(Box<dyn Skip + 'a>);

impl Read for EntrySource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Skip for EntrySource<'_> {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        self.0.skip(n)
    }
}

/// Where a loader finds the central directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dir {
    offset: u64,
    size: u64,
    /// The EOCD's count (miniz); `None`: read until the size is consumed (Python).
    count: Option<u64>,
    /// Added to every local header offset (Python's "concat").
    shift: i128,
    /// miniz's disk number, for its per-entry check.
    disk: u32,
}

struct Parsed {
    entries: Vec<ZipEntry>,
    consumed: u64,
    /// Why Python's zipfile would refuse the directory, when it would.
    python_rejects: Option<String>,
    notes: Vec<String>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from(le16(b, at)) | u32::from(le16(b, at + 2)) << 16
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}

fn bad(offset: u64, message: impl Into<String>) -> InspectError {
    let message = message.into();
    InspectError::Malformed { offset, message }
}

fn read_at<R: Read + Seek>(r: &mut R, offset: u64, buf: &mut [u8]) -> Result<(), InspectError> {
    r.seek(SeekFrom::Start(offset))
        .map_err(|e| InspectError::io(offset, e))?;
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => InspectError::Truncated { offset },
        _ => InspectError::io(offset, e),
    })
}

/// Reads the zip's central directory as PyTorch's miniz does, and as Python's `zipfile`
/// does when that differs; every local header is read for its name and data offset. An
/// error when neither loader could read the directory.
pub fn read_directory<R: Read + Seek>(
    reader: &mut R,
    file_len: u64,
    limits: &Limits,
) -> Result<ZipArchive, InspectError> {
    let tail_start = file_len.saturating_sub(MINIZ_SEARCH);
    let mut tail = vec![0u8; usize::try_from(file_len - tail_start).unwrap_or(0)];
    read_at(reader, tail_start, &mut tail)?;
    let sig = |i: usize| tail.get(i..i + 4) == Some(EOCD_SIG);
    let from_end = |i: usize| file_len - (tail_start + i as u64);
    let last = (0..tail.len()).rev().find(|&i| sig(i));
    let miniz_eocd = (0..tail.len())
        .rev()
        .find(|&i| sig(i) && from_end(i) >= EOCD_LEN);
    let python_eocd = match tail.len().checked_sub(22) {
        Some(i) if sig(i) && tail.ends_with(&[0, 0]) => Some(i),
        _ => last.filter(|&i| (EOCD_LEN..=PYTHON_SEARCH).contains(&from_end(i))),
    };
    let eocd = |i: usize| -> Option<(u64, [u8; 22])> {
        Some((tail_start + i as u64, tail.get(i..i + 22)?.try_into().ok()?))
    };
    let miniz = match miniz_eocd.and_then(eocd) {
        Some((pos, rec)) => miniz_dir(reader, file_len, pos, &rec)
            .and_then(|dir| Ok((dir, parse(reader, file_len, dir, limits)?))),
        None => Err(bad(file_len, "no end-of-central-directory record")),
    };
    let python_dir = match python_eocd.and_then(eocd) {
        Some((pos, rec)) => python_dir(reader, file_len, pos, &rec),
        None => Err("no end-of-central-directory record it accepts".to_owned()),
    };
    // Python's view: `Ok(None)` when it is miniz's.
    let python = match (&miniz, python_dir) {
        (_, Err(why)) => Err(why),
        (Ok((dir, p)), Ok(py))
            if (py.offset, py.size, py.shift) == (dir.offset, dir.size, 0)
                && p.consumed == dir.size =>
        {
            p.python_rejects.clone().map_or(Ok(None), Err)
        }
        (_, Ok(py)) => match parse(reader, file_len, py, limits) {
            Ok(p) => p
                .python_rejects
                .clone()
                .map_or(Ok(Some((py.shift, p))), Err),
            Err(e) => Err(e.to_string()),
        },
    };
    let (entries, zipfile_entries, mut notes) = match (miniz, python) {
        (Ok((_, p)), Ok(None)) => (p.entries, None, p.notes),
        (Ok((_, p)), Ok(Some((shift, py)))) => {
            let mut notes = p.notes;
            let differs = py.entries != p.entries;
            if differs {
                notes.push(format!(
                    "Python's zipfile reads another directory ({} entries, local headers \
                     shifted by {shift} bytes) than PyTorch's miniz ({} entries): both are read",
                    py.entries.len(),
                    p.entries.len()
                ));
                notes.extend(archive_notes(&py.entries));
            }
            (p.entries, differs.then_some(py.entries), notes)
        }
        (Ok((_, p)), Err(why)) => {
            let mut notes = p.notes;
            notes.push(format!(
                "Python's zipfile (np.load) rejects this archive: {why}"
            ));
            (p.entries, None, notes)
        }
        (Err(e), Ok(Some((_, py)))) => {
            let mut notes = vec![format!(
                "PyTorch's miniz rejects this archive ({e}); its entries are read as Python's \
                 zipfile reads them"
            )];
            notes.extend(py.notes);
            (py.entries, None, notes)
        }
        (Err(e), _) => return Err(e),
    };
    notes.extend(archive_notes(&entries));
    notes.dedup();
    let total = notes.len();
    let mut findings: Vec<String> = notes.into_iter().take(MAX_FINDINGS).collect();
    if total > MAX_FINDINGS {
        findings.push("further findings omitted".to_owned());
    }
    Ok(ZipArchive {
        entries,
        zipfile_entries,
        findings,
    })
}

/// The directory as miniz finds it (`mz_zip_reader_read_central_dir`).
fn miniz_dir<R: Read + Seek>(
    r: &mut R,
    file_len: u64,
    pos: u64,
    eocd: &[u8; 22],
) -> Result<Dir, InspectError> {
    let (mut count, mut on_disk) = (u64::from(le16(eocd, 10)), u64::from(le16(eocd, 8)));
    let (mut disk, mut dir_disk) = (u32::from(le16(eocd, 4)), u32::from(le16(eocd, 6)));
    let (mut size, mut offset) = (u64::from(le32(eocd, 12)), u64::from(le32(eocd, 16)));
    let multi_disk = || InspectError::Unsupported("multi-disk zip".to_owned());
    if pos >= 76 {
        let mut loc = [0u8; 20];
        read_at(r, pos - 20, &mut loc)?;
        if loc.starts_with(b"PK\x06\x07") {
            let at = le64(&loc, 8);
            if at > file_len.saturating_sub(56) {
                return Err(bad(pos - 20, "the zip64 locator points past the end"));
            }
            let mut rec = [0u8; 56];
            read_at(r, at, &mut rec)?;
            if rec.starts_with(b"PK\x06\x06") {
                (count, on_disk, size) = (le64(&rec, 32), le64(&rec, 24), le64(&rec, 40));
                if le64(&rec, 4) < 44 || count.max(on_disk).max(size) > U32_MAX {
                    return Err(bad(at, "a zip64 end record beyond miniz's bounds"));
                }
                if le32(&loc, 16) != 1 {
                    return Err(multi_disk());
                }
                (disk, dir_disk, offset) = (le32(&rec, 16), le32(&rec, 20), le64(&rec, 48));
            }
        }
    }
    if count != on_disk || ((disk | dir_disk) != 0 && (disk != 1 || dir_disk != 1)) {
        return Err(multi_disk());
    }
    if size < count.saturating_mul(CDH_LEN as u64) {
        return Err(bad(
            pos,
            "the central directory is too small for its entry count",
        ));
    }
    if offset.checked_add(size).is_none_or(|end| end > file_len) {
        return Err(bad(
            pos,
            "the central directory lies past the end of the file",
        ));
    }
    Ok(Dir {
        offset,
        size,
        count: Some(count),
        shift: 0,
        disk,
    })
}

/// The directory as Python's zipfile finds it (`_EndRecData64`, `_RealGetContents`);
/// `Err`: why it refuses the file.
fn python_dir<R: Read + Seek>(
    r: &mut R,
    file_len: u64,
    pos: u64,
    eocd: &[u8; 22],
) -> Result<Dir, String> {
    let (mut size, mut offset) = (u64::from(le32(eocd, 12)), u64::from(le32(eocd, 16)));
    let mut records = 0;
    let mut loc = [0u8; 20];
    if pos >= 20 && read_at(r, pos - 20, &mut loc).is_ok() && loc.starts_with(b"PK\x06\x07") {
        if le32(&loc, 4) != 0 || le32(&loc, 16) > 1 {
            return Err("zipfiles that span multiple disks are not supported".to_owned());
        }
        let at = pos.checked_sub(76).ok_or("no room for a zip64 record")?;
        let mut rec = [0u8; 56];
        read_at(r, at, &mut rec).map_err(|e| e.to_string())?;
        if rec.starts_with(b"PK\x06\x06") {
            (size, offset, records) = (le64(&rec, 40), le64(&rec, 48), 76);
        }
    }
    let shift = i128::from(pos) - i128::from(size) - i128::from(offset) - records;
    let start = u64::try_from(i128::from(offset) + shift)
        .map_err(|_| "bad offset for central directory".to_owned())?;
    if start.checked_add(size).is_none_or(|end| end > file_len) {
        return Err("truncated central directory".to_owned());
    }
    Ok(Dir {
        offset: start,
        size,
        count: None,
        shift,
        disk: 0,
    })
}

/// Zip64 values for [uncompressed size, compressed size, local header offset], each read
/// when it is u32::MAX. miniz (`mz_zip_file_stat_internal`): the first 0x0001 field, a
/// trailing fragment an error. Python (`ZipInfo._decodeExtra`): every 0x0001 field, an
/// uncompressed size of u64::MAX read too.
fn zip64(mut extra: &[u8], mut v: [u64; 3], python: bool) -> Result<[u64; 3], String> {
    while extra.len() >= if python { 4 } else { 1 } {
        let len = usize::from(le16(extra, 2));
        let body = extra.get(4..4 + len).ok_or("malformed extra field")?;
        if le16(extra, 0) == 1 {
            let mut at = 0;
            for (i, x) in v.iter_mut().enumerate() {
                if *x == U32_MAX || (python && i == 0 && *x == u64::MAX) {
                    *x = body
                        .get(at..at + 8)
                        .map(|_| le64(body, at))
                        .ok_or("short zip64 field")?;
                    at += 8;
                }
            }
            if !python {
                break;
            }
        }
        extra = &extra[4 + len..];
    }
    Ok(v)
}

/// The entries of `dir`, each with its local header read; miniz's checks when `dir.count`
/// is set, Python's refusals collected in `python_rejects` either way.
fn parse<R: Read + Seek>(
    r: &mut R,
    file_len: u64,
    dir: Dir,
    limits: &Limits,
) -> Result<Parsed, InspectError> {
    let limit = limits.max_zip_entries;
    let too_many = || InspectError::LimitExceeded {
        what: "zip entries",
        limit: limit as u64,
    };
    if dir.size > limits.max_header_bytes {
        let limit = limits.max_header_bytes;
        return Err(InspectError::LimitExceeded {
            what: "zip central directory bytes",
            limit,
        });
    }
    if dir.count.unwrap_or(0) > limit as u64 {
        return Err(too_many());
    }
    let mut cd = vec![0u8; usize::try_from(dir.size).unwrap_or(usize::MAX)];
    read_at(r, dir.offset, &mut cd)?;
    let (mut entries, mut notes, mut python_rejects) = (Vec::new(), Vec::new(), None);
    let mut pos = 0usize;
    while dir
        .count
        .map_or(pos < cd.len(), |n| (entries.len() as u64) < n)
    {
        if entries.len() >= limit {
            return Err(too_many());
        }
        let (at, rec) = (dir.offset + pos as u64, &cd[pos..]);
        if rec.len() < CDH_LEN || !rec.starts_with(b"PK\x01\x02") {
            return Err(bad(at, "no central directory entry where one should be"));
        }
        let (n, e) = (usize::from(le16(rec, 28)), usize::from(le16(rec, 30)));
        let total = CDH_LEN + n + e + usize::from(le16(rec, 32));
        if total > rec.len() {
            return Err(bad(at, "a central directory entry runs past the directory"));
        }
        let (name, extra) = (rec[CDH_LEN..CDH_LEN + n].to_vec(), &rec[CDH_LEN + n..][..e]);
        let (flags, method, attributes) = (le16(rec, 8), le16(rec, 10), le32(rec, 38));
        let raw = [
            u64::from(le32(rec, 24)),
            u64::from(le32(rec, 20)),
            u64::from(le32(rec, 42)),
        ];
        let shown = String::from_utf8_lossy(&name).into_owned();
        let mut reject = |why: String| {
            python_rejects.get_or_insert(why);
        };
        if rec[6] > 63 {
            reject(format!("'{shown}' needs zip version {}", rec[6]));
        }
        if flags & 0x800 != 0 && std::str::from_utf8(&name).is_err() {
            reject(format!("'{shown}' is flagged UTF-8 but is not"));
        }
        let python = zip64(extra, raw, true).unwrap_or_else(|why| {
            reject(format!("'{shown}': {why}"));
            raw
        });
        let [uncomp, comp, lho] = if dir.count.is_some() {
            let v = match raw.contains(&U32_MAX) && e > 0 {
                true => zip64(extra, raw, false).map_err(|m| bad(at, format!("'{shown}': {m}")))?,
                false => raw,
            };
            let quirk = le32(rec, 10) == 0 && v[0] != v[1]; // method and time both 0
            if v[0] != U32_MAX && v[1] != U32_MAX && (quirk || (v[0] != 0 && v[1] == 0)) {
                return Err(bad(at, format!("'{shown}': sizes miniz rejects")));
            }
            let disk = u32::from(le16(rec, 34));
            if disk == 0xFFFF || (disk != dir.disk && disk != 1) || flags & 0x2000 != 0 {
                let why = format!("'{shown}': multi-disk or masked headers");
                return Err(InspectError::Unsupported(why));
            }
            v
        } else {
            python
        };
        let lho = u64::try_from(i128::from(lho) + dir.shift)
            .ok()
            .filter(|&o| o.checked_add(LFH_LEN).is_some_and(|end| end <= file_len))
            .ok_or_else(|| {
                bad(
                    at,
                    format!("'{shown}': its local header is outside the file"),
                )
            })?;
        let mut lfh = [0u8; 30];
        read_at(r, lho, &mut lfh)?;
        if !lfh.starts_with(b"PK\x03\x04") {
            return Err(bad(
                lho,
                format!("'{shown}': no local header where it should be"),
            ));
        }
        let mut local = vec![0u8; usize::from(le16(&lfh, 26))];
        read_at(r, lho + LFH_LEN, &mut local)?;
        let data_offset = lho + LFH_LEN + local.len() as u64 + u64::from(le16(&lfh, 28));
        if data_offset
            .checked_add(comp)
            .is_none_or(|end| end > file_len)
        {
            return Err(bad(
                lho,
                format!("'{shown}': its data runs past the end of the file"),
            ));
        }
        let data = comp > 0 && !name.ends_with(b"/");
        let mut note = |cond: bool, text: &str| {
            if cond {
                notes.push(format!("'{shown}' {text}"));
            }
        };
        let renamed = (le16(&lfh, 6) ^ flags) & 0x800 != 0 && !name.is_ascii();
        note(
            local != name || renamed,
            &format!(
                "is '{}' to its local header: PyTorch reads the central name only, Python's \
                 zipfile raises BadZipFile",
                String::from_utf8_lossy(&local)
            ),
        );
        note(
            flags & 1 != 0,
            "has the encryption flag: PyTorch refuses to extract it, Python's zipfile wants a \
             password; its bytes are read as they are",
        );
        note(
            flags & 0x60 != 0,
            "has flag bit 5 or 6 (patch, strong encryption): both refuse it",
        );
        note(
            !matches!(method, 0 | 8) && data,
            &format!("uses compression method {method}: PyTorch extracts stored and deflate only"),
        );
        note(
            method == 0 && comp != uncomp,
            &format!(
                "is stored with sizes {comp} (compressed) and {uncomp}: PyTorch reads {uncomp} \
                 bytes, Python's zipfile at most {}",
                comp.min(uncomp)
            ),
        );
        note(
            attributes & 0x10 != 0 && data,
            "has the DOS directory attribute: PyTorch extracts nothing, Python's zipfile its data",
        );
        entries.push(ZipEntry {
            index: entries.len(),
            name,
            local_name: Some(local),
            method,
            flags,
            compressed_size: comp,
            uncompressed_size: uncomp,
            crc32: le32(rec, 16),
            local_header_offset: lho,
            data_offset,
        });
        pos += total;
    }
    Ok(Parsed {
        entries,
        consumed: pos as u64,
        python_rejects,
        notes,
    })
}

/// Duplicates, overlaps, and bytes before the first local header.
fn archive_notes(entries: &[ZipEntry]) -> Vec<String> {
    let mut notes = Vec::new();
    let first = entries.iter().map(|e| e.local_header_offset).min();
    if let Some(first) = first.filter(|&o| o > 0) {
        notes.push(format!(
            "{first} bytes precede the first local header: torch.load and np.load read a zip \
             only when the file starts with PK\\x03\\x04 (torch.load unpickles from byte 0 \
             instead), PyTorch's C++ reader and Python's zipfile read the archive"
        ));
    }
    let (mut torch, mut python) = (BTreeMap::<_, usize>::new(), BTreeMap::<_, usize>::new());
    for e in entries {
        *torch.entry(e.name.to_ascii_lowercase()).or_default() += 1;
        *python.entry(e.name_like_zipfile()).or_default() += 1;
    }
    for (name, n) in torch.iter().filter(|(_, &n)| n > 1) {
        notes.push(format!(
            "'{}' appears {n} times (ASCII case ignored): PyTorch's binary search finds one of \
             them, which one is unspecified",
            String::from_utf8_lossy(name)
        ));
    }
    for (name, n) in python.iter().filter(|(_, &n)| n > 1) {
        notes.push(format!(
            "'{name}' appears {n} times: Python's zipfile reads the last"
        ));
    }
    let mut by_offset: Vec<&ZipEntry> = entries.iter().collect();
    by_offset.sort_by_key(|e| e.local_header_offset);
    for pair in by_offset.windows(2) {
        if pair[0].data_offset.saturating_add(pair[0].compressed_size) > pair[1].local_header_offset
        {
            notes.push(format!(
                "'{}' overlaps the next member: Python's zipfile (3.12+) refuses it, PyTorch \
                 reads it",
                pair[0].name_lossy()
            ));
        }
    }
    notes
}

/// A member's compressed bytes (or stored data): bounded, skipping by seeking.
struct Window<'a, R> {
    inner: &'a mut R,
    remaining: u64,
}

impl<R: Read> Read for Window<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining = self.remaining.saturating_sub(n as u64);
        Ok(n)
    }
}

impl<R: Read + Seek> Skip for Window<'_, R> {
    fn skip(&mut self, n: u64) -> io::Result<()> {
        if n > self.remaining {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let delta = i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.inner.seek(SeekFrom::Current(delta))?;
        self.remaining -= n;
        Ok(())
    }
}

/// Zip's LZMA: 2-byte version, 2-byte properties size, properties, raw LZMA1 — decoded as
/// an `.lzma` stream of unknown size (liblzma checks the properties as Python's raw
/// decoder does).
fn lzma<'a, R: Read + 'a>(
    mut packed: Window<'a, R>,
    at: u64,
) -> Result<impl Read + 'a, InspectError> {
    let mut head = [0u8; 4];
    let mut alone = [0xFF; 13];
    packed
        .read_exact(&mut head)
        .map_err(|_| InspectError::Truncated { offset: at })?;
    if le16(&head, 2) != 5 {
        return Err(bad(
            at,
            format!("LZMA properties of {} bytes, not 5", le16(&head, 2)),
        ));
    }
    packed
        .read_exact(&mut alone[..5])
        .map_err(|_| InspectError::Truncated { offset: at })?;
    let stream = xz2::stream::Stream::new_lzma_decoder(LZMA_MEMLIMIT)
        .map_err(|e| InspectError::Unsupported(format!("LZMA decoder: {e}")))?;
    Ok(xz2::read::XzDecoder::new_stream(
        Cursor::new(alone).chain(packed),
        stream,
    ))
}

/// A member's data, from its data offset: stored (the uncompressed size, as PyTorch reads
/// it; skipping seeks), deflate, bzip2 or LZMA (decompressed to at most the uncompressed
/// size, capped at `max(compressed size, 1) × max_decompression_ratio`); zstd and other
/// methods are `Unsupported`. The CRC is not checked, as PyTorch does not check it: the
/// caller reports that.
pub fn open_entry<'a, R: Read + Seek>(
    reader: &'a mut R,
    entry: &ZipEntry,
    limits: &Limits,
) -> Result<EntrySource<'a>, InspectError> {
    let at = entry.data_offset;
    let file_len = reader
        .seek(SeekFrom::End(0))
        .map_err(|e| InspectError::io(at, e))?;
    reader
        .seek(SeekFrom::Start(at))
        .map_err(|e| InspectError::io(at, e))?;
    let (out, available) = (entry.uncompressed_size, file_len.saturating_sub(at));
    let cap = entry
        .compressed_size
        .max(1)
        .saturating_mul(limits.max_decompression_ratio);
    let remaining = match entry.method {
        0 => out.min(available),
        _ => entry.compressed_size.min(available),
    };
    let packed = Window {
        inner: reader,
        remaining,
    };
    Ok(EntrySource(match entry.method {
        0 => Box::new(packed),
        8 => Box::new(StreamSource::new(
            flate2::read::DeflateDecoder::new(packed).take(out),
            cap,
        )),
        12 => Box::new(StreamSource::new(
            bzip2::read::BzDecoder::new(packed).take(out),
            cap,
        )),
        14 => Box::new(StreamSource::new(lzma(packed, at)?.take(out), cap)),
        93 => {
            return Err(InspectError::Unsupported(
                "zstd zip member (method 93)".to_owned(),
            ))
        }
        m => {
            return Err(InspectError::Unsupported(format!(
                "zip compression method {m}"
            )))
        }
    }))
}

/// The entries `torch.load` may read for `record` (`getRecordID`): the prefix is the first
/// central-directory entry's name up to its first '/'; the name prefix + "/" + record, cut
/// at a NUL, is matched ASCII-case-insensitively; every match is returned, since which
/// duplicate miniz's binary search lands on is unspecified. Empty when the first entry has
/// no '/' (torch refuses the archive).
pub fn lookup_like_torch<'z>(archive: &'z ZipArchive, record: &str) -> Vec<&'z ZipEntry> {
    let first = archive.entries.first().map_or(&[][..], |e| &e.name[..]);
    let Some(slash) = first.iter().position(|&b| b == b'/') else {
        return Vec::new();
    };
    let mut wanted = first[..=slash].to_vec();
    wanted.extend_from_slice(record.as_bytes());
    wanted.truncate(wanted.iter().position(|&b| b == 0).unwrap_or(wanted.len()));
    archive
        .entries
        .iter()
        .filter(|e| e.name.eq_ignore_ascii_case(&wanted))
        .collect()
}

#[cfg(test)]
mod tests;
