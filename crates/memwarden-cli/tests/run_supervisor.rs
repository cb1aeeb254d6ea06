//! A supervisor whose death loses nothing: `kill -9` of memwarden during a profiled,
//! recorded run whose command has grandchildren (one of them in a session of its own, one
//! not Python) takes the whole tree down within a second; the run is recorded as
//! `supervisor_killed` with its peak and stacks, and its cgroup and captures are removed;
//! a concurrent live run is left alone; `--survive-memwarden` leaves the tree running.
//!
//! Real processes throughout. The cgroup variants need a memory cgroup memwarden can
//! create (root, as CI has): without one they fail and say so.

mod util;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const MIB: u64 = 1 << 20;

/// Holds 200 MiB, then starts a tree: a forked child that moves to a session of its own
/// and forks two generations more, and `sleep` via subprocess. Every process appends its
/// pid to `argv[1]`.
const WORKLOAD: &str = r#"import os, sys, time, subprocess
import numpy as np
out = sys.argv[1]
def note(pid):
    with open(out, "a") as f:
        f.write(f"{pid}\n")
held = np.ones(200 * 1024 * 1024 // 8)  # @alloc
def spawn(depth):
    pid = os.fork()
    if pid == 0:
        if depth == 0:
            os.setsid()
        note(os.getpid())
        if depth < 2:
            spawn(depth + 1)
        time.sleep(120)
        os._exit(0)
spawn(0)
note(subprocess.Popen(["sleep", "120"]).pid)
note(os.getpid())
time.sleep(120)
"#;

/// Processes the tree writes down: python, three forked generations, its `sleep`, and the
/// `sleep` bash starts beside python.
const TREE_PIDS: usize = 6;

/// A run under test, its state isolated in its own `MEMWARDEN_HOME`; whatever is still
/// running when it drops is killed.
struct Scene {
    home: tempfile::TempDir,
    ledger: PathBuf,
}

/// A started `memwarden run`.
struct Started {
    memwarden: Child,
    dir: tempfile::TempDir,
    stderr: PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.memwarden.kill();
        let _ = self.memwarden.wait();
        for pid in self.tree_pids() {
            signal(pid, libc::SIGKILL);
        }
    }
}

impl Started {
    fn pid(&self) -> i32 {
        self.memwarden.id() as i32
    }

    fn tree_pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.path().join("pids.txt"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

fn signal(pid: i32, signo: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, signo);
    }
}

/// Running: listed in /proc and not a zombie (who reaps an orphan is up to init).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_owned));
        !matches!(state.as_deref(), Some("Z" | "X") | None)
    })
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

impl Drop for Scene {
    /// The runs' memwardens are dead by now (each [`Started`] kills its own); their guardians
    /// still finish the runs (cgroups, captures) from the journal, which must outlive them.
    fn drop(&mut self) {
        wait_until(Duration::from_secs(30), || self.journal_files().is_empty());
    }
}

impl Scene {
    fn new() -> Scene {
        let home = tempfile::tempdir().expect("tempdir");
        let ledger = home.path().join("ledger.sqlite");
        Scene { home, ledger }
    }

    fn memwarden(&self) -> Command {
        let mut command = util::memwarden();
        command
            .env("MEMWARDEN_HOME", self.home.path())
            .arg("--ledger")
            .arg(&self.ledger);
        command
    }

