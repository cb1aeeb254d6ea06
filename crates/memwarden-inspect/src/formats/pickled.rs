//! Files that are pickles: plain and joblib, compressed with any of joblib's compressors
//! (each read as Python's module reads it: every concatenated stream or member), and
//! joblib's legacy `ZF` container.
//!
//! Every pickle in the stream is scanned, not only the first: a second `pickle.load` on the
//! same file runs the second one.

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use super::{apply_scan, torch};
use crate::pickle::{self, Extent, Flavor, Scan};
use crate::source::{FileSource, StreamSource};
use crate::{FileReport, InspectError, Options};

/// Memory a `.xz` or `.lzma` decoder may take: the dictionary is the header's to ask for
/// (up to 4 GiB, allocated before any data is read); every xz preset needs at most 65 MiB.
/// The zip reader bounds LZMA members the same way.
const DECODER_MEMLIMIT: u64 = 256 << 20;

/// A compressor joblib writes (and `joblib.load` recognises by these first bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Compression {
    /// zlib (`\x78`), read as joblib's `BinaryZlibFile` reads it.
    Zlib,
    /// gzip, every member (Python's `gzip` reads them all).
    Gzip,
    /// bzip2, every stream.
    Bz2,
    /// xz, every stream.
    Xz,
    /// The legacy `.lzma` ("alone") format, every stream.
    Lzma,
    /// lz4 frames.
    Lz4,
}

/// The compressor whose signature the file starts with.
pub(crate) fn compression_of(head: &[u8]) -> Option<Compression> {
    match head {
        // Any zlib header: CMF 0x78 and a check byte making the pair a multiple of 31.
        [0x78, flags, ..] if (0x7800u16 | u16::from(*flags)).is_multiple_of(31) => {
            Some(Compression::Zlib)
        }
        [0x1f, 0x8b, ..] => Some(Compression::Gzip),
        [b'B', b'Z', b'h', ..] => Some(Compression::Bz2),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Some(Compression::Xz),
        [0x5d, 0, 0, ..] => Some(Compression::Lzma),
        [0x04, 0x22, 0x4d, 0x18, ..] => Some(Compression::Lz4),
        _ => None,
    }
}

/// Whether the file starts with joblib's legacy compressed container: `ZF`, the
/// uncompressed length in hex over 19 characters (and a space, from old writers), zlib.
pub(crate) fn is_joblib_zf(head: &[u8]) -> bool {
    head.len() >= 21
        && head.starts_with(b"ZF")
        && head[2..21]
            .iter()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b'x' | b' '))
}

/// A plain pickle (or joblib) file; `None` when the bytes are not a pickle after all
/// (no `STOP` reached, no `PROTO`, nothing imported).
pub(crate) fn inspect_plain(
    path: &Path,
    len: u64,
    head: &[u8],
    options: &Options,
) -> Result<Option<FileReport>, InspectError> {
    if head.starts_with(torch::LEGACY_MAGIC) {
        return torch::inspect_legacy(path, len, options).map(Some);
    }
    let mut source = FileSource::open(path, 0)?;
    let scan = pickle::scan(&mut source, 0, options, Flavor::Joblib, Extent::All);
    let proto = head.first() == Some(&0x80);
    if scan.pickles == 0 && !proto && scan.imports.is_empty() && scan.findings.is_empty() {
        return Ok(None);
    }
    let joblib_arrays = scan.arrays.iter().any(|a| a.kind == "joblib");
    let mut report = report(path, len, scan, false, options);
    if joblib_arrays {
        plain_reading_of_joblib(path, options, &mut report)?;
    }
    Ok(Some(report))
}

/// `pickle.load` on a joblib file reads the bytes joblib keeps as array data as opcodes.
/// Random array data breaks at once; bytes that form a whole pickle importing flagged names
/// that joblib's reading never met are a payload hidden from it, and are reported. (Only
/// imports count: the memo and stack of this reading are not the loader's, so findings
/// about computed names would be noise.)
fn plain_reading_of_joblib(
    path: &Path,
    options: &Options,
    report: &mut FileReport,
) -> Result<(), InspectError> {
    let mut source = FileSource::open(path, 0)?;
    let plain = pickle::scan(&mut source, 0, options, Flavor::Plain, Extent::One);
    if plain.broken.is_some() {
        return Ok(());
    }
    let (_, judged) = crate::safety::assess(&options.allowlist, &plain.imports, &[]);
    for import in judged {
        let new = !report
            .imports
            .iter()
            .any(|i| i.module == import.module && i.name == import.name);
        if new && import.severity.is_some() {
            report.verdict = report.verdict.max(crate::Verdict::Unsafe);
            report.findings.push(crate::Finding {
                severity: crate::Severity::Critical,
                offset: None,
                message: format!("`{}.{}` is imported when pickle.load reads the file: joblib's array bytes hide a pickle", import.module, import.name),
            });
            report.add_import(import);
        }
    }
    Ok(())
}

