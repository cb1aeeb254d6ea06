//! safetensors: an 8-byte header length, a JSON header, then the tensors' bytes.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::{ArrayInfo, FileReport, InspectError, Limits, LoaderPrediction};

/// Whether the first bytes are a safetensors header length followed by `{`.
pub(crate) fn looks_like(head: &[u8], len: u64) -> Option<u64> {
    if head.len() < 9 || head[8] != b'{' {
        return None;
    }
    let header_len = u64::from_le_bytes(head[..8].try_into().ok()?);
    (header_len > 1 && header_len <= len.saturating_sub(8)).then_some(header_len)
}

pub(crate) fn inspect(
    path: &Path,
    len: u64,
    header_len: u64,
    limits: &Limits,
) -> Result<FileReport, InspectError> {
    if header_len > limits.max_header_bytes {
        return Err(InspectError::LimitExceeded {
            what: "safetensors header bytes",
            limit: limits.max_header_bytes,
        });
    }
    let mut file = File::open(path).map_err(|e| InspectError::io(0, e))?;
    let mut header = vec![0u8; header_len as usize];
    io::Seek::seek(&mut file, io::SeekFrom::Start(8)).map_err(|e| InspectError::io(8, e))?;
    file.read_exact(&mut header)
        .map_err(|e| InspectError::io(8, e))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| InspectError::Malformed {
            offset: 8,
            message: format!("safetensors header is not JSON: {e}"),
        })?;
    let entries = json.as_object().ok_or_else(|| InspectError::Malformed {
        offset: 8,
        message: "safetensors header is not an object".into(),
    })?;
    let data_len = len - 8 - header_len;
    let mut report = FileReport::new(path, "safetensors", len);
    for (name, tensor) in entries {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| InspectError::Malformed {
            offset: 8,
            message: format!("tensor '{name}': {what}"),
        };
        let dtype = tensor["dtype"]
            .as_str()
            .ok_or_else(|| bad("no dtype"))?
            .to_owned();
        let shape: Vec<u64> = tensor["shape"]
            .as_array()
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .ok_or_else(|| bad("a negative or non-integer dimension"))
            })
            .collect::<Result<_, _>>()?;
        let offsets = tensor["data_offsets"]
            .as_array()
            .ok_or_else(|| bad("no data_offsets"))?;
        let (start, end) = match (
            offsets.first().and_then(|v| v.as_u64()),
            offsets.get(1).and_then(|v| v.as_u64()),
        ) {
            (Some(s), Some(e)) if s <= e && e <= data_len => (s, e),
            _ => return Err(bad("data_offsets outside the file")),
        };
        let elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad("shape overflows"))?;
        if let Some(size) = safetensors_itemsize(&dtype) {
            if elements.checked_mul(size) != Some(end - start) {
                return Err(bad(&format!(
                    "shape {shape:?} of {dtype} does not match its {} bytes",
                    end - start
                )));
            }
        }
        report.arrays.push(ArrayInfo {
            name: Some(name.clone()),
            dtype,
            shape: Some(shape),
            bytes: end - start,
            kind: "safetensors".to_owned(),
        });
    }
    report.payload_bytes = report.arrays.iter().map(|a| a.bytes).sum();
    // The header rarely says which framework will load the file (plain safetensors writes
    // no metadata), so both usual loaders are predicted: PyTorch's as the main one, unless
    // the metadata names numpy.
    let torch = LoaderPrediction {
        loader: "safetensors.torch.load_file".to_owned(),
        predicted_load_peak_bytes: report.payload_bytes,
        rule: "torch's load_file copies every tensor once out of a memory map of the file"
            .to_owned(),
    };
    let numpy = LoaderPrediction {
        loader: "safetensors.numpy.load_file".to_owned(),
        predicted_load_peak_bytes: len + report.payload_bytes,
        rule: "numpy's load_file reads the whole file, then copies every tensor out of it: the file plus every tensor".to_owned(),
    };
    let numpy_first = matches!(
        json["__metadata__"]["format"].as_str(),
        Some("np" | "numpy")
    );
    let (main, other) = if numpy_first {
        (numpy, torch)
    } else {
        (torch, numpy)
    };
    report.loader = main.loader;
    report.predicted_load_peak_bytes = Some(main.predicted_load_peak_bytes);
    report.prediction_rule = main.rule;
    report.other_loaders.push(other);
    report.mmappable = true;
    report.mmap_note =
        "safe_open(path, framework) maps the file and reads tensors on access".to_owned();
    Ok(report)
}

fn safetensors_itemsize(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}
