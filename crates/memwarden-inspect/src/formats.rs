//! Recognising a file's format and reading what each format reveals.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::rc::Rc;

use flate2::read::{GzDecoder, ZlibDecoder};

use crate::pickle::{self, Flavor, Scan, Value};
use crate::safety;
use crate::source::{FileSource, SliceSource, StreamSource};
use crate::{
    ArrayInfo, FileReport, Finding, InspectError, Limits, LoaderPrediction, Severity, Verdict,
};

mod onnx;

/// Inspects one file.
pub fn inspect_file(path: &Path, options: &crate::Options) -> Result<FileReport, InspectError> {
    let limits = &options.limits;
    let mut file = File::open(path).map_err(|e| InspectError::io(0, e))?;
    let len = file.metadata().map_err(|e| InspectError::io(0, e))?.len();
    let mut head = [0u8; 16];
    let got = read_up_to(&mut file, &mut head).map_err(|e| InspectError::io(0, e))?;
    let head = &head[..got];
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return inspect_zip(path, len, limits);
    }
    if head.starts_with(b"\x93NUMPY") {
        let mut report = FileReport::new(path, "npy", len);
        let mut source = FileSource::new(File::open(path).map_err(|e| InspectError::io(0, e))?, 0)
            .map_err(|e| InspectError::io(0, e))?;
        let array = npy_array(&mut source, None, limits, &mut report)?;
        report.arrays.push(array);
        finish_npy(&mut report, false);
        return Ok(report);
    }
    if is_hdf5(path) {
        let mut report = FileReport::new(path, "hdf5", len);
        report.loader = "h5py.File".to_owned();
        report.prediction_rule = "h5py reads datasets lazily: loading costs what is read; memwarden recognises HDF5 by signature only (no dataset inventory yet)".to_owned();
        report.mmap_note = "h5py reads on access; contiguous datasets can be memory-mapped with numpy at their offsets".to_owned();
        return Ok(report);
    }
    if got >= 9 && head[8] == b'{' {
        let header_len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if header_len > 1 && header_len <= len - 8 {
            return inspect_safetensors(path, len, header_len, limits);
        }
    }
    if head.starts_with(LEGACY_TORCH_MAGIC) {
        return inspect_legacy_torch(path, len, limits);
    }
    if got >= 2 && head[0] == 0x80 && head[1] <= 5 {
        return inspect_pickle(path, len, limits, Compression::None);
    }
    if got >= 2 && head[0] == 0x78 && matches!(head[1], 0x01 | 0x5e | 0x9c | 0xda) {
        return inspect_pickle(path, len, limits, Compression::Zlib);
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return inspect_pickle(path, len, limits, Compression::Gzip);
    }
    // joblib's other compressors: bz2, xz, lzma (legacy "alone" format), lz4 frames.
    let compressed = if head.starts_with(b"BZh") {
        Some(Compression::Bz2)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some(Compression::Xz)
    } else if head.starts_with(&[0x5d, 0x00, 0x00]) {
        Some(Compression::Lzma)
    } else if head.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
        Some(Compression::Lz4)
    } else {
        None
    };
    if let Some(compression) = compressed {
        return inspect_pickle(path, len, limits, compression);
    }
    if extension == "onnx" || onnx::looks_like_model(head) {
        return onnx::inspect(path, len, limits);
    }
    if matches!(extension.as_str(), "pkl" | "pickle" | "joblib" | "sav")
        && head.first().is_some_and(|b| b"(cSVIJKLNFG]}l".contains(b))
    {
        return inspect_pickle(path, len, limits, Compression::None);
    }
    Err(InspectError::Unsupported(format!(
        "{}: not a format memwarden recognises (pickle, joblib, PyTorch zip, safetensors, npy/npz, ONNX, HDF5)",
        path.display()
    )))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn is_hdf5(path: &Path) -> bool {
    const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    // The superblock may follow a user block of 512 bytes, 1 KiB, 2 KiB...
    [0u64, 512, 1024, 2048, 4096].iter().any(|&offset| {
        let mut sig = [0u8; 8];
        io::Seek::seek(&mut file, io::SeekFrom::Start(offset)).is_ok()
            && file.read_exact(&mut sig).is_ok()
            && &sig == SIGNATURE
    })
}

