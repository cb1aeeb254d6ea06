//! HDF5: the root group's attributes, read by a minimal reader of our own (no libhdf5).
//!
//! Keras's `model.save("m.h5")` keeps the model's architecture in root attributes
//! (`model_config`, `training_config`), and that JSON decides what code loading runs. So
//! this reader follows the file format as the HDF5 library does, far enough to read them:
//!
//! - superblock versions 0–3, after a user block of 512 bytes, 1 KiB, 2 KiB... (the library
//!   makes the superblock's position the base of every address, whatever the field says);
//! - object headers v1 and v2 (`OHDR`), with continuation blocks (`OCHK`);
//! - attribute messages v1–3: fixed-length strings, variable-length strings (global heap
//!   `GCOL`), integer and float scalars; anything else is [`AttrValue::Other`];
//! - dense attribute storage (attribute info message): the name-index v2 B-tree (`BTHD`,
//!   `BTIN`, `BTLF`) and the fractal heap (`FRHP`, `FHIB`, `FHDB`) with managed, tiny and
//!   huge objects, as HDF5 writes them for a root attribute over 64 KiB.
//!
//! Not read (an error says so, so the caller fails closed): shared messages (SOHM), filtered
//! fractal heaps, 16-byte addresses. Checksums are not verified: a file the library would
//! refuse to open runs no code. Every read is bounded by [`Limits::max_header_bytes`], the
//! bytes read in all by four times that, and every walk by a count and a visited set.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::keras;
use crate::{FileReport, Finding, InspectError, Limits, Severity, Verdict};

mod dense;

/// The value of an attribute, as far as memwarden needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AttrValue {
    /// A fixed- or variable-length string.
    Text(String),
    /// An integer scalar.
    Int(i64),
    /// A float scalar.
    Float(f64),
    /// Anything else: arrays, compounds, references, shared datatypes.
    Other,
}

const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";
const UNDEFINED: u64 = u64::MAX;
/// Object header chunks (the first and its continuations) read per header.
const MAX_CHUNKS: usize = 1024;
/// Messages, B-tree nodes and records walked per file.
const MAX_ITEMS: u64 = 4_000_000;

/// An object header message: type, flags, file offset and body.
type Message = (u16, u8, u64, Vec<u8>);

/// Where the superblock is: at 0, or after a user block of 512 bytes, 1 KiB, 2 KiB...
pub(crate) fn find_superblock(file: &mut (impl Read + Seek), file_len: u64) -> Option<u64> {
    let mut offset = 0u64;
    while offset.checked_add(8)? <= file_len {
        let mut sig = [0u8; 8];
        if file.seek(SeekFrom::Start(offset)).is_ok()
            && file.read_exact(&mut sig).is_ok()
            && &sig == SIGNATURE
        {
            return Some(offset);
        }
        offset = if offset == 0 {
            512
        } else {
            offset.checked_mul(2)?
        };
    }
    None
}

/// Reads every attribute of the root group, in the order the file stores them.
pub(crate) fn root_attributes(
    file: &mut (impl Read + Seek),
    file_len: u64,
    limits: &Limits,
) -> Result<Vec<(String, AttrValue)>, InspectError> {
    let base = find_superblock(file, file_len).ok_or_else(|| InspectError::Malformed {
        offset: 0,
        message: "no HDF5 superblock at 0, 512, 1024, 2048...".into(),
    })?;
    let mut reader = Reader {
        file,
        file_len,
        base,
        sizeof_addr: 8,
        sizeof_len: 8,
        max_read: limits.max_header_bytes,
        budget: limits.max_header_bytes.saturating_mul(4),
        items: 0,
        heaps: HashMap::new(),
    };
    let root = reader.superblock()?;
    let mut attributes = Vec::new();
    for (kind, flags, at, body) in reader.object_header(root)? {
        if kind != 0x0C && kind != 0x15 {
            continue;
        }
        if flags & 0x02 != 0 {
            return Err(InspectError::Unsupported(
                "HDF5 shared object header messages (SOHM) on the root group".into(),
            ));
        }
        if kind == 0x0C {
            attributes.push(reader.attribute(&body, at)?);
        } else {
            reader.dense_attributes(&body, at, &mut attributes)?;
        }
        reader.count(1)?;
    }
    Ok(attributes)
}

