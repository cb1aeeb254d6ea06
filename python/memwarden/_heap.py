"""The heap as memwarden's profiler counts it, read from inside the profiled process.

When this process runs under memwarden's profiler (``memwarden run --profile``, the pytest
plugin's re-execution, a kernel started by ``memwarden kernel install``), the preload
library exports ``memwarden_heap_*`` functions; they are found with ``dlsym`` in the
process itself. Figures are the process's requested live bytes, every thread together (an
unbiased estimate in sampled mode), as tracemalloc and memray count a heap.

There is one mark per process: a block's heap peak is the highest the heap reached since
the mark. Blocks nest by crediting every open block before a new mark is set
(:class:`Marks`).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, List, Optional


class _Library:
    def __init__(self) -> None:
        process = ctypes.CDLL(None)
        self.live = process.memwarden_heap_live
        self.mark = process.memwarden_heap_mark
        self.peak_since_mark = process.memwarden_heap_peak_since_mark
        self.sample_bytes = process.memwarden_heap_sample_bytes
        self.python_frames = process.memwarden_python_frames
        for function in (self.live, self.mark, self.peak_since_mark, self.sample_bytes, self.python_frames):
            function.restype = ctypes.c_uint64
            function.argtypes = []
        self.tree = [process.memwarden_tree_live, process.memwarden_tree_mark,
                     process.memwarden_tree_peak_since_mark, process.memwarden_tree_images]
        self.capture_number = process.memwarden_capture_number
        for function in (*self.tree, self.capture_number):
            function.restype = ctypes.c_int64
            function.argtypes = []
        self.tree_adopt = process.memwarden_tree_adopt
        self.tree_adopt.restype = ctypes.c_uint32
        self.tree_adopt.argtypes = [ctypes.c_char_p]


def _load() -> Optional[_Library]:
    try:
        library = _Library()
    except (AttributeError, OSError):
        return None
    # Loaded, but recording nothing in this process (no capture directory): no figures.
    if library.sample_bytes() == 2**64 - 1:
        return None
    return library


_LIBRARY = _load()

CAPTURE_DIR = os.environ.get("MEMWARDEN_CAPTURE_DIR") if _LIBRARY is not None else None
"""The directory this process's capture is in (as the profiler read it when the process
started; the environment's may name another since, for the processes it starts)."""


def available() -> bool:
    """Whether the profiler records this process's heap."""
    return _LIBRARY is not None


def why_unavailable() -> str:
    """Why there are no heap figures, for messages."""
    if "libmemwarden_preload" in os.environ.get("LD_PRELOAD", ""):
        return "the profiler is loaded but records nothing here (no MEMWARDEN_CAPTURE_DIR)"
    return (
        "the process does not run under memwarden's profiler (start it with "
        "`memwarden run --profile -- python ...`, or `memwarden kernel install` for notebooks)"
    )


def capture_number() -> Optional[int]:
    """The N of this process's capture file (``<pid>-<N>.mwcap``): -1 while there is none
    yet; None without the profiler."""
    if _LIBRARY is None:
        return None
    return int(_LIBRARY.capture_number())


def sample_bytes() -> Optional[int]:
    """Mean bytes between samples (0: every allocation recorded); None without the profiler."""
    return None if _LIBRARY is None else int(_LIBRARY.sample_bytes())


def reads_python_frames() -> bool:
    """Whether the profiler charges allocations to Python lines here (a CPython whose frame
    layout it knows: 3.10 to 3.13)."""
    return _LIBRARY is not None and bool(_LIBRARY.python_frames())


def live_bytes() -> Optional[int]:
    """Requested live bytes now."""
    return None if _LIBRARY is None else int(_LIBRARY.live())


_NO_TREE = -(2**63)


def tree_available() -> bool:
    """Whether this process counts in a tree counter whose mark it can use: the heap of
    every profiled process of the tree together (this one and those it starts), see
    ``memwarden_format::tree``."""
    return _LIBRARY is not None and _LIBRARY.tree[0]() != _NO_TREE


def tree_adopt(directory: str) -> bool:
    """Joins the tree counter in `directory` (``tree.mwtree``) when this process counts in
    none yet (``memwarden_tree_adopt``); whether it counts in that tree now."""
    return _LIBRARY is not None and bool(_LIBRARY.tree_adopt(os.fsencode(directory)))


def tree_live() -> int:
    """The tree's live bytes now."""
    assert _LIBRARY is not None
    return int(_LIBRARY.tree[0]())


def tree_images() -> int:
    """Process images counted in the tree so far (each ``exec`` counts again)."""
    assert _LIBRARY is not None
    return int(_LIBRARY.tree[3]())


class Marks:
    """Open blocks and the highest heap each has seen, over one mark (the process's, or
    the tree's): before the mark is set again, every open block is credited with the
    highest seen since the last, so nested blocks are each right."""

    def __init__(self, tree: bool = False) -> None:
        self._open: List[List[int]] = []
        self._tree = tree

    def _functions(self) -> Optional[List[Any]]:
        if _LIBRARY is None:
            return None
        if self._tree:
            return [_LIBRARY.tree[1], _LIBRARY.tree[2]] if tree_available() else None
        return [_LIBRARY.mark, _LIBRARY.peak_since_mark]

    def _credit(self, peak_since_mark: Any) -> None:
        peak = int(peak_since_mark())
        for block in self._open:
            block[0] = max(block[0], peak)

    def enter(self) -> Optional[List[int]]:
        """Opens a block; its handle holds the highest heap seen (a one-element list)."""
        functions = self._functions()
        if functions is None:
            return None
        mark, peak_since_mark = functions
        self._credit(peak_since_mark)
        block = [int(mark())]
        self._open.append(block)
        return block

    def leave(self, block: Optional[List[int]]) -> Optional[int]:
        """Closes `block`; the highest the heap was while it was open."""
        functions = self._functions()
        if block is None or functions is None:
            return None
        self._credit(functions[1])
        self._open = [b for b in self._open if b is not block]
        return block[0]


MARKS = Marks()
TREE_MARKS = Marks(tree=True)
