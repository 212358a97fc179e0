"""Made-up processes for tracker/grouper/events tests (no /proc involved)."""

from __future__ import annotations

from dataclasses import dataclass, field

from procstream.procfs.models import (
    ExecMark,
    FixedProc,
    ProcId,
    ProcIdInfo,
    ProcMetrics,
    ProcExtras,
    ProcStatic,
    ThreadSample,
    state_of,
)

BOOT = 1_700_000_000
HZ = 100


def fake(
    pid: int,
    name: str = "proc",
    *,
    start: int = 1000,
    ppid: int = 1,
    cmdline: tuple[str, ...] | None = None,
    cpu: tuple[float, float] = (0.0, 0.0),
    io: tuple[int, int] = (0, 0),
    rss: int = 0,
    vsize: int = 0,
    swap: int = 0,
    faults: tuple[int, int] = (0, 0),
    ctx: tuple[int, int] = (0, 0),
    threads: int = 1,
    fds: int = -1,
    limit: int = 0,
    uid: int = 0,
    state: str = "S",
    partial: int = 0,
    error: BaseException | None = None,
    stack: int = 0,
    pss: tuple[int, int] = (0, 0),
    thread_samples: tuple[ThreadSample, ...] = (),
    wchans: tuple[str, ...] = (),
) -> FixedProc:
    """One process as one poll would see it. ``start`` is in clock ticks since boot;
    ``stack`` (the address in ``stat``, new on each exec) 0 for unknown."""
    if cmdline is None:
        cmdline = (name,)
    static = ProcStatic(
        name=name,
        cmdline=cmdline,
        parent_pid=ppid,
        start_time=BOOT + start / HZ,
        uid=uid,
    )
    metrics = ProcMetrics(
        cpu_user=cpu[0],
        cpu_system=cpu[1],
        read_bytes=io[0],
        write_bytes=io[1],
        resident_bytes=rss,
        virtual_bytes=vsize,
        swapped_bytes=swap,
        major_faults=faults[0],
        minor_faults=faults[1],
        ctx_voluntary=ctx[0],
        ctx_nonvoluntary=ctx[1],
        num_threads=threads,
        open_fds=fds,
        states=state_of(state),
        partial_errors=partial,
        state=state,
        extras=ProcExtras(pss[0], pss[1], thread_samples, wchans) if pss != (0, 0) or thread_samples or wchans else None,
    )
    mark = ExecMark(name, stack) if stack else None
    return FixedProc(ProcIdInfo(ProcId(pid, start), static, metrics), limit=limit, error=error, mark=mark)


def thread(
    tid: int,
    name: str,
    *,
    start: int = 1000,
    cpu: tuple[float, float] = (0.0, 0.0),
    io: tuple[int, int] = (0, 0),
    faults: tuple[int, int] = (0, 0),
    ctx: tuple[int, int] = (0, 0),
) -> ThreadSample:
    """One thread's sample (for ``fake(..., thread_samples=...)``); counters are totals."""
    return ThreadSample(tid, start, name, cpu[0], cpu[1], io[0], io[1], faults[0], faults[1], ctx[0], ctx[1])


@dataclass
class ByName:
    """A namer that groups processes whose comm is in ``names`` under that comm."""

    names: set[str] = field(default_factory=set)
    needs_cgroups: bool = False
    needs_username: bool = False

    def match_and_name(self, attrs: object) -> tuple[bool, str]:
        name = getattr(attrs, "name")
        if name in self.names:
            return True, name
        return False, ""


class Clock:
    """A settable clock."""

    def __init__(self, t: float = BOOT + 10_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt
