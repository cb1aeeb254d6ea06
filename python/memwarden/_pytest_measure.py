"""What the pytest plugin measures of one test, and the ledger's baselines of tests.

**A test and the processes it starts.** When pytest runs under the profiler with a tree
counter (the plugin's own re-execution makes one; so does ``memwarden run --profile``),
every profiled process it starts, forked or ``exec``'d, adds its heap to one shared
counter; a test's peak is that counter's highest above its level when the test began,
so workers a test starts are measured with it, together, at the moment they peak
together. One process claims the counter's mark: the first pytest to configure the
plugin (``MEMWARDEN_TREE_OWNER``); a pytest started inside a test measures its own process
only. pytest-xdist's workers would all share their controller's counter, so none is made
for them: each joins one of its own as it configures (``worker-gwN/tree.mwtree`` in the
capture directory, where the processes its tests start write their captures and find it);
workers that already count in one (under ``memwarden run --profile``) measure their own
process only. Top lines are the test's own and those of the processes it started whose
captures appeared during the test (in a worker, those it ``exec``'d).

**Baselines.** ``--memwarden-baseline`` judges each test's heap peak against the test's
history in the ledger (``memwarden._native.Baselines``, the ledger's rules, read once per
process) and records the session's figures at its end (``memwarden._native.TestRecorder``:
provenance collected once).
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from typing import Any, List, Optional, Set, Tuple

from . import _heap, _lines, _native
from .track import Track

TREE_OWNER = "MEMWARDEN_TREE_OWNER"


def claim_tree() -> bool:
    """Whether this process measures tests with the tree's counter (claiming its mark)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and _heap.CAPTURE_DIR and not _heap.tree_available():
        _worker_tree(worker, _heap.CAPTURE_DIR)
    if not _heap.tree_available() or (worker and os.environ.get(TREE_OWNER) != str(os.getpid())):
        return False
    owner = os.environ.setdefault(TREE_OWNER, str(os.getpid()))
    return owner == str(os.getpid())


def _worker_tree(worker: str, capture_dir: str) -> None:
    """A pytest-xdist worker's own tree counter, which it joins (its siblings must not
    share it): in a folder of its own in the capture directory, where the processes its
    tests start write their captures and find the counter as they start."""
    directory = os.path.join(capture_dir, f"worker-{worker}")
    try:
        os.makedirs(directory, exist_ok=True)
        _native.tree_create(directory)
    except OSError:
        return
    if _heap.tree_adopt(directory):
        os.environ["MEMWARDEN_CAPTURE_DIR"] = directory
        os.environ[TREE_OWNER] = str(os.getpid())


def _captures(directory: str) -> Set[str]:
    """The names of the capture files in `directory`."""
    try:
        return {name for name in os.listdir(directory) if name.endswith(".mwcap")}
    except OSError:
        return set()


def _children_dir() -> str:
    """Where the processes this one starts write their captures (and find the tree)."""
    return os.environ.get("MEMWARDEN_CAPTURE_DIR", "")


