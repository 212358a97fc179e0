"""Kernel process events: every start and exit as it happens, with exit codes.

A poll only sees processes alive at that moment. Here the kernel tells us: the proc
connector (:mod:`procstream.netlink.connector`) reports each exec and exit with its wait
status, and TASKSTATS (:mod:`procstream.netlink.taskstats`), when available, each exit's
final usage.

Rules:
- One reader thread waits on both sockets. On an exec it reads the new process's /proc
  files at once (a 5 ms process is gone by the time anyone else looks): of a batch of
  events, first every exec's identity and argv (the argv is gone the moment the process
  exits), then the rest; on an exit it reads the final counters while /proc still lists
  the process, else takes them from TASKSTATS (paired by pid and start time).
- Everything that touches tracker/grouper state runs on the core's thread
  (``Core.submit``), one batch at a time, in arrival order; the resulting events are
  published like a poll's.
- Exactly one ``proc.start`` and one ``proc.exit`` per process, whichever source sees it
  first: a process is tracked once (``Tracker.track``), by a poll or by an exec; an exit
  the kernel reports is the process's ``proc.exit`` (its exit code is known then), but a
  zombie stays tracked, and counted in its group, until a poll finds it reaped; an exit a
  poll finds first is held back one interval (``ExitHold``, which the source applies to
  every poll as the core's ``PollPartner``), waiting for the kernel's report, which
  carries the exit code, and only then released as a ``poll`` exit.
- Every later exec of a tracked process names it again (``Grouper.rename``): one more
  ``proc.start`` for it, with ``previous``. An exec whose process was gone before it could
  be read is named at the exit, from the comm the zombie or TASKSTATS tell.
- A process that lived and died between polls without being read (fork-only children,
  or gone before its exec could be read) is still reported, start and exit together,
  named from what the zombie or TASKSTATS tell. Its argv is unknown then
  (``cmdline_known`` false): never its parent's, which is another program's (or, for a
  fork-only child, a copy we can't tell from one).
- Lost kernel events (ENOBUFS, sequence gaps) are counted and trigger an immediate full
  poll to resynchronise; the service never stops for them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Union

from ..events import EventBuilder
from ..grouper import Grouper, GrouperUpdate, Renamed
from ..netlink import (
    ConnectorError,
    EventsLost,
    ExecEvent,
    ExitEvent,
    ProcConnector,
    TaskExit,
    TaskstatsError,
    TaskstatsListener,
    monotonic_ns_to_epoch,
    probe_connector,
)
from ..procfs import FS, READ_ERRORS, ExecMark, FixedProc, Proc, ProcId, ProcIdInfo, ProcMetrics, ProcStatic, States
from ..schema import CycleExtras, Event
from ..stats import Stats
from ..tracker import TrackedProc
from .core import Core

__all__ = ["KStart", "KExit", "KLost", "KernelApplier", "ExitHold", "KernelStats", "KernelSource", "choose_source"]

log = logging.getLogger(__name__)


# -- what the reader thread hands over ---------------------------------------------------


@dataclass(slots=True)
class KStart:
    """A process exec'd; ``proc`` is what /proc said right then (None if already gone)."""

    ts: float
    pid: int
    proc: FixedProc | None


@dataclass(slots=True)
class KExit:
    """A process exited, with its wait status decoded and its last readable state."""

    ts: float
    pid: int
    exit_code: int | None
    signal: int | None
    core_dumped: bool
    #: /proc read at the exit (identity + final counters), None when already reaped
    proc: FixedProc | None
    #: the kernel's final accounting, when TASKSTATS is on
    stats: TaskExit | None = None
    #: its parent at the exit (the process that reaps it); 0 when the kernel did not say
    ppid: int = 0


@dataclass(slots=True)
class KLost:
    """The kernel dropped events (we fell behind)."""

    count: int
    reason: str


KItem = Union[KStart, KExit, KLost]


def first_look(fs: FS, pid: int, *, cgroups: bool = False) -> Proc | None:
    """What must be read of a process before it can exit: identity and argv (``stat``,
    ``cmdline``, ``status``). None if it is gone already; :func:`read_now` reads the rest."""
    proc = fs.proc(pid)
    try:
        proc.read_argv_first()
        proc.proc_id()
        proc.static(cgroups=cgroups)
    except READ_ERRORS:
        return None
    return proc


