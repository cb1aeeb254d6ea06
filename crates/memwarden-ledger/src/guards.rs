//! The append-only guards, and whether they are still in place.
//!
//! The triggers that refuse `UPDATE`, `DELETE` and `TRUNCATE` only stop honest mistakes and
//! careless tampering: whoever owns the database can remove them. What can be checked is
//! that they are still there as memwarden made them:
//!
//! - **SQLite**: both triggers exist with memwarden's exact SQL (compared with whitespace
//!   collapsed), no other trigger is on `memwarden_runs`, and both come before the view
//!   `memwarden_guards_end` in `sqlite_master`. SQLite numbers schema rows in creation order
//!   and keeps that order through `VACUUM`, so a trigger dropped and recreated, even with
//!   identical SQL, lands after the view. An attacker who also recreates the view, or edits
//!   `sqlite_master` with `PRAGMA writable_schema`, leaves no trace here; a connection that
//!   switches triggers off (`SQLITE_DBCONFIG_ENABLE_TRIGGER`) changes nothing in the file.
//!   What such an attacker did to records is still seen by the chain and the anchors.
//! - **PostgreSQL**: both triggers exist with their events, no `WHEN` condition or column
//!   list, the function `memwarden_append_only` with its body, and are enabled `ALWAYS`
//!   (`pg_trigger.tgenabled = 'A'`), so that `session_replication_role = replica`, which
//!   skips ordinary triggers, does not skip them. `ALTER TABLE ... DISABLE TRIGGER` shows as
//!   `'D'`, `ENABLE TRIGGER` (origin-only again) as `'O'`, `ENABLE REPLICA TRIGGER` as `'R'`.
//!   A superuser can rewrite the catalogue itself; the chain and the anchors remain.

/// The no-update trigger's SQL as SQLite stores it.
const SQLITE_NO_UPDATE: &str = "CREATE TRIGGER memwarden_runs_no_update BEFORE UPDATE ON memwarden_runs BEGIN SELECT RAISE(ABORT, 'the memwarden ledger is append-only'); END";
/// The no-delete trigger's SQL as SQLite stores it.
const SQLITE_NO_DELETE: &str = "CREATE TRIGGER memwarden_runs_no_delete BEFORE DELETE ON memwarden_runs BEGIN SELECT RAISE(ABORT, 'the memwarden ledger is append-only'); END";
/// The schema row created after the triggers (schema version 2).
pub(crate) const SQLITE_END_MARKER: &str = "memwarden_guards_end";

