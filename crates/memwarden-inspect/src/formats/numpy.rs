//! `.npy` as `numpy.lib.format` reads it.
//!
//! The header is a Python literal read with `ast.literal_eval` (see [`super::literal`]): a
//! repeated key keeps its last value, and `descr` is a dtype string or a list of fields
//! (`[('a', '<f8'), ('b', '|O', (2,))]`, nested). An array whose dtype holds objects
//! anywhere is stored as a pickle after the header, which `np.load(allow_pickle=True)` runs:
//! it is scanned.

use super::apply_scan;
use super::literal::{self, Literal};
use crate::pickle::{self, Extent, Flavor};
use crate::source::{FileSource, Skip};
use crate::{ArrayInfo, FileReport, Finding, InspectError, Options, Severity};

/// The npy magic string.
pub(crate) const MAGIC: &[u8] = b"\x93NUMPY";

/// The largest header numpy itself reads (`_MAX_HEADER_SIZE`, 10 000) with room for old
/// files written before that bound.
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// Reads an npy header from `source` (at `base` bytes into the file) and, for an object
/// array, scans the pickle that follows; the array's inventory entry is returned.
pub(crate) fn read_npy<S: Skip>(
    source: &mut S,
    base: u64,
    name: Option<String>,
    options: &Options,
    report: &mut FileReport,
) -> Result<ArrayInfo, InspectError> {
    let mut fixed = [0u8; 8];
    source
        .read_exact(&mut fixed)
        .map_err(|_| InspectError::Truncated { offset: base })?;
    if &fixed[..6] != MAGIC {
        return Err(InspectError::Malformed {
            offset: base,
            message: "not an npy file (no \\x93NUMPY magic)".into(),
        });
    }
    let (header_len, start) = match fixed[6] {
        1 => {
            let mut b = [0u8; 2];
            source
                .read_exact(&mut b)
                .map_err(|_| InspectError::Truncated { offset: base + 8 })?;
            (u64::from(u16::from_le_bytes(b)), base + 10)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            source
                .read_exact(&mut b)
                .map_err(|_| InspectError::Truncated { offset: base + 8 })?;
            (u64::from(u32::from_le_bytes(b)), base + 12)
        }
        version => {
            return Err(InspectError::Malformed {
                offset: base + 6,
                message: format!("npy format version {version}, which numpy does not read"),
            })
        }
    };
    let cap = options.limits.max_header_bytes.min(MAX_HEADER_BYTES);
    if header_len > cap {
        return Err(InspectError::LimitExceeded {
            what: "npy header bytes",
            limit: cap,
        });
    }
    let mut header = vec![0u8; header_len as usize];
    source
        .read_exact(&mut header)
        .map_err(|_| InspectError::Truncated { offset: start })?;
    let bad = |what: String| InspectError::Malformed {
        offset: start,
        message: format!("npy header: {what}"),
    };
    let text = String::from_utf8_lossy(&header);
    let dict = literal::parse(&text).map_err(bad)?;
    let descr = dict
        .get("descr")
        .ok_or_else(|| bad("no 'descr' key".into()))?;
    let shape: Vec<u64> = match dict.get("shape") {
        Some(Literal::Tuple(dims)) => dims
            .iter()
            .map(|d| match d {
                Literal::Int(i) => u64::try_from(*i).map_err(|_| bad(format!("dimension {i}"))),
                _ => Err(bad("a non-integer dimension".into())),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad("'shape' is not a tuple".into())),
    };
    let dtype = descr_text(descr);
    let data_offset = start + header_len;
    if has_object(descr).map_err(bad)? {
        let what = name.as_deref().unwrap_or("the array").to_owned();
        report.findings.push(Finding {
            severity: Severity::High,
            offset: Some(data_offset),
            message: format!("{what}: an object array (dtype {dtype} holds Python objects), stored as a pickle that np.load(..., allow_pickle=True) runs"),
        });
        report.verdict = crate::Verdict::Unsafe;
        let scan = pickle::scan(source, data_offset, options, Flavor::Plain, Extent::One);
        apply_scan(report, &scan, options, &format!("{what}'s pickle"));
        return Ok(ArrayInfo {
            name,
            dtype,
            shape: Some(shape),
            bytes: 0,
            kind: "npy".to_owned(),
        });
    }
    let size = itemsize(descr).ok_or_else(|| bad(format!("dtype {dtype} of unknown size")))?;
    let bytes = pickle::element_bytes(Some(&shape), size)
        .ok_or_else(|| bad(format!("shape {shape:?} of {dtype} overflows 64 bits")))?;
    Ok(ArrayInfo {
        name,
        dtype,
        shape: Some(shape),
        bytes,
        kind: "npy".to_owned(),
    })
}

/// Whether a `descr` holds Python objects anywhere (numpy's `dtype.hasobject`).
fn has_object(descr: &Literal) -> Result<bool, String> {
    match descr {
        Literal::Str(code) => Ok(code
            .trim_start_matches(['<', '>', '|', '='])
            .starts_with('O')),
        Literal::List(fields) => {
            for field in fields {
                let Literal::Tuple(parts) = field else {
                    return Err("a structured dtype field that is not a tuple".into());
                };
                let dtype = parts
                    .get(1)
                    .ok_or("a structured dtype field without a dtype")?;
                if has_object(dtype)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Literal::Tuple(parts) => match parts.first() {
            Some(base) => has_object(base),
            None => Err("an empty dtype tuple".into()),
        },
        _ => Err("'descr' is neither a dtype string nor a list of fields".into()),
    }
}

/// Bytes per element of a `descr` (fields summed, sub-array shapes multiplied).
fn itemsize(descr: &Literal) -> Option<u64> {
    match descr {
        Literal::Str(code) => pickle::itemsize(Some(code)),
        Literal::List(fields) => fields.iter().try_fold(0u64, |total, field| {
            let Literal::Tuple(parts) = field else {
                return None;
            };
            let size = itemsize(parts.get(1)?)?;
            let count = match parts.get(2) {
                None => 1,
                Some(Literal::Int(n)) => u64::try_from(*n).ok()?,
                Some(Literal::Tuple(dims)) => dims.iter().try_fold(1u64, |acc, d| match d {
                    Literal::Int(n) => acc.checked_mul(u64::try_from(*n).ok()?),
                    _ => None,
                })?,
                Some(_) => return None,
            };
            total.checked_add(size.checked_mul(count)?)
        }),
        Literal::Tuple(parts) => itemsize(parts.first()?),
        _ => None,
    }
}

/// A `descr` as text: the code itself, or the fields' codes.
fn descr_text(descr: &Literal) -> String {
    match descr {
        Literal::Str(code) => code.clone(),
        Literal::List(fields) => {
            let parts: Vec<String> = fields
                .iter()
                .map(|field| match field {
                    Literal::Tuple(parts) => {
                        let name = match parts.first() {
                            Some(Literal::Str(n)) => n.clone(),
                            _ => "?".to_owned(),
                        };
                        let dtype = parts.get(1).map_or_else(String::new, descr_text);
                        format!("{name}:{dtype}")
                    }
                    _ => "?".to_owned(),
                })
                .collect();
            format!("[{}]", parts.join(", "))
        }
        Literal::Tuple(parts) => parts.first().map_or_else(String::new, descr_text),
        _ => "?".to_owned(),
    }
}

/// A whole `.npy` file.
pub(crate) fn inspect(
    path: &std::path::Path,
    len: u64,
    options: &Options,
) -> Result<FileReport, InspectError> {
    let mut report = FileReport::new(path, "npy", len);
    let mut source = FileSource::open(path, 0)?;
    let array = read_npy(&mut source, 0, None, options, &mut report)?;
    report.arrays.push(array);
    finish(&mut report, false);
    Ok(report)
}

/// The load prediction of `.npy` and `.npz` files.
pub(crate) fn finish(report: &mut FileReport, npz: bool) {
    report.payload_bytes = report.arrays.iter().map(|a| a.bytes).sum();
    report.loader = "numpy.load".to_owned();
    report.predicted_load_peak_bytes = Some(report.payload_bytes);
    if npz {
        report.prediction_rule = "np.load returns a lazy NpzFile: each array is read once into its buffer when accessed; all of them once".to_owned();
        report.mmap_note =
            "arrays inside .npz cannot be memory-mapped: save them as separate .npy files"
                .to_owned();
    } else {
        report.prediction_rule = "np.load reads the array once into its buffer".to_owned();
        report.mmappable = report.verdict == crate::Verdict::Safe;
        report.mmap_note = "np.load(path, mmap_mode='r') maps it instead".to_owned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descr(text: &str) -> Literal {
        literal::parse(text).expect("parses")
    }

    #[test]
    fn object_fields_are_found_anywhere_in_a_dtype() {
        assert_eq!(has_object(&descr("'<f8'")), Ok(false));
        assert_eq!(has_object(&descr("'|O'")), Ok(true));
        assert_eq!(has_object(&descr("[('a', '<f8'), ('b', '|O')]")), Ok(true));
        assert_eq!(
            has_object(&descr("[('a', [('x', '<i4'), ('y', '|O')])]")),
            Ok(true)
        );
        assert_eq!(has_object(&descr("[('a', '<f8', (2, 3))]")), Ok(false));
        assert_eq!(
            itemsize(&descr("[('a', '<f8', (2, 3)), ('b', '<i4')]")),
            Some(52)
        );
        assert_eq!(
            itemsize(&descr("[('a', '<f8', (4294967296, 4294967296))]")),
            None
        );
    }
}
