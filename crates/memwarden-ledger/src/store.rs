//! The two backends, one schema.
//!
//! SQLite is the embedded default, one file (location in [`LedgerLocation::default_sqlite`]);
//! PostgreSQL serves a team or a cluster, through a `postgres://` URL. Both hold the same
//! two tables, `memwarden_meta` (schema version) and `memwarden_runs` (the chain), refuse
//! updates and deletes with triggers (checked by [`Ledger::guard_problems`], see
//! [`crate::guards`]), and serialise appends (SQLite's write lock, a PostgreSQL advisory
//! lock) so that concurrent runs extend the chain one at a time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::chain::{canonical_json, entry_hash, StoredEntry, GENESIS};
use crate::guards;
use crate::record::RunRecord;

/// The schema version this memwarden writes and understands.
pub const SCHEMA_VERSION: u32 = 2;

/// Migrations, by target version (index 0 makes version 1): (SQLite, PostgreSQL). Never
/// edit one that has shipped: [`crate::guards`] compares the triggers with this SQL.
const MIGRATIONS: [(&str, &str); 2] = [
    (
        "CREATE TABLE memwarden_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE memwarden_runs (
         seq INTEGER PRIMARY KEY, run_id TEXT NOT NULL UNIQUE,
         model TEXT NOT NULL, version TEXT NOT NULL, stage TEXT NOT NULL,
         record TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
     CREATE INDEX memwarden_runs_model ON memwarden_runs (model, version, stage);
     CREATE TRIGGER memwarden_runs_no_update BEFORE UPDATE ON memwarden_runs
         BEGIN SELECT RAISE(ABORT, 'the memwarden ledger is append-only'); END;
     CREATE TRIGGER memwarden_runs_no_delete BEFORE DELETE ON memwarden_runs
         BEGIN SELECT RAISE(ABORT, 'the memwarden ledger is append-only'); END;",
        "CREATE TABLE memwarden_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE memwarden_runs (
         seq BIGINT PRIMARY KEY, run_id TEXT NOT NULL UNIQUE,
         model TEXT NOT NULL, version TEXT NOT NULL, stage TEXT NOT NULL,
         record TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
     CREATE INDEX memwarden_runs_model ON memwarden_runs (model, version, stage);
     CREATE FUNCTION memwarden_append_only() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'the memwarden ledger is append-only'; END $$;
     CREATE TRIGGER memwarden_runs_no_change BEFORE UPDATE OR DELETE ON memwarden_runs
         FOR EACH ROW EXECUTE FUNCTION memwarden_append_only();
     CREATE TRIGGER memwarden_runs_no_truncate BEFORE TRUNCATE ON memwarden_runs
         FOR EACH STATEMENT EXECUTE FUNCTION memwarden_append_only();",
    ),
    (
        // Version 2. SQLite: a schema row after the triggers, so that a trigger dropped and
        // recreated (which gets a new, later row) shows. PostgreSQL: the guards fire in every
        // session, also with session_replication_role = replica.
        "CREATE VIEW memwarden_guards_end AS
         SELECT 'the append-only triggers of memwarden_runs precede this view' AS note;",
        "ALTER TABLE memwarden_runs ENABLE ALWAYS TRIGGER memwarden_runs_no_change;
     ALTER TABLE memwarden_runs ENABLE ALWAYS TRIGGER memwarden_runs_no_truncate;",
    ),
];

/// Key of the PostgreSQL advisory lock that serialises appends and migrations.
const PG_LOCK_KEY: i64 = 0x6d77_6c65_6467_6572; // "mwledger"

/// Why the ledger could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The ledger could not be reached or opened (server down, disk read-only, bad
    /// credentials): the record is worth keeping for later.
    #[error("the ledger at {location} cannot be reached: {reason}")]
    Unreachable {
        /// Where (password masked).
        location: String,
        /// What failed, and what to do.
        reason: String,
    },
    /// The file or database exists but is not a memwarden ledger.
    #[error("{location} is not a memwarden ledger ({reason}); give another path with --ledger or MEMWARDEN_LEDGER")]
    NotALedger {
        /// Where.
        location: String,
        /// Why not.
        reason: String,
    },
    /// The ledger was written by a newer memwarden.
    #[error("the ledger at {location} has schema version {found}, newer than this memwarden understands ({SCHEMA_VERSION}): upgrade memwarden")]
    NewerSchema {
        /// Where.
        location: String,
        /// Its version.
        found: u32,
    },
    /// A record with this run id is already in the ledger.
    #[error("run {0} is already in the ledger")]
    Duplicate(String),
    /// The ledger location is malformed.
    #[error("invalid ledger location '{0}': give a file path, sqlite:///path or postgres://user@host/db")]
    BadLocation(String),
    /// Anything else the database said.
    #[error("ledger error at {location}: {reason}")]
    Database {
        /// Where.
        location: String,
        /// What the database said.
        reason: String,
    },
}

