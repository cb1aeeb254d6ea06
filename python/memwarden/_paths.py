"""Where the wheel's compiled programs are: ``memwarden/_bin/``, beside this package.

The build backend (build_backend/memwarden_build.py) puts them there; the command finds
the preload library next to itself, so neither needs configuring.
"""

from __future__ import annotations

from pathlib import Path

BIN_DIR = Path(__file__).parent / "_bin"


def _bundled(name: str) -> Path:
    path = BIN_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: this memwarden was not installed from its wheel "
            "(install it with `pip install .` from a checkout, which builds it)"
        )
    return path


def binary_path() -> Path:
    """The ``memwarden`` executable of this installation."""
    return _bundled("memwarden")


def preload_path() -> Path:
    """The allocation profiler's library, ``libmemwarden_preload.so``."""
    return _bundled("libmemwarden_preload.so")
