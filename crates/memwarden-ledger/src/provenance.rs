//! What a record says about where a run happened: the machine, the Python environment, the
//! code's git state and the inputs' content hashes.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::record::{GitState, Host, InputHash, PythonEnv};

/// A new run id: the start time in milliseconds (hex, so ids sort by time) and 32 bits of
/// hash of the time, the pid and the host, for uniqueness across machines.
pub fn new_run_id(started: SystemTime) -> String {
    let since = started.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&since.as_nanos().to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(hostname().as_bytes());
    let tail = &hasher.finalize().to_hex()[..8];
    format!("{:011x}-{tail}", since.as_millis())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The machine this process runs on.
pub fn host(memory_total_bytes: u64) -> Host {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    Host {
        hostname: hostname(),
        kernel,
        cpu_model,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_total_bytes,
    }
}

/// Runs `program` with a time limit; its stdout when it succeeded.
fn output_of(program: &Path, args: &[&str], cwd: &Path, limit: Duration) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let mut text = String::new();
    io::Read::read_to_string(&mut child.stdout.take()?, &mut text).ok()?;
    Some(text)
}

/// The git state of `dir`, when it is inside a work tree and git is installed.
pub fn git_state(dir: &Path) -> Option<GitState> {
    let git = Path::new("git");
    let commit = output_of(git, &["rev-parse", "HEAD"], dir, Duration::from_secs(10))?
        .trim()
        .to_owned();
    let status = output_of(
        git,
        &["status", "--porcelain"],
        dir,
        Duration::from_secs(30),
    )?;
    Some(GitState {
        commit,
        dirty: !status.trim().is_empty(),
    })
}

const PYTHON_PROBE: &str = "import sys\n\
try:\n    import importlib.metadata as m\n    dists = [f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions()]\n\
except Exception:\n    dists = []\n\
print(sys.executable)\nprint(sys.version.split()[0])\nfor d in sorted(set(dists), key=str.lower):\n    print(d)\n";

/// The interpreter a command runs, when it is a Python command (`python`, `python3.11`,
/// a venv's `bin/python`), resolved through `PATH`.
pub fn python_of(command: &[String]) -> Option<PathBuf> {
    let program = command.first()?;
    let name = Path::new(program).file_name()?.to_str()?;
    let is_python = name
        .strip_prefix("python")
        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == '.'));
    if !is_python {
        return None;
    }
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// The Python environment of `python`: version and a hash of its installed distributions.
pub fn python_env(python: &Path, cwd: &Path) -> Option<PythonEnv> {
    let text = output_of(python, &["-c", PYTHON_PROBE], cwd, Duration::from_secs(30))?;
    let mut lines = text.lines();
    let executable = lines.next()?.to_owned();
    let version = lines.next()?.to_owned();
    let packages: Vec<&str> = lines.collect();
    let mut hasher = blake3::Hasher::new();
    for line in &packages {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    Some(PythonEnv {
        executable,
        version,
        packages_blake3: hasher.finalize().to_hex().to_string(),
        packages: packages.len() as u32,
    })
}

/// BLAKE3 of an input: a file's content, or a directory's sorted relative paths and file
/// hashes.
pub fn hash_input(path: &Path) -> io::Result<InputHash> {
    let metadata = std::fs::metadata(path)?;
    if metadata.is_file() {
        let (hash, bytes) = hash_file(path)?;
        return Ok(InputHash {
            path: path.display().to_string(),
            blake3: hash,
            bytes,
        });
    }
    let mut files = Vec::new();
    collect_files(path, path, &mut files)?;
    files.sort();
    let mut hasher = blake3::Hasher::new();
    let mut total = 0;
    for relative in files {
        let (hash, bytes) = hash_file(&path.join(&relative))?;
        total += bytes;
        hasher.update(relative.to_string_lossy().as_bytes());
        hasher.update(b"\0");
        hasher.update(hash.as_bytes());
        hasher.update(b"\n");
    }
    Ok(InputHash {
        path: path.display().to_string(),
        blake3: hasher.finalize().to_hex().to_string(),
        bytes: total,
    })
}

fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    let bytes = io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok((hasher.finalize().to_hex().to_string(), bytes))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(root, &entry.path(), out)?;
        } else if kind.is_file() {
            out.push(
                entry
                    .path()
                    .strip_prefix(root)
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|_| entry.path()),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_time_and_differ() {
        let a = new_run_id(UNIX_EPOCH + Duration::from_secs(1_000));
        let b = new_run_id(UNIX_EPOCH + Duration::from_secs(2_000));
        assert!(a < b, "{a} {b}");
        assert_ne!(
            new_run_id(SystemTime::now()),
            new_run_id(SystemTime::now() + Duration::from_nanos(1))
        );
    }

    #[test]
    fn inputs_hash_by_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("d")).expect("mkdir");
        std::fs::write(dir.path().join("d/a.bin"), b"hello").expect("w");
        std::fs::write(dir.path().join("d/b.bin"), b"world").expect("w");
        let file = hash_input(&dir.path().join("d/a.bin")).expect("file");
        assert_eq!(file.blake3, blake3::hash(b"hello").to_hex().to_string());
        assert_eq!(file.bytes, 5);
        let before = hash_input(&dir.path().join("d")).expect("dir");
        assert_eq!(before.bytes, 10);
        std::fs::write(dir.path().join("d/b.bin"), b"World").expect("w");
        assert_ne!(
            hash_input(&dir.path().join("d")).expect("dir").blake3,
            before.blake3
        );
        assert!(hash_input(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn python_commands_are_recognised() {
        let cmd = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            python_of(&cmd(&["/opt/venv/bin/python3.11", "x.py"])),
            Some(PathBuf::from("/opt/venv/bin/python3.11"))
        );
        assert_eq!(python_of(&cmd(&["sh", "-c", "python x.py"])), None);
        assert_eq!(python_of(&cmd(&["pythonic"])), None);
    }

    #[test]
    fn host_and_git_are_read_from_the_live_system() {
        let host = host(1);
        assert!(!host.kernel.is_empty() && host.cpus >= 1);
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        if let Some(state) = git_state(repo) {
            assert_eq!(state.commit.len(), 40, "{state:?}");
        } else {
            eprintln!(
                "SKIPPED git part: no git work tree around {}",
                repo.display()
            );
        }
        assert_eq!(git_state(Path::new("/")), None);
    }
}
