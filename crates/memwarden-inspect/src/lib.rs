//! Static analysis of model files: what they hold, how much memory loading them takes, and
//! whether loading them would run code — without executing anything.
//!
//! [`inspect_file`] recognises a file by its content, reads it with every reader whose
//! loader would accept it, and reads only what it needs: headers, zip directories, pickle
//! opcode streams (payloads are skipped by seeking). What cannot be verified is unsafe.
//!
//! - [`pickle`]: the opcode walker (protocols 0–5, joblib's inline arrays, PyTorch's
//!   persistent storages);
//! - [`formats`]: one reader per format (pickle files, PyTorch, numpy, safetensors, zip
//!   bundles, Keras, HDF5, ONNX), chosen by content, several for a polyglot;
//! - [`archive`]: zip and tar read as the loaders read them;
//! - [`gate`]: paths walked, the policy applied, the `memwarden.inspect/1` document;
//! - [`safety`]: every import a pickle performs, judged against a generated allowlist of
//!   exact names;
//! - [`source`]: readers that skip by seeking, or by discarding within a decompression cap;
//! - [`trials`]: the format trials' results (`memwarden inspect --measure`).

pub mod archive;
pub mod formats;
pub mod gate;
pub mod pickle;
pub mod safety;
pub mod source;
pub mod trials;

use std::io;
use std::path::Path;

use serde::Serialize;

pub use formats::inspect_file;

/// The serialization format trials' child-process script (`memwarden inspect --measure`): it
/// loads a model with its usual loader, re-saves it in every format that fits, and loads
/// each back; the caller measures those loads with memwarden's own monitor.
pub const FORMAT_TRIALS_PY: &str = include_str!("format_trials.py");

/// What an inspection is allowed and told: bounds on hostile input, and the names a pickle
/// may call.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Bounds on what a hostile file can make the analysis do.
    pub limits: Limits,
    /// The built-in allowlist plus a team's exact pairs.
    pub allowlist: safety::Allowlist,
}

/// Bounds on what a hostile file can make the analysis do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Pickle opcodes per file.
    pub max_opcodes: u64,
    /// Pickle memo entries.
    pub max_memo: usize,
    /// Pickle stack depth.
    pub max_stack: usize,
    /// Nested pickles (joblib object arrays, pickles in zips).
    pub max_nesting: u32,
    /// Decompressed bytes per compressed stream, as a multiple of its compressed size.
    pub max_decompression_ratio: u64,
    /// Entries in a zip archive.
    pub max_zip_entries: usize,
    /// Size of a header that is read into memory (safetensors JSON, npy dict, zip pickle).
    pub max_header_bytes: u64,
    /// Pickle strings kept in memory in all (names, keys); beyond, strings are skipped like
    /// payloads, so a pickle of many mid-sized strings cannot fill memory.
    pub max_kept_text_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_opcodes: 50_000_000,
            max_memo: 5_000_000,
            max_stack: 1_000_000,
            max_nesting: 8,
            max_decompression_ratio: 200,
            max_zip_entries: 100_000,
            max_header_bytes: 100 << 20,
            max_kept_text_bytes: 64 << 20,
        }
    }
}

/// Why a file could not be analysed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Reading failed.
    #[error("cannot read at byte {offset}: {source}")]
    Io {
        /// Where.
        offset: u64,
        /// The OS error.
        source: io::Error,
    },
    /// The file ends early.
    #[error("truncated: the file ends at byte {offset} in the middle of a structure")]
    Truncated {
        /// Where it ends.
        offset: u64,
    },
    /// The content is not what its format says.
    #[error("malformed at byte {offset}: {message}")]
    Malformed {
        /// Where.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// Not a model file: no reader recognises its content.
    #[error("{0}")]
    NotAModel(String),
    /// A format or variant memwarden cannot read yet.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A bound on hostile input was hit.
    #[error("refused: more {what} than the limit of {limit} (a hostile or corrupt file?)")]
    LimitExceeded {
        /// Which bound.
        what: &'static str,
        /// Its value.
        limit: u64,
    },
}

impl InspectError {
    /// An I/O error at `offset`.
    pub fn io(offset: u64, source: io::Error) -> Self {
        InspectError::Io { offset, source }
    }