impl LedgerError {
    /// Whether a record that failed to be written should be spooled for a later try.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LedgerError::Unreachable { .. } | LedgerError::Database { .. }
        )
    }
}

/// Where the ledger lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerLocation {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl LedgerLocation {
    /// Parses `--ledger` / `MEMWARDEN_LEDGER`: `postgres://…` or `postgresql://…`, `sqlite://PATH`,
    /// or a plain path.
    pub fn parse(text: &str) -> Result<LedgerLocation, LedgerError> {
        let text = text.trim();
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(LedgerLocation::Postgres(text.to_owned()));
        }
        let path = text.strip_prefix("sqlite://").unwrap_or(text);
        if path.is_empty() || text.contains("://") && !text.starts_with("sqlite://") {
            return Err(LedgerError::BadLocation(text.to_owned()));
        }
        Ok(LedgerLocation::Sqlite(PathBuf::from(path)))
    }

    /// `--ledger` / `MEMWARDEN_LEDGER` when given, else [`LedgerLocation::default_sqlite`].
    pub fn resolve(given: Option<&str>) -> Result<LedgerLocation, LedgerError> {
        given.map_or_else(
            || Ok(LedgerLocation::default_sqlite()),
            LedgerLocation::parse,
        )
    }

    /// memwarden's data directory: `$MEMWARDEN_HOME`, else `$XDG_DATA_HOME/memwarden`, else
    /// `~/.local/share/memwarden`.
    pub fn data_dir() -> PathBuf {
        if let Some(home) = std::env::var_os("MEMWARDEN_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(home);
        }
        if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(data).join("memwarden");
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".local/share/memwarden")
    }

    /// The default ledger: `ledger.sqlite` in [`LedgerLocation::data_dir`].
    pub fn default_sqlite() -> LedgerLocation {
        LedgerLocation::Sqlite(Self::data_dir().join("ledger.sqlite"))
    }

    /// The location with any password masked, for messages.
    pub fn display(&self) -> String {
        match self {
            LedgerLocation::Sqlite(path) => path.display().to_string(),
            LedgerLocation::Postgres(url) => mask_password(url),
        }
    }

    /// The location that spooled records are matched by: an absolute SQLite path, or the
    /// PostgreSQL URL without its password (spool files never hold a password).
    pub fn key(&self) -> String {
        match self {
            LedgerLocation::Sqlite(path) => {
                let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                format!("sqlite://{}", absolute.display())
            }
            LedgerLocation::Postgres(url) => mask_password(url),
        }
    }
}

fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

enum Backend {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Client>),
}

/// An open ledger.
pub struct Ledger {
    backend: Backend,
    location: LedgerLocation,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("location", &self.location.display())
            .finish()
    }
}

impl Ledger {
    /// Opens the ledger, creating it (and its directory) when it does not exist yet and
    /// migrating an older schema.
    pub fn open(location: &LedgerLocation) -> Result<Ledger, LedgerError> {
        let backend = match location {
            LedgerLocation::Sqlite(path) => Backend::Sqlite(open_sqlite(path, location)?),
            LedgerLocation::Postgres(url) => {
                Backend::Postgres(Box::new(open_postgres(url, location)?))
            }
        };
        Ok(Ledger {
            backend,
            location: location.clone(),
        })
    }

    /// Where this ledger is.
    pub fn location(&self) -> &LedgerLocation {
        &self.location
    }

