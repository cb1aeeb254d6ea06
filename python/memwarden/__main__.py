"""``memwarden`` (the console script) and ``python -m memwarden``: the Rust command itself.

The process replaces itself with the bundled executable (``os.execv``), so no Python stays
between the user and ``memwarden run``: signals, exit statuses and the guardian (which
re-executes ``/proc/self/exe``) are those of the command run directly.
"""

from __future__ import annotations

import os
import signal
import sys

from memwarden._paths import binary_path


def main() -> None:
    """Runs ``memwarden`` with this process's arguments; never returns. ``memwarden kernel
    ...`` (:mod:`memwarden.kernel`, a Jupyter kernelspec) and ``memwarden pytest ...``
    (:mod:`memwarden._pytest_launch`, pytest under the profiler) are the Python side's."""
    if sys.argv[1:2] == ["kernel"]:
        from memwarden.kernel import main as kernel

        sys.exit(kernel(sys.argv[2:]))
    if sys.argv[1:2] == ["pytest"]:
        from memwarden._pytest_launch import main as launch

        sys.exit(launch(sys.argv[2:]))
    try:
        binary = binary_path()
    except FileNotFoundError as e:
        sys.exit(f"memwarden: {e}")
    # Python ignores these two at start-up and an ignored signal stays ignored across
    # exec: give the command, and the commands it runs, the defaults a shell would.
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(binary, ["memwarden", *sys.argv[1:]])


if __name__ == "__main__":
    main()