/// A compressed pickle (what `joblib.load` reads).
pub(crate) fn inspect_compressed(
    path: &Path,
    len: u64,
    compression: Compression,
    options: &Options,
) -> Result<FileReport, InspectError> {
    let file = std::fs::File::open(path).map_err(|e| InspectError::io(0, e))?;
    let input = BufReader::new(file);
    let decoder: Box<dyn Read> = match compression {
        Compression::Zlib => Box::new(Concatenated::new(
            input,
            |r| Ok(flate2::bufread::ZlibDecoder::new(r)),
            flate2::bufread::ZlibDecoder::into_inner,
        )),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Bz2 => Box::new(bzip2::bufread::MultiBzDecoder::new(input)),
        Compression::Xz => {
            let stream =
                xz2::stream::Stream::new_auto_decoder(DECODER_MEMLIMIT, xz2::stream::CONCATENATED)
                    .map_err(|e| InspectError::Unsupported(format!("xz decoder: {e}")))?;
            Box::new(xz2::bufread::XzDecoder::new_stream(input, stream))
        }
        Compression::Lzma => Box::new(Concatenated::new(
            input,
            |r| {
                let stream = xz2::stream::Stream::new_lzma_decoder(DECODER_MEMLIMIT)
                    .map_err(io::Error::other)?;
                Ok(xz2::bufread::XzDecoder::new_stream(r, stream))
            },
            xz2::bufread::XzDecoder::into_inner,
        )),
        Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(input)),
    };
    let cap = len.saturating_mul(options.limits.max_decompression_ratio);
    let scan = pickle::scan(
        &mut StreamSource::new(decoder, cap),
        0,
        options,
        Flavor::Joblib,
        Extent::All,
    );
    Ok(report(path, len, scan, true, options))
}

/// joblib's legacy `ZF` container (joblib < 0.10): a zlib stream after the header.
pub(crate) fn inspect_joblib_zf(
    path: &Path,
    len: u64,
    head: &[u8],
    options: &Options,
) -> Result<FileReport, InspectError> {
    let start: u64 = if head.get(21) == Some(&b' ') { 22 } else { 21 };
    let mut file = std::fs::File::open(path).map_err(|e| InspectError::io(0, e))?;
    io::Seek::seek(&mut file, io::SeekFrom::Start(start))
        .map_err(|e| InspectError::io(start, e))?;
    let decoder = flate2::read::ZlibDecoder::new(BufReader::new(file));
    let cap = len.saturating_mul(options.limits.max_decompression_ratio);
    let scan = pickle::scan(
        &mut StreamSource::new(decoder, cap),
        0,
        options,
        Flavor::Plain,
        Extent::All,
    );
    let mut report = report(path, len, scan, true, options);
    report.format = "joblib-zf".to_owned();
    report.loader = "joblib.load".to_owned();
    Ok(report)
}

/// Concatenated compressed streams, each decoded by a fresh decoder, as Python's
/// compressed-file classes read them.
struct Concatenated<B, D> {
    decoder: Option<D>,
    make: fn(B) -> io::Result<D>,
    into_inner: fn(D) -> B,
}

impl<B: BufRead, D: Read> Concatenated<B, D> {
    fn new(input: B, make: fn(B) -> io::Result<D>, into_inner: fn(D) -> B) -> Self {
        Concatenated {
            decoder: make(input).ok(),
            make,
            into_inner,
        }
    }
}

impl<B: BufRead, D: Read> Read for Concatenated<B, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Err(io::Error::other("cannot start a decompressor"));
            };
            let n = decoder.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Some(decoder) = self.decoder.take() else {
                return Ok(0);
            };
            let mut input = (self.into_inner)(decoder);
            if input.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.decoder = Some((self.make)(input)?);
        }
    }
}

