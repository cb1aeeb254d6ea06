//! A tar reader that reads as Python's `tarfile` reads, for PyTorch's legacy checkpoints
//! (torch < 0.4: members `storages`, `tensors` and `pickle`).
//
// From the sources:
// torch/serialization.py `_legacy_load`: a file read from offset 0 is first opened with
// `tarfile.open(fileobj=f, mode="r:", format=tarfile.PAX_FORMAT)` (`legacy_load`); a
// TarError falls through to unpickling from byte 0. `legacy_load` runs
// `tar.extract("storages")` and `tar.extract("tensors")` into a temporary directory and
// unpickles them (pickles back to back, raw storage data between), then
// `tar.extractfile("pickle")`.
// Lib/tarfile.py (3.11 and 3.13 agree except where said):
// - `TarInfo.frombuf`: a block of zeros ends the archive; the checksum field must equal the
//   unsigned or the signed sum of the header, the checksum field counted as spaces
//   (`calc_chksums`); every numeric field must parse (`nti`: base-256 when the first byte
//   is 0x80 or 0xFF, else ASCII up to a NUL, stripped, `int(s, 8)` — which takes signs,
//   underscores and a 0o prefix); the name is prefix + "/" + name when the ustar prefix is
//   not empty (whatever the format, except types L, K, S); type '\0' with a name ending
//   in '/' is a directory.
// - `TarFile.next`: an invalid, empty or truncated header at offset 0 raises ReadError
//   (zeros there: an empty archive); later it ends the archive silently; a member whose
//   data runs past the end raises ("unexpected end of data").
// - `_proc_gnulong` (L, K): the next header's name or link name is the NUL-terminated data,
//   a bad next header raises. `_proc_pax` (x, X, g): "%d %s=%s\n" records (3.13 rejects
//   badly framed ones, 3.11 stops at them: memwarden refuses them); g records persist for
//   every later member; `_apply_pax_info` sets path ('/' stripped), linkpath, size (0 when
//   invalid), GNU.sparse.name, GNU.sparse.size/realsize; a pax size moves the next header.
// - Regular files are types '0', '\0', '7' and 'S' (sparse), and any type tarfile does not
//   know (`_proc_builtin`, `extractfile`); directories and devices carry no data; a link's
//   file object is its target's (`extractfile` → `_find_link_target`: a symlink's target
//   joined to the link's directory, searched in the whole archive; a hard link's among the
//   members before it; both by `os.path.normpath`); `getmember` takes the *last* member of a
//   name (`_getmember` searches from the end).

use std::io::{Read, Seek, SeekFrom};

use crate::{InspectError, Limits};

const BLOCK: u64 = 512;
/// Nested extended headers (pax, GNU long names) before a member.
const MAX_DEPTH: u32 = 64;

/// What a member is, as `tarfile` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarKind {
    /// Data that `extractfile` returns: regular, contiguous, or of a type tarfile does not
    /// know.
    File,
    /// A hard link to an earlier member.
    HardLink(String),
    /// A symbolic link (tarfile follows it inside the archive; `extract` writes the link).
    SymLink(String),
    /// A directory, device or FIFO (type byte given): no data.
    Other(u8),
}

/// One member of a tar archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarMember {
    /// Its name after GNU long names, pax records and the ustar prefix.
    pub name: String,
    /// What it is.
    pub kind: TarKind,
    /// Absolute offset of its data.
    pub offset: u64,
    /// Bytes of data (0 unless a [`TarKind::File`]).
    pub size: u64,
}

/// Why a header block is not a member header (tarfile's HeaderError subclasses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    Empty,
    Truncated,
    Zeros,
    Invalid,
}

struct Header {
    name: String,
    linkname: String,
    size: i128,
    typ: u8,
    offset_data: u64,
}

fn py_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' | '\x1c'..='\x1f'
    )
}

