//! Records that could not be written, kept on disk until they can be.
//!
//! A run whose ledger is unreachable (PostgreSQL down, a read-only disk, a wrong password)
//! still completes: its record goes to `<data dir>/spool/` as one JSON file, with the ledger
//! it was meant for. The next `memwarden run` against that ledger, or `memwarden ledger
//! sync`, appends the spooled records in the order the runs started and removes their
//! files. An exclusive lock on the spool directory keeps two syncs from racing; a record
//! already in the ledger (by run id) is not appended twice.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::RunRecord;
use crate::store::{Ledger, LedgerError, LedgerLocation};

/// A spooled record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spooled {
    /// The ledger it is meant for ([`LedgerLocation::key`]).
    pub ledger: String,
    /// Why it could not be written.
    pub reason: String,
    /// The record.
    pub record: RunRecord,
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// What a sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Records appended.
    pub written: usize,
    /// Records that were already in the ledger (their files removed).
    pub already_present: usize,
    /// Records left for later, with the reason of the first failure.
    pub remaining: usize,
    /// Why records remain.
    pub error: Option<String>,
}

impl Spool {
    /// The default spool: `<data dir>/spool`.
    pub fn default_dir() -> Spool {
        Spool::at(LedgerLocation::data_dir().join("spool"))
    }

    /// A spool in `dir`.
    pub fn at(dir: PathBuf) -> Spool {
        Spool { dir }
    }

    /// Where the spool is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps `record` for `ledger`; returns the file written.
    pub fn keep(
        &self,
        ledger: &LedgerLocation,
        record: &RunRecord,
        reason: &str,
    ) -> io::Result<PathBuf> {
        fs::create_dir_all(&self.dir)?;
        let name = format!("{:020.6}-{}.json", record.started_at_unix_s, record.run_id);
        let path = self.dir.join(name);
        let spooled = Spooled {
            ledger: ledger.key(),
            reason: reason.to_owned(),
            record: record.clone(),
        };
        let temporary = path.with_extension("tmp");
        // 0600: a record names commands, paths and hosts.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        io::Write::write_all(
            &mut file,
            &serde_json::to_vec_pretty(&spooled).map_err(io::Error::from)?,
        )?;
        file.sync_all()?;
        fs::rename(&temporary, &path)?;
        Ok(path)
    }

    /// The spooled records meant for `ledger`, oldest run first.
    pub fn pending(&self, ledger: &LedgerLocation) -> Vec<(PathBuf, Spooled)> {
        let key = ledger.key();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut pending: Vec<(PathBuf, Spooled)> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| {
                let spooled: Spooled = serde_json::from_slice(&fs::read(&p).ok()?).ok()?;
                (spooled.ledger == key).then_some((p, spooled))
            })
            .collect();
        pending.sort_by(|a, b| a.0.cmp(&b.0));
        pending
    }

    /// Appends every record spooled for the ledger, oldest first, stopping at the first
    /// failure (the ledger is still unreachable: the rest stay for the next time).
    pub fn sync(&self, ledger: &mut Ledger) -> SyncOutcome {
        let mut outcome = SyncOutcome::default();
        let _lock = match self.lock() {
            Ok(lock) => lock,
            Err(e) => {
                outcome.error = Some(format!("cannot lock the spool {}: {e}", self.dir.display()));
                return outcome;
            }
        };
        let pending = self.pending(&ledger.location().clone());
        let total = pending.len();
        for (index, (path, spooled)) in pending.into_iter().enumerate() {
            match ledger.append(&spooled.record) {
                Ok(_) => outcome.written += 1,
                Err(LedgerError::Duplicate(_)) => outcome.already_present += 1,
                Err(e) => {
                    outcome.remaining = total - index;
                    outcome.error = Some(e.to_string());
                    return outcome;
                }
            }
            let _ = fs::remove_file(path);
        }
        outcome
    }

    fn lock(&self) -> io::Result<File> {
        fs::create_dir_all(&self.dir)?;
        let file = File::create(self.dir.join(".lock"))?;
        // SAFETY: flock on a descriptor this function owns; released when `file` drops.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests_support::record;

    #[test]
    fn spooled_records_are_written_once_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = LedgerLocation::Sqlite(dir.path().join("ledger.sqlite"));
        let other = LedgerLocation::Sqlite(dir.path().join("other.sqlite"));
        let spool = Spool::at(dir.path().join("spool"));
        for (i, started) in [(1, 30.0), (2, 10.0), (3, 20.0)] {
            let mut r = record(&format!("r{i}"), "m", "1", 1 << 20);
            r.started_at_unix_s = started;
            spool.keep(&location, &r, "server down").expect("kept");
        }
        spool
            .keep(&other, &record("elsewhere", "m", "1", 1), "down")
            .expect("kept");
        let mut ledger = Ledger::open(&location).expect("open");
        ledger
            .append(&record("r3", "m", "1", 1 << 20))
            .expect("r3 made it before");
        let outcome = spool.sync(&mut ledger);
        assert_eq!(
            outcome,
            SyncOutcome {
                written: 2,
                already_present: 1,
                remaining: 0,
                error: None
            }
        );
        let order: Vec<String> = ledger
            .records(None)
            .expect("records")
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(order, ["r3", "r2", "r1"]);
        assert_eq!(spool.pending(&location).len(), 0);
        assert_eq!(
            spool.pending(&other).len(),
            1,
            "records for another ledger stay"
        );
    }
}