/// Collapses runs of whitespace, so that indentation is not a difference.
fn normalized(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One row of `sqlite_master` that matters here.
pub(crate) struct SqliteSchemaRow {
    pub rowid: i64,
    pub kind: String,
    pub name: String,
    pub table: String,
    pub sql: Option<String>,
}

/// Every problem with the SQLite guards, in sentences.
pub(crate) fn sqlite_problems(rows: &[SqliteSchemaRow]) -> Vec<String> {
    let mut problems = Vec::new();
    let end = rows
        .iter()
        .find(|r| r.kind == "view" && r.name == SQLITE_END_MARKER);
    if end.is_none() {
        problems.push(format!(
            "the view {SQLITE_END_MARKER}, which marks where the guards end, is missing: the schema was edited"
        ));
    }
    for (name, expected) in [
        ("memwarden_runs_no_update", SQLITE_NO_UPDATE),
        ("memwarden_runs_no_delete", SQLITE_NO_DELETE),
    ] {
        let Some(row) = rows.iter().find(|r| r.kind == "trigger" && r.name == name) else {
            problems.push(format!(
                "the trigger {name} is missing (dropped): the ledger no longer refuses {}",
                if name.ends_with("update") {
                    "edits"
                } else {
                    "deletions"
                }
            ));
            continue;
        };
        let sql = row.sql.as_deref().map(normalized).unwrap_or_default();
        if sql != expected {
            problems.push(format!(
                "the trigger {name} is not memwarden's (dropped and recreated with other SQL): {sql}"
            ));
        } else if end.is_some_and(|end| row.rowid > end.rowid) {
            problems.push(format!(
                "the trigger {name} was dropped and recreated (it now comes after {SQLITE_END_MARKER} in the schema)"
            ));
        }
    }
    for row in rows.iter().filter(|r| {
        r.kind == "trigger"
            && r.table == "memwarden_runs"
            && !matches!(
                r.name.as_str(),
                "memwarden_runs_no_update" | "memwarden_runs_no_delete"
            )
    }) {
        problems.push(format!(
            "an unexpected trigger {} is on memwarden_runs (memwarden did not make it)",
            row.name
        ));
    }
    problems
}

/// One trigger on `memwarden_runs` as PostgreSQL describes it.
pub(crate) struct PgTrigger {
    pub name: String,
    /// `pg_trigger.tgenabled`: `O`, `D`, `R` or `A`.
    pub enabled: String,
    /// `pg_trigger.tgtype` bits.
    pub kind_bits: i16,
    /// Has a `WHEN` condition.
    pub has_condition: bool,
    /// Fires only on `UPDATE OF` some columns.
    pub has_columns: bool,
    /// The function's name.
    pub function: String,
    /// The function's body.
    pub function_body: String,
}

// pg_trigger.tgtype bits (src/include/catalog/pg_trigger.h).
const TRIGGER_ROW: i16 = 1 << 0;
const TRIGGER_BEFORE: i16 = 1 << 1;
const TRIGGER_DELETE: i16 = 1 << 3;
const TRIGGER_UPDATE: i16 = 1 << 4;
const TRIGGER_TRUNCATE: i16 = 1 << 5;

/// The body of `memwarden_append_only`, whitespace collapsed.
const PG_FUNCTION_BODY: &str = "BEGIN RAISE EXCEPTION 'the memwarden ledger is append-only'; END";

/// Every problem with the PostgreSQL guards, in sentences.
pub(crate) fn postgres_problems(triggers: &[PgTrigger]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, bits, refuses) in [
        (
            "memwarden_runs_no_change",
            TRIGGER_ROW | TRIGGER_BEFORE | TRIGGER_DELETE | TRIGGER_UPDATE,
            "edits and deletions",
        ),
        (
            "memwarden_runs_no_truncate",
            TRIGGER_BEFORE | TRIGGER_TRUNCATE,
            "TRUNCATE",
        ),
    ] {
        let Some(trigger) = triggers.iter().find(|t| t.name == name) else {
            problems.push(format!(
                "the trigger {name} is missing (dropped): the ledger no longer refuses {refuses}"
            ));
            continue;
        };
        match trigger.enabled.as_str() {
            "A" => {}
            "D" => problems.push(format!(
                "the trigger {name} is disabled (ALTER TABLE ... DISABLE TRIGGER): the ledger no longer refuses {refuses}"
            )),
            "O" => problems.push(format!(
                "the trigger {name} fires only in origin mode (ENABLE TRIGGER instead of ENABLE ALWAYS TRIGGER): a session with session_replication_role = replica skips it"
            )),
            "R" => problems.push(format!(
                "the trigger {name} fires only in replica mode (ENABLE REPLICA TRIGGER): ordinary sessions skip it"
            )),
            other => problems.push(format!(
                "the trigger {name} has the unknown state tgenabled = '{other}'"
            )),
        }
        if trigger.kind_bits != bits || trigger.has_condition || trigger.has_columns {
            problems.push(format!(
                "the trigger {name} is not memwarden's (recreated with other events, a WHEN condition or a column list)"
            ));
        }
        if trigger.function != "memwarden_append_only"
            || normalized(&trigger.function_body) != PG_FUNCTION_BODY
        {
            problems.push(format!(
                "the trigger {name} runs {}(), which is not memwarden's refusal (the function was replaced)",
                trigger.function
            ));
        }
    }
    for trigger in triggers.iter().filter(|t| {
        !matches!(
            t.name.as_str(),
            "memwarden_runs_no_change" | "memwarden_runs_no_truncate"
        )
    }) {
        problems.push(format!(
            "an unexpected trigger {} is on memwarden_runs (memwarden did not make it)",
            trigger.name
        ));
    }
    problems
}

