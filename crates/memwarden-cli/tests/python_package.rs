//! The Python package: `pip wheel .` gives one wheel with the whole tool (the extension
//! module `memwarden._native`, the `memwarden` command, the preload library), tagged as
//! auditwheel judges it; installed into a fresh virtual environment whose path holds a
//! space and a colon (which LD_PRELOAD cannot carry), its command runs, profiles and
//! records, and its module reads real captures; the same abi3 wheel installs on CPython
//! 3.9 and 3.13.
//!
//! The wheel is built once per run of this test binary, by pip with the test interpreter
//! (`MEMWARDEN_TEST_PYTHON`, which has pip fetch maturin as the build's requirement), into
//! a target folder of its own so that the build's cargo never waits for this cargo's lock.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use util::{bytes_at, line_of, pyenv_python, python, require, succeed, text, Run};

/// The tag the wheel must carry: the binaries use symbols of glibc 2.34.
const PLATFORM_TAG: &str = "manylinux_2_34_x86_64";

/// What a command printed, both streams.
/// This test process's own folder under the target folder: nextest runs each test in a
/// process of its own, and they must not build into (or delete) each other's wheels and
/// venvs. Folders of processes that are gone are removed.
fn own_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-package");
        fs::create_dir_all(&base).expect("python-package folder");
        for entry in fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name
                .parse::<u32>()
                .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let own = base.join(std::process::id().to_string());
        fs::create_dir_all(&own).expect("own folder");
        own
    })
}

/// Runs `f` holding a lock every test process of this file takes: `pip wheel .` builds in
/// the checkout (its `python/memwarden/_bin/`) and one cargo target folder.
fn exclusively<T>(f: impl FnOnce() -> T) -> T {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-package.lock");
    let file = fs::File::create(&path).expect("lock file");
    // SAFETY: flock on a descriptor this function owns for the whole call; the lock goes
    // with the descriptor when `file` is dropped.
    #[allow(unsafe_code)]
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock {}", path.display());
    let result = f();
    drop(file);
    result
}

/// The wheel, built on first use (in each test process: a warm build takes seconds).
fn wheel() -> &'static Path {
    static WHEEL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match WHEEL.get_or_init(|| exclusively(build_wheel)) {
        Ok(path) => path,
        Err(why) => panic!("{why}"),
    }
}

/// `pip wheel . --no-deps -w DIR`.
fn build_wheel() -> Result<PathBuf, String> {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = own_dir().join("wheel");
    let _ = fs::remove_dir_all(&dir);
    let mut pip = Command::new(python());
    pip.args([
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--disable-pip-version-check",
    ])
    .arg("-w")
    .arg(&dir)
    .arg(util::workspace_root());
    // The variables cargo sets for this test describe this crate, not the build's.
    for (key, _) in std::env::vars_os() {
        if key
            .to_str()
            .is_some_and(|k| k.starts_with("CARGO_") && k != "CARGO_HOME")
        {
            pip.env_remove(key);
        }
    }
    pip.env("CARGO_TARGET_DIR", tmp.join("wheel-target"));
    let output = pip.output().map_err(|e| format!("pip does not run: {e}"))?;
    if !output.status.success() {
        return Err(format!("pip wheel failed:\n{}", text(&output)));
    }
    let wheels: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "whl"))
        .collect();
    match wheels.as_slice() {
        [wheel] => Ok(wheel.clone()),
        _ => Err(format!("pip wheel made {wheels:?}")),
    }
}

/// A fresh virtual environment of `interpreter` at `base/venv with space:colon`, with the
/// wheel installed. venv refuses to make one at a path holding a colon (CPython 3.11+),
/// so it is made beside and moved there, as a user who moves a project would.
fn install(base: &Path, interpreter: &Path) -> PathBuf {
    let made = base.join("venv with space");
    succeed(Command::new(interpreter).args(["-m", "venv"]).arg(&made));
    let venv = base.join("venv with space:colon");
    fs::rename(&made, &venv).expect("move the venv");
    succeed(
        Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--no-index",
                "--disable-pip-version-check",
            ])
            .arg(wheel()),
    );
    venv
}

/// A fresh folder `name` for venvs, in this test process's part of the target folder.
fn venv_base(name: &str) -> PathBuf {
    let base = own_dir().join(name);
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base).expect("venv folder");
    base
}

/// The venv of the test interpreter with the wheel installed, made on first use.
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| install(&venv_base("test-python"), &python()))
}