def read_now(
    fs: FS, pid: int, *, cgroups: bool = False, exact_cpu: bool = False, proc: Proc | None = None
) -> FixedProc | None:
    """Everything a poll would read of a process, read immediately (``proc``: its
    :func:`first_look`, whose reads are kept).

    ``exact_cpu`` (for an exit) replaces the 10 ms ticks of ``stat`` with the scheduler's
    exact runtime when the process is single-threaded: for a process that lived 100 ms,
    ticks alone can miss a tenth of its CPU.
    """
    looked = proc is not None
    if proc is None:
        proc = fs.proc(pid)
    try:
        pid_id = proc.proc_id()
        static = proc.static(cgroups=cgroups)
    except READ_ERRORS:
        return None
    try:
        metrics = proc.metrics()
        if exact_cpu and metrics.num_threads == 1:
            metrics = _with_runtime(metrics, proc.runtime_ns())
    except READ_ERRORS as exc:
        if not looked:
            return None
        # reaped since its first look: who it was is what matters; its counters are
        # unknown (``metrics()`` says so again), not zero
        return FixedProc(ProcIdInfo(pid_id, static, _GONE), error=exc, mark=ExecMark(static.name))
    try:
        limit = proc.fd_limit()
    except READ_ERRORS:
        limit = 0
    return FixedProc(ProcIdInfo(pid_id, static, metrics), limit=limit, mark=proc.exec_mark())


def _with_runtime(m: ProcMetrics, runtime_ns: int) -> ProcMetrics:
    """``m`` with its CPU total set to ``runtime_ns``, split like the kernel's
    ``cputime_adjust`` (in the proportion of the user/system ticks)."""
    total = runtime_ns / 1e9
    ticks = m.cpu_user + m.cpu_system
    if total <= ticks:
        return m
    user = total if ticks == 0 else total * m.cpu_user / ticks
    return replace(m, cpu_user=user, cpu_system=total - user)


# -- on the core's thread ------------------------------------------------------------------


@dataclass(slots=True)
class _Held:
    tp: TrackedProc
    until: float


class ExitHold:
    """Exits a poll found, held back until the kernel reports them or time runs out.

    The kernel's report carries the exit code, so it should win; but if it never comes
    (the event was lost), the poll's exit is released after ``grace`` seconds.
    """

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self.clock = clock
        self._held: dict[int, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, update: GrouperUpdate) -> None:
        """Take the poll's exits; put back those whose time is up. Call after each poll."""
        now = self.clock()
        released = [h.tp for pid, h in list(self._held.items()) if h.until <= now]
        for tp in released:
            del self._held[tp.pid]
        for tp in update.exited:
            self._held[tp.pid] = _Held(tp, now + self.grace)
        update.exited = released

    def take(self, pid: int) -> TrackedProc | None:
        """The held exit of ``pid``, if any (the kernel just reported it)."""
        held = self._held.pop(pid, None)
        return held.tp if held is not None else None

    def get(self, pid_id: ProcId) -> TrackedProc | None:
        """The held exit of this very process, left held."""
        held = self._held.get(pid_id.pid)
        return held.tp if held is not None and held.tp.id == pid_id else None


def _with_stats(m: ProcMetrics, stats: TaskExit) -> ProcMetrics:
    """Sample ``m`` with TASKSTATS' final counters. TASKSTATS never sums I/O and faults
    over threads, so for those the larger value wins."""
    return replace(
        m,
        cpu_user=stats.cpu_user_s,
        cpu_system=stats.cpu_system_s,
        read_bytes=max(stats.read_bytes, m.read_bytes),
        write_bytes=max(stats.write_bytes, m.write_bytes),
        major_faults=max(stats.majflt, m.major_faults),
        minor_faults=max(stats.minflt, m.minor_faults),
        ctx_voluntary=max(stats.nvcsw, m.ctx_voluntary),
        ctx_nonvoluntary=max(stats.nivcsw, m.ctx_nonvoluntary),
    )


_ZOMBIE = ProcMetrics(0.0, 0.0, 0, 0, 0, 0, states=States(zombie=1))
_GONE = ProcMetrics(0.0, 0.0, 0, 0, 0, 0, states=States())


