//! Signed heads against someone who can write both the database and the anchor file but
//! lacks the team's secret key: each row of "Signed heads" in docs/ledger.md ("What
//! `ledger verify` detects") is a test here, on a real SQLite ledger, through the real
//! `memwarden` (the attacker's own signatures are made with the real signing code).

mod util;

use util::ledger as ledger_util;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ledger_util::{anchor_files, edit_and_recompute, mw, record_versions, sqlite, text, verify};
use memwarden_ledger::anchor::ledger_identity;
use memwarden_ledger::signing::SecretKey;
use memwarden_ledger::LedgerLocation;

/// `memwarden ledger keygen --out home/NAME`: the secret and public key files.
fn keygen(home: &Path, name: &str) -> (PathBuf, PathBuf) {
    let dir = home.join(name);
    let output = mw(home)
        .args(["ledger", "keygen", "--out"])
        .arg(&dir)
        .output()
        .expect("keygen runs");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    (
        dir.join("memwarden-ledger.key"),
        dir.join("memwarden-ledger.pub"),
    )
}

/// The one anchor file of the default ledger in `home`.
fn anchor_file(home: &Path) -> PathBuf {
    let files = anchor_files(&home.join("anchors"));
    assert_eq!(files.len(), 1, "one anchor file: {files:?}");
    files[0].clone()
}

/// The attacker's anchor file: the lines before record `from_seq` kept as they were, one
/// line per record of the (rewritten) chain from `from_seq` on, signed by `signer` when
/// given, as anyone who knows the formats in docs/ledger.md could write it.
fn forge_anchors(home: &Path, from_seq: i64, signer: Option<&SecretKey>) {
    let file = anchor_file(home);
    let kept: Vec<String> = std::fs::read_to_string(&file)
        .expect("anchors")
        .lines()
        .filter(|line| {
            line.starts_with('#')
                || line
                    .split_whitespace()
                    .next()
                    .and_then(|seq| seq.parse::<i64>().ok())
                    .is_some_and(|seq| seq < from_seq)
        })
        .map(str::to_owned)
        .collect();
    let identity = ledger_identity(&LedgerLocation::Sqlite(home.join("ledger.sqlite")));
    let rows: Vec<(i64, String)> = sqlite(home)
        .prepare("SELECT seq, hash FROM memwarden_runs WHERE seq >= ?1 ORDER BY seq")
        .and_then(|mut s| {
            s.query_map([from_seq], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .expect("rows");
    let mut text = kept.join("\n") + "\n";
    for (seq, hash) in rows {
        match signer {
            Some(key) => {
                let signature = key.sign_head(&identity, seq, &hash);
                text.push_str(&format!("{seq} {hash} 1800000000 {signature}\n"));
            }
            None => text.push_str(&format!("{seq} {hash} 1800000000\n")),
        }
    }
    std::fs::write(&file, text).expect("anchors rewritten");
}

/// Deletes records `from_seq..` through a connection with triggers switched off.
fn delete_from(home: &Path, from_seq: i64) {
    let db = sqlite(home);
    db.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        false,
    )
    .expect("triggers off");
    db.execute("DELETE FROM memwarden_runs WHERE seq >= ?1", [from_seq])
        .expect("deletes");
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

#[test]
fn signing_runs_print_and_anchor_signed_heads_that_verify_with_the_public_key() {
    let home = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keygen(home.path(), "keys");
    let mode = std::fs::metadata(&secret)
        .expect("secret")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    let again = mw(home.path())
        .args(["ledger", "keygen", "--out"])
        .arg(home.path().join("keys"))
        .output()
        .expect("keygen runs");
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("already exists"), "{}", text(&again));

    let heads = record_versions(home.path(), None, 1..=2, Some(&secret));
    let fields: Vec<&str> = heads[1].split(':').collect();
    assert_eq!(
        (fields.len(), fields[2].len()),
        (3, 128),
        "SEQ:HASH:SIGNATURE: {}",
        heads[1]
    );
    let anchors = std::fs::read_to_string(anchor_file(home.path())).expect("anchors");
    assert!(
        anchors.lines().any(|l| l.ends_with(fields[2])),
        "the anchor line carries the printed signature: {anchors}"
    );

    let (code, said) = verify(home.path(), None, &["--public-key", arg(&public)]);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("signatures: all 2 anchor line(s) signed for this ledger by key(s)"),
        "{said}"
    );
    let (code, said) = verify(home.path(), None, &[]);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("2 anchor line(s) signed, not checked (give --public-key FILE"),
        "{said}"
    );

    // A signed head checked on its own, by an auditor with no anchor file.
    let auditor = tempfile::tempdir().expect("tempdir");
    let ledger = home.path().join("ledger.sqlite");
    let (code, said) = verify(
        auditor.path(),
        Some(arg(&ledger)),
        &["--expect-head", &heads[0], "--public-key", arg(&public)],
    );
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("holds"), "{said}");
    let (code, said) = verify(
        auditor.path(),
        Some(arg(&ledger)),
        &["--expect-head", &heads[0]],
    );
    assert_eq!(code, 2, "a signature needs a key to check it: {said}");
    assert!(said.contains("give --public-key FILE"), "{said}");
    let (code, said) = verify(home.path(), None, &["--public-key", arg(&secret)]);
    assert_eq!(code, 2, "{said}");
    assert!(
        said.contains("this is a secret key, not a public key"),
        "{said}"
    );

    // Key rotation: heads signed by the old key and the new one verify with both keys.
    let (new_secret, new_public) = keygen(home.path(), "keys-2027");
    record_versions(home.path(), None, 3..=3, Some(&new_secret));
    let (code, said) = verify(home.path(), None, &["--public-key", arg(&public)]);
    assert_eq!(
        code, 4,
        "the old key alone does not vouch for the new head: {said}"
    );
    assert!(said.contains("anchor line 4 (record #3,"), "{said}");
    let (code, said) = verify(
        home.path(),
        None,
        &[
            "--public-key",
            arg(&public),
            "--public-key",
            arg(&new_public),
        ],
    );
    assert_eq!(code, 0, "{said}");
}

