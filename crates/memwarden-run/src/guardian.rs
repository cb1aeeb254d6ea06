//! The guardian: a small process that outlives memwarden and, when memwarden dies during a
//! run, kills what is left of the run and records it.
//!
//! memwarden starts it before the command, by running its own executable
//! (`/proc/self/exe __guardian LOCK`) with the read end of a pipe as standard input; only
//! memwarden holds the write end (close-on-exec, so the command never inherits it). The
//! guardian forks once more and the middle process exits, so the guardian is nobody's
//! child that memwarden waits for and never part of the sampled tree. It starts a session
//! of its own (a signal to memwarden's process group does not reach it), names itself
//! `memwarden-guard`, ignores SIGINT, SIGTERM, SIGHUP and SIGQUIT, asks the OOM killer to
//! spare it (`oom_score_adj` -1000, where allowed), and blocks reading the pipe. It is not
//! in the run's cgroup.
//!
//! The read returns end-of-file when memwarden has exited, however it exited. When the run
//! finished normally memwarden removed the journal first, and the guardian exits. Otherwise
//! memwarden died: the guardian takes the journal's lock (which proves it) and recovers the
//! run ([`super::recover`]): kills the tree (unless `--survive-memwarden`), records the run
//! as `supervisor_killed` with its figures and stacks, and removes the cgroup and captures.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, BufRead};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memwarden_monitor::{cgroup, procfs};

use super::journal::{Journal, RUN_ID_VARIABLE};
use crate::{RunError, RunErrorKind};

/// The hidden subcommand that runs the guardian.
pub const SUBCOMMAND: &str = "__guardian";

/// The running guardian, as memwarden holds it: dropping this (or memwarden's death)
/// closes the pipe, and the guardian looks at the journal.
#[derive(Debug)]
pub struct Guardian {
    _pipe: OwnedFd,
    /// Its pid.
    pub pid: i32,
}

/// Starts the guardian of the run whose journal lock is `lock_path`; `ledger`: the
/// `--ledger` given to memwarden, passed on in the environment (not on the command line,
/// where other users could read a password).
#[allow(unsafe_code)]
pub fn spawn(lock_path: &Path, ledger: Option<&str>) -> io::Result<Guardian> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut command = Command::new("/proc/self/exe");
    command
        .arg(SUBCOMMAND)
        .arg(lock_path)
        .stdin(Stdio::from(read_end))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(ledger) = ledger {
        command.env("MEMWARDEN_LEDGER", ledger);
    }
    let mut middle = command.spawn()?;
    // The middle process prints the guardian's pid, then exits.
    let mut line = String::new();
    if let Some(stdout) = middle.stdout.take() {
        io::BufReader::new(stdout).read_line(&mut line)?;
    }
    let status = middle.wait()?;
    let pid = line.trim().parse::<i32>().ok().filter(|_| status.success());
    match pid {
        Some(pid) => Ok(Guardian {
            _pipe: write_end,
            pid,
        }),
        None => Err(io::Error::other(format!(
            "the guardian did not start ({status})"
        ))),
    }
}

/// `memwarden __guardian LOCK`: see the module documentation. Returns at once in the
/// middle process, after the run in the guardian.
#[allow(unsafe_code)]
pub fn main(lock_path: &Path, ledger: Option<&str>) -> Result<(), RunError> {
    // SAFETY: the process is single-threaded here (nothing has started a thread), so the
    // child may run any code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(RunError::new(
            RunErrorKind::Internal,
            format!("cannot start the guardian: {}", io::Error::last_os_error()),
        ));
    }
    if pid > 0 {
        println!("{pid}");
        return Ok(());
    }
    // The guardian. Its standard output is memwarden's pipe: let it go.
    if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto descriptor 1, which this process owns; `null` stays valid.
        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1) };
    }
    // SAFETY: setsid, prctl(PR_SET_NAME) with a NUL-terminated name, and signal with
    // SIG_IGN have no memory-safety preconditions.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_NAME, c"memwarden-guard".as_ptr(), 0, 0, 0);
        for signo in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(signo, libc::SIG_IGN);
        }
    }
    set_oom_score_adj("-1000");
    wait_for_end_of_file();
    // What the guardian starts now (the Python that names the environment for the
    // record) must not inherit the OOM killer's favour.
    set_oom_score_adj("0");
    // A normal end removed the journal before closing the pipe; otherwise memwarden died.
    if !lock_path.exists() {
        return Ok(());
    }
    let location = memwarden_ledger::LedgerLocation::resolve(ledger).ok();
    // memwarden's files are closed as it exits, the pipe perhaps before the lock.
    let Some(dead) = super::journal::DeadRun::lock(lock_path, Duration::from_secs(2)) else {
        return Ok(());
    };
    for line in super::recover::recover(dead, location.as_ref(), true) {
        eprintln!("memwarden: {line}");
    }
    Ok(())
}

