"""memwarden: memory governance for Python machine-learning models.

The ``memwarden`` command (installed with this package) runs, measures, profiles and
records a command's memory; this package is its Python side: :func:`track` and
:func:`budget` for a block's memory, :func:`census` for live objects by type,
:class:`Report` for reports, a pytest plugin (``limit_memory``, ``limit_leaks``) and an
IPython extension (``%load_ext memwarden``, ``%%memwarden``). See docs/python.md.
"""

from memwarden._native import version as _native_version

__version__: str = _native_version()

from memwarden.census import Census, census
from memwarden.report import Report
from memwarden.track import MemoryBudgetExceeded, Track, budget, parse_size, track


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
