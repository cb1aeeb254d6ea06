//! Records that could not be written, kept on disk until they can be.
//!
//! A run whose ledger is unreachable (PostgreSQL down, a read-only disk, a wrong password)
//! still completes: its record goes to `<data dir>/spool/` as one JSON file, with the ledger
//! it was meant for. The next `memwarden run` against that ledger, or `memwarden ledger
//! sync`, appends the spooled records in the order the runs started and removes their
//! files. An exclusive lock on the spool directory keeps two syncs from racing; a record
//! already in the ledger (by run id) is not appended twice.
//!
//! When the usual spool cannot be written either (a read-only or full home), the record
//! goes to the first fallback that can take it ([`Spool::default_dir`] lists them), and the
//! caller says where; syncs read every location. A record is lost only when nothing on the
//! machine memwarden may write to can take it.

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

/// The spool: its usual directory, then fallbacks.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    fallbacks: Vec<PathBuf>,
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
    /// The default spool: `<data dir>/spool`, falling back to `$MEMWARDEN_SPOOL_FALLBACK`
    /// when set, else `/var/tmp/memwarden-<uid>/spool` (kept across reboots) and then
    /// `/tmp/memwarden-<uid>/spool`.
    pub fn default_dir() -> Spool {
        let fallbacks = match std::env::var_os("MEMWARDEN_SPOOL_FALLBACK").filter(|v| !v.is_empty())
        {
            Some(dir) => vec![PathBuf::from(dir)],
            None => {
                let uid = current_uid();
                ["/var/tmp", "/tmp"]
                    .iter()
                    .map(|base| {
                        Path::new(base)
                            .join(format!("memwarden-{uid}"))
                            .join("spool")
                    })
                    .collect()
            }
        };
        Spool {
            dir: LedgerLocation::data_dir().join("spool"),
            fallbacks,
        }
    }

    /// A spool in `dir`, without fallbacks.
    pub fn at(dir: PathBuf) -> Spool {
        Spool {
            dir,
            fallbacks: Vec::new(),
        }
    }

    /// A spool in `dir`, falling back to `fallbacks` in order.
    pub fn with_fallbacks(dir: PathBuf, fallbacks: Vec<PathBuf>) -> Spool {
        Spool { dir, fallbacks }
    }

    /// Where the spool usually is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every location, the usual one first.
    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.dir).chain(&self.fallbacks)
    }

    /// Keeps `record` for `ledger` in the first location that takes it; returns the file
    /// written (outside [`Spool::dir`] when a fallback took it). When none does, the error
    /// names every location and why.
    pub fn keep(
        &self,
        ledger: &LedgerLocation,
        record: &RunRecord,
        reason: &str,
    ) -> io::Result<PathBuf> {
        let mut failures = Vec::new();
        for dir in self.dirs() {
            match Self::keep_in(dir, ledger, record, reason) {
                Ok(path) => return Ok(path),
                Err(e) => failures.push(format!("{}: {e}", dir.display())),
            }
        }
        Err(io::Error::other(failures.join("; ")))
    }

    fn keep_in(
        dir: &Path,
        ledger: &LedgerLocation,
        record: &RunRecord,
        reason: &str,
    ) -> io::Result<PathBuf> {
        create_private_dir(dir)?;
        let name = format!("{:020.6}-{}.json", record.started_at_unix_s, record.run_id);
        let path = dir.join(name);
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
        let written = file.sync_all().and_then(|()| fs::rename(&temporary, &path));
        if written.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        written.map(|()| path)
    }

    /// The spooled records meant for `ledger`, in every location, oldest run first.
    pub fn pending(&self, ledger: &LedgerLocation) -> Vec<(PathBuf, Spooled)> {
        let key = ledger.key();
        let mut pending: Vec<(PathBuf, Spooled)> = self
            .dirs()
            .filter_map(|dir| fs::read_dir(dir).ok())
            .flat_map(|entries| entries.flatten())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| {
                let spooled: Spooled = serde_json::from_slice(&fs::read(&p).ok()?).ok()?;
                (spooled.ledger == key).then_some((p, spooled))
            })
            .collect();
        pending.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
        pending
    }

    /// Appends every record spooled for the ledger, oldest first, stopping at the first
    /// failure (the ledger is still unreachable: the rest stay for the next time).
    pub fn sync(&self, ledger: &mut Ledger) -> SyncOutcome {
        let mut outcome = SyncOutcome::default();
        let mut locks = Vec::new();
        for dir in self.dirs().filter(|dir| dir.is_dir()) {
            match lock(dir) {
                Ok(lock) => locks.push(lock),
                Err(e) => {
                    outcome.error = Some(format!("cannot lock the spool {}: {e}", dir.display()));
                    return outcome;
                }
            }
        }
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
}

/// Locks a spool directory for a sync (released when the file drops). A spool that cannot
/// be written cannot be locked either, but then nothing can be removed from it: it is read
/// without the lock.
fn lock(dir: &Path) -> io::Result<Option<File>> {
    let file = match File::create(dir.join(".lock")) {
        Ok(file) => file,
        Err(e)
            if e.kind() == io::ErrorKind::PermissionDenied
                || e.raw_os_error() == Some(libc::EROFS) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    // SAFETY: flock on a descriptor this function owns; released when `file` drops.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(file))
}

/// This process's user id.
fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::getuid()
    }
}

/// Creates `dir` (and its parents) for this user only, and refuses a directory in a shared
/// place (`/tmp`) that another user made or that is a link: a spooled record names
/// commands, paths and hosts.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != current_uid() {
        return Err(io::Error::other(format!(
            "{} is not a directory of this user's",
            dir.display()
        )));
    }
    Ok(())
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

    #[test]
    fn an_unwritable_spool_falls_back_and_a_record_is_lost_only_when_nothing_takes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = LedgerLocation::Sqlite(dir.path().join("ledger.sqlite"));
        // A file where the spool should be: no user, root included, can create it.
        let blocked = dir.path().join("home-spool");
        fs::write(&blocked, "not a directory").expect("blocker");
        let fallback = dir.path().join("fallback");
        let spool = Spool::with_fallbacks(blocked.clone(), vec![fallback.clone()]);
        let kept = spool
            .keep(&location, &record("r1", "m", "1", 1), "server down")
            .expect("kept in the fallback");
        assert!(kept.starts_with(&fallback), "{}", kept.display());
        assert_eq!(spool.pending(&location).len(), 1);
        let mut ledger = Ledger::open(&location).expect("open");
        assert_eq!(spool.sync(&mut ledger).written, 1);
        assert_eq!(spool.pending(&location).len(), 0);

        let nowhere = Spool::with_fallbacks(blocked.clone(), vec![blocked.join("x")]);
        let error = nowhere
            .keep(&location, &record("r2", "m", "1", 1), "down")
            .unwrap_err()
            .to_string();
        assert!(
            error.matches(&*blocked.display().to_string()).count() >= 2,
            "every location and why: {error}"
        );
    }
}