/// The venv's `memwarden` console script, set up as [`util::memwarden`] sets up the
/// command under test, with the data directory in `home`.
fn venv_memwarden(home: &Path) -> Command {
    let mut command = Command::new(venv().join("bin/memwarden"));
    command
        .env("MEMWARDEN_NO_GPU", "1")
        .env("MEMWARDEN_HOME", home)
        .env("MEMWARDEN_REPORT_DIR", home.join("html-reports"))
        .env_remove("MEMWARDEN_PRELOAD")
        .env_remove("MEMWARDEN_LEDGER")
        .env_remove("LD_PRELOAD");
    command
}

/// Names of the files in a wheel (a zip), with their Unix modes.
fn wheel_files(wheel: &Path) -> Vec<(String, u32)> {
    let listing = succeed(Command::new(python()).arg("-c").arg(
        "import sys, zipfile\n\
         for i in zipfile.ZipFile(sys.argv[1]).infolist(): print(i.external_attr >> 16, i.filename)",
    ).arg(wheel));
    listing
        .lines()
        .filter_map(|line| {
            let (mode, name) = line.split_once(' ')?;
            Some((name.to_owned(), mode.parse().ok()?))
        })
        .collect()
}

#[test]
fn the_wheel_holds_the_whole_tool_and_is_tagged_as_auditwheel_judges_it() {
    let wheel = wheel();
    let name = wheel.file_name().and_then(|n| n.to_str()).expect("name");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        name,
        format!("memwarden-{version}-cp39-abi3-{PLATFORM_TAG}.whl")
    );

    let files = wheel_files(wheel);
    let mode_of = |wanted: &str| {
        files
            .iter()
            .find(|(name, _)| name == wanted)
            .map(|(_, mode)| *mode)
            .unwrap_or_else(|| panic!("{wanted} not in the wheel: {files:?}"))
    };
    for executable in [
        "memwarden/_bin/memwarden",
        "memwarden/_bin/libmemwarden_preload.so",
        "memwarden/_native.abi3.so",
    ] {
        assert_eq!(
            mode_of(executable) & 0o111,
            0o111,
            "{executable} executable"
        );
    }
    for file in [
        "memwarden/__init__.py",
        "memwarden/__main__.py",
        "memwarden/_paths.py",
        "memwarden/_native.pyi",
        "memwarden/py.typed",
    ] {
        mode_of(file);
    }
    let entry_points = files
        .iter()
        .find(|(name, _)| name.ends_with(".dist-info/entry_points.txt"))
        .expect("entry points");
    let unzip = succeed(
        Command::new(python())
            .arg("-c")
            .arg("import sys, zipfile; print(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]).decode())")
            .arg(wheel)
            .arg(&entry_points.0),
    );
    assert!(
        unzip
            .lines()
            .any(|line| line.replace(' ', "") == "memwarden=memwarden.__main__:main"),
        "{unzip}"
    );

    // auditwheel reads every ELF file in the wheel: the tag it finds must be the wheel's.
    let has_auditwheel = Command::new(python())
        .args(["-c", "import auditwheel"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(
        "python_package::auditwheel",
        has_auditwheel
            .then_some(())
            .ok_or_else(|| "auditwheel is not installed in MEMWARDEN_TEST_PYTHON (scripts/test-requirements.txt)".to_owned()),
    ) {
        return;
    }
    let shown = succeed(
        Command::new(python())
            .args(["-m", "auditwheel", "show"])
            .arg(wheel),
    );
    let shown = shown.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        shown.contains(&format!(
            "is consistent with the following platform tag: \"{PLATFORM_TAG}\""
        )),
        "{shown}"
    );
}

#[test]
fn the_installed_command_profiles_from_a_venv_whose_path_holds_a_space_and_a_colon() {
    let home = tempfile::tempdir().expect("tempdir");
    let version = succeed(venv_memwarden(home.path()).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("memwarden {}", env!("CARGO_PKG_VERSION"))
    );
    let python_m = succeed(
        Command::new(venv().join("bin/python"))
            .args(["-m", "memwarden", "--version"])
            .env_remove("MEMWARDEN_PRELOAD"),
    );
    assert_eq!(python_m, version);

    let script = "import time\n\
                  buffer = bytearray(64 << 20)  # @buffer\n\
                  time.sleep(0.2)\n";
    let run = profiled_run(home.path(), script, &[]);
    let held = bytes_at(&run, script, "at_peak", "buffer");
    assert!(
        util::within(held, 64 << 20, 0.05),
        "{held} bytes at the buffer's line: {}",
        run.stderr()
    );
}

/// Runs `script` as workload.py with the venv's Python under the venv's
/// `memwarden run --profile --json report.json <options>`.
fn profiled_run(home: &Path, script: &str, options: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("workload.py"), script).expect("write script");
    let json = dir.path().join("report.json");
    let output = venv_memwarden(home)
        .args(["run", "--profile", "--json"])
        .arg(&json)
        .args(options)
        .arg("--")
        .arg(venv().join("bin/python"))
        .arg("workload.py")
        .current_dir(dir.path())
        .output()
        .expect("memwarden runs");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report = fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    Run {
        output,
        report,
        dir,
    }
}