/// Inspects an HDF5 file: its root attributes and, for a Keras model, its config.
///
/// Every `model_config` and `training_config` attribute is judged, not only the first: a
/// file holding two (in the object header and in dense storage) must not show us one and
/// the loader the other.
pub(crate) fn inspect(path: &Path, len: u64, limits: &Limits) -> Result<FileReport, InspectError> {
    let mut file = BufReader::new(File::open(path).map_err(|e| InspectError::io(0, e))?);
    let attributes = root_attributes(&mut file, len, limits)?;
    let is_keras = attributes.iter().any(|(name, _)| name == "model_config");
    let mut report = FileReport::new(path, if is_keras { "keras-h5" } else { "hdf5" }, len);
    report.mmap_note = "h5py reads on access; contiguous datasets can be memory-mapped with numpy at their offsets".to_owned();
    if !is_keras {
        report.loader = "h5py.File".to_owned();
        report.prediction_rule = "h5py reads datasets lazily: loading costs what is read; memwarden reads the root attributes, not yet the dataset inventory".to_owned();
        return Ok(report);
    }
    report.loader = "keras.models.load_model".to_owned();
    report.prediction_rule = "keras.models.load_model reads every weight in model_weights into memory; memwarden reads the root attributes, not yet the dataset inventory".to_owned();
    for (name, value) in &attributes {
        match (name.as_str(), value) {
            ("model_config" | "training_config", AttrValue::Text(text)) => {
                keras::judge_config(text, None, &mut report)
            }
            ("model_config" | "training_config", _) => {
                report.findings.push(Finding {
                    severity: Severity::High,
                    offset: None,
                    message: format!("the Keras `{name}` attribute is not a string: what loading builds cannot be verified"),
                });
                report.verdict = report.verdict.max(Verdict::Unsafe);
            }
            _ => {}
        }
    }
    Ok(report)
}

/// A bounds-checked view of bytes read from `at` in the file.
struct Bytes<'b> {
    buf: &'b [u8],
    pos: usize,
    at: u64,
}

impl<'b> Bytes<'b> {
    fn new(buf: &'b [u8], at: u64) -> Self {
        Bytes { buf, pos: 0, at }
    }

    fn offset(&self) -> u64 {
        self.at.saturating_add(self.pos as u64)
    }

