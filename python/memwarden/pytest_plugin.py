"""memwarden's pytest plugin (entry point ``pytest11``): memory limits per test, with
pytest-memray's marker names, and a per-test table.

- ``@pytest.mark.limit_memory("200 MB")``: the test fails when its own allocations peaked
  above the limit (the heap's highest above its level when the test began, as memray
  counts it), not when the process's resident memory did.
- ``@pytest.mark.limit_leaks("1 MB")``: the test fails when it left more than that
  allocated at its end (after a garbage collection).
- Sizes read as pytest-memray reads them: ``B``, ``KB``, ``MB``, ``GB``, ``TB``, ``PB``,
  case-insensitive, powers of 1024 (``"200 MB"`` is 200 MiB).
- ``--memwarden``: a table of every test's peaks at the end; ``--memwarden-limit SIZE``: a
  limit for every test without a ``limit_memory`` marker (memwarden's sizes: ``1GiB``,
  ``500MB`` = 500 × 10^6).
- ``--memwarden-baseline``: each test's heap peak is compared with the test's history in
  the ledger, and the test fails only beyond the noise that history shows (three earlier
  runs teach it; until then it only learns). The session's figures are recorded at its
  end as runs of the suite (``--memwarden-model``, default the root directory's name;
  ``--memwarden-version``, default the git commit; stage ``test``), so ``memwarden
  history MODEL`` shows them. ``--memwarden-accept-baseline`` records this session's
  figures as the new baselines instead (after an increase made on purpose).

**Tests that start processes** are measured with them, as one tree, when pytest runs
under the profiler with a tree counter (the plugin's re-execution makes one): see
``memwarden._pytest_measure``.

**How the heap is measured.** A test's allocations are seen by memwarden's profiler, an
``LD_PRELOAD`` library, which a running interpreter cannot load. So when a test needs it
(``--memwarden``, ``--memwarden-limit``, ``--memwarden-baseline``, ``-n`` of
pytest-xdist, a test module whose code uses a limit marker, or a collected test with one)
and pytest does not run under it, the plugin **starts pytest again, once, under the
profiler** (same interpreter, same arguments, ``os.execve``), before any test runs and,
where it can tell, before any test module is imported; pytest-xdist's workers inherit it. ``--memwarden-no-preload`` (or
``MEMWARDEN_PYTEST_PRELOAD=0``) keeps pytest as it is: the limits are then measured with
``tracemalloc`` (Python's and numpy's allocations, slower), and the report says so.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import sys
import time
import tracemalloc
from typing import Any, Iterator, List, Optional, Tuple

import pytest

from . import _heap, _native, _preload
from ._pytest_measure import Ledger, Measure, claim_tree
from .track import parse_size, signed_size

_REEXECUTED = _preload.PYTEST_CAPTURE_DIR
_MARKERS = ("limit_memory", "limit_leaks")
_UNITS = {"B": 0, "KB": 1, "MB": 2, "GB": 3, "TB": 4, "PB": 5}


def parse_memray_size(text: str) -> int:
    """A size as pytest-memray writes it: ``"100 KB"`` = 100 × 1024; ``"3.0 GB"``."""
    found = re.fullmatch(r"\s*\+?(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]+)\s*", str(text))
    unit = found and found.group(2).upper()
    if not found or unit not in _UNITS:
        raise ValueError(
            f"invalid memory size {text!r}: write it as pytest-memray does, e.g. '200 MB' or "
            f"'1.5 GB' (units B, KB, MB, GB, TB, PB; powers of 1024)"
        )
    return int(float(found.group(1)) * 1024 ** _UNITS[unit])


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memwarden", "memory limits and peaks per test (memwarden)")
    group.addoption("--memwarden", action="store_true", help="show every test's memory peaks at the end")
    group.addoption(
        "--memwarden-limit",
        metavar="SIZE",
        help="limit for the allocations of each test without a limit_memory marker (e.g. 1GiB)",
    )
    group.addoption(
        "--memwarden-baseline",
        action="store_true",
        help="fail tests whose heap peak grew beyond the noise of their history in the ledger; record this session's",
    )
    group.addoption(
        "--memwarden-accept-baseline",
        action="store_true",
        help="record this session's figures as every test's new baseline (after an increase made on purpose)",
    )
    group.addoption("--memwarden-model", metavar="NAME", help="the suite's model name in the ledger (default: the root directory's name)")
    group.addoption("--memwarden-version", metavar="VERSION", help="the version recorded (default: the git commit)")
    group.addoption("--memwarden-ledger", metavar="PATH_OR_URL", help="the ledger (default: the data directory's)")
    parser.addini("memwarden_model", "the suite's model name in memwarden's ledger")
    group.addoption(
        "--memwarden-no-preload",
        action="store_true",
        help="do not start pytest again under memwarden's profiler; measure with tracemalloc",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "limit_memory(size): fail the test when its allocations peak above size ('200 MB')"
    )
    config.addinivalue_line(
        "markers", "limit_leaks(size): fail the test when it leaves more than size allocated ('1 MB')"
    )
    limit = config.getoption("memwarden_limit")
    try:
        config._memwarden_limit = None if limit is None else parse_size(limit)  # type: ignore[attr-defined]
    except ValueError as e:
        raise pytest.UsageError(f"--memwarden-limit: {e}") from None
    baseline = config.getoption("memwarden_baseline") or config.getoption("memwarden_accept_baseline")
    if baseline:
        model = config.getoption("memwarden_model") or config.getini("memwarden_model") or config.rootpath.name
        config._memwarden_ledger = Ledger(  # type: ignore[attr-defined]
            model,
            config.getoption("memwarden_version"),
            config.getoption("memwarden_ledger"),
            accept=config.getoption("memwarden_accept_baseline"),
        )
    if config.getoption("memwarden") or limit is not None or _xdist(config) or baseline:
        _profile_or_fallback(config)
    config._memwarden_tree = claim_tree()  # type: ignore[attr-defined]
    if _OWNER[0] is None and os.environ.get(_OWNER_PID) == str(os.getpid()):
        _OWNER[0] = config


def _xdist(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", None))


def pytest_collect_file(file_path: Any, parent: Any) -> None:
    """Starts pytest again under the profiler before importing the first test module whose
    code uses a limit marker (``pytest.mark.limit_memory``, as an attribute: not a string
    that names it), so that no test module is imported (nor collected) twice; markers set
    elsewhere (a conftest's hook) are found after collection."""
    if file_path.suffix != ".py" or _heap.available():
        return None
    config = parent.config
    if getattr(config, "_memwarden_fallback", False) or not _wanted(config):
        return None
    try:
        text = file_path.read_bytes()
        # Parsed only when the name is there at all: most modules never are.
        uses = any(name.encode() in text for name in _MARKERS) and any(
            isinstance(node, ast.Attribute) and node.attr in _MARKERS for node in ast.walk(ast.parse(text))
        )
    except (OSError, SyntaxError, ValueError):
        return None
    if uses:
        _profile_or_fallback(config)
    return None


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.get_closest_marker(name) for item in session.items for name in _MARKERS):
        _profile_or_fallback(session.config)
        if session.config.pluginmanager.hasplugin("memray"):
            session.config.issue_config_time_warning(
                pytest.PytestConfigWarning(
                    "pytest-memray is installed too and acts on the same limit_memory/limit_leaks markers: "
                    "each test is measured by both, and takes longer; run with -p no:memray (or uninstall "
                    "pytest-memray) to use memwarden alone"
                ),
                stacklevel=2,
            )


def _wanted(config: pytest.Config) -> bool:
    return not (
        config.getoption("memwarden_no_preload")
        or os.environ.get("MEMWARDEN_PYTEST_PRELOAD") == "0"
        or os.environ.get("PYTEST_XDIST_WORKER")
        or os.environ.get(_REEXECUTED)
    )


def _profile_or_fallback(config: pytest.Config) -> None:
    """Starts pytest again under the profiler when it is wanted and can be; else the limits
    fall back to tracemalloc."""
    if _heap.available() or getattr(config, "_memwarden_fallback", False):
        return
    if _wanted(config):
        try:
            env = _preload.pytest_environment(xdist=_xdist(config))
        except _preload.Unavailable as e:
            why = str(e)
        else:
            argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
            argv[0] = sys.executable
            # pytest may hold the standard streams redirected (capturing): give them back
            # first, or the new pytest would write into this one's temporary files.
            capture = config.pluginmanager.getplugin("capturemanager")
            if capture is not None:
                capture.stop_global_capturing()
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, argv, env)
    elif os.environ.get(_REEXECUTED):
        why = "pytest was started again under the profiler, but it records nothing (unsupported platform?)"
    else:
        why = "--memwarden-no-preload (or MEMWARDEN_PYTEST_PRELOAD=0)"
    config._memwarden_fallback = why  # type: ignore[attr-defined]
    if not tracemalloc.is_tracing():
        tracemalloc.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    # Only the pytest that was started again removes its captures: not a pytest it runs
    # in its own process (pytester's inline runs), nor one it starts (which inherits the
    # environment), nor xdist's workers.
    capture_dir = os.environ.get(_REEXECUTED)
    if capture_dir and config is _OWNER[0]:
        shutil.rmtree(capture_dir, ignore_errors=True)


_OWNER: List[Optional[pytest.Config]] = [None]
_OWNER_PID = _preload.PYTEST_OWNER_PID