/// PyTorch's pre-1.6 format opens with pickle protocol 2 of the magic number
/// 0x1950a86a20f9469cfc6c.
const LEGACY_TORCH_MAGIC: &[u8] = &[
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

/// The legacy format: five pickles in a row (magic, protocol version, system info, the
/// object, the sorted storage keys), then each storage as an 8-byte element count and its
/// data.
fn inspect_legacy_torch(
    path: &Path,
    len: u64,
    limits: &Limits,
) -> Result<FileReport, InspectError> {
    let file = File::open(path).map_err(|e| InspectError::io(0, e))?;
    let mut source = FileSource::new(file, 0).map_err(|e| InspectError::io(0, e))?;
    let mut report = FileReport::new(path, "pytorch-legacy", len);
    let mut offset = 0;
    let mut main = None;
    for index in 0..5 {
        let scan = pickle::scan(&mut source, offset, limits, Flavor::Plain)?;
        offset = scan.end;
        apply_safety(&mut report, &scan);
        if index == 3 {
            main = Some(scan);
        }
    }
    let main = main.expect("five pickles were read");
    report.pickle_protocol = Some(main.protocol);
    let mut storage_bytes = 0u64;
    for storage in torch_storages(&main) {
        let (Some(type_name), Some(numel)) = (storage.type_name, storage.numel) else {
            continue;
        };
        let bytes = numel.saturating_mul(torch_itemsize(&torch_dtype(&type_name)));
        storage_bytes = storage_bytes.saturating_add(8 + bytes);
        report.payload_bytes += bytes;
    }
    if offset.saturating_add(storage_bytes) > len {
        return Err(InspectError::Truncated { offset: len });
    }
    if let Some(root) = &main.root {
        collect_tensors(root, "", &mut report.arrays, &mut HashSet::new(), 0);
    }
    report.loader = "torch.load".to_owned();
    report.predicted_load_peak_bytes = Some(report.payload_bytes);
    report.prediction_rule = "torch.load reads every storage once into its own buffer".to_owned();
    report.mmap_note = "the legacy (pre-1.6) format cannot be memory-mapped: re-save with torch.save to get the zip format and torch.load(mmap=True)".to_owned();
    Ok(report)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Zlib,
    Gzip,
    Bz2,
    Xz,
    Lzma,
    Lz4,
}

fn apply_safety(report: &mut FileReport, scan: &Scan) {
    let (verdict, imports) = safety::assess(&safety::Allowlist::default(), &scan.imports, &scan.findings);
    report.verdict = report.verdict.max(verdict);
    report.imports.extend(imports);
    report.findings.extend(scan.findings.iter().cloned());
}

fn inspect_pickle(
    path: &Path,
    len: u64,
    limits: &Limits,
    compression: Compression,
) -> Result<FileReport, InspectError> {
    let file = File::open(path).map_err(|e| InspectError::io(0, e))?;
    let cap = len.saturating_mul(limits.max_decompression_ratio);
    let scan = match compression {
        Compression::None => {
            let mut source = FileSource::new(file, 0).map_err(|e| InspectError::io(0, e))?;
            pickle::scan(&mut source, 0, limits, Flavor::Joblib)?
        }
        compressed => {
            let input = io::BufReader::new(file);
            let decoder: Box<dyn Read> = match compressed {
                Compression::Zlib => Box::new(ZlibDecoder::new(input)),
                Compression::Gzip => Box::new(GzDecoder::new(input)),
                Compression::Bz2 => Box::new(bzip2::read::BzDecoder::new(input)),
                Compression::Xz => Box::new(xz2::read::XzDecoder::new(input)),
                Compression::Lzma => {
                    let stream = xz2::stream::Stream::new_lzma_decoder(u64::MAX).map_err(|e| {
                        InspectError::Malformed {
                            offset: 0,
                            message: format!("lzma: {e}"),
                        }
                    })?;
                    Box::new(xz2::read::XzDecoder::new_stream(input, stream))
                }
                Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(input)),
                Compression::None => unreachable!("handled above"),
            };
            pickle::scan(
                &mut StreamSource::new(decoder, cap),
                0,
                limits,
                Flavor::Joblib,
            )?
        }
    };
    let joblib = scan.imports.iter().any(|i| i.module.starts_with("joblib"));
    let format = match (joblib, compression) {
        (true, Compression::None) => "joblib",
        (true, _) => "joblib-compressed",
        (false, Compression::None) => "pickle",
        (false, _) => "pickle-compressed",
    };
    let mut report = FileReport::new(path, format, len);
    report.pickle_protocol = Some(scan.protocol);
    let mut scan = scan;
    pickle::name_arrays(&mut scan);
    report.arrays = scan.arrays.clone();
    let array_bytes: u64 = scan.arrays.iter().map(|a| a.bytes).sum();
    report.payload_bytes = array_bytes.max(scan.payload_bytes);
    apply_safety(&mut report, &scan);
    let largest = scan.arrays.iter().map(|a| a.bytes).max().unwrap_or(0);
    let other_payload = scan
        .payload_bytes
        .saturating_sub(array_bytes.min(scan.payload_bytes));
    let copied = scan.copied_on_load_bytes;
    let copies = if copied > 0 {
        ", plus the arrays scikit-learn's trees copy into their own buffers"
    } else {
        ""
    };
    if joblib {
        report.loader = "joblib.load".to_owned();
        report.predicted_load_peak_bytes = Some(array_bytes + other_payload + copied);
        report.prediction_rule = format!("joblib reads each array straight into its final buffer: every array once{copies}; memory of the modules the pickle imports is not counted");
        report.mmappable = compression == Compression::None;
        report.mmap_note = if report.mmappable {
            "joblib.load(path, mmap_mode='r') maps the arrays instead of reading them".to_owned()
        } else {
            "compressed joblib files cannot be memory-mapped: save with compress=0 to allow mmap_mode".to_owned()
        };
    } else {
        report.loader = "pickle.load".to_owned();
        // numpy keeps the bytes pickle built (protocols 3-5) as the array's buffer; protocol
        // 2 goes through a latin-1 str first, alive while the largest array is rebuilt.
        // ...that is: its UTF-8 text read from the file, the str decoded from it, and the
        // bytes encoded from that, alive together while the largest array is rebuilt.
        let transient = if scan.protocol <= 2 {
            scan.largest_text_bytes + largest
        } else {
            0
        };
        let data = if scan.arrays.is_empty() {
            scan.payload_bytes
        } else {
            array_bytes
        };
        report.predicted_load_peak_bytes = Some(data + transient + copied);
        report.prediction_rule = format!("every array once (numpy adopts the bytes pickle builds; protocol 2 adds the largest array's latin-1 text while it is converted){copies}; memory of the modules the pickle imports is not counted");
        report.mmap_note = "pickle cannot memory-map: save arrays with numpy (np.save + mmap_mode) or safetensors to load without copies".to_owned();
    }
    Ok(report)
}

