//! Memory allocated through a looked-up libc (issue 10, item 5): `dlsym(handle, "malloc")`
//! on libc's own handle returns glibc's malloc, past the preloaded hooks, unless the
//! profiler's `dlsym` hands back its hook. Real programs: Python through ctypes, and C
//! programs compiled here with `cc`, one with a classic interposer (a library wrapping
//! `malloc` through `dlsym(RTLD_NEXT, "malloc")`) preloaded before or after the profiler,
//! which checks that `RTLD_NEXT` still resolves relative to the object that asked.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use util::{line_of, python, run_in, run_in_with, within, Run};

const MIB: u64 = 1 << 20;

/// The file name of the profiler library, as `dladdr` names its object.
const PRELOAD: &str = "libmemwarden_preload.so";

/// Warnings of the run that say memory was not seen by the profiler.
fn unseen_warnings(run: &Run) -> Vec<String> {
    run.report()["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(Value::as_str)
        .filter(|w| w.contains("was not seen by the profiler"))
        .map(str::to_owned)
        .collect()
}

/// Each allocation is made on its own marked line through a different way of reaching
/// libc (`CDLL(None)`, the program's scope, always found the hooks; the two others open
/// libc itself), written whole, and held across the peak; the first is then freed through
/// the same handle. Lookups of other names, and of a missing one, must behave as without
/// the profiler.
const CTYPES: &str = "\
import ctypes, ctypes.util, time
MIB = 1 << 20
def bind(lib):
    lib.malloc.restype = ctypes.c_void_p
    lib.malloc.argtypes = [ctypes.c_size_t]
    lib.free.argtypes = [ctypes.c_void_p]
    return lib
by_name = bind(ctypes.CDLL('libc.so.6'))
found = bind(ctypes.CDLL(ctypes.util.find_library('c')))
process = bind(ctypes.CDLL(None))
by_name.mmap.restype = ctypes.c_void_p
by_name.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
assert by_name.strlen(b'four') == 4
try:
    by_name.memwarden_no_such_symbol
    raise SystemExit('a missing symbol was found')
except AttributeError as error:
    assert 'undefined symbol: memwarden_no_such_symbol' in str(error), error
a = by_name.malloc(150 * MIB)  # @by_name
ctypes.memset(a, 1, 150 * MIB)
b = found.malloc(60 * MIB)  # @found
ctypes.memset(b, 1, 60 * MIB)
c = process.malloc(40 * MIB)  # @process
ctypes.memset(c, 1, 40 * MIB)
m = by_name.mmap(None, 30 * MIB, 3, 0x22, -1, 0)  # @mapped
ctypes.memset(m, 1, 30 * MIB)
time.sleep(0.6)
by_name.free(a)
print('ok')
";

#[test]
fn malloc_and_mmap_from_a_ctypes_libc_are_charged_to_their_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("workload.py"), CTYPES).expect("write script");
    let python = python();
    let python = python.to_str().expect("utf-8 path");
    let run = run_in(dir, &["--profile"], &[python, "workload.py"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(
        String::from_utf8_lossy(&run.output.stdout).trim(),
        "ok",
        "the script ran to its end: {}",
        run.stderr()
    );
    for (name, mib) in [
        ("by_name", 150),
        ("found", 60),
        ("process", 40),
        ("mapped", 30),
    ] {
        let bytes = util::bytes_at(&run, CTYPES, "at_peak", name);
        assert!(
            within(bytes, mib * MIB, 0.03),
            "at the peak, @{name} holds {bytes} bytes, expected {mib} MiB\n{:#}",
            run.report()["profile"]["at_peak"]
        );
    }
    // Freed through libc's handle too: released from the line that allocated it.
    let leaked = util::bytes_at(&run, CTYPES, "leaked", "by_name");
    assert!(leaked < MIB, "@by_name still holds {leaked} bytes at exit");
    let top = &run.report()["profile"]["at_peak"][0]["stack"][0];
    assert_eq!(
        (
            top["file"].as_str().map(|f| f.ends_with("workload.py")),
            top["line"].as_u64()
        ),
        (Some(true), Some(line_of(CTYPES, "by_name"))),
        "the largest stack at the peak starts at the by_name line: {top}"
    );
    let heap = run.u64_at("/peak/heap_bytes");
    assert!(
        heap >= 272 * MIB,
        "heap peak {heap} bytes, below the 280 MiB held"
    );
    let unseen = unseen_warnings(&run);
    assert!(unseen.is_empty(), "{unseen:#?}");
}

/// A classic interposer: counts the bytes of `malloc` and forwards them to the next
/// `malloc` after it, found with `dlsym(RTLD_NEXT, "malloc")` on first use.
const WRAPPER: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

static void *(*next_malloc)(size_t);
static volatile int resolving;
static size_t wrapped_bytes;

void *malloc(size_t size) {
    if (next_malloc == NULL) {
        if (resolving) {
            static const char message[] = "wrapper: malloc called while resolving malloc\n";
            write(2, message, sizeof message - 1);
            abort();
        }
        resolving = 1;
        next_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
        resolving = 0;
    }
    wrapped_bytes += size;
    return next_malloc(size);
}

/* What RTLD_NEXT finds for `name` when asked from this library. */
void *wrapper_next(const char *name) { return dlsym(RTLD_NEXT, name); }
size_t wrapper_bytes(void) { return wrapped_bytes; }
"#;

/// Prints, as `key: value` lines, which object each lookup resolves to (by `dladdr`), and
/// what failed lookups say; then holds 150 MiB from libc's own `malloc`, looked up in libc's
/// handle, and 60 MiB from its plain `malloc`. Built as a position-dependent executable that
/// takes `malloc`'s address, as Debian's /usr/bin/python3 does: the process's `malloc` is
/// then a stub in the program, which the profiler must not hand out in place of its hook.
const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *owner(void *address) {
    Dl_info info;
    if (address == NULL) return "NULL";
    if (!dladdr(address, &info) || info.dli_fname == NULL) return "?";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

static const char *error(void) {
    const char *message = dlerror();
    return message ? message : "(none)";
}

/* Taken in position-dependent code, malloc's address is a stub in the program. */
void *(*volatile malloc_address)(size_t);

int main(void) {
    size_t mib = 1 << 20;
    malloc_address = malloc;
    printf("next malloc from main: %s\n", owner(dlsym(RTLD_NEXT, "malloc")));
    printf("default malloc from main: %s\n", owner(dlsym(RTLD_DEFAULT, "malloc")));
    printf("next puts from main: %s\n", owner(dlsym(RTLD_NEXT, "puts")));
    void *(*wrapper_next)(const char *) =
        (void *(*)(const char *))dlsym(RTLD_DEFAULT, "wrapper_next");
    printf("next malloc from wrapper: %s\n",
           wrapper_next ? owner(wrapper_next("malloc")) : "(no wrapper)");
    void *libc = dlopen("libc.so.6", RTLD_NOW);
    printf("libc malloc: %s\n", owner(dlsym(libc, "malloc")));
    printf("libc __libc_malloc: %s\n", owner(dlsym(libc, "__libc_malloc")));
    printf("libc free: %s\n", owner(dlsym(libc, "free")));
    printf("libc calloc: %s\n", owner(dlsym(libc, "calloc")));
    printf("libc mmap: %s\n", owner(dlsym(libc, "mmap")));
    printf("libc strlen: %s\n", owner(dlsym(libc, "strlen")));
    printf("libc strlen is the default one: %d\n",
           dlsym(libc, "strlen") == dlsym(RTLD_DEFAULT, "strlen"));
    printf("error after success: %s\n", error());
    printf("libc missing: %s\n", owner(dlsym(libc, "memwarden_no_such_symbol")));
    printf("libc missing error: %s\n", error());
    printf("error read twice: %s\n", error());
    printf("next missing: %s\n", owner(dlsym(RTLD_NEXT, "memwarden_no_such_symbol")));
    printf("next missing error: %s\n", error());
    fflush(stdout);
    void *(*libc_malloc)(size_t) = (void *(*)(size_t))dlsym(libc, "malloc");
    void (*libc_free)(void *) = (void (*)(void *))dlsym(libc, "free");
    char *big = libc_malloc(150 * mib);
    char *own = malloc(60 * mib);
    memset(big, 1, 150 * mib);
    memset(own, 2, 60 * mib);
    usleep(600 * 1000);
    size_t (*wrapper_bytes)(void) = (size_t (*)(void))dlsym(RTLD_DEFAULT, "wrapper_bytes");
    printf("wrapper saw the plain malloc: %s\n",
           wrapper_bytes ? (wrapper_bytes() >= 60 * mib ? "yes" : "no") : "(no wrapper)");
    printf("sum: %d\n", big[7] + own[7]);
    libc_free(big);
    free(own);
    return 0;
}
"#;

/// The program and the wrapper, compiled into `dir`.
struct Programs {
    program: PathBuf,
    wrapper: PathBuf,
}

fn compile(dir: &Path) -> Programs {
    let cc = |args: &[&str], text: &str, source: &str, output: &Path| {
        let path = dir.join(source);
        std::fs::write(&path, text).expect("write source");
        let built = Command::new("cc")
            .args(args)
            .arg("-o")
            .arg(output)
            .arg(&path)
            .arg("-ldl")
            .output()
            .expect("cc runs");
        assert!(
            built.status.success(),
            "cc {source}: {}",
            String::from_utf8_lossy(&built.stderr)
        );
    };
    let programs = Programs {
        program: dir.join("program"),
        wrapper: dir.join("libwrapper.so"),
    };
    let position_dependent = ["-O1", "-fno-pie", "-no-pie"];
    cc(&position_dependent, PROGRAM, "program.c", &programs.program);
    let shared = ["-O1", "-shared", "-fPIC"];
    cc(&shared, WRAPPER, "wrapper.c", &programs.wrapper);
    programs
}

/// The program's `key: value` lines.
fn lines_of(stdout: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// Where the wrapper goes in `LD_PRELOAD`, relative to the profiler's library.
#[derive(Clone, Copy, Debug)]
enum Wrapper {
    None,
    Before,
    After,
}

/// Runs the program under `memwarden run --profile`, with the wrapper preloaded as asked
/// (set by `sh` for the program only, not for memwarden).
fn profile_program(programs: &Programs, wrapper: Wrapper) -> (Run, BTreeMap<String, String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = programs.program.clone().into_os_string();
    let wrapper_path = programs.wrapper.clone().into_os_string();
    let command: Vec<std::ffi::OsString> = match wrapper {
        Wrapper::None => vec![program],
        Wrapper::Before => vec![
            "sh".into(),
            "-c".into(),
            r#"LD_PRELOAD="$0 $LD_PRELOAD" exec "$1""#.into(),
            wrapper_path,
            program,
        ],
        Wrapper::After => vec![
            "sh".into(),
            "-c".into(),
            r#"LD_PRELOAD="$LD_PRELOAD $0" exec "$1""#.into(),
            wrapper_path,
            program,
        ],
    };
    let run = run_in_with(dir, &["--profile"], &command, |_| {});
    assert_eq!(run.code(), 0, "{wrapper:?}: {}", run.stderr());
    let lines = lines_of(&run.output.stdout);
    assert_eq!(
        lines.get("sum").map(String::as_str),
        Some("3"),
        "{wrapper:?}: the program ran to its end: {lines:#?}\n{}",
        run.stderr()
    );
    (run, lines)
}

#[track_caller]
fn assert_line(lines: &BTreeMap<String, String>, key: &str, expected: &str) {
    assert_eq!(
        lines.get(key).map(String::as_str),
        Some(expected),
        "{key}: {lines:#?}"
    );
}

/// Lookups that must give the same answer with the profiler as without it: names we do
/// not hook, `RTLD_NEXT` of a name the profiler does not define, and every error.
const UNCHANGED: [&str; 9] = [
    // The program's own stub for malloc (see PROGRAM), as RTLD_DEFAULT finds it first.
    "default malloc from main",
    "next puts from main",
    "libc strlen",
    "libc strlen is the default one",
    "error after success",
    "libc missing",
    "libc missing error",
    "error read twice",
    "next missing error",
];

#[test]
fn a_c_program_using_libcs_handle_is_profiled_and_other_lookups_are_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let programs = compile(dir.path());
    let bare = Command::new(&programs.program)
        .output()
        .expect("the program runs");
    assert!(bare.status.success());
    let bare = lines_of(&bare.stdout);
    assert_line(&bare, "libc malloc", "libc.so.6");
    assert_line(&bare, "libc missing", "NULL");
    assert!(
        bare["next missing error"].contains("undefined symbol: memwarden_no_such_symbol"),
        "{bare:#?}"
    );

    let (run, lines) = profile_program(&programs, Wrapper::None);
    for key in UNCHANGED {
        assert_line(&lines, key, &bare[key]);
    }
    // RTLD_NEXT from the program: the first object after it, the profiler. Were the
    // profiler's dlsym to lose its caller, RTLD_NEXT would be resolved from the profiler's
    // library and give libc's.
    assert_line(&lines, "next malloc from main", PRELOAD);
    // A lookup in libc's handle gives the hooks, aliases included.
    for key in [
        "libc malloc",
        "libc __libc_malloc",
        "libc free",
        "libc calloc",
        "libc mmap",
    ] {
        assert_line(&lines, key, PRELOAD);
    }
    let heap = run.u64_at("/peak/heap_bytes");
    assert!(
        within(heap, 210 * MIB, 0.03),
        "heap peak {heap} bytes, expected 210 MiB (150 through libc's handle, 60 plain)"
    );
    let unseen = unseen_warnings(&run);
    assert!(unseen.is_empty(), "{unseen:#?}");
}

#[test]
fn an_interposer_preloaded_before_the_profiler_reaches_it_through_rtld_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (run, lines) = profile_program(&compile(dir.path()), Wrapper::Before);
    // Each RTLD_NEXT is resolved from the object that asked: the program gets the wrapper,
    // the wrapper gets the profiler, which then sees what the wrapper forwards.
    assert_line(&lines, "next malloc from main", "libwrapper.so");
    assert_line(&lines, "next malloc from wrapper", PRELOAD);
    assert_line(&lines, "wrapper saw the plain malloc", "yes");
    // libc's malloc, looked up in libc's handle, is the profiler's hook itself, not the
    // process's malloc (the wrapper's): a wrapper asking for libc's malloc that way to
    // forward to must not get its own back.
    assert_line(&lines, "libc malloc", PRELOAD);
    assert_line(&lines, "libc free", PRELOAD);
    let heap = run.u64_at("/peak/heap_bytes");
    assert!(
        within(heap, 210 * MIB, 0.03),
        "heap peak {heap} bytes, expected 210 MiB (150 through libc's handle, 60 through the wrapper)"
    );
    let unseen = unseen_warnings(&run);
    assert!(unseen.is_empty(), "{unseen:#?}");
}

#[test]
fn an_interposer_preloaded_after_the_profiler_still_finds_libc_through_rtld_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (run, lines) = profile_program(&compile(dir.path()), Wrapper::After);
    assert_line(&lines, "next malloc from main", PRELOAD);
    // From the wrapper, the next malloc is libc's; were the lookup resolved from the
    // profiler's library instead, it would be the wrapper's own.
    assert_line(&lines, "next malloc from wrapper", "libc.so.6");
    // The program's malloc reaches the profiler first, never the wrapper.
    assert_line(&lines, "wrapper saw the plain malloc", "no");
    // libc's malloc is still recognised past the wrapper's between the two.
    assert_line(&lines, "libc malloc", PRELOAD);
    let heap = run.u64_at("/peak/heap_bytes");
    assert!(
        within(heap, 210 * MIB, 0.03),
        "heap peak {heap} bytes, expected 210 MiB"
    );
    let unseen = unseen_warnings(&run);
    assert!(unseen.is_empty(), "{unseen:#?}");
}
