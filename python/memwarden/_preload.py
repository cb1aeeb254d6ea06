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
import shutil
import tempfile
from pathlib import Path
from typing import Dict

from . import _native
from ._paths import preload_path


PYTEST_CAPTURE_DIR = "MEMWARDEN_PYTEST_REEXECUTED"
"""Set in a pytest started under the profiler by the plugin or ``memwarden pytest``: its
capture directory."""
PYTEST_OWNER_PID = "MEMWARDEN_PYTEST_OWNER_PID"
"""The process id of that pytest (which removes the directory at its end)."""


class Unavailable(RuntimeError):
    """The profiler cannot be added to a new process's environment; the message says why."""


def environment(capture_dir: str, mode: str = "sampled") -> Dict[str, str]:
    """This process's environment with the profiler added: the library ``MEMWARDEN_PRELOAD``
    names, else the one installed with this package (``memwarden/_bin/``). Raises
    :class:`Unavailable` with the reason when there is no library or no path to preload it
    by."""
    named = os.environ.get("MEMWARDEN_PRELOAD")
    if named and not Path(named).is_file():
        raise Unavailable(f"MEMWARDEN_PRELOAD names {named!r}, which is not a file")
    try:
        found = Path(named) if named else preload_path()
    except FileNotFoundError:
        raise Unavailable(
            "memwarden's profiler library is not installed with this package; reinstall memwarden"
        ) from None
    env = dict(os.environ)
    try:
        preload = os.fspath(_native.preloadable(found))
    except ValueError as e:
        raise Unavailable(f"the profiler library cannot be preloaded: {e}") from None
    env["LD_PRELOAD"] = f"{preload} {env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else preload
    env["MEMWARDEN_CAPTURE_DIR"] = capture_dir
    env["MEMWARDEN_PROFILE_MODE"] = mode
    return env


def pytest_environment(xdist: bool) -> Dict[str, str]:
    """The environment of a pytest started under the profiler (by the plugin, or by
    ``memwarden pytest``): a new capture directory, and in it a tree counter so tests are
    measured with the processes they start (not for pytest-xdist, whose workers would share
    one: they measure their own process). Raises :class:`Unavailable`, the directory
    removed."""
    capture_dir = tempfile.mkdtemp(prefix="memwarden-pytest-")
    try:
        env = environment(capture_dir)
        if not xdist:
            _native.tree_create(capture_dir)
    except (Unavailable, OSError) as e:
        shutil.rmtree(capture_dir, ignore_errors=True)
        raise Unavailable(str(e)) from None
    env[PYTEST_CAPTURE_DIR] = capture_dir
    env[PYTEST_OWNER_PID] = str(os.getpid())
    return env
