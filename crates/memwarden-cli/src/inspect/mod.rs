//! `memwarden inspect`: model files judged before anyone loads them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use memwarden_format::units::format_size;
use memwarden_inspect::{inspect_file, FileReport, Options, Severity, Verdict};
use memwarden_ledger::policy::{Policy, RequiredSafety};
use serde::Serialize;

use crate::exit::Status;

mod advisor;

/// File extensions looked at when walking a directory.
const MODEL_EXTENSIONS: &[&str] = &[
    "pkl",
    "pickle",
    "joblib",
    "sav",
    "pt",
    "pth",
    "ckpt",
    "bin",
    "safetensors",
    "npy",
    "npz",
    "onnx",
    "h5",
    "hdf5",
    "keras",
    "z",
    "gz",
];

#[derive(Serialize)]
struct Unreadable {
    path: String,
    error: String,
}

#[derive(Serialize)]
struct Output<'a> {
    schema: &'static str,
    files: &'a [FileReport],
    unreadable: &'a [Unreadable],
    violations: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    measurements: &'a [advisor::Measurement],
    pass: bool,
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !path.is_dir() {
        out.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for entry in entries {
        // Links are not followed: a link to a parent would walk forever.
        let kind = std::fs::symlink_metadata(&entry)?.file_type();
        if kind.is_dir() {
            collect(&entry, out)?;
        } else if kind.is_file()
            && entry
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| MODEL_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(entry);
        }
    }
    Ok(())
}

/// `--measure` settings.
#[derive(Debug)]
pub struct Measure {
    /// Load files that are not judged safe.
    pub trust: bool,
    /// The interpreter.
    pub python: PathBuf,
    /// Record each load in the ledger as (model, version).
    pub record_as: Option<(String, String)>,
    /// `--ledger`, passed on to the recording runs.
    pub ledger: Option<String>,
}

/// `memwarden inspect PATH...`.
pub fn main(
    paths: &[PathBuf],
    json: Option<&Path>,
    policy_path: Option<&Path>,
    measure: Option<&Measure>,
) -> Status {
    let policy = match Policy::find(policy_path) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("memwarden: error: {e}");
            return Status::Usage;
        }
    };
    let mut files = Vec::new();
    for path in paths {
        if !path.exists() {
            eprintln!(
                "memwarden: error: {}: no such file or directory",
                path.display()
            );
            return Status::Usage;
        }
        if let Err(e) = collect(path, &mut files) {
            eprintln!("memwarden: error: cannot list {}: {e}", path.display());
            return Status::Usage;
        }
    }
    let options = Options::default();
    let mut reports = Vec::new();
    let mut unreadable = Vec::new();
    for file in &files {
        match inspect_file(file, &options) {
            Ok(report) => reports.push(report),
            Err(e) => unreadable.push(Unreadable {
                path: file.display().to_string(),
                error: e.to_string(),
            }),
        }
    }
    let allowed = match policy.inspect.require {
        Some(RequiredSafety::Review) => Verdict::Review,
        _ => Verdict::Safe,
    };
    let mut violations = Vec::new();
    for report in &reports {
        if report.verdict > allowed {
            violations.push(
                format!(
                    "{}: judged {:?}, the policy accepts {:?} at most",
                    report.path, report.verdict, allowed
                )
                .to_lowercase(),
            );
        }
        if let (Some(cap), Some(peak)) = (
            policy.inspect.max_load_peak,
            report.predicted_load_peak_bytes,
        ) {
            if peak > cap.0 {
                violations.push(format!(
                    "{}: predicted load peak {} exceeds max_load_peak {}",
                    report.path,
                    format_size(peak),
                    format_size(cap.0)
                ));
            }
        }
    }
    let mut measurements = Vec::new();
    if let Some(measure) = measure {
        for report in &reports {
            match advisor::measure(report, measure) {
                Ok(m) => measurements.push(m),
                Err(e) => {
                    eprintln!("memwarden: error: --measure {}: {e}", report.path);
                    return Status::PolicyFailed;
                }
            }
        }
    }
    let pass = violations.is_empty() && unreadable.is_empty();
    let output = Output {
        schema: "memwarden.inspect/1",
        files: &reports,
        unreadable: &unreadable,
        violations: &violations,
        measurements: &measurements,
        pass,
    };
    if let Some(path) = json {
        let written = serde_json::to_vec_pretty(&output)
            .map_err(std::io::Error::from)
            .and_then(|bytes| {
                if path == Path::new("-") {
                    println!("{}", String::from_utf8_lossy(&bytes));
                    Ok(())
                } else {
                    std::fs::write(path, bytes)
                }
            });
        if let Err(e) = written {
            eprintln!("memwarden: error: cannot write {}: {e}", path.display());
            return Status::Internal;
        }
    }
    if json != Some(Path::new("-")) {
        for report in &reports {
            print!("{}", render(report));
        }
        for u in &unreadable {
            println!("{}\n  UNREADABLE  {}", u.path, u.error);
        }
        for v in &violations {
            println!("policy: {v}");
        }
        for m in &measurements {
            print!("{}", advisor::render(m));
        }
    }
    if !unreadable.is_empty() {
        Status::Unreadable
    } else if !violations.is_empty() {
        Status::PolicyFailed
    } else {
        Status::Command(0)
    }
}

fn render(report: &FileReport) -> String {
    let mut out = String::new();
    let protocol = report
        .pickle_protocol
        .map(|p| format!(", pickle protocol {p}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{}  ({}{protocol}, {})",
        report.path,
        report.format,
        format_size(report.file_bytes)
    );
    let flagged: Vec<_> = report
        .imports
        .iter()
        .filter(|i| i.severity.is_some())
        .collect();
    let verdict = match report.verdict {
        Verdict::Safe => "SAFE",
        Verdict::Review => "REVIEW",
        Verdict::Unsafe => "UNSAFE",
    };
    let serious = report
        .findings
        .iter()
        .filter(|f| f.severity > Severity::Info)
        .count();
    let why = if report.imports.is_empty() && serious == 0 {
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
    let _ = writeln!(out, "  verdict   {verdict}: {why}");
    for import in &flagged {
        let _ = writeln!(
            out,
            "    {:<8} {}.{}: {}",
            format!("{:?}", import.severity.unwrap_or(Severity::Info)).to_uppercase(),
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
            format!("{:?}", finding.severity).to_uppercase(),
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
