//! PyTorch checkpoints as `torch.load` reads them: the zip format (1.6+, see
//! [`super::zipped`] for which members it reads), the legacy stream of pickles (pre-1.6),
//! and the legacy tar (before 0.4).
//!
//! `torch.load` tries, in order: a zip (the first four bytes are a local header), the
//! legacy tar (`tarfile.open` succeeds), then the legacy stream, whose first pickle it
//! loads before checking it is the magic number: so any non-zip file's first pickle runs.

use std::collections::HashSet;
use std::path::Path;

use super::apply_scan;
use crate::archive::tar;
use crate::pickle::{self, Extent, Flavor, Scan, Value};
use crate::source::{FileSource, Skip};
use crate::{FileReport, InspectError, Options};

/// PyTorch's pre-1.6 format opens with pickle protocol 2 of the magic number
/// 0x1950a86a20f9469cfc6c.
pub(crate) const LEGACY_MAGIC: &[u8] = &[
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

/// The legacy stream: five pickles in a row (magic, protocol version, system info, the
/// object, the sorted storage keys), then each storage as an 8-byte element count and its
/// data. Bytes after the storages are read as pickles too (a second load would run them).
pub(crate) fn inspect_legacy(
    path: &Path,
    len: u64,
    options: &Options,
) -> Result<FileReport, InspectError> {
    let mut source = FileSource::open(path, 0)?;
    let mut report = FileReport::new(path, "pytorch-legacy", len);
    let mut offset = 0;
    let mut main = None;
    for index in 0..5 {
        let mut scan = pickle::scan(&mut source, offset, options, Flavor::Plain, Extent::One);
        apply_scan(
            &mut report,
            &scan,
            options,
            &format!("pickle {}", index + 1),
        );
        if scan.broken.take().is_some() {
            return Ok(report);
        }
        offset = scan.end;
        if index == 3 {
            main = Some(scan);
        }
    }
    let Some(main) = main else {
        return Ok(report);
    };
    report.pickle_protocol = Some(main.protocol);
    let mut storage_bytes = 0u64;
    for storage in storages(&main) {
        let (Some(type_name), Some(numel)) = (storage.type_name, storage.numel) else {
            continue;
        };
        let bytes = numel.saturating_mul(itemsize(&dtype(&type_name)));
        storage_bytes = storage_bytes.saturating_add(8).saturating_add(bytes);
        report.payload_bytes = report.payload_bytes.saturating_add(bytes);
    }
    let end = offset.saturating_add(storage_bytes);
    if end > len {
        return Err(InspectError::Truncated { offset: len });
    }
    if end < len {
        source
            .skip(storage_bytes)
            .map_err(|e| InspectError::io(offset, e))?;
        let scan = pickle::scan(&mut source, end, options, Flavor::Plain, Extent::All);
        apply_scan(&mut report, &scan, options, "bytes after the storages");
    }
    if let Some(root) = &main.root {
        pickle::collect_tensors(root, "", &mut report.arrays, &mut HashSet::new(), 0);
    }
    report.loader = "torch.load".to_owned();
    report.predicted_load_peak_bytes = Some(report.payload_bytes);
    report.prediction_rule = "torch.load reads every storage once into its own buffer".to_owned();
    report.mmap_note = "the legacy (pre-1.6) format cannot be memory-mapped: re-save with torch.save to get the zip format and torch.load(mmap=True)".to_owned();
    Ok(report)
}

/// The legacy tar (members `storages`, `tensors` and `pickle`): every pickle in every
/// member is scanned (`storages` interleaves pickles with raw storage data, which is
/// skipped by the element counts its pickles give).
pub(crate) fn inspect_tar(
    path: &Path,
    len: u64,
    options: &Options,
) -> Result<Option<FileReport>, InspectError> {
    let mut file = std::fs::File::open(path).map_err(|e| InspectError::io(0, e))?;
    let members = tar::read_members(&mut file, len, &options.limits)?;
    let mut report = FileReport::new(path, "pytorch-legacy-tar", len);
    let mut any = false;
    for member in &members {
        let mut source = FileSource::open(path, member.offset)?;
        let end = member.offset.saturating_add(member.size);
        let mut offset = member.offset;
        // Pickles back to back; in `storages`, each storage's pickle is followed by an
        // 8-byte element count and its data, which `torch.load` reads with the element
        // size of the storage type the pickle names.
        while offset < end {
            let scan = pickle::scan(&mut source, offset, options, Flavor::Plain, Extent::One);
            any |= scan.pickles > 0 || !scan.imports.is_empty();
            let context = format!("member {} at byte {offset}", member.name);
            apply_scan(&mut report, &scan, options, &context);
            if scan.broken.is_some() {
                break;
            }
            offset = scan.end;
            if member.name == "storages" {
                if let Some(size) = tar_storage_itemsize(&scan) {
                    let mut count = [0u8; 8];
                    std::io::Read::read_exact(&mut source, &mut count)
                        .map_err(|_| InspectError::Truncated { offset })?;
                    let bytes = u64::from_le_bytes(count).saturating_mul(size);
                    source
                        .skip(bytes)
                        .map_err(|_| InspectError::Truncated { offset })?;
                    report.payload_bytes = report.payload_bytes.saturating_add(bytes);
                    offset = offset.saturating_add(8).saturating_add(bytes);
                }
            }
            if member.name == "tensors"
                && matches!(&scan.root, Some(Value::Tuple(t)) if t.len() == 3)
            {
                // ndim (4 bytes), 4 bytes of padding, sizes and strides (8 bytes each per
                // dimension), the storage offset (8 bytes).
                let mut ndim = [0u8; 4];
                std::io::Read::read_exact(&mut source, &mut ndim)
                    .map_err(|_| InspectError::Truncated { offset })?;
                let ndim = u64::from(u32::from_le_bytes(ndim));
                let rest = ndim.saturating_mul(16).saturating_add(12);
                source
                    .skip(rest)
                    .map_err(|_| InspectError::Truncated { offset })?;
                offset = offset.saturating_add(4).saturating_add(rest);
            }
        }
    }
    if !any {
        return Ok(None);
    }
    report.loader = "torch.load".to_owned();
    report.predicted_load_peak_bytes = Some(report.payload_bytes);
    report.prediction_rule = "torch.load reads every storage once into its own buffer".to_owned();
    report.mmap_note =
        "the legacy tar format cannot be memory-mapped: re-save with torch.save".to_owned();
    Ok(Some(report))
}

/// The element size of the storage a `storages` pickle describes: `(key, location,
/// storage_type)`.
fn tar_storage_itemsize(scan: &Scan) -> Option<u64> {
    let Some(Value::Tuple(items)) = &scan.root else {
        return None;
    };
    match items.get(2) {
        Some(Value::Global(_, name)) => Some(itemsize(&dtype(name))),
        _ => None,
    }
}

/// Fills a zip checkpoint's report from its `data.pkl` scan: storages' sizes from the
/// archive (`size_of(key)` gives the uncompressed size and whether it is stored), tensors
/// named by their state-dict keys.
pub(crate) fn describe_checkpoint(
    report: &mut FileReport,
    scan: &Scan,
    pickle_bytes: u64,
    size_of: &dyn Fn(&str) -> Option<(u64, bool)>,
) {
    report.format = "pytorch".to_owned();
    report.pickle_protocol = Some(scan.protocol);
    let mut all_stored = true;
    let mut any = false;
    for storage in storages(scan) {
        match size_of(&storage.key) {
            Some((bytes, stored)) => {
                any = true;
                all_stored &= stored;
                report.payload_bytes = report.payload_bytes.saturating_add(bytes);
            }
            None => report.findings.push(crate::Finding {
                severity: crate::Severity::Info,
                offset: None,
                message: format!("storage {} has no data/{} entry", storage.key, storage.key),
            }),
        }
    }
    if let Some(root) = &scan.root {
        pickle::collect_tensors(root, "", &mut report.arrays, &mut HashSet::new(), 0);
    }
    report.loader = "torch.load".to_owned();
    report.predicted_load_peak_bytes = Some(report.payload_bytes.saturating_add(pickle_bytes));
    report.prediction_rule = "torch.load reads every storage once from the archive into its own buffer, after unpickling data.pkl".to_owned();
    report.mmappable = any && all_stored;
    report.mmap_note = if report.mmappable {
        "torch.load(path, mmap=True) maps the storages instead of reading them (PyTorch 2.1+)"
            .to_owned()
    } else {
        "storages are compressed in the archive: torch.load cannot memory-map them".to_owned()
    };
}

/// A storage named by one of PyTorch's persistent ids.
struct TorchStorage {
    key: String,
    type_name: Option<String>,
    numel: Option<u64>,
}

/// The distinct storages of a PyTorch pickle, from its persistent ids
/// `('storage', torch.<Type>Storage, key, location, numel[, view])`, in order.
fn storages(scan: &Scan) -> Vec<TorchStorage> {
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

/// The dtype a legacy storage class holds (`FloatStorage` → `float32`).
pub(crate) fn dtype(storage: &str) -> String {
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

/// Bytes per element of a torch dtype name.
pub(crate) fn itemsize(dtype: &str) -> u64 {
    match dtype {
        "float64" | "int64" | "complex64" => 8,
        "float32" | "int32" => 4,
        "float16" | "bfloat16" | "int16" => 2,
        "complex128" => 16,
        _ => 1,
    }
}