#[test]
fn a_recorded_run_of_the_installed_command_has_its_guardian() {
    // The guardian re-executes /proc/self/exe: the console script must have become the
    // Rust command itself, not left a Python in between.
    let home = tempfile::tempdir().expect("tempdir");
    let json = home.path().join("report.json");
    let output = venv_memwarden(home.path())
        .args(["run", "--model", "pkg", "--version", "1", "--json"])
        .arg(&json)
        .args(["--", "true"])
        .output()
        .expect("memwarden runs");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        text(&output).contains("recorded pkg@1"),
        "{}",
        text(&output)
    );
    let report: Value =
        serde_json::from_str(&fs::read_to_string(&json).expect("report")).expect("JSON");
    let warnings = report["warnings"].as_array().expect("warnings");
    assert!(
        !warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("guardian"))),
        "{warnings:?}"
    );
}

#[test]
fn the_native_module_analyzes_kept_captures_and_unescapes_names() {
    let home = tempfile::tempdir().expect("tempdir");
    let script = "import time\n\
                  buffer = bytearray(32 << 20)  # @buffer\n\
                  time.sleep(0.2)\n";
    let captures = home.path().join("captures");
    let captures_arg = captures.to_str().expect("utf-8");
    let run = profiled_run(home.path(), script, &["--capture-dir", captures_arg]);
    let line = line_of(script, "buffer");
    let from_report = bytes_at(&run, script, "at_peak", "buffer");

    // With the run's report kept beside the captures, then without it.
    let check = r#"
import json, os, sys, warnings
import memwarden, memwarden._native as native

warnings.simplefilter("error")
assert memwarden.__version__ == native.version() == "VERSION", memwarden.__version__
assert native.unescape(r"caf\xc3\xa9 \\") == "café \\".encode()
try:
    native.unescape(r"bad \q")
    sys.exit("unescape accepted a bad escape")
except ValueError:
    pass

def held(profile):
    return sum(
        entry["bytes"]
        for entry in profile["at_peak"]
        if any(f["file"].endswith("workload.py") and f["line"] == LINE for f in entry["stack"])
    )

dir = sys.argv[1]
with_report = json.loads(native.analyze_captures(dir))
os.rename(os.path.join(dir, "report.json"), os.path.join(dir, "kept.json"))
without = json.loads(native.analyze_captures(dir, raw_frames=True))
for wrong, error in [(dir + "/none", FileNotFoundError), (dir + "/kept.json", NotADirectoryError)]:
    try:
        native.analyze_captures(wrong)
        sys.exit(f"analyze_captures({wrong!r}) did not raise")
    except error:
        pass
print(held(with_report), held(without))
"#
    .replace("VERSION", env!("CARGO_PKG_VERSION"))
    .replace("LINE", &line.to_string());
    let printed = succeed(
        Command::new(venv().join("bin/python"))
            .arg("-c")
            .arg(&check)
            .arg(&captures),
    );
    let held: Vec<u64> = printed
        .split_whitespace()
        .map(|n| n.parse().expect("a count"))
        .collect();
    assert_eq!(held, [from_report, from_report], "{printed}");
    assert!(util::within(from_report, 32 << 20, 0.05), "{from_report}");
}

/// The abi3 wheel on another CPython: installs, imports, runs the command.
fn installs_on(version: &str) {
    let test = format!("python_package::installs_on_cpython_{version}");
    let Some(interpreter) = pyenv_python(version).filter(|p| p.exists()) else {
        require(
            &test,
            Err(format!(
                "pyenv has no CPython {version} (`pyenv install {version}`)"
            )),
        );
        return;
    };
    let venv = install(&venv_base(version), &interpreter);
    let printed = succeed(Command::new(venv.join("bin/python")).args([
        "-c",
        "import sys, memwarden, memwarden._native as n\n\
         print(sys.version_info[:2], memwarden.__version__, n.unescape('a\\\\x3ab'))",
    ]));
    let minor = version.split_once('.').expect("3.x").1;
    assert_eq!(
        printed.trim(),
        format!("(3, {minor}) {} b'a:b'", env!("CARGO_PKG_VERSION"))
    );
    let version_line = succeed(Command::new(venv.join("bin/memwarden")).arg("--version"));
    assert!(version_line.starts_with("memwarden "), "{version_line}");

    // A block under the profiler: heap figures on every version; lines where the profiler
    // reads the interpreter's frames (3.10 to 3.13), else one warning saying why not.
    let home = venv_base(&format!("{version}-home"));
    let output = venv_memwarden(&home)
        .args(["run", "--quiet", "--profile", "--"])
        .arg(venv.join("bin/python"))
        .args([
            "-c",
            "import memwarden\nwith memwarden.track() as t:\n    x = bytearray(40 << 20)\n\
             print(t.peak_heap_bytes >= 40 << 20, len(t.top_lines) > 0, t.notes)",
        ])
        .output()
        .expect("memwarden runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}", text(&output));
    let reads_frames = version != "3.9";
    assert!(
        stdout.starts_with(if reads_frames {
            "True True"
        } else {
            "True False"
        }),
        "{version}: {stdout} {stderr}"
    );
    assert_eq!(
        stderr.matches("does not read the frames of Python").count(),
        usize::from(!reads_frames),
        "{version}: one warning where there are no lines: {stderr}"
    );
}

