"""Read processes from /proc, or from any directory laid out like it.

Synchronous and stdlib-only; imports nothing of procstream but its own modules. One parser
module per /proc file (``stat.py``, ``status.py``, ``io.py``, ...), pure functions from
``bytes`` to values, so they can be tested on captured fixtures.

    fs = FS("/proc")
    for proc in fs.all_procs():
        pid_id = proc.proc_id()      # reads stat
        static = proc.static()       # once per process: cmdline, status (uid)
        sample = proc.sample()       # every poll: stat, schedstat, status, io, fd
        metrics = sample.metrics

    # At the next poll, hand each process the sample of the last one: a process that
    # has not run since costs stat and schedstat, not every file (see ``Proc.follow``).
    proc.follow(sample)
    sample = proc.sample()

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
    Sample,
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
    "Sample",
    "States",
    "ThreadSample",
    "state_of",
    "ProcfsError",
    "ProcfsParseError",
    "READ_ERRORS",
]