    /// Appends a record at the end of the chain; returns its sequence number and hash.
    pub fn append(&mut self, record: &RunRecord) -> Result<(i64, String), LedgerError> {
        let json = canonical_json(record);
        let where_ = self.location.display();
        match &mut self.backend {
            Backend::Sqlite(conn) => {
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(|e| sqlite_error(&where_, e))?;
                let (seq, hash) = {
                    let last: Option<(i64, String)> = tx
                        .query_row(
                            "SELECT seq, hash FROM memwarden_runs ORDER BY seq DESC LIMIT 1",
                            [],
                            |row| Ok((row.get(0)?, row.get(1)?)),
                        )
                        .map(Some)
                        .or_else(|e| {
                            if e == rusqlite::Error::QueryReturnedNoRows {
                                Ok(None)
                            } else {
                                Err(e)
                            }
                        })
                        .map_err(|e| sqlite_error(&where_, e))?;
                    let (prev_seq, prev_hash) = last.unwrap_or((0, GENESIS.to_owned()));
                    let seq = prev_seq + 1;
                    let hash = entry_hash(seq, &prev_hash, &json);
                    tx.execute(
                        "INSERT INTO memwarden_runs (seq, run_id, model, version, stage, record, prev_hash, hash)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        rusqlite::params![seq, record.run_id, record.model, record.version, record.stage, json, prev_hash, hash],
                    )
                    .map_err(|e| match e {
                        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                            LedgerError::Duplicate(record.run_id.clone())
                        }
                        e => sqlite_error(&where_, e),
                    })?;
                    (seq, hash)
                };
                tx.commit().map_err(|e| sqlite_error(&where_, e))?;
                Ok((seq, hash))
            }
            Backend::Postgres(client) => {
                let mut tx = client
                    .transaction()
                    .map_err(|e| postgres_error(&where_, e))?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PG_LOCK_KEY])
                    .map_err(|e| postgres_error(&where_, e))?;
                let last = tx
                    .query_opt(
                        "SELECT seq, hash FROM memwarden_runs ORDER BY seq DESC LIMIT 1",
                        &[],
                    )
                    .map_err(|e| postgres_error(&where_, e))?;
                let (prev_seq, prev_hash): (i64, String) =
                    last.map_or((0, GENESIS.to_owned()), |row| (row.get(0), row.get(1)));
                let seq = prev_seq + 1;
                let hash = entry_hash(seq, &prev_hash, &json);
                tx.execute(
                    "INSERT INTO memwarden_runs (seq, run_id, model, version, stage, record, prev_hash, hash)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[&seq, &record.run_id, &record.model, &record.version, &record.stage, &json, &prev_hash, &hash],
                )
                .map_err(|e| {
                    if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
                        LedgerError::Duplicate(record.run_id.clone())
                    } else {
                        postgres_error(&where_, e)
                    }
                })?;
                tx.commit().map_err(|e| postgres_error(&where_, e))?;
                Ok((seq, hash))
            }
        }
    }

    /// Every entry, in chain order.
    pub fn entries(&mut self) -> Result<Vec<StoredEntry>, LedgerError> {
        const QUERY: &str =
            "SELECT seq, run_id, model, version, stage, record, prev_hash, hash FROM memwarden_runs ORDER BY seq";
        let where_ = self.location.display();
        match &mut self.backend {
            Backend::Sqlite(conn) => {
                let mut statement = conn.prepare(QUERY).map_err(|e| sqlite_error(&where_, e))?;
                let rows = statement
                    .query_map([], |row| {
                        Ok(StoredEntry {
                            seq: row.get(0)?,
                            run_id: row.get(1)?,
                            model: row.get(2)?,
                            version: row.get(3)?,
                            stage: row.get(4)?,
                            record_json: row.get(5)?,
                            prev_hash: row.get(6)?,
                            hash: row.get(7)?,
                        })
                    })
                    .map_err(|e| sqlite_error(&where_, e))?;
                rows.collect::<Result<Vec<_>, _>>()
                    .map_err(|e| sqlite_error(&where_, e))
            }
            Backend::Postgres(client) => Ok(client
                .query(QUERY, &[])
                .map_err(|e| postgres_error(&where_, e))?
                .into_iter()
                .map(|row| StoredEntry {
                    seq: row.get(0),
                    run_id: row.get(1),
                    model: row.get(2),
                    version: row.get(3),
                    stage: row.get(4),
                    record_json: row.get(5),
                    prev_hash: row.get(6),
                    hash: row.get(7),
                })
                .collect()),
        }
    }

    /// The last entry's sequence number and hash, `None` when the ledger is empty.
    pub fn head(&mut self) -> Result<Option<(i64, String)>, LedgerError> {
        const QUERY: &str = "SELECT seq, hash FROM memwarden_runs ORDER BY seq DESC LIMIT 1";
        let where_ = self.location.display();
        match &mut self.backend {
            Backend::Sqlite(conn) => conn
                .query_row(QUERY, [], |row| Ok((row.get(0)?, row.get(1)?)))
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(sqlite_error(&where_, e)),
                }),
            Backend::Postgres(client) => Ok(client
                .query_opt(QUERY, &[])
                .map_err(|e| postgres_error(&where_, e))?
                .map(|row| (row.get(0), row.get(1)))),
        }
    }

    /// Every way the append-only guards (triggers) differ from what memwarden made, in
    /// sentences; empty when they are intact. See [`crate::guards`] for what this can and
    /// cannot see.
    pub fn guard_problems(&mut self) -> Result<Vec<String>, LedgerError> {
        let where_ = self.location.display();
        match &mut self.backend {
            Backend::Sqlite(conn) => {
                let rows = conn
                    .prepare("SELECT rowid, type, name, tbl_name, sql FROM sqlite_master")
                    .and_then(|mut statement| {
                        statement
                            .query_map([], |row| {
                                Ok(guards::SqliteSchemaRow {
                                    rowid: row.get(0)?,
                                    kind: row.get(1)?,
                                    name: row.get(2)?,
                                    table: row.get(3)?,
                                    sql: row.get(4)?,
                                })
                            })?
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(|e| sqlite_error(&where_, e))?;
                Ok(guards::sqlite_problems(&rows))
            }
            Backend::Postgres(client) => {
                let triggers: Vec<guards::PgTrigger> = client
                    .query(guards::PG_TRIGGERS_QUERY, &[])
                    .map_err(|e| postgres_error(&where_, e))?
                    .into_iter()
                    .map(|row| guards::PgTrigger {
                        name: row.get(0),
                        enabled: row.get(1),
                        kind_bits: row.get(2),
                        has_condition: row.get(3),
                        has_columns: row.get(4),
                        function: row.get(5),
                        function_body: row.get(6),
                    })
                    .collect();
                Ok(guards::postgres_problems(&triggers))
            }
        }
    }

    /// The records of `model` (all models when `None`), in chain order. Entries whose
    /// record does not parse are skipped here; `ledger verify` reports them.
    pub fn records(&mut self, model: Option<&str>) -> Result<Vec<RunRecord>, LedgerError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|e| model.is_none_or(|m| e.model == m))
            .filter_map(|e| serde_json::from_str(&e.record_json).ok())
            .collect())
    }
}

