"""Starting Python again under memwarden's profiler, for the pytest plugin and kernels.

A process cannot load an ``LD_PRELOAD`` library after it started, so the pytest plugin
(and ``memwarden kernel install``) start the interpreter again with the library in its
environment: ``LD_PRELOAD`` names it, ``MEMWARDEN_CAPTURE_DIR`` says where its captures
go. ``LD_PRELOAD`` splits on spaces and colons, so a library whose path holds one is
preloaded through a symbolic link in a private directory, made by the same code as
``memwarden run --profile``'s (``memwarden._native.preloadable``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

from . import _native
from ._paths import preload_path


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


def environment(capture_dir: str, mode: str = "sampled") -> Optional[Dict[str, str]]:
    """This process's environment with the profiler added; None when there is no library."""
    found = library()
    if found is None:
        return None
    env = dict(os.environ)
    try:
        preload = os.fspath(_native.preloadable(found))
    except ValueError:
        return None
    env["LD_PRELOAD"] = f"{preload} {env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else preload
    env["MEMWARDEN_CAPTURE_DIR"] = capture_dir
    env["MEMWARDEN_PROFILE_MODE"] = mode
    return env