fn inspect_safetensors(
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

/// Reads an npy header (and scans the pickle of an object array) from `source`.
fn npy_array<S: crate::source::Skip>(
    source: &mut S,
    name: Option<String>,
    limits: &Limits,
    report: &mut FileReport,
) -> Result<ArrayInfo, InspectError> {
    let mut fixed = [0u8; 8];
    source
        .read_exact(&mut fixed)
        .map_err(|_| InspectError::Truncated { offset: 0 })?;
    if &fixed[..6] != b"\x93NUMPY" {
        return Err(InspectError::Malformed {
            offset: 0,
            message: "not an npy file".into(),
        });
    }
    let (header_len, start) = if fixed[6] == 1 {
        let mut b = [0u8; 2];
        source
            .read_exact(&mut b)
            .map_err(|_| InspectError::Truncated { offset: 8 })?;
        (u64::from(u16::from_le_bytes(b)), 10)
    } else {
        let mut b = [0u8; 4];
        source
            .read_exact(&mut b)
            .map_err(|_| InspectError::Truncated { offset: 8 })?;
        (u64::from(u32::from_le_bytes(b)), 12)
    };
    if header_len > limits.max_header_bytes.min(1 << 20) {
        return Err(InspectError::LimitExceeded {
            what: "npy header bytes",
            limit: limits.max_header_bytes.min(1 << 20),
        });
    }
    let mut header = vec![0u8; header_len as usize];
    source
        .read_exact(&mut header)
        .map_err(|_| InspectError::Truncated { offset: start })?;
    let text = String::from_utf8_lossy(&header);
    let field = |key: &str| -> Option<String> {
        let at = text.find(&format!("'{key}':"))? + key.len() + 3;
        let rest = text[at..].trim_start();
        let end = if rest.starts_with('(') {
            rest.find(')')? + 1
        } else if let Some(quoted) = rest.strip_prefix('\'') {
            quoted.find('\'')? + 2
        } else {
            rest.find([',', '}'])?
        };
        Some(rest[..end].trim().trim_matches('\'').to_owned())
    };
    let bad = |what: &str| InspectError::Malformed {
        offset: start,
        message: format!("npy header: {what}"),
    };
    let dtype = field("descr").ok_or_else(|| bad("no descr"))?;
    let shape_text = field("shape").ok_or_else(|| bad("no shape"))?;
    let shape: Vec<u64> = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.trim_end_matches('L')
                .parse()
                .map_err(|_| bad("a non-integer dimension"))
        })
        .collect::<Result<_, _>>()?;
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("shape overflows"))?;
    let bytes = match pickle::itemsize(Some(&dtype)) {
        Some(size) => elements
            .checked_mul(size)
            .ok_or_else(|| bad("size overflows"))?,
        None if dtype.ends_with('O') => {
            report.findings.push(Finding {
                severity: Severity::High,
                offset: Some(start + header_len),
                message: format!("{}: an object array: numpy must unpickle it (np.load(..., allow_pickle=True)), which can run code", name.as_deref().unwrap_or("the array")),
            });
            let scan = pickle::scan(source, start + header_len, limits, Flavor::Plain)?;
            apply_safety(report, &scan);
            report.verdict = report.verdict.max(Verdict::Unsafe);
            0
        }
        None => return Err(bad(&format!("unsupported dtype '{dtype}'"))),
    };
    Ok(ArrayInfo {
        name,
        dtype,
        shape: Some(shape),
        bytes,
        kind: "npy".to_owned(),
    })
}