    /// Where in the file the problem is, when known.
    pub fn offset(&self) -> Option<u64> {
        match self {
            InspectError::Io { offset, .. }
            | InspectError::Truncated { offset }
            | InspectError::Malformed { offset, .. } => Some(*offset),
            InspectError::NotAModel(_)
            | InspectError::Unsupported(_)
            | InspectError::LimitExceeded { .. } => None,
        }
    }
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Known ML code, not on the allowlist.
    Medium,
    /// Code that can be chained into arbitrary behaviour.
    High,
    /// Runs commands, evaluates code, or hides what it imports.
    Critical,
}

/// Something a reviewer must see.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// How serious.
    pub severity: Severity,
    /// Byte offset, when it has one.
    pub offset: Option<u64>,
    /// What, in a sentence.
    pub message: String,
}

/// An array or tensor a file holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArrayInfo {
    /// Name or path, as far as the format reveals it.
    pub name: Option<String>,
    /// Data type as the format writes it (`<f4`, `F32`, `float32`).
    pub dtype: String,
    /// Shape, when known.
    pub shape: Option<Vec<u64>>,
    /// Bytes of data.
    pub bytes: u64,
    /// Who stores it: `numpy`, `joblib`, `torch`, `safetensors`, `npy`, `onnx`.
    pub kind: String,
}

/// The safety verdict of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Loading runs no code (no pickle), or only allowlisted constructors.
    Safe,
    /// Imports known ML code that is not on the allowlist: look before loading.
    Review,
    /// Loading would run code that can do anything.
    Unsafe,
}

/// The predicted load peak of a file with one loader.
#[derive(Debug, Clone, Serialize)]
pub struct LoaderPrediction {
    /// The loader.
    pub loader: String,
    /// Peak memory it adds.
    pub predicted_load_peak_bytes: u64,
    /// The rule behind the figure.
    pub rule: String,
}

/// Everything `memwarden inspect` says about one file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// The file.
    pub path: String,
    /// Its format.
    pub format: String,
    /// Size on disk.
    pub file_bytes: u64,
    /// Pickle protocol, for pickled formats.
    pub pickle_protocol: Option<u8>,
    /// Arrays and tensors it holds.
    pub arrays: Vec<ArrayInfo>,
    /// Sum of their bytes (or of the raw payloads, when arrays are not recognisable).
    pub payload_bytes: u64,
    /// Whether the usual loader can memory-map the payload instead of copying it.
    pub mmappable: bool,
    /// How to memory-map it, or why it cannot be.
    pub mmap_note: String,
    /// The loader the prediction is for.
    pub loader: String,
    /// Predicted peak of memory added by loading the file with that loader.
    pub predicted_load_peak_bytes: Option<u64>,
    /// The rule behind the prediction.
    pub prediction_rule: String,
    /// Predictions for other usual loaders of the format (safetensors: numpy's and torch's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_loaders: Vec<LoaderPrediction>,
    /// Other formats the same bytes were also read as (a polyglot), each judged too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub read_as: Vec<String>,
    /// Safety verdict.
    pub verdict: Verdict,
    /// Every import a pickle in the file would perform, with its judgement.
    pub imports: Vec<safety::JudgedImport>,
    /// Findings.
    pub findings: Vec<Finding>,
}

impl FileReport {
    /// Records an import once, however many readers or pickles perform it.
    pub(crate) fn add_import(&mut self, import: safety::JudgedImport) {
        if !self
            .imports
            .iter()
            .any(|i| i.module == import.module && i.name == import.name)
        {
            self.imports.push(import);
        }
    }

    pub(crate) fn new(path: &Path, format: &str, file_bytes: u64) -> Self {
        FileReport {
            path: path.display().to_string(),
            format: format.to_owned(),
            file_bytes,
            pickle_protocol: None,
            arrays: Vec::new(),
            payload_bytes: 0,
            mmappable: false,
            mmap_note: String::new(),
            loader: String::new(),
            predicted_load_peak_bytes: None,
            prediction_rule: String::new(),
            other_loaders: Vec::new(),
            read_as: Vec::new(),
            verdict: Verdict::Safe,
            imports: Vec::new(),
            findings: Vec::new(),
        }
    }
}
