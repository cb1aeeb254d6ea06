//! Tampering with the ledger as someone with write access to the database would: each
//! attack of the table in docs/ledger.md ("What `ledger verify` detects") is a test here,
//! on a real SQLite file and a real PostgreSQL server, through the real `memwarden`.

mod util;

use util::ledger as ledger_util;

use std::path::PathBuf;
use std::process::{Command, Output};

use ledger_util::{anchor_files, edit_and_recompute, mw, record_runs, sqlite, text, verify};
use serde_json::Value;
use util::postgres::PgServer;

#[test]
fn every_recorded_run_prints_and_anchors_its_head_and_verify_checks_it() {
    let home = tempfile::tempdir().expect("tempdir");
    let heads = record_runs(home.path(), None, 2);
    let db = sqlite(home.path());
    let stored: String = db
        .query_row("SELECT hash FROM memwarden_runs WHERE seq = 2", [], |r| {
            r.get(0)
        })
        .expect("row");
    assert_eq!(
        heads[1],
        format!("2:{stored}"),
        "the printed head is the stored one"
    );
    let files = anchor_files(&home.path().join("anchors"));
    assert_eq!(files.len(), 1, "one anchor file per ledger: {files:?}");
    let anchors = std::fs::read_to_string(&files[0]).expect("anchor file");
    let lines: Vec<&str> = anchors.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 2, "{anchors}");
    assert!(lines[1].starts_with(&format!("2 {stored} ")), "{anchors}");

    let (code, said) = verify(home.path(), None, &[]);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("2 head(s) anchored, all in the chain")
            && said.contains("guards: append-only triggers intact"),
        "{said}"
    );
}

#[test]
fn truncating_the_newest_record_is_detected_by_the_anchor() {
    let home = tempfile::tempdir().expect("tempdir");
    let heads = record_runs(home.path(), None, 3);
    sqlite(home.path())
        .execute_batch(
            "DROP TRIGGER memwarden_runs_no_delete; DELETE FROM memwarden_runs WHERE seq = 3;",
        )
        .expect("tamper");
    let (code, said) = verify(home.path(), None, &[]);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("chain intact"),
        "the chain alone cannot tell: {said}"
    );
    assert!(
        said.contains("1 record is missing from the end")
            && said.contains(&format!("last anchored head {}", heads[2])),
        "{said}"
    );
    assert!(
        said.contains("memwarden_runs_no_delete is missing (dropped)"),
        "{said}"
    );
}

#[test]
fn truncating_several_records_through_a_connection_without_triggers_is_detected() {
    let home = tempfile::tempdir().expect("tempdir");
    record_runs(home.path(), None, 5);
    // Triggers switched off for one connection: nothing in the file changes but the rows.
    let db = sqlite(home.path());
    db.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        false,
    )
    .expect("triggers off");
    assert_eq!(
        db.execute("DELETE FROM memwarden_runs WHERE seq >= 3", [])
            .expect("deletes"),
        3
    );
    drop(db);
    let (code, said) = verify(home.path(), None, &[]);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("the chain ends at record #2, but record #5 was anchored")
            && said.contains("3 records are missing from the end"),
        "{said}"
    );
    assert!(
        said.contains("guards: append-only triggers intact"),
        "the triggers themselves were not touched: {said}"
    );
}

