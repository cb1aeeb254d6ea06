//! Compiles the per-thread state (initial-exec TLS, which stable Rust cannot declare; see
//! src/thread_state.c for why it matters), and links the library's references to its own
//! functions to its own definitions (see `dlsym.rs`).

fn main() {
    println!("cargo:rerun-if-changed=src/thread_state.c");
    cc::Build::new()
        .file("src/thread_state.c")
        .pic(true)
        .opt_level(2)
        .compile("memwarden_thread_state");
    // Without this, taking the address of one of our hooks, or calling one from another
    // (`reallocarray` calls `realloc`), goes through the dynamic linker's binding of the
    // name: a non-PIE program that takes `malloc`'s address (Debian's /usr/bin/python3)
    // makes it a stub in the program, and a library preloaded before us that defines
    // `malloc` makes it that library's. `dlsym` must hand out the hook itself.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic-functions");
}
