//! `memwarden report`: a run's report rendered again, from its JSON (and, with
//! `--capture-dir`, its profile analysed again from the kept captures).

use std::io::Write;
use std::path::Path;

use memwarden_format::report::Report;

use crate::cli::ReportArgs;
use crate::exit::{Failure, Status};

/// Runs `memwarden report`.
pub fn main(args: ReportArgs) -> Result<Status, Failure> {
    let path = match (&args.report, &args.capture_dir) {
        (Some(path), _) => path.clone(),
        (None, Some(dir)) => dir.join("report.json"),
        (None, None) => unreachable!("clap requires REPORT or --capture-dir"),
    };
    let mut report = read_report(&path)?;
    if let Some(dir) = &args.capture_dir {
        if !dir.is_dir() {
            return Err(Failure::new(
                Status::Unreadable,
                format!(
                    "--capture-dir {}: not a directory of captures",
                    dir.display()
                ),
            ));
        }
        memwarden_run::recover::reanalyze(&mut report, dir, args.raw_frames);
    } else {
        // Advice from this memwarden's rules, on the evidence the report holds.
        report.advice = memwarden_report::advice::advise(&report);
    }

    let mut wrote = Vec::new();
    let mut write = |flag: &str, path: &Path, contents: &[u8]| -> Result<(), Failure> {
        memwarden_run::write_file_at(path, contents).map_err(|e| {
            Failure::new(
                Status::Usage,
                format!(
                    "{flag} {}: cannot write: {e}; choose a writable path",
                    path.display()
                ),
            )
        })?;
        wrote.push(format!("{flag:<13}{}", path.display()));
        Ok(())
    };
    if let Some(out) = &args.html {
        write(
            "--html",
            out,
            memwarden_report::html::render(&report).as_bytes(),
        )?;
    }
    if let Some(out) = &args.speedscope {
        let text = memwarden_report::export::speedscope(&report)
            .ok_or_else(|| no_profile("--speedscope"))?;
        write("--speedscope", out, text.as_bytes())?;
    }
    if let Some(out) = &args.folded {
        let profile = report
            .profile
            .as_ref()
            .ok_or_else(|| no_profile("--folded"))?;
        let text = memwarden_report::export::folded(&profile.flame_at_peak);
        write("--folded", out, text.as_bytes())?;
    }
    if let Some(out) = &args.csv {
        write(
            "--csv",
            out,
            memwarden_report::export::timeline_csv(&report).as_bytes(),
        )?;
    }
    if let Some(out) = &args.json {
        let text = memwarden_run::report_json(&report)
            .map_err(|e| Failure::new(Status::Usage, format!("--json: {e}")))?;
        if out == Path::new("-") {
            std::io::stdout()
                .write_all(&text)
                .map_err(|e| Failure::new(Status::Usage, format!("--json -: {e}")))?;
            return Ok(Status::Command(0));
        }
        write("--json", out, &text)?;
    }
    if wrote.is_empty() {
        print!("{}", memwarden_report::text::summary(&report));
        if let Some(profile) = &report.profile {
            print!(
                "{}",
                memwarden_report::text::top_lines(profile, args.top, &report.cwd)
            );
        }
    } else {
        for line in wrote {
            println!("memwarden: wrote {line}");
        }
    }
    Ok(Status::Command(0))
}

fn no_profile(flag: &str) -> Failure {
    Failure::new(
        Status::Usage,
        format!(
            "{flag}: the report has no profile; run with `memwarden run --profile` to have stacks"
        ),
    )
}

/// The report at `path`, or why it cannot be had.
fn read_report(path: &Path) -> Result<Report, Failure> {
    let unreadable = |why: String| Failure::new(Status::Unreadable, why);
    let text = std::fs::read(path).map_err(|e| {
        unreadable(format!(
            "{}: cannot read the report: {e} (write one with `memwarden run --json PATH`)",
            path.display()
        ))
    })?;
    serde_json::from_slice(&text).map_err(|e| {
        unreadable(format!(
            "{}: not a memwarden run report ({e}); give the JSON written by `memwarden run --json`",
            path.display()
        ))
    })
}
