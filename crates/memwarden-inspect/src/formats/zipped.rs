//! Zip archives as their loaders read them: PyTorch checkpoints (miniz, through
//! `torch.load`), `.npz` (`np.load`, through Python's `zipfile`), Keras `.keras` files, and
//! plain zip bundles of other model files.
//!
//! Every member is read from the central directory's entry and its local header's data
//! offset, as miniz does, whatever the local name says, whatever the CRC, and whatever the
//! general-purpose flags claim. Then, by content and not by name:
//! - the `data.pkl` record `torch.load` finds (the prefix is the first entry's directory,
//!   matched case-insensitively, every duplicate), every `.pkl` member, and every member
//!   that starts like a pickle, are scanned as pickles;
//! - every member that starts with the npy magic is read as `np.load` reads an npz member;
//! - a member that is itself a model file (a zip, a compressed stream...) is extracted
//!   within the decompression limit and inspected like a file.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::{apply_scan, cannot_verify, inspect_file, numpy, torch};
use crate::archive::zip::{self, ZipEntry};
use crate::pickle::{self, Extent, Flavor};
use crate::{FileReport, Finding, InspectError, Options, Severity};

/// A zip file; `None` when it holds nothing a model loader reads.
pub(crate) fn inspect(
    path: &Path,
    len: u64,
    options: &Options,
) -> Result<Option<FileReport>, InspectError> {
    let mut file = File::open(path).map_err(|e| InspectError::io(0, e))?;
    let archive = zip::read_directory(&mut file, len, &options.limits)?;
    let mut report = FileReport::new(path, "zip", len);
    for note in &archive.findings {
        report.findings.push(Finding {
            severity: Severity::Info,
            offset: None,
            message: format!("zip: {note}"),
        });
    }
    let data_pkls: Vec<u64> = zip::lookup_like_torch(&archive, "data.pkl")
        .iter()
        .map(|e| e.data_offset)
        .collect();
    let mut analysed = false;
    let mut npy_members = 0usize;
    let mut checkpoint = None;
    // What torch reads, then whatever Python's zipfile (np.load, Keras) would read instead.
    let mut seen = std::collections::HashSet::new();
    let members: Vec<&ZipEntry> = archive
        .entries
        .iter()
        .chain(archive.zipfile_entries.iter().flatten())
        .filter(|e| !e.is_dir() && seen.insert((e.data_offset, e.name.clone())))
        .collect();
    for entry in members {
        let name = entry.name_lossy();
        let lower = name.to_ascii_lowercase();
        let head = match member_head(&mut file, entry, options) {
            Ok(head) => head,
            Err(error) => {
                if lower.ends_with(".pkl") || data_pkls.contains(&entry.data_offset) {
                    cannot_verify(&mut report, &name, &error);
                }
                continue;
            }
        };
        let torch_record = data_pkls.contains(&entry.data_offset);
        // A checkpoint's storages (`<prefix>/data/<key>`) are raw tensor bytes that torch
        // never unpickles, even when they happen to start like a pickle.
        let storage = !data_pkls.is_empty()
            && lower
                .split_once('/')
                .is_some_and(|(_, rest)| rest.starts_with("data/") || rest.starts_with(".data/"))
            && !lower.ends_with(".pkl");
        let named_pickle = torch_record || lower.ends_with(".pkl");
        if named_pickle || (!storage && starts_like_pickle(&head)) {
            let mut source = zip::open_entry(&mut file, entry, &options.limits)?;
            let mut scan = pickle::scan(&mut source, 0, options, Flavor::Plain, Extent::All);
            // A member found by its first bytes alone counts when it is a pickle indeed.
            if !named_pickle && scan.pickles == 0 && scan.imports.is_empty() {
                continue;
            }
            analysed = true;
            apply_scan(&mut report, &scan, options, &name);
            if torch_record && checkpoint.is_none() && scan.broken.take().is_none() {
                checkpoint = Some((scan, entry.uncompressed_size));
            }
        } else if head.starts_with(numpy::MAGIC) {
            analysed = true;
            npy_members += 1;
            let mut source = zip::open_entry(&mut file, entry, &options.limits)?;
            let array_name = name.strip_suffix(".npy").unwrap_or(&name).to_owned();
            match numpy::read_npy(&mut source, 0, Some(array_name), options, &mut report) {
                Ok(array) => report.arrays.push(array),
                Err(error) => cannot_verify(&mut report, &name, &error),
            }
        } else if lower == "config.json" || lower.ends_with("/config.json") {
            analysed = true;
            keras_config(&mut file, entry, options, &mut report)?;
        } else if is_nested_model(&head) {
            analysed = true;
            nested(&mut file, entry, &name, options, &mut report)?;
        }
    }
    if let Some((scan, pickle_bytes)) = checkpoint {
        let sizes = |key: &str| {
            zip::lookup_like_torch(&archive, &format!("data/{key}"))
                .first()
                .map(|e| (e.uncompressed_size, e.method == 0))
        };
        torch::describe_checkpoint(&mut report, &scan, pickle_bytes, &sizes);
    } else if npy_members > 0 {
        report.format = "npz".to_owned();
        numpy::finish(&mut report, true);
    }
    if !analysed {
        return Ok(None);
    }
    Ok(Some(report))
}

