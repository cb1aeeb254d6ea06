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
import sys
from typing import List

from . import _preload


def main(args: List[str]) -> int:
    """Replaces this process with pytest under the profiler; returns only on an error."""
    command = [sys.executable, "-m", "pytest", *args]
    # pytest-xdist's -n, given here or in PYTEST_ADDOPTS (an ini file's addopts is not seen
    # here: its workers then measure their own process only).
    given = [*args, *os.environ.get("PYTEST_ADDOPTS", "").split()]
    xdist = any(a.startswith(("-n", "--numprocesses")) for a in given)
    try:
        env = _preload.pytest_environment(xdist)
    except _preload.Unavailable as e:
        print(f"memwarden pytest: {e}; pytest runs without the profiler", file=sys.stderr)
        env = dict(os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)
    return 1