    /// Starts `memwarden run --profile --model m --version VERSION OPTIONS -- CMD` in a
    /// fresh directory holding the workload.
    fn start(&self, version: &str, options: &[&str], command: &[&str]) -> Started {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("workload.py"), WORKLOAD).expect("script");
        let stderr = dir.path().join("memwarden.stderr");
        let memwarden = self
            .memwarden()
            .args(["run", "--profile", "--model", "m", "--version", version])
            .args(options)
            .arg("--")
            .args(command)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("memwarden starts");
        Started {
            memwarden,
            dir,
            stderr,
        }
    }

    /// Starts the workload tree under bash (`python workload.py & sleep & wait`).
    fn start_tree(&self, version: &str, options: &[&str]) -> Started {
        let python = util::python();
        let started = self.start(
            version,
            options,
            &[
                "bash",
                "-c",
                r#""$0" workload.py pids.txt & sleep 120 & echo $! >> pids.txt; wait"#,
                python.to_str().expect("utf-8"),
            ],
        );
        let ready = wait_until(Duration::from_secs(30), || {
            started.tree_pids().len() >= TREE_PIDS
                && self
                    .journal_of(started.pid())
                    .is_some_and(|j| j["rss_peak"]["rss_bytes"].as_u64().unwrap_or(0) > 200 * MIB)
        });
        assert!(
            ready,
            "the tree did not start, or its peak never reached the journal: pids {:?}, journal {:?}, stderr {}",
            started.tree_pids(),
            self.journal_of(started.pid()),
            started.stderr()
        );
        // The journal is written every 200 ms: let it hold the tree's members.
        std::thread::sleep(Duration::from_millis(400));
        started
    }

    /// The journal of the run whose memwarden is `pid`.
    fn journal_of(&self, pid: i32) -> Option<Value> {
        std::fs::read_dir(self.home.path().join("journal"))
            .ok()?
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice::<Value>(&std::fs::read(e.path()).ok()?).ok())
            .find(|j| j["memwarden_pid"].as_i64() == Some(i64::from(pid)))
    }

    fn journal_files(&self) -> Vec<String> {
        std::fs::read_dir(self.home.path().join("journal"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn records(&self) -> Vec<Value> {
        let db = rusqlite::Connection::open(&self.ledger).expect("ledger");
        let mut statement = db
            .prepare("SELECT record FROM memwarden_runs ORDER BY seq")
            .expect("query");
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))
            .expect("rows");
        rows.map(|r| serde_json::from_str(&r.expect("row")).expect("record JSON"))
            .collect()
    }
}

/// What a journal says of a run's leftovers: its command's pid, cgroup, captures, guardian.
struct Leftovers {
    command_pid: i32,
    cgroup: Option<PathBuf>,
    captures: PathBuf,
    guardian: i32,
}

fn leftovers(journal: &Value) -> Leftovers {
    Leftovers {
        command_pid: journal["command_process"]["pid"]
            .as_i64()
            .expect("command pid in the journal") as i32,
        cgroup: journal["cgroup"]["dir"].as_str().map(PathBuf::from),
        captures: PathBuf::from(
            journal["capture"]["dir"]
                .as_str()
                .expect("capture dir in the journal"),
        ),
        guardian: journal["guardian_pid"].as_i64().expect("guardian pid") as i32,
    }
}

