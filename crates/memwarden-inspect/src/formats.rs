//! Recognising a file by its content, as every loader that might open it would, and
//! reading it with each of them.
//!
//! A file is read by *every* reader whose loader would accept it (a pickle at offset 0
//! that `pickle.load` runs, an HDF5 superblock after a 512-byte user block that h5py finds,
//! a zip directory at the end that `zipfile` finds), and the verdict is the worst of them:
//! a polyglot cannot show one loader a benign face while another loader runs its payload.
//! Names and extensions decide nothing.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::archive;
use crate::pickle::Scan;
use crate::safety;
use crate::{FileReport, Finding, InspectError, Options, Severity, Verdict};

mod hdf5;
mod keras;
mod literal;
mod numpy;
mod onnx;
mod pickled;
mod safetensors;
mod torch;
mod zipped;

pub(crate) use torch::{dtype as torch_dtype, itemsize as torch_itemsize};

/// The readers a file's content calls for, most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    Zip,
    Npy,
    Safetensors(u64),
    Compressed(pickled::Compression),
    JoblibZf,
    SevenZip,
    Tar,
    Pickle,
    Hdf5,
    Onnx,
}

impl Reader {
    fn name(self) -> &'static str {
        match self {
            Reader::Zip => "zip",
            Reader::Npy => "npy",
            Reader::Safetensors(_) => "safetensors",
            Reader::Compressed(_) => "compressed pickle",
            Reader::JoblibZf => "joblib-zf",
            Reader::SevenZip => "7z",
            Reader::Tar => "tar",
            Reader::Pickle => "pickle",
            Reader::Hdf5 => "hdf5",
            Reader::Onnx => "onnx",
        }
    }
}

/// Bytes read from the start of a file to recognise it.
const HEAD_BYTES: usize = 512;

/// Inspects one file. `Err` only when no reader could read it (its loaders could not
/// either: empty, not a model, or broken in a way every loader refuses); a file that a
/// loader reads but memwarden cannot verify is an `Ok` report judged unsafe.
pub fn inspect_file(path: &Path, options: &Options) -> Result<FileReport, InspectError> {
    let mut file = File::open(path).map_err(|e| InspectError::io(0, e))?;
    let len = file.metadata().map_err(|e| InspectError::io(0, e))?.len();
    let mut head = [0u8; HEAD_BYTES];
    let got = read_up_to(&mut file, &mut head).map_err(|e| InspectError::io(0, e))?;
    let head = &head[..got];
    let readers = recognise(path, &mut file, head, len);
    let mut merged: Option<FileReport> = None;
    let mut first_error = None;
    for reader in readers {
        let result = match reader {
            Reader::Zip => zipped::inspect(path, len, options),
            Reader::Npy => numpy::inspect(path, len, options).map(Some),
            Reader::Safetensors(header_len) => {
                safetensors::inspect(path, len, header_len, &options.limits).map(Some)
            }
            Reader::Compressed(compression) => {
                pickled::inspect_compressed(path, len, compression, options).map(Some)
            }
            Reader::JoblibZf => pickled::inspect_joblib_zf(path, len, head, options).map(Some),
            Reader::SevenZip => Err(InspectError::Unsupported(
                "a 7z archive, which memwarden does not read: extract it and inspect what it holds"
                    .into(),
            )),
            Reader::Tar => torch::inspect_tar(path, len, options),
            Reader::Pickle => pickled::inspect_plain(path, len, head, options),
            Reader::Hdf5 => hdf5::inspect(path, len, &options.limits).map(Some),
            Reader::Onnx => onnx::inspect(path, len, &options.limits).map(Some),
        };
        let report = match result {
            Ok(Some(report)) => report,
            Ok(None) => continue,
            // memwarden refused or cannot read what the loader would: fail closed.
            Err(error @ (InspectError::LimitExceeded { .. } | InspectError::Unsupported(_))) => {
                let mut report = FileReport::new(path, reader.name(), len);
                cannot_verify(&mut report, reader.name(), &error);
                report
            }
            // The loaders of this reader could not read it either.
            Err(error) => {
                first_error.get_or_insert(error);
                continue;
            }
        };
        merged = Some(match merged {
            None => report,
            Some(mut primary) => {
                merge(&mut primary, report);
                primary
            }
        });
    }
    match (merged, first_error) {
        (Some(report), _) => Ok(report),
        (None, Some(error)) => Err(error),
        (None, None) => Err(InspectError::NotAModel(format!(
            "{}: not a model file (no pickle, zip, npy, safetensors, HDF5, ONNX, tar or compressed stream in its content)",
            path.display()
        ))),
    }
}

