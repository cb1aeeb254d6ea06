//! The exported hooks' C contracts, from a C program compiled here with `cc` and profiled
//! with `memwarden run --profile`: where glibc would crash on an invalid argument, the
//! hook refuses it as POSIX refuses others, and charges nothing for it.

mod util;

use std::collections::BTreeMap;
use std::process::Command;

use util::run;

const MIB: u64 = 1 << 20;

/// `posix_memalign` with a null out-pointer (glibc's own writes through it and crashes),
/// with an alignment that is no power of two, then a valid request that is written whole.
const POSIX_MEMALIGN: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    /* Through a volatile: glibc declares the argument nonnull, and the compiler must not
       drop or rewrite the call on that promise. */
    void **volatile nowhere = NULL;
    int refused = posix_memalign(nowhere, 64, 100 << 20);
    void *held = NULL;
    int bad_alignment = posix_memalign(&held, 3, 1 << 20);
    int granted = posix_memalign(&held, 4096, 50 << 20);
    if (granted == 0)
        memset(held, 1, 50 << 20);
    printf("refused: %d\nbad alignment: %d\ngranted: %d\naligned: %d\n", refused,
           bad_alignment, granted, held != NULL && (uintptr_t)held % 4096 == 0);
    free(held);
    return 0;
}
"#;

#[test]
fn posix_memalign_with_a_null_out_pointer_is_einval_and_allocates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("posix_memalign.c");
    let program = dir.path().join("posix_memalign");
    std::fs::write(&source, POSIX_MEMALIGN).expect("write source");
    let built = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&program)
        .arg(&source)
        .output()
        .expect("cc runs");
    assert!(
        built.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = run(
        &["--profile=exact"],
        &[program.to_str().expect("utf-8 path")],
    );
    assert_eq!(run.code(), 0, "no crash in the hook: {}", run.stderr());
    let lines: BTreeMap<String, String> = String::from_utf8_lossy(&run.output.stdout)
        .lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    let einval = libc::EINVAL.to_string();
    let expected = BTreeMap::from([
        ("refused".to_owned(), einval.clone()),
        ("bad alignment".to_owned(), einval),
        ("granted".to_owned(), "0".to_owned()),
        ("aligned".to_owned(), "1".to_owned()),
    ]);
    assert_eq!(lines, expected, "{}", run.stderr());
    // Only the granted 50 MiB was ever held: the refused 100 MiB was neither allocated
    // nor charged.
    let peak = run.u64_at("/profile/peak_bytes");
    assert!(
        (50 * MIB..51 * MIB).contains(&peak),
        "heap peak {peak} bytes, expected 50 MiB"
    );
}
