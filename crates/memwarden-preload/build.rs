//! Compiles the per-thread state (initial-exec TLS, which stable Rust cannot declare; see
//! src/thread_state.c for why it matters).

fn main() {
    println!("cargo:rerun-if-changed=src/thread_state.c");
    cc::Build::new()
        .file("src/thread_state.c")
        .pic(true)
        .opt_level(2)
        .compile("memwarden_thread_state");
}
