"""Read processes from /proc, or from any directory laid out like it.

Synchronous and stdlib-only; imports nothing of procstream but its own modules. One parser
module per /proc file (``stat.py``, ``status.py``, ``io.py``, ...), pure functions from
``bytes`` to values, so they can be tested on captured fixtures.

    fs = FS("/proc")
    for proc in fs.all_procs():
        pid_id = proc.proc_id()      # reads stat
        static = proc.static()       # once per process: cmdline, status (uid)
        metrics = proc.metrics()     # every poll: stat, status, io, fd

Errors: see ``errors.py``.
"""

from __future__ import annotations

from .errors import READ_ERRORS, ProcfsError, ProcfsParseError
from .fs import FS, Proc
from .models import (
    ExecMark,
    FixedProc,
    ProcId,
    ProcIdInfo,
    ProcLike,
    ProcExtras,
    ProcMetrics,
    ProcStatic,
    States,
    ThreadSample,
    state_of,
)

__all__ = [
    "FS",
    "Proc",
    "ProcId",
    "ExecMark",
    "ProcStatic",
    "ProcMetrics",
    "ProcExtras",
    "ProcIdInfo",
    "ProcLike",
    "FixedProc",
    "States",
    "ThreadSample",
    "state_of",
    "ProcfsError",
    "ProcfsParseError",
    "READ_ERRORS",
]