/// The report of a pickle file: inventory, safety, and the load prediction of the loader
/// that reads it (joblib's when the pickle uses joblib's wrappers).
fn report(
    path: &Path,
    len: u64,
    mut scan: Scan,
    compressed: bool,
    options: &Options,
) -> FileReport {
    let joblib = scan.imports.iter().any(|i| i.module.starts_with("joblib"));
    let format = match (joblib, compressed) {
        (true, false) => "joblib",
        (true, true) => "joblib-compressed",
        (false, false) => "pickle",
        (false, true) => "pickle-compressed",
    };
    let mut report = FileReport::new(path, format, len);
    report.pickle_protocol = Some(scan.protocol);
    pickle::name_arrays(&mut scan);
    report.arrays = scan.arrays.clone();
    let array_bytes: u64 = scan
        .arrays
        .iter()
        .map(|a| a.bytes)
        .fold(0, u64::saturating_add);
    report.payload_bytes = array_bytes.max(scan.payload_bytes);
    apply_scan(&mut report, &scan, options, "the pickle");
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
        report.predicted_load_peak_bytes = Some(
            array_bytes
                .saturating_add(other_payload)
                .saturating_add(copied),
        );
        report.prediction_rule = format!("joblib reads each array straight into its final buffer: every array once{copies}; memory of the modules the pickle imports is not counted");
        report.mmappable = !compressed;
        report.mmap_note = if report.mmappable {
            "joblib.load(path, mmap_mode='r') maps the arrays instead of reading them".to_owned()
        } else {
            "compressed joblib files cannot be memory-mapped: save with compress=0 to allow mmap_mode".to_owned()
        };
    } else {
        report.loader = "pickle.load".to_owned();
        // numpy keeps the bytes pickle built (protocols 3-5) as the array's buffer; protocol
        // 2 goes through a latin-1 str: its UTF-8 text read from the file, the str decoded
        // from it, and the bytes encoded from that, alive together while the largest array
        // is rebuilt.
        let transient = if scan.protocol <= 2 {
            scan.largest_text_bytes.saturating_add(largest)
        } else {
            0
        };
        let data = if scan.arrays.is_empty() {
            scan.payload_bytes
        } else {
            array_bytes
        };
        report.predicted_load_peak_bytes =
            Some(data.saturating_add(transient).saturating_add(copied));
        report.prediction_rule = format!("every array once (numpy adopts the bytes pickle builds; protocol 2 adds the largest array's latin-1 text while it is converted){copies}; memory of the modules the pickle imports is not counted");
        report.mmap_note = "pickle cannot memory-map: save arrays with numpy (np.save + mmap_mode) or safetensors to load without copies".to_owned();
    }
    report
}

#[cfg(test)]
mod tests {
    use crate::{inspect_file, Options, Verdict};

    /// Inspects `bytes` as a file named `name`: the report must fail closed on the
    /// decoder's memory limit.
    fn refused_for_memory(name: &str, bytes: &[u8]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let report = inspect_file(&path, &Options::default()).expect("inspected");
        assert_eq!(report.verdict, Verdict::Unsafe, "{:?}", report.findings);
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.message.contains("memory limit")),
            "{:?}",
            report.findings
        );
    }

    #[test]
    fn an_lzma_header_asking_for_a_4_gib_dictionary_is_refused_not_allocated() {
        // Found by `cargo fuzz run file` (minimised): an `.lzma` header whose dictionary
        // size is 0xFF800000, followed by nothing liblzma gets to decode.
        refused_for_memory(
            "model.joblib",
            &[93, 0, 0, 128, 255, 15, 196, 93, 199, 160, 255, 0, 0],
        );
    }

    #[test]
    fn an_xz_block_asking_for_a_4_gib_dictionary_is_refused_not_allocated() {
        let crc = |bytes: &[u8]| {
            let mut crc = flate2::Crc::new();
            crc.update(bytes);
            crc.sum().to_le_bytes()
        };
        // Stream header (CRC32 check), then a block header: one LZMA2 filter whose
        // dictionary property 40 means 4 GiB - 1.
        let mut xz = b"\xfd7zXZ\x00\x00\x01".to_vec();
        xz.extend_from_slice(&crc(&[0x00, 0x01]));
        let block = [0x02, 0x00, 0x21, 0x01, 40, 0x00, 0x00, 0x00];
        xz.extend_from_slice(&block);
        xz.extend_from_slice(&crc(&block));
        xz.extend_from_slice(&[0x00; 16]);
        refused_for_memory("model.joblib", &xz);
    }
}

#[cfg(test)]
mod plain_reading_tests {
    use crate::{inspect_file, Options, Verdict};

    #[test]
    fn a_payload_in_joblib_array_bytes_that_pickle_load_would_run_is_found() {
        // A joblib wrapper of `len(payload)` uint8 values (no alignment padding, as joblib
        // before 1.2 wrote it) whose bytes are themselves a pickle: joblib.load skips them,
        // pickle.load runs them.
        let payload: &[u8] = b"cos\nsystem\n(S'echo'\ntR.";
        let mut bytes =
            b"\x80\x02cjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81}(X\x05\x00\x00\x00shape"
                .to_vec();
        bytes.extend([b'K', u8::try_from(payload.len()).expect("short"), 0x85]);
        bytes.extend(b"X\x05\x00\x00\x00dtypeX\x03\x00\x00\x00|u1ub");
        bytes.extend(payload);
        bytes.push(b'.');
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.joblib");
        std::fs::write(&path, &bytes).expect("write");
        let report = inspect_file(&path, &Options::default()).expect("read");
        assert_eq!(report.format, "joblib");
        assert_eq!(report.verdict, Verdict::Unsafe, "{:?}", report.imports);
        assert!(report
            .imports
            .iter()
            .any(|i| i.module == "os" && i.name == "system"));
        // The same wrapper over ordinary data stays safe.
        let mut benign = bytes.clone();
        let start = benign.len() - 1 - payload.len();
        benign[start..start + payload.len()].fill(0x3f);
        std::fs::write(&path, &benign).expect("write");
        let report = inspect_file(&path, &Options::default()).expect("read");
        assert_eq!(report.verdict, Verdict::Safe, "{:?}", report.findings);
    }
}
