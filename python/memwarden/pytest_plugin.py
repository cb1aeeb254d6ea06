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

**How the heap is measured.** A test's allocations are seen by memwarden's profiler, an
``LD_PRELOAD`` library, which a running interpreter cannot load. So when a test needs it
(``--memwarden``, ``--memwarden-limit``, ``-n`` of pytest-xdist, or a collected test with
a limit marker) and pytest does not run under it, the plugin **starts pytest again, once,
under the profiler** (same interpreter, same arguments, ``os.execve``), before any test
runs; pytest-xdist's workers inherit it. ``--memwarden-no-preload`` (or
``MEMWARDEN_PYTEST_PRELOAD=0``) keeps pytest as it is: the limits are then measured with
``tracemalloc`` (Python's and numpy's allocations, slower), and the report says so.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import sys
import tempfile
import tracemalloc
from typing import Any, Iterator, List, Optional, Tuple

import pytest

from . import _heap, _native, _preload
from .track import Track, parse_size, signed_size

_REEXECUTED = "MEMWARDEN_PYTEST_REEXECUTED"
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
    xdist = getattr(config.option, "numprocesses", None)
    if config.getoption("memwarden") or limit is not None or xdist:
        _profile_or_fallback(config)


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.get_closest_marker(name) for item in session.items for name in _MARKERS):
        _profile_or_fallback(session.config)


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
        capture_dir = tempfile.mkdtemp(prefix="memwarden-pytest-")
        env = _preload.environment(capture_dir)
        if env is not None:
            env[_REEXECUTED] = capture_dir
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
        shutil.rmtree(capture_dir, ignore_errors=True)
        why = "memwarden's profiler library is not installed with this package"
    elif os.environ.get(_REEXECUTED):
        why = "pytest was started again under the profiler, but it records nothing (unsupported platform?)"
    else:
        why = "--memwarden-no-preload (or MEMWARDEN_PYTEST_PRELOAD=0)"
    config._memwarden_fallback = why  # type: ignore[attr-defined]
    if not tracemalloc.is_tracing():
        tracemalloc.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    capture_dir = os.environ.get(_REEXECUTED)
    if capture_dir and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(capture_dir, ignore_errors=True)


class _Measure:
    """One test's figures: with the profiler (a :class:`Track`), else with tracemalloc."""

    def __init__(self, name: str) -> None:
        self.track: Optional[Track] = None
        self.start = 0
        if _heap.available():
            self.track = Track(name)
            self.track.__enter__()
        elif tracemalloc.is_tracing():
            tracemalloc.reset_peak()
            self.start = tracemalloc.get_traced_memory()[0]

    def finish(self, collect: bool) -> Tuple[Optional[int], Optional[int], str]:
        """(peak above the start, left allocated at the end, how measured); `collect` runs
        the garbage collector first, so what is left is what the test really holds."""
        if collect:
            gc.collect()
        if self.track is not None:
            self.track.__exit__(None, None, None)
            how = "sampled estimate" if self.track.sampled else "every allocation recorded"
            return self.track.peak_heap_bytes, self.track.leaked_bytes, how
        if tracemalloc.is_tracing():
            now, peak = tracemalloc.get_traced_memory()
            return max(peak - self.start, 0), now - self.start, "tracemalloc"
        return None, None, "not measured"

    def lines(self, top: int) -> List[str]:
        """The lines that allocated the most in the test (read from the capture now)."""
        return [str(line) for line in self.track.top_lines[:top]] if self.track is not None else []


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
    if memory_limit is None and leak_limit is None and not table:
        return (yield)
    measure = _Measure(item.nodeid)
    try:
        result = yield
    finally:
        peak, left, how = measure.finish(collect=leak_limit is not None)
        item.user_properties.append(("memwarden", (peak, left, how, measure.lines(1) if table else [])))
    size = _native.format_size
    fallback = getattr(config, "_memwarden_fallback", None)
    note = f" Measured with {how}" + (f" ({fallback})." if fallback else ".")
    over_memory = memory_limit is not None and peak is not None and peak > memory_limit
    over_leaks = leak_limit is not None and left is not None and left > leak_limit
    lines = measure.lines(3) if over_memory or over_leaks else []
    top = (" Top lines: " + "; ".join(lines) + ".") if lines else ""
    if over_memory:
        pytest.fail(
            f"Test allocated {size(peak)} at its peak, over its limit of {size(memory_limit)}"
            f" (the heap's highest above its level when the test began).{note}{top}",
            pytrace=False,
        )
    if over_leaks:
        pytest.fail(
            f"Test left {size(left)} allocated at its end (after a garbage collection), over its"
            f" leak limit of {size(leak_limit)}.{note}{top}",
            pytrace=False,
        )
    return result


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    for key, value in report.user_properties:
        if key == "memwarden":
            _ROWS.append((report.nodeid, report.outcome, *value))


_ROWS: List[Tuple[Any, ...]] = []


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
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
