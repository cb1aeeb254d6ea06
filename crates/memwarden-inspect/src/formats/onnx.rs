//! ONNX: the `ModelProto` protobuf, read field by field; tensor payloads are skipped.
//!
//! Only what the inventory needs is decoded: `graph` (7) → `initializer` (5) →
//! `TensorProto` `dims` (1), `data_type` (2), `name` (8), `raw_data` (9), typed data
//! (4, 5, 6, 7, 10, 11: counted), `external_data` (13, the `length` and `location`
//! entries), and `data_location` (14).
//!
//! An external data `location` that leaves the model's directory (absolute, `..`, a drive
//! letter) makes `onnx.load` read any file the user can: the path traversal of
//! CVE-2022-25882 and its bypass CVE-2024-27318. `onnx.load` loads external data for every
//! tensor, so the locations of tensors in node attributes, subgraphs, sparse initializers
//! and functions are judged too. Only the string is judged: a symlink inside the directory
//! that points out of it is not seen.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::source::{FileSource, Skip};
use crate::{ArrayInfo, FileReport, Finding, InspectError, Limits, Severity, Verdict};

/// Whether the first bytes look like a `ModelProto` (field 1 `ir_version`, a varint).
pub fn looks_like_model(head: &[u8]) -> bool {
    head.first() == Some(&0x08) && head.get(1).is_some_and(|&v| (1..=20).contains(&v))
}

struct Reader {
    source: FileSource,
    position: u64,
}

impl Reader {
    fn byte(&mut self) -> Result<u8, InspectError> {
        let mut b = [0u8; 1];
        self.source
            .read_exact(&mut b)
            .map_err(|_| InspectError::Truncated {
                offset: self.position,
            })?;
        self.position += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64, InspectError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(InspectError::Malformed {
                    offset: self.position,
                    message: "varint overflows 64 bits".into(),
                });
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(InspectError::Malformed {
            offset: self.position,
            message: "varint longer than 10 bytes".into(),
        })
    }

    fn skip(&mut self, n: u64) -> Result<(), InspectError> {
        self.source.skip(n).map_err(|_| InspectError::Truncated {
            offset: self.position,
        })?;
        self.position += n;
        Ok(())
    }

    fn bytes(&mut self, n: u64, limit: u64) -> Result<Vec<u8>, InspectError> {
        if n > limit {
            return Err(InspectError::LimitExceeded {
                what: "bytes in an ONNX string field",
                limit,
            });
        }
        let mut buf = vec![0u8; n as usize];
        self.source
            .read_exact(&mut buf)
            .map_err(|_| InspectError::Truncated {
                offset: self.position,
            })?;
        self.position += n;
        Ok(buf)
    }

    /// Skips a field of `wire` type whose key was read.
    fn skip_field(&mut self, wire: u64) -> Result<(), InspectError> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.skip(8),
            2 => {
                let len = self.varint()?;
                self.skip(len)
            }
            5 => self.skip(4),
            other => Err(InspectError::Malformed {
                offset: self.position,
                message: format!("protobuf wire type {other}"),
            }),
        }
    }

    /// Calls `field(reader, number, wire)` for each field until `end`.
    fn fields(
        &mut self,
        end: u64,
        mut field: impl FnMut(&mut Reader, u64, u64) -> Result<(), InspectError>,
    ) -> Result<(), InspectError> {
        while self.position < end {
            let key = self.varint()?;
            field(self, key >> 3, key & 7)?;
        }
        if self.position != end {
            return Err(InspectError::Malformed {
                offset: self.position,
                message: "a field runs past its message".into(),
            });
        }
        Ok(())
    }
}

fn element_size(data_type: u64) -> u64 {
    match data_type {
        2 | 3 | 9 => 1,
        4 | 5 | 10 | 16 => 2,
        1 | 6 | 12 => 4,
        7 | 11 | 13 | 14 => 8,
        15 => 16,
        _ => 0,
    }
}

fn type_name(data_type: u64) -> &'static str {
    match data_type {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        12 => "uint32",
        13 => "uint64",
        14 => "complex64",
        15 => "complex128",
        16 => "bfloat16",
        _ => "unknown",
    }
}

/// Whether an external data `location` stays inside the model's directory, judged as a
/// string: relative, no `..` component, no drive letter, no NUL byte.
fn location_stays_inside(location: &str) -> bool {
    let bytes = location.as_bytes();
    let drive = bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic();
    !(location.starts_with(['/', '\\'])
        || drive
        || location.contains('\0')
        || location.split(['/', '\\']).any(|part| part == ".."))
}

/// One tensor: its inventory, whether its data is external, and every place it says that
/// data is (`onnx` keeps the last; all are judged).
struct Tensor {
    array: ArrayInfo,
    external: bool,
    locations: Vec<String>,
}

