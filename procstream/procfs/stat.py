"""Parse ``/proc/PID/stat`` (and ``/proc/PID/task/TID/stat``).

Format (proc(5)): ``pid (comm) state ppid ...`` on one line. ``comm`` is the raw task name
(at most 15 bytes) and may itself contain spaces, ``(`` and ``)`` -- even a newline -- so
the fixed fields are found after the LAST ``)`` and comm is everything between the first
``(`` and that last ``)``.
"""

from __future__ import annotations

from typing import NamedTuple

from ._numbers import in_range
from .errors import ProcfsParseError

__all__ = ["Stat", "parse_stat", "parse_state", "parse_flags", "PF_EXITING", "PF_KTHREAD"]

# Indexes into the fields that follow "comm) ": field N of proc(5) is at index N - 3.
_STATE = 0  # (3)
_PPID = 1  # (4)
_MINFLT = 7  # (10)
_MAJFLT = 9  # (12)
_UTIME = 11  # (14)
_STIME = 12  # (15)
_NUM_THREADS = 17  # (20)
_STARTTIME = 19  # (22)
_VSIZE = 20  # (23)
_RSS = 21  # (24)
_STARTSTACK = 25  # (28)
_FLAGS = 6  # (9)

#: ``flags`` bits (include/linux/sched.h): the task is exiting (set before it drops its
#: memory, kept as a zombie); the task is a kernel thread
PF_EXITING = 0x00000004
PF_KTHREAD = 0x00200000
# Split off only what we use: the kernel prints ~50 fields, and each split piece is an
# allocation on the hot path. The remainder lands, unsplit, in one last piece.
_NEEDED = _RSS + 1  # fewer fields than this is garbage
_SPLIT = _STARTSTACK + 1  # startstack is optional (0 when absent, as when hidden)


class Stat(NamedTuple):
    """The fields of ``stat`` that procstream uses."""

    comm: str
    state: str  # one letter: R S D Z T t X I ...
    ppid: int
    minflt: int
    majflt: int
    utime: int  # clock ticks
    stime: int  # clock ticks
    num_threads: int
    starttime: int  # clock ticks after boot
    vsize: int  # bytes
    rss: int  # pages
    #: address of the stack's bottom: a new one on every exec (ASLR); 0 when the kernel
    #: hides it (no memory map: zombie, kernel thread; or we may not trace the process)
    startstack: int = 0


def _bad(data: bytes, why: str) -> ProcfsParseError:
    return ProcfsParseError(f"stat: {why}: {data[:80]!r}")


def parse_stat(data: bytes) -> Stat:
    """Parse the content of a ``stat`` file; raise ``ProcfsParseError`` on garbage."""
    open_ = data.find(b"(")
    close = data.rfind(b")")
    if open_ < 0 or close < open_:
        raise _bad(data, "no '(comm)'")
    fields = data[close + 1 :].split(None, _SPLIT)
    if len(fields) < _NEEDED:
        raise _bad(data, f"{len(fields)} fields after comm, need {_NEEDED}")
    state = fields[_STATE]
    if len(state) != 1 or not state.isalpha():
        raise _bad(data, "bad state")
    try:
        numbers = (
            int(fields[_PPID]),
            int(fields[_MINFLT]),
            int(fields[_MAJFLT]),
            int(fields[_UTIME]),
            int(fields[_STIME]),
            int(fields[_NUM_THREADS]),
            int(fields[_STARTTIME]),
            int(fields[_VSIZE]),
            int(fields[_RSS]),
            int(fields[_STARTSTACK]) if len(fields) > _STARTSTACK else 0,
        )
    except ValueError as exc:
        raise _bad(data, "non-numeric field") from exc
    if not in_range(numbers):
        raise _bad(data, "a field outside 64 bits")
    return Stat(data[open_ + 1 : close].decode("utf-8", "replace"), state.decode("ascii"), *numbers)


def parse_state(data: bytes) -> str:
    """Only the state letter of a ``stat`` file: for counting thread states cheaply."""
    close = data.rfind(b")")
    state = data[close + 2 : close + 3]
    # the letter must be followed by a space: catches truncated content and a missing ')'
    if close < 0 or data[close + 3 : close + 4] != b" " or not state.isalpha():
        raise _bad(data, "no state after '(comm)'")
    return state.decode("ascii")


def parse_flags(data: bytes) -> int:
    """Only the ``flags`` field (9) of a ``stat`` file; kept out of :func:`parse_stat`,
    which every poll runs, since only first sight of an empty command line needs it."""
    close = data.rfind(b")")
    fields = data[close + 1 :].split(None, _FLAGS + 1)
    if close < 0 or len(fields) <= _FLAGS:
        raise _bad(data, "no flags")
    try:
        return int(fields[_FLAGS])
    except ValueError as exc:
        raise _bad(data, "non-numeric flags") from exc
