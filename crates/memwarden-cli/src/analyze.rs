//! `memwarden analyze`: the profile of capture files kept with `--capture-dir`.

use std::io::Write;
use std::path::{Path, PathBuf};

use memwarden_format::capture::SUFFIX;
use memwarden_report::profile;

use crate::exit::{Failure, Status};

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
) -> Result<Status, Failure> {
    let (captures, errors) = profile::read_captures(&capture_files(paths));
    // Captures that cannot be read fail the command once those that can are analysed.
    let unreadable: Vec<String> = errors.iter().map(ToString::to_string).collect();
    if captures.is_empty() {
        return Err(if unreadable.is_empty() {
            Failure::new(Status::Unreadable, format!("no capture with recorded allocations in the given paths (captures are *.{SUFFIX} files)"))
        } else {
            Failure {
                status: Status::Unreadable,
                messages: unreadable,
            }
        });
    }
    // An output that cannot be written is a usage failure, which still names the
    // unreadable captures first.
    let usage = |message: String| Failure {
        status: Status::Usage,
        messages: unreadable.iter().cloned().chain([message]).collect(),
    };
    let mode = profile::mode_of(&captures[0]);
    let start_ns = captures.iter().map(|c| c.start_ns).min().unwrap_or(0);
    let frames = profile::Frames::raw_if(raw_frames);
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
        _ => {
            let mut analysis =
                profile::analyze(&captures, mode, captures[0].sample_bytes, start_ns, frames);
            analysis.finish();
            (analysis, None)
        }
    };
    if let Some(e) = tree_error {
        eprintln!("memwarden: warning: {e}; the tree's peak is the sum of each process's");
    }
    if let Some(path) = folded {
        std::fs::write(
            path,
            memwarden_report::export::folded(&analysis.all_at_peak),
        )
        .map_err(|e| usage(format!("--folded {}: {e}", path.display())))?;
    }
    match json {
        Some(path) => {
            let text = serde_json::to_string_pretty(&analysis.profile).unwrap_or_default() + "\n";
            let written = if path == Path::new("-") {
                std::io::stdout().write_all(text.as_bytes())
            } else {
                std::fs::write(path, text)
            };
            written.map_err(|e| usage(format!("--json {}: {e}", path.display())))?;
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
    if unreadable.is_empty() {
        Ok(Status::Command(0))
    } else {
        Err(Failure {
            status: Status::Unreadable,
            messages: unreadable,
        })
    }
}
