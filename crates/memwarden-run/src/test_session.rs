//! A test suite's memory in the ledger (`pytest --memwarden-baseline`): each test's heap
//! peak judged against its own history ([`Baselines`], read once per process) and recorded
//! as a run of the suite, stage `test` ([`Recorder`], whose provenance, the git state,
//! Python environment and host, is collected once per session, and whose records are
//! written together at the session's end). The rules are the ledger's:
//! `memwarden_ledger::gate::baseline`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use memwarden_ledger::gate::baseline::{self, Judgement};
use memwarden_ledger::policy::{Effective, Policy, Stage};
use memwarden_ledger::record::{GitState, Host, Peaks, PythonEnv};
use memwarden_ledger::{provenance, Ledger, LedgerLocation, RunRecord};
use memwarden_monitor::procfs;

use crate::config::{governance, Governance};
use crate::ledger_record;

/// The histories of a suite's tests, and the policy's tolerances for its `test` stage.
#[derive(Debug)]
pub struct Baselines {
    histories: BTreeMap<(String, String), Vec<u64>>,
    settings: Effective,
}

impl Baselines {
    /// Reads the suite's records from the ledger (`None`: the data directory's) and the
    /// policy (`./memwarden.toml` when present).
    pub fn load(model: &str, ledger: Option<&str>) -> Result<Baselines, String> {
        let location = LedgerLocation::resolve(ledger).map_err(|e| format!("the ledger: {e}"))?;
        let policy = Policy::find(None).map_err(|e| e.to_string())?;
        let records = Ledger::open(&location)
            .and_then(|mut ledger| ledger.records(Some(model)))
            .map_err(|e| format!("{e}"))?;
        Ok(Baselines {
            histories: baseline::test_histories(&records),
            settings: policy.effective(model, Stage::Test),
        })
    }

    /// Judges `test`'s heap peak, measured the `profile` way (`sampled`, `exact`), `sample_bytes`
    /// apart when sampled (0: exact).
    pub fn judge(
        &self,
        test: &str,
        profile: &str,
        heap_bytes: u64,
        sample_bytes: u64,
    ) -> Judgement {
        let history = self
            .histories
            .get(&(test.to_owned(), profile.to_owned()))
            .map_or(&[][..], Vec::as_slice);
        baseline::judge(history, heap_bytes, sample_bytes, &self.settings)
    }
}

/// One test's figures, as the plugin hands them over.
#[derive(Debug, Clone)]
pub struct TestRun {
    /// pytest's node id.
    pub test: String,
    /// Whether the test passed (its own assertions and its limits).
    pub passed: bool,
    /// When it began, seconds since the epoch.
    pub started_at_unix_s: f64,
    /// How long its call took.
    pub duration_s: f64,
    /// Its heap peak above its start.
    pub heap_bytes: u64,
    /// What it left allocated (negative: it freed more than it allocated).
    pub leaked_bytes: i64,
    /// Its process's resident peak during the call.
    pub rss_bytes: u64,
    /// Whether `rss_bytes` is the kernel's high-water mark (else a lower bound from
    /// readings).
    pub rss_exact: bool,
    /// How the heap was measured: `sampled` or `exact`.
    pub profile: String,
    /// The baseline's verdict when it was not an ordinary pass: `regression`, `accepted`.
    pub baseline: Option<String>,
}

/// The session's records, with its provenance collected once.
#[derive(Debug)]
pub struct Recorder {
    governance: Governance,
    command: Vec<String>,
    cwd: String,
    git: Option<GitState>,
    python: Option<PythonEnv>,
    host: Host,
    records: Vec<RunRecord>,
    run_ids: HashSet<String>,
}

