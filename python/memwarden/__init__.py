"""memwarden: memory governance for Python machine-learning models.

The ``memwarden`` command (installed with this package) runs, measures, profiles and
records a command's memory; this package is its Python side: :func:`track` and
:func:`budget` for a block's memory, :func:`census` for live objects by type,
:class:`Report` for reports, a pytest plugin (``limit_memory``, ``limit_leaks``) and an
IPython extension (``%load_ext memwarden``, ``%%memwarden``). See docs/python.md.
"""

from memwarden._native import version as _native_version

__version__: str = _native_version()

from typing import TYPE_CHECKING, Any

from memwarden.track import MemoryBudgetExceeded, Track, budget, parse_size, track

if TYPE_CHECKING:
    from memwarden.census import Census, census
    from memwarden.report import Report

# Imported when first used: the pytest plugin imports this package in every pytest run,
# and the report's types take longer to define than the rest of the package to import.
_LAZY = {"Census": "memwarden.census", "census": "memwarden.census", "Report": "memwarden.report"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'memwarden' has no attribute {name!r}")


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext memwarden``: the ``%%memwarden`` cell magic (:mod:`memwarden.ipython`)."""
    from memwarden.ipython import load_ipython_extension as load

    load(ipython)


__all__ = [
    "Census",
    "MemoryBudgetExceeded",
    "Report",
    "Track",
    "budget",
    "census",
    "parse_size",
    "track",
]
