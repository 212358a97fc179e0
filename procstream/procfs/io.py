"""Parse ``/proc/PID/io``: bytes the process caused to be fetched from / sent to storage.

``read_bytes``/``write_bytes`` (storage I/O), not ``rchar``/``wchar`` (any read/write call):
the same pair process-exporter reports. Keys are searched with their leading newline so
that ``write_bytes`` can't match inside ``cancelled_write_bytes``.
"""

from __future__ import annotations

from typing import NamedTuple

from ._numbers import to_int
from .errors import ProcfsParseError

__all__ = ["IoCounters", "parse_io"]

_READ = b"\nread_bytes:"
_WRITE = b"\nwrite_bytes:"


class IoCounters(NamedTuple):
    read_bytes: int
    write_bytes: int


def _int(data: bytes, key: bytes) -> int:
    start = data.find(key)
    if start < 0:
        raise ProcfsParseError(f"io: no {key[1:]!r}: {data[:80]!r}")
    start += len(key)
    end = data.find(b"\n", start)
    try:
        return to_int(data[start:] if end < 0 else data[start:end])
    except ValueError as exc:
        raise ProcfsParseError(f"io: bad {key[1:]!r} value") from exc


def parse_io(data: bytes) -> IoCounters:
    """Parse an ``io`` file; ``ProcfsParseError`` if either counter is missing or bad."""
    return IoCounters(_int(data, _READ), _int(data, _WRITE))