/// The record of an interrupted run holds its peak and the stacks of the allocating line.
fn assert_recorded_interrupted(record: &Value, killed: bool) {
    assert_eq!(record["interrupted"], "supervisor_killed", "{record:#}");
    if killed {
        assert_eq!(record["exit_signal"], 9, "killed by SIGKILL: {record:#}");
    } else {
        assert!(record["exit_signal"].is_null() && record["exit_code"].is_null());
    }
    let rss = record["peaks"]["rss_bytes"].as_u64().unwrap_or(0);
    assert!(rss > 200 * MIB, "the peak held before the death: {rss}");
    let heap = record["peaks"]["heap_bytes"].as_u64().unwrap_or(0);
    assert!(heap > 150 * MIB, "the profiled heap: {heap}");
    let line = util::line_of(WORKLOAD, "alloc");
    let found = record["top_stacks_at_peak"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|entry| entry["stack"].as_array().into_iter().flatten())
        .any(|frame| {
            frame["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("workload.py"))
                && frame["line"].as_u64() == Some(line)
        });
    assert!(
        found,
        "the allocating line {line} is among the stacks at the peak: {:#}",
        record["top_stacks_at_peak"]
    );
    let report = record["report_path"].as_str().expect("a report path");
    let report: Value =
        serde_json::from_slice(&std::fs::read(report).expect("the report is kept")).expect("JSON");
    assert_eq!(report["exit"]["interrupted"], "supervisor_killed");
    assert!(
        report["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("died") && w.contains("journal")),
        "{:#}",
        report["warnings"]
    );
}

fn kill_memwarden_and_check(cgroup: &str) {
    let scene = Scene::new();
    let mut started = scene.start_tree("1", &["--cgroup", cgroup]);
    let journal = scene.journal_of(started.pid()).expect("journal");
    let left = leftovers(&journal);
    match (&left.cgroup, cgroup) {
        (Some(dir), "auto") => assert!(dir.is_dir(), "{}", dir.display()),
        (None, "auto") => panic!(
            "this test needs a memory cgroup memwarden can create (root, as CI has): {journal:#}"
        ),
        (Some(_), _) => panic!("--cgroup off made a cgroup: {journal:#}"),
        (None, _) => {}
    }
    assert!(left.captures.is_dir());
    let mut tree = started.tree_pids();
    tree.push(left.command_pid);
    assert!(tree.iter().all(|&pid| alive(pid)), "{tree:?}");

    started.memwarden.kill().expect("kill -9");
    let killed_at = Instant::now();
    started.memwarden.wait().expect("reaped");
    let gone = wait_until(Duration::from_secs(3), || !tree.iter().any(|&p| alive(p)));
    let took = killed_at.elapsed();
    assert!(
        gone,
        "still running: {:?}",
        tree.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );
    assert!(
        took < Duration::from_secs(1),
        "the tree took {took:?} to go"
    );

    assert!(
        wait_until(Duration::from_secs(60), || !alive(left.guardian)),
        "the guardian finishes"
    );
    let records = scene.records();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_recorded_interrupted(&records[0], true);
    if let Some(dir) = &left.cgroup {
        assert!(
            !dir.exists(),
            "the run's cgroup is removed: {}",
            dir.display()
        );
    }
    assert!(!left.captures.exists(), "the captures are removed");
    assert_eq!(
        scene.journal_files(),
        Vec::<String>::new(),
        "the journal is removed"
    );
    let said = started.stderr();
    assert!(
        said.contains("died during the run") && said.contains("supervisor_killed"),
        "the guardian says what it did: {said}"
    );
    let verify = scene
        .memwarden()
        .args(["ledger", "verify"])
        .output()
        .expect("verify");
    assert!(verify.status.success(), "{verify:?}");
}

#[test]
fn kill_9_of_memwarden_takes_the_tree_down_within_a_second_and_the_run_is_recorded() {
    kill_memwarden_and_check("auto");
}

#[test]
fn without_a_cgroup_the_tree_is_found_by_parentage_and_the_run_id_in_its_environment() {
    kill_memwarden_and_check("off");
}

#[test]
fn when_the_guardian_dies_too_ledger_sync_finishes_the_run_and_leaves_a_live_one_alone() {
    let scene = Scene::new();
    let mut dead = scene.start_tree("1", &[]);
    let left = leftovers(&scene.journal_of(dead.pid()).expect("journal"));
    let python = util::python();
    let live = scene.start(
        "2",
        &[],
        &[
            python.to_str().expect("utf-8"),
            "-c",
            "import numpy, time; a = numpy.ones(50 << 17); time.sleep(10)",
        ],
    );
    let live_journal = {
        let mut found = None;
        assert!(
            wait_until(Duration::from_secs(20), || {
                found = scene
                    .journal_of(live.pid())
                    .filter(|j| j["command_process"]["pid"].is_i64());
                found.is_some()
            }),
            "the concurrent run starts: {}",
            live.stderr()
        );
        found.expect("journal")
    };
    let live_left = leftovers(&live_journal);
    let live_cgroup = live_left
        .cgroup
        .clone()
        .expect("this test needs a memory cgroup memwarden can create (root, as CI has)");

    signal(left.guardian, libc::SIGKILL);
    assert!(wait_until(Duration::from_secs(2), || !alive(left.guardian)));
    dead.memwarden.kill().expect("kill -9");
    dead.memwarden.wait().expect("reaped");
    let mut tree = dead.tree_pids();
    tree.push(left.command_pid);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        tree.iter().all(|&p| alive(p)),
        "with its guardian gone too, nothing has killed the tree yet"
    );

    let sync = scene
        .memwarden()
        .args(["ledger", "sync"])
        .output()
        .expect("sync");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&sync.stdout),
        String::from_utf8_lossy(&sync.stderr)
    );
    assert!(sync.status.success(), "{said}");
    assert!(said.contains("died during the run"), "{said}");
    assert!(
        wait_until(Duration::from_secs(1), || !tree.iter().any(|&p| alive(p))),
        "sync killed the dead run's tree"
    );
    let records = scene.records();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_recorded_interrupted(&records[0], true);
    assert!(
        records[0]["peaks"]["cgroup_bytes"].as_u64().unwrap_or(0) > 200 * MIB,
        "the cgroup's own high-water mark, read back: {:#}",
        records[0]["peaks"]
    );
    assert!(!left.cgroup.expect("cgroup").exists());
    assert!(!left.captures.exists());

    // The concurrent run: untouched, and it finishes as usual.
    assert!(
        alive(live_left.command_pid),
        "the live run's command still runs"
    );
    assert!(live_cgroup.is_dir(), "its cgroup is still there");
    assert!(live_left.captures.is_dir(), "its captures are still there");
    assert!(
        scene.journal_of(live.pid()).is_some(),
        "its journal is still there"
    );
    let mut live = live;
    let status = live.memwarden.wait().expect("the live run ends");
    assert!(status.success(), "{}", live.stderr());
    let records = scene.records();
    assert_eq!(records.len(), 2, "{records:#?}");
    assert!(records[1].get("interrupted").is_none(), "{:#}", records[1]);
    assert!(!live_cgroup.exists() && !live_left.captures.exists());
    assert_eq!(scene.journal_files(), Vec::<String>::new());
}