fn sqlite_error(location: &str, e: rusqlite::Error) -> LedgerError {
    let reason = e.to_string();
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => LedgerError::NotALedger {
            location: location.to_owned(),
            reason,
        },
        Some(
            rusqlite::ErrorCode::ReadOnly
            | rusqlite::ErrorCode::CannotOpen
            | rusqlite::ErrorCode::DatabaseBusy
            | rusqlite::ErrorCode::DatabaseLocked
            | rusqlite::ErrorCode::DiskFull
            | rusqlite::ErrorCode::SystemIoFailure,
        ) => LedgerError::Unreachable {
            location: location.to_owned(),
            reason,
        },
        _ => LedgerError::Database {
            location: location.to_owned(),
            reason,
        },
    }
}

fn postgres_error(location: &str, e: postgres::Error) -> LedgerError {
    let reason = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(&e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    };
    if e.as_db_error().is_none() || e.is_closed() {
        return LedgerError::Unreachable {
            location: location.to_owned(),
            reason,
        };
    }
    LedgerError::Database {
        location: location.to_owned(),
        reason,
    }
}

fn open_sqlite(
    path: &Path,
    location: &LedgerLocation,
) -> Result<rusqlite::Connection, LedgerError> {
    let where_ = location.display();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| LedgerError::Unreachable {
            location: where_.clone(),
            reason: format!("cannot create {}: {e}", parent.display()),
        })?;
    }
    let conn = rusqlite::Connection::open(path).map_err(|e| sqlite_error(&where_, e))?;
    conn.busy_timeout(Duration::from_secs(60))
        .map_err(|e| sqlite_error(&where_, e))?;
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut s| s.query_map([], |row| row.get(0))?.collect())
        .map_err(|e| sqlite_error(&where_, e))?;
    if !tables.is_empty() && !tables.iter().any(|t| t == "memwarden_meta") {
        return Err(LedgerError::NotALedger {
            location: where_,
            reason: format!(
                "an SQLite database with other tables ({})",
                tables.join(", ")
            ),
        });
    }
    // WAL lets readers (history, verify) run beside a writer; it is a property of the file.
    let _ = conn.pragma_update(None, "journal_mode", "WAL");
    let mut conn = conn;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| sqlite_error(&where_, e))?;
    let found: Option<String> = tx
        .query_row(
            "SELECT value FROM memwarden_meta WHERE key = 'schema_version'",
            [],
            |row| row.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            rusqlite::Error::SqliteFailure(_, Some(ref m)) if m.contains("no such table") => {
                Ok(None)
            }
            e => Err(e),
        })
        .map_err(|e| sqlite_error(&where_, e))?;
    let current = parse_version(found.as_deref(), &where_)?;
    for (index, (sql, _)) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)
            .map_err(|e| sqlite_error(&where_, e))?;
        tx.execute(
            "INSERT INTO memwarden_meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(index + 1).to_string()],
        )
        .map_err(|e| sqlite_error(&where_, e))?;
    }
    tx.commit().map_err(|e| sqlite_error(&where_, e))?;
    Ok(conn)
}

