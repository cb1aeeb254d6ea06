//! `memwarden run --profile`: inject the preload library, then turn its captures into the
//! report's `profile` section.

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use memwarden_format::report::{PeakSource, ProcessReport, ProfileMode, Report};
use memwarden_format::tree::{self, ExitMark, TreeHeap};
use memwarden_format::units::{format_size, parse_size};
use memwarden_report::profile;
use memwarden_report::tree::TreeWatch;

use super::report::UNMEASURED_RSS;
use super::tree_heap::{process_start, SharedTree};

/// The library's file name, as cargo builds it.
const LIBRARY: &str = "libmemwarden_preload.so";

/// Where captures go: a temporary directory, or the user's `--capture-dir`.
#[derive(Debug)]
enum CaptureDir {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

/// A validated `--profile`.
#[derive(Debug)]
pub struct Profiling {
    mode: ProfileMode,
    sample_bytes: u64,
    preload: PathBuf,
    dir: CaptureDir,
    /// `--folded`, opened before the command starts.
    folded: Option<(PathBuf, File)>,
    /// `--raw-frames`.
    frames: profile::Frames,
    /// The counter of the tree's heap every profiled process adds to; `Err` says why there
    /// is none (the tree's peak is then the sum of each process's).
    tree: Result<SharedTree, String>,
    /// The captures, read at every monitor tick.
    watch: TreeWatch,
}

/// Finds the preload library: `MEMWARDEN_PRELOAD`, else next to this executable, else in
/// `../lib/memwarden/` beside it (an installed layout).
fn find_preload() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("MEMWARDEN_PRELOAD") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "MEMWARDEN_PRELOAD={} is not a file; point it at {LIBRARY} or unset it",
                path.display()
            ))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot locate the memwarden executable: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join(LIBRARY),
        dir.join("../lib/memwarden").join(LIBRARY),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "--profile needs {LIBRARY}, which is not next to {} nor in ../lib/memwarden; build it with `cargo build --release -p memwarden-preload` or set MEMWARDEN_PRELOAD",
                exe.display()
            )
        })
}

/// Whether the dynamic loader would cut `path` apart: LD_PRELOAD separates its libraries
/// with spaces and colons, and has no quoting.
fn splits_ld_preload(path: &Path) -> bool {
    path.as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b' ' | b':'))
}

/// The path to preload `library` by: the library's own, or, when that holds a space or a
/// colon (a virtual environment under "My Projects"), a symbolic link to it in `links`, a
/// directory of this user's alone (made when missing). The link is named by the library's
/// device and inode, so that each installed library has its own and later runs reuse it;
/// one that points elsewhere (an inode reused) is replaced.
fn preloadable(library: &Path, links: &Path) -> Result<PathBuf, String> {
    if !splits_ld_preload(library) {
        return Ok(library.to_owned());
    }
    let fail = |e: std::io::Error| {
        format!(
            "the preload library's path {} holds a space or a colon, which LD_PRELOAD cannot carry, and a link to it cannot be made in {}: {e}; set MEMWARDEN_PRELOAD to a copy of it at a path without either",
            library.display(),
            links.display()
        )
    };
    if splits_ld_preload(links) {
        return Err(fail(std::io::Error::other("that path holds one too")));
    }
    // The link's target must not depend on the directory it is read from.
    let library = fs::canonicalize(library).map_err(fail)?;
    let identity = fs::metadata(&library).map_err(fail)?;
    create_private_dir(links).map_err(fail)?;
    let name = format!(
        "libmemwarden_preload-{}-{}.so",
        identity.dev(),
        identity.ino()
    );
    let link = links.join(&name);
    if fs::read_link(&link).is_ok_and(|target| target == library) {
        return Ok(link);
    }
    // Made aside and renamed into place: a run starting at the same moment sees the old
    // link or the new one, never none.
    let temporary = links.join(format!(".{name}.{}", std::process::id()));
    let _ = fs::remove_file(&temporary);
    std::os::unix::fs::symlink(&library, &temporary).map_err(fail)?;
    fs::rename(&temporary, &link).map_err(fail)?;
    Ok(link)
}

/// The path to put in `LD_PRELOAD` for `library` ([`preloadable`], links in
/// [`link_dir`]): for `memwarden run --profile`, and for the Python package when it starts
/// an interpreter under the profiler itself (its pytest plugin, its kernels).
pub fn preload_path(library: &Path) -> Result<PathBuf, String> {
    preloadable(library, &link_dir())
}