/// The query that lists the triggers of `memwarden_runs` as [`PgTrigger`] columns.
pub(crate) const PG_TRIGGERS_QUERY: &str = "
    SELECT t.tgname::text, t.tgenabled::text, t.tgtype, t.tgqual IS NOT NULL,
           cardinality(t.tgattr::int2[]) > 0, p.proname::text, p.prosrc
    FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
    WHERE t.tgrelid = 'memwarden_runs'::regclass AND NOT t.tgisinternal
    ORDER BY t.tgname";

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rowid: i64, kind: &str, name: &str, sql: &str) -> SqliteSchemaRow {
        SqliteSchemaRow {
            rowid,
            kind: kind.into(),
            name: name.into(),
            table: "memwarden_runs".into(),
            sql: Some(sql.into()),
        }
    }

    fn intact() -> Vec<SqliteSchemaRow> {
        vec![
            row(6, "trigger", "memwarden_runs_no_update", SQLITE_NO_UPDATE),
            row(
                7,
                "trigger",
                "memwarden_runs_no_delete",
                &SQLITE_NO_DELETE.replace(" BEGIN", "\n     BEGIN"),
            ),
            row(8, "view", SQLITE_END_MARKER, "CREATE VIEW x AS SELECT 1"),
        ]
    }

    #[test]
    fn sqlite_guards_as_made_are_intact() {
        assert!(sqlite_problems(&intact()).is_empty());
    }

    #[test]
    fn sqlite_guards_dropped_changed_or_recreated_are_named() {
        let mut rows = intact();
        rows.remove(1);
        assert!(sqlite_problems(&rows)[0].contains("memwarden_runs_no_delete is missing"));

        let mut rows = intact();
        rows[0].rowid = 9;
        assert!(sqlite_problems(&rows)[0].contains("dropped and recreated"));

        let mut rows = intact();
        rows[1].sql = Some(SQLITE_NO_DELETE.replace("BEGIN", "WHEN 0 BEGIN"));
        assert!(sqlite_problems(&rows)[0].contains("other SQL"));
    }

    #[test]
    fn postgres_states_are_named() {
        let trigger = |name: &str, enabled: &str, bits: i16| PgTrigger {
            name: name.into(),
            enabled: enabled.into(),
            kind_bits: bits,
            has_condition: false,
            has_columns: false,
            function: "memwarden_append_only".into(),
            function_body: " BEGIN RAISE EXCEPTION 'the memwarden ledger is append-only'; END "
                .into(),
        };
        let no_change = TRIGGER_ROW | TRIGGER_BEFORE | TRIGGER_DELETE | TRIGGER_UPDATE;
        let no_truncate = TRIGGER_BEFORE | TRIGGER_TRUNCATE;
        let fine = [
            trigger("memwarden_runs_no_change", "A", no_change),
            trigger("memwarden_runs_no_truncate", "A", no_truncate),
        ];
        assert!(postgres_problems(&fine).is_empty());
        for (state, needle) in [
            ("D", "disabled"),
            ("O", "replica"),
            ("R", "ordinary sessions"),
        ] {
            let triggers = [
                trigger("memwarden_runs_no_change", state, no_change),
                trigger("memwarden_runs_no_truncate", "A", no_truncate),
            ];
            let problems = postgres_problems(&triggers);
            assert!(
                problems.len() == 1 && problems[0].contains(needle),
                "{problems:?}"
            );
        }
    }
}
