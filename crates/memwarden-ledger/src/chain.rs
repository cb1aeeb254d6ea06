//! The hash chain.
//!
//! Entry `n` stores its record as canonical JSON (keys sorted) and
//! `hash_n = BLAKE3("memwarden-ledger/1\n" ‖ n ‖ "\n" ‖ hash_{n-1} ‖ "\n" ‖ json_n)`, with
//! `hash_0` sixty-four zeros. Changing a record changes its hash; deleting or reordering
//! entries breaks the sequence or the links. Deleting the newest entries, or rewriting the
//! whole chain after an edit, is possible for whoever holds the database and leaves a
//! consistent chain: [`crate::anchor`] keeps the heads outside the database to show it.

use crate::record::RunRecord;

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// Run id column.
    pub run_id: String,
    /// Model column.
    pub model: String,
    /// Version column.
    pub version: String,
    /// Stage column.
    pub stage: String,
    /// The record, canonical JSON.
    pub record_json: String,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// Canonical JSON of a record: object keys sorted, no whitespace.
pub fn canonical_json(record: &RunRecord) -> String {
    // serde_json's Value keeps object keys in a BTreeMap (no `preserve_order`), so a round
    // trip through Value sorts them.
    let value = serde_json::to_value(record).unwrap_or(serde_json::Value::Null);
    value.to_string()
}

/// The hash of entry `seq` with the given predecessor and record text.
pub fn entry_hash(seq: i64, prev_hash: &str, record_json: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"memwarden-ledger/1\n");
    hasher.update(seq.to_string().as_bytes());
    hasher.update(b"\n");
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(record_json.as_bytes());
    hasher.finalize().to_hex().to_string()
}

/// What is wrong with an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// Sequence number of the entry where the chain breaks.
    pub seq: i64,
    /// Its run id.
    pub run_id: String,
    /// What is wrong, in a sentence.
    pub problem: String,
}

/// Result of verifying a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Entries checked.
    pub entries: usize,
    /// Hash of the last entry (the head), `GENESIS` when empty.
    pub head: String,
    /// Every break found, in order.
    pub breaks: Vec<Break>,
}

/// Verifies entries given in `seq` order.
pub fn verify(entries: &[StoredEntry]) -> Verification {
    let mut breaks = Vec::new();
    let mut expected_prev = GENESIS.to_owned();
    let mut expected_seq = 1;
    for entry in entries {
        let mut problems = Vec::new();
        if entry.seq != expected_seq {
            problems.push(if entry.seq > expected_seq {
                format!(
                    "entries {expected_seq} to {} are missing (deleted)",
                    entry.seq - 1
                )
            } else {
                format!("sequence number {} repeats or goes backwards", entry.seq)
            });
        }
        if entry.prev_hash != expected_prev {
            problems.push("its link to the previous entry does not match (an entry before it was deleted, reordered or changed)".to_owned());
        }
        let recomputed = entry_hash(entry.seq, &entry.prev_hash, &entry.record_json);
        if recomputed != entry.hash {
            problems.push("its content does not match its hash (the record was edited)".to_owned());
        }
        match serde_json::from_str::<RunRecord>(&entry.record_json) {
            Ok(record) => {
                let columns = [
                    ("run_id", &record.run_id, &entry.run_id),
                    ("model", &record.model, &entry.model),
                    ("version", &record.version, &entry.version),
                    ("stage", &record.stage, &entry.stage),
                ];
                for (name, in_record, in_column) in columns {
                    if in_record != in_column {
                        problems.push(format!("column {name} says '{in_column}' but the hashed record says '{in_record}' (edited)"));
                    }
                }
            }
            Err(e) => problems.push(format!("its record is not valid ({e})")),
        }
        if !problems.is_empty() {
            breaks.push(Break {
                seq: entry.seq,
                run_id: entry.run_id.clone(),
                problem: problems.join("; "),
            });
        }
        expected_prev = entry.hash.clone();
        expected_seq = entry.seq + 1;
    }
    Verification {
        entries: entries.len(),
        head: expected_prev,
        breaks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests_support::record;

    fn chain(n: usize) -> Vec<StoredEntry> {
        let mut prev = GENESIS.to_owned();
        (1..=n as i64)
            .map(|seq| {
                let r = record(&format!("run-{seq}"), "m", "1", 100 << 20);
                let json = canonical_json(&r);
                let hash = entry_hash(seq, &prev, &json);
                let entry = StoredEntry {
                    seq,
                    run_id: r.run_id.clone(),
                    model: r.model.clone(),
                    version: r.version.clone(),
                    stage: r.stage.clone(),
                    record_json: json,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                entry
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let entries = chain(5);
        let v = verify(&entries);
        assert!(v.breaks.is_empty(), "{:?}", v.breaks);
        assert_eq!(v.head, entries[4].hash);
    }

    #[test]
    fn an_edited_record_is_named() {
        let mut entries = chain(5);
        entries[2].record_json = entries[2].record_json.replace("104857600", "1048576");
        let v = verify(&entries);
        assert_eq!(v.breaks.len(), 1, "{:?}", v.breaks);
        assert_eq!((v.breaks[0].seq, v.breaks[0].run_id.as_str()), (3, "run-3"));
        assert!(v.breaks[0].problem.contains("edited"));
    }

    #[test]
    fn deleted_and_reordered_entries_are_named() {
        let mut entries = chain(5);
        entries.remove(1);
        let v = verify(&entries);
        assert_eq!(v.breaks[0].seq, 3);
        assert!(
            v.breaks[0].problem.contains("missing"),
            "{}",
            v.breaks[0].problem
        );

        let mut entries = chain(5);
        entries.swap(1, 2);
        let v = verify(&entries);
        assert!(!v.breaks.is_empty());
        assert_eq!(v.breaks[0].seq, 3);
    }

    #[test]
    fn an_edited_column_is_named() {
        let mut entries = chain(3);
        entries[0].version = "2".to_owned();
        let v = verify(&entries);
        assert_eq!(v.breaks.len(), 1);
        assert!(v.breaks[0].problem.contains("column version"));
    }
}