def _final_from_stats(tp: TrackedProc, stats: TaskExit) -> ProcMetrics | None:
    """The last sample with TASKSTATS' final counters, if the record is this process's."""
    if not stats.matches_start(tp.static.start_time):
        return None
    if tp.metrics.num_threads > 1 and not stats.summed:
        return None  # the kernel's process record lacks the threads' sums
    return _with_stats(tp.metrics, stats)


class KernelApplier:
    """Applies kernel events to the grouper and builds their events (core's thread only)."""

    #: execs whose process was gone before it could be read, remembered until its exit
    MAX_UNREAD = 65536

    def __init__(
        self,
        grouper: Grouper,
        builder: EventBuilder,
        hold: ExitHold,
        boot_time: float,
        clock_ticks: int,
        stats: KernelStats | None = None,
    ) -> None:
        self.grouper = grouper
        self.builder = builder
        self.hold = hold
        self.boot_time = boot_time
        self.clock_ticks = clock_ticks
        self.stats = stats if stats is not None else KernelStats()
        self.starts = 0
        self.exits = 0
        self.lost = 0
        self._unread: dict[int, float] = {}

    def apply(self, items: list[KItem]) -> list[Event]:
        events: list[Event] = []
        for item in items:
            if isinstance(item, KStart):
                self._start(item, events)
            elif isinstance(item, KExit):
                self._exit(item, events)
            else:
                self.lost += item.count
        return events

    def _start(self, item: KStart, events: list[Event]) -> None:
        proc = item.proc
        if proc is None:
            # gone already: its exit will tell what it became
            unread = self._unread
            unread[item.pid] = item.ts
            if len(unread) > self.MAX_UNREAD:
                del unread[next(iter(unread))]
            return
        self._unread.pop(item.pid, None)
        pid_id = proc.info.id
        # tracked; or gone at a poll since, its exit held: an exec it did before exiting
        tp = self.grouper.tracker.tracked.get(pid_id) or self.hold.get(pid_id)
        if tp is not None:
            if not tp.exited:
                self._renamed(self.grouper.rename(tp, proc), item.ts, events)
            return
        tp = self.grouper.admit(proc, source="netlink")
        if tp is not None:
            self.starts += 1
            self._count_argv(tp)
            events.append(self.builder.proc_start(tp, item.ts, source="netlink"))

    def _renamed(self, renamed: Renamed | None, ts: float, events: list[Event]) -> None:
        if renamed is not None:
            self._count_argv(renamed.tp)
            events.append(self.builder.proc_renamed(renamed, ts, source="netlink"))

    def _count_argv(self, tp: TrackedProc) -> None:
        if not tp.static.cmdline_known:
            self.stats.argv_unknown += 1

    def _exit(self, item: KExit, events: list[Event]) -> None:
        grouper = self.grouper
        tracker = grouper.tracker
        # it exec'd, and was gone before the new program could be read
        execed_unread = self._unread.pop(item.pid, None) is not None
        # A poll that already found this pid gone holds its exit: this report is that
        # process's (whatever may have reused the pid since is still alive).
        tp = self.hold.take(item.pid)
        if tp is not None:
            if execed_unread:
                self._rename_at_exit(tp, item, events)
            grouper.settle(tp, self._final(tp, item))
        else:
            pid_id = tracker.known(item.pid)
            if pid_id is not None and not self._same_process(pid_id, item):
                pid_id = None  # the pid was already reused: this exit is of the older process
            known = tracker.tracked.get(pid_id) if pid_id is not None else None
            if known is not None:
                if known.exited:
                    return  # reported already
                if execed_unread:
                    self._rename_at_exit(known, item, events)
                listed = item.proc is not None and item.proc.info.id == known.id
                tp = grouper.retire(known.id, self._final(known, item), listed=listed, reaper=item.ppid)
            elif pid_id is not None and not execed_unread:
                return  # an ignored process: nobody asked about it
            else:
                tp = self._unseen(item, events)
        if tp is None:
            return
        self.exits += 1
        lifetime = None
        if item.stats is not None and item.stats.matches_start(tp.static.start_time):
            lifetime = item.stats.lifetime_s
        events.append(
            self.builder.proc_exit(
                tp,
                item.ts,
                source="netlink",
                exit_code=item.exit_code,
                signal=item.signal,
                core_dumped=item.core_dumped,
                lifetime_s=lifetime,
            )
        )

    def _rename_at_exit(self, tp: TrackedProc, item: KExit, events: list[Event]) -> None:
        """``tp`` exec'd a program that was gone before it could be read: name it from
        the comm its exit tells (its argv is unknown)."""
        old = tp.static
        name = old.name
        if item.proc is not None and item.proc.info.id == tp.id:
            name = item.proc.info.static.name
        elif item.stats is not None and item.stats.matches_start(old.start_time, tolerance=2.0):
            name = item.stats.comm
        static = ProcStatic(name, (), old.parent_pid, old.start_time, old.uid, old.cgroups, cmdline_known=False)
        self._renamed(self.grouper.rename_as(tp, static, None, None), item.ts, events)

    def _same_process(self, pid_id: ProcId, item: KExit) -> bool:
        """Is the exit of the process we know under this pid (not of a predecessor)?

        A process that exits unread may have a pid that a process we ignored (or saw
        exit, and ignore until a poll) had before: only its start time tells them apart.
        """
        if item.proc is not None:
            return item.proc.info.id == pid_id
        if item.stats is not None:
            tp = self.grouper.tracker.tracked.get(pid_id)
            start = tp.static.start_time if tp is not None else self.boot_time + pid_id.start_time_rel / self.clock_ticks
            return item.stats.matches_start(start, tolerance=2.0)
        return True

    def _final(self, tp: TrackedProc, item: KExit) -> ProcMetrics | None:
        if item.proc is not None and item.proc.info.id == tp.id:
            return item.proc.info.metrics
        if item.stats is not None:
            return _final_from_stats(tp, item.stats)
        return None

    def _unseen(self, item: KExit, events: list[Event]) -> TrackedProc | None:
        """A process nobody saw alive: admit it now, from its last traces, and retire it.

        A zombie's ``cmdline`` is empty and TASKSTATS has none: its argv is unknown
        (``cmdline_known`` false), and it is named by what is known (its comm).
        """
        proc = item.proc
        if proc is None and item.stats is not None:
            proc = self._from_stats(item.stats, item.ts)
        if proc is None:
            return None
        tp = self.grouper.admit(proc, source="netlink")
        if tp is None:
            return None
        self.starts += 1
        self._count_argv(tp)
        events.append(self.builder.proc_start(tp, proc.info.static.start_time, source="netlink"))
        return self.grouper.retire(tp.id, proc.info.metrics, listed=item.proc is not None, reaper=item.ppid)

    def _from_stats(self, stats: TaskExit, exit_ts: float) -> FixedProc:
        """Identity and final counters of a reaped process, from its TASKSTATS record."""
        start = exit_ts - stats.etime_us / 1e6 if stats.etime_us else float(stats.btime)
        ticks = int(round((start - self.boot_time) * self.clock_ticks))
        static = ProcStatic(
            name=stats.comm, cmdline=(), parent_pid=stats.ppid, start_time=start, uid=stats.uid, cmdline_known=False
        )
        return FixedProc(ProcIdInfo(ProcId(stats.pid, ticks), static, _with_stats(_ZOMBIE, stats)))


