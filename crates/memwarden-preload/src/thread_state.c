/* Per-thread state of memwarden's allocation hooks, in initial-exec TLS.
 *
 * Rust's thread locals in a shared library use the general-dynamic model: every access
 * may call __tls_get_addr, which, while the dynamic linker loads a library with TLS of
 * its own, updates the thread's TLS vector with malloc and free. From inside free that
 * recursion never ends (seen with PyTorch's libgomp and libcudart on glibc 2.39). An
 * initial-exec variable is one load relative to %fs and never calls anything; the library
 * is loaded with LD_PRELOAD at start-up, where initial-exec TLS is always available.
 * Layout: mirrored by `ThreadState` in lib.rs. */
#include <stdint.h>

struct memwarden_thread {
    int64_t countdown;
    uint64_t rng;
    uint8_t busy;
    uint32_t inherited;
    uint32_t generation;
    uint32_t name_frame;
    uint32_t name_age;
    struct { uint64_t hash; uint32_t node; } last_stack; /* Rust's (u64, u32) */
};

static __thread struct memwarden_thread state __attribute__((tls_model("initial-exec"))) = {
    0, 0, 0, 0, 0, 0xffffffffu, 0, {0, 0},
};

struct memwarden_thread *memwarden_thread_state(void) {
    return &state;
}