#[test]
fn a_recomputed_chain_with_unsigned_anchor_lines_is_detected_only_with_the_public_key() {
    let home = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keygen(home.path(), "keys");
    record_versions(home.path(), None, 1..=3, Some(&secret));
    edit_and_recompute(home.path(), 2);
    forge_anchors(home.path(), 2, None);

    let (code, said) = verify(home.path(), None, &[]);
    assert_eq!(code, 0, "anchors rewritten to match: {said}");
    let (code, said) = verify(home.path(), None, &["--public-key", arg(&public)]);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("anchor line 3 (record #2,")
            && said.contains("anchor line 4 (record #3,")
            && said.contains("it is unsigned"),
        "{said}"
    );

    // Deleting the anchor file instead does not help the attacker either.
    std::fs::remove_file(anchor_file(home.path())).expect("removed");
    let (code, said) = verify(home.path(), None, &["--public-key", arg(&public)]);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("holds signed heads to check with --public-key: it was deleted"),
        "{said}"
    );
}

#[test]
fn a_recomputed_chain_with_anchor_lines_signed_by_another_key_is_detected() {
    let home = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keygen(home.path(), "keys");
    let (attacker_secret, _) = keygen(home.path(), "attacker");
    record_versions(home.path(), None, 1..=3, Some(&secret));
    edit_and_recompute(home.path(), 2);
    let attacker = SecretKey::read(&attacker_secret).expect("the attacker's key");
    forge_anchors(home.path(), 2, Some(&attacker));

    let (code, said) = verify(home.path(), None, &["--public-key", arg(&public)]);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("anchor line 3 (record #2,") && said.contains("signed by another key"),
        "{said}"
    );
}

#[test]
fn a_ledger_replaced_by_another_with_its_signed_anchors_is_detected() {
    let home = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keygen(home.path(), "keys");
    record_versions(home.path(), None, 1..=2, Some(&secret));
    // Another ledger signed by the same team key, with other records (say, without a
    // failing run), and its anchors.
    let other_home = tempfile::tempdir().expect("tempdir");
    record_versions(other_home.path(), None, 7..=8, Some(&secret));

    for suffix in ["", "-wal", "-shm"] {
        let target = home.path().join(format!("ledger.sqlite{suffix}"));
        let _ = std::fs::remove_file(&target);
        let source = other_home.path().join(format!("ledger.sqlite{suffix}"));
        if source.exists() {
            std::fs::copy(&source, &target).expect("copied");
        }
    }
    let copied = std::fs::read_to_string(anchor_file(other_home.path())).expect("anchors");
    std::fs::write(anchor_file(home.path()), copied).expect("anchors replaced");

    let (code, said) = verify(home.path(), None, &[]);
    assert_eq!(code, 0, "chain and anchors agree: {said}");
    let (code, said) = verify(home.path(), None, &["--public-key", arg(&public)]);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("anchor line 2 (record #1,")
            && said.contains("copied from another ledger's anchors"),
        "{said}"
    );
}