#[test]
fn a_chain_recomputed_after_an_edit_is_detected_by_the_anchor_and_not_without_it() {
    let home = tempfile::tempdir().expect("tempdir");
    let heads = record_runs(home.path(), None, 3);
    edit_and_recompute(home.path(), 2);
    let output = mw(home.path())
        .args(["ledger", "verify", "--json"])
        .output()
        .expect("verify");
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("JSON: {}", text(&output)));
    assert_eq!(output.status.code(), Some(4), "{report:#}");
    assert_eq!(
        (&report["chain_intact"], &report["guards"]["intact"]),
        (&Value::Bool(true), &Value::Bool(true)),
        "the chain is consistent again and the schema untouched: {report:#}"
    );
    let problems = report["anchors"]["problems"].to_string();
    assert!(
        problems.contains("2 anchored head(s) no longer match the chain")
            && problems.contains("record #2 was anchored at unix time"),
        "{report:#}"
    );

    // Without the anchor file (deleted too), the rewrite cannot be seen: verify says so.
    for file in anchor_files(&home.path().join("anchors")) {
        std::fs::remove_file(file).expect("anchor file removed");
    }
    let (code, said) = verify(home.path(), None, &[]);
    assert_eq!(code, 0, "not detectable without an anchor: {said}");
    assert!(
        said.contains("memwarden: warning: no anchor file")
            && said.contains("truncation and recomputed chains cannot be detected"),
        "{said}"
    );
    // A head kept elsewhere (the CI log of the run) still tells.
    let (code, said) = verify(home.path(), None, &["--expect-head", &heads[1]]);
    assert_eq!(code, 7, "{said}");
    assert!(
        said.contains(&format!("expected head {}: DOES NOT HOLD", heads[1])),
        "{said}"
    );
}

#[test]
fn a_dropped_trigger_is_reported_even_when_no_record_changed() {
    let home = tempfile::tempdir().expect("tempdir");
    record_runs(home.path(), None, 1);
    sqlite(home.path())
        .execute_batch("DROP TRIGGER memwarden_runs_no_update")
        .expect("drop");
    let (code, said) = verify(home.path(), None, &[]);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("guards: DISARMED")
            && said.contains("memwarden_runs_no_update is missing (dropped)")
            && said.contains("chain intact"),
        "{said}"
    );
}

const NO_DELETE_SQL: &str =
    "CREATE TRIGGER memwarden_runs_no_delete BEFORE DELETE ON memwarden_runs
         BEGIN SELECT RAISE(ABORT, 'the memwarden ledger is append-only'); END;";

#[test]
fn a_trigger_recreated_with_other_sql_is_reported() {
    let home = tempfile::tempdir().expect("tempdir");
    record_runs(home.path(), None, 2);
    let db = sqlite(home.path());
    db.execute_batch(&format!(
        "DROP TRIGGER memwarden_runs_no_delete; {}",
        NO_DELETE_SQL.replace("BEGIN", "WHEN 0 BEGIN")
    ))
    .expect("recreate disarmed");
    db.execute("DELETE FROM memwarden_runs WHERE seq = 2", [])
        .expect("the disarmed trigger lets it through");
    let (code, said) = verify(home.path(), None, &[]);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains(
            "memwarden_runs_no_delete is not memwarden's (dropped and recreated with other SQL)"
        ) && said.contains("WHEN 0"),
        "{said}"
    );
    assert!(said.contains("1 record is missing from the end"), "{said}");
}

#[test]
fn a_trigger_recreated_with_identical_sql_is_reported_unless_the_schema_is_rebuilt_in_order() {
    let home = tempfile::tempdir().expect("tempdir");
    record_runs(home.path(), None, 3);
    // Naive: drop, delete, recreate the very same trigger.
    sqlite(home.path())
        .execute_batch(&format!(
            "DROP TRIGGER memwarden_runs_no_delete;
             DELETE FROM memwarden_runs WHERE seq = 3;
             {NO_DELETE_SQL}"
        ))
        .expect("tamper");
    let (code, said) = verify(home.path(), None, &[]);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("memwarden_runs_no_delete was dropped and recreated"),
        "{said}"
    );

    // Careful: everything after the first dropped trigger recreated in order. The schema
    // then looks untouched (not detectable as such); the deletion still is.
    let home = tempfile::tempdir().expect("tempdir");
    record_runs(home.path(), None, 3);
    let db = sqlite(home.path());
    let view_sql: String = db
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'memwarden_guards_end'",
            [],
            |r| r.get(0),
        )
        .expect("view");
    db.execute_batch(&format!(
        "DROP VIEW memwarden_guards_end;
         DROP TRIGGER memwarden_runs_no_delete;
         DELETE FROM memwarden_runs WHERE seq = 3;
         {NO_DELETE_SQL}
         {view_sql};"
    ))
    .expect("tamper");
    let (code, said) = verify(home.path(), None, &[]);
    assert!(
        said.contains("guards: append-only triggers intact"),
        "an identical schema rebuilt in order is not detectable: {said}"
    );
    assert_eq!(code, 4, "{said}");
    assert!(said.contains("1 record is missing from the end"), "{said}");
}