/// Where [`preloadable`] puts its links: `memwarden-UID` in `$XDG_RUNTIME_DIR` (the user's
/// own tmpfs), else in the temporary directory, else in /tmp; the first that LD_PRELOAD
/// can carry.
fn link_dir() -> PathBuf {
    let name = format!("memwarden-{}", current_uid());
    let bases = [
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        Some(std::env::temp_dir()),
    ];
    bases
        .into_iter()
        .flatten()
        .filter(|base| base.is_absolute())
        .map(|base| base.join(&name))
        .find(|dir| !splits_ld_preload(dir))
        .unwrap_or_else(|| Path::new("/tmp").join(name))
}

/// This process's effective user id.
fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid()
    }
}

/// Creates `dir` for this user alone, and refuses one in a shared place (/tmp) that is a
/// link or another user's: whoever can write there could swap the library every profiled
/// process loads.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != current_uid() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory of this user's",
            dir.display()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Makes sure captures can be written in `dir` before the command starts.
fn check_writable(dir: &Path) -> Result<(), String> {
    let fail = |e: std::io::Error| {
        format!(
            "--capture-dir {}: cannot write captures there ({e}); choose a writable directory",
            dir.display()
        )
    };
    fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".memwarden-write-test");
    fs::write(&probe, b"").map_err(fail)?;
    let _ = fs::remove_file(probe);
    Ok(())
}

impl Profiling {
    /// Validates the profiling options; the error is a sentence for the user.
    pub fn from_args(
        mode: ProfileMode,
        sample_bytes: Option<&str>,
        capture_dir: Option<PathBuf>,
        folded: Option<PathBuf>,
        raw_frames: bool,
    ) -> Result<Profiling, String> {
        let sample_bytes = match sample_bytes {
            None => 512 << 10,
            Some(text) => {
                let bytes = parse_size(text).map_err(|e| format!("--sample-bytes: {e}"))?;
                if !(1..=(1 << 40)).contains(&bytes) {
                    return Err(
                        "--sample-bytes: choose between 1 B and 1 TiB (default 512KiB)".into(),
                    );
                }
                bytes
            }
        };
        let preload = preload_path(&find_preload()?)?;
        let dir = match capture_dir {
            Some(dir) => {
                check_writable(&dir)?;
                let dir = fs::canonicalize(&dir)
                    .map_err(|e| format!("--capture-dir {}: {e}", dir.display()))?;
                // Captures of an earlier run in the same directory would be merged into this one.
                let old = profile::capture_files(&dir)
                    .map_err(|e| format!("--capture-dir {}: {e}", dir.display()))?;
                for capture in old {
                    let _ = fs::remove_file(capture);
                }
                CaptureDir::Kept(dir)
            }
            None => {
                // tmpfs when there is one: creating and growing a capture there costs no
                // journal work, which a command starting many short processes would feel.
                let builder = tempfile::Builder::new()
                    .prefix("memwarden-capture-")
                    .clone();
                let directory = builder
                    .tempdir_in("/dev/shm")
                    .or_else(|_| builder.tempdir())
                    .map_err(|e| format!("cannot create a temporary directory for captures: {e}; set TMPDIR or give --capture-dir"))?;
                CaptureDir::Temporary(directory)
            }
        };
        let dir_path = match &dir {
            CaptureDir::Temporary(dir) => dir.path().to_owned(),
            CaptureDir::Kept(dir) => dir.clone(),
        };
        let tree = SharedTree::create(&dir_path).map_err(|e| {
            format!(
                "cannot create the tree's heap counter in {}: {e}",
                dir_path.display()
            )
        });
        let folded = folded
            .map(|path| {
                File::create(&path)
                    .map(|file| (path.clone(), file))
                    .map_err(|e| format!("--folded {}: cannot write: {e}", path.display()))
            })
            .transpose()?;
        Ok(Profiling {
            mode,
            sample_bytes,
            preload,
            dir,
            folded,
            frames: profile::Frames::raw_if(raw_frames),
            tree,
            watch: TreeWatch::new(&dir_path),
        })
    }

    /// One monitor tick: reads the captures of the processes running now (their heap and
    /// stacks, for the timeline and the stacks at the tree's peak), and takes the share of
    /// each process that ended without doing so (killed by a signal, replaced by `exec`)
    /// out of the tree's counter.
    pub fn tick(&mut self) {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let figures = self.tree.as_ref().ok().map(SharedTree::figures);
        let ended = self
            .watch
            .tick(now_ns, figures.as_ref(), &mut |pid| process_start(pid));
        if let Ok(tree) = &self.tree {
            for capture in ended {
                // A capture that cannot be opened any more leaves its share counted: the
                // tree's later peaks may then be high by that much.
                let _ = tree.withdraw(&capture);
            }
        }
    }

