//! `memwarden analyze`: the profile of capture files kept with `--capture-dir`.

use std::io::Write;
use std::path::{Path, PathBuf};

use memwarden_format::capture::SUFFIX;
use memwarden_format::report::ProfileMode;
use memwarden_report::profile;

use crate::exit::Status;

/// Capture files named by `paths` (directories are listed).
fn capture_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        match profile::capture_files(path) {
            Ok(found) => files.extend(found),
            Err(_) => files.push(path.clone()),
        }
    }
    files
}

/// Runs `memwarden analyze`.
pub fn main(
    paths: &[PathBuf],
    json: Option<&Path>,
    folded: Option<&Path>,
    raw_frames: bool,
) -> Status {
    let (captures, errors) = profile::read_captures(&capture_files(paths));
    for error in &errors {
        eprintln!("memwarden: error: {error}");
    }
    let unreadable = !errors.is_empty();
    if captures.is_empty() {
        if !unreadable {
            eprintln!("memwarden: error: no capture with recorded allocations in the given paths (captures are *.{SUFFIX} files)");
        }
        return Status::Unreadable;
    }
    let mode = if captures[0].exact {
        ProfileMode::Exact
    } else {
        ProfileMode::Sampled
    };
    let start_ns = captures.iter().map(|c| c.start_ns).min().unwrap_or(0);
    let frames = if raw_frames {
        profile::Frames::Raw
    } else {
        profile::Frames::Folded
    };
    // One directory of a run: its tree counter gives the tree's measured peak.
    let (analysis, tree_error) = match paths {
        [dir] => profile::analyze_kept(
            dir,
            &captures,
            mode,
            captures[0].sample_bytes,
            start_ns,
            frames,
        ),
        _ => (
            profile::analyze(&captures, mode, captures[0].sample_bytes, start_ns, frames),
            None,
        ),
    };
    if let Some(e) = tree_error {
        eprintln!("memwarden: warning: {e}; the tree's peak is the sum of each process's");
    }
    if let Some(path) = folded {
        if let Err(e) = std::fs::write(path, profile::folded(&analysis.all_at_peak)) {
            eprintln!("memwarden: error: --folded {}: {e}", path.display());
            return Status::Usage;
        }
    }
    match json {
        Some(path) => {
            let text = serde_json::to_string_pretty(&analysis.profile).unwrap_or_default() + "\n";
            let written = if path == Path::new("-") {
                std::io::stdout().write_all(text.as_bytes())
            } else {
                std::fs::write(path, text)
            };
            if let Err(e) = written {
                eprintln!("memwarden: error: --json {}: {e}", path.display());
                return Status::Usage;
            }
        }
        None => {
            let cwd = std::env::current_dir()
                .map(|p| memwarden_format::names::escape_path(&p).into_owned())
                .unwrap_or_default();
            let mut out = String::new();
            memwarden_report::text::profile_section(&mut out, &analysis.profile, &cwd);
            print!("{out}");
        }
    }
    if unreadable {
        Status::Unreadable
    } else {
        Status::Command(0)
    }
}
