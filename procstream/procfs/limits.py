"""Parse ``/proc/PID/limits``: the soft limit on open files (every poll's fd ratio), and
every limit (a process's detail, on demand).

Each line is ``name`` (several words), then soft, hard and (maybe) units, in columns
separated by two spaces or more; the first line is the header. A value is a number or
``unlimited``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ._numbers import to_int
from .errors import ProcfsParseError

__all__ = ["Limit", "parse_max_open_files", "parse_limits"]

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


class Limit(NamedTuple):
    """One resource limit; ``None`` for ``unlimited``."""

    name: str  # "Max open files"
    soft: int | None
    hard: int | None
    unit: str  # "files", "bytes", "seconds", "us"...; "" for the priorities


_LINE = re.compile(rb"^(\S+(?: \S+)*)\s{2,}(\S+)\s+(\S+)(?:\s+(\S+))?\s*$")
# More lines than any kernel has limits: a bound on what a garbage file costs.
_MAX_LIMITS = 64


def _value(raw: bytes, line: bytes) -> int | None:
    if raw == b"unlimited":
        return None
    if not raw.isdigit():
        raise ProcfsParseError(f"limits: bad value in {line[:80]!r}")
    try:
        return to_int(raw)
    except ValueError as exc:
        raise ProcfsParseError(f"limits: bad value in {line[:80]!r}") from exc


def parse_limits(data: bytes) -> tuple[Limit, ...]:
    """Every limit, in file order; ``ProcfsParseError`` on a line that doesn't parse."""
    lines = data.splitlines()
    if not lines or not lines[0].startswith(b"Limit"):
        raise ProcfsParseError(f"limits: no header: {data[:80]!r}")
    out: list[Limit] = []
    for line in lines[1 : _MAX_LIMITS + 1]:
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise ProcfsParseError(f"limits: bad line {line[:80]!r}")
        name, soft, hard, unit = m.groups()
        out.append(
            Limit(
                name.decode("ascii", "replace"),
                _value(soft, line),
                _value(hard, line),
                (unit or b"").decode("ascii", "replace"),
            )
        )
    return tuple(out)