# -- the reader thread and the asyncio glue ------------------------------------------------


@dataclass(slots=True)
class KernelStats(Stats):
    """Counters for /metrics and the cycle events, each written by one thread."""

    #: process events received (reader thread), in all and by kind
    events: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    #: events the kernel said it dropped (reader thread)
    events_lost: int = 0
    #: events dropped past the backlog bound (event loop)
    dropped_backlog: int = 0
    #: ``lost`` as of the last ``cycle`` event (core's thread)
    lost_reported: int = 0
    #: processes reported with ``cmdline_known`` false: gone before their argv could be
    #: read (core's thread)
    argv_unknown: int = 0
    taskstats: bool = False

    @property
    def lost(self) -> int:
        """Events lost in all: dropped by the kernel or past the backlog bound."""
        return self.events_lost + self.dropped_backlog


class KernelSource:
    """The kernel event source next to the poll: reads the kernel's reports and hands
    them to ``core``. ``open()`` then ``start()``; ``close()`` to stop. ``open()`` raises
    ``ConnectorError`` when the connector can't be used (the caller then falls back to
    polling alone).

    ``interval`` is the poll interval (a poll's exit waits that long for the kernel's
    report); ``request_poll`` asks for a poll at once, to resynchronise after losses.
    """

    MAX_BACKLOG = 100_000
    TASKSTATS_KEEP = 8192

    def __init__(
        self,
        fs: FS,
        grouper: Grouper,
        builder: EventBuilder,
        core: Core,
        *,
        interval: float,
        request_poll: Callable[[], None],
        use_taskstats: bool = True,
        connector_factory: Callable[[], ProcConnector] = ProcConnector,
        taskstats_factory: Callable[[], TaskstatsListener] = TaskstatsListener,
    ) -> None:
        self.fs = fs
        self.grouper = grouper
        self.core = core
        self.request_poll = request_poll
        self.stats = KernelStats()
        self.hold = ExitHold(grace=max(interval, 0.5))
        self.applier = KernelApplier(
            self.grouper, builder, self.hold, fs.boot_time_precise, fs.clock_ticks, self.stats
        )
        self._use_taskstats = use_taskstats
        self._connector_factory = connector_factory
        self._taskstats_factory = taskstats_factory
        self._connector: ProcConnector | None = None
        self._taskstats: TaskstatsListener | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._queue: asyncio.Queue[list[KItem]] | None = None
        self._backlog = 0
        self._consumer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit_stats: OrderedDict[int, TaskExit] = OrderedDict()

    # -- lifecycle --------------------------------------------------------------------

    def open(self) -> None:
        """Subscribe to the kernel (raises ``ConnectorError``); TASKSTATS is optional."""
        connector = self._connector_factory()
        connector.open()
        self._connector = connector
        if self._use_taskstats:
            try:
                listener = self._taskstats_factory()
                listener.open()
                self._taskstats = listener
                self.stats.taskstats = True
            except (TaskstatsError, OSError) as exc:
                log.warning("TASKSTATS unavailable (%s): exits keep their code, but usage after the last poll "
                            "is only counted when /proc still shows the process", exc)

    def start(self) -> None:
        """Start reading (on the running loop). Poll exits are held from the next poll on,
        and the grouper names processes again on exec (``Grouper.kernel_events``)."""
        if self._connector is None:
            raise RuntimeError("open() first")
        self.grouper.kernel_events = True
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._wake_r, self._wake_w = os.pipe()
        self.core.join(self)
        self._consumer = asyncio.create_task(self._consume(), name="procstream-kernel")
        self._thread = threading.Thread(target=self._read_loop, name="procstream-kernel-reader", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._stopping.set()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        for sock in (self._connector, self._taskstats):
            if sock is not None:
                sock.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # -- as the core's PollPartner (core's thread) -------------------------------------

    def take_exits(self, update: GrouperUpdate) -> None:
        """Hold the poll's exits for the kernel's reports; release those due."""
        self.hold.hold(update)

    def cycle_fields(self) -> CycleExtras:
        """This source, and the events lost since the last ``cycle``."""
        stats = self.stats
        lost = stats.lost
        since, stats.lost_reported = lost - stats.lost_reported, lost
        return {"source": "netlink", "lost_events": since}

    # -- reader thread ----------------------------------------------------------------

    READER_NICE = -10

    def _read_loop(self) -> None:
        # A process that lives 5 ms must be read within 5 ms of its exec: on a busy host
        # that takes a head start over ordinary threads (Linux nice is per thread).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.READER_NICE)
        except OSError:
            log.debug("could not raise the kernel reader's priority (needs CAP_SYS_NICE)")
        connector = self._connector
        assert connector is not None
        fds: list[Any] = [connector, self._wake_r]
        if self._taskstats is not None:
            fds.append(self._taskstats)
        tracker = self.grouper.tracker
        while not self._stopping.is_set():
            try:
                readable, _, _ = select.select(fds, [], [], 1.0)
            except OSError as exc:
                log.error("kernel event reader stopped: %s", exc)
                return
            if self._stopping.is_set():
                return
            if connector not in readable:
                if self._taskstats is not None:
                    self._read_taskstats()
                continue
            items: list[KItem] = []
            cgroups = tracker.read_cgroups  # a config reload may change what names need
            events = connector.read_events()
            # Argv first, for every exec of the batch, before even the TASKSTATS records: a
            # process that exits takes its argv with it, while its counters stay readable
            # in the zombie until it is reaped, and in its TASKSTATS record after.
            looks = {
                i: first_look(self.fs, ev.pid, cgroups=cgroups)
                for i, ev in enumerate(events)
                if isinstance(ev, ExecEvent) and not ev.is_thread
            }
            if self._taskstats is not None:
                self._read_taskstats()
            for i, ev in enumerate(events):
                item = self._convert(ev, cgroups, looks.get(i))
                if item is not None:
                    items.append(item)
            if items:
                self._hand_over(items)

    def _read_taskstats(self) -> None:
        assert self._taskstats is not None
        keep = self._exit_stats
        for rec in self._taskstats.read_events():
            if isinstance(rec, EventsLost):
                continue  # only the usage of those exits is lost; their exits still come
            if rec.is_thread and rec.aggregate == "pid":
                continue
            if rec.aggregate == "pid" and not rec.group_dead and rec.tgid and rec.tgid != rec.pid:
                continue
            keep[rec.tgid or rec.pid] = rec
            keep.move_to_end(rec.tgid or rec.pid)
            while len(keep) > self.TASKSTATS_KEEP:
                keep.popitem(last=False)

    def _convert(self, ev: Any, cgroups: bool, look: Proc | None = None) -> KItem | None:
        if isinstance(ev, EventsLost):
            count = ev.count or 1
            self.stats.events_lost += count
            return KLost(count, ev.reason)
        if isinstance(ev, ExecEvent):
            if ev.is_thread:
                return None
            self._count("exec")
            proc = read_now(self.fs, ev.pid, cgroups=cgroups, proc=look) if look is not None else None
            return KStart(monotonic_ns_to_epoch(ev.ts_ns), ev.pid, proc)
        if isinstance(ev, ExitEvent):
            if ev.is_thread:
                return None
            self._count("exit")
            proc = read_now(self.fs, ev.pid, cgroups=cgroups, exact_cpu=True)
            stats = self._exit_stats.pop(ev.pid, None)
            if stats is None and self._taskstats is not None:
                self._read_taskstats()  # the record is queued before the exit event
                stats = self._exit_stats.pop(ev.pid, None)
            return KExit(
                monotonic_ns_to_epoch(ev.ts_ns),
                ev.pid,
                ev.exit_code,
                ev.signal,
                ev.core_dumped,
                proc,
                stats,
                ev.parent_tgid,
            )
        return None

    def _count(self, kind: str) -> None:
        self.stats.events += 1
        self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1

    def _hand_over(self, items: list[KItem]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(self._enqueue, items)
        except RuntimeError:
            pass  # the loop is closing

    # -- event loop -------------------------------------------------------------------

    def _enqueue(self, items: list[KItem]) -> None:
        assert self._queue is not None
        if self._backlog + len(items) > self.MAX_BACKLOG:
            # The core can't keep up (a fork storm during a slow poll): drop, count, and
            # let a full poll resynchronise instead of growing without bound.
            self.stats.dropped_backlog += len(items)
            self.request_poll()
            return
        self._backlog += len(items)
        self._queue.put_nowait(items)

    async def _consume(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            items = await queue.get()
            while not queue.empty():
                items.extend(queue.get_nowait())
            self._backlog -= len(items)
            if any(isinstance(i, KLost) for i in items):
                self.request_poll()
            try:
                await self.core.submit(self.applier.apply, items)
            except Exception:
                log.exception("applying kernel events failed; a poll will resynchronise")
                self.request_poll()


def choose_source(choice: str, procfs: str) -> tuple[bool, str]:
    """(use the kernel source?, why) for ``--source auto|poll|netlink``.

    ``netlink`` when not permitted raises ``ConnectorError`` with the reason.
    """
    if choice == "poll":
        return False, "--source poll"
    ok, reason = probe_connector(procfs)
    if ok:
        return True, "kernel process events (netlink proc connector) available"
    if choice == "netlink":
        raise ConnectorError(reason)
    return False, reason