fn finish_npy(report: &mut FileReport, npz: bool) {
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
        report.mmappable = report.verdict == Verdict::Safe;
        report.mmap_note = "np.load(path, mmap_mode='r') maps it instead".to_owned();
    }
}

fn inspect_zip(path: &Path, len: u64, limits: &Limits) -> Result<FileReport, InspectError> {
    let file = File::open(path).map_err(|e| InspectError::io(0, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| InspectError::Malformed {
        offset: 0,
        message: format!("zip: {e}"),
    })?;
    if archive.len() > limits.max_zip_entries {
        return Err(InspectError::LimitExceeded {
            what: "zip entries",
            limit: limits.max_zip_entries as u64,
        });
    }
    let names: Vec<String> = archive.file_names().map(str::to_owned).collect();
    if let Some(pkl) = names
        .iter()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
    {
        return inspect_torch(path, len, &mut archive, &pkl.clone(), limits);
    }
    let mut report = FileReport::new(path, "npz", len);
    for index in 0..archive.len() {
        let entry = archive
            .by_index(index)
            .map_err(|e| InspectError::Malformed {
                offset: 0,
                message: format!("zip entry {index}: {e}"),
            })?;
        let name = entry.name().to_owned();
        check_zip_entry(&entry, limits)?;
        if !name.ends_with(".npy") {
            report.findings.push(Finding {
                severity: Severity::Info,
                offset: None,
                message: format!("{name}: not an .npy entry, not analysed"),
            });
            continue;
        }
        let cap = entry.size();
        let mut source = StreamSource::new(entry, cap);
        let array = npy_array(
            &mut source,
            Some(name.trim_end_matches(".npy").to_owned()),
            limits,
            &mut report,
        )?;
        report.arrays.push(array);
    }
    if report.arrays.is_empty() {
        return Err(InspectError::Unsupported(format!(
            "{}: a zip archive that is neither a PyTorch checkpoint nor an .npz",
            path.display()
        )));
    }
    finish_npy(&mut report, true);
    Ok(report)
}

fn check_zip_entry<R: Read>(
    entry: &zip::read::ZipFile<'_, R>,
    limits: &Limits,
) -> Result<(), InspectError> {
    let compressed = entry.compressed_size().max(1);
    if entry.size() / compressed > limits.max_decompression_ratio {
        return Err(InspectError::LimitExceeded {
            what: "zip entry decompression ratio",
            limit: limits.max_decompression_ratio,
        });
    }
    Ok(())
}

fn inspect_torch<R: Read + io::Seek>(
    path: &Path,
    len: u64,
    archive: &mut zip::ZipArchive<R>,
    pkl: &str,
    limits: &Limits,
) -> Result<FileReport, InspectError> {
    let prefix = pkl.trim_end_matches("data.pkl").to_owned();
    let mut data = Vec::new();
    {
        let entry = archive.by_name(pkl).map_err(|e| InspectError::Malformed {
            offset: 0,
            message: format!("{pkl}: {e}"),
        })?;
        check_zip_entry(&entry, limits)?;
        if entry.size() > limits.max_header_bytes {
            return Err(InspectError::LimitExceeded {
                what: "bytes of data.pkl",
                limit: limits.max_header_bytes,
            });
        }
        entry
            .take(limits.max_header_bytes)
            .read_to_end(&mut data)
            .map_err(|e| InspectError::io(0, e))?;
    }
    let scan = pickle::scan(&mut SliceSource::new(&data), 0, limits, Flavor::Plain)?;
    let mut report = FileReport::new(path, "pytorch", len);
    report.pickle_protocol = Some(scan.protocol);
    apply_safety(&mut report, &scan);
    // Storages: persistent ids ('storage', type, key, location, numel); sizes from the zip.
    let mut storages: Vec<(String, u64, bool)> = Vec::new();
    for storage in torch_storages(&scan) {
        let key = storage.key;
        let entry_name = format!("{prefix}data/{key}");
        let Ok(entry) = archive.by_name(&entry_name) else {
            report.findings.push(Finding {
                severity: Severity::Info,
                offset: None,
                message: format!("storage {key} has no entry {entry_name}"),
            });
            continue;
        };
        storages.push((
            key.to_string(),
            entry.size(),
            entry.compression() == zip::CompressionMethod::Stored,
        ));
    }
    report.payload_bytes = storages.iter().map(|s| s.1).sum();
    if let Some(root) = &scan.root {
        let mut visited = HashSet::new();
        collect_tensors(root, "", &mut report.arrays, &mut visited, 0);
    }
    report.loader = "torch.load".to_owned();
    report.predicted_load_peak_bytes = Some(report.payload_bytes + data.len() as u64);
    report.prediction_rule = "torch.load reads every storage once from the archive into its own buffer, after unpickling data.pkl".to_owned();
    report.mmappable = !storages.is_empty() && storages.iter().all(|s| s.2);
    report.mmap_note = if report.mmappable {
        "torch.load(path, mmap=True) maps the storages instead of reading them (PyTorch 2.1+)"
            .to_owned()
    } else {
        "storages are compressed in the archive: torch.load cannot memory-map them".to_owned()
    };
    Ok(report)
}

/// A storage named by one of PyTorch's persistent ids.
struct TorchStorage {
    key: String,
    type_name: Option<String>,
    numel: Option<u64>,
}

/// The distinct storages of a PyTorch pickle, from its persistent ids
/// `('storage', torch.<Type>Storage, key, location, numel[, view])`, in order.
fn torch_storages(scan: &Scan) -> Vec<TorchStorage> {
    let mut seen = HashSet::new();
    let mut storages = Vec::new();
    for id in &scan.persistent_ids {
        let Value::Persistent(inner) = id else {
            continue;
        };
        let Value::Tuple(items) = inner.as_ref() else {
            continue;
        };
        let Some(Value::Str(Some(key))) = items.get(2) else {
            continue;
        };
        if !seen.insert(key.to_string()) {
            continue;
        }
        storages.push(TorchStorage {
            key: key.to_string(),
            type_name: match items.get(1) {
                Some(Value::Global(_, name)) => Some(name.to_string()),
                _ => None,
            },
            numel: match items.get(4) {
                Some(Value::Int(n)) => Some(u64::try_from(*n).unwrap_or(0)),
                _ => None,
            },
        });
    }
    storages
}

/// Finds `_rebuild_tensor_v2` calls under `value`, named by the dict keys on the way.
fn collect_tensors(
    value: &Value,
    path: &str,
    out: &mut Vec<ArrayInfo>,
    visited: &mut HashSet<usize>,
    depth: u32,
) {
    if depth > 64 {
        return;
    }
    match value {
        Value::Dict(items) => {
            if !visited.insert(Rc::as_ptr(items) as usize) {
                return;
            }
            for (key, item) in items.borrow().iter() {
                let name = match key {
                    Value::Str(Some(k)) if path.is_empty() => k.to_string(),
                    Value::Str(Some(k)) => format!("{path}.{k}"),
                    Value::Int(i) => format!("{path}[{i}]"),
                    _ => path.to_owned(),
                };
                collect_tensors(item, &name, out, visited, depth + 1);
            }
        }
        Value::List(items) => {
            if !visited.insert(Rc::as_ptr(items) as usize) {
                return;
            }
            for (i, item) in items.borrow().iter().enumerate() {
                collect_tensors(item, &format!("{path}[{i}]"), out, visited, depth + 1);
            }
        }
        Value::Tuple(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_tensors(item, &format!("{path}[{i}]"), out, visited, depth + 1);
            }
        }
        Value::Call { func, args, state } => {
            let target = match func.as_ref() {
                Value::Global(m, n) => Some((m.as_ref(), n.as_ref())),
                _ => None,
            };
            let items = match args.as_ref() {
                Value::Tuple(items) => items.as_ref().clone(),
                _ => Vec::new(),
            };
            match target {
                Some(("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor"))
                    if items.len() >= 3 =>
                {
                    let dtype = match &items[0] {
                        Value::Persistent(id) => match id.as_ref() {
                            Value::Tuple(t) => match t.get(1) {
                                Some(Value::Global(_, name)) => torch_dtype(name),
                                _ => "unknown".to_owned(),
                            },
                            _ => "unknown".to_owned(),
                        },
                        _ => "unknown".to_owned(),
                    };
                    let shape: Option<Vec<u64>> = match &items[2] {
                        Value::Tuple(dims) => dims
                            .iter()
                            .map(|d| match d {
                                Value::Int(i) => u64::try_from(*i).ok(),
                                _ => None,
                            })
                            .collect(),
                        _ => None,
                    };
                    let size = torch_itemsize(&dtype);
                    let bytes = shape
                        .as_ref()
                        .map_or(0, |s| s.iter().product::<u64>() * size);
                    out.push(ArrayInfo {
                        name: (!path.is_empty()).then(|| path.to_owned()),
                        dtype,
                        shape,
                        bytes,
                        kind: "torch".to_owned(),
                    });
                }
                _ => {
                    for item in &items {
                        collect_tensors(item, path, out, visited, depth + 1);
                    }
                    if let Some(state) = state {
                        collect_tensors(state, path, out, visited, depth + 1);
                    }
                }
            }
        }
        _ => {}
    }
}

