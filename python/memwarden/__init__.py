"""memwarden: memory governance for Python machine-learning models.

The ``memwarden`` command (installed with this package) runs, measures, profiles and
records a command's memory; this package is its Python side.
"""

from memwarden._native import version as _native_version

__version__: str = _native_version()

# The Python API's exports (track, census, report, the pytest plugin's helpers) are added
# here by the modules that define them.
