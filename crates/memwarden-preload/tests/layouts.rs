//! The CPython layouts in `src/python/layouts.rs` are generated from each version's own
//! headers; this proves the checked-in file is what the generator makes today.

use std::path::Path;
use std::process::Command;

#[test]
fn checked_in_layouts_match_the_installed_cpython_headers() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("layouts/generate.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg("--check")
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
