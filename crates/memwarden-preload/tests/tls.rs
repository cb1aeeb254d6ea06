//! No code of the hooks may reach `__tls_get_addr`: called from inside `free` while the
//! dynamic linker loads a library with TLS of its own, it calls `free` again and never
//! returns (seen on glibc 2.39 with PyTorch's libgomp and libcudart). The per-thread state
//! lives in initial-exec TLS for that reason; this test reads the built library's machine
//! code to prove nothing of ours calls `__tls_get_addr` (only Rust's panic machinery may).

use std::path::Path;
use std::process::Command;

#[test]
fn no_hook_calls_tls_get_addr() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let library = ["target/debug", "target/release"]
        .iter()
        .map(|dir| root.join(dir).join("libmemwarden_preload.so"))
        .find(|path| path.exists())
        .expect("build the library first: cargo build -p memwarden-preload");
    let output = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(&library)
        .output()
        .expect("objdump (binutils) runs");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let mut function = String::new();
    let mut callers = Vec::new();
    for line in text.lines() {
        if line.ends_with(">:") {
            function = line
                .split('<')
                .nth(1)
                .unwrap_or("")
                .trim_end_matches(">:")
                .to_owned();
        } else if line.contains("__tls_get_addr") && !function.contains("__tls_get_addr") {
            callers.push(function.clone());
        }
    }
    let ours: Vec<&String> = callers
        .iter()
        .filter(|f| f.contains("memwarden_preload") || !f.contains("std"))
        .collect();
    assert!(ours.is_empty(), "these call __tls_get_addr: {ours:?}");
}
