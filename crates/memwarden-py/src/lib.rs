//! `memwarden._native`: the Python package's view of memwarden's library crates.
//!
//! Thin on purpose: each function converts its arguments, calls one library function and
//! converts the result (JSON text for structured results, which the Python side parses
//! into its own types). The `memwarden` command and the preload library ship beside this
//! module in the same wheel (`memwarden/_bin/`); the Python side finds them itself. Type
//! stubs: `python/memwarden/_native.pyi`.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use memwarden_format::report::Report;
use memwarden_report::profile;
use pyo3::exceptions::{PyNotADirectoryError, PyUserWarning, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

mod test_ledger;

/// Runs `work` with the calling thread's allocations unseen by the profiler, when this
/// process runs under it (`memwarden_thread_quiet`): memwarden's readings of its own
/// capture are not the program's heap, and would otherwise raise the very peak being
/// measured. `work` must free only what it allocated (releases are not seen either).
fn quietly<T>(work: impl FnOnce() -> T) -> T {
    type Quiet = extern "C" fn(u32) -> u32;
    static QUIET: std::sync::OnceLock<Option<Quiet>> = std::sync::OnceLock::new();
    let quiet = *QUIET.get_or_init(|| {
        // SAFETY: dlsym with a NUL-terminated name; a symbol of this name is the preload's
        // `memwarden_thread_quiet`, of exactly this signature.
        #[allow(unsafe_code)]
        unsafe {
            let symbol = libc::dlsym(libc::RTLD_DEFAULT, c"memwarden_thread_quiet".as_ptr());
            (!symbol.is_null()).then(|| std::mem::transmute::<*mut libc::c_void, Quiet>(symbol))
        }
    });
    match quiet {
        None => work(),
        Some(quiet) => {
            let was = quiet(1);
            let result = work();
            quiet(was);
            result
        }
    }
}

/// memwarden's version, as its Cargo manifest states it.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The bytes a name escaped by the report (`\\` and `\xNN`) stands for.
#[pyfunction]
fn unescape<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyBytes>> {
    let bytes = memwarden_format::names::unescape(text).ok_or_else(|| {
        PyValueError::new_err(format!(
            "not an escaped name (a backslash starts neither \\\\ nor \\xNN): {text:?}"
        ))
    })?;
    Ok(PyBytes::new(py, &bytes))
}

/// The profile of a capture directory kept with `memwarden run --capture-dir DIR`, as the
/// JSON text of a report's `profile` section. With the run's report in `DIR/report.json`
/// the profile is timed from the run's start; without it, from the first capture's.
/// Problems that leave a profile (an unreadable capture among good ones) become
/// `UserWarning`s; none left raises `ValueError`.
#[pyfunction]
#[pyo3(signature = (dir, raw_frames = false))]
fn analyze_captures(py: Python<'_>, dir: PathBuf, raw_frames: bool) -> PyResult<String> {
    if !std::fs::metadata(&dir)
        .map_err(|e| io_error(&dir, e))?
        .is_dir()
    {
        return Err(PyNotADirectoryError::new_err(format!(
            "{}: not a directory of captures",
            dir.display()
        )));
    }
    let (profile, warnings) = py.detach(|| quietly(|| analyze(&dir, raw_frames)))?;
    let category = py.get_type::<PyUserWarning>();
    for warning in warnings {
        let message = CString::new(warning.replace('\0', "\\x00")).unwrap_or_default();
        PyErr::warn(py, &category, &message, 1)?;
    }
    Ok(profile)
}

/// [`analyze_captures`] without the interpreter: the profile's JSON and the warnings.
fn analyze(dir: &Path, raw_frames: bool) -> PyResult<(String, Vec<String>)> {
    let (profile, warnings) = match kept_report_in(dir)? {
        Some(mut report) => {
            let before = report.warnings.len();
            memwarden_run::recover::attach_kept_profile(&mut report, dir, raw_frames);
            let warnings = report.warnings.split_off(before);
            match report.profile {
                Some(profile) => (profile, warnings),
                None => return Err(PyValueError::new_err(warnings.join("; "))),
            }
        }
        None => {
            let (analysis, _, warnings) =
                memwarden_run::recover::analyze_kept_dir(dir, raw_frames, None)
                    .map_err(PyValueError::new_err)?;
            (analysis.profile, warnings)
        }
    };
    let json = serde_json::to_string(&profile)
        .map_err(|e| PyValueError::new_err(format!("cannot write the profile as JSON: {e}")))?;
    Ok((json, warnings))
}

/// The run's report kept in `dir` (`report.json`), when there is one.
fn kept_report_in(dir: &Path) -> PyResult<Option<Report>> {
    let path = dir.join("report.json");
    match std::fs::read(&path) {
        Ok(text) => serde_json::from_slice(&text).map(Some).map_err(|e| {
            PyValueError::new_err(format!(
                "{}: not a memwarden run report ({e})",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&path, e)),
    }
}

/// The report kept with the captures in `dir` (`memwarden run --capture-dir DIR`), as JSON,
/// its profile analysed again from them and completed as `memwarden report --capture-dir`
/// completes it (lines' text, advice). `FileNotFoundError` when `DIR/report.json` is
/// missing; `ValueError` when it is no report.
#[pyfunction]
#[pyo3(signature = (dir, raw_frames = false))]
fn kept_report(py: Python<'_>, dir: PathBuf, raw_frames: bool) -> PyResult<String> {
    let Some(mut report) = kept_report_in(&dir)? else {
        return Err(io_error(
            &dir.join("report.json"),
            std::io::ErrorKind::NotFound.into(),
        ));
    };
    py.detach(|| quietly(|| memwarden_run::recover::reanalyze(&mut report, &dir, raw_frames)));
    serde_json::to_string(&report)
        .map_err(|e| PyValueError::new_err(format!("cannot write the report as JSON: {e}")))
}

/// Bytes from a size as memwarden writes them: `512MiB`, `2 GiB`, `1.5GB` (powers of
/// 1000), `1048576`.
#[pyfunction]
fn parse_size(text: &str) -> PyResult<u64> {
    memwarden_format::units::parse_size(text).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// A size as memwarden prints it: `1.50 GiB`.
#[pyfunction]
fn format_size(bytes: u64) -> String {
    memwarden_format::units::format_size(bytes)
}

/// What each stack of a capture file has allocated so far, `(bytes, allocations)`: a cheap
/// reading for [`capture_lines`]'s `since`.
#[pyfunction]
fn capture_allocated(py: Python<'_>, path: PathBuf) -> PyResult<Vec<(u64, u64)>> {
    py.detach(|| quietly(|| memwarden_format::capture::read_allocated(&path)))
        .map_err(|e| io_error(&path, e))
}

/// Each of the user's lines in one capture file, as the profiler left it now:
/// `(file, line, function, live_bytes, allocated_bytes, allocations)`, most allocated first
/// (the stacks charged to a line summed, as the report's tables do); with `since` (from
/// [`capture_allocated`]), bytes and allocations made after that reading (and before `until`'s, when
/// given), lines that allocated none left out.
#[pyfunction]
#[pyo3(signature = (path, since = None, until = None))]
#[allow(clippy::type_complexity)]
fn capture_lines(
    py: Python<'_>,
    path: PathBuf,
    since: Option<Vec<(u64, u64)>>,
    until: Option<Vec<(u64, u64)>>,
) -> PyResult<Vec<(String, u32, String, i64, u64, u64)>> {
    let (since, until) = (since.unwrap_or_default(), until.unwrap_or_default());
    let lines = py
        .detach(|| {
            quietly(|| {
                memwarden_format::capture::Capture::read(&path)
                    .map(|capture| profile::line_totals(&capture, &since, &until))
            })
        })
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(lines
        .into_iter()
        .map(|l| {
            let function = format!("{}{}", l.frame.function, l.frame.import_note());
            (
                l.frame.file,
                l.frame.line,
                function,
                l.live_bytes,
                l.allocated_bytes,
                l.allocations,
            )
        })
        .collect())
}

/// Records a finished block of the program in the ledger (`memwarden.track(...,
/// model=...)`); the line saying where. A ledger that cannot take it gets it spooled (the
/// line says so); arguments that cannot be recorded raise `ValueError`.
#[pyfunction]
#[pyo3(signature = (model, version, stage, tags, ledger, command, started_at_unix_s, duration_s,
    peak_rss_bytes, peak_rss_exact, peak_heap_bytes, peak_gpu_bytes, budget_bytes, failed))]
#[allow(clippy::too_many_arguments)]
fn record_block(
    py: Python<'_>,
    model: String,
    version: String,
    stage: String,
    tags: Vec<String>,
    ledger: Option<String>,
    command: Vec<String>,
    started_at_unix_s: f64,
    duration_s: f64,
    peak_rss_bytes: u64,
    peak_rss_exact: bool,
    peak_heap_bytes: Option<u64>,
    peak_gpu_bytes: Option<u64>,
    budget_bytes: Option<u64>,
    failed: bool,
) -> PyResult<String> {
    let block = memwarden_run::block::Block {
        model,
        version,
        stage,
        tags,
        ledger,
        command,
        started_at_unix_s,
        duration_s,
        peak_rss_bytes,
        peak_rss_exact,
        peak_heap_bytes,
        left_bytes: 0,
        peak_gpu_bytes,
        budget_bytes,
        failed,
    };
    py.detach(|| memwarden_run::block::record(&block))
        .map_err(PyValueError::new_err)
}

/// The report of a block measured in this process (a notebook cell): `(JSON, HTML)`. With
/// `peak_heap_bytes`, its profile is read from `capture` (this process's capture file),
/// whose nodes had allocated `since` (bytes, allocations) as the block began; the advice and the page
/// are made as `memwarden run --profile` makes them; `sources` maps the names of code
/// that is no file (a notebook's cells) to its text. `ValueError` when the capture cannot
/// be read.
#[pyfunction]
#[pyo3(signature = (name, capture, since, started_at_unix_s, duration_s, peak_rss_bytes,
    peak_rss_exact, peak_heap_bytes, left_bytes, peak_gpu_bytes, failed, sources))]
