//! Headless Chromium for the tests of pages: Debian's `chromium`, driven over the DevTools
//! protocol by `tests/support/browser.py` (real input events; console, network and dialogs
//! recorded).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::{python, require};

/// Where screenshots and pages are kept: `target/test-artifacts/html/`.
pub fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-artifacts/html");
    std::fs::create_dir_all(&dir).expect("artifacts directory");
    dir
}

/// A capability: Debian's `chromium` runs (scripts/lib.sh `ensure_chromium` installs it).
pub fn chromium() -> Result<(), String> {
    match Command::new("chromium").arg("--version").output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!("chromium --version failed: {}", output.status)),
        Err(e) => Err(format!(
            "chromium is not installed ({e}); apt-get install chromium"
        )),
    }
}

/// A capability: the tests' Python has `websocket-client` (scripts/test-requirements.txt).
pub fn driver_python() -> Result<(), String> {
    let ok = Command::new(python())
        .args(["-c", "import websocket"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(()).ok_or_else(|| {
        "the tests' Python lacks websocket-client (pip install -r scripts/test-requirements.txt)"
            .to_owned()
    })
}

pub fn browser_ready(test: &str) -> bool {
    require(test, chromium()) && require(test, driver_python())
}

/// What the driver saw: values the steps read, and everything that went wrong.
pub struct Browsed {
    pub result: Value,
}

impl Browsed {
    pub fn value(&self, name: &str) -> &Value {
        &self.result["values"][name]
    }

    /// No console error, no exception, no request off the disk, no dialog.
    pub fn assert_clean(&self) {
        for list in ["console_errors", "exceptions", "requests", "dialogs"] {
            assert_eq!(
                self.result[list],
                json!([]),
                "{list} in the browser: {:#}",
                self.result
            );
        }
    }
}

/// Opens `page` in headless Chromium and runs `steps` (see `support/browser.py`), keeping
/// screenshots in [`artifacts`].
pub fn browse(page: &Path, steps: Value) -> Browsed {
    let dir = tempfile::tempdir().expect("tempdir");
    let steps_file = dir.path().join("steps.json");
    std::fs::write(&steps_file, steps.to_string()).expect("steps written");
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/browser.py");
    let output = Command::new(python())
        .arg(driver)
        .arg("--page")
        .arg(page)
        .arg("--steps")
        .arg(&steps_file)
        .arg("--screenshots")
        .arg(artifacts())
        .output()
        .expect("the browser driver runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the driver printed no result ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(
        result["error"],
        Value::Null,
        "the driver failed: {result:#}"
    );
    Browsed { result }
}
