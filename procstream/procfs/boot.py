"""Parse the system-wide ``/proc/stat`` for ``btime``: boot time, in epoch seconds.

Process start times in ``/proc/PID/stat`` count clock ticks since boot; adding ``btime``
turns them into wall-clock time.
"""

from __future__ import annotations

from ._numbers import to_int
from .errors import ProcfsParseError

__all__ = ["parse_btime"]

_KEY = b"btime "


def parse_btime(data: bytes) -> int:
    """``btime`` from the content of ``/proc/stat``; ``ProcfsParseError`` if missing/bad."""
    start = data.find(b"\n" + _KEY)
    if start >= 0:
        start += 1
    elif data.startswith(_KEY):
        start = 0
    else:
        raise ProcfsParseError("stat: no btime line")
    start += len(_KEY)
    end = data.find(b"\n", start)
    try:
        return to_int(data[start:] if end < 0 else data[start:end])
    except ValueError as exc:
        raise ProcfsParseError("stat: bad btime value") from exc