    /// `--capture-dir`: the folder the captures are kept in after the run.
    pub fn kept_dir(&self) -> Option<&Path> {
        match &self.dir {
            CaptureDir::Temporary(_) => None,
            CaptureDir::Kept(dir) => Some(dir),
        }
    }

    fn dir(&self) -> &Path {
        match &self.dir {
            CaptureDir::Temporary(dir) => dir.path(),
            CaptureDir::Kept(dir) => dir,
        }
    }

    /// Environment for the command (and so for every process it starts).
    pub fn environment(&self) -> Vec<(OsString, OsString)> {
        let mut preload = self.preload.clone().into_os_string();
        if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
            preload.push(" ");
            preload.push(existing);
        }
        let mode = match self.mode {
            ProfileMode::Sampled => "sampled",
            ProfileMode::Exact => "exact",
        };
        vec![
            ("LD_PRELOAD".into(), preload),
            ("MEMWARDEN_CAPTURE_DIR".into(), self.dir().into()),
            ("MEMWARDEN_PROFILE_MODE".into(), mode.into()),
            (
                "MEMWARDEN_SAMPLE_BYTES".into(),
                self.sample_bytes.to_string().into(),
            ),
        ]
    }

    /// Reads the captures into `report` (its `profile`, each process's `profile`, the heap
    /// peak), gives each process the high-water mark it wrote as it ended, and writes
    /// `--folded`. Problems become report warnings: a run's report is never lost to one bad
    /// capture.
    pub fn finish(mut self, report: &mut Report, started_at: SystemTime) {
        // A last look: processes that ended since the last tick.
        self.tick();
        if let Err(why) = &self.tree {
            report.warnings.push(format!(
                "profile: {why}; the tree's heap peak is the sum of each process's own peak"
            ));
        }
        let start_ns = started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let exits = match TreeHeap::read_dir(self.dir()) {
            Ok(Some((heap, marks))) => Some((heap, marks)),
            Ok(None) => None,
            Err(e) => {
                report.warnings.push(format!("profile: {e}"));
                None
            }
        };
        self.attach_profile(report, start_ns, exits.as_ref().map(|(heap, _)| heap));
        if let Some((heap, marks)) = &exits {
            apply_exit_marks(report, marks, start_ns);
            if heap.exits > tree::EXIT_SLOTS {
                report.warnings.push(format!(
                    "profile: {} processes ended after the first {} and their own peak RSS was not kept",
                    heap.exits - tree::EXIT_SLOTS,
                    tree::EXIT_SLOTS
                ));
            }
        }
        warn_of_unseen_memory(report);
    }

    /// The captures' part of [`Profiling::finish`]; `heap`: the tree counter as the
    /// processes left it.
    fn attach_profile(&mut self, report: &mut Report, start_ns: u64, heap: Option<&TreeHeap>) {
        let (captures, errors) = match profile::read_dir(self.dir()) {
            Ok(read) => read,
            Err(e) => {
                report.warnings.push(format!(
                    "cannot read the captures in {}: {e}; no profile",
                    self.dir().display()
                ));
                return;
            }
        };
        for error in errors {
            report.warnings.push(format!("profile: {error}"));
        }
        if captures.is_empty() {
            // A process opens its capture at its first recorded allocation, so a run of
            // small programs in sampled mode may leave none; the tree counter says whether
            // the profiler was loaded at all.
            let loaded = heap.map_or_else(
                || profile::capture_files(self.dir()).is_ok_and(|files| !files.is_empty()),
                |heap| heap.loaded > 0,
            );
            report.warnings.push(if !loaded {
                "profile: no process loaded the profiler (a static executable, or LD_PRELOAD removed from the environment?)".to_owned()
            } else if self.mode == ProfileMode::Sampled {
                format!(
                    "profile: no allocation was sampled: the command allocated less than the sampling interval ({} on average); --profile=exact records every allocation",
                    format_size(self.sample_bytes)
                )
            } else {
                "profile: the command made no allocation the profiler could record".to_owned()
            });
            return;
        }
        for capture in &captures {
            if capture.warning != memwarden_format::capture::Warning::None {
                report
                    .warnings
                    .push(format!("profile: pid {}: {}", capture.pid, capture.warning));
            }
        }
        let mut analysis = profile::analyze(
            &captures,
            self.mode,
            self.sample_bytes,
            start_ns,
            self.frames,
        );
        let figures = self.tree.as_ref().ok().map(SharedTree::figures);
        self.watch.apply(
            &mut analysis,
            &captures,
            figures.as_ref(),
            self.frames,
            start_ns,
        );
        analysis.finish();
        if analysis.profile.dropped_allocations > 0 {
            report.warnings.push(format!(
                "profile: {} allocations could not be tracked (tables full); figures are low by that much",
                analysis.profile.dropped_allocations
            ));
        }
        for (pid, process_profile) in analysis.processes {
            let pid = pid as i32;
            match report.processes.iter_mut().find(|p| p.pid == pid) {
                Some(process) => process.profile = Some(process_profile),
                None => {
                    // Too short-lived for the monitor to see; its capture still counts.
                    report
                        .processes
                        .push(profiled_process(pid as u32, &captures, process_profile));
                }
            }
        }
        report.peak.heap_bytes = Some(analysis.profile.peak_bytes);
        if let Some((path, mut file)) = self.folded.take() {
            use std::io::Write;
            let text = memwarden_report::export::folded(&analysis.all_at_peak);
            if let Err(e) = file.write_all(text.as_bytes()) {
                report
                    .warnings
                    .push(format!("--folded {}: {e}", path.display()));
            }
        }
        report.profile = Some(analysis.profile);
    }
}

