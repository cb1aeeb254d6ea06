//! Faults around a recorded run lose nothing: a report that cannot be written leaves the
//! old file whole and no empty one, and the run is still recorded; a record whose ledger
//! and usual spool are both unwritable goes to a fallback spool, which says where.
//!
//! These tests change mounts in a private mount namespace (`unshare -m`), which needs root,
//! as CI has: without it they fail and say so, rather than pass without running.

mod util;

use std::path::Path;
use std::process::{Command, Output};

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `script` with `sh` in a mount namespace of its own.
fn in_private_mounts(script: &str, home: &Path, envs: &[(&str, &Path)]) -> Output {
    let probe = Command::new("unshare").args(["-m", "true"]).output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "these tests need `unshare -m` (root, as in CI): {probe:?}"
    );
    let mut command = Command::new("unshare");
    command
        .args(["-m", "sh", "-c", script])
        .env("MEMWARDEN_HOME", home)
        .env("MEMWARDEN_NO_GPU", "1");
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("unshare runs")
}

fn history(home: &Path, ledger: &Path) -> serde_json::Value {
    let output = util::memwarden()
        .env("MEMWARDEN_HOME", home)
        .arg("--ledger")
        .arg(ledger)
        .args(["history", "m", "--json"])
        .output()
        .expect("history");
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).expect("history JSON")
}

#[test]
fn a_report_on_a_full_disk_leaves_the_old_file_whole_and_the_run_recorded() {
    let home = tempfile::tempdir().expect("tempdir");
    let disk = home.path().join("disk");
    std::fs::create_dir(&disk).expect("mkdir");
    let ledger = home.path().join("ledger.sqlite");
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs {disk} && printf 'the old report' > {disk}/report.json \
         && (cat /dev/zero > {disk}/filler 2>/dev/null; true) \
         && {bin} --ledger {ledger} run --model m --version 1 --json {disk}/report.json -- true; \
         code=$?; echo \"exit=$code\"; echo \"old=$(cat {disk}/report.json)\"; \
         echo \"files=$(ls -A {disk} | tr '\\n' ' ')\"",
        disk = disk.display(),
        bin = env!("CARGO_BIN_EXE_memwarden"),
        ledger = ledger.display(),
    );
    let output = in_private_mounts(&script, home.path(), &[]);
    let said = text(&output);
    assert!(said.contains("exit=125"), "an internal failure: {said}");
    assert!(
        said.contains("cannot write the report") && said.contains("No space left"),
        "{said}"
    );
    assert!(
        said.contains("old=the old report"),
        "the old report is whole: {said}"
    );
    assert!(
        said.contains("files=filler report.json \n") || said.contains("files=filler report.json"),
        "no temporary or empty file left: {said}"
    );
    let runs = history(home.path(), &ledger);
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(1),
        "still recorded: {runs:#}"
    );
}

#[test]
fn ledger_and_spool_unwritable_the_record_goes_to_the_fallback_and_is_synced() {
    let home = tempfile::tempdir().expect("tempdir");
    let shared = home.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    let ledger = shared.join("ledger.sqlite");
    let data = home.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let fallback = tempfile::tempdir().expect("fallback");
    // The ledger exists; then its folder and memwarden's whole data folder (where the usual
    // spool is) are read-only for one run.
    let first = util::memwarden()
        .env("MEMWARDEN_HOME", &data)
        .arg("--ledger")
        .arg(&ledger)
        .args(["run", "--model", "m", "--version", "1", "--", "true"])
        .output()
        .expect("first run");
    assert!(first.status.success(), "{}", text(&first));
    let script = format!(
        "mount --bind -o ro {shared} {shared} && mount --bind -o ro {data} {data} \
         && exec {bin} --ledger {ledger} run --model m --version 2 -- true",
        shared = shared.display(),
        data = data.display(),
        bin = env!("CARGO_BIN_EXE_memwarden"),
        ledger = ledger.display(),
    );
    let output = in_private_mounts(
        &script,
        &data,
        &[("MEMWARDEN_SPOOL_FALLBACK", fallback.path())],
    );
    let said = text(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "the run itself succeeds: {said}"
    );
    assert!(
        said.contains(&fallback.path().display().to_string())
            && said.contains("could not be written")
            && said.contains("ledger sync"),
        "says where the record is kept and how it will be written: {said}"
    );
    let sync = util::memwarden()
        .env("MEMWARDEN_HOME", &data)
        .env("MEMWARDEN_SPOOL_FALLBACK", fallback.path())
        .arg("--ledger")
        .arg(&ledger)
        .args(["ledger", "sync"])
        .output()
        .expect("sync");
    assert!(
        text(&sync).contains("wrote 1 spooled record"),
        "{}",
        text(&sync)
    );
    let runs = history(&data, &ledger);
    assert_eq!(runs.as_array().map(Vec::len), Some(2), "{runs:#}");
}