fn torch_dtype(storage: &str) -> String {
    let name = storage.trim_end_matches("Storage");
    match name {
        "Float" => "float32",
        "Double" => "float64",
        "Half" => "float16",
        "BFloat16" => "bfloat16",
        "Long" => "int64",
        "Int" => "int32",
        "Short" => "int16",
        "Char" => "int8",
        "Byte" => "uint8",
        "Bool" => "bool",
        "ComplexFloat" => "complex64",
        "ComplexDouble" => "complex128",
        other => return other.to_owned(),
    }
    .to_owned()
}

fn torch_itemsize(dtype: &str) -> u64 {
    match dtype {
        "float64" | "int64" | "complex64" => 8,
        "float32" | "int32" => 4,
        "float16" | "bfloat16" | "int16" => 2,
        "complex128" => 16,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lz4_frames_are_read_like_joblib_writes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.joblib");
        // protocol 4: os.system, so the content is visibly analysed through the frame
        let pickle = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00cos\nsystem\n\x94.";
        let mut encoder = lz4_flex::frame::FrameEncoder::new(File::create(&path).expect("create"));
        encoder.write_all(pickle).expect("write");
        encoder.finish().expect("finish");
        let report = inspect_file(&path, &crate::Options::default()).expect("inspected");
        assert_eq!(report.format, "pickle-compressed");
        assert_eq!(report.verdict, Verdict::Unsafe);
        assert!(report
            .imports
            .iter()
            .any(|i| i.module == "os" && i.name == "system"));
    }
}
