"""Starting Python again under memwarden's profiler, for the pytest plugin and kernels.

A process cannot load an ``LD_PRELOAD`` library after it started, so the pytest plugin
(and ``memwarden kernel install``) start the interpreter again with the library in its
environment: ``LD_PRELOAD`` names it, ``MEMWARDEN_CAPTURE_DIR`` says where its captures
go. ``LD_PRELOAD`` splits on spaces and colons, so a library whose path holds one is
preloaded through a symbolic link in a private directory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional

from ._paths import preload_path

LIBRARY = "libmemwarden_preload.so"


def library() -> Optional[Path]:
    """The profiler library: ``MEMWARDEN_PRELOAD``, else the one installed with this package
    (``memwarden/_bin/``); None when neither is there."""
    named = os.environ.get("MEMWARDEN_PRELOAD")
    if named:
        return Path(named) if Path(named).is_file() else None
    try:
        return preload_path()
    except FileNotFoundError:
        return None


def _carriable(path: Path) -> Path:
    """`path`, or a link to it whose path has no space or colon."""
    text = os.fspath(path)
    if " " not in text and ":" not in text:
        return path
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    directory = Path(tempfile.gettempdir()) / f"memwarden-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    link = directory / f"{digest}-{LIBRARY}"
    if not (link.is_symlink() and os.readlink(link) == text):
        temporary = directory / f".{digest}.{os.getpid()}"
        os.symlink(text, temporary)
        os.replace(temporary, link)
    return link


def environment(capture_dir: str, mode: str = "sampled") -> Optional[Dict[str, str]]:
    """This process's environment with the profiler added; None when there is no library."""
    found = library()
    if found is None:
        return None
    env = dict(os.environ)
    preload = os.fspath(_carriable(found))
    env["LD_PRELOAD"] = f"{preload} {env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else preload
    env["MEMWARDEN_CAPTURE_DIR"] = capture_dir
    env["MEMWARDEN_PROFILE_MODE"] = mode
    return env
