//! The ledger end to end: real `memwarden run`s recorded in a real SQLite file and a real
//! PostgreSQL server, then `history`, `diff`, `check` and `ledger verify|sync`.

mod util;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use util::postgres::PgServer;

/// memwarden with its data directory (default ledger, spool, reports) in `home`.
fn mw(home: &Path) -> Command {
    let mut command = util::memwarden();
    command
        .env("MEMWARDEN_HOME", home)
        .env_remove("MEMWARDEN_LEDGER");
    command
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Records one run of `sh -c 'exit 0'` (or `command`) as model@version.
fn record(
    home: &Path,
    ledger: Option<&str>,
    model: &str,
    version: &str,
    command: &[&str],
) -> Output {
    let mut cmd = mw(home);
    if let Some(ledger) = ledger {
        cmd.args(["--ledger", ledger]);
    }
    cmd.args([
        "run",
        "--quiet",
        "--model",
        model,
        "--version",
        version,
        "--stage",
        "inference",
        "--",
    ])
    .args(command)
    .output()
    .expect("memwarden runs")
}

fn numpy(mib: u64) -> Vec<String> {
    let python = util::python();
    vec![
        python.display().to_string(),
        "-c".to_owned(),
        format!("import numpy as np, time; a = np.ones({mib} * 2**20 // 8); time.sleep(0.2)"),
    ]
}

fn run_json(home: &Path, args: &[&str]) -> (i32, Value) {
    let output = mw(home).args(args).arg("--json").output().expect("runs");
    let value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("JSON from {args:?}: {}", text(&output)));
    (output.status.code().expect("code"), value)
}