/// Python's `int(s, radix)` on ASCII text: whitespace, sign, `0o` prefix (radix 8),
/// underscores between digits. `None`: ValueError (or beyond i128).
fn py_int(s: &str, radix: u32) -> Option<i128> {
    let s = s.trim_matches(py_space);
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let prefixed = radix == 8 && (s.starts_with("0o") || s.starts_with("0O"));
    let digits = if prefixed { &s[2..] } else { s };
    let (mut n, mut underscore_ok, mut need_digit) = (0i128, prefixed, true);
    for c in digits.chars() {
        if c == '_' && underscore_ok {
            (underscore_ok, need_digit) = (false, true);
            continue;
        }
        let d = c.to_digit(radix)?;
        n = n
            .checked_mul(i128::from(radix))?
            .checked_add(i128::from(d))?;
        (underscore_ok, need_digit) = (true, false);
    }
    (!need_digit).then_some(if negative { -n } else { n })
}

/// `nts`: up to the first NUL, decoded.
fn nts(s: &[u8]) -> String {
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    String::from_utf8_lossy(&s[..end]).into_owned()
}

/// `nti`: a numeric header field; `None` is InvalidHeaderError.
fn nti(s: &[u8]) -> Option<i128> {
    if let [first @ (0o200 | 0o377), rest @ ..] = s {
        let n = rest.iter().fold(0i128, |n, &b| (n << 8) | i128::from(b));
        return Some(if *first == 0o377 {
            n - (1i128 << (8 * rest.len()))
        } else {
            n
        });
    }
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    let text = std::str::from_utf8(&s[..end])
        .ok()
        .filter(|t| t.is_ascii())?;
    let text = text.trim_matches(py_space);
    py_int(if text.is_empty() { "0" } else { text }, 8)
}

/// `TarInfo.frombuf` on one block (a short `buf` is EOF).
fn frombuf(buf: &[u8], offset: u64) -> Result<Header, Bad> {
    if buf.is_empty() {
        return Err(Bad::Empty);
    }
    if buf.len() != BLOCK as usize {
        return Err(Bad::Truncated);
    }
    if buf.iter().all(|&b| b == 0) {
        return Err(Bad::Zeros);
    }
    let summed = buf[..148].iter().chain(&buf[156..]);
    let unsigned = 256 + summed.clone().map(|&b| i128::from(b)).sum::<i128>();
    let signed = 256 + summed.map(|&b| i128::from(b as i8)).sum::<i128>();
    let chksum = nti(&buf[148..156]).ok_or(Bad::Invalid)?;
    if chksum != unsigned && chksum != signed {
        return Err(Bad::Invalid);
    }
    for (from, to) in [
        (100, 108),
        (108, 116),
        (116, 124),
        (136, 148),
        (329, 337),
        (337, 345),
    ] {
        nti(&buf[from..to]).ok_or(Bad::Invalid)?;
    }
    let size = nti(&buf[124..136]).ok_or(Bad::Invalid)?;
    let mut typ = buf[156];
    let mut name = nts(&buf[..100]);
    if typ == 0 && name.ends_with('/') {
        typ = b'5';
    }
    if typ == b'5' {
        name = name.trim_end_matches('/').to_owned();
    }
    let prefix = nts(&buf[345..500]);
    if !prefix.is_empty() && !matches!(typ, b'L' | b'K' | b'S') {
        name = format!("{prefix}/{name}");
    }
    let linkname = nts(&buf[157..257]);
    Ok(Header {
        name,
        linkname,
        size,
        typ,
        offset_data: offset + BLOCK,
    })
}

/// Whether `head512` is a tar member header as `tarfile.open` accepts at offset 0: the
/// checksum (unsigned or signed) and every numeric field valid. A block of zeros is not
/// (tarfile opens it as an empty archive).
pub fn looks_like_tar(head512: &[u8]) -> bool {
    head512.len() >= BLOCK as usize && frombuf(&head512[..BLOCK as usize], 0).is_ok()
}

