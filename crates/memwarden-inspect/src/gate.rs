//! The inspect gate: every path walked, every file inspected, the policy applied, and the
//! `memwarden.inspect/1` document and its terminal text produced. The CLI, the Python
//! package and CI all call [`inspect_paths`].

use std::collections::HashSet;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use memwarden_format::units::format_size;
use serde::Serialize;

use crate::{inspect_file, FileReport, InspectError, Options, Severity, Verdict};

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

fn verdict_word(verdict: Verdict) -> &'static str {
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

/// The gate's result as terminal text: each file, then what could not be read, then the
/// policy's violations.
pub fn render_text(outcome: &Outcome) -> String {
    let mut out = String::new();
    for report in &outcome.files {
        out.push_str(&render_file(report));
    }
    for unreadable in &outcome.unreadable {
        let _ = writeln!(
            out,
            "{}\n  UNREADABLE  {}",
            unreadable.path, unreadable.error
        );
    }
    if !outcome.skipped.is_empty() {
        let _ = writeln!(
            out,
            "skipped {} file(s) that are not model files",
            outcome.skipped.len()
        );
    }
    for violation in &outcome.violations {
        let _ = writeln!(out, "policy: {violation}");
    }
    out
}

fn render_file(report: &FileReport) -> String {
    let mut out = String::new();
    let protocol = report
        .pickle_protocol
        .map(|p| format!(", pickle protocol {p}"))
        .unwrap_or_default();
    let also = if report.read_as.is_empty() {
        String::new()
    } else {
        format!(", also read as {}", report.read_as.join(", "))
    };
    let _ = writeln!(
        out,
        "{}  ({}{protocol}{also}, {})",
        report.path,
        report.format,
        format_size(report.file_bytes)
    );
    let flagged: Vec<_> = report
        .imports
        .iter()
        .filter(|i| i.severity.is_some())
        .collect();
    let serious = report
        .findings
        .iter()
        .filter(|f| f.severity > Severity::Info)
        .count();
    let cannot_verify = report
        .findings
        .iter()
        .any(|f| f.message.starts_with("cannot be verified"));
    let why = if cannot_verify && flagged.is_empty() {
        "cannot be verified".to_owned()
    } else if report.imports.is_empty() && serious == 0 {
        "loading runs no code from the file".to_owned()
    } else if flagged.is_empty() && serious == 0 {
        format!(
            "every import is an allowlisted constructor ({} distinct)",
            report.imports.len()
        )
    } else {
        format!(
            "{} of {} distinct imports flagged, {serious} finding(s)",
            flagged.len(),
            report.imports.len()
        )
    };
    let _ = writeln!(
        out,
        "  verdict   {}: {why}",
        verdict_word(report.verdict).to_uppercase()
    );
    for import in &flagged {
        let _ = writeln!(
            out,
            "    {:<8} {}.{}: {}",
            severity_word(import.severity.unwrap_or(Severity::Info)),
            import.module,
            import.name,
            import.reason
        );
    }
    for finding in report
        .findings
        .iter()
        .filter(|f| f.severity > Severity::Info)
    {
        let at = finding
            .offset
            .map(|o| format!(" (byte {o})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    {:<8} {}{at}",
            severity_word(finding.severity),
            finding.message
        );
    }
    let _ = writeln!(
        out,
        "  payload   {} in {} array(s)",
        format_size(report.payload_bytes),
        report.arrays.len()
    );
    let mut largest: Vec<_> = report.arrays.iter().collect();
    largest.sort_by_key(|a| std::cmp::Reverse(a.bytes));
    for array in largest.iter().take(8) {
        let shape = array
            .shape
            .as_ref()
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|| "?".to_owned());
        let _ = writeln!(
            out,
            "    {:<40} {:<10} {:<18} {}",
            array.name.as_deref().unwrap_or("-"),
            array.dtype,
            shape,
            format_size(array.bytes)
        );
    }
    if largest.len() > 8 {
        let _ = writeln!(out, "    ... and {} more", largest.len() - 8);
    }
    match report.predicted_load_peak_bytes {
        Some(peak) => {
            let _ = writeln!(
                out,
                "  load      {}: predicted peak +{} ({})",
                report.loader,
                format_size(peak),
                report.prediction_rule
            );
        }
        None => {
            let _ = writeln!(out, "  load      {}", report.prediction_rule);
        }
    }
    for other in &report.other_loaders {
        let _ = writeln!(
            out,
            "            {}: predicted peak +{} ({})",
            other.loader,
            format_size(other.predicted_load_peak_bytes),
            other.rule
        );
    }
    let _ = writeln!(
        out,
        "  mmap      {}: {}",
        if report.mmappable { "yes" } else { "no" },
        report.mmap_note
    );
    out
}

fn severity_word(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "INFO",
        Severity::Medium => "MEDIUM",
        Severity::High => "HIGH",
        Severity::Critical => "CRITICAL",
    }
}