#[test]
fn recorded_runs_carry_provenance_and_feed_history_diff_and_check() {
    let home = tempfile::tempdir().expect("tempdir");
    let input = home.path().join("sample.bin");
    std::fs::write(&input, b"features").expect("input");
    for (version, mib) in [("1", 100), ("1", 100), ("2", 180)] {
        let command = numpy(mib);
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let output = mw(home.path())
            .args([
                "run",
                "--model",
                "fraud",
                "--version",
                version,
                "--stage",
                "inference",
                "--tag",
                "team=risk",
                "--input",
            ])
            .arg(&input)
            .arg("--")
            .args(&args)
            .output()
            .expect("runs");
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        assert!(
            text(&output).contains(&format!("recorded fraud@{version} (inference)")),
            "{}",
            text(&output)
        );
    }
    let db = rusqlite::Connection::open(home.path().join("ledger.sqlite")).expect("ledger file");
    let json: String = db
        .query_row("SELECT record FROM memwarden_runs WHERE seq = 3", [], |r| {
            r.get(0)
        })
        .expect("row");
    let record: Value = serde_json::from_str(&json).expect("record");
    assert_eq!(record["tags"]["team"], "risk");
    assert_eq!(record["inputs"][0]["blake3"], blake3_hex(b"features"));
    assert!(
        record["python"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{record:#}"
    );
    assert!(record["python"]["packages"]
        .as_u64()
        .is_some_and(|n| n >= 1));
    assert!(record["host"]["kernel"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));
    assert!(record["peaks"]["rss_bytes"]
        .as_u64()
        .is_some_and(|b| b > 180 << 20));
    let report_path = record["report_path"].as_str().expect("report kept");
    assert!(Path::new(report_path).exists(), "{report_path}");

    let (code, history) = run_json(home.path(), &["history", "fraud"]);
    assert_eq!(code, 0);
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history:#}");
    let (code, diff) = run_json(home.path(), &["diff", "fraud@1", "fraud@2"]);
    assert_eq!(code, 0);
    let rss = diff["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["metric"] == "peak_rss")
        .expect("rss")
        .clone();
    assert!(
        rss["change_pct"].as_f64().is_some_and(|c| c > 30.0),
        "{rss:#}"
    );
    let (code, check) = run_json(home.path(), &["check", "fraud@2"]);
    assert_eq!(code, 3, "an 80 MiB growth is a regression: {check:#}");
    assert_eq!(check["pass"], Value::Bool(false));
    let (code, check) = run_json(home.path(), &["check", "fraud@1"]);
    assert_eq!(code, 0, "{check:#}");
}

fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[test]
fn thirty_two_concurrent_runs_into_one_sqlite_ledger_are_all_kept_in_one_chain() {
    let home = tempfile::tempdir().expect("tempdir");
    concurrent_runs(home.path(), None);
}

fn concurrent_runs(home: &Path, ledger: Option<&str>) {
    let children: Vec<_> = (0..32)
        .map(|i| {
            let mut cmd = mw(home);
            if let Some(ledger) = ledger {
                cmd.args(["--ledger", ledger]);
            }
            cmd.args([
                "run",
                "--quiet",
                "--model",
                "burst",
                "--version",
                &format!("{}", i % 4),
                "--",
                "sh",
                "-c",
                "exit 0",
            ])
            .spawn()
            .expect("spawn")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().expect("wait").success());
    }
    let mut verify = mw(home);
    if let Some(ledger) = ledger {
        verify.args(["--ledger", ledger]);
    }
    let output = verify
        .args(["ledger", "verify", "--json"])
        .output()
        .expect("verify");
    let result: Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{}", text(&output)));
    assert_eq!(output.status.code(), Some(0), "{result:#}");
    assert_eq!(result["entries"], 32, "{result:#}");
    assert_eq!(result["intact"], Value::Bool(true));
    assert_eq!(
        (&result["anchors"]["anchored"], &result["warnings"]),
        (&Value::from(32), &Value::Array(Vec::new())),
        "each run anchored its head, on a line of its own: {result:#}"
    );
    assert_eq!(
        std::fs::read_dir(home.join("spool"))
            .map(|d| d
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count())
            .unwrap_or(0),
        0,
        "nothing spooled"
    );
}

#[test]
fn a_hand_edited_record_fails_verification_by_name() {
    let home = tempfile::tempdir().expect("tempdir");
    for version in ["1", "2", "3"] {
        assert!(record(home.path(), None, "m", version, &["true"])
            .status
            .success());
    }
    let path = home.path().join("ledger.sqlite");
    let db = rusqlite::Connection::open(&path).expect("open");
    let err = db.execute("UPDATE memwarden_runs SET record = replace(record, '\"exit_code\":0', '\"exit_code\":1') WHERE seq = 2", []);
    assert!(err.is_err(), "the ledger refuses updates");
    // A tamperer with the file can drop the guard; the chain still tells.
    db.execute_batch(
        "DROP TRIGGER memwarden_runs_no_update;
         UPDATE memwarden_runs SET record = replace(record, '\"exit_code\":0', '\"exit_code\":1') WHERE seq = 2;",
    )
    .expect("tamper");
    let run_id: String = db
        .query_row("SELECT run_id FROM memwarden_runs WHERE seq = 2", [], |r| {
            r.get(0)
        })
        .expect("id");
    let output = mw(home.path())
        .args(["ledger", "verify"])
        .output()
        .expect("verify");
    assert_eq!(output.status.code(), Some(4), "{}", text(&output));
    let said = text(&output);
    assert!(
        said.contains("record #2") && said.contains(&run_id) && said.contains("edited"),
        "{said}"
    );
    assert!(
        !said.contains("record #3"),
        "only the edited record is named: {said}"
    );
}

#[test]
fn files_that_are_not_ledgers_and_newer_ledgers_are_refused_clearly() {
    let home = tempfile::tempdir().expect("tempdir");
    let notes = home.path().join("notes.txt");
    std::fs::write(
        &notes,
        "a shopping list, long enough to be mistaken for nothing in particular",
    )
    .expect("w");
    let output = mw(home.path())
        .args(["--ledger"])
        .arg(&notes)
        .args(["ledger", "verify"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(5));
    assert!(
        text(&output).contains("is not a memwarden ledger"),
        "{}",
        text(&output)
    );

    assert!(record(home.path(), None, "m", "1", &["true"])
        .status
        .success());
    let db = rusqlite::Connection::open(home.path().join("ledger.sqlite")).expect("open");
    db.execute(
        "UPDATE memwarden_meta SET value = '7' WHERE key = 'schema_version'",
        [],
    )
    .expect("bump");
    let output = mw(home.path())
        .args(["history", "m"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(5));
    assert!(
        text(&output).contains("schema version 7") && text(&output).contains("upgrade memwarden"),
        "{}",
        text(&output)
    );

    let output = mw(home.path())
        .args(["--ledger", "mysql://db/x", "history", "m"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
}

#[test]
fn gate_questions_that_cannot_be_answered_say_why() {
    let home = tempfile::tempdir().expect("tempdir");
    let output = mw(home.path())
        .args(["history", "m"])
        .output()
        .expect("runs");
    assert_eq!(
        output.status.code(),
        Some(5),
        "no ledger yet: {}",
        text(&output)
    );
    assert!(text(&output).contains("no ledger at"));
    assert!(record(home.path(), None, "fraud", "1", &["true"])
        .status
        .success());
    for (args, needle) in [
        (
            vec!["check", "fraud-detector@1"],
            "no runs of model 'fraud-detector'",
        ),
        (vec!["check", "fraud@9"], "no runs of fraud@9"),
        (vec!["diff", "fraud@1", "fraud@1"], "compared with itself"),
        (vec!["check", "fraud"], "is not MODEL@VERSION"),
        (vec!["diff", "fraud@1", "other@2"], "one model"),
    ] {
        let output = mw(home.path()).args(&args).output().expect("runs");
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        assert!(
            text(&output).contains(needle),
            "{args:?}: {}",
            text(&output)
        );
    }
}

/// `memwarden check fraud@1 --policy FILE` with `policy` as the file's text.
fn check_with_policy(home: &Path, policy: &str) -> Output {
    let path = home.join("memwarden.toml");
    std::fs::write(&path, policy).expect("policy written");
    mw(home)
        .args(["check", "fraud@1", "--policy"])
        .arg(&path)
        .output()
        .expect("runs")
}

#[test]
fn a_malformed_policy_names_file_line_and_key() {
    let home = tempfile::tempdir().expect("tempdir");
    assert!(record(home.path(), None, "fraud", "1", &["true"])
        .status
        .success());
    let output = check_with_policy(
        home.path(),
        "[models.fraud.stages.inference]\npeak_rss = \"2GiB\"\npeak_pps = \"1GiB\"\n",
    );
    assert_eq!(output.status.code(), Some(2));
    let said = text(&output);
    assert!(
        said.contains("memwarden.toml") && said.contains("line 3") && said.contains("peak_pps"),
        "{said}"
    );

    let output = check_with_policy(
        home.path(),
        "[models.fraud.stages.inference]\npeak_rss = \"1KiB\"\n",
    );
    assert_eq!(
        output.status.code(),
        Some(3),
        "over budget: {}",
        text(&output)
    );
    assert!(
        text(&output).contains("EXCEEDS the budget"),
        "{}",
        text(&output)
    );
}

#[test]
fn a_read_only_ledger_keeps_the_record_in_the_spool_until_sync() {
    if !util::require(
        "a_read_only_ledger_keeps_the_record_in_the_spool_until_sync",
        util::mount_namespace(),
    ) {
        return;
    }
    let home = tempfile::tempdir().expect("tempdir");
    let ledger_dir = home.path().join("shared");
    std::fs::create_dir(&ledger_dir).expect("mkdir");
    let ledger = ledger_dir.join("ledger.sqlite");
    assert!(record(
        home.path(),
        Some(ledger.to_str().expect("utf-8")),
        "m",
        "1",
        &["true"]
    )
    .status
    .success());
    // The ledger's directory read-only for one run, as on a full or read-only disk.
    let script = format!(
        "mount --bind -o ro {dir} {dir} && exec {bin} --ledger {ledger} run --model m --version 2 -- true",
        dir = ledger_dir.display(),
        bin = env!("CARGO_BIN_EXE_memwarden"),
        ledger = ledger.display()
    );
    let output = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env("MEMWARDEN_HOME", home.path())
        .env("MEMWARDEN_NO_GPU", "1")
        .output()
        .expect("runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "the run itself succeeds: {}",
        text(&output)
    );
    assert!(
        text(&output).contains("ledger sync"),
        "says how the record will be written: {}",
        text(&output)
    );
    let sync = mw(home.path())
        .args(["--ledger"])
        .arg(&ledger)
        .args(["ledger", "sync"])
        .output()
        .expect("sync");
    assert_eq!(sync.status.code(), Some(0), "{}", text(&sync));
    assert!(
        text(&sync).contains("wrote 1 spooled record") && text(&sync).contains("ledger head 2:"),
        "{}",
        text(&sync)
    );
    let verify = mw(home.path())
        .args(["--ledger"])
        .arg(&ledger)
        .args(["ledger", "verify"])
        .output()
        .expect("verify");
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert!(
        text(&verify).contains("2 head(s) anchored, all in the chain"),
        "the run and the sync each anchored their head: {}",
        text(&verify)
    );
    let (_, history) = run_json(
        home.path(),
        &["--ledger", ledger.to_str().expect("utf-8"), "history", "m"],
    );
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history:#}");
}

#[test]
fn postgres_ledger_takes_thirty_two_concurrent_runs() {
    let Some(server) = PgServer::start("postgres_ledger_takes_thirty_two_concurrent_runs") else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    concurrent_runs(home.path(), Some(&server.url));
}

#[test]
fn postgres_with_wrong_credentials_is_a_clear_error_and_the_record_waits() {
    let Some(server) =
        PgServer::start("postgres_with_wrong_credentials_is_a_clear_error_and_the_record_waits")
    else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let wrong = server.url_with_password("not-the-password");
    let output = record(home.path(), Some(&wrong), "m", "1", &["true"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let said = text(&output);
    assert!(
        said.contains("password authentication failed") && said.contains("postgres:***@"),
        "{said}"
    );
    assert!(
        !said.contains("not-the-password"),
        "the password is never printed: {said}"
    );
    let output = mw(home.path())
        .args(["--ledger", &wrong, "history", "m"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(5), "{}", text(&output));
}

#[test]
fn postgres_stopped_mid_run_loses_nothing() {
    let Some(server) = PgServer::start("postgres_stopped_mid_run_loses_nothing") else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    assert!(record(home.path(), Some(&server.url), "m", "1", &["true"])
        .status
        .success());
    let marker = home.path().join("started");
    let child = mw(home.path())
        .args([
            "--ledger",
            &server.url,
            "run",
            "--quiet",
            "--model",
            "m",
            "--version",
            "2",
            "--",
            "sh",
            "-c",
        ])
        .arg(format!("touch {}; sleep 1.5", marker.display()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    while !marker.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.stop();
    let output = child.wait_with_output().expect("wait");
    assert_eq!(
        output.status.code(),
        Some(0),
        "the run completes: {}",
        text(&output)
    );
    assert!(
        text(&output).contains("cannot be reached"),
        "{}",
        text(&output)
    );
    server.start_again();
    // The next run against the ledger writes the spooled record first, in order.
    let output = mw(home.path())
        .args([
            "--ledger",
            &server.url,
            "run",
            "--model",
            "m",
            "--version",
            "3",
            "--",
            "true",
        ])
        .output()
        .expect("runs");
    assert!(
        text(&output).contains("wrote 1 spooled record(s) first"),
        "{}",
        text(&output)
    );
    let (code, history) = run_json(home.path(), &["--ledger", &server.url, "history", "m"]);
    assert_eq!(code, 0);
    let versions: Vec<&str> = history
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["version"].as_str())
        .collect();
    assert_eq!(versions, ["1", "2", "3"]);
    let (code, verify) = run_json(home.path(), &["--ledger", &server.url, "ledger", "verify"]);
    assert_eq!(
        (code, verify["entries"].as_u64()),
        (0, Some(3)),
        "{verify:#}"
    );
}
