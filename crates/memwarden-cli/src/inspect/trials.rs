//! `memwarden inspect --measure`: format trials, each serialization format that fits the
//! model measured as it loads.
//!
//! The model is loaded only in child Python processes, and only when it was judged safe
//! (or with `--trust`). One child re-saves it in every format that fits; then each file,
//! the original included, is loaded in a fresh child run under memwarden's own monitor
//! (`memwarden run`), whose kernel high-water mark gives the peak; the child reports its
//! resident memory after imports, so the load's own peak is the difference. With
//! `--model`/`--version`, each of those runs is recorded in the ledger (stage inference,
//! tagged `serialization=FORMAT`), so the figures are kept with the model version.

use std::path::{Path, PathBuf};
use std::process::Command;

use memwarden_inspect::trials::{runs_code, FileTrials, Trial};
use memwarden_inspect::{FileReport, Verdict, FORMAT_TRIALS_PY};

use memwarden_run::{RunConfig, RunOptions};

use super::Measure;

fn python_format(format: &str) -> Option<&'static str> {
    Some(match format {
        "pickle" => "pickle",
        "joblib" => "joblib",
        "joblib-compressed" => "joblib-compressed",
        "npy" => "npy",
        "npz" => "npz",
        "safetensors" => "safetensors",
        "pytorch" => "pytorch",
        _ => return None,
    })
}

/// Loads `path` as `format` in a child run by memwarden's own run loop, in this process
/// (recorded in the ledger when `settings.record_as` is set); returns (load seconds, peak).
fn measure_load(
    settings: &Measure,
    script: &Path,
    path: &Path,
    format: &str,
    scratch: &Path,
) -> Result<(f64, u64), String> {
    let result_path = scratch.join(format!("load-{format}.result.json"));
    let mut options = RunOptions {
        command: vec![
            settings.python.clone().into(),
            script.into(),
            "load".into(),
            path.into(),
            format.into(),
            result_path.clone().into(),
        ],
        quiet: true,
        stage: "inference".into(),
        ..RunOptions::default()
    };
    if let Some((model, version)) = &settings.record_as {
        options.model = Some(model.clone());
        options.model_version = Some(version.clone());
        options.tags = vec![
            format!("serialization={format}"),
            "memwarden=inspect-measure".to_owned(),
        ];
        options.inputs = vec![path.to_owned()];
    }
    let config = RunConfig::new(options, settings.ledger.as_deref()).map_err(|e| e.to_string())?;
    let outcome = memwarden_run::run(config).map_err(|e| e.to_string())?;
    if let Some(Err(warning)) = &outcome.recorded {
        // The recording run's own warnings (a spooled record) reach the user.
        eprintln!("memwarden: warning: {warning}");
    }
    if outcome.verdict.code() != 0 {
        return Err(format!(
            "loading {} as {format} failed (exit status {}; its error is above)",
            path.display(),
            outcome.verdict.code()
        ));
    }
    let child: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&result_path)
            .map_err(|e| format!("the load left no result in {} ({e})", result_path.display()))?,
    )
    .map_err(|e| format!("the load left no readable result ({e})"))?;
    let peak = outcome.report.peak.rss_bytes;
    let baseline = child["baseline_rss_bytes"].as_u64().unwrap_or(0);
    Ok((
        child["load_s"].as_f64().unwrap_or(0.0),
        peak.saturating_sub(baseline),
    ))
}

/// Measures one inspected file.
pub fn measure(report: &FileReport, settings: &Measure) -> Result<FileTrials, String> {
    if report.verdict != Verdict::Safe && !settings.trust {
        return Err(format!(
            "refusing to load a file judged {:?}: loading it would run code memwarden cannot vouch for; pass --trust to load it anyway",
            report.verdict
        )
        .to_lowercase());
    }
    let format = python_format(&report.format)
        .ok_or_else(|| format!("cannot load {} files to measure them", report.format))?;
    let scratch = tempfile::Builder::new()
        .prefix("memwarden-format-trials-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let script = scratch.path().join("format_trials.py");
    std::fs::write(&script, FORMAT_TRIALS_PY).map_err(|e| e.to_string())?;
    let saved_dir = scratch.path().join("formats");
    let output = Command::new(&settings.python)
        .arg(&script)
        .args(["save", &report.path, format])
        .arg(&saved_dir)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", settings.python.display()))?;
    if !output.status.success() {
        return Err(format!(
            "re-saving failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let mut candidates: Vec<(String, PathBuf, u64, Option<f64>, bool)> = vec![(
        report.format.clone(),
        PathBuf::from(&report.path),
        report.file_bytes,
        None,
        true,
    )];
    let mut skipped = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = entry["format"].as_str().unwrap_or("?").to_owned();
        match entry["skipped"].as_str() {
            Some(why) => skipped.push((name, why.to_owned())),
            None => candidates.push((
                name,
                PathBuf::from(entry["path"].as_str().unwrap_or("")),
                entry["file_bytes"].as_u64().unwrap_or(0),
                entry["save_s"].as_f64(),
                false,
            )),
        }
    }
    let mut trials = Vec::new();
    for (name, path, file_bytes, save_s, original) in candidates {
        let Some(loader) = python_format(&name).or((name == "skops").then_some("skops")) else {
            continue;
        };
        match measure_load(settings, &script, &path, loader, scratch.path()) {
            Ok((load_s, load_peak_bytes)) => trials.push(Trial {
                format: name,
                original,
                file_bytes,
                save_s,
                load_s,
                load_peak_bytes,
            }),
            Err(e) => skipped.push((name, e)),
        }
    }
    // Among the formats whose load peak is within 5% (or 1 MiB) of the lowest, prefer one
    // whose loading runs no code, then the smaller file, then the faster load.
    let lowest = trials.iter().map(|t| t.load_peak_bytes).min().unwrap_or(0);
    let near = |t: &&Trial| t.load_peak_bytes <= lowest + (lowest / 20).max(1 << 20);
    let best = trials.iter().filter(near).min_by(|a, b| {
        (runs_code(&a.format), a.file_bytes)
            .cmp(&(runs_code(&b.format), b.file_bytes))
            .then(a.load_s.total_cmp(&b.load_s))
    });
    let original_peak = trials
        .iter()
        .find(|t| t.original)
        .map_or(0, |t| t.load_peak_bytes);
    let (recommended, saving_bytes) = match best {
        Some(t) => (
            Some(t.format.clone()),
            original_peak as i64 - t.load_peak_bytes as i64,
        ),
        None => (None, 0),
    };
    Ok(FileTrials {
        path: report.path.clone(),
        saving_pct: if original_peak > 0 {
            saving_bytes as f64 * 100.0 / original_peak as f64
        } else {
            0.0
        },
        trials,
        skipped,
        recommended,
        saving_bytes,
    })
}
