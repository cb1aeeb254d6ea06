//! The pytest plugin's ledger (`--memwarden-baseline`): `Baselines` judges a test's heap
//! peak against its recorded history, `TestRecorder` records a session's tests with its
//! provenance collected once (`memwarden_run::test_session`).

use memwarden_run::test_session::{self, TestRun};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// The recorded histories of a suite's tests (read once, when made).
#[pyclass(module = "memwarden._native", frozen)]
pub struct Baselines(test_session::Baselines);

#[pymethods]
impl Baselines {
    /// Reads `model`'s records from `ledger` (None: the data directory's). `ValueError`
    /// when the ledger or the policy cannot be read.
    #[new]
    #[pyo3(signature = (model, ledger = None))]
    fn new(py: Python<'_>, model: String, ledger: Option<String>) -> PyResult<Self> {
        py.detach(|| test_session::Baselines::load(&model, ledger.as_deref()))
            .map(Baselines)
            .map_err(PyValueError::new_err)
    }

    /// `(passes, judged, explanation)` for `test`'s heap peak measured the `profile` way
    /// (`sampled`, `exact`), `sample_bytes` apart when sampled (0: exact).
    fn judge(
        &self,
        test: &str,
        profile: &str,
        heap_bytes: u64,
        sample_bytes: u64,
    ) -> (bool, bool, String) {
        let judgement = self.0.judge(test, profile, heap_bytes, sample_bytes);
        (judgement.pass, judgement.judged, judgement.explanation)
    }
}

/// A session's test records, written together by `finish`.
#[pyclass(module = "memwarden._native")]
pub struct TestRecorder(Option<test_session::Recorder>);

#[pymethods]
impl TestRecorder {
    /// Collects the provenance (git state, Python environment, host) once. `version` None:
    /// the git commit (`+dirty` with changes), else `unversioned`.
    #[new]
    #[pyo3(signature = (model, version, ledger, command))]
    fn new(
        py: Python<'_>,
        model: String,
        version: Option<String>,
        ledger: Option<String>,
        command: Vec<String>,
    ) -> PyResult<Self> {
        py.detach(|| test_session::Recorder::open(&model, version, ledger.as_deref(), command))
            .map(|recorder| TestRecorder(Some(recorder)))
            .map_err(PyValueError::new_err)
    }

    /// Adds one test's figures.
    #[pyo3(signature = (test, passed, started_at_unix_s, duration_s, heap_bytes, leaked_bytes, rss_bytes, rss_exact, profile, baseline = None))]
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        test: String,
        passed: bool,
        started_at_unix_s: f64,
        duration_s: f64,
        heap_bytes: u64,
        leaked_bytes: i64,
        rss_bytes: u64,
        rss_exact: bool,
        profile: String,
        baseline: Option<String>,
    ) -> PyResult<()> {
        let recorder = self.0.as_mut().ok_or_else(written)?;
        recorder.add(TestRun {
            test,
            passed,
            started_at_unix_s,
            duration_s,
            heap_bytes,
            leaked_bytes,
            rss_bytes,
            rss_exact,
            profile,
            baseline,
        });
        Ok(())
    }

    /// Writes every record; the line saying where. `ValueError` when the ledger could not
    /// take them (its message says where they were kept to be written later).
    fn finish(&mut self, py: Python<'_>) -> PyResult<String> {
        let recorder = self.0.take().ok_or_else(written)?;
        py.detach(|| recorder.finish())
            .map_err(PyValueError::new_err)
    }
}

/// The error of a recorder used after `finish`.
fn written() -> PyErr {
    PyRuntimeError::new_err("the session was already written")
}
