"""Value types produced by the /proc readers.

All are frozen, slotted dataclasses (``ExecMark``, built for every process in every poll,
a NamedTuple: cheaper still): cheap to build on the hot path, hashable where they serve
as keys, and safe to hand to another thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

__all__ = [
    "ProcId",
    "ExecMark",
    "ProcStatic",
    "ProcMetrics",
    "ProcExtras",
    "ThreadSample",
    "States",
    "ProcIdInfo",
    "ProcLike",
    "FixedProc",
    "state_of",
]


@dataclass(frozen=True, slots=True)
class ProcId:
    """Identity of a process: a pid is reused over time, (pid, start time) is not."""

    pid: int
    #: start time after boot, in clock ticks (field 22 of ``stat``)
    start_time_rel: int


class ExecMark(NamedTuple):
    """What ``execve`` changes in ``stat`` while pid and start time stay: the program's
    name and (with ASLR) the address of its stack.

    A process read between its parent's ``fork`` and its own ``exec`` still looks like its
    parent; comparing marks tells when it has become another program.
    """

    comm: str
    #: 0 when the kernel hides it (no memory map, as for zombies; or not permitted)
    stack: int = 0

    def execed_since(self, earlier: ExecMark) -> bool:
        """True if the process runs another program than when ``earlier`` was taken.

        With both stacks known, only the stack tells: a rename (``prctl(PR_SET_NAME)``)
        keeps it, an exec moves it. Otherwise the name tells; a process that loses its
        memory map (on exit: a zombie has none) has not exec'd.
        """
        if self.stack and earlier.stack:
            return self.stack != earlier.stack
        return self.comm != earlier.comm


@dataclass(frozen=True, slots=True)
class ProcStatic:
    """What we read once per process: identity and naming attributes."""

    name: str  # comm, at most 15 bytes, may contain spaces and ')'
    cmdline: tuple[str, ...]  # argv; empty for kernel threads and zombies
    parent_pid: int
    start_time: float  # epoch seconds
    uid: int = -1  # effective uid, -1 when unknown
    cgroups: tuple[str, ...] = ()  # cgroup paths, read only when asked for
    #: False when the argv could not be read: the process had already left its memory
    #: (exiting, or a zombie) when we looked, so the empty ``cmdline`` is not its own
    cmdline_known: bool = True
    #: ``cmdline`` holds only the start of a longer argv (its reader reads a bounded prefix)
    cmdline_truncated: bool = False


@dataclass(frozen=True, slots=True)
class States:
    """How many threads are in each scheduler state (process-exporter's ``states``)."""

    running: int = 0
    sleeping: int = 0
    waiting: int = 0
    zombie: int = 0
    other: int = 0

    def __add__(self, other: States) -> States:
        return States(
            self.running + other.running,
            self.sleeping + other.sleeping,
            self.waiting + other.waiting,
            self.zombie + other.zombie,
            self.other + other.other,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "running": self.running,
            "sleeping": self.sleeping,
            "waiting": self.waiting,
            "zombie": self.zombie,
            "other": self.other,
        }


_ONE_STATE: dict[str, States] = {
    "R": States(running=1),
    "S": States(sleeping=1),
    "D": States(waiting=1),
    "Z": States(zombie=1),
}
_OTHER = States(other=1)


def state_of(letter: str) -> States:
    """The shared ``States`` for one thread in state ``letter`` (no allocation)."""
    return _ONE_STATE.get(letter, _OTHER)


class ThreadSample(NamedTuple):
    """One thread of a multi-threaded process, read from ``task/TID/`` (only when asked
    for: ``FS(threads=True)``). Counters are totals since the thread started."""

    tid: int
    #: start after boot in clock ticks: with ``tid``, the thread's identity
    start_time_rel: int
    #: the thread's own comm (``pthread_setname_np``), at most 15 bytes
    name: str
    cpu_user: float
    cpu_system: float
    read_bytes: int
    write_bytes: int
    major_faults: int
    minor_faults: int
    ctx_voluntary: int
    ctx_nonvoluntary: int


@dataclass(frozen=True, slots=True)
class ProcExtras:
    """What only process-exporter's optional families need, read only when asked for
    (``FS(threads=, smaps=, wchan=)``): kept apart so that the sample every poll makes of
    every process stays as small as it was."""

    #: proportional resident and swapped memory (``smaps_rollup``)
    pss_bytes: int = 0
    swap_pss_bytes: int = 0
    #: every thread of a multi-threaded process (empty for a single-threaded one)
    threads: tuple[ThreadSample, ...] = ()
    #: the wait channel of each of its threads that waits in the kernel
    wchans: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProcMetrics:
    """What we read at every poll. Counters are totals since the process started."""

    cpu_user: float  # seconds
    cpu_system: float  # seconds
    read_bytes: int
    write_bytes: int
    resident_bytes: int
    virtual_bytes: int
    swapped_bytes: int = 0
    major_faults: int = 0
    minor_faults: int = 0
    ctx_voluntary: int = 0
    ctx_nonvoluntary: int = 0
    num_threads: int = 1
    open_fds: int = -1  # -1 when /proc/PID/fd can't be read
    states: States = field(default_factory=States)
    #: how many optional files (io, fd, ...) could not be read for this sample
    partial_errors: int = 0
    #: the process's scheduler state letter (``stat``): R S D Z T t X I ...
    state: str = ""
    #: None unless the FS reads process-exporter's optional data
    extras: ProcExtras | None = None

    @property
    def cpu_time(self) -> float:
        return self.cpu_user + self.cpu_system


class ProcLike(Protocol):
    """What the tracker needs from one process seen in one poll.

    ``procstream.procfs.Proc`` reads /proc lazily and caches each file for the life of the
    object (one poll), so asking twice never reads twice. Every method may raise
    ``ProcessLookupError`` (the process is gone: an exit, not an error),
    ``PermissionError`` (we may not read it) or ``ProcfsParseError``.
    """

    @property
    def pid(self) -> int: ...

    def proc_id(self) -> ProcId:
        """Identity; reads only ``stat``. Call first: it is the cheapest read."""
        ...

    def exec_mark(self) -> ExecMark:
        """What changes on ``exec`` (reads only ``stat``, like ``proc_id``)."""
        ...

    def static(self, *, cgroups: bool = False) -> ProcStatic:
        """Naming attributes; call once per process lifetime (when first seen).

        ``cgroups=True`` also reads ``cgroup`` (only needed by ``{{.Cgroups}}``).
        """
        ...

    def metrics(self) -> ProcMetrics:
        """Counters and gauges; call once per poll for tracked processes only."""
        ...

    def fd_limit(self) -> int:
        """Soft limit on open files (``limits``); 0 when unlimited or unknown.

        Static: call once per process, when it starts being tracked.
        """
        ...


@dataclass(frozen=True, slots=True)
class ProcIdInfo:
    """One process as read in one poll: who it is, what it is, what it uses."""

    id: ProcId
    static: ProcStatic
    metrics: ProcMetrics


@dataclass(frozen=True, slots=True)
class FixedProc:
    """A ``ProcLike`` answering from values already known, like Go's ``IDInfo``.

    Tests use it to feed made-up processes to a tracker; the kernel event source uses it
    for processes it has already read. ``error`` (if set) is raised by ``metrics()``, to
    play a process that vanishes or turns unreadable mid-read.
    """

    info: ProcIdInfo
    limit: int = 0
    error: BaseException | None = None
    #: as read from ``stat``; None: the name alone (stack unknown)
    mark: ExecMark | None = None

    @property
    def pid(self) -> int:
        return self.info.id.pid

    def proc_id(self) -> ProcId:
        return self.info.id

    def exec_mark(self) -> ExecMark:
        return self.mark if self.mark is not None else ExecMark(self.info.static.name)

    def static(self, *, cgroups: bool = False) -> ProcStatic:
        return self.info.static

    def metrics(self) -> ProcMetrics:
        if self.error is not None:
            raise self.error
        return self.info.metrics

    def fd_limit(self) -> int:
        return self.limit