#[test]
fn expect_head_holds_fails_on_a_wrong_hash_or_missing_record_and_checks_its_syntax() {
    let home = tempfile::tempdir().expect("tempdir");
    let heads = record_runs(home.path(), None, 3);
    // Later records (by this or other writers) do not matter: record 2 still has its hash.
    let (code, said) = verify(home.path(), None, &["--expect-head", &heads[1]]);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains(&format!("expected head {}: holds", heads[1])),
        "{said}"
    );

    let (seq, hash) = heads[1].split_once(':').expect("SEQ:HASH");
    let wrong = format!("{seq}:{}", "0".repeat(64));
    let (code, said) = verify(home.path(), None, &["--expect-head", &wrong]);
    assert_eq!(code, 7, "{said}");
    assert!(
        said.contains(&format!("record #2 has hash {hash}, not the expected")),
        "{said}"
    );

    let missing = format!("9:{hash}");
    let (code, said) = verify(home.path(), None, &["--expect-head", &missing]);
    assert_eq!(code, 7, "{said}");
    assert!(said.contains("record #9 is not in the ledger"), "{said}");

    let (code, said) = verify(
        home.path(),
        None,
        &["--expect-head", &format!("2:{}", &hash[..8])],
    );
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("64 hex digits"), "{said}");
}

#[test]
fn a_run_whose_anchor_cannot_be_written_says_so_loudly_and_is_still_recorded() {
    let home = tempfile::tempdir().expect("tempdir");
    // A file where the anchor directory should be: no one, root included, can create it.
    let blocker = home.path().join("not-a-directory");
    std::fs::write(&blocker, "").expect("blocker");
    let anchor_dir = blocker.join("anchors");
    let output = mw(home.path())
        .env("MEMWARDEN_ANCHOR_DIR", &anchor_dir)
        .args([
            "run",
            "--quiet",
            "--model",
            "m",
            "--version",
            "1",
            "--",
            "true",
        ])
        .output()
        .expect("runs");
    let said = text(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "the run's status is its own: {said}"
    );
    assert!(
        said.contains("memwarden: warning: cannot anchor the ledger head 1:")
            && said.contains(&anchor_dir.display().to_string())
            && said.contains("MEMWARDEN_ANCHOR_DIR")
            && said.contains("--expect-head"),
        "even with --quiet, the warning names the file and what to do: {said}"
    );
    let (code, said) = verify(home.path(), None, &[]);
    assert_eq!(code, 0, "the record itself was written: {said}");
    assert!(said.contains("1 records, chain intact"), "{said}");
}

/// `psql` of the server's installation.
fn psql(url: &str, sql: &str) -> Output {
    let bin = std::env::var_os("MEMWARDEN_TEST_PG_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("psql").exists())
                .collect();
            found.sort();
            found.pop()
        })
        .expect("psql beside the server that PgServer started");
    Command::new(bin.join("psql"))
        .args([url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs")
}

#[test]
fn postgres_disable_trigger_and_the_deletion_it_allowed_are_detected() {
    let Some(server) =
        PgServer::start("postgres_disable_trigger_and_the_deletion_it_allowed_are_detected")
    else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    record_runs(home.path(), Some(&server.url), 3);
    let (code, said) = verify(home.path(), Some(&server.url), &[]);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("guards: append-only triggers intact"),
        "{said}"
    );

    let tamper = psql(
        &server.url,
        "ALTER TABLE memwarden_runs DISABLE TRIGGER memwarden_runs_no_change;
         DELETE FROM memwarden_runs WHERE seq = 3;",
    );
    assert!(tamper.status.success(), "{}", text(&tamper));
    let (code, said) = verify(home.path(), Some(&server.url), &[]);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("memwarden_runs_no_change is disabled (ALTER TABLE ... DISABLE TRIGGER)")
            && said.contains("1 record is missing from the end"),
        "{said}"
    );
}