/// A process known only from its captures (too short-lived for the monitor to see, or
/// recovered after memwarden died): its identity as the capture gives it, its profile, and
/// no peak RSS until an exit record gives one.
pub(super) fn profiled_process(
    pid: u32,
    captures: &[memwarden_format::capture::Capture],
    profile: memwarden_format::report::ProcessProfile,
) -> ProcessReport {
    let capture = captures.iter().find(|c| c.pid == pid);
    ProcessReport {
        pid: pid as i32,
        ppid: capture.map_or(0, |c| c.ppid as i32),
        cmdline: capture.and_then(|c| c.exe.clone()).into_iter().collect(),
        peak_rss_unmeasured: Some(UNMEASURED_RSS.to_owned()),
        profile: Some(profile),
        ..ProcessReport::default()
    }
}

/// Gives each process the high-water mark of its resident set it wrote as it ended
/// (`VmHWM`, a kernel figure), where that is higher than what the monitor had (or the
/// monitor had nothing): the processes too short for the monitor, and those that grew
/// after its last reading. A process the report does not list yet (no reading, no capture)
/// is added with what is known of it. A pid seen more than once (reused) goes to the
/// process seen last before the mark was written.
fn apply_exit_marks(report: &mut Report, marks: &[ExitMark], start_ns: u64) {
    for mark in marks {
        let ended_s = mark.end_ns.saturating_sub(start_ns) as f64 / 1e9;
        let pid = mark.pid as i32;
        let index = report
            .processes
            .iter()
            .enumerate()
            .filter(|(_, p)| p.pid == pid && p.first_seen_s <= ended_s)
            .max_by(|(_, a), (_, b)| a.first_seen_s.total_cmp(&b.first_seen_s))
            .map(|(index, _)| index)
            .or_else(|| report.processes.iter().position(|p| p.pid == pid));
        let process = match index {
            Some(index) => &mut report.processes[index],
            None => {
                report.processes.push(ProcessReport {
                    pid,
                    first_seen_s: ended_s,
                    last_seen_s: ended_s,
                    ..ProcessReport::default()
                });
                report.processes.last_mut().expect("just pushed")
            }
        };
        if process
            .peak_rss_bytes
            .is_none_or(|bytes| mark.vm_hwm_bytes > bytes)
        {
            process.peak_rss_bytes = Some(mark.vm_hwm_bytes);
            process.peak_rss_source = Some(PeakSource::VmHwm);
            process.peak_rss_unmeasured = None;
        }
    }
}

/// Anonymous memory a process held beyond everything the profiler saw it allocate, above
/// which the report says so: the larger of 32 MiB and a fifth of the process's anonymous
/// memory (interpreters, libraries' writable data and thread stacks are anonymous too, and
/// never pass through malloc).
fn unseen_threshold(anon_bytes: u64) -> u64 {
    (32 << 20).max(anon_bytes / 5)
}

