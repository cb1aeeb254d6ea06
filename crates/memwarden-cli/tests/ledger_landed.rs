//! A ledger written by an earlier memwarden still verifies and still reads: the fixture
//! `fixtures/ledger-0.1.0-landed.sqlite` was recorded by memwarden 0.1.0 at commit
//! bf4d695 (schema version 1, records whose stacks were stored as untyped JSON, no
//! `methods` or `interrupted` fields): four profiled runs of `fixture@1` and `fixture@2`
//! (numpy arrays of 30–90 MiB), made with `memwarden run --profile --model fixture
//! --version V --stage eval -- python work.py N`.

mod util;

use std::path::Path;
use std::process::Output;

fn memwarden(home: &Path, ledger: &Path, args: &[&str]) -> Output {
    util::memwarden()
        .env("MEMWARDEN_HOME", home)
        .arg("--ledger")
        .arg(ledger)
        .args(args)
        .output()
        .expect("memwarden runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_ledger_from_the_landed_version_verifies_reads_and_takes_new_records() {
    let home = tempfile::tempdir().expect("tempdir");
    let ledger = home.path().join("ledger.sqlite");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ledger-0.1.0-landed.sqlite"),
        &ledger,
    )
    .expect("copy the fixture");

    let verified = memwarden(home.path(), &ledger, &["ledger", "verify"]);
    assert_eq!(verified.status.code(), Some(0), "{}", text(&verified));
    assert!(
        text(&verified).contains("4 records, chain intact"),
        "{}",
        text(&verified)
    );

    // The stacks the old records hold are read as typed stacks: diff names the sites.
    let diff = memwarden(home.path(), &ledger, &["diff", "fixture@1", "fixture@2"]);
    assert_eq!(diff.status.code(), Some(0), "{}", text(&diff));
    assert!(
        text(&diff).contains("+ 45.78 MiB  ones (") && text(&diff).contains("[import numpy]"),
        "{}",
        text(&diff)
    );

    // Their heap was counted by method 1: the gate does not compare it with method 2's.
    let script = home.path().join("work.py");
    std::fs::write(&script, "import numpy as np\nheld = np.ones(12_000_000)\n").expect("script");
    let python = util::python();
    let recorded = memwarden(
        home.path(),
        &ledger,
        &[
            "run",
            "-q",
            "--profile",
            "--model",
            "fixture",
            "--version",
            "3",
            "--stage",
            "eval",
            "--",
            python.to_str().expect("utf-8"),
            script.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(recorded.status.code(), Some(0), "{}", text(&recorded));
    let check = memwarden(home.path(), &ledger, &["check", "fixture@3"]);
    assert!(
        text(&check).contains("peak_heap: fixture@2 measured it another way"),
        "{}",
        text(&check)
    );
    let verified = memwarden(home.path(), &ledger, &["ledger", "verify"]);
    assert_eq!(verified.status.code(), Some(0), "{}", text(&verified));
    assert!(
        text(&verified).contains("5 records, chain intact"),
        "{}",
        text(&verified)
    );
}