impl Recorder {
    /// Collects the session's provenance. `version`: `None` for the git commit of the
    /// working directory (`+dirty` when it has changes), or `unversioned` outside git.
    pub fn open(
        model: &str,
        version: Option<String>,
        ledger: Option<&str>,
        command: Vec<String>,
    ) -> Result<Recorder, String> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let git = provenance::git_state(&cwd);
        let version = version.unwrap_or_else(|| match &git {
            Some(state) => {
                let short = &state.commit[..state.commit.len().min(12)];
                format!("{short}{}", if state.dirty { "+dirty" } else { "" })
            }
            None => "unversioned".to_owned(),
        });
        let governance = governance(
            model.to_owned(),
            version,
            Stage::Test.name(),
            Vec::new(),
            Vec::new(),
            ledger,
        )?;
        let python = provenance::python_of(&command)
            .and_then(|python| provenance::python_env(&python, &cwd));
        let memory = procfs::read_meminfo().unwrap_or_default().total_bytes;
        Ok(Recorder {
            governance,
            cwd: memwarden_format::names::escape_path(&cwd).into_owned(),
            command,
            git,
            python,
            host: provenance::host(memory),
            records: Vec::new(),
            run_ids: HashSet::new(),
        })
    }

    /// The version the session's records carry.
    pub fn version(&self) -> &str {
        &self.governance.version
    }

    /// Adds a test's record (written by [`Recorder::finish`]).
    pub fn add(&mut self, run: TestRun) {
        // Ids come from the start time, which two tests of a session may share at the
        // clock's resolution: a later one moves on a nanosecond until its id is new.
        let mut started = UNIX_EPOCH + Duration::from_secs_f64(run.started_at_unix_s.max(0.0));
        let mut run_id = provenance::new_run_id(started);
        while !self.run_ids.insert(run_id.clone()) {
            started += Duration::from_nanos(1);
            run_id = provenance::new_run_id(started);
        }
        let mut tags = BTreeMap::from([
            (baseline::TAG_TEST.to_owned(), run.test),
            (baseline::TAG_PROFILE.to_owned(), run.profile),
        ]);
        if let Some(verdict) = run.baseline {
            tags.insert(baseline::TAG_BASELINE.to_owned(), verdict);
        }
        self.records.push(RunRecord {
            run_id,
            model: self.governance.model.clone(),
            version: self.governance.version.clone(),
            stage: self.governance.stage.clone(),
            tags,
            command: self.command.clone(),
            cwd: self.cwd.clone(),
            exit_code: Some(if run.passed { 0 } else { 1 }),
            exit_signal: None,
            oom_killed: false,
            started_at_unix_s: run.started_at_unix_s,
            ended_at_unix_s: run.started_at_unix_s + run.duration_s,
            host: self.host.clone(),
            container_limit_bytes: None,
            python: self.python.clone(),
            git: self.git.clone(),
            inputs: Vec::new(),
            peaks: Peaks {
                rss_bytes: run.rss_bytes,
                rss_source: if run.rss_exact { "VmHWM" } else { "sampled" }.to_owned(),
                heap_bytes: Some(run.heap_bytes),
                leaked_bytes: Some(run.leaked_bytes.max(0) as u64),
                duration_s: run.duration_s,
                methods: Peaks::current_methods(),
                ..Peaks::default()
            },
            budget_status: "unset".to_owned(),
            budget_bytes: None,
            hard_limit_bytes: None,
            enforced_by: "none".to_owned(),
            top_stacks_at_peak: Vec::new(),
            report_path: None,
            memwarden_version: env!("CARGO_PKG_VERSION").to_owned(),
            interrupted: None,
            advice: Vec::new(),
        });
    }

    /// Writes every record (see `ledger_record::write_all`: kept in the spool on failure);
    /// the line saying where.
    pub fn finish(self) -> Result<String, String> {
        ledger_record::write_all(&self.governance.ledger, &self.records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(session: u32, test: &str, heap: u64, baseline: Option<&str>) -> TestRun {
        TestRun {
            test: test.to_owned(),
            passed: true,
            // Every test of a session at once: ids must still differ.
            started_at_unix_s: 1_795_000_000.0 + f64::from(session),
            duration_s: 0.01,
            heap_bytes: heap,
            leaked_bytes: -5,
            rss_bytes: 300 << 20,
            rss_exact: true,
            profile: "exact".to_owned(),
            baseline: baseline.map(str::to_owned),
        }
    }

    #[test]
    fn sessions_record_tests_and_later_sessions_judge_them_against_their_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = dir.path().join("ledger.db").display().to_string();
        for (session, heap) in [(0, 100u64 << 20), (1, 101 << 20), (2, 99 << 20)] {
            let mut recorder =
                Recorder::open("suite", Some(format!("v{session}")), Some(&ledger), vec![])
                    .expect("opens");
            recorder.add(run(session, "t.py::a", heap, None));
            recorder.add(run(session, "t.py::b", 1 << 20, None));
            let line = recorder.finish().expect("written");
            assert!(line.contains("as 2 runs"), "{line}");
        }
        let baselines = Baselines::load("suite", Some(&ledger)).expect("loads");
        assert!(baselines.judge("t.py::a", "exact", 100 << 20, 0).pass);
        let grown = baselines.judge("t.py::a", "exact", 150 << 20, 0);
        assert!(!grown.pass && grown.runs == 3, "{grown:?}");
        let other_way = baselines.judge("t.py::a", "sampled", 150 << 20, 0);
        assert!(other_way.pass && !other_way.judged, "{other_way:?}");
        let unknown = baselines.judge("t.py::new", "exact", 1 << 30, 0);
        assert!(unknown.pass && unknown.runs == 0);

        // An accepted increase starts a new history: still learning after it.
        let mut recorder =
            Recorder::open("suite", Some("v3".into()), Some(&ledger), vec![]).expect("opens");
        recorder.add(run(3, "t.py::a", 150 << 20, Some(baseline::ACCEPTED)));
        recorder.finish().expect("written");
        let baselines = Baselines::load("suite", Some(&ledger)).expect("loads");
        let after = baselines.judge("t.py::a", "exact", 150 << 20, 0);
        assert!(after.pass && !after.judged && after.runs == 1, "{after:?}");
    }

    #[test]
    fn without_a_version_the_git_commit_or_unversioned_is_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = dir.path().join("ledger.db").display().to_string();
        let recorder = Recorder::open("suite", None, Some(&ledger), vec![]).expect("opens");
        assert!(!recorder.version().is_empty());
    }
}