#[test]
fn the_same_wheel_installs_on_cpython_3_9() {
    installs_on("3.9");
}

#[test]
fn the_same_wheel_installs_on_cpython_3_13() {
    installs_on("3.13");
}

/// Installs `packages` from PyPI into the venv of `python`.
fn pip_install(python: &Path, packages: &[&str]) {
    succeed(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages),
    );
}

/// The Python side's own tests (`python/tests`: the API, the pytest plugin through
/// pytester, the `%%memwarden` magic through IPython and a kernel through jupyter_client),
/// run by the installed package's interpreter, so they test what `pip install` gave.
#[test]
fn the_python_api_the_pytest_plugin_and_the_magic_pass_their_tests_where_installed() {
    let venv = venv();
    let python = venv.join("bin/python");
    pip_install(
        &python,
        &[
            "numpy",
            "pytest>=8",
            "pytest-xdist",
            "ipython",
            "ipykernel",
            "jupyter_client",
        ],
    );
    let tests = util::workspace_root().join("python/tests");
    let output = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "error::pytest.PytestUnknownMarkWarning",
        ])
        .arg(&tests)
        .current_dir(venv)
        .env("MEMWARDEN_NO_GPU", "1")
        .env_remove("LD_PRELOAD")
        .env_remove("MEMWARDEN_PRELOAD")
        .env_remove("MEMWARDEN_CAPTURE_DIR")
        .env_remove("MEMWARDEN_RUN_ID")
        .output()
        .expect("pytest runs");
    assert!(
        output.status.success(),
        "python/tests failed:\n{}",
        text(&output)
    );
}

/// The package's source type-checks against its own stubs (`_native.pyi`, `py.typed`:
/// what its users' type checkers see) and has no unused names (mypy, pyflakes).
#[test]
fn the_package_type_checks_with_its_stubs() {
    let python = venv().join("bin/python");
    pip_install(
        &python,
        &["mypy", "pyflakes", "pytest>=8", "ipython", "jupyter_client"],
    );
    let package = util::workspace_root().join("python/memwarden");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mypy-cache");
    succeed(
        Command::new(&python)
            .args(["-m", "mypy", "--cache-dir"])
            .arg(&cache)
            .arg(&package),
    );
    succeed(
        Command::new(&python)
            .args(["-m", "pyflakes"])
            .arg(&package)
            .arg(util::workspace_root().join("python/tests")),
    );
}

/// With pytest-memray installed too (a suite moving over), both act on the markers: the
/// plugin says so once, and `-p no:memray` leaves memwarden alone, its limits still held.
#[test]
fn pytest_memray_installed_beside_it_is_named() {
    let python = venv().join("bin/python");
    pip_install(&python, &["pytest>=8", "pytest-memray", "numpy"]);
    let suite = own_dir().join("memray-suite");
    fs::create_dir_all(&suite).expect("suite folder");
    fs::write(
        suite.join("test_limits.py"),
        "import numpy as np\nimport pytest\n\n@pytest.mark.limit_memory(\"10 MB\")\ndef test_over():\n    assert np.ones(40 * 2**20 // 8).sum() > 0\n",
    )
    .expect("suite");
    let run = |extra: &[&str]| {
        Command::new(&python)
            .args(["-m", "pytest", "-p", "no:cacheprovider"])
            .args(extra)
            .current_dir(&suite)
            .env("MEMWARDEN_NO_GPU", "1")
            .env_remove("LD_PRELOAD")
            .env_remove("MEMWARDEN_CAPTURE_DIR")
            .output()
            .expect("pytest runs")
    };
    let both = text(&run(&[]));
    assert!(
        both.contains("pytest-memray is installed too") && both.contains("-p no:memray"),
        "{both}"
    );
    let alone = text(&run(&["-p", "no:memray"]));
    assert!(!alone.contains("pytest-memray is installed too"), "{alone}");
    assert!(
        alone.contains("over its limit of 10.00 MiB") && alone.contains("1 failed"),
        "{alone}"
    );
}
