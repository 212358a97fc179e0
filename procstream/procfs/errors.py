"""Errors raised by the /proc readers.

Rules:
- A process that vanishes while we read it raises ``ProcessLookupError``: the caller
  treats it as an exit, not as an error.
- A file we may not read raises ``PermissionError``.
- A file whose content can't be parsed raises ``ProcfsParseError`` (a ``ValueError``).
- A mount point that can't be read at all raises ``ProcfsError`` naming the path.
"""

from __future__ import annotations

__all__ = ["ProcfsError", "ProcfsParseError", "READ_ERRORS"]


class ProcfsError(OSError):
    """The /proc mount point (or one of its global files) can't be read."""


class ProcfsParseError(ValueError):
    """A /proc file had content we could not parse (garbage, truncated)."""


#: Everything reading one process may raise: catch this around a ``Proc`` method.
READ_ERRORS: tuple[type[Exception], ...] = (ProcessLookupError, PermissionError, ProcfsParseError, OSError)