/// Names each process whose own anonymous resident memory (the kernel's `RssAnon` at its
/// peak, or its USS where that is smaller: pages shared with a parent it forked from are
/// the parent's) exceeds its profiled heap peak by more than [`unseen_threshold`]: a child whose
/// environment lost `LD_PRELOAD`, a static binary, or allocations that bypass the hooked
/// malloc (raw system calls, a `dlvsym`'d libc, a custom allocator over `brk`).
fn warn_of_unseen_memory(report: &mut Report) {
    let mut warnings = Vec::new();
    for process in &report.processes {
        let Some(anon) = process.peaks.peak_anon_bytes else {
            continue;
        };
        // A forked worker's anonymous memory includes the pages it shares with its parent,
        // allocated (and profiled) there: only its own pages (USS) can be its heap.
        let anon = process
            .peaks
            .peak_uss_bytes
            .map_or(anon, |uss| uss.min(anon));
        let heap = process.profile.as_ref().map_or(0, |p| p.peak_bytes);
        let unseen = anon.saturating_sub(heap);
        if unseen > unseen_threshold(anon) {
            let command = process.cmdline.join(" ");
            let why = if process.profile.is_some() {
                "allocated outside the hooked malloc and mmap (raw mmap system calls, a custom allocator over brk?)"
            } else {
                "not profiled at all (LD_PRELOAD removed from its environment, or a static binary?)"
            };
            warnings.push(format!(
                "profile: pid {} ({}): {} of its {} private anonymous resident memory was not seen by the profiler: {why}",
                process.pid,
                command.chars().take(80).collect::<String>(),
                format_size(unseen),
                format_size(anon)
            ));
        }
    }
    report.warnings.extend(warnings);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the library in `dir`, and the folder for links beside it.
    fn library_in(root: &Path, dir: &str) -> (PathBuf, PathBuf) {
        let library = root.join(dir).join(LIBRARY);
        fs::create_dir_all(library.parent().expect("parent")).expect("mkdir");
        fs::write(&library, b"\x7fELF").expect("write library");
        (library, root.join("links"))
    }

    #[test]
    fn a_path_ld_preload_can_carry_is_preloaded_as_it_is() {
        let root = tempfile::tempdir().expect("tempdir");
        let (library, links) = library_in(root.path(), "venv/lib");
        assert_eq!(preloadable(&library, &links), Ok(library));
        assert!(!links.exists(), "no link made");
    }

    #[test]
    fn a_path_with_a_space_or_a_colon_is_preloaded_through_a_private_link_reused_later() {
        let root = tempfile::tempdir().expect("tempdir");
        for dir in ["venv with space/lib", "venv:colon/lib"] {
            let (library, links) = library_in(root.path(), dir);
            let link = preloadable(&library, &links).expect("link made");
            assert!(link.starts_with(&links), "{link:?}");
            assert!(!splits_ld_preload(&link), "{link:?}");
            assert_eq!(fs::read_link(&link).ok(), fs::canonicalize(&library).ok());
            let mode = fs::metadata(&links).expect("links").mode();
            assert_eq!(mode & 0o777, 0o700, "{mode:o}");
            let made = fs::symlink_metadata(&link).expect("link").ino();
            assert_eq!(preloadable(&library, &links).as_ref(), Ok(&link));
            let reused = fs::symlink_metadata(&link).expect("link").ino();
            assert_eq!(made, reused, "the second run reuses the link");
        }
    }

    #[test]
    fn a_link_to_another_file_is_replaced() {
        let root = tempfile::tempdir().expect("tempdir");
        let (library, links) = library_in(root.path(), "my venv/lib");
        let link = preloadable(&library, &links).expect("link made");
        fs::remove_file(&link).expect("remove");
        std::os::unix::fs::symlink(root.path(), &link).expect("stale link");
        assert_eq!(preloadable(&library, &links).as_ref(), Ok(&link));
        assert_eq!(fs::read_link(&link).ok(), fs::canonicalize(&library).ok());
    }

    #[test]
    fn links_are_never_made_in_a_folder_that_is_a_link() {
        let root = tempfile::tempdir().expect("tempdir");
        let (library, links) = library_in(root.path(), "my venv/lib");
        let elsewhere = root.path().join("elsewhere");
        fs::create_dir(&elsewhere).expect("mkdir");
        std::os::unix::fs::symlink(&elsewhere, &links).expect("link");
        let error = preloadable(&library, &links).expect_err("refused");
        assert!(error.contains("not a directory of this user's"), "{error}");
        assert_eq!(fs::read_dir(&elsewhere).expect("list").count(), 0);
    }

    #[test]
    fn the_folder_of_links_is_one_ld_preload_can_carry() {
        assert!(!splits_ld_preload(&link_dir()), "{:?}", link_dir());
    }
}