#[test]
fn truncating_the_database_and_the_anchor_files_tail_together_is_not_detected_by_signatures() {
    let home = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keygen(home.path(), "keys");
    let heads = record_versions(home.path(), None, 1..=3, Some(&secret));
    delete_from(home.path(), 3);
    let file = anchor_file(home.path());
    let anchors = std::fs::read_to_string(&file).expect("anchors");
    let kept: Vec<&str> = anchors.lines().filter(|l| !l.starts_with("3 ")).collect();
    std::fs::write(&file, kept.join("\n") + "\n").expect("tail removed");

    let (code, said) = verify(home.path(), None, &["--public-key", arg(&public)]);
    assert_eq!(code, 0, "signatures cannot show what is missing: {said}");
    assert!(
        said.contains("2 records, chain intact")
            && said.contains("signatures: all 2 anchor line(s) signed"),
        "{said}"
    );
    // Only a head kept elsewhere (the CI log of the deleted run) tells.
    let (code, said) = verify(
        home.path(),
        None,
        &["--expect-head", &heads[2], "--public-key", arg(&public)],
    );
    assert_eq!(code, 7, "{said}");
    assert!(said.contains("record #3 is not in the ledger"), "{said}");
}

#[test]
fn a_recomputed_chain_whose_anchor_lines_were_removed_is_only_warned_about() {
    let home = tempfile::tempdir().expect("tempdir");
    let (secret, public) = keygen(home.path(), "keys");
    let heads = record_versions(home.path(), None, 1..=3, Some(&secret));
    edit_and_recompute(home.path(), 2);
    let file = anchor_file(home.path());
    let anchors = std::fs::read_to_string(&file).expect("anchors");
    let kept: Vec<&str> = anchors
        .lines()
        .filter(|l| !l.starts_with("2 ") && !l.starts_with("3 "))
        .collect();
    std::fs::write(&file, kept.join("\n") + "\n").expect("lines removed");

    let (code, said) = verify(home.path(), None, &["--public-key", arg(&public)]);
    assert_eq!(code, 0, "no signed head contradicts the chain: {said}");
    assert!(
        said.contains(
            "memwarden: warning: records #2..#3 come after the highest signed head (#1): no signature covers them"
        ),
        "{said}"
    );
    let (code, said) = verify(
        home.path(),
        None,
        &["--expect-head", &heads[1], "--public-key", arg(&public)],
    );
    assert_eq!(code, 7, "a head kept elsewhere tells: {said}");
}

#[test]
fn a_run_whose_signing_key_cannot_be_used_is_recorded_unsigned_and_says_so_loudly() {
    let home = tempfile::tempdir().expect("tempdir");
    let (_, public) = keygen(home.path(), "keys");
    for (key, why) in [
        (home.path().join("missing.key"), "missing.key"),
        (public.clone(), "this is a public key, not a secret key"),
    ] {
        let output = mw(home.path())
            .env("MEMWARDEN_LEDGER_KEY", &key)
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
        assert_eq!(output.status.code(), Some(0), "{said}");
        assert!(
            said.contains("memwarden: warning: MEMWARDEN_LEDGER_KEY: cannot use the signing key")
                && said.contains(why)
                && said.contains("is anchored UNSIGNED"),
            "even with --quiet: {said}"
        );
    }
    let (code, said) = verify(home.path(), None, &[]);
    assert_eq!(code, 0, "both runs were recorded and anchored: {said}");
    assert!(said.contains("2 records, chain intact"), "{said}");
    let (code, said) = verify(home.path(), None, &["--public-key", arg(&public)]);
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("anchor line 2 (record #1,") && said.contains("it is unsigned"),
        "{said}"
    );
}