#[test]
fn postgres_replica_mode_is_refused_and_detected_once_the_guard_is_demoted() {
    let Some(server) =
        PgServer::start("postgres_replica_mode_is_refused_and_detected_once_the_guard_is_demoted")
    else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    record_runs(home.path(), Some(&server.url), 3);
    // The guards fire ALWAYS: replica mode does not skip them.
    let refused = psql(
        &server.url,
        "SET session_replication_role = replica; DELETE FROM memwarden_runs WHERE seq = 3;",
    );
    assert!(
        !refused.status.success() && text(&refused).contains("append-only"),
        "{}",
        text(&refused)
    );
    // Demoted to an ordinary (origin-only) trigger, replica mode skips it.
    let tamper = psql(
        &server.url,
        "ALTER TABLE memwarden_runs ENABLE TRIGGER memwarden_runs_no_change;
         SET session_replication_role = replica;
         DELETE FROM memwarden_runs WHERE seq >= 2;",
    );
    assert!(tamper.status.success(), "{}", text(&tamper));
    let (code, said) = verify(home.path(), Some(&server.url), &[]);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("memwarden_runs_no_change fires only in origin mode")
            && said.contains("session_replication_role = replica")
            && said.contains("2 records are missing from the end"),
        "{said}"
    );
    // Put back as it was: the guards look intact, the anchors still see the deletion.
    let restore = psql(
        &server.url,
        "ALTER TABLE memwarden_runs ENABLE ALWAYS TRIGGER memwarden_runs_no_change;",
    );
    assert!(restore.status.success(), "{}", text(&restore));
    let (code, said) = verify(home.path(), Some(&server.url), &[]);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("guards: append-only triggers intact")
            && said.contains("2 records are missing from the end"),
        "{said}"
    );
}

#[test]
fn postgres_expect_head_holds_while_other_writers_append() {
    let Some(server) = PgServer::start("postgres_expect_head_holds_while_other_writers_append")
    else {
        return;
    };
    let ci = tempfile::tempdir().expect("tempdir");
    let head = record_runs(ci.path(), Some(&server.url), 1).remove(0);
    // Other machines (their own data and anchor directories) append after it.
    let others = tempfile::tempdir().expect("tempdir");
    record_runs(others.path(), Some(&server.url), 2);
    let auditor = tempfile::tempdir().expect("tempdir");
    let (code, said) = verify(auditor.path(), Some(&server.url), &["--expect-head", &head]);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("3 records, chain intact")
            && said.contains(&format!("expected head {head}: holds")),
        "{said}"
    );
    assert!(
        said.contains("no anchor file"),
        "the auditor has none, and is told: {said}"
    );
    let (code, said) = verify(ci.path(), Some(&server.url), &[]);
    assert_eq!(code, 0, "the writer's own anchors hold: {said}");

    let tamper = psql(
        &server.url,
        "ALTER TABLE memwarden_runs DISABLE TRIGGER USER;
         DELETE FROM memwarden_runs;
         ALTER TABLE memwarden_runs ENABLE ALWAYS TRIGGER memwarden_runs_no_change;
         ALTER TABLE memwarden_runs ENABLE ALWAYS TRIGGER memwarden_runs_no_truncate;",
    );
    assert!(tamper.status.success(), "{}", text(&tamper));
    let (code, said) = verify(auditor.path(), Some(&server.url), &["--expect-head", &head]);
    assert_eq!(code, 7, "{said}");
    assert!(said.contains("record #1 is not in the ledger"), "{said}");
}
