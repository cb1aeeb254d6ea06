//! The run journal: what is needed to stop, record and clean up a run whose memwarden died.
//!
//! Each run keeps two files in `<data dir>/journal/`:
//!
//! - `RUN_ID.lock`, locked (`flock`, exclusive) by the live memwarden for its whole life.
//!   The kernel drops the lock when the process dies, however it dies, so a lock that can
//!   be taken proves that the run's memwarden is gone. Whoever takes it (the run's
//!   guardian, a later `memwarden run`, `memwarden ledger sync`) owns the run's leftovers.
//! - `RUN_ID.json`, the [`Journal`]: written before the command starts, then again when the
//!   cgroup and the command's pid are known, at most every [`WRITE_EVERY`] as the run goes
//!   (the running peaks and the pids of the tree), and when the command ends. Each write
//!   goes to a temporary file renamed over the journal, so a reader sees a whole one.
//!
//! The journal is removed, then the lock file, when memwarden finishes normally.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use memwarden_format::report::{Enforcement, PeakSource, TimelinePoint};
use memwarden_ledger::record::{GitState, InputHash};
use memwarden_ledger::LedgerLocation;
use serde::{Deserialize, Serialize};

use super::tree_heap::process_start;

/// The journal is rewritten at most this often (and at once when something that decides
/// what to kill or clean up changes). The kernel's own high-water marks (the cgroup's peak)
/// are read again when the run is recovered, so a throttled write loses no exact peak.
pub const WRITE_EVERY: Duration = Duration::from_millis(200);

/// The journal format version.
pub const FORMAT: u32 = 1;

/// The environment variable every process of a run inherits, `MEMWARDEN_RUN_ID=<run id>`:
/// it finds the run's processes that left its cgroup, process group and parentage.
pub const RUN_ID_VARIABLE: &str = "MEMWARDEN_RUN_ID";

/// What a run leaves for whoever has to finish it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    /// [`FORMAT`].
    pub format: u32,
    /// The run id (also the ledger record's, when recorded).
    pub run_id: String,
    /// memwarden's pid.
    pub memwarden_pid: i32,
    /// The guardian's pid, once it runs.
    pub guardian_pid: Option<i32>,
    /// `--survive-memwarden`: the tree is left running when memwarden dies.
    pub survive_memwarden: bool,
    /// The command, as text.
    pub command: Vec<String>,
    /// Working directory, as text.
    pub cwd: String,
    /// Start, seconds since the Unix epoch.
    pub started_at_unix_s: f64,
    /// Last write, seconds since the Unix epoch.
    pub updated_at_unix_s: f64,
    /// Sampling interval.
    pub interval_ms: u64,
    /// Where and under which key the run is recorded.
    pub governance: Option<JournalGovernance>,
    /// The run's own cgroup.
    pub cgroup: Option<JournalCgroup>,
    /// The profiler's captures.
    pub capture: Option<JournalCapture>,
    /// `--json` and the temporary file beside it that the report was to be renamed from.
    pub json: Option<JournalJson>,
    /// `--budget`.
    pub budget_bytes: Option<u64>,
    /// `--hard-limit`.
    pub hard_limit_bytes: Option<u64>,
    /// How the hard limit was enforced.
    pub enforced_by: Enforcement,
    /// The command's pid and start time, once spawned.
    pub command_process: Option<Member>,
    /// The processes of the tree at the last write.
    pub members: Vec<Member>,
    /// How the command ended, once it has (memwarden then died before finishing).
    pub command_exit: Option<CommandExit>,
    /// Samples taken.
    pub samples: u64,
    /// The sample with the largest tree RSS.
    pub rss_peak: TimelinePoint,
    /// The largest value of each figure over all samples.
    pub max: TimelinePoint,
    /// The process with the largest high-water mark seen.
    pub largest_process: Option<ProcessPeak>,
    /// Physical memory.
    pub system_total_bytes: u64,
    /// Memory available when the run started.
    pub system_available_at_start_bytes: u64,
}

/// Recording: the ledger (its key: never a password) and the record's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalGovernance {
    /// [`LedgerLocation::key`]: an absolute SQLite path, or a PostgreSQL URL without password.
    pub ledger_key: String,
    /// Model.
    pub model: String,
    /// Version.
    pub version: String,
    /// Stage.
    pub stage: String,
    /// Tags.
    pub tags: std::collections::BTreeMap<String, String>,
    /// Git state before the run.
    pub git: Option<GitState>,
    /// Input hashes.
    pub inputs: Vec<InputHash>,
}

