"""memwarden's PEP 517 build backend: maturin's, after a cargo build of the two binaries.

The wheel holds three compiled things: the extension module ``memwarden._native``
(crates/memwarden-py), the ``memwarden`` executable (crates/memwarden-cli) and the
preload library ``libmemwarden_preload.so`` (crates/memwarden-preload). maturin builds one
binding type per project (``pyo3`` here), so it cannot build the other two itself. This
backend builds them with cargo, copies them into ``python/memwarden/_bin/`` (git-ignored,
named in ``[tool.maturin] include``), then hands every hook to maturin's backend, which
packs ``_bin/`` with the rest of the package. ``pip install .`` stays one step.

The binaries are built without debug information, which they do not use (the command is
10 MB instead of 58 MB with the workspace's line tables); the preload library keeps its
dynamic symbol table, by which it interposes ``malloc``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

import maturin
from maturin import (
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_wheel,
)

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_wheel",
]

ROOT = Path(__file__).resolve().parent.parent
BIN_DIR = ROOT / "python" / "memwarden" / "_bin"

# What goes into _bin/: (cargo package, its target's name and kind, the file's name).
BINARIES = [
    ("memwarden-cli", "memwarden", "bin", "memwarden"),
    ("memwarden-preload", "memwarden_preload", "cdylib", "libmemwarden_preload.so"),
]

# The workspace's release profile keeps line tables; the wheel's binaries go without.
WITHOUT_DEBUG_INFO = {
    "CARGO_PROFILE_RELEASE_DEBUG": "false",
    "CARGO_PROFILE_RELEASE_STRIP": "debuginfo",
}


def build_binaries() -> None:
    """Builds the executable and the preload library (release, no debug information) and
    copies them into ``python/memwarden/_bin/``."""
    command = ["cargo", "build", "--release", "--message-format=json-render-diagnostics"]
    for package, _, _, _ in BINARIES:
        command += ["-p", package]
    # maturin's build of the extension module inherits this too: both builds then share
    # the compiled dependencies. Their own target folder (unless CARGO_TARGET_DIR says
    # otherwise) keeps them apart from `cargo build --release`'s, whose settings differ:
    # neither build then undoes the other's.
    os.environ.update(WITHOUT_DEBUG_INFO)
    os.environ.setdefault("CARGO_TARGET_DIR", os.fspath(ROOT / "target" / "wheel"))
    print("Running `{}`".format(" ".join(command)), file=sys.stderr, flush=True)
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, check=False)
    if result.returncode != 0:
        sys.exit(f"memwarden: `{' '.join(command)}` failed with exit status {result.returncode}")
    # cargo's messages name each artifact it built (or found fresh), wherever its target
    # directory is.
    built = {}
    for line in result.stdout.decode(errors="replace").splitlines():
        message = json.loads(line) if line.startswith("{") else {}
        if message.get("reason") != "compiler-artifact":
            continue
        for _, target, kind, name in BINARIES:
            if message["target"]["name"] == target and kind in message["target"]["kind"]:
                files = [message["executable"]] if kind == "bin" else message["filenames"]
                built[name] = next(f for f in files if f and Path(f).name == name)
    BIN_DIR.mkdir(exist_ok=True)
    for _, _, _, name in BINARIES:
        if name not in built:
            sys.exit(f"memwarden: cargo did not report building {name}")
        # copy2 keeps the mode: the wheel records the executable bit from the file.
        shutil.copy2(built[name], BIN_DIR / name)


def with_compatibility(config_settings: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
    """``config_settings`` with ``[tool.maturin] compatibility`` passed as an argument:
    maturin's backend passes ``--compatibility off`` (a plain ``linux_x86_64`` tag) unless
    an argument says otherwise, which would override the setting."""
    args = maturin.get_maturin_pep517_args(config_settings)
    compatibility = maturin.get_config().get("compatibility")
    if compatibility and "--compatibility" not in args and "--manylinux" not in args:
        args = ["--compatibility", compatibility, *args]
    return {**(config_settings or {}), "maturin.build-args": args}


def build_wheel(
    wheel_directory: str,
    config_settings: Optional[Mapping[str, Any]] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    build_binaries()
    return maturin.build_wheel(
        wheel_directory, with_compatibility(config_settings), metadata_directory
    )


def build_editable(
    wheel_directory: str,
    config_settings: Optional[Mapping[str, Any]] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    # The editable install imports python/memwarden itself, so _bin/ is filled in place.
    build_binaries()
    return maturin.build_editable(
        wheel_directory, with_compatibility(config_settings), metadata_directory
    )