#[test]
fn with_survive_memwarden_the_tree_outlives_memwarden_and_the_run_is_still_recorded() {
    let scene = Scene::new();
    let mut started = scene.start_tree("1", &["--survive-memwarden"]);
    let left = leftovers(&scene.journal_of(started.pid()).expect("journal"));
    let mut tree = started.tree_pids();
    tree.push(left.command_pid);
    started.memwarden.kill().expect("kill -9");
    started.memwarden.wait().expect("reaped");
    assert!(
        wait_until(Duration::from_secs(60), || !alive(left.guardian)),
        "the guardian finishes"
    );
    std::thread::sleep(Duration::from_millis(500));
    let running: Vec<i32> = tree.iter().copied().filter(|&p| alive(p)).collect();
    assert_eq!(running, tree, "the whole tree survives");
    let records = scene.records();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_recorded_interrupted(&records[0], false);
    if let Some(dir) = &left.cgroup {
        assert!(
            !dir.exists(),
            "the cgroup is removed, its processes moved out"
        );
    }
    for pid in tree {
        signal(pid, libc::SIGKILL);
    }
}

#[test]
fn a_run_that_ends_normally_leaves_no_journal_and_its_guardian_exits() {
    let scene = Scene::new();
    let started = scene.start("1", &[], &["sleep", "1"]);
    let mut journal = None;
    assert!(wait_until(Duration::from_secs(10), || {
        journal = scene
            .journal_of(started.pid())
            .filter(|j| j["guardian_pid"].is_i64());
        journal.is_some()
    }));
    let journal = journal.expect("journal");
    let guardian = journal["guardian_pid"].as_i64().expect("guardian") as i32;
    assert!(alive(guardian));
    let mut started = started;
    assert!(
        started.memwarden.wait().expect("ends").success(),
        "{}",
        started.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(1), || !alive(guardian)),
        "the guardian exits"
    );
    assert_eq!(scene.journal_files(), Vec::<String>::new());
    let records = scene.records();
    assert_eq!(records.len(), 1);
    assert!(records[0].get("interrupted").is_none());
}
