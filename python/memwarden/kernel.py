"""A Jupyter kernel that runs under memwarden's profiler: ``memwarden kernel install``.

The kernelspec starts the usual IPython kernel (``ipykernel``) with the profiler in its
environment (``LD_PRELOAD``, ``MEMWARDEN_CAPTURE_DIR``), so ``%%memwarden`` shows the lines
a cell allocated. Captures go to a directory of their own per kernel user
(``$XDG_CACHE_HOME/memwarden/kernel-captures``); each kernel process writes its own file,
and ``memwarden kernel install`` removes those of kernels no longer running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from . import _preload

NAME = "memwarden"


def capture_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "memwarden" / "kernel-captures"


def _forget_dead_kernels(directory: Path) -> None:
    for capture in directory.glob("*.mwcap"):
        pid = capture.name.split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            capture.unlink(missing_ok=True)


def install(name: str = NAME, user: bool = True, prefix: Optional[str] = None) -> str:
    """Installs the kernelspec; returns where it went."""
    from jupyter_client.kernelspec import KernelSpecManager

    directory = capture_dir()
    directory.mkdir(parents=True, exist_ok=True)
    _forget_dead_kernels(directory)
    env = _preload.environment(os.fspath(directory))
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python {sys.version_info.major}.{sys.version_info.minor} (memwarden)",
        "language": "python",
        "env": {key: env[key] for key in ("LD_PRELOAD", "MEMWARDEN_CAPTURE_DIR", "MEMWARDEN_PROFILE_MODE")},
        "metadata": {"debugger": True},
    }
    with tempfile.TemporaryDirectory() as source:
        with open(os.path.join(source, "kernel.json"), "w") as out:
            json.dump(spec, out, indent=1)
        return KernelSpecManager().install_kernel_spec(source, name, user=user, prefix=prefix)


def main(argv: Optional[List[str]] = None) -> int:
    """``memwarden kernel install [--name NAME] [--sys-prefix | --prefix DIR]``."""
    parser = argparse.ArgumentParser(prog="memwarden kernel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("install", help="install a Jupyter kernel that runs under memwarden's profiler")
    add.add_argument("--name", default=NAME)
    where = add.add_mutually_exclusive_group()
    where.add_argument("--sys-prefix", action="store_true", help="into this environment, not the user's")
    where.add_argument("--prefix", help="into this prefix")
    args = parser.parse_args(argv)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    try:
        path = install(args.name, user=prefix is None, prefix=prefix)
    except (ImportError, RuntimeError) as e:
        print(f"memwarden: error: {e}", file=sys.stderr)
        return 2
    print(f"memwarden: installed kernel `{args.name}` in {path}; choose it in Jupyter, then `%load_ext memwarden`")
    return 0