/// Whether tarfile skips a member's data (`isreg()` or a type it does not know).
fn has_data(typ: u8) -> bool {
    !matches!(typ, b'1'..=b'6' | b'L' | b'K')
}

fn bad(offset: u64, message: impl Into<String>) -> InspectError {
    InspectError::Malformed {
        offset,
        message: message.into(),
    }
}

/// `_block`: `size` rounded up to whole blocks.
fn blocks(size: i128, offset: u64) -> Result<u64, InspectError> {
    u64::try_from(size)
        .ok()
        .and_then(|s| s.checked_next_multiple_of(BLOCK))
        .ok_or_else(|| bad(offset, format!("member size {size}")))
}

/// An ordered dict insert, as Python's: a known key keeps its place.
fn insert(map: &mut Vec<(String, String)>, key: String, value: String) {
    match map.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => map.push((key, value)),
    }
}

/// `_proc_pax`'s records, framed as 3.13 requires.
fn pax_records(buf: &[u8], offset: u64) -> Result<Vec<(String, String)>, InspectError> {
    let (mut records, mut pos) = (Vec::new(), 0usize);
    while pos < buf.len() && buf[pos] != 0 {
        let digits = buf[pos..].iter().take_while(|b| b.is_ascii_digit()).count();
        let length = std::str::from_utf8(&buf[pos..pos + digits])
            .ok()
            .and_then(|d| d.parse::<usize>().ok())
            .filter(|&l| (1..=20).contains(&digits) && l >= 5.max(digits + 2))
            .filter(|&l| pos.checked_add(l).is_some_and(|end| end <= buf.len()))
            .filter(|_| buf.get(pos + digits) == Some(&b' '))
            .ok_or_else(|| bad(offset, "malformed pax record (Python versions disagree)"))?;
        let body = &buf[pos + digits + 1..pos + length - 1];
        let eq = body.iter().position(|&b| b == b'=').filter(|&i| i > 0);
        let (Some(eq), b'\n') = (eq, buf[pos + length - 1]) else {
            return Err(bad(
                offset,
                "malformed pax record (Python versions disagree)",
            ));
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        records.push((text(&body[..eq]), text(&body[eq + 1..])));
        pos += length;
    }
    Ok(records)
}

/// `int(value)` for a pax number: invalid is `invalid`; a number Python reads but
/// memwarden would not (Unicode digits, beyond i128) is refused.
fn pax_int(value: &str, invalid: Option<i128>, offset: u64) -> Result<i128, InspectError> {
    match py_int(value, 10) {
        Some(n) => Ok(n),
        None if !value.is_ascii() || value.trim_matches(py_space).len() > 30 => {
            Err(bad(offset, format!("pax number {value:?}")))
        }
        None => invalid.ok_or_else(|| bad(offset, format!("pax number {value:?}"))),
    }
}

/// `_apply_pax_info`.
fn apply_pax(h: &mut Header, pax: &[(String, String)], offset: u64) -> Result<(), InspectError> {
    for (key, value) in pax {
        match key.as_str() {
            "GNU.sparse.name" => h.name = value.clone(),
            "GNU.sparse.size" | "GNU.sparse.realsize" => h.size = pax_int(value, None, offset)?,
            "path" => h.name = value.trim_end_matches('/').to_owned(),
            "linkpath" => h.linkname = value.clone(),
            "size" => h.size = pax_int(value, Some(0), offset)?,
            _ => {}
        }
    }
    Ok(())
}

struct Reader<'a, R> {
    r: &'a mut R,
    file_len: u64,
    max_header_bytes: u64,
    global: Vec<(String, String)>,
}

