"""The IPython extension: ``%load_ext memwarden``, then ``%%memwarden`` above a cell.

The cell runs inside :func:`memwarden.track`; below it come its peaks, the lines that
allocated the most (when the kernel runs under memwarden's profiler: ``memwarden kernel
install`` makes a kernel that does) and what to change. Without the profiler the magic
still reports the cell's resident and GPU peaks, and says why there are no lines.
"""

from __future__ import annotations

from html import escape
from typing import Any, Optional

from . import _native
from .track import Track


def _html(track: Track) -> str:
    size = _native.format_size
    rows = []
    if track.peak_heap_bytes is not None:
        how = "sampled estimate" if track.sampled else "every allocation recorded"
        rows.append(("heap peak (above the cell's start)", f"{size(track.peak_heap_bytes)} ({how})"))
        rows.append(("still allocated at the end", size(max(track.leaked_bytes or 0, 0))))
    if track.peak_rss_bytes is not None:
        exact = "kernel high-water mark" if track.peak_rss_exact else "at least"
        rows.append(("process peak RSS", f"{size(track.peak_rss_bytes)} ({exact})"))
    if track.peak_gpu_bytes is not None:
        rows.append(("GPU peak", size(track.peak_gpu_bytes)))
    rows.append(("time", f"{track.duration_s:.2f} s"))
    table = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    lines = "".join(
        f"<tr><td><code>{escape(line.file)}:{line.line}</code> {escape(line.function)}</td>"
        f"<td style='text-align:right'>{size(line.allocated_bytes)}</td>"
        f"<td style='text-align:right'>{size(max(line.held_bytes, 0))}</td></tr>"
        for line in track.top_lines[:5]
    )
    lines_html = (
        f"<table><tr><th>line</th><th>allocated</th><th>still held</th></tr>{lines}</table>" if lines else ""
    )
    notes = "".join(f"<li>{escape(note)}</li>" for note in track.notes)
    return (
        f"<div class='memwarden-cell'><b>memwarden</b><table>{table}</table>{lines_html}"
        + (f"<ul>{notes}</ul>" if notes else "")
        + "</div>"
    )


def load_ipython_extension(ipython: Any) -> None:
    """Registers ``%%memwarden`` (``%load_ext memwarden``)."""
    from IPython.core.magic import register_cell_magic
    from IPython.display import HTML, display

    @register_cell_magic("memwarden")  # type: ignore[misc]
    def memwarden(line: str, cell: str) -> Optional[Any]:
        """Runs the cell and shows its memory: peaks, top lines, notes."""
        source = ipython.transform_cell(cell)
        # Cached as IPython caches a cell, so tracebacks and the profiler's lines show it.
        filename = ipython.compile.cache(source)
        code = compile(source, filename, "exec")
        with Track(line.strip() or "cell") as track:
            try:
                exec(code, ipython.user_ns)
            except Exception:
                ipython.showtraceback()
        display(HTML(_html(track)))
        ipython.user_ns["_memwarden"] = track
        return None
