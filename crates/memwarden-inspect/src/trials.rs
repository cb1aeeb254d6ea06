//! The format trials' results (`memwarden inspect --measure`): each serialization format
//! that fits a model, measured as it loads. The CLI runs the trials with
//! [`crate::FORMAT_TRIALS_PY`] and fills these; `memwarden-report` renders them.

use serde::Serialize;

/// One format measured.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// Format name (`pickle`, `joblib`, `safetensors`...).
    pub format: String,
    /// Whether this is the file as given.
    pub original: bool,
    /// File size.
    pub file_bytes: u64,
    /// Seconds to save (`None` for the original).
    pub save_s: Option<f64>,
    /// Seconds to load.
    pub load_s: f64,
    /// Peak memory the load added.
    pub load_peak_bytes: u64,
}

/// The trials of one file and the format they recommend.
#[derive(Debug, Clone, Serialize)]
pub struct FileTrials {
    /// The file.
    pub path: String,
    /// Every format tried.
    pub trials: Vec<Trial>,
    /// Formats that do not fit this model, with why.
    pub skipped: Vec<(String, String)>,
    /// The recommended format: among those within 5% (or 1 MiB) of the lowest load peak,
    /// one that runs no code when loaded, then the smallest file, then the fastest load.
    pub recommended: Option<String>,
    /// Load peak saved by the recommendation against the original, in bytes.
    pub saving_bytes: i64,
    /// The same, in percent of the original's load peak.
    pub saving_pct: f64,
}

/// Whether loading the format unpickles (and so can run code).
pub fn runs_code(format: &str) -> bool {
    !matches!(format, "npy" | "npz" | "safetensors")
}