    fn take(&mut self, n: usize) -> Result<&'b [u8], InspectError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| malformed(self.offset(), "a field runs past its structure"))?;
        let slice = &self.buf[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn uint(&mut self, n: usize) -> Result<u64, InspectError> {
        Ok(little_endian(self.take(n)?))
    }

    fn u8(&mut self) -> Result<u8, InspectError> {
        Ok(self.take(1)?[0])
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
}

fn little_endian(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

fn malformed(offset: u64, message: &str) -> InspectError {
    InspectError::Malformed {
        offset,
        message: format!("HDF5: {message}"),
    }
}

fn to_usize(n: u64, offset: u64) -> Result<usize, InspectError> {
    usize::try_from(n).map_err(|_| malformed(offset, "a size does not fit in memory"))
}

struct Reader<'f, R> {
    file: &'f mut R,
    file_len: u64,
    base: u64,
    sizeof_addr: usize,
    sizeof_len: usize,
    max_read: u64,
    budget: u64,
    items: u64,
    heaps: HashMap<u64, Vec<u8>>,
}

impl<R: Read + Seek> Reader<'_, R> {
    /// Reads `len` bytes at `addr` (relative to the base), within every bound.
    fn read(&mut self, addr: u64, len: u64) -> Result<Vec<u8>, InspectError> {
        if addr == UNDEFINED {
            return Err(malformed(0, "an undefined address is dereferenced"));
        }
        let start = self.base.checked_add(addr);
        let start = start.ok_or_else(|| malformed(addr, "an address overflows"))?;
        if start.checked_add(len).is_none_or(|end| end > self.file_len) {
            return Err(InspectError::Truncated {
                offset: self.file_len,
            });
        }
        if len > self.max_read {
            return Err(InspectError::LimitExceeded {
                what: "bytes in one HDF5 structure",
                limit: self.max_read,
            });
        }
        self.budget = self
            .budget
            .checked_sub(len)
            .ok_or(InspectError::LimitExceeded {
                what: "bytes of HDF5 metadata read",
                limit: self.max_read.saturating_mul(4),
            })?;
        let mut buf = vec![0u8; to_usize(len, start)?];
        self.file
            .seek(SeekFrom::Start(start))
            .and_then(|_| self.file.read_exact(&mut buf))
            .map_err(|e| InspectError::io(start, e))?;
        Ok(buf)
    }

    /// Reads up to `len` bytes at `addr`, fewer where the file ends.
    fn read_up_to(&mut self, addr: u64, len: u64) -> Result<Vec<u8>, InspectError> {
        let available = self.file_len.saturating_sub(self.base.saturating_add(addr));
        self.read(addr, len.min(available))
    }

    fn count(&mut self, n: u64) -> Result<(), InspectError> {
        self.items = self.items.saturating_add(n);
        if self.items > MAX_ITEMS {
            return Err(InspectError::LimitExceeded {
                what: "HDF5 messages, nodes and records",
                limit: MAX_ITEMS,
            });
        }
        Ok(())
    }

    fn addr(&self, b: &mut Bytes) -> Result<u64, InspectError> {
        let raw = b.take(self.sizeof_addr)?;
        Ok(if raw.iter().all(|&x| x == 0xff) {
            UNDEFINED
        } else {
            little_endian(raw)
        })
    }

    fn len(&self, b: &mut Bytes) -> Result<u64, InspectError> {
        b.uint(self.sizeof_len)
    }

    fn set_sizes(&mut self, addr: u8, len: u8, at: u64) -> Result<(), InspectError> {
        for size in [addr, len] {
            if !matches!(size, 2 | 4 | 8) {
                return Err(InspectError::Unsupported(format!(
                    "HDF5 with {size}-byte addresses or lengths (at byte {at})"
                )));
            }
        }
        (self.sizeof_addr, self.sizeof_len) = (usize::from(addr), usize::from(len));
        Ok(())
    }

    /// Parses the superblock; returns the root group's object header address.
    fn superblock(&mut self) -> Result<u64, InspectError> {
        let buf = self.read_up_to(0, 256)?;
        let mut b = Bytes::new(&buf, self.base);
        b.take(8)?;
        let version = b.u8()?;
        match version {
            0 | 1 => {
                b.take(4)?; // free-space, root symbol table and shared header versions
                let (addr, len) = (b.u8()?, b.u8()?);
                self.set_sizes(addr, len, self.base)?;
                b.take(1 + 4 + 4 + if version == 1 { 4 } else { 0 })?;
                for _ in 0..4 {
                    self.addr(&mut b)?; // base, free space, end of file, driver
                }
                self.addr(&mut b)?; // root entry: link name offset
                self.addr(&mut b)
            }
            2 | 3 => {
                let (addr, len) = (b.u8()?, b.u8()?);
                self.set_sizes(addr, len, self.base)?;
                b.take(1)?;
                for _ in 0..3 {
                    self.addr(&mut b)?; // base, superblock extension, end of file
                }
                self.addr(&mut b)
            }
            other => Err(InspectError::Unsupported(format!(
                "HDF5 superblock version {other}"
            ))),
        }
    }

    /// Every message of the object header at `addr`: (type, flags, file offset, body).
    fn object_header(&mut self, addr: u64) -> Result<Vec<Message>, InspectError> {
        let prefix = self.read_up_to(addr, 64)?;
        let mut b = Bytes::new(&prefix, self.base.saturating_add(addr));
        let mut chunks = Vec::new();
        let (v2, track_order) = if prefix.starts_with(b"OHDR") {
            b.take(4)?;
            if b.u8()? != 2 {
                return Err(malformed(b.at, "object header version is not 2"));
            }
            let flags = b.u8()?;
            b.take(if flags & 0x20 != 0 { 16 } else { 0 })?;
            b.take(if flags & 0x10 != 0 { 4 } else { 0 })?;
            let size = b.uint(1 << (flags & 0x03))?;
            chunks.push((addr + b.pos as u64, size));
            (true, flags & 0x04 != 0)
        } else {
            if b.u8()? != 1 {
                return Err(malformed(b.at, "object header is neither v1 nor OHDR"));
            }
            b.take(7)?;
            let size = b.uint(4)?;
            chunks.push((addr + 16, size));
            (false, false)
        };
        let mut seen = HashSet::new();
        let mut messages = Vec::new();
        let mut next = 0;
        while let Some(&(chunk_addr, chunk_len)) = chunks.get(next) {
            next += 1;
            if !seen.insert(chunk_addr) || seen.len() > MAX_CHUNKS {
                return Err(malformed(chunk_addr, "object header continuations loop"));
            }
            let chunk = self.read(chunk_addr, chunk_len)?;
            let mut b = Bytes::new(&chunk, self.base.saturating_add(chunk_addr));
            // v2 chunk 0 is messages then a checksum; a continuation, OCHK, messages, checksum.
            let mut end = chunk.len();
            if v2 && next > 1 {
                if b.take(4)? != b"OCHK" {
                    return Err(malformed(b.at, "continuation block without OCHK"));
                }
                end = end.saturating_sub(4);
            }
            let header_len = if v2 {
                4 + 2 * usize::from(track_order)
            } else {
                8
            };
            while b.pos + header_len <= end {
                let at = b.offset();
                let (kind, size, flags) = match v2 {
                    true => (u16::from(b.u8()?), b.uint(2)?, b.u8()?),
                    false => (b.uint(2)? as u16, b.uint(2)?, b.u8()?),
                };
                b.take(if v2 { header_len - 4 } else { 3 })?;
                if b.pos + size as usize > end {
                    return Err(malformed(at, "a message runs past its object header chunk"));
                }
                let body = b.take(size as usize)?.to_vec();
                self.count(1)?;
                if kind == 0x10 {
                    let mut c = Bytes::new(&body, at);
                    chunks.push((self.addr(&mut c)?, self.len(&mut c)?));
                } else {
                    messages.push((kind, flags, at, body));
                }
            }
        }
        Ok(messages)
    }

    /// An attribute message: its name and, for a scalar of a known type, its value.
    fn attribute(&mut self, body: &[u8], at: u64) -> Result<(String, AttrValue), InspectError> {
        let mut b = Bytes::new(body, at);
        let version = b.u8()?;
        if !(1..=3).contains(&version) {
            return Err(malformed(at, "attribute message version is not 1, 2 or 3"));
        }
        let flags = b.u8()?;
        let (name_len, type_len, space_len) = (b.uint(2)?, b.uint(2)?, b.uint(2)?);
        if version == 3 {
            b.u8()?; // name encoding
        }
        let pad = |n: u64| if version == 1 { n.div_ceil(8) * 8 } else { n };
        let name = b.take(to_usize(pad(name_len), at)?)?;
        let name = &name[..name_len as usize];
        let name = String::from_utf8_lossy(name.split(|&c| c == 0).next().unwrap_or(name));
        let datatype = b.take(to_usize(pad(type_len), at)?)?;
        let dataspace = b.take(to_usize(pad(space_len), at)?)?;
        let data = &body[b.pos..];
        if version > 1 && flags & 0x03 != 0 {
            return Ok((name.into_owned(), AttrValue::Other));
        }
        let value = match elements(dataspace, self.sizeof_len, at)? {
            Some(1) => self.value(datatype, data, at)?,
            _ => AttrValue::Other,
        };
        Ok((name.into_owned(), value))
    }

    fn value(&mut self, datatype: &[u8], data: &[u8], at: u64) -> Result<AttrValue, InspectError> {
        let mut t = Bytes::new(datatype, at);
        let class = t.u8()? & 0x0f;
        let bits = t.take(3)?;
        let size = to_usize(t.uint(4)?, at)?;
        let Some(raw) = data.get(..size) else {
            return Err(malformed(at, "attribute data is shorter than its datatype"));
        };
        let big_endian = bits[0] & 0x01 != 0;
        let ordered = |raw: &[u8]| {
            let mut v = raw.to_vec();
            if big_endian {
                v.reverse();
            }
            v
        };
        Ok(match (class, size) {
            (0, 1 | 2 | 4 | 8) => {
                let v = little_endian(&ordered(raw));
                let shift = 64 - 8 * size as u32;
                if bits[0] & 0x08 != 0 {
                    AttrValue::Int(((v << shift) as i64) >> shift)
                } else {
                    i64::try_from(v).map_or(AttrValue::Other, AttrValue::Int)
                }
            }
            (1, 4) if bits[0] & 0x40 == 0 => AttrValue::Float(f64::from(f32::from_bits(
                little_endian(&ordered(raw)) as u32,
            ))),
            (1, 8) if bits[0] & 0x40 == 0 => {
                AttrValue::Float(f64::from_bits(little_endian(&ordered(raw))))
            }
            (3, _) => {
                let end = raw.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
                AttrValue::Text(String::from_utf8_lossy(&raw[..end]).into_owned())
            }
            (9, _) if bits[0] & 0x0f == 1 => {
                let mut d = Bytes::new(raw, at);
                let len = d.uint(4)?;
                let collection = self.addr(&mut d)?;
                let index = d.uint(4)?;
                let object = self.global_heap_object(collection, index)?;
                let text = object
                    .get(..to_usize(len, at)?)
                    .ok_or_else(|| malformed(at, "vlen string overruns its heap object"))?;
                AttrValue::Text(String::from_utf8_lossy(text).into_owned())
            }
            _ => AttrValue::Other,
        })
    }

    /// Object `index` of the global heap collection at `addr`.
    fn global_heap_object(&mut self, addr: u64, index: u64) -> Result<Vec<u8>, InspectError> {
        if !self.heaps.contains_key(&addr) {
            let head = self.read_up_to(addr, 16)?;
            let mut h = Bytes::new(&head, addr);
            if h.take(4)? != b"GCOL" {
                return Err(malformed(addr, "global heap collection without GCOL"));
            }
            h.take(4)?;
            let size = self.len(&mut h)?;
            let collection = self.read(addr, size)?;
            self.heaps.insert(addr, collection);
        }
        let collection = self.heaps.get(&addr).map(Vec::as_slice).unwrap_or_default();
        let mut b = Bytes::new(collection, self.base.saturating_add(addr));
        b.take(8 + self.sizeof_len)?;
        while b.remaining() >= 8 + self.sizeof_len {
            let (id, _refs, _) = (b.uint(2)?, b.uint(2)?, b.take(4)?);
            let size = b.uint(self.sizeof_len)?;
            if id == 0 {
                break;
            }
            let object = b.take(to_usize(size, b.offset())?)?;
            if id == index {
                return Ok(object.to_vec());
            }
            b.take(to_usize(size.div_ceil(8) * 8 - size, b.offset())?.min(b.remaining()))?;
        }
        Err(malformed(addr, "missing global heap object"))
    }
}

/// Elements in a dataspace message: `None` for a null dataspace.
fn elements(dataspace: &[u8], sizeof_len: usize, at: u64) -> Result<Option<u64>, InspectError> {
    let mut b = Bytes::new(dataspace, at);
    let version = b.u8()?;
    let rank = b.u8()?;
    b.u8()?; // flags
    match version {
        1 => {
            b.take(5)?;
        }
        2 => {
            if b.u8()? == 2 {
                return Ok(None);
            }
        }
        _ => return Err(malformed(at, "dataspace message version is not 1 or 2")),
    }
    let mut count = 1u64;
    for _ in 0..rank {
        count = count.saturating_mul(b.uint(sizeof_len)?);
    }
    Ok(Some(count))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn attributes(path: &Path) -> Result<Vec<(String, AttrValue)>, InspectError> {
        let len = std::fs::metadata(path).expect("metadata").len();
        let mut file = BufReader::new(File::open(path).expect("open"));
        root_attributes(&mut file, len, &Limits::default())
    }

    fn text<'a>(attributes: &'a [(String, AttrValue)], name: &str) -> &'a str {
        match attributes.iter().find(|(n, _)| n == name) {
            Some((_, AttrValue::Text(text))) => text,
            other => panic!(
                "{name}: {other:?} in {:?}",
                attributes.iter().map(|a| &a.0).collect::<Vec<_>>()
            ),
        }
    }

    #[test]
    fn reads_the_root_attributes_h5py_writes() {
        let dir = keras::fixtures::make();
        for (name, superblock) in [
            ("keras2.h5", 0),
            ("keras2_latest.h5", 0),
            ("keras2_v108.h5", 0),
            ("keras2_vlen.h5", 0),
            ("keras2_userblock.h5", 512),
            ("keras2_userblock_latest.h5", 512),
            ("keras2_dense_attrs.h5", 0),
            ("keras2_dense_attrs_fixed.h5", 0),
            ("superblock1.h5", 0),
        ] {
            let path = dir.path().join(name);
            let len = std::fs::metadata(&path).expect("metadata").len();
            let mut file = File::open(&path).expect("open");
            assert_eq!(find_superblock(&mut file, len), Some(superblock), "{name}");
            let attributes = attributes(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(text(&attributes, "keras_version"), "2.13.1", "{name}");
            assert_eq!(text(&attributes, "backend"), "tensorflow", "{name}");
            let config: serde_json::Value = serde_json::from_str(text(&attributes, "model_config"))
                .unwrap_or_else(|e| panic!("{name}: model_config: {e}"));
            assert_eq!(config["class_name"], "Sequential", "{name}");
            let training: serde_json::Value =
                serde_json::from_str(text(&attributes, "training_config"))
                    .expect("training_config");
            assert_eq!(training["optimizer_config"]["class_name"], "Adam", "{name}");
            if name.contains("dense_attrs") {
                assert!(
                    text(&attributes, "model_config").len() > 64 * 1024,
                    "{name}"
                );
            }
            if name == "superblock1.h5" {
                assert!(attributes.contains(&("epochs".to_owned(), AttrValue::Int(-3))));
                assert!(attributes.contains(&("rate".to_owned(), AttrValue::Float(0.5))));
            }
            let report = inspect(&path, len, &Limits::default()).expect("inspect");
            assert_eq!(report.format, "keras-h5", "{name}");
            assert_eq!(
                report.verdict,
                Verdict::Safe,
                "{name}: {:?}",
                report.findings
            );
        }
    }

    #[test]
    fn refuses_what_it_cannot_read_and_hostile_bounds() {
        let dir = keras::fixtures::make();
        let path = dir.path().join("keras2_dense_attrs.h5");
        let len = std::fs::metadata(&path).expect("metadata").len();
        let small = Limits {
            max_header_bytes: 16 << 10,
            ..Limits::default()
        };
        let mut file = BufReader::new(File::open(&path).expect("open"));
        let refused = root_attributes(&mut file, len, &small);
        assert!(
            matches!(refused, Err(InspectError::LimitExceeded { .. })),
            "{refused:?}"
        );
        // Truncated anywhere: an error, never a silent partial answer of a Keras model.
        let bytes = std::fs::read(dir.path().join("keras2.h5")).expect("read");
        for cut in [100, 700, 2000, 4000] {
            let mut cursor = std::io::Cursor::new(&bytes[..cut]);
            let result = root_attributes(&mut cursor, cut as u64, &Limits::default());
            assert!(
                result
                    .as_ref()
                    .map_or(true, |a| !a.iter().any(|(n, _)| n == "model_config")),
                "cut at {cut}: {result:?}"
            );
        }
        // Any byte of the metadata overwritten: an answer or an error, never a panic.
        let bytes = std::fs::read(dir.path().join("keras2_dense_attrs_fixed.h5")).expect("read");
        for position in (0..4096).step_by(3) {
            let mut mutated = bytes.clone();
            mutated[position] ^= 0xa5;
            let len = mutated.len() as u64;
            let _ = root_attributes(&mut std::io::Cursor::new(mutated), len, &Limits::default());
        }
        let mut not_hdf5 = std::io::Cursor::new(vec![0u8; 4096]);
        assert!(root_attributes(&mut not_hdf5, 4096, &Limits::default()).is_err());
    }
}