class Measure:
    """One test's figures: its heap with the profiler (a :class:`Track`, and the tree's
    counter when this process owns it), else with tracemalloc; its process's resident peak
    either way (the Track's)."""

    def __init__(self, name: str, tree: bool) -> None:
        self.profiled = _heap.available()
        self.start = 0
        self.tree_block: Optional[List[int]] = None
        self.tree_start = 0
        self.images = 0
        self.captures_before: Set[str] = set()
        self.child_captures: List[str] = []
        self._lines: Optional[List[str]] = None
        self.started_unix_s = time.time()
        if self.profiled:
            if tree:
                self.captures_before = _captures(_children_dir())
                self.images = _heap.tree_images()
                self.tree_block = _heap.TREE_MARKS.enter()
                self.tree_start = self.tree_block[0] if self.tree_block is not None else 0
        elif tracemalloc.is_tracing():
            tracemalloc.reset_peak()
            self.start = tracemalloc.get_traced_memory()[0]
        self.track = Track(name)
        self.track.__enter__()

    def finish(self, collect: bool) -> Tuple[Optional[int], Optional[int], str]:
        """(peak above the start, left allocated at the end, how measured); `collect` runs
        the garbage collector first, so what is left is what the test really holds."""
        if collect:
            gc.collect()
        self.track.__exit__(None, None, None)
        if self.profiled:
            how = self.track.how
            peak, left = self.track.peak_heap_bytes, self.track.leaked_bytes
            highest = _heap.TREE_MARKS.leave(self.tree_block)
            if highest is not None:
                children = _heap.tree_images() - self.images
                if children:
                    # Workers killed by a signal could not take their share out themselves.
                    _native.tree_withdraw_ended(_children_dir())
                    own = f"{os.getpid()}-"
                    self.child_captures = [
                        os.path.join(_children_dir(), name)
                        for name in sorted(_captures(_children_dir()) - self.captures_before)
                        if not name.startswith(own)
                    ]
                    how += f", with {children} process{'es' if children > 1 else ''} it started"
                peak = max(peak or 0, highest - self.tree_start)
                left = _heap.tree_live() - self.tree_start
            return peak, left, how
        if tracemalloc.is_tracing():
            now, peak = tracemalloc.get_traced_memory()
            return max(peak - self.start, 0), now - self.start, "tracemalloc"
        return None, None, "not measured"

    def profile(self) -> str:
        """How the heap was measured, as baselines tell figures apart."""
        if not self.profiled:
            return "tracemalloc"
        return "sampled" if self.track.sampled else "exact"

    def lines(self, top: int) -> List[str]:
        """The lines that allocated the most in the test and in the processes it started
        (read from the captures once, when first asked for)."""
        if self._lines is None:
            self._lines = [str(line) for line in _lines.with_captures(self.track.top_lines, self.child_captures, 10)]
        return self._lines[:top]


class Ledger:
    """``--memwarden-baseline``: the suite's model in the ledger, its baselines (loaded on
    first use) and, in the process that reports (not an xdist worker), its records."""

    def __init__(self, model: str, version: Optional[str], ledger: Optional[str], accept: bool) -> None:
        self.model, self.version, self.ledger, self.accept = model, version, ledger, accept
        self._baselines: Any = None
        self.problem: Optional[str] = None
        self.rows: List[Tuple[Any, ...]] = []
        self.outcome: Optional[str] = None

    def judge(self, test: str, profile: str, peak: int) -> Tuple[Optional[str], bool, str]:
        """(the verdict to record: None, ``regression`` or ``accepted``; whether the history
        was long enough to judge; the explanation)."""
        if self.accept:
            return "accepted", False, "accepted as the new baseline (--memwarden-accept-baseline)"
        if self._baselines is None and self.problem is None:
            try:
                self._baselines = _native.Baselines(self.model, self.ledger)
            except ValueError as e:
                self.problem = f"no baselines, no test judged: {_plugin_words(e)}"
        if self._baselines is None:
            return None, False, self.problem or ""
        sample = _heap.sample_bytes() if profile != "tracemalloc" else 0
        passes, judged, text = self._baselines.judge(test, profile, peak, sample or 0)
        return (None if passes else "regression"), judged, text

    def record(self, command: List[str]) -> None:
        """Writes the session's rows (one run per test); sets :attr:`outcome` to the line
        saying where, or why not."""
        if not self.rows:
            return
        try:
            recorder = _native.TestRecorder(self.model, self.version, self.ledger, command)
            for row in self.rows:
                recorder.add(*row)
            self.outcome = recorder.finish()
        except ValueError as e:
            self.outcome = f"not recorded: {_plugin_words(e)}"


def _plugin_words(error: Exception) -> str:
    """A ledger message with the command's option named as the plugin names it."""
    return str(error).replace("with --ledger or", "with --memwarden-ledger or")
