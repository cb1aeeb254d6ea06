"""Type stubs of ``memwarden._native``, the compiled module (crates/memwarden-py)."""

import os
import pathlib

def version() -> str:
    """memwarden's version, as its Cargo manifest states it."""

def unescape(text: str) -> bytes:
    """The bytes a name escaped by the report (``\\\\`` and ``\\xNN``) stands for.

    Raises ``ValueError`` when a backslash starts neither.
    """

def analyze_captures(dir: str | os.PathLike[str], raw_frames: bool = False) -> str:
    """The profile of a capture directory kept with ``memwarden run --capture-dir DIR``:
    the JSON text of a report's ``profile`` section (docs/report-schema.md).

    With the run's report in ``DIR/report.json`` the profile's times count from the run's
    start; without it, from the first capture's. Import machinery is folded into the
    importing line unless ``raw_frames``. Problems that still leave a profile (an unreadable
    capture among good ones) are issued as ``UserWarning``; none left raises ``ValueError``;
    a missing ``DIR`` raises ``FileNotFoundError``, a file ``NotADirectoryError``.
    """

def kept_report(dir: str | os.PathLike[str], raw_frames: bool = False) -> str:
    """The report kept with the captures in ``dir`` (``memwarden run --capture-dir DIR``),
    as JSON, its profile analysed again from them and completed as ``memwarden report
    --capture-dir`` completes it (lines' text, advice). Raises ``FileNotFoundError`` when
    ``DIR/report.json`` is missing, ``ValueError`` when it is no report."""

def parse_size(text: str) -> int:
    """Bytes from a size as memwarden writes them: ``512MiB``, ``2 GiB``, ``1.5GB`` (powers
    of 1000), ``1048576``. Raises ``ValueError`` with what to write instead."""

def format_size(bytes: int) -> str:
    """A size as memwarden prints it: ``1.50 GiB``."""

def capture_allocated(path: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """What each stack of a capture file has allocated so far, ``(bytes, allocations)`` (a
    cheap reading, for ``capture_lines``'s ``since``)."""

def capture_lines(
    path: str | os.PathLike[str],
    since: list[tuple[int, int]] | None = None,
    until: list[tuple[int, int]] | None = None,
) -> list[tuple[str, int, str, int, int, int]]:
    """Each of the user's lines in one capture file as the profiler left it now:
    ``(file, line, function, live_bytes, allocated_bytes, allocations)``, most allocated
    first; with ``since`` (from ``capture_allocated``), the bytes and allocations made after
    that reading (and before ``until``'s), lines that allocated none left out. Raises ``ValueError`` when the file is
    no capture."""

def record_block(
    model: str,
    version: str,
    stage: str,
    tags: list[str],
    ledger: str | None,
    command: list[str],
    started_at_unix_s: float,
    duration_s: float,
    peak_rss_bytes: int,
    peak_rss_exact: bool,
    peak_heap_bytes: int | None,
    peak_gpu_bytes: int | None,
    budget_bytes: int | None,
    failed: bool,
) -> str:
    """Records a finished block in the ledger, as ``memwarden run --model`` records a run;
    the line saying where (or that the record was spooled). Raises ``ValueError`` for a
    model, version, tag or ledger that cannot be recorded."""

def preloadable(library: str | os.PathLike[str]) -> pathlib.Path:
    """The path to put in ``LD_PRELOAD`` for the profiler library: its own, or a link to it
    in a private directory when its path holds a space or a colon (as ``memwarden run
    --profile`` does). Raises ``ValueError`` when no link can be made."""

def tree_create(dir: str | os.PathLike[str]) -> None:
    """Creates the tree counter (``tree.mwtree``) in the capture directory ``dir``, so that
    the processes started with it count their heaps together (``memwarden_tree_*``)."""

def tree_withdraw_ended(dir: str | os.PathLike[str]) -> int:
    """Takes the share of every process of ``dir``'s tree that ended without doing so
    (killed by a signal, replaced by ``exec``) out of its counter, as ``memwarden run``
    does at each tick; how many. 0 without a tree counter."""

class Baselines:
    """The recorded histories of a suite's tests in the ledger (read once, when made), for
    ``pytest --memwarden-baseline``."""

    def __init__(self, model: str, ledger: str | None = None) -> None:
        """Reads ``model``'s records from ``ledger`` (None: the data directory's). Raises
        ``ValueError`` when the ledger or the policy cannot be read."""

    def judge(self, test: str, profile: str, heap_bytes: int, sample_bytes: int) -> tuple[bool, bool, str]:
        """``(passes, judged, explanation)`` for ``test``'s heap peak measured the
        ``profile`` way (``sampled``, ``exact``, ``tracemalloc``), ``sample_bytes`` apart
        when sampled (0: exact)."""

class TestRecorder:
    """A session's test records, written together by :meth:`finish`."""

    def __init__(self, model: str, version: str | None, ledger: str | None, command: list[str]) -> None:
        """Collects the provenance (git state, Python environment, host) once. ``version``
        None: the git commit (``+dirty`` with changes), else ``unversioned``."""

    def add(
        self,
        test: str,
        passed: bool,
        started_at_unix_s: float,
        duration_s: float,
        heap_bytes: int,
        leaked_bytes: int,
        rss_bytes: int,
        rss_exact: bool,
        profile: str,
        baseline: str | None = None,
    ) -> None:
        """Adds one test's figures (``rss_bytes``: its process's resident peak, the kernel's
        high-water mark when ``rss_exact``); ``baseline``: ``regression`` or ``accepted``."""

    def finish(self) -> str:
        """Writes every record; the line saying where. ``ValueError`` when the ledger could
        not take them (its message says where they were kept to be written later)."""

def block_report(
    name: str,
    capture: str | os.PathLike[str] | None,
    since: list[tuple[int, int]],
    started_at_unix_s: float,
    duration_s: float,
    peak_rss_bytes: int,
    peak_rss_exact: bool,
    peak_heap_bytes: int | None,
    left_bytes: int,
    peak_gpu_bytes: int | None,
    failed: bool,
    sources: dict[str, str],
) -> tuple[str, str]:
    """The report of a block measured in this process (a notebook cell): ``(JSON, HTML)``.

    With ``peak_heap_bytes``, its profile is read from ``capture`` (this process's capture
    file), whose nodes had allocated ``since`` (bytes, allocations) as the block began; the advice and
    the page are made as ``memwarden run --profile`` makes them. ``sources`` maps the names
    of code that is no file (a notebook's cells) to its text. Raises ``ValueError`` when
    the capture cannot be read."""