/// The first bytes of a member, decompressed.
fn member_head(
    file: &mut File,
    entry: &ZipEntry,
    options: &Options,
) -> Result<Vec<u8>, InspectError> {
    let source = zip::open_entry(file, entry, &options.limits)?;
    let mut head = Vec::with_capacity(16);
    source
        .take(16)
        .read_to_end(&mut head)
        .map_err(|e| InspectError::io(entry.data_offset, e))?;
    Ok(head)
}

fn starts_like_pickle(head: &[u8]) -> bool {
    matches!(head, [0x80, 0..=5, ..])
}

fn is_nested_model(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04")
        || super::pickled::compression_of(head).is_some()
        || super::safetensors::looks_like(head, u64::MAX).is_some()
        || head.starts_with(b"\x89HDF")
}

/// A Keras `config.json`: judged for code it would run.
fn keras_config(
    file: &mut File,
    entry: &ZipEntry,
    options: &Options,
    report: &mut FileReport,
) -> Result<(), InspectError> {
    let mut text = Vec::new();
    zip::open_entry(file, entry, &options.limits)?
        .take(options.limits.max_header_bytes)
        .read_to_end(&mut text)
        .map_err(|e| InspectError::io(entry.data_offset, e))?;
    report.format = "keras".to_owned();
    super::keras::judge_config(&String::from_utf8_lossy(&text), None, report);
    Ok(())
}

/// A member that is a model file itself: extracted (within the limits) and inspected.
fn nested(
    file: &mut File,
    entry: &ZipEntry,
    name: &str,
    options: &Options,
    report: &mut FileReport,
) -> Result<(), InspectError> {
    if options.limits.max_nesting == 0 {
        cannot_verify(
            report,
            name,
            &InspectError::LimitExceeded {
                what: "nested archives",
                limit: 0,
            },
        );
        return Ok(());
    }
    let mut temp = tempfile::NamedTempFile::new().map_err(|e| InspectError::io(0, e))?;
    let mut source = zip::open_entry(file, entry, &options.limits)?;
    io::copy(&mut source, temp.as_file_mut())
        .map_err(|e| InspectError::io(entry.data_offset, e))?;
    let inner_options = Options {
        limits: crate::Limits {
            max_nesting: options.limits.max_nesting - 1,
            ..options.limits.clone()
        },
        allowlist: options.allowlist.clone(),
    };
    match inspect_file(temp.path(), &inner_options) {
        Ok(inner) => {
            report.verdict = report.verdict.max(inner.verdict);
            report.payload_bytes = report.payload_bytes.saturating_add(inner.payload_bytes);
            for import in inner.imports {
                report.add_import(import);
            }
            report
                .findings
                .extend(inner.findings.into_iter().map(|mut f| {
                    f.message = format!("{name}: {}", f.message);
                    f
                }));
            report.arrays.extend(inner.arrays.into_iter().map(|mut a| {
                a.name = Some(format!("{name}:{}", a.name.unwrap_or_default()));
                a
            }));
        }
        Err(error) => report.findings.push(Finding {
            severity: Severity::Info,
            offset: None,
            message: format!("{name}: not analysed ({error})"),
        }),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write;

    use crate::{inspect_file, Options, Verdict};

    fn write_zip(path: &std::path::Path, members: &[(&str, &[u8])]) {
        let mut zip = ::zip::ZipWriter::new(File::create(path).expect("create"));
        let stored = ::zip::write::SimpleFileOptions::default()
            .compression_method(::zip::CompressionMethod::Stored);
        for (name, bytes) in members {
            zip.start_file(*name, stored).expect("entry");
            zip.write_all(bytes).expect("write");
        }
        zip.finish().expect("finish");
    }

    #[test]
    fn storages_that_start_like_a_pickle_are_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.pt");
        // data.pkl: {} ; a storage whose first bytes read as PROTO 2 then garbage.
        write_zip(
            &path,
            &[
                ("archive/data.pkl", b"\x80\x02}q\x00."),
                ("archive/data/0", b"\x80\x02\xff\xff\xff\xff\xff\xff"),
            ],
        );
        let report = inspect_file(&path, &Options::default()).expect("read");
        assert_eq!(report.format, "pytorch");
        assert_eq!(report.verdict, Verdict::Safe, "{:?}", report.findings);
        // The same bytes in a bundle that is not a checkpoint, under a .pkl name: scanned.
        let bundle = dir.path().join("bundle.zip");
        write_zip(&bundle, &[("extra.pkl", b"\x80\x02\xff\xff")]);
        let report = inspect_file(&bundle, &Options::default()).expect("read");
        assert_eq!(report.verdict, Verdict::Unsafe, "{:?}", report.findings);
    }
}
