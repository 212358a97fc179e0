"""Parse ``/proc/PID/smaps_rollup``: the process's proportional share of memory.

The file is one header line (the address range ``[rollup]``) then ``Key:  value kB``
lines, the same keys as each mapping of ``smaps``. We need ``Pss`` (resident memory, each
shared page divided among the processes that map it) and ``SwapPss`` (the same for swap).
Newer kernels add ``Pss_Anon``, ``Pss_File``, ``Pss_Dirty``... so keys are searched with
their leading newline and trailing colon: ``Pss:`` can't match inside ``Pss_Anon:`` or
``SwapPss:``. Kernels before 4.14 have no ``SwapPss`` line (0 then).
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import ProcfsParseError

__all__ = ["Proportional", "parse_smaps_rollup"]

_PSS = b"\nPss:"
_SWAP_PSS = b"\nSwapPss:"


class Proportional(NamedTuple):
    """Proportional set sizes, in bytes."""

    resident: int
    swapped: int


def _kib(data: bytes, key: bytes, *, required: bool) -> int:
    start = data.find(key)
    if start < 0:
        if required:
            raise ProcfsParseError(f"smaps_rollup: no {key[1:]!r}: {data[:80]!r}")
        return 0
    start += len(key)
    end = data.find(b"\n", start)
    words = (data[start:] if end < 0 else data[start:end]).split()
    # "Pss:     284 kB": the kernel always prints kB
    if len(words) != 2 or words[1] != b"kB" or not words[0].isdigit():
        raise ProcfsParseError(f"smaps_rollup: bad {key[1:]!r} line {data[start:end][:80]!r}")
    return int(words[0]) * 1024


def parse_smaps_rollup(data: bytes) -> Proportional:
    """Parse a ``smaps_rollup`` file; ``ProcfsParseError`` if ``Pss`` is missing or bad.

    Empty content (no memory map: a kernel thread, a zombie, on kernels that answer with
    an empty file rather than ``ESRCH``) is no memory.
    """
    if not data:
        return Proportional(0, 0)
    return Proportional(_kib(data, _PSS, required=True), _kib(data, _SWAP_PSS, required=False))
