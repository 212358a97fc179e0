"""Parse ``/proc/PID/limits``: the soft limit on open files.

Each line is ``name`` (several words), then soft, hard and (maybe) units, in columns. The
name we want is fixed, so we find it and split what follows.
"""

from __future__ import annotations

from ._numbers import to_int
from .errors import ProcfsParseError

__all__ = ["parse_max_open_files"]

_KEY = b"Max open files"


def parse_max_open_files(data: bytes) -> int:
    """Soft ``Max open files``; 0 for ``unlimited``. ``ProcfsParseError`` if missing/bad."""
    start = data.find(_KEY)
    if start < 0:
        raise ProcfsParseError(f"limits: no {_KEY!r} line")
    start += len(_KEY)
    end = data.find(b"\n", start)
    values = (data[start:] if end < 0 else data[start:end]).split()
    if not values:
        raise ProcfsParseError(f"limits: empty {_KEY!r} line")
    soft = values[0]
    if soft == b"unlimited":
        return 0
    try:
        return to_int(soft)
    except ValueError as exc:
        raise ProcfsParseError(f"limits: bad soft limit {soft!r}") from exc
