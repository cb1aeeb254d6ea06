"""Live Python objects by type: how many, how many bytes, and what an array would take.

The garbage collector tracks containers (lists, dicts, instances) but not the atoms they
hold (ints, floats, strs, bytes, and tuples of atoms once untracked), which are most of a
list of numbers' memory. :func:`census` walks from every tracked container to what it
references, so those are counted too, each object once, until `time_limit_s` is spent
(then the figures are a lower bound and ``complete`` is False).

``sys.getsizeof`` sizes each object itself, not what it references; an object's memory
beyond its own (a numpy array's data buffer) is the profiler's to see, not this census's.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set

from . import _native

# What one value of a type takes in an array: numpy's float64 and int64, bool, complex128.
_ARRAY_BYTES = {float: 8, int: 8, bool: 1, complex: 16}


@dataclass
class TypeCount:
    """Live objects of one type."""

    type_name: str
    count: int
    bytes: int
    array_bytes: Optional[int]
    """What the same values take in a numpy array (numbers only), else None."""

    @property
    def saving_bytes(self) -> Optional[int]:
        if self.array_bytes is None:
            return None
        return max(self.bytes - self.array_bytes, 0)


@dataclass
class Census:
    """The census's result: the heaviest types first."""

    rows: List[TypeCount]
    objects: int
    bytes: int
    complete: bool
    seconds: float
    notes: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        size = _native.format_size
        head = (
            f"live Python objects: {self.objects:,} objects, {size(self.bytes)} "
            f"({'all' if self.complete else 'a lower bound: the time limit was reached'}, "
            f"counted in {self.seconds:.2f} s)"
        )
        lines = [head, f"  {'type':<28} {'count':>12} {'bytes':>12}  as an array"]
        for row in self.rows:
            array = ""
            if row.array_bytes is not None:
                array = f"{size(row.array_bytes)} (saves {size(row.saving_bytes or 0)})"
            lines.append(f"  {row.type_name:<28} {row.count:>12,} {size(row.bytes):>12}  {array}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        size = _native.format_size
        body = "".join(
            f"<tr><td><code>{escape(r.type_name)}</code></td><td style='text-align:right'>{r.count:,}</td>"
            f"<td style='text-align:right'>{size(r.bytes)}</td>"
            f"<td style='text-align:right'>{size(r.array_bytes) if r.array_bytes is not None else ''}</td></tr>"
            for r in self.rows
        )
        return (
            f"<p>{escape(str(self).splitlines()[0])}</p><table><tr><th>type</th><th>count</th>"
            f"<th>bytes</th><th>as an array</th></tr>{body}</table>"
        )


def _name(kind: type) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def census(top: int = 10, time_limit_s: float = 5.0) -> Census:
    """Counts live objects by type (see the module's documentation); the `top` heaviest."""
    started = time.perf_counter()
    deadline = started + time_limit_s
    seen: Set[int] = set()
    counts: Dict[type, List[int]] = {}
    complete = True
    # Every object is reached from a tracked container or is one; walking one level down
    # from each tracked container reaches the untracked atoms they hold.
    tracked = gc.get_objects()
    ignore = {id(tracked), id(seen), id(counts)}
    for number, container in enumerate(tracked):
        if number % 4096 == 0 and time.perf_counter() > deadline:
            complete = False
            break
        for obj in (container, *gc.get_referents(container)):
            key = id(obj)
            if key in seen or key in ignore:
                continue
            seen.add(key)
            entry = counts.setdefault(type(obj), [0, 0])
            entry[0] += 1
            entry[1] += sys.getsizeof(obj)
    del tracked
    rows = []
    for kind, (count, size) in counts.items():
        per_value = _ARRAY_BYTES.get(kind)
        rows.append(TypeCount(_name(kind), count, size, None if per_value is None else per_value * count))
    rows.sort(key=lambda r: (-r.bytes, r.type_name))
    notes = []
    numbers = [r for r in rows if r.array_bytes is not None and (r.saving_bytes or 0) > (1 << 20)]
    if numbers:
        notes.append(
            "numbers held one Python object each take 24–32 B plus an 8 B pointer in their list; "
            "a numpy array (or array.array) holds them in 8 B"
        )
    return Census(
        rows=rows[:top],
        objects=sum(c for c, _ in counts.values()),
        bytes=sum(s for _, s in counts.values()),
        complete=complete,
        seconds=time.perf_counter() - started,
        notes=notes,
    )
