"""What each line allocated, from this process's own capture file.

The profiler keeps, per stack, the bytes live, allocated and the allocations made
(``docs/capture-format.md``), in ``$MEMWARDEN_CAPTURE_DIR/<pid>-<n>.mwcap``, updated in
place. A block reads what each stack has allocated (bytes, allocations) as it opens (cheap: the counters in use)
and, when its lines are asked for, the whole capture once: what each of the user's lines
allocated since, summed by line as the report's tables do
(``memwarden._native.capture_lines``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, List, Optional, Tuple

from . import _heap, _native

if TYPE_CHECKING:
    from .track import Line

Counts = List[Tuple[int, int]]
Snapshot = Tuple[str, Counts]


def _capture_path() -> Optional[str]:
    """This process's capture file, once the profiler has opened it."""
    directory = _heap.CAPTURE_DIR
    number = _heap.capture_number()
    if not directory or number is None or number < 0:
        return None
    return os.path.join(directory, f"{os.getpid()}-{number}.mwcap")


def snapshot() -> Optional[Snapshot]:
    """Each stack's allocated bytes now, with the capture they are of; None without one."""
    path = _capture_path()
    if path is None:
        return None
    try:
        return path, _native.capture_allocated(path)
    except OSError:
        return None


def since(start: Optional[Snapshot], end: Optional[Snapshot]) -> Tuple[Optional[str], Counts]:
    """The capture a block's end snapshot is of, and the counters to count from: the start
    snapshot's when it is of the same capture, else none (a capture that began after the
    start, at this process's first recorded allocation or in a forked child, is counted
    from its beginning)."""
    if end is None:
        return None, []
    return end[0], start[1] if start is not None and start[0] == end[0] else []


def between(start: Optional[Snapshot], end: Optional[Snapshot], top: int = 10) -> List["Line"]:
    """The `top` lines that allocated the most between two snapshots, with what each holds
    now."""
    path, baseline = since(start, end)
    if path is None or end is None:
        return []
    try:
        rows = _native.capture_lines(path, baseline, end[1])
    except (OSError, ValueError):
        return []
    return _lines(rows)[:top]


Row = Tuple[str, int, str, int, int, int]


def _lines(rows: List[Row]) -> List["Line"]:
    """Rows of ``capture_lines`` as lines, without memwarden's own readings (the snapshots
    themselves), which are not the block's."""
    from .track import Line

    own = os.path.dirname(os.path.abspath(__file__)) + os.sep
    return [Line(f, n, fn, allocated, count, live) for f, n, fn, live, allocated, count in rows if not f.startswith(own)]


def with_captures(lines: List["Line"], paths: List[str], top: int) -> List["Line"]:
    """`lines` (a block's own) with those of whole captures added (the processes a block
    started: all they allocated), summed by line, the `top` that allocated the most."""
    from .track import Line

    merged = {(line.file, line.line, line.function): line for line in lines}
    for path in paths:
        try:
            rows = _native.capture_lines(path)
        except (OSError, ValueError):
            continue  # a capture that cannot be read (yet) adds nothing
        for line in _lines(rows):
            key = (line.file, line.line, line.function)
            seen = merged.get(key)
            merged[key] = line if seen is None else Line(
                line.file, line.line, line.function, seen.allocated_bytes + line.allocated_bytes,
                seen.allocations + line.allocations, seen.held_bytes + line.held_bytes,
            )
    return sorted(merged.values(), key=lambda line: -line.allocated_bytes)[:top]