/// The readers `head` (and the file's end) call for.
fn recognise(path: &Path, file: &mut File, head: &[u8], len: u64) -> Vec<Reader> {
    let mut readers = Vec::new();
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        readers.push(Reader::Zip);
    }
    if head.starts_with(numpy::MAGIC) {
        readers.push(Reader::Npy);
    }
    if let Some(header_len) = safetensors::looks_like(head, len) {
        readers.push(Reader::Safetensors(header_len));
    }
    if let Some(compression) = pickled::compression_of(head) {
        readers.push(Reader::Compressed(compression));
    }
    if pickled::is_joblib_zf(head) {
        readers.push(Reader::JoblibZf);
    }
    if archive::is_7z(head) {
        readers.push(Reader::SevenZip);
    }
    if head.len() >= 512 && archive::tar::looks_like_tar(&head[..512]) {
        readers.push(Reader::Tar);
    }
    if head.first().is_some_and(|&b| is_pickle_opcode(b)) && !readers.contains(&Reader::Zip) {
        readers.push(Reader::Pickle);
    }
    if hdf5::find_superblock(file, len).is_some() {
        readers.push(Reader::Hdf5);
    }
    if !readers.contains(&Reader::Zip) && has_zip_directory(file, len) {
        // Python's zipfile (Keras, np.load of a named member) finds a directory at the end
        // whatever precedes it.
        readers.push(Reader::Zip);
    }
    let onnx_named = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    if readers.is_empty() && (onnx_named || onnx::looks_like_model(head)) {
        readers.push(Reader::Onnx);
    }
    readers
}

/// Whether `byte` is one of the pickle opcodes (protocols 0 to 5), any of which an
/// unpickler executes as the first of a stream.
fn is_pickle_opcode(byte: u8) -> bool {
    matches!(byte, 0x80..=0x98) || b"(.012BCFGIJKLMNPQRSTUVXabcdeghijlopqrstu}])".contains(&byte)
}

/// Whether an end-of-central-directory record lies in the last 64 KiB + 22 bytes.
fn has_zip_directory(file: &mut File, len: u64) -> bool {
    let window = len.min(65_557);
    let mut tail = vec![0u8; window as usize];
    if io::Seek::seek(file, io::SeekFrom::Start(len - window)).is_err()
        || file.read_exact(&mut tail).is_err()
    {
        return false;
    }
    tail.windows(4).any(|w| w == b"PK\x05\x06")
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

/// Adds a second reader's findings to the primary report: the worst verdict wins.
fn merge(primary: &mut FileReport, other: FileReport) {
    primary.read_as.push(other.format.clone());
    primary.verdict = primary.verdict.max(other.verdict);
    for import in other.imports {
        primary.add_import(import);
    }
    let format = other.format;
    primary
        .findings
        .extend(other.findings.into_iter().map(|mut finding| {
            finding.message = format!("(read as {format}) {}", finding.message);
            finding
        }));
}

/// Marks a report unsafe because `what` cannot be verified.
pub(crate) fn cannot_verify(report: &mut FileReport, what: &str, error: &InspectError) {
    report.verdict = Verdict::Unsafe;
    report.findings.push(Finding {
        severity: Severity::High,
        offset: error.offset(),
        message: format!("cannot be verified: {what}: {error}"),
    });
}

/// Judges a pickle scan into `report`: its imports and findings, and, when the stream
/// broke, either the flagged calls the loader ran before failing or "cannot be verified".
pub(crate) fn apply_scan(report: &mut FileReport, scan: &Scan, options: &Options, what: &str) {
    let (verdict, judged) = safety::assess(&options.allowlist, &scan.imports, &scan.findings);
    report.verdict = report.verdict.max(verdict);
    let flagged = judged
        .iter()
        .filter(|j| j.severity >= Some(Severity::High))
        .map(|j| format!("{}.{}", j.module, j.name))
        .chain(
            scan.findings
                .iter()
                .filter(|f| f.severity >= Severity::High)
                .map(|f| f.message.clone()),
        )
        .next();
    for import in judged {
        report.add_import(import);
    }
    report.findings.extend(scan.findings.iter().cloned());
    if let Some(error) = &scan.broken {
        match flagged {
            Some(first) => {
                report.verdict = Verdict::Unsafe;
                report.findings.push(Finding {
                    severity: Severity::Critical,
                    offset: error.offset(),
                    message: format!("{what} breaks ({error}) after {first}: the loader runs what precedes the break, then fails"),
                });
            }
            None => cannot_verify(report, what, error),
        }
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
        let report = inspect_file(&path, &Options::default()).expect("inspected");
        assert_eq!(report.format, "pickle-compressed");
        assert_eq!(report.verdict, Verdict::Unsafe);
        assert!(report
            .imports
            .iter()
            .any(|i| i.module == "os" && i.name == "system"));
    }
}