impl Tensor {
    /// A High finding for each location that leaves the model's directory.
    fn judge_locations(&self, offset: u64, findings: &mut Vec<Finding>) {
        let name = self.array.name.as_deref().unwrap_or("(unnamed)");
        for location in self.locations.iter().filter(|l| !location_stays_inside(l)) {
            findings.push(Finding {
                severity: Severity::High,
                offset: Some(offset),
                message: format!(
                    "tensor {name}: its external data location {location:?} reads a file outside the model's directory (path traversal, CVE-2022-25882, CVE-2024-27318)"
                ),
            });
        }
    }
}

/// Messages that can hold tensors beyond the main graph's initializers.
#[derive(Clone, Copy)]
enum Holder {
    Graph,
    Node,
    Attribute,
    SparseTensor,
    Function,
}

/// Judges the external data locations of every tensor nested in a `holder` message:
/// `GraphProto` (node 1, initializer 5, sparse_initializer 15), `NodeProto` (attribute 5),
/// `AttributeProto` (t 5, g 6, tensors 10, graphs 11), `SparseTensorProto` (values 1,
/// indices 2), `FunctionProto` (node 7).
fn nested_locations(
    r: &mut Reader,
    end: u64,
    holder: Holder,
    depth: u32,
    limits: &Limits,
    findings: &mut Vec<Finding>,
) -> Result<(), InspectError> {
    if depth > limits.max_nesting.saturating_mul(4) {
        return Err(InspectError::LimitExceeded {
            what: "levels of ONNX subgraphs",
            limit: u64::from(limits.max_nesting.saturating_mul(4)),
        });
    }
    r.fields(end, |r, number, wire| {
        let inner = match (holder, number) {
            (Holder::Graph, 5) | (Holder::Attribute, 5 | 10) | (Holder::SparseTensor, 1 | 2) => {
                None
            }
            (Holder::Graph, 1) | (Holder::Function, 7) => Some(Holder::Node),
            (Holder::Graph, 15) => Some(Holder::SparseTensor),
            (Holder::Node, 5) => Some(Holder::Attribute),
            (Holder::Attribute, 6 | 11) => Some(Holder::Graph),
            _ => return r.skip_field(wire),
        };
        if wire != 2 {
            return r.skip_field(wire);
        }
        let len = r.varint()?;
        let (start, stop) = (r.position, r.position.saturating_add(len));
        match inner {
            Some(inner) => nested_locations(r, stop, inner, depth + 1, limits, findings),
            None => {
                tensor(r, stop, limits)?.judge_locations(start, findings);
                Ok(())
            }
        }
    })
}

fn tensor(reader: &mut Reader, end: u64, limits: &Limits) -> Result<Tensor, InspectError> {
    let (mut dims, mut data_type, mut name, mut raw, mut typed, mut external_len, mut external) =
        (Vec::new(), 0, None, None, 0u64, None, false);
    let mut locations = Vec::new();
    reader.fields(end, |r, number, wire| {
        match (number, wire) {
            (1, 0) => dims.push(r.varint()?),
            (1, 2) => {
                let len = r.varint()?;
                let stop = r.position.saturating_add(len);
                while r.position < stop {
                    dims.push(r.varint()?);
                }
            }
            (2, 0) => data_type = r.varint()?,
            (8, 2) => {
                let len = r.varint()?;
                name = Some(
                    String::from_utf8_lossy(&r.bytes(len, limits.max_header_bytes.min(1 << 20))?)
                        .into_owned(),
                );
            }
            (9, 2) => {
                let len = r.varint()?;
                raw = Some(len);
                r.skip(len)?;
            }
            (4 | 5 | 7 | 10 | 11, 2) => {
                let len = r.varint()?;
                typed += len;
                r.skip(len)?;
            }
            (13, 2) => {
                let len = r.varint()?;
                let stop = r.position.saturating_add(len);
                let (mut key, mut value) = (String::new(), String::new());
                r.fields(stop, |r, n, w| {
                    if w == 2 && (n == 1 || n == 2) {
                        let l = r.varint()?;
                        let text = String::from_utf8_lossy(&r.bytes(l, 1 << 16)?).into_owned();
                        if n == 1 {
                            key = text
                        } else {
                            value = text
                        }
                        Ok(())
                    } else {
                        r.skip_field(w)
                    }
                })?;
                match key.as_str() {
                    "length" => external_len = value.parse().ok(),
                    "location" => locations.push(value),
                    _ => {}
                }
            }
            (14, 0) => external = r.varint()? == 1,
            (_, w) => r.skip_field(w)?,
        }
        Ok(())
    })?;
    let elements: Option<u64> = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    let bytes = raw.or(external_len).unwrap_or_else(|| {
        if typed > 0 {
            typed
        } else {
            elements
                .unwrap_or(0)
                .saturating_mul(element_size(data_type))
        }
    });
    Ok(Tensor {
        array: ArrayInfo {
            name,
            dtype: type_name(data_type).to_owned(),
            shape: Some(dims),
            bytes,
            kind: "onnx".to_owned(),
        },
        external,
        locations,
    })
}

