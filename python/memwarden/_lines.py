"""What each line allocated, from this process's own capture file.

The profiler keeps, per stack, the bytes live, allocated and the allocations made
(``docs/capture-format.md``), in ``$MEMWARDEN_CAPTURE_DIR/<pid>-<n>.mwcap``, updated in
place. Reading it at a block's two ends gives what each of the user's lines allocated in
between and what it still held at the end (``memwarden._native.capture_lines`` reads and
sums the stacks by the user's line, as the report's tables do).
"""

from __future__ import annotations

import glob
import os
from typing import Dict, List, Optional, Tuple

from . import _heap, _native

Key = Tuple[str, int, str]
Figures = Dict[Key, Tuple[int, int, int]]


def _capture_path() -> Optional[str]:
    directory = os.environ.get("MEMWARDEN_CAPTURE_DIR")
    if not directory or not _heap.available():
        return None
    found = glob.glob(os.path.join(glob.escape(directory), f"{os.getpid()}-*.mwcap"))
    if not found:
        return None

    def generation(path: str) -> int:
        stem = os.path.basename(path)[: -len(".mwcap")]
        try:
            return int(stem.split("-", 1)[1])
        except (IndexError, ValueError):
            return -1

    return max(found, key=generation)


def snapshot() -> Optional[Figures]:
    """Each user line's (live, allocated, allocations) now; None without a capture."""
    path = _capture_path()
    if path is None:
        return None
    try:
        rows = _native.capture_lines(path)
    except (OSError, ValueError):
        return None
    return {(file, line, function): (live, allocated, count) for file, line, function, live, allocated, count in rows}


def since(start: Optional[Figures], top: int = 10) -> List["Line"]:  # noqa: F821
    """The `top` lines that allocated the most since `start`, with what they hold now."""
    from .track import Line

    if start is None:
        return []
    end = snapshot()
    if end is None:
        return []
    lines = []
    for key, (live, allocated, count) in end.items():
        live0, allocated0, count0 = start.get(key, (0, 0, 0))
        if allocated > allocated0:
            lines.append(Line(key[0], key[1], key[2], allocated - allocated0, count - count0, live - live0))
    lines.sort(key=lambda line: (-line.allocated_bytes, line.file, line.line))
    return lines[:top]