#[allow(clippy::too_many_arguments)]
fn block_report(
    py: Python<'_>,
    name: String,
    capture: Option<PathBuf>,
    since: Vec<(u64, u64)>,
    started_at_unix_s: f64,
    duration_s: f64,
    peak_rss_bytes: u64,
    peak_rss_exact: bool,
    peak_heap_bytes: Option<u64>,
    left_bytes: i64,
    peak_gpu_bytes: Option<u64>,
    failed: bool,
    sources: std::collections::BTreeMap<String, String>,
) -> PyResult<(String, String)> {
    let block = memwarden_run::block::Block {
        model: String::new(),
        version: String::new(),
        stage: String::new(),
        tags: Vec::new(),
        ledger: None,
        command: vec![name],
        started_at_unix_s,
        duration_s,
        peak_rss_bytes,
        peak_rss_exact,
        peak_heap_bytes: peak_heap_bytes.filter(|_| capture.is_some()),
        left_bytes,
        peak_gpu_bytes,
        budget_bytes: None,
        failed,
    };
    py.detach(|| {
        quietly(|| {
            let report = memwarden_run::block::report_with_profile(
                &block,
                capture.as_deref(),
                &since,
                &sources,
            )?;
            let json = serde_json::to_string(&report).map_err(|e| e.to_string())?;
            Ok::<_, String>((json, memwarden_report::html::render(&report)))
        })
    })
    .map_err(PyValueError::new_err)
}