impl<R: Read + Seek> Reader<'_, R> {
    /// Up to `len` bytes at `offset` (fewer at the end of the file).
    fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, InspectError> {
        let len = len.min(self.file_len.saturating_sub(offset));
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.r
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.r.read_exact(&mut buf))
            .map_err(|e| InspectError::io(offset, e))?;
        Ok(buf)
    }

    /// The data of an extended header, bounded.
    fn body(&mut self, h: &Header) -> Result<Vec<u8>, InspectError> {
        let len = blocks(h.size, h.offset_data)?;
        if len > self.max_header_bytes {
            let limit = self.max_header_bytes;
            return Err(InspectError::LimitExceeded {
                what: "tar extended header bytes",
                limit,
            });
        }
        self.read(h.offset_data, len)
    }

    /// `fromtarfile` at `offset`: the member and where the next header is, or why the block
    /// is not a header.
    fn member(
        &mut self,
        offset: u64,
        depth: u32,
    ) -> Result<Result<(Header, u64), Bad>, InspectError> {
        let buf = self.read(offset, BLOCK)?;
        let h = match frombuf(&buf, offset) {
            Ok(h) => h,
            Err(why) => return Ok(Err(why)),
        };
        let after = h.offset_data.checked_add(blocks(h.size, offset)?);
        let after = after.ok_or_else(|| bad(offset, "member size"))?;
        let next = |this: &mut Self| {
            if depth >= MAX_DEPTH {
                return Err(bad(offset, "too many nested tar headers"));
            }
            match this.member(after, depth + 1)? {
                Ok(found) => Ok(found),
                Err(why) => Err(bad(
                    after,
                    format!("header after an extended header: {why:?}"),
                )),
            }
        };
        match h.typ {
            b'L' | b'K' => {
                let text = nts(&self.body(&h)?);
                let (mut inner, at) = next(self)?;
                match h.typ {
                    b'L' => inner.name = text,
                    _ => inner.linkname = text,
                }
                if inner.typ == b'5' {
                    inner.name = inner
                        .name
                        .strip_suffix('/')
                        .unwrap_or(&inner.name)
                        .to_owned();
                }
                Ok(Ok((inner, at)))
            }
            b'x' | b'X' | b'g' => {
                let records = pax_records(&self.body(&h)?, offset)?;
                let mut pax = self.global.clone();
                for (key, value) in records {
                    insert(
                        if h.typ == b'g' {
                            &mut self.global
                        } else {
                            &mut pax
                        },
                        key,
                        value,
                    );
                }
                let pax = if h.typ == b'g' {
                    self.global.clone()
                } else {
                    pax
                };
                let sparse = |k: &str| {
                    pax.iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.as_str())
                };
                if sparse("GNU.sparse.map")
                    .or(sparse("GNU.sparse.size"))
                    .is_some()
                    || (sparse("GNU.sparse.major"), sparse("GNU.sparse.minor"))
                        == (Some("1"), Some("0"))
                {
                    return Err(InspectError::Unsupported(
                        "GNU sparse tar member".to_owned(),
                    ));
                }
                let (mut inner, mut at) = next(self)?;
                if h.typ != b'g' {
                    apply_pax(&mut inner, &pax, offset)?;
                    if pax.iter().any(|(k, _)| k == "size") {
                        let data = if has_data(inner.typ) {
                            blocks(inner.size, offset)?
                        } else {
                            0
                        };
                        at = inner
                            .offset_data
                            .checked_add(data)
                            .ok_or_else(|| bad(offset, "size"))?;
                    }
                }
                Ok(Ok((inner, at)))
            }
            b'S' => Err(InspectError::Unsupported(
                "GNU sparse tar member".to_owned(),
            )),
            _ => {
                let at = if has_data(h.typ) {
                    after
                } else {
                    h.offset_data
                };
                let mut h = h;
                let global = self.global.clone();
                apply_pax(&mut h, &global, offset)?;
                if h.typ == b'5' {
                    h.name = h.name.trim_end_matches('/').to_owned();
                }
                Ok(Ok((h, at)))
            }
        }
    }
}

