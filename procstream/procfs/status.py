"""Parse ``/proc/PID/status`` (and ``/proc/PID/task/TID/status``).

Hot path: the file is ~50 lines and we need four values, so we look each key up with
``bytes.find`` instead of splitting the file into a dict. Keys are searched with their
leading newline (``b"\\nvoluntary_ctxt_switches:"``) so that one key can't match inside
another (``nonvoluntary_...``). The task name on the ``Name:`` line is escaped by the
kernel (no raw newline), so a process can't forge a line.
"""

from __future__ import annotations

from typing import NamedTuple

from ._numbers import INT64_MAX, to_int
from .errors import ProcfsParseError

__all__ = ["Status", "parse_status", "parse_ctx_switches"]

_UID = b"\nUid:"
_VMSWAP = b"\nVmSwap:"
_VOLUNTARY = b"\nvoluntary_ctxt_switches:"
_NONVOLUNTARY = b"\nnonvoluntary_ctxt_switches:"


class Status(NamedTuple):
    """The fields of ``status`` that procstream uses."""

    uid: int  # effective uid
    ctx_voluntary: int
    ctx_nonvoluntary: int
    swapped_bytes: int  # VmSwap; 0 when absent (kernel threads, zombies)


def _value(data: bytes, key: bytes) -> bytes | None:
    """The rest of the line after ``key``, or None if the key isn't there."""
    start = data.find(key)
    if start < 0:
        return None
    start += len(key)
    end = data.find(b"\n", start)
    return data[start:] if end < 0 else data[start:end]


def _int(data: bytes, key: bytes) -> int:
    """Integer value of ``key`` (0 when absent: older kernels lack the ctxt lines)."""
    value = _value(data, key)
    if value is None:
        return 0
    try:
        return to_int(value)  # int() ignores the surrounding tab/spaces
    except ValueError as exc:
        raise ProcfsParseError(f"status: bad {key[1:]!r} value {value!r}") from exc


def parse_ctx_switches(data: bytes) -> tuple[int, int]:
    """(voluntary, nonvoluntary) context switches; for per-thread ``status`` files."""
    return _int(data, _VOLUNTARY), _int(data, _NONVOLUNTARY)


def parse_status(data: bytes) -> Status:
    """Parse a ``status`` file; ``ProcfsParseError`` if ``Uid:`` is missing or bad."""
    uids = _value(data, _UID)
    if uids is None:
        raise ProcfsParseError(f"status: no Uid line: {data[:80]!r}")
    try:
        # "Uid:\treal\teffective\tsaved\tfs"
        uid = to_int(uids.split()[1])
    except (IndexError, ValueError) as exc:
        raise ProcfsParseError(f"status: bad Uid line {uids!r}") from exc
    swap = _value(data, _VMSWAP)
    swapped = 0
    if swap is not None:
        # "VmSwap:\t     123 kB" -- the kernel always prints kB
        try:
            swapped = to_int(swap.split()[0]) * 1024
            if swapped > INT64_MAX:
                raise ValueError("VmSwap outside 64 bits")
        except (IndexError, ValueError) as exc:
            raise ProcfsParseError(f"status: bad VmSwap line {swap!r}") from exc
    return Status(uid, _int(data, _VOLUNTARY), _int(data, _NONVOLUNTARY), swapped)
