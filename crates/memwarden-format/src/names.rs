//! Names as text: file paths, function names, arguments, whatever their bytes.
//!
//! On Linux a file name, an argument or an environment value is any sequence of bytes
//! except NUL, and a Python name may hold lone surrogates; JSON, terminals and the folded
//! format carry only valid UTF-8. memwarden writes every such name with one scheme,
//! **`memwarden-escape`**, documented for users in `docs/capture-format.md` and
//! `docs/report-schema.md`:
//!
//! - valid UTF-8 is kept as it is, except the backslash, which is written `\\`;
//! - every byte that is not part of valid UTF-8 is written `\xNN` (two lower-case hex
//!   digits).
//!
//! So the text is always valid UTF-8 (it serialises as JSON), a name that is valid UTF-8
//! without a backslash reads as itself, and two different byte strings never give the same
//! text: [`unescape`] gives the bytes back. Python's surrogateescape does not do this as
//! JSON: serde and most JSON readers refuse the lone surrogates it produces.
//!
//! Outputs that need more characters kept out (the folded format's `;` and line breaks, a
//! terminal's control characters) write them the same way, `\xNN` of their UTF-8 bytes
//! ([`escape_also`]); [`unescape`] reads those forms too.
//!
//! ```
//! use memwarden_format::names::{escape_bytes, unescape};
//! assert_eq!(escape_bytes(b"train.py"), "train.py");
//! assert_eq!(escape_bytes(b"caf\xe9 \\ x.py"), r"caf\xe9 \\ x.py");
//! assert_eq!(unescape(r"caf\xe9 \\ x.py").unwrap(), b"caf\xe9 \\ x.py");
//! ```

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt::Write;
use std::os::unix::ffi::OsStrExt;

/// Writes `bytes` as text (see the [module](self) documentation).
pub fn escape_bytes(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        if !text.contains('\\') {
            return Cow::Borrowed(text);
        }
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            push_byte(&mut out, *byte);
        }
    }
    Cow::Owned(out)
}

/// Writes an OS string (an argument, a path, an environment value) as text.
pub fn escape_os(text: &OsStr) -> Cow<'_, str> {
    escape_bytes(text.as_bytes())
}

/// Writes a path as text.
pub fn escape_path(path: &std::path::Path) -> Cow<'_, str> {
    escape_os(path.as_os_str())
}

fn push_byte(out: &mut String, byte: u8) {
    let _ = write!(out, "\\x{byte:02x}");
}

/// Escapes, in text already written by [`escape_bytes`], the characters `also` selects,
/// as `\xNN` of their UTF-8 bytes: the folded format keeps out `;` and line breaks, a
/// terminal keeps out control characters. [`unescape`] still gives the original bytes.
pub fn escape_also(text: &str, also: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(&also) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if also(c) {
            let mut buffer = [0u8; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                push_byte(&mut out, byte);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Characters a terminal line or a table cell should not hold as they are: control
/// characters (line breaks, tabs, escape sequences).
pub fn is_control(c: char) -> bool {
    c.is_control()
}

/// The bytes a text written by [`escape_bytes`] (or [`escape_also`]) stands for; `None`
/// when it holds a backslash that starts neither `\\` nor `\xNN`.
pub fn unescape(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes.get(i + 1)? {
            b'\\' => {
                out.push(b'\\');
                i += 2;
            }
            b'x' => {
                let hex = std::str::from_utf8(bytes.get(i + 2..i + 4)?).ok()?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 4;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_utf8_without_backslash_is_itself() {
        for name in [
            "train.py",
            "/usr/lib/python3.11/json/__init__.py",
            "модель.py",
            "<module>",
            "a;b\nc",
        ] {
            assert!(matches!(escape_bytes(name.as_bytes()), Cow::Borrowed(n) if n == name));
        }
    }

    #[test]
    fn invalid_bytes_and_backslashes_are_escaped() {
        assert_eq!(escape_bytes(b"a\xff.py"), r"a\xff.py");
        assert_eq!(escape_bytes(b"a\xfe.py"), r"a\xfe.py");
        assert_eq!(escape_bytes(b"C:\\x"), r"C:\\x");
        assert_eq!(escape_bytes(b"\\xff"), r"\\xff");
        // A lone surrogate as CPython's surrogatepass encodes it: three invalid bytes.
        assert_eq!(escape_bytes(b"f\xed\xa0\x80"), r"f\xed\xa0\x80");
        // A truncated sequence: each byte on its own.
        assert_eq!(escape_bytes(b"\xe2\x82"), r"\xe2\x82");
        assert_eq!(escape_bytes(b"\xe2\x82\xac"), "€");
    }

    #[test]
    fn different_bytes_never_give_the_same_text_and_round_trip() {
        let samples: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"plain".to_vec(),
            b"a\xff".to_vec(),
            b"a\\xff".to_vec(),
            b"a\\\xff".to_vec(),
            b"\\".to_vec(),
            b"\\\\".to_vec(),
            b"x\\x4".to_vec(),
            "é€😀".as_bytes().to_vec(),
            b"\xed\xa0\x80\xed\xb0\x80".to_vec(),
            (0u8..=255).collect(),
        ];
        let mut seen = std::collections::HashSet::new();
        for bytes in &samples {
            let text = escape_bytes(bytes).into_owned();
            assert!(seen.insert(text.clone()), "{text} given twice");
            assert_eq!(unescape(&text).as_deref(), Some(bytes.as_slice()), "{text}");
        }
    }

    #[test]
    fn every_short_byte_string_round_trips() {
        for a in 0u8..=255 {
            for b in [0u8, b'\\', b'x', 0x41, 0x80, 0xc3, 0xa9, 0xff] {
                let bytes = [a, b, a];
                assert_eq!(unescape(&escape_bytes(&bytes)).as_deref(), Some(&bytes[..]));
            }
        }
    }

    #[test]
    fn extra_characters_escape_the_same_way_and_still_round_trip() {
        let text = escape_bytes(b"f;g\nh\\\xff");
        let folded = escape_also(&text, |c| c == ';' || c == '\n');
        assert_eq!(folded, r"f\x3bg\x0ah\\\xff");
        assert!(!folded.contains([';', '\n']));
        assert_eq!(unescape(&folded).unwrap(), b"f;g\nh\\\xff");
        assert_eq!(
            escape_also("tab\there\u{85}", is_control),
            r"tab\x09here\xc2\x85"
        );
        assert!(matches!(escape_also("plain", is_control), Cow::Borrowed(_)));
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for text in [r"\", r"\n", r"\x", r"\x4", r"\xzz"] {
            assert_eq!(unescape(text), None, "{text}");
        }
    }

    #[test]
    fn os_strings_and_paths() {
        use std::os::unix::ffi::OsStrExt;
        let os = OsStr::from_bytes(b"w\xff.py");
        assert_eq!(escape_os(os), r"w\xff.py");
        assert_eq!(escape_path(std::path::Path::new(os)), r"w\xff.py");
    }
}
