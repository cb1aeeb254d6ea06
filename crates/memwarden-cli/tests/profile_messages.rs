//! What `memwarden run --profile` says when there is little or nothing to profile: each
//! message names the real cause.

mod util;

use serde_json::Value;

fn warnings_of(args: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let status = util::memwarden()
        .args(["run", "-q", "--json"])
        .arg(&json)
        .args(args)
        .status()
        .expect("memwarden runs");
    assert!(status.success(), "{args:?}: {status}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("JSON");
    report["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_dynamic_program_that_allocates_little_is_not_called_static() {
    // `sleep` is dynamically linked: the profiler loads, but nothing reaches a sample point.
    let warnings = warnings_of(&["--profile", "--", "sleep", "0.1"]);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("no allocation was sampled") && w.contains("--profile=exact")),
        "{warnings:?}"
    );
    assert!(
        !warnings.iter().any(|w| w.contains("static executable")),
        "{warnings:?}"
    );
}

#[test]
fn a_static_program_is_named_as_out_of_the_profilers_reach() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("static.c");
    std::fs::write(
        &source,
        "#include <stdlib.h>\n#include <string.h>\nint main(void) { char *p = malloc(4 << 20); memset(p, 1, 4 << 20); return p[7] - 1; }\n",
    )
    .expect("write");
    let binary = dir.path().join("static");
    let built = std::process::Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("cc runs");
    assert!(
        built.success(),
        "cc -static (glibc's static library, libc6-dev) must work here"
    );
    let binary = binary.to_string_lossy().into_owned();
    let warnings = warnings_of(&["--profile", "--", &binary]);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("no process loaded the profiler")),
        "{warnings:?}"
    );
}