def _limit(item: pytest.Item, name: str) -> Optional[int]:
    marker = item.get_closest_marker(name)
    if marker is None:
        return None
    if not marker.args:
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{name} needs a size, e.g. '200 MB'")
    try:
        return parse_memray_size(marker.args[0])
    except ValueError as e:
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{name}: {e}") from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[Any]:
    config = item.config
    memory_limit = _limit(item, "limit_memory")
    if memory_limit is None:
        memory_limit = getattr(config, "_memwarden_limit", None)
    leak_limit = _limit(item, "limit_leaks")
    table = config.getoption("memwarden")
    ledger: Optional[Ledger] = getattr(config, "_memwarden_ledger", None)
    if memory_limit is None and leak_limit is None and not table and ledger is None:
        return (yield)
    measure = Measure(item.nodeid, tree=getattr(config, "_memwarden_tree", False))
    try:
        result = yield
    finally:
        peak, left, how = measure.finish(collect=leak_limit is not None)
        item.user_properties.append(("memwarden", (peak, left, how, measure.lines(1) if table else [])))
    verdict, judgement = None, ""
    if ledger is not None and peak is not None:
        verdict, judged, judgement = ledger.judge(item.nodeid, measure.profile(), peak)
        duration = time.time() - measure.started_unix_s
        item.user_properties.append(
            ("memwarden_run", (measure.started_unix_s, duration, peak, left or 0, measure.profile(), verdict, judged,
                               measure.track.peak_rss_bytes or 0, measure.track.peak_rss_exact))
        )
    size = _native.format_size
    fallback = getattr(config, "_memwarden_fallback", None)
    note = f" Measured with {how}" + (f" ({fallback})." if fallback else ".")
    over_memory = memory_limit is not None and peak is not None and peak > memory_limit
    over_leaks = leak_limit is not None and left is not None and left > leak_limit
    lines = measure.lines(3) if over_memory or over_leaks or verdict == "regression" else []
    top = (" Top lines: " + "; ".join(lines) + ".") if lines else ""
    if over_memory and peak is not None and memory_limit is not None:
        pytest.fail(
            f"Test allocated {size(peak)} at its peak, over its limit of {size(memory_limit)}"
            f" (the heap's highest above its level when the test began).{note}{top}",
            pytrace=False,
        )
    if over_leaks and left is not None and leak_limit is not None:
        pytest.fail(
            f"Test left {size(left)} allocated at its end (after a garbage collection), over its"
            f" leak limit of {size(leak_limit)}.{note}{top}",
            pytrace=False,
        )
    if verdict == "regression":
        pytest.fail(f"Test's heap peak grew beyond its baseline in the ledger: {judgement}.{note}{top}", pytrace=False)
    return result


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    for key, value in report.user_properties:
        figures: Tuple[Any, ...] = tuple(value)  # type: ignore[arg-type]
        if key == "memwarden":
            _ROWS.append((report.nodeid, report.outcome, *figures))
        elif key == "memwarden_run" and _LEDGER_ROWS is not None:
            started, duration, peak, left, profile, verdict, judged, rss, rss_exact = figures
            _LEDGER_ROWS.append(
                (report.nodeid, report.outcome == "passed", started, duration, peak, left, rss, rss_exact, profile, verdict)
            )
            _JUDGED.append(judged)


_LEDGER_ROWS: Optional[List[Tuple[Any, ...]]] = None
_JUDGED: List[bool] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    global _LEDGER_ROWS
    if getattr(session.config, "_memwarden_ledger", None) is not None and not os.environ.get("PYTEST_XDIST_WORKER"):
        _LEDGER_ROWS = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    ledger: Optional[Ledger] = getattr(session.config, "_memwarden_ledger", None)
    if ledger is not None and _LEDGER_ROWS:
        ledger.rows = _LEDGER_ROWS
        ledger.record([sys.executable, *sys.argv])


_ROWS: List[Tuple[Any, ...]] = []


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    ledger: Optional[Ledger] = getattr(config, "_memwarden_ledger", None)
    if ledger is not None and (ledger.outcome or ledger.problem):
        terminalreporter.section("memwarden: baselines")
        if ledger.problem:
            terminalreporter.write_line(ledger.problem)
        if _LEDGER_ROWS and not ledger.problem:
            regressions = sum(1 for row in _LEDGER_ROWS if row[-1] == "regression")
            learning = _JUDGED.count(False)
            accepted = sum(1 for row in _LEDGER_ROWS if row[-1] == "accepted")
            terminalreporter.write_line(
                f"{len(_LEDGER_ROWS)} test(s) measured: {regressions} beyond their baseline"
                + (f", {accepted} accepted as new baselines" if accepted else
                   f", {learning} still learning theirs (3 earlier runs teach a baseline)" if learning else "")
            )
        if ledger.outcome:
            terminalreporter.write_line(ledger.outcome)
    if not config.getoption("memwarden") or not _ROWS:
        return
    size = _native.format_size
    terminalreporter.section("memwarden: memory per test")
    terminalreporter.write_line(f"{'heap peak':>12} {'left':>12}  {'outcome':<8} test  (how measured; top line)")
    for nodeid, outcome, peak, left, how, lines in sorted(_ROWS, key=lambda r: -(r[2] or 0)):
        peak_text = "-" if peak is None else size(peak)
        left_text = "-" if left is None else signed_size(left)
        extra = f"  ({how}" + (f"; {lines[0]}" if lines else "") + ")"
        terminalreporter.write_line(f"{peak_text:>12} {left_text:>12}  {outcome:<8} {nodeid}{extra}")