/// Every member of a tar file, in order, as Python's `tarfile` lists them (`getmembers`):
/// an error where `tarfile.open` or `getmembers` raises, and for what memwarden cannot
/// follow exactly (sparse members, malformed pax records). At most
/// `limits.max_zip_entries` members.
pub fn read_members<R: Read + Seek>(
    reader: &mut R,
    file_len: u64,
    limits: &Limits,
) -> Result<Vec<TarMember>, InspectError> {
    let mut tar = Reader {
        r: reader,
        file_len,
        max_header_bytes: limits.max_header_bytes,
        global: Vec::new(),
    };
    let (mut members, mut offset) = (Vec::new(), 0u64);
    loop {
        if offset > file_len {
            return Err(InspectError::Truncated { offset: file_len });
        }
        let (h, next) = match tar.member(offset, 0)? {
            Ok(found) => found,
            Err(Bad::Zeros) => break,
            Err(why) if offset == 0 => {
                return Err(bad(0, format!("not a tar file ({why:?} header)")))
            }
            Err(_) => break,
        };
        if members.len() >= limits.max_zip_entries {
            let limit = limits.max_zip_entries as u64;
            return Err(InspectError::LimitExceeded {
                what: "tar members",
                limit,
            });
        }
        let kind = match h.typ {
            b'1' => TarKind::HardLink(h.linkname),
            b'2' => TarKind::SymLink(h.linkname),
            b'3'..=b'6' => TarKind::Other(h.typ),
            _ => TarKind::File,
        };
        let size = match kind {
            TarKind::File => u64::try_from(h.size).map_err(|_| bad(offset, "negative size"))?,
            _ => 0,
        };
        if h.offset_data
            .checked_add(size)
            .is_none_or(|end| end > file_len)
        {
            return Err(InspectError::Truncated { offset: file_len });
        }
        members.push(TarMember {
            name: h.name,
            kind,
            offset: h.offset_data,
            size,
        });
        offset = next;
    }
    Ok(members)
}

/// `posixpath.normpath`.
fn normpath(path: &str) -> String {
    let slashes = match path.strip_prefix('/') {
        Some(rest) if rest.starts_with('/') && !rest.starts_with("//") => 2,
        Some(_) => 1,
        None => 0,
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part != ".." || (slashes == 0 && parts.is_empty()) || parts.last() == Some(&"..") {
            parts.push(part);
        } else {
            parts.pop();
        }
    }
    let joined = format!("{}{}", "/".repeat(slashes), parts.join("/"));
    if joined.is_empty() {
        ".".to_owned()
    } else {
        joined
    }
}