fn parse_version(found: Option<&str>, location: &str) -> Result<u32, LedgerError> {
    let Some(text) = found else { return Ok(0) };
    let version: u32 = text.trim().parse().map_err(|_| LedgerError::NotALedger {
        location: location.to_owned(),
        reason: format!("its schema_version is '{text}'"),
    })?;
    if version > SCHEMA_VERSION {
        return Err(LedgerError::NewerSchema {
            location: location.to_owned(),
            found: version,
        });
    }
    Ok(version)
}

fn open_postgres(url: &str, location: &LedgerLocation) -> Result<postgres::Client, LedgerError> {
    let where_ = location.display();
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| LedgerError::BadLocation(format!("{}: {e}", mask_password(url))))?;
    config.connect_timeout(Duration::from_secs(5));
    let mut client = config.connect(postgres::NoTls).map_err(|e| {
        let mut error = postgres_error(&where_, e);
        if let LedgerError::Database { location, reason } = error {
            // Refusals at connection time (bad password, unknown database) mean the ledger
            // cannot be reached until the URL or the server is fixed.
            error = LedgerError::Unreachable {
                location,
                reason: format!("{reason}; check the URL's user, password and database"),
            };
        }
        error
    })?;
    let mut tx = client
        .transaction()
        .map_err(|e| postgres_error(&where_, e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PG_LOCK_KEY])
        .map_err(|e| postgres_error(&where_, e))?;
    let row = tx
        .query_one(
            "SELECT to_regclass('memwarden_meta') IS NOT NULL, to_regclass('memwarden_runs') IS NOT NULL",
            &[],
        )
        .map_err(|e| postgres_error(&where_, e))?;
    let (has_meta, has_runs): (bool, bool) = (row.get(0), row.get(1));
    if has_runs && !has_meta {
        return Err(LedgerError::NotALedger {
            location: where_,
            reason: "a memwarden_runs table exists without memwarden_meta".to_owned(),
        });
    }
    let found: Option<String> = if has_meta {
        tx.query_opt(
            "SELECT value FROM memwarden_meta WHERE key = 'schema_version'",
            &[],
        )
        .map_err(|e| postgres_error(&where_, e))?
        .map(|row| row.get(0))
    } else {
        None
    };
    let current = parse_version(found.as_deref(), &where_)?;
    for (index, (_, sql)) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql)
            .map_err(|e| postgres_error(&where_, e))?;
        tx.execute(
            "INSERT INTO memwarden_meta (key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&(index + 1).to_string()],
        )
        .map_err(|e| postgres_error(&where_, e))?;
    }
    tx.commit().map_err(|e| postgres_error(&where_, e))?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::verify;
    use crate::record::tests_support::record;

    #[test]
    fn locations() {
        assert_eq!(
            LedgerLocation::parse("/tmp/l.sqlite").ok(),
            Some(LedgerLocation::Sqlite("/tmp/l.sqlite".into()))
        );
        assert_eq!(
            LedgerLocation::parse("sqlite:///tmp/l.sqlite").ok(),
            Some(LedgerLocation::Sqlite("/tmp/l.sqlite".into()))
        );
        assert!(matches!(
            LedgerLocation::parse("postgres://u:secret@h/db"),
            Ok(LedgerLocation::Postgres(_))
        ));
        assert!(matches!(
            LedgerLocation::parse("mysql://h/db"),
            Err(LedgerError::BadLocation(_))
        ));
        let pg = LedgerLocation::parse("postgresql://u:secret@h:5432/db").expect("parses");
        assert_eq!(pg.display(), "postgresql://u:***@h:5432/db");
    }

    #[test]
    fn sqlite_appends_chain_and_refuses_edits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = LedgerLocation::Sqlite(dir.path().join("sub/ledger.sqlite"));
        let mut ledger = Ledger::open(&location).expect("created");
        for i in 0..3 {
            let (seq, _) = ledger
                .append(&record(&format!("r{i}"), "m", "1", 1 << 20))
                .expect("append");
            assert_eq!(seq, i + 1);
        }
        assert!(matches!(
            ledger.append(&record("r1", "m", "1", 1)),
            Err(LedgerError::Duplicate(_))
        ));
        let v = verify(&ledger.entries().expect("entries"));
        assert!(v.breaks.is_empty() && v.entries == 3);
        let conn = rusqlite::Connection::open(dir.path().join("sub/ledger.sqlite")).expect("open");
        let err = conn
            .execute("UPDATE memwarden_runs SET model = 'x'", [])
            .expect_err("append-only");
        assert!(err.to_string().contains("append-only"));
        assert!(conn.execute("DELETE FROM memwarden_runs", []).is_err());
        drop(ledger);
        let mut reopened = Ledger::open(&location).expect("reopens");
        assert_eq!(reopened.records(Some("m")).expect("records").len(), 3);
    }

    #[test]
    fn sqlite_guards_are_intact_when_made_or_migrated_and_named_when_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.sqlite");
        let location = LedgerLocation::Sqlite(path.clone());
        let mut ledger = Ledger::open(&location).expect("created");
        assert_eq!(
            ledger.guard_problems().expect("guards"),
            Vec::<String>::new()
        );
        assert_eq!(ledger.head().expect("head"), None);
        let appended = ledger.append(&record("r1", "m", "1", 1)).expect("append");
        assert_eq!(ledger.head().expect("head"), Some(appended));
        drop(ledger);

        // A ledger made by schema version 1 gains the end marker after its triggers.
        let old = dir.path().join("v1.sqlite");
        rusqlite::Connection::open(&old)
            .and_then(|c| {
                c.execute_batch(MIGRATIONS[0].0)?;
                c.execute(
                    "INSERT INTO memwarden_meta (key, value) VALUES ('schema_version', '1')",
                    [],
                )
            })
            .expect("v1 ledger");
        let mut migrated = Ledger::open(&LedgerLocation::Sqlite(old)).expect("migrates");
        assert_eq!(
            migrated.guard_problems().expect("guards"),
            Vec::<String>::new()
        );

        rusqlite::Connection::open(&path)
            .and_then(|c| c.execute_batch("DROP TRIGGER memwarden_runs_no_delete"))
            .expect("drop");
        let problems = Ledger::open(&location)
            .and_then(|mut l| l.guard_problems())
            .expect("guards");
        assert!(
            problems.len() == 1 && problems[0].contains("memwarden_runs_no_delete is missing"),
            "{problems:?}"
        );
    }

    #[test]
    fn sqlite_files_that_are_not_ledgers_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("notes.txt");
        std::fs::write(
            &text,
            "this is not a database at all, just some text that is long enough",
        )
        .expect("w");
        let err = Ledger::open(&LedgerLocation::Sqlite(text)).expect_err("refused");
        assert!(matches!(err, LedgerError::NotALedger { .. }), "{err}");

        let other = dir.path().join("other.sqlite");
        rusqlite::Connection::open(&other)
            .and_then(|c| c.execute_batch("CREATE TABLE users (id INTEGER)"))
            .expect("db");
        let err = Ledger::open(&LedgerLocation::Sqlite(other)).expect_err("refused");
        assert!(err.to_string().contains("users"), "{err}");
    }

    #[test]
    fn sqlite_ledgers_from_a_newer_memwarden_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.sqlite");
        drop(Ledger::open(&LedgerLocation::Sqlite(path.clone())).expect("created"));
        rusqlite::Connection::open(&path)
            .and_then(|c| {
                c.execute(
                    "UPDATE memwarden_meta SET value = '99' WHERE key = 'schema_version'",
                    [],
                )
            })
            .expect("bump");
        let err = Ledger::open(&LedgerLocation::Sqlite(path)).expect_err("refused");
        assert!(
            matches!(err, LedgerError::NewerSchema { found: 99, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade memwarden"));
    }
}