/// Inspects an ONNX model.
pub fn inspect(path: &Path, len: u64, limits: &Limits) -> Result<FileReport, InspectError> {
    let file = File::open(path).map_err(|e| InspectError::io(0, e))?;
    let mut reader = Reader {
        source: FileSource::new(file, 0).map_err(|e| InspectError::io(0, e))?,
        position: 0,
    };
    let mut report = FileReport::new(path, "onnx", len);
    let mut external_bytes = 0;
    let mut tensors = Vec::new();
    let mut findings = Vec::new();
    reader.fields(len, |r, number, wire| {
        if (number, wire) == (25, 2) {
            let function_len = r.varint()?;
            let function_end = r.position.saturating_add(function_len);
            return nested_locations(r, function_end, Holder::Function, 0, limits, &mut findings);
        }
        if (number, wire) == (7, 2) {
            let graph_len = r.varint()?;
            let graph_end = r.position.saturating_add(graph_len);
            if graph_end > len {
                return Err(InspectError::Truncated { offset: len });
            }
            r.fields(graph_end, |r, number, wire| {
                if (number, wire) == (5, 2) {
                    let tensor_len = r.varint()?;
                    let tensor_start = r.position;
                    let tensor_end = r.position.saturating_add(tensor_len);
                    let initializer = tensor(r, tensor_end, limits)?;
                    initializer.judge_locations(tensor_start, &mut findings);
                    if initializer.external {
                        external_bytes += initializer.array.bytes;
                    }
                    tensors.push(initializer.array);
                    if tensors.len() > limits.max_zip_entries {
                        return Err(InspectError::LimitExceeded {
                            what: "ONNX initializers",
                            limit: limits.max_zip_entries as u64,
                        });
                    }
                    Ok(())
                } else if wire == 2 && (number == 1 || number == 15) {
                    let len = r.varint()?;
                    let stop = r.position.saturating_add(len);
                    let holder = if number == 1 {
                        Holder::Node
                    } else {
                        Holder::SparseTensor
                    };
                    nested_locations(r, stop, holder, 1, limits, &mut findings)
                } else {
                    r.skip_field(wire)
                }
            })
        } else {
            r.skip_field(wire)
        }
    })?;
    report.arrays = tensors;
    if !findings.is_empty() {
        report.verdict = report.verdict.max(Verdict::Unsafe);
    }
    report.findings.append(&mut findings);
    report.payload_bytes = report.arrays.iter().map(|a| a.bytes).sum();
    report.loader = "onnx.load".to_owned();
    report.predicted_load_peak_bytes = Some(len + report.payload_bytes);
    report.prediction_rule = format!(
        "onnx.load reads the whole file, then the parsed model holds its own copy of every initializer{}",
        if external_bytes > 0 { " (external data is read in as well)" } else { "" }
    );
    report.mmap_note =
        "onnx.load copies; onnxruntime can map external data files instead".to_owned();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::keras;
    use crate::{Severity, Verdict};

    #[test]
    fn judges_locations_as_strings() {
        for inside in ["weights.bin", "data/w.bin", "./w.bin", "a..b", "..w"] {
            assert!(location_stays_inside(inside), "{inside}");
        }
        for outside in [
            "../w.bin",
            "a/../../w",
            "..",
            "/etc/passwd",
            "\\\\server\\share\\w",
            "C:\\w.bin",
            "c:w.bin",
            "a\\..\\..\\w",
            "w.bin\0.txt",
        ] {
            assert!(!location_stays_inside(outside), "{outside}");
        }
    }

    #[test]
    fn flags_external_data_outside_the_model_directory() {
        let dir = keras::fixtures::make();
        for (name, flagged) in [
            ("external.onnx", false),
            ("traversal.onnx", true),
            ("absolute.onnx", true),
            ("traversal_node.onnx", true),
        ] {
            let path = dir.path().join(name);
            let len = std::fs::metadata(&path).expect("metadata").len();
            let report = inspect(&path, len, &Limits::default()).expect(name);
            assert_eq!(report.arrays.len(), 1, "{name}");
            assert_eq!(report.arrays[0].bytes, 256, "{name}");
            let outside = report.findings.iter().any(|f| {
                f.severity == Severity::High && f.message.contains("outside the model's directory")
            });
            assert_eq!(outside, flagged, "{name}: {:?}", report.findings);
            assert_eq!(report.findings.len(), usize::from(flagged), "{name}");
            let verdict = if flagged {
                Verdict::Unsafe
            } else {
                Verdict::Safe
            };
            assert_eq!(report.verdict, verdict, "{name}");
        }
    }
}
