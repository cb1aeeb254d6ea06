"""Memory of a block of code: :func:`track` and :func:`budget`.

Figures are process-wide: other threads' memory during the block counts too.

- ``peak_heap_bytes``: how far the heap rose above its level at the block's start, at its
  highest (the block's own allocations, as memray counts them); needs the profiler
  (``memwarden run --profile``, the pytest plugin, a profiled kernel), else ``None`` and
  ``notes`` says why.
- ``leaked_bytes``: the heap at the end less the heap at the start.
- ``peak_rss_bytes``: the process's resident memory at its highest during the block: the
  kernel's high-water mark, reset as the block opens (see :mod:`memwarden._host`; under
  ``memwarden run`` it is not reset and the figure may be a lower bound,
  ``peak_rss_exact`` says which).
- ``peak_gpu_bytes``, ``peak_gpu_reserved_bytes``: ``torch.cuda.max_memory_allocated``
  and ``max_memory_reserved`` above their levels at the start, when torch with CUDA is
  loaded (else ``None``, and ``notes`` says so when torch is loaded without CUDA).
- ``top_lines``: the lines that allocated the most during the block (the profiler's
  capture, read as the block opens and when they are first asked for), with what each
  holds then.
"""

from __future__ import annotations

import functools
import warnings
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, TypeVar, Union

from . import _heap, _host, _lines, _native

F = TypeVar("F", bound=Callable[..., Any])


class MemoryBudgetExceeded(Exception):
    """A block or a function needed more memory than its budget; `track` holds the figures."""

    def __init__(self, message: str, track: "Track") -> None:
        super().__init__(message)
        self.track = track


def parse_size(size: Union[int, str]) -> int:
    """Bytes from `512MiB`, `2 GiB`, `1.5GB` (powers of 1000), `1048576` or an int."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(f"a size is an int or a string such as '2 GiB', not {type(size).__name__}")
    if isinstance(size, int):
        if size < 0:
            raise ValueError(f"a size cannot be negative: {size}")
        return size
    return _native.parse_size(size)


@dataclass
class Line:
    """A line's allocations during a block."""

    file: str
    line: int
    function: str
    allocated_bytes: int
    allocations: int
    held_bytes: int
    """What the line holds now, all of it (not only what it allocated in the block)."""

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line} {self.function}: allocated {_native.format_size(self.allocated_bytes)}"
            f", {_native.format_size(max(self.held_bytes, 0))} still held"
        )


