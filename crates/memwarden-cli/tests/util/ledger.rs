//! Helpers for the ledger tamper tests (`ledger_tamper.rs`, `ledger_signed.rs`): memwarden
//! with its own home, recorded runs and their printed heads, `ledger verify`, and the
//! edits an attacker who can write the database would make.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util;

/// memwarden with its data directory (default ledger, spool, anchors) in `home`.
pub fn mw(home: &Path) -> Command {
    let mut command = util::memwarden();
    command
        .env("MEMWARDEN_HOME", home)
        .env_remove("MEMWARDEN_LEDGER")
        .env_remove("MEMWARDEN_ANCHOR_DIR")
        .env_remove("MEMWARDEN_LEDGER_KEY");
    command
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Records `runs` runs of `true` as m@1.. in `ledger` (the default one when `None`);
/// returns the heads the runs printed, `SEQ:HASH`.
pub fn record_runs(home: &Path, ledger: Option<&str>, runs: usize) -> Vec<String> {
    record_versions(home, ledger, 1..=runs, None)
}

/// Records one run of `true` per version (m@VERSION) in `ledger`, signing its head with
/// the secret key file `key` (`MEMWARDEN_LEDGER_KEY`) when given; returns the heads the
/// runs printed, `SEQ:HASH` (`SEQ:HASH:SIGNATURE` when signed).
pub fn record_versions(
    home: &Path,
    ledger: Option<&str>,
    versions: impl IntoIterator<Item = usize>,
    key: Option<&Path>,
) -> Vec<String> {
    versions
        .into_iter()
        .map(|version| {
            let mut command = mw(home);
            if let Some(ledger) = ledger {
                command.args(["--ledger", ledger]);
            }
            if let Some(key) = key {
                command.env("MEMWARDEN_LEDGER_KEY", key);
            }
            let output = command
                .args(["run", "--model", "m", "--version", &version.to_string()])
                .args(["--", "true"])
                .output()
                .expect("memwarden runs");
            assert_eq!(output.status.code(), Some(0), "{}", text(&output));
            printed_head(&text(&output))
        })
        .collect()
}

/// The `SEQ:HASH[:SIGNATURE]` after "ledger head " in a run's output.
pub fn printed_head(said: &str) -> String {
    let (_, after) = said
        .split_once("ledger head ")
        .unwrap_or_else(|| panic!("the run prints its head: {said}"));
    after
        .split_whitespace()
        .next()
        .expect("SEQ:HASH")
        .to_owned()
}

/// `memwarden ledger verify [args]`: exit code and output.
pub fn verify(home: &Path, ledger: Option<&str>, args: &[&str]) -> (i32, String) {
    let mut command = mw(home);
    if let Some(ledger) = ledger {
        command.args(["--ledger", ledger]);
    }
    let output = command
        .args(["ledger", "verify"])
        .args(args)
        .output()
        .expect("verify runs");
    (output.status.code().expect("exit code"), text(&output))
}

pub fn sqlite(home: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(home.join("ledger.sqlite")).expect("the ledger file opens")
}

pub fn anchor_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Edits record `seq`'s exit code and recomputes every hash from it on, as an attacker
/// who knows the chain's formula (docs/ledger.md) would, through a connection with
/// triggers switched off (so that the schema is left untouched).
pub fn edit_and_recompute(home: &Path, seq: i64) {
    let db = sqlite(home);
    db.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        false,
    )
    .expect("triggers off");
    let edited = db
        .execute(
            "UPDATE memwarden_runs SET record = replace(record, '\"exit_code\":0', '\"exit_code\":1') WHERE seq = ?1",
            [seq],
        )
        .expect("edit");
    assert_eq!(edited, 1);
    let rows: Vec<(i64, String, String)> = db
        .prepare("SELECT seq, record, hash FROM memwarden_runs ORDER BY seq")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .expect("rows");
    let mut prev = "0".repeat(64);
    for (row_seq, record, stored_hash) in rows {
        if row_seq < seq {
            prev = stored_hash;
            continue;
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"memwarden-ledger/1\n");
        hasher.update(row_seq.to_string().as_bytes());
        hasher.update(b"\n");
        hasher.update(prev.as_bytes());
        hasher.update(b"\n");
        hasher.update(record.as_bytes());
        let hash = hasher.finalize().to_hex().to_string();
        db.execute(
            "UPDATE memwarden_runs SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![prev, hash, row_seq],
        )
        .expect("rehash");
        prev = hash;
    }
}
