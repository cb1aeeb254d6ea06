"""The IPython extension: ``%load_ext memwarden``, then ``%%memwarden`` above a cell.

The cell runs inside :func:`memwarden.track`; below it come its peaks, the lines that
allocated the most (when the kernel runs under memwarden's profiler: ``memwarden kernel
install`` makes a kernel that does), the advice (what to change, with the saving), and
the cell's full HTML report, as ``memwarden run --profile`` writes it (flame graphs of
what the cell held at its peak and at its end, its lines, the advice), in a sandboxed
frame. Without the profiler the magic still reports the cell's resident and GPU peaks,
and says why there are no lines. ``%%memwarden --no-html`` leaves the page out.

After the cell, ``_memwarden`` holds its :class:`memwarden.Track` and
``_memwarden_report`` its :class:`memwarden.Report`.
"""

from __future__ import annotations

import os
import shlex
from html import escape
from typing import Any, Dict, Optional, Tuple

from . import _lines, _native
from .report import Report
from .track import Track


def cell_report(track: Track, failed: bool, sources: Dict[str, str]) -> Tuple[Report, str]:
    """The cell's report and its page (``memwarden._native.block_report``); `sources`: the
    text of the notebook's cells, by the file name their code carries."""
    capture, since = _lines.since(track._lines_at_start, track._lines_at_end)
    text, page = _native.block_report(
        f"%%memwarden {track.name}",
        capture,
        since,
        track._started_unix_s,
        track.duration_s,
        track.peak_rss_bytes or 0,
        track.peak_rss_exact,
        track.peak_heap_bytes,
        track.leaked_bytes or 0,
        track.peak_gpu_bytes,
        failed,
        sources,
    )
    return Report.from_json(text), page


def _advice_html(report: Report) -> str:
    items = []
    for advice in report.advice[:5]:
        saving = f" (saves about {_native.format_size(advice.saving_bytes)})" if advice.saving_bytes else ""
        where = f" <code>{escape(str(advice.frame))}</code>" if advice.frame is not None else ""
        items.append(f"<li><b>{escape(advice.technique)}</b>{where}{escape(saving)}: {escape(advice.fix)}</li>")
    return f"<p><b>Advice</b></p><ul>{''.join(items)}</ul>" if items else ""


def _frame(page: str) -> str:
    """The report's page in a sandboxed frame: its styles and scripts stay its own."""
    return (
        f'<details open><summary>the cell\'s report</summary><iframe sandbox="allow-scripts" '
        f'style="width:100%;height:720px;border:1px solid #ccc" srcdoc="{escape(page, quote=True)}">'
        "</iframe></details>"
    )


def _html(track: Track) -> str:
    size = _native.format_size
    rows = []
    if track.peak_heap_bytes is not None:
        rows.append(("heap peak (above the cell's start)", f"{size(track.peak_heap_bytes)} ({track.how})"))
        rows.append(("still allocated at the end", size(max(track.leaked_bytes or 0, 0))))
    if track.peak_rss_bytes is not None:
        exact = "kernel high-water mark" if track.peak_rss_exact else "at least"
        rows.append(("process peak RSS", f"{size(track.peak_rss_bytes)} ({exact})"))
    if track.peak_gpu_bytes is not None:
        rows.append(("GPU peak (allocated, reserved)", f"{size(track.peak_gpu_bytes)}, {size(track.peak_gpu_reserved_bytes or 0)}"))
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


def _cells() -> Dict[str, str]:
    """The text of the cells IPython has run, from its line cache (they are no files)."""
    import linecache

    return {
        name: "".join(entry[2])
        for name, entry in list(linecache.cache.items())
        if len(entry) == 4 and entry[3] == name and not os.path.exists(name)
    }


def load_ipython_extension(ipython: Any) -> None:
    """Registers ``%%memwarden`` (``%load_ext memwarden``)."""
    from IPython.core.magic import register_cell_magic
    from IPython.display import HTML, display

    @register_cell_magic("memwarden")  # type: ignore[misc, arg-type]
    def memwarden(line: str, cell: str) -> Optional[Any]:
        """Runs the cell and shows its memory: peaks, top lines, notes."""
        source = ipython.transform_cell(cell)
        # Cached as IPython caches a cell, so tracebacks and the profiler's lines show it.
        filename = ipython.compile.cache(source)
        code = compile(source, filename, "exec")
        words = shlex.split(line)
        page_wanted = "--no-html" not in words
        name = " ".join(w for w in words if w != "--no-html") or "cell"
        failed = False
        with Track(name) as track:
            try:
                exec(code, ipython.user_ns)
            except Exception:
                failed = True
                ipython.showtraceback()
        parts = [_html(track)]
        try:
            report, page = cell_report(track, failed, _cells())
        except ValueError as e:
            parts.append(f"<p>no report: {escape(str(e))}</p>")
        else:
            ipython.user_ns["_memwarden_report"] = report
            parts.append(_advice_html(report))
            if page_wanted:
                parts.append(_frame(page))
        display(HTML("".join(parts)))
        ipython.user_ns["_memwarden"] = track
        return None
