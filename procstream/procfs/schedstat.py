"""Parse ``/proc/PID/schedstat``: the scheduler's exact CPU time of one task.

Three numbers: time on the CPU (ns, ``sum_exec_runtime``), time waiting on a run queue
(ns), timeslices run. The first is exact, where ``stat``'s utime/stime are clock ticks
(10 ms): it is what we use for the final CPU of a short-lived process. It counts the
task itself only — for a process, its main thread.
"""

from __future__ import annotations

from ._numbers import to_int
from .errors import ProcfsParseError

__all__ = ["parse_schedstat"]


def parse_schedstat(data: bytes) -> int:
    """Nanoseconds on the CPU; ``ProcfsParseError`` on anything but three integers."""
    fields = data.split()
    if len(fields) != 3:
        raise ProcfsParseError(f"schedstat: expected 3 fields: {data[:80]!r}")
    try:
        return to_int(fields[0])
    except ValueError as exc:
        raise ProcfsParseError(f"schedstat: bad runtime {fields[0]!r}") from exc