/// The path to put in `LD_PRELOAD` for the profiler library at `library`: its own, or,
/// when it holds a space or a colon (which `LD_PRELOAD` splits on), a link to it in a
/// private directory, as `memwarden run --profile` makes. `ValueError` when none can be
/// made.
#[pyfunction]
fn preloadable(library: PathBuf) -> PyResult<PathBuf> {
    memwarden_run::preload_path(&library).map_err(PyValueError::new_err)
}

/// Creates the tree counter (`tree.mwtree`) in the capture directory `dir`, so that the
/// processes started with it count their heaps together (`memwarden_tree_*`).
#[pyfunction]
fn tree_create(dir: PathBuf) -> PyResult<()> {
    memwarden_run::tree_heap::SharedTree::create(&dir)
        .map(drop)
        .map_err(|e| io_error(&dir, e))
}

/// Takes the share of every process of `dir`'s tree that ended without doing so (killed
/// by a signal, replaced by `exec`) out of its counter, as `memwarden run` does at each
/// tick; how many. 0 without a tree counter.
#[pyfunction]
fn tree_withdraw_ended(py: Python<'_>, dir: PathBuf) -> PyResult<usize> {
    py.detach(|| match memwarden_run::tree_heap::SharedTree::open(&dir) {
        Ok(tree) => tree.withdraw_ended(&dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    })
    .map_err(|e| io_error(&dir, e))
}

/// `e` as the `OSError` subclass Python gives it (`FileNotFoundError`, `PermissionError`,
/// ...), its message naming `path`.
fn io_error(path: &Path, e: std::io::Error) -> PyErr {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display())).into()
}

/// The module `memwarden._native`.
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(version, module)?)?;
    module.add_function(wrap_pyfunction!(unescape, module)?)?;
    module.add_function(wrap_pyfunction!(analyze_captures, module)?)?;
    module.add_function(wrap_pyfunction!(kept_report, module)?)?;
    module.add_function(wrap_pyfunction!(parse_size, module)?)?;
    module.add_function(wrap_pyfunction!(format_size, module)?)?;
    module.add_function(wrap_pyfunction!(capture_allocated, module)?)?;
    module.add_function(wrap_pyfunction!(record_block, module)?)?;
    module.add_function(wrap_pyfunction!(preloadable, module)?)?;
    module.add_function(wrap_pyfunction!(capture_lines, module)?)?;
    module.add_function(wrap_pyfunction!(tree_create, module)?)?;
    module.add_function(wrap_pyfunction!(block_report, module)?)?;
    module.add_function(wrap_pyfunction!(tree_withdraw_ended, module)?)?;
    module.add_class::<test_ledger::Baselines>()?;
    module.add_class::<test_ledger::TestRecorder>()?;
    Ok(())
}