fn set_oom_score_adj(value: &str) {
    let _ = fs::write("/proc/self/oom_score_adj", value);
}

/// Blocks until standard input (memwarden's pipe) reads end-of-file.
#[allow(unsafe_code)]
fn wait_for_end_of_file() {
    let mut byte = [0u8; 64];
    loop {
        // SAFETY: reads at most `byte.len()` bytes into `byte`.
        let read = unsafe { libc::read(0, byte.as_mut_ptr().cast(), byte.len()) };
        if read == 0 {
            return;
        }
        if read < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// A process as `/proc` shows it.
#[derive(Debug, Clone, Copy)]
struct Proc {
    ppid: i32,
    start_ticks: u64,
    running: bool,
}

/// Every process, by pid.
fn processes() -> HashMap<i32, Proc> {
    let mut all = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return all;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(stat) = procfs::parse_stat(&text) else {
            continue;
        };
        let Some(start_ticks) = stat.start_ticks else {
            continue;
        };
        all.insert(
            pid,
            Proc {
                ppid: stat.ppid,
                start_ticks,
                running: stat.running(),
            },
        );
    }
    all
}

/// Whether `pid`'s environment holds `entry` (`NAME=value`).
fn environment_holds(pid: i32, entry: &[u8]) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|environ| environ.split(|&b| b == 0).any(|e| e == entry))
}

/// The run's processes running now: its cgroup's, those the journal lists (same pid and
/// start time), those whose environment carries the run's id, and every descendant of
/// these. Never this process.
fn run_members(journal: &Journal) -> HashSet<i32> {
    let me = std::process::id() as i32;
    let all = processes();
    let mut members = HashSet::new();
    if let Some(cgroup) = &journal.cgroup {
        members.extend(cgroup::pids_in(&cgroup.dir));
    }
    for member in journal.members.iter().chain(&journal.command_process) {
        if all
            .get(&member.pid)
            .is_some_and(|p| p.start_ticks == member.start_ticks)
        {
            members.insert(member.pid);
        }
    }
    let marker = format!("{RUN_ID_VARIABLE}={}", journal.run_id).into_bytes();
    for (&pid, process) in &all {
        if process.running && pid != me && environment_holds(pid, &marker) {
            members.insert(pid);
        }
    }
    loop {
        let before = members.len();
        for (&pid, process) in &all {
            if members.contains(&process.ppid) {
                members.insert(pid);
            }
        }
        if members.len() == before {
            break;
        }
    }
    members.retain(|pid| *pid != me && all.get(pid).is_some_and(|p| p.running));
    members
}

/// Kills every process of the run (see `run_members`), stopping each before killing it so
/// that none can fork meanwhile, round after round until none is left (or 5 s have
/// passed). On cgroup v2, `cgroup.kill` kills the cgroup at once. Returns how many
/// processes were killed.
#[allow(unsafe_code)]
pub fn kill_run(journal: &Journal) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut killed = HashSet::new();
    loop {
        if let Some(cgroup) = journal.cgroup.as_ref().filter(|c| c.version == 2) {
            let _ = fs::write(cgroup.dir.join("cgroup.kill"), "1");
        }
        let members = run_members(journal);
        if members.is_empty() || Instant::now() >= deadline {
            return killed.len();
        }
        for &pid in &members {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
        for &pid in &members {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