/// The run's cgroup and the one it was made in (where left-over processes are moved).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalCgroup {
    /// 1 or 2.
    pub version: u8,
    /// The run's cgroup directory.
    pub dir: PathBuf,
    /// The enclosing cgroup's directory.
    pub parent_dir: PathBuf,
}

/// The profiler's capture directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalCapture {
    /// The directory.
    pub dir: PathBuf,
    /// Made by memwarden for the run (removed afterwards), not the user's `--capture-dir`.
    pub temporary: bool,
    /// `--raw-frames`.
    pub raw_frames: bool,
}

/// `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalJson {
    /// The report's path.
    pub path: PathBuf,
    /// The temporary file beside it.
    pub temporary: PathBuf,
}

/// A process, by pid and start time (clock ticks after boot), so that a reused pid is
/// never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Pid.
    pub pid: i32,
    /// `/proc/PID/stat` field 22.
    pub start_ticks: u64,
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandExit {
    /// Exit code.
    pub code: Option<i32>,
    /// Killing signal.
    pub signal: Option<i32>,
}

/// One process's peak.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProcessPeak {
    /// Pid.
    pub pid: i32,
    /// Its peak RSS.
    pub rss_bytes: u64,
    /// Where that came from.
    pub source: PeakSource,
}

/// memwarden's journal directory.
pub fn dir() -> PathBuf {
    LedgerLocation::data_dir().join("journal")
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Takes `file`'s exclusive lock; `wait`: block until it is free.
fn lock(file: &File, wait: bool) -> io::Result<()> {
    let operation = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a descriptor `file` owns; the lock goes with the descriptor.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn json_path_of(lock_path: &Path) -> PathBuf {
    lock_path.with_extension("json")
}

fn temporary_path_of(lock_path: &Path) -> PathBuf {
    lock_path.with_extension("json.tmp")
}

/// Removes a run's journal, its temporary file, then its lock file (still locked by the
/// caller, so no one can take it meanwhile).
fn remove_files(lock_path: &Path) {
    let _ = fs::remove_file(json_path_of(lock_path));
    let _ = fs::remove_file(temporary_path_of(lock_path));
    let _ = fs::remove_file(lock_path);
}

/// Writes `journal` next to `lock_path`, whole or not at all.
fn write_journal(lock_path: &Path, journal: &Journal) -> io::Result<()> {
    let path = json_path_of(lock_path);
    let temporary = temporary_path_of(lock_path);
    let text = serde_json::to_vec(journal).map_err(io::Error::from)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(&text)?;
    drop(file);
    fs::rename(&temporary, &path)
}

/// The journal of the live run, locked for its whole life.
#[derive(Debug)]
pub struct JournalFile {
    lock_path: PathBuf,
    /// Held locked; closing it (memwarden's death included) releases the lock.
    _lock: File,
    last_write: Instant,
    /// Why the last write failed, for the report.
    pub failure: Option<String>,
    /// What is written.
    pub journal: Journal,
}

impl JournalFile {
    /// Creates and locks the journal of a new run and writes `journal` into it.
    pub fn create(journal: Journal) -> io::Result<JournalFile> {
        let dir = dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let lock_path = dir.join(format!("{}.lock", journal.run_id));
        // Locked under another name, then renamed: a lock file is never seen unlocked (by
        // a recovery that would take it for a dead run's).
        let unlocked = lock_path.with_extension("lock.new");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&unlocked)?;
        let locked = lock(&file, false).and_then(|()| fs::rename(&unlocked, &lock_path));
        if let Err(e) = locked {
            let _ = fs::remove_file(&unlocked);
            return Err(e);
        }
        let mut created = JournalFile {
            lock_path,
            _lock: file,
            last_write: Instant::now(),
            failure: None,
            journal,
        };
        created.write_now();
        match created.failure.take() {
            Some(failure) => {
                created.finish();
                Err(io::Error::other(failure))
            }
            None => Ok(created),
        }
    }

    /// The lock file's path (what the guardian is given).
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// Writes the journal now.
    pub fn write_now(&mut self) {
        self.journal.updated_at_unix_s = now_unix_s();
        self.last_write = Instant::now();
        if let Err(e) = write_journal(&self.lock_path, &self.journal) {
            self.failure.get_or_insert_with(|| {
                format!(
                    "the run journal {} could not be written ({e}): had memwarden died, this run could not have been recorded",
                    json_path_of(&self.lock_path).display()
                )
            });
        }
    }

    /// The run is over and accounted for: removes the journal, then the lock file (still
    /// locked, so no one can take it for a dead run's meanwhile).
    pub fn finish(self) {
        remove_files(&self.lock_path);
    }
}

/// The journal of a run about to start: what is known before the command runs.
pub fn initial(
    config: &super::config::RunConfig,
    before: Option<&super::ledger_record::Before>,
    run_id: String,
    protection: &super::Protection,
) -> Journal {
    let memwarden_pid = std::process::id() as i32;
    let meminfo = memwarden_monitor::procfs::read_meminfo().unwrap_or_default();
    let governance = config
        .governance
        .as_ref()
        .map(|governance| JournalGovernance {
            ledger_key: governance.ledger.key(),
            model: governance.model.clone(),
            version: governance.version.clone(),
            stage: governance.stage.clone(),
            tags: governance.tags.clone(),
            git: before.and_then(|b| b.git.clone()),
            inputs: before.map(|b| b.inputs.clone()).unwrap_or_default(),
        });
    let capture = config.profiling.as_ref().and_then(|profiling| {
        let environment = profiling.environment();
        let value = |name: &str| {
            environment
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        Some(JournalCapture {
            dir: PathBuf::from(value("MEMWARDEN_CAPTURE_DIR")?),
            temporary: !protection.kept_captures,
            raw_frames: protection.raw_frames,
        })
    });
    let now = now_unix_s();
    Journal {
        format: FORMAT,
        run_id,
        memwarden_pid,
        guardian_pid: None,
        survive_memwarden: protection.survive_memwarden,
        command: config.command.clone(),
        cwd: std::env::current_dir()
            .map(|p| memwarden_format::names::escape_path(&p).into_owned())
            .unwrap_or_default(),
        started_at_unix_s: now,
        updated_at_unix_s: now,
        interval_ms: config.interval.as_millis() as u64,
        governance,
        cgroup: None,
        capture,
        json: config.json.as_ref().map(|(path, temporary)| JournalJson {
            path: std::path::absolute(path).unwrap_or_else(|_| path.clone()),
            temporary: temporary.path().to_owned(),
        }),
        budget_bytes: config.budget_bytes,
        hard_limit_bytes: config.hard_limit_bytes,
        enforced_by: Enforcement::None,
        command_process: None,
        members: Vec::new(),
        command_exit: None,
        samples: 0,
        rss_peak: TimelinePoint::default(),
        max: TimelinePoint::default(),
        largest_process: None,
        system_total_bytes: meminfo.total_bytes,
        system_available_at_start_bytes: meminfo.available_bytes,
    }
}

impl JournalFile {
    /// The run's cgroup, once made (written at once: it is what kills the run).
    pub fn set_isolation(&mut self, isolation: &super::isolation::Isolation) {
        self.journal.enforced_by = isolation.enforcement;
        self.journal.cgroup = isolation
            .own
            .as_ref()
            .zip(isolation.enclosing.as_ref())
            .map(|(own, enclosing)| JournalCgroup {
                version: own.version.number(),
                dir: own.dir.clone(),
                // On v2 with delegation the enclosing cgroup takes no processes: processes
                // left running go to memwarden's leaf, as at a normal end.
                parent_dir: own
                    .delegation()
                    .and_then(|d| d.supervisor_dir.clone())
                    .unwrap_or_else(|| enclosing.dir.clone()),
            });
        self.write_now();
    }

    /// The command's pid, once spawned (written at once).
    pub fn set_command(&mut self, pid: i32) {
        self.journal.command_process =
            process_start(pid as u32).map(|start_ticks| Member { pid, start_ticks });
        self.journal.started_at_unix_s = now_unix_s();
        self.write_now();
    }

    /// The command ended (written at once: the run is then not to be killed).
    pub fn set_command_exit(&mut self, status: memwarden_monitor::tree::ExitStatus) {
        use memwarden_monitor::tree::ExitStatus;
        self.journal.command_exit = Some(match status {
            ExitStatus::Code(code) => CommandExit {
                code: Some(code),
                signal: None,
            },
            ExitStatus::Signal(signal) => CommandExit {
                code: None,
                signal: Some(signal),
            },
        });
        self.write_now();
    }

    /// Whether [`WRITE_EVERY`] has passed since the last write.
    pub fn due(&self) -> bool {
        self.last_write.elapsed() >= WRITE_EVERY
    }

    /// Writes the running figures and the tree's members now.
    pub fn update(
        &mut self,
        figures: &super::tree_figures::TreeFigures,
        sampler: &memwarden_monitor::tree::TreeSampler,
    ) {
        self.journal.samples = figures.samples;
        self.journal.rss_peak = figures.rss_peak;
        self.journal.max = figures.max;
        self.journal.largest_process = sampler
            .processes()
            .into_iter()
            .max_by_key(|p| p.peak_rss_bytes)
            .filter(|p| p.peak_rss_bytes > 0)
            .map(|p| ProcessPeak {
                pid: p.pid,
                rss_bytes: p.peak_rss_bytes,
                source: p.peak_rss_source,
            });
        self.journal.members = sampler
            .live_pids()
            .into_iter()
            .filter_map(|pid| {
                process_start(pid as u32).map(|start_ticks| Member { pid, start_ticks })
            })
            .collect();
        self.write_now();
    }
}

/// The journal of a run whose memwarden is provably dead, locked by this process: its
/// leftovers are this process's to handle.
#[derive(Debug)]
pub struct DeadRun {
    lock_path: PathBuf,
    _lock: File,
    /// The journal; `None` when it cannot be read (the run died before writing it whole).
    pub journal: Result<Journal, String>,
}

impl DeadRun {
    /// Locks the run of `lock_path` if its memwarden is dead, waiting up to `wait` for the
    /// lock (a memwarden that was just killed still closes its files). `None`: the run is
    /// alive, someone else is finishing it, or it is already gone.
    pub fn lock(lock_path: &Path, wait: Duration) -> Option<DeadRun> {
        let file = OpenOptions::new().write(true).open(lock_path).ok()?;
        let deadline = Instant::now() + wait;
        while lock(&file, false).is_err() {
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Whoever held the lock before may have finished the run and removed the file:
        // the lock must be on the file that is still there.
        let same = fs::metadata(lock_path)
            .ok()
            .zip(file.metadata().ok())
            .is_some_and(|(at_path, held)| {
                at_path.ino() == held.ino() && at_path.dev() == held.dev()
            });
        if !same {
            return None;
        }
        let journal = fs::read(json_path_of(lock_path))
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()));
        Some(DeadRun {
            lock_path: lock_path.to_owned(),
            _lock: file,
            journal,
        })
    }

    /// The journal's path, for messages.
    pub fn json_path(&self) -> PathBuf {
        json_path_of(&self.lock_path)
    }

    /// The run is finished: removes its journal and lock file.
    pub fn remove(self) {
        remove_files(&self.lock_path);
    }
}

/// Every run in the journal directory whose memwarden is provably dead, locked. The runs
/// of live memwardens (their lock held) are not touched.
pub fn dead_runs() -> Vec<DeadRun> {
    let Ok(entries) = fs::read_dir(dir()) else {
        return Vec::new();
    };
    let mut locks: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|x| x == "lock"))
        .collect();
    locks.sort();
    locks
        .iter()
        .filter_map(|path| DeadRun::lock(path, Duration::ZERO))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_round_trips_through_json() {
        let journal = Journal {
            format: FORMAT,
            run_id: "0190-abc".into(),
            memwarden_pid: 7,
            guardian_pid: Some(8),
            survive_memwarden: false,
            command: vec!["python".into()],
            cwd: "/w".into(),
            started_at_unix_s: 1.0,
            updated_at_unix_s: 2.0,
            interval_ms: 50,
            governance: None,
            cgroup: Some(JournalCgroup {
                version: 1,
                dir: "/sys/fs/cgroup/memory/x/memwarden-7".into(),
                parent_dir: "/sys/fs/cgroup/memory/x".into(),
            }),
            capture: None,
            json: None,
            budget_bytes: None,
            hard_limit_bytes: None,
            enforced_by: Enforcement::None,
            command_process: Some(Member {
                pid: 9,
                start_ticks: 100,
            }),
            members: vec![],
            command_exit: None,
            samples: 3,
            rss_peak: TimelinePoint::default(),
            max: TimelinePoint::default(),
            largest_process: Some(ProcessPeak {
                pid: 9,
                rss_bytes: 5,
                source: PeakSource::VmHwm,
            }),
            system_total_bytes: 1,
            system_available_at_start_bytes: 1,
        };
        let text = serde_json::to_string(&journal).expect("serialises");
        let back: Journal = serde_json::from_str(&text).expect("parses");
        assert_eq!(back.command_process, journal.command_process);
        assert_eq!(back.largest_process, journal.largest_process);
    }
}