@dataclass
class Track:
    """The memory of one block. Figures are filled in as the block ends."""

    name: Optional[str] = None
    budget_bytes: Optional[int] = None
    record: Optional["Recording"] = None
    recorded: Optional[str] = None
    """Where the block was recorded in the ledger (with ``model=``), or why it was spooled."""
    peak_heap_bytes: Optional[int] = None
    leaked_bytes: Optional[int] = None
    heap_at_start_bytes: Optional[int] = None
    peak_rss_bytes: Optional[int] = None
    peak_rss_exact: bool = False
    peak_gpu_bytes: Optional[int] = None
    peak_gpu_reserved_bytes: Optional[int] = None
    """What torch's caching allocator reserved above its start, at its highest (what
    ``nvidia-smi`` sees of the process, less CUDA's own context)."""
    duration_s: float = 0.0
    sampled: Optional[bool] = None
    notes: List[str] = field(default_factory=list)
    _heap_block: Any = field(default=None, repr=False)
    _host_block: Any = field(default=None, repr=False)
    _lines_at_start: Any = field(default=None, repr=False)
    _gpu_block: Any = field(default=None, repr=False)
    _started: float = field(default=0.0, repr=False)
    _started_unix_s: float = field(default=0.0, repr=False)
    _lines_at_end: Any = field(default=None, repr=False)
    _top_lines: Optional[List[Line]] = field(default=None, repr=False)

    @property
    def top_lines(self) -> List[Line]:
        """The lines that allocated the most in the block (empty without the profiler)."""
        if self._top_lines is None:
            measured = self.peak_heap_bytes is not None and _heap.reads_python_frames()
            self._top_lines = _lines.between(self._lines_at_start, self._lines_at_end) if measured else []
        return self._top_lines

    @property
    def how(self) -> str:
        """How the heap figures were made: ``sampled estimate`` or ``every allocation
        recorded`` (meaningful once the block measured its heap)."""
        return "sampled estimate" if self.sampled else "every allocation recorded"

    # -- the block ------------------------------------------------------------------
    def __enter__(self) -> "Track":
        self._started = time.perf_counter()
        self._started_unix_s = time.time()
        self._gpu_block = GPU.enter()
        self._host_block = _host.HOST.enter()
        self._lines_at_start = _lines.snapshot()
        self._heap_block = _heap.MARKS.enter()
        if self._heap_block is not None:
            self.heap_at_start_bytes = self._heap_block[0]
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        highest = _heap.MARKS.leave(self._heap_block)
        self._lines_at_end = _lines.snapshot()
        self.duration_s = time.perf_counter() - self._started
        self.peak_rss_bytes, self.peak_rss_exact = _host.HOST.leave(self._host_block)
        if highest is not None and self.heap_at_start_bytes is not None:
            self.peak_heap_bytes = max(highest - self.heap_at_start_bytes, 0)
            now = _heap.live_bytes() or 0
            self.leaked_bytes = now - self.heap_at_start_bytes
            self.sampled = (_heap.sample_bytes() or 0) > 0
            if not _heap.reads_python_frames():
                self.notes.append(_NO_FRAMES)
                _warn_once(_NO_FRAMES)
        else:
            self.notes.append(f"no heap figures or lines: {_heap.why_unavailable()}")
        if not self.peak_rss_exact:
            self.notes.append(
                "peak_rss_bytes is a lower bound: under `memwarden run` the process's high-water "
                "mark is the runner's, and this block did not raise it"
            )
        self.peak_gpu_bytes, self.peak_gpu_reserved_bytes = GPU.leave(self._gpu_block)
        if self.peak_gpu_bytes is None and "torch" in sys.modules:
            self.notes.append("no GPU figures: torch is loaded but CUDA is not available")
        if self.record is not None:
            self._record(failed=kind is not None)
        if kind is None and self.budget_bytes is not None:
            measured = self.measured_bytes()
            if measured is not None and measured > self.budget_bytes:
                raise MemoryBudgetExceeded(self.summary(), self)

    def _record(self, failed: bool) -> None:
        record = self.record
        assert record is not None
        try:
            self.recorded = _native.record_block(
                record.model,
                record.version,
                record.stage,
                [f"{k}={v}" for k, v in record.tags.items()] + ([f"block={self.name}"] if self.name else []),
                record.ledger,
                [sys.executable, *sys.argv],
                self._started_unix_s,
                self.duration_s,
                self.peak_rss_bytes or 0,
                self.peak_rss_exact,
                self.peak_heap_bytes,
                self.peak_gpu_bytes,
                self.budget_bytes,
                failed,
            )
        except ValueError as e:
            self.recorded = None
            self.notes.append(f"not recorded in the ledger: {e}")
            _warn_once(f"memwarden.track: not recorded in the ledger: {e}")

    # -- as a decorator -------------------------------------------------------------
    def __call__(self, function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with Track(self.name or function.__qualname__, self.budget_bytes, self.record):
                return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    # -- figures --------------------------------------------------------------------
    def measured_bytes(self) -> Optional[int]:
        """What a budget is checked against: the heap peak when the profiler measured it,
        else the resident peak."""
        return self.peak_heap_bytes if self.peak_heap_bytes is not None else self.peak_rss_bytes

    def summary(self, lines: int = 3) -> str:
        """One paragraph: the peaks, the budget, the top lines."""
        size = _native.format_size
        name = f"`{self.name}`" if self.name else "the block"
        parts = []
        if self.peak_heap_bytes is not None:
            parts.append(f"heap peak {size(self.peak_heap_bytes)} above its start ({self.how})")
        if self.peak_rss_bytes is not None:
            exact = "" if self.peak_rss_exact else " (at least)"
            parts.append(f"process peak RSS {size(self.peak_rss_bytes)}{exact}")
        if self.peak_gpu_bytes is not None:
            parts.append(f"GPU peak {size(self.peak_gpu_bytes)} ({size(self.peak_gpu_reserved_bytes or 0)} reserved)")
        text = f"{name}: " + ", ".join(parts) if parts else f"{name}: nothing measured"
        if self.budget_bytes is not None:
            text += f"; budget {size(self.budget_bytes)}"
        if self.top_lines:
            text += "; top lines: " + "; ".join(str(line) for line in self.top_lines[:lines])
        return text


def signed_size(bytes_: int) -> str:
    """A size that may be negative (a block that freed more than it allocated)."""
    text = _native.format_size(abs(bytes_))
    return f"-{text}" if bytes_ < 0 else text


@dataclass
class Recording:
    """Where a block is recorded: the ledger's key (model, version, stage) and tags."""

    model: str
    version: str
    stage: str = "train"
    tags: Dict[str, str] = field(default_factory=dict)
    ledger: Optional[str] = None


STAGES = ("train", "eval", "inference", "test")


def track(
    name: Optional[str] = None,
    budget: Union[int, str, None] = None,
    *,
    model: Optional[str] = None,
    version: Optional[str] = None,
    stage: str = "train",
    tags: Optional[Dict[str, str]] = None,
    ledger: Optional[str] = None,
) -> Track:
    """Measures a block (``with memwarden.track("fit") as t:``) or a function
    (``@memwarden.track()``). With `budget`, raises :class:`MemoryBudgetExceeded` when the
    block needed more (its heap peak, or its resident peak without the profiler). With
    `model` and `version`, records the block in the ledger under them and `stage` (as
    ``memwarden run --model`` records a run; `ledger` as ``--ledger``, default the data
    directory's), so ``memwarden history MODEL`` shows it."""
    record = None
    if model is not None or version is not None:
        if not model or not version:
            raise ValueError("memwarden.track: give both model= and version= to record the block")
        if stage not in STAGES:
            raise ValueError(f"memwarden.track: stage {stage!r} is not one of {', '.join(STAGES)}")
        record = Recording(model, str(version), stage, dict(tags or {}), ledger)
    return Track(name=name, budget_bytes=None if budget is None else parse_size(budget), record=record)


def budget(limit: Union[int, str], name: Optional[str] = None) -> Callable[[F], F]:
    """A function decorator: raises :class:`MemoryBudgetExceeded` with the figures when a
    call needs more than `limit`. The limit is parsed here, so a bad one fails at import."""
    limit_bytes = parse_size(limit)

    def decorate(function: F) -> F:
        return Track(name or function.__qualname__, limit_bytes)(function)

    return decorate


_NO_FRAMES = (
    f"no lines: memwarden's profiler does not read the frames of Python "
    f"{sys.version_info.major}.{sys.version_info.minor} (it reads 3.10 to 3.13); heap figures are whole-process"
)
_WARNED: Set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class _GpuMarks:
    """Open blocks over torch's peak counters (``max_memory_allocated`` and
    ``max_memory_reserved``, which one ``reset_peak_memory_stats`` resets together),
    credited before each reset as the heap's and the kernel's marks are, so nested blocks
    are each right. A block is ``[allocated at its start, highest allocated, reserved at
    its start, highest reserved]``."""

    def __init__(self) -> None:
        self._open: List[List[int]] = []

    @staticmethod
    def _torch() -> Any:
        torch = sys.modules.get("torch")
        try:
            return torch if torch is not None and torch.cuda.is_available() else None
        except Exception:  # a broken CUDA set-up: no GPU figures, never a failed block
            return None

    def _credit(self, torch: Any) -> None:
        allocated, reserved = int(torch.cuda.max_memory_allocated()), int(torch.cuda.max_memory_reserved())
        for block in self._open:
            block[1] = max(block[1], allocated)
            block[3] = max(block[3], reserved)

    def enter(self) -> Optional[List[int]]:
        """Opens a block; None without CUDA."""
        torch = self._torch()
        if torch is None:
            return None
        try:
            self._credit(torch)
            torch.cuda.reset_peak_memory_stats()
            allocated, reserved = int(torch.cuda.memory_allocated()), int(torch.cuda.memory_reserved())
        except Exception:
            return None
        block = [allocated, allocated, reserved, reserved]
        self._open.append(block)
        return block

    def leave(self, block: Optional[List[int]]) -> Tuple[Optional[int], Optional[int]]:
        """Closes `block`: how far GPU memory allocated, and reserved by torch's caching
        allocator, rose above their start, at their highest."""
        torch = self._torch()
        if block is None or torch is None:
            return None, None
        try:
            self._credit(torch)
        except Exception:
            return None, None
        self._open = [b for b in self._open if b is not block]
        return max(block[1] - block[0], 0), max(block[3] - block[2], 0)


GPU = _GpuMarks()