/// The member whose data `tarfile.extractfile(name)` returns: the last member of that name
/// (`getmember`), links followed as `_find_link_target` follows them; `None` when tarfile
/// finds nothing, a directory or device, or a link that leads nowhere (or in circles).
pub fn extractfile_like_tarfile<'m>(members: &'m [TarMember], name: &str) -> Option<&'m TarMember> {
    let name = name.trim_end_matches('/');
    let mut index = members.iter().rposition(|m| m.name == name)?;
    for _ in 0..=members.len().min(MAX_DEPTH as usize) {
        let member = &members[index];
        index = match &member.kind {
            TarKind::File => return Some(member),
            TarKind::Other(_) => return None,
            TarKind::SymLink(target) => {
                let dir = member.name.rfind('/').map_or("", |i| &member.name[..i]);
                let dir = if dir.chars().all(|c| c == '/') {
                    dir
                } else {
                    dir.trim_end_matches('/')
                };
                let joined: Vec<&str> = [dir, target.as_str()]
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .collect();
                let wanted = normpath(&joined.join("/"));
                members.iter().rposition(|m| normpath(&m.name) == wanted)?
            }
            TarKind::HardLink(target) => {
                let wanted = normpath(target);
                members[..index]
                    .iter()
                    .rposition(|m| normpath(&m.name) == wanted)?
            }
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A ustar header; `checksum` replaces the computed one when given.
    fn header(name: &str, typ: u8, size: usize, link: &str, checksum: Option<i128>) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        for (at, field) in [(100, "0000644\0"), (108, "0000000\0"), (116, "0000000\0")] {
            h[at..at + 8].copy_from_slice(field.as_bytes());
        }
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = typ;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..265].copy_from_slice(b"ustar\x0000");
        h[148..156].copy_from_slice(b"        ");
        let sum = checksum.unwrap_or_else(|| h.iter().map(|&b| i128::from(b)).sum());
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn member(name: &str, typ: u8, data: &[u8], link: &str) -> Vec<u8> {
        let mut out = header(name, typ, data.len(), link, None);
        out.extend(data);
        out.resize(out.len().next_multiple_of(512), 0);
        out
    }

    fn pax(typ: u8, records: &[(&str, &str)]) -> Vec<u8> {
        let mut body = String::new();
        for (k, v) in records {
            let rest = format!(" {k}={v}\n");
            let mut len = rest.len() + 1;
            len += format!("{}", len + rest.len()).len() - 1;
            body += &format!("{len}{rest}");
        }
        member("././@PaxHeader", typ, body.as_bytes(), "")
    }

    fn tar(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut out = parts.concat();
        out.extend([0u8; 1024]);
        out
    }

    fn read(bytes: &[u8]) -> Result<Vec<TarMember>, InspectError> {
        read_members(
            &mut Cursor::new(bytes),
            bytes.len() as u64,
            &Limits::default(),
        )
    }

    #[test]
    fn legacy_checkpoint_members() {
        let parts = [
            member("storages", b'0', b"\x80\x02K\x00.", ""),
            member("tensors", b'0', b"\x80\x02K\x00.", ""),
            member("pickle", b'0', &[7; 600], ""),
        ];
        let bytes = tar(&parts);
        assert!(looks_like_tar(&bytes[..512]));
        let members = read(&bytes).unwrap();
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["storages", "tensors", "pickle"]);
        assert_eq!((members[2].offset, members[2].size), (2560, 600));
        assert_eq!(
            extractfile_like_tarfile(&members, "pickle"),
            Some(&members[2])
        );
    }

    #[test]
    fn checksums_as_tarfile_computes_them() {
        let mut signed = header("\u{e9}t\u{e9}", b'0', 0, "", None);
        let sum = 256
            + signed[..148]
                .iter()
                .chain(&signed[156..])
                .map(|&b| i128::from(b as i8))
                .sum::<i128>();
        signed = header("\u{e9}t\u{e9}", b'0', 0, "", Some(sum));
        assert!(looks_like_tar(&signed));
        let wrong = header("pickle", b'0', 0, "", Some(1234));
        assert!(!looks_like_tar(&wrong) && !looks_like_tar(&[0; 512]) && !looks_like_tar(b"short"));
        assert!(read(&tar(std::slice::from_ref(&wrong))).is_err());
        // After the first member a bad header ends the archive, as in tarfile.
        let later = tar(&[
            member("storages", b'0', b"x", ""),
            wrong,
            member("pickle", b'0', b"y", ""),
        ]);
        assert_eq!(read(&later).unwrap().len(), 1);
        assert!(read(&[0; 1024]).unwrap().is_empty());
    }

    #[test]
    fn numbers_as_python_reads_them() {
        assert_eq!(nti(b"0o17 \0"), Some(15));
        assert_eq!(nti(b" 1_7\0xx"), Some(15));
        assert_eq!(nti(b"\0\0\0"), Some(0));
        assert_eq!(nti(b"18"), None);
        assert_eq!(nti(b"1__7"), None);
        assert_eq!(nti(&[0x80, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(nti(&[0xFF; 8]), Some(-1));
        assert_eq!(py_int("-_1", 10), None);
        let mut big = header("pickle", b'0', 0, "", None);
        big[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
        big[148..156].copy_from_slice(b"        ");
        let sum: i128 = big.iter().map(|&b| i128::from(b)).sum();
        big[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let members = read(&tar(&[big, vec![9; 512]])).unwrap();
        assert_eq!(members[0].size, 3);
    }

    #[test]
    fn long_names_and_pax_records() {
        let long = "d/".repeat(80) + "pickle";
        let parts = [
            member("././@LongLink", b'L', format!("{long}\0").as_bytes(), ""),
            member("short", b'0', b"a", ""),
            pax(b'x', &[("path", "tensors"), ("size", "3")]),
            member("other", b'0', b"abc", ""),
            pax(b'g', &[("comment", "hi")]),
            member("storages", b'7', b"s", ""),
            member("weird", b'Z', b"z", ""),
        ];
        let members = read(&tar(&parts)).unwrap();
        let got: Vec<(&str, u64)> = members.iter().map(|m| (m.name.as_str(), m.size)).collect();
        assert_eq!(
            got,
            [
                (long.as_str(), 1),
                ("tensors", 3),
                ("storages", 1),
                ("weird", 1)
            ]
        );
        let bad = [pax(b'x', &[("path", "p")]), member("x", b'0', b"", "")].concat();
        let mut broken = bad.clone();
        broken[512..514].copy_from_slice(b"9x");
        assert!(read(&tar(&[broken])).is_err());
        let sparse = tar(&[
            pax(b'x', &[("GNU.sparse.map", "0,1")]),
            member("s", b'0', b"", ""),
        ]);
        assert!(matches!(read(&sparse), Err(InspectError::Unsupported(_))));
        let orphan = pax(b'x', &[("path", "p")]);
        assert!(read(&orphan).is_err());
    }

    #[test]
    fn lookups_follow_tarfile() {
        let parts = [
            member("data/real", b'0', b"one", ""),
            member("pickle", b'0', b"old", ""),
            member("pickle", b'2', b"", "data/../data/real"),
            member("tensors", b'1', b"", "data/real"),
            member("storages", b'2', b"", "nowhere"),
            member("loop", b'2', b"", "loop"),
            member("dir/", b'5', b"", ""),
        ];
        let members = read(&tar(&parts)).unwrap();
        let target = extractfile_like_tarfile(&members, "pickle").map(|m| m.name.as_str());
        assert_eq!(target, Some("data/real"));
        assert_eq!(
            extractfile_like_tarfile(&members, "tensors").map(|m| m.offset),
            Some(512)
        );
        assert!(extractfile_like_tarfile(&members, "storages").is_none());
        assert!(extractfile_like_tarfile(&members, "loop").is_none());
        assert!(extractfile_like_tarfile(&members, "dir").is_none());
        assert_eq!(normpath("//a/./b/../c/"), "//a/c");
        assert_eq!(normpath("../a/.."), "..");
        assert_eq!(normpath("///"), "/");
    }

    #[test]
    fn truncation_and_limits_are_errors_never_panics() {
        let bytes = tar(&[
            pax(b'x', &[("path", "storages")]),
            member("s", b'0', &[1; 700], ""),
            member("pickle", b'0', b"p", ""),
        ]);
        for cut in 0..bytes.len() {
            let _ = read(&bytes[..cut]);
        }
        assert!(matches!(
            read(&bytes[..1536 + 100]),
            Err(InspectError::Truncated { .. })
        ));
        let limits = Limits {
            max_zip_entries: 1,
            ..Limits::default()
        };
        let refused = read_members(&mut Cursor::new(&bytes[..]), bytes.len() as u64, &limits);
        assert!(matches!(refused, Err(InspectError::LimitExceeded { .. })));
        let mut chain = Vec::new();
        for _ in 0..100 {
            chain.extend(member("././@LongLink", b'L', b"n\0", ""));
        }
        assert!(read(&tar(&[chain])).is_err());
    }
}
