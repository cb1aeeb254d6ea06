//! The inspect gate: every path walked, every file inspected, the policy applied, and the
//! `memwarden.inspect/1` document produced (its terminal text is
//! `memwarden_report::text::inspect`). The CLI, the Python package and CI all call
//! [`inspect_paths`].

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use memwarden_format::units::format_size;
use serde::Serialize;

use crate::{inspect_file, FileReport, InspectError, Options, Verdict};

/// The schema name of the JSON document.
pub const SCHEMA: &str = "memwarden.inspect/1";

/// What the gate accepts.
#[derive(Debug, Clone)]
pub struct GatePolicy {
    /// The least safe verdict accepted (`Safe` unless the policy says `review`).
    pub require: Verdict,
    /// The largest predicted load peak accepted.
    pub max_load_peak_bytes: Option<u64>,
}

impl Default for GatePolicy {
    fn default() -> Self {
        GatePolicy {
            require: Verdict::Safe,
            max_load_peak_bytes: None,
        }
    }
}

/// A file no supported loader could read either.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    /// The file.
    pub path: String,
    /// Why.
    pub error: String,
}

/// The gate's result: the `memwarden.inspect/1` document.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `memwarden.inspect/1`.
    pub schema: &'static str,
    /// Every file inspected.
    pub files: Vec<FileReport>,
    /// Files that could not be read.
    pub unreadable: Vec<Unreadable>,
    /// Files met in a directory walk that are not model files, so not judged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// Why the gate fails, one sentence each.
    pub violations: Vec<String>,
    /// Whether the gate passes.
    pub pass: bool,
}

/// Why the gate could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// A path given does not exist.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// A directory could not be listed.
    #[error("cannot list {path}: {source}")]
    List {
        /// The directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Inspects every file under `paths` (directories walked, symbolic links followed, each
/// directory once) and applies `policy`.
pub fn inspect_paths(
    paths: &[PathBuf],
    policy: &GatePolicy,
    options: &Options,
) -> Result<Outcome, GateError> {
    let mut outcome = Outcome {
        schema: SCHEMA,
        files: Vec::new(),
        unreadable: Vec::new(),
        skipped: Vec::new(),
        violations: Vec::new(),
        pass: false,
    };
    for path in paths {
        let metadata =
            std::fs::metadata(path).map_err(|_| GateError::NotFound(path.display().to_string()))?;
        if !metadata.is_dir() {
            match inspect_file(path, options) {
                Ok(report) => outcome.files.push(report),
                Err(error) => outcome.unreadable.push(Unreadable {
                    path: path.display().to_string(),
                    error: error.to_string(),
                }),
            }
            continue;
        }
        let mut files = Vec::new();
        walk(path, &mut HashSet::new(), &mut files)?;
        let judged_before = outcome.files.len() + outcome.unreadable.len();
        for file in files {
            match inspect_file(&file, options) {
                Ok(report) => outcome.files.push(report),
                Err(InspectError::NotAModel(_)) => {
                    outcome.skipped.push(file.display().to_string());
                }
                Err(error) => outcome.unreadable.push(Unreadable {
                    path: file.display().to_string(),
                    error: error.to_string(),
                }),
            }
        }
        if outcome.files.len() + outcome.unreadable.len() == judged_before {
            outcome.violations.push(format!(
                "{}: no model file found in it: nothing was verified",
                path.display()
            ));
        }
    }
    for report in &outcome.files {
        if report.verdict > policy.require {
            outcome.violations.push(format!(
                "{}: judged {}, the policy accepts {} at most",
                report.path,
                verdict_word(report.verdict),
                verdict_word(policy.require)
            ));
        }
        if let (Some(cap), Some(peak)) =
            (policy.max_load_peak_bytes, report.predicted_load_peak_bytes)
        {
            if peak > cap {
                outcome.violations.push(format!(
                    "{}: predicted load peak {} exceeds max_load_peak {}",
                    report.path,
                    format_size(peak),
                    format_size(cap)
                ));
            }
        }
    }
    outcome.pass = outcome.violations.is_empty() && outcome.unreadable.is_empty();
    Ok(outcome)
}

/// A verdict as the gate's sentences and the terminal text name it.
pub fn verdict_word(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Safe => "safe",
        Verdict::Review => "review",
        Verdict::Unsafe => "unsafe",
    }
}

/// Every regular file under `dir`, sorted, following links; each directory (by device and
/// inode) once, so a link to a parent cannot loop.
fn walk(
    dir: &Path,
    seen: &mut HashSet<(u64, u64)>,
    out: &mut Vec<PathBuf>,
) -> Result<(), GateError> {
    let list_error = |source| GateError::List {
        path: dir.display().to_string(),
        source,
    };
    let metadata = std::fs::metadata(dir).map_err(list_error)?;
    if !seen.insert((metadata.dev(), metadata.ino())) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| GateError::List {
            path: dir.display().to_string(),
            source: e,
        })?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for entry in entries {
        // A dangling link is neither: skipped.
        let Ok(metadata) = std::fs::metadata(&entry) else {
            continue;
        };
        if metadata.is_dir() {
            walk(&entry, seen, out)?;
        } else if metadata.is_file() {
            out.push(entry);
        }
    }
    Ok(())
}
