"""Type stubs of ``memwarden._native``, the compiled module (crates/memwarden-py)."""

import os

def version() -> str:
    """memwarden's version, as its Cargo manifest states it."""

def unescape(text: str) -> bytes:
    """The bytes a name escaped by the report (``\\\\`` and ``\\xNN``) stands for.

    Raises ``ValueError`` when a backslash starts neither.
    """

def analyze_captures(dir: str | os.PathLike[str], raw_frames: bool = False) -> str:
    """The profile of a capture directory kept with ``memwarden run --capture-dir DIR``:
    the JSON text of a report's ``profile`` section (docs/report-schema.md).

    With the run's report in ``DIR/report.json`` the profile's times count from the run's
    start; without it, from the first capture's. Import machinery is folded into the
    importing line unless ``raw_frames``. Problems that still leave a profile (an unreadable
    capture among good ones) are issued as ``UserWarning``; none left raises ``ValueError``;
    a missing ``DIR`` raises ``FileNotFoundError``, a file ``NotADirectoryError``.
    """
