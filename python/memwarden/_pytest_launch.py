"""``memwarden pytest ARGS...``: pytest started under memwarden's profiler from its first
line, so that the plugin has nothing to restart.

The same interpreter runs ``python -m pytest ARGS...`` in place of this process
(``os.execve``), with the profiler preloaded, a capture directory and a tree counter (as
the plugin's own restart makes them); the plugin then finds itself profiled, measures as it
does after a restart, and removes the captures at the end. pytest is not imported here:
what this costs is one interpreter's start.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import List

from . import _native, _preload


def main(args: List[str]) -> int:
    """Replaces this process with pytest under the profiler; returns only on an error."""
    command = [sys.executable, "-m", "pytest", *args]
    capture_dir = tempfile.mkdtemp(prefix="memwarden-pytest-")
    try:
        env = _preload.environment(capture_dir)
        # pytest-xdist's workers would share one counter: they measure their own process.
        if not any(a == "-n" or a.startswith(("-n", "--numprocesses", "--dist")) for a in args):
            _native.tree_create(capture_dir)
    except (_preload.Unavailable, OSError) as e:
        shutil.rmtree(capture_dir, ignore_errors=True)
        print(f"memwarden pytest: {e}; pytest runs without the profiler", file=sys.stderr)
        env = dict(os.environ)
    else:
        env[_preload.PYTEST_CAPTURE_DIR] = capture_dir
        env[_preload.PYTEST_OWNER_PID] = str(os.getpid())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)
    return 1
