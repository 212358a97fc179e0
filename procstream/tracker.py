"""Track processes across polls: who is new, who exited, what each used since last time.

Rules (process-exporter's, with its leak fixed):
- A process is identified by ``ProcId`` (pid, start time); a reused pid is a new process.
- The tracker reads only what it needs: ``stat`` for every process (identity), static data
  once when a process is first seen, metrics only for processes it tracks. Ignored
  processes cost one ``stat`` read per poll.
- Each process is read knowing its last reading (``Sample``, see ``Proc.follow``): a
  single-threaded process that has not run since (its ``schedstat`` unchanged) costs
  that one read and keeps its sample, since every counter a poll reads of it moves only
  when it runs; one that ran is read whole. What changes while a process does not run
  is read regardless, on a schedule staggered by pid so that each poll reads a share of
  the processes: ``stat`` (its memory, when pages are reclaimed; its state) every
  ``restat_every`` polls, every file (its descriptors too, which another process
  sharing its descriptor table may open) every ``full_every`` polls. Skipping delays
  what a gauge shows by at most that many polls; it never changes a counter's total.
- The grouper decides, for each new process, ``track()`` (with a group name) or
  ``ignore()``. A new process left undecided is considered again at the next poll (that is
  how ``recheck`` works).
- Usage counted for a group is the increase of each tracked process's counters between
  polls (never negative). A process that was already running at the first poll starts
  from zero; one that started after it counts everything it used since it started.
- Tracked processes that are no longer seen are reported once as exited, then forgotten;
  ignored ones are forgotten silently (the Go version kept them forever). "No longer
  seen" means gone: its ``stat`` vanished (``ProcessLookupError``) or shows another start
  time. A ``stat`` that can't be read or parsed is a counted read error and the process
  it belongs to stays, with its last sample: reporting it as exited would be followed by
  a second start of the same process at the next good read. A process whose exit another
  source already reported (``TrackedProc.exited``) stays tracked while /proc lists it, a
  zombie its parent has not reaped: it is still in the process table, so it still counts
  in its group; once gone it is reported as ``reaped``, not as exited again.
- An ignored process that has exec'd since it was judged (``ExecMark``: a new stack, or
  a new comm where the stack is hidden) is judged anew, as a new process: a poll that
  caught it between its parent's fork and its exec saw only a copy of the parent. A
  tracked process keeps its group when it execs (process-exporter's rule: it names a
  process once), unless ``watch_execs`` is on (the kernel reports execs, see
  :mod:`procstream.grouper`): then a poll reports a tracked process whose program or name
  changed since it was named (``TrackerUpdate.changed``), to be named again.
- Linux adds a reaped child's I/O counters into its parent's ``/proc/PID/io`` (and none
  of its other counters: CPU, faults and context switches of children are kept apart, as
  ``cutime`` and the like). A tracked child's I/O is its own group's; so when one is
  reaped, what it did is taken back out of its parent's next increases
  (``credit_parent``), and no byte is counted in two groups.
- Once asked (:meth:`Tracker.take_changes`), it records the pids whose tracked process
  came, went, or was given new metrics, a new group or name, so that a view of every
  tracked process (the live table) is made again from the last one at the cost of what
  changed, not of every process. Whoever changes a ``TrackedProc`` outside this module
  says so with :meth:`Tracker.changed`. The record is taken at every poll, or dropped.

Pure and synchronous: no asyncio, no /proc internals; the clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .procfs.errors import READ_ERRORS
from .procfs.models import ExecMark, ProcId, ProcIdInfo, ProcLike, ProcMetrics, ProcStatic, Sample, States

__all__ = [
    "Counts",
    "Memory",
    "CollectErrors",
    "TrackedProc",
    "NewProc",
    "TrackerUpdate",
    "Tracker",
    "ProcIdInfo",
    "info",
]


@dataclass(frozen=True, slots=True)
class Counts:
    """Counters: CPU seconds, I/O bytes, page faults, context switches."""

    cpu_user: float = 0.0
    cpu_system: float = 0.0
    read_bytes: int = 0
    write_bytes: int = 0
    major_faults: int = 0
    minor_faults: int = 0
    ctx_voluntary: int = 0
    ctx_nonvoluntary: int = 0

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_system

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.cpu_user + other.cpu_user,
            self.cpu_system + other.cpu_system,
            self.read_bytes + other.read_bytes,
            self.write_bytes + other.write_bytes,
            self.major_faults + other.major_faults,
            self.minor_faults + other.minor_faults,
            self.ctx_voluntary + other.ctx_voluntary,
            self.ctx_nonvoluntary + other.ctx_nonvoluntary,
        )

    @staticmethod
    def of(m: ProcMetrics) -> Counts:
        """The counters of one sample, as totals since the process started."""
        return Counts(
            m.cpu_user,
            m.cpu_system,
            m.read_bytes,
            m.write_bytes,
            m.major_faults,
            m.minor_faults,
            m.ctx_voluntary,
            m.ctx_nonvoluntary,
        )

    @staticmethod
    def between(old: ProcMetrics, new: ProcMetrics) -> Counts:
        """What a process used from sample ``old`` to sample ``new``, never negative.

        Counters can go backwards (a thread whose switches were summed exits; ``io``
        becomes unreadable and reads as 0): such a drop counts as no usage, not as a
        negative one, so group totals never decrease.
        """
        return Counts(
            max(new.cpu_user - old.cpu_user, 0.0),
            max(new.cpu_system - old.cpu_system, 0.0),
            max(new.read_bytes - old.read_bytes, 0),
            max(new.write_bytes - old.write_bytes, 0),
            max(new.major_faults - old.major_faults, 0),
            max(new.minor_faults - old.minor_faults, 0),
            max(new.ctx_voluntary - old.ctx_voluntary, 0),
            max(new.ctx_nonvoluntary - old.ctx_nonvoluntary, 0),
        )


ZERO_COUNTS = Counts()


@dataclass(frozen=True, slots=True)
class Memory:
    """Memory gauges in bytes."""

    resident_bytes: int = 0
    virtual_bytes: int = 0
    swapped_bytes: int = 0
    #: proportional set sizes (``smaps_rollup``'s Pss and SwapPss), when read
    proportional_bytes: int = 0
    proportional_swap_bytes: int = 0


@dataclass(slots=True)
class CollectErrors:
    """Non-fatal errors of one poll (process-exporter's scrape error counters)."""

    #: a process whose basic files could not be read or parsed (not because it vanished)
    read: int = 0
    #: a tracked process of which some optional file (io, fd) could not be read
    partial: int = 0
    #: a process we were not allowed to read at all
    permission: int = 0

    def add(self, other: CollectErrors) -> None:
        self.read += other.read
        self.partial += other.partial
        self.permission += other.permission


@dataclass(slots=True, eq=False)
class TrackedProc:
    """A process the tracker follows, with its latest sample.

    ``latest`` is what it used since the previous poll (what its group gains this poll).
    """

    id: ProcId
    static: ProcStatic
    group: str
    metrics: ProcMetrics
    fd_limit: int
    first_seen: float
    last_seen: float
    latest: Counts = ZERO_COUNTS
    #: poll generation in which it was last seen (internal bookkeeping)
    seen: int = 0
    #: how the tracker learnt of it: "poll" or another source such as "netlink"
    source: str = "poll"
    #: whether ``latest`` is already in its group's totals (the grouper sets it); until
    #: then, newer usage adds to ``latest`` instead of replacing it
    accounted: bool = False
    #: the program it ran when it was (last) named; None when unknown
    mark: ExecMark | None = None
    #: its exit was reported; it stays (a zombie) until /proc no longer lists it
    exited: bool = False
    #: the parent that reaps it, when another source knew it at the exit (else ppid)
    reaper: int = 0
    #: I/O bytes of its reaped children still to be taken out of its own increases
    children_read: int = 0
    children_write: int = 0
    #: its last reading, for the next poll to compare with; used only while its
    #: ``metrics`` are still that reading's (another source may replace them)
    sample: Sample | None = None

    @property
    def pid(self) -> int:
        return self.id.pid

    def info(self) -> ProcIdInfo:
        return ProcIdInfo(self.id, self.static, self.metrics)


@dataclass(frozen=True, slots=True)
class NewProc:
    """A process seen for the first time (or undecided so far), awaiting a decision."""

    proc: ProcLike
    id: ProcId
    static: ProcStatic
    #: the program it ran when judged: an ignored process is judged anew once this changes
    mark: ExecMark


@dataclass(slots=True)
class TrackerUpdate:
    """What one ``Tracker.update()`` found."""

    time: float
    new: list[NewProc] = field(default_factory=list)
    exited: list[TrackedProc] = field(default_factory=list)
    #: processes whose exit was already reported, now gone from /proc (reaped)
    reaped: list[TrackedProc] = field(default_factory=list)
    #: with ``watch_execs``: tracked processes now running another program or name than
    #: when they were named, with this poll's reading of them and their new mark
    changed: list[tuple[TrackedProc, ProcLike, ExecMark]] = field(default_factory=list)
    errors: CollectErrors = field(default_factory=CollectErrors)
    procs_seen: int = 0
    #: tracked processes found not to have run since the last poll: only ``stat`` and
    #: ``schedstat`` read, their I/O, context switches and descriptors carried over
    reads_skipped: int = 0


_EMPTY_METRICS = ProcMetrics(0.0, 0.0, 0, 0, 0, 0, states=States())


@dataclass(slots=True)
class _Ignored:
    #: poll generation in which it was last seen
    seen: int
    #: None: never judged anew (a zombie whose exit was already reported)
    mark: ExecMark | None
    #: its last reading (identity only), for the next poll to compare with
    sample: Sample | None = None


def _count_failure(exc: BaseException, errors: CollectErrors) -> None:
    """A process that vanished is no error; one we may not read is a permission error;
    anything else (garbage, I/O error) a read error."""
    if isinstance(exc, ProcessLookupError):
        return
    if isinstance(exc, PermissionError):
        errors.permission += 1
    else:
        errors.read += 1


class Tracker:
    """Follows processes across polls. Call ``update()`` once per poll, then decide each
    new process with ``track()`` or ``ignore()`` before the next ``update()``."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        read_cgroups: bool = False,
        restat_every: int = 10,
        full_every: int = 60,
    ) -> None:
        if restat_every < 1 or full_every < 1:
            raise ValueError("restat_every and full_every must be >= 1")
        self.clock = clock
        self.read_cgroups = read_cgroups
        #: read each tracked process's ``stat`` at least every this many polls, and all
        #: of its files every ``full_every`` polls (1: at every poll)
        self.restat_every = restat_every
        self.full_every = full_every

        #: report tracked processes that exec'd or were renamed (``TrackerUpdate.changed``)
        self.watch_execs = False
        self.tracked: dict[ProcId, TrackedProc] = {}
        # tracked processes with children's I/O still to take out of their increases
        self._crediting: set[ProcId] = set()
        self._ignored: dict[ProcId, _Ignored] = {}
        self._by_pid: dict[int, ProcId] = {}
        self._gen = 0
        # Start (clock ticks since boot) of the youngest process of the first poll: a
        # process that started later started after us, so all of its usage counts.
        self._first_poll_max_ticks: int | None = None
        # pids changed since the last take_changes(); None: not recorded (nobody takes
        # them, and an untaken record would grow with every pid ever used)
        self._changes: set[int] | None = None

    # -- queries ----------------------------------------------------------------------

    def known(self, pid: int) -> ProcId | None:
        """The ``ProcId`` of a tracked or ignored process with this pid, if any."""
        return self._by_pid.get(pid)

    def is_ignored(self, pid_id: ProcId) -> bool:
        return pid_id in self._ignored

    def current(self, pid: int) -> TrackedProc | None:
        """The tracked process with this pid now, if any."""
        pid_id = self._by_pid.get(pid)
        return self.tracked.get(pid_id) if pid_id is not None else None

    # -- changes, for views made again from the last one ------------------------------

    def take_changes(self) -> set[int] | None:
        """The pids whose tracked process started or stopped being tracked, or was
        given new metrics, a new group or name since the last call (:meth:`current`
        says what each is now); None when that is not known (the first call, or the
        first after :meth:`drop_changes`): any may have. Records from now on."""
        changes = self._changes
        self._changes = set()
        return changes

    def drop_changes(self) -> None:
        """Stop recording changes (the next :meth:`take_changes` returns None)."""
        self._changes = None

    def changed(self, tp: TrackedProc) -> None:
        """``tp``'s metrics, group or name were replaced outside a poll (a rename, a
        reported exit)."""
        if self._changes is not None:
            self._changes.add(tp.id.pid)

    def __len__(self) -> int:
        return len(self.tracked)

    # -- one poll ---------------------------------------------------------------------

    def update(self, procs: Iterable[ProcLike]) -> TrackerUpdate:
        """Read every process once; refresh tracked ones; report new and exited ones.

        Raises whatever iterating ``procs`` raises (e.g. ``ProcfsError`` when the mount
        point can't be listed): a failed poll changes nothing.
        """
        gen = self._gen + 1
        now = self.clock()
        report = TrackerUpdate(time=now)
        errors = report.errors
        tracked = self.tracked
        ignored = self._ignored
        by_pid = self._by_pid
        between = Counts.between
        watch = self.watch_execs
        restat_every = self.restat_every
        full_every = self.full_every
        changes = self._changes
        seen = 0
        skipped = 0
        max_ticks = 0
        for proc in procs:
            # the last reading of the process at this pid, if it is still current
            known = by_pid.get(proc.pid)
            tp = None
            if known is not None:
                tp = tracked.get(known)
                if tp is not None:
                    prev = tp.sample
                    if prev is not None and prev.metrics is tp.metrics:
                        proc.follow(prev)
                else:
                    skip = ignored.get(known)
                    if skip is not None and skip.sample is not None:
                        proc.follow(skip.sample)
            try:
                pid_id = proc.proc_id()
            except READ_ERRORS as exc:
                _count_failure(exc, errors)
                if not isinstance(exc, ProcessLookupError):
                    self._still_there(proc.pid, gen)
                continue
            seen += 1
            if pid_id.start_time_rel > max_ticks:
                max_ticks = pid_id.start_time_rel
            if pid_id is not known:  # the same object when it is what was read before
                tp = tracked.get(pid_id)
            if tp is not None:
                prev = tp.sample
                try:
                    turn = gen + pid_id.pid
                    full = turn % full_every == 0
                    sample = proc.sample(full=full, restat=turn % restat_every == 0)
                except READ_ERRORS as exc:
                    if isinstance(exc, ProcessLookupError):
                        continue  # exited while we read it: reported as exited below
                    _count_failure(exc, errors)
                    tp.seen = gen  # still alive: keep its last sample
                    if tp.accounted:
                        tp.latest = ZERO_COUNTS
                    continue
                tp.last_seen = now
                tp.seen = gen
                metrics = sample.metrics
                assert metrics is not None
                if metrics.partial_errors:
                    errors.partial += 1
                if sample is prev:
                    # it has not run: nothing changed, not even its program (read whole, it
                    # was not a skipped read)
                    if not full:
                        skipped += 1
                    if tp.exited:
                        tp.latest = ZERO_COUNTS
                        tp.accounted = True
                    elif tp.accounted:
                        tp.latest = ZERO_COUNTS
                        tp.accounted = False
                    continue
                if sample.reused:
                    skipped += 1
                tp.sample = sample
                if changes is not None:
                    changes.add(pid_id.pid)
                if tp.exited:
                    # a zombie whose final usage is counted: only its gauges change
                    tp.metrics = metrics
                    tp.latest = ZERO_COUNTS
                    tp.accounted = True
                    continue
                delta = between(tp.metrics, metrics)
                tp.metrics = metrics
                # usage not yet in the group's totals (tracked between polls) carries over
                tp.latest = delta if tp.accounted else tp.latest + delta
                tp.accounted = False
                if watch:
                    # a stack moved by exec, or a new name; a hidden stack (0) tells
                    # neither apart from a process losing its memory on exit
                    mark = proc.exec_mark()
                    old = tp.mark
                    if mark != old and old is not None and old.stack and mark.stack:
                        report.changed.append((tp, proc, mark))
                continue
            skip = ignored.get(pid_id)
            try:
                if skip is not None:
                    glance = proc.glance()
                    skip.seen = gen
                    skip.sample = glance
                    if skip.mark is None or not glance.mark.execed_since(skip.mark):
                        continue
                static = proc.static(cgroups=self.read_cgroups)
                mark = proc.exec_mark()  # of the program ``static`` read (it may have exec'd)
            except READ_ERRORS as exc:
                _count_failure(exc, errors)
                continue
            report.new.append(NewProc(proc, pid_id, static, mark))

        report.procs_seen = seen
        report.reads_skipped = skipped
        if self._first_poll_max_ticks is None:
            self._first_poll_max_ticks = max_ticks
        self._gen = gen
        self._sweep(gen, report)
        if self._crediting:
            self._take_children_io()
        return report

    def _still_there(self, pid: int, gen: int) -> None:
        """The process we know under ``pid`` is there, though its ``stat`` was unreadable."""
        pid_id = self._by_pid.get(pid)
        if pid_id is None:
            return
        tp = self.tracked.get(pid_id)
        if tp is not None:
            tp.seen = gen
            if tp.accounted:
                tp.latest = ZERO_COUNTS
            return
        skip = self._ignored.get(pid_id)
        if skip is not None:
            skip.seen = gen

    def _sweep(self, gen: int, report: TrackerUpdate) -> None:
        by_pid = self._by_pid
        gone = [tp for tp in self.tracked.values() if tp.seen != gen]
        changes = self._changes
        for tp in gone:
            del self.tracked[tp.id]
            if changes is not None:
                changes.add(tp.id.pid)
            if by_pid.get(tp.id.pid) == tp.id:
                del by_pid[tp.id.pid]
            (report.reaped if tp.exited else report.exited).append(tp)
            m = tp.metrics
            self.credit_parent(tp, m.read_bytes, m.write_bytes)
        stale = [pid_id for pid_id, skip in self._ignored.items() if skip.seen != gen]
        for pid_id in stale:
            del self._ignored[pid_id]
            if by_pid.get(pid_id.pid) == pid_id:
                del by_pid[pid_id.pid]

    # -- reaped children's I/O -----------------------------------------------------------

    def credit_parent(self, child: TrackedProc, read_bytes: int, write_bytes: int) -> None:
        """``child``, a tracked process, is reaped (or was, and its final I/O is now
        known better by this much): its parent's counters grow by its I/O, which is
        already ``child``'s group's. Take it out of the parent's next increases.

        Taken from the increases, not from this poll's alone: the parent may be read
        before or after the reap within one poll; whichever poll sees the jump, the
        bytes are taken back once.
        """
        if read_bytes <= 0 and write_bytes <= 0:
            return
        parent_id = self._by_pid.get(child.reaper or child.static.parent_pid)
        parent = self.tracked.get(parent_id) if parent_id is not None else None
        if parent is None or parent is child or parent.exited:
            return  # untracked: its counters go nowhere
        if parent.id.start_time_rel > child.id.start_time_rel:
            return  # younger than the child: its pid is the dead parent's, reused
        parent.children_read += max(read_bytes, 0)
        parent.children_write += max(write_bytes, 0)
        self._crediting.add(parent.id)

    def own_usage(self, tp: TrackedProc, usage: Counts) -> Counts:
        """``usage`` of ``tp`` less the I/O of its reaped children not taken out yet."""
        r = min(tp.children_read, usage.read_bytes)
        w = min(tp.children_write, usage.write_bytes)
        if not r and not w:
            return usage
        tp.children_read -= r
        tp.children_write -= w
        return Counts(
            usage.cpu_user,
            usage.cpu_system,
            usage.read_bytes - r,
            usage.write_bytes - w,
            usage.major_faults,
            usage.minor_faults,
            usage.ctx_voluntary,
            usage.ctx_nonvoluntary,
        )

    def _take_children_io(self) -> None:
        tracked = self.tracked
        for pid_id in list(self._crediting):
            tp = tracked.get(pid_id)
            if tp is None:
                self._crediting.discard(pid_id)
                continue
            if not tp.accounted:  # this poll's increase, not yet in its group's totals
                tp.latest = self.own_usage(tp, tp.latest)
            if not tp.children_read and not tp.children_write:
                self._crediting.discard(pid_id)

    # -- decisions on new processes ----------------------------------------------------

    def started_after_first_poll(self, pid_id: ProcId) -> bool:
        """True when the process started after our first poll (all its usage counts)."""
        first = self._first_poll_max_ticks
        return first is not None and pid_id.start_time_rel > first

    def track(
        self,
        group: str,
        new: NewProc,
        *,
        metrics: ProcMetrics | None = None,
        fd_limit: int | None = None,
        source: str = "poll",
    ) -> TrackedProc:
        """Start tracking a new process under ``group``; reads its metrics and fd limit.

        A process that vanished before its metrics could be read is still tracked (with
        empty metrics): we saw it start, and the next poll reports its exit.
        """
        proc = new.proc
        sample = None
        if metrics is None:
            try:
                sample = proc.sample()
                metrics = sample.metrics
            except READ_ERRORS:
                pass
            if metrics is None:
                metrics = _EMPTY_METRICS
        if fd_limit is None:
            try:
                fd_limit = proc.fd_limit()
            except READ_ERRORS:
                fd_limit = 0
        now = self.clock()
        latest = Counts.of(metrics) if self.started_after_first_poll(new.id) else ZERO_COUNTS
        tp = TrackedProc(
            id=new.id,
            static=new.static,
            group=group,
            metrics=metrics,
            fd_limit=fd_limit,
            first_seen=now,
            last_seen=now,
            latest=latest,
            seen=self._gen,
            source=source,
            mark=new.mark,
            sample=sample,
        )
        self._ignored.pop(new.id, None)
        self.tracked[new.id] = tp
        self._by_pid[new.id.pid] = new.id
        if self._changes is not None:
            self._changes.add(new.id.pid)
        return tp

    def ignore(self, pid_id: ProcId, mark: ExecMark | None = None) -> None:
        """Stop considering a new process: it costs one ``stat`` read per poll until it
        exits, then it is forgotten, unless it execs first (``mark``, the program it runs
        now, changes): then ``update()`` reports it as new again. Without ``mark`` it is
        never judged anew."""
        self._ignored[pid_id] = _Ignored(self._gen, mark)
        self._by_pid[pid_id.pid] = pid_id

    def forget(self, pid_id: ProcId) -> TrackedProc | None:
        """Drop a process now (e.g. its exit was reported by another source)."""
        tp = self.tracked.pop(pid_id, None)
        if tp is not None and self._changes is not None:
            self._changes.add(pid_id.pid)
        self._ignored.pop(pid_id, None)
        self._crediting.discard(pid_id)
        if self._by_pid.get(pid_id.pid) == pid_id:
            del self._by_pid[pid_id.pid]
        return tp


def info(proc: ProcLike) -> ProcIdInfo:
    """Read one process's identity, static data and metrics (Go's ``Info(p)``)."""
    return ProcIdInfo(proc.proc_id(), proc.static(), proc.metrics())
