"""Sort tracked processes into named groups and keep per-group totals across polls.

Rules (process-exporter's):
- A new process is named by the config (``MatchNamer``); the first rule that matches wins.
- With ``track_children``, a new process that matches no rule joins the group of its
  nearest tracked ancestor, also when that ancestor appeared in the same poll; a process
  whose ancestry holds no tracked process is ignored.
- With ``recheck``, a process that matched nothing is considered again at every poll (it
  may exec or rename itself into a group later); otherwise it is ignored until it exits.
- Group counters (``GroupCounts.counts``) never decrease and keep the usage of processes
  that have exited. A group that once existed is still reported when empty (all gauges
  zero), unless ``remove_empty_groups``.
- Pinned groups (the config's expected groups, :meth:`Grouper.pin`) are reported from the
  moment they are pinned, with zero processes until one joins, and never removed.

With ``kernel_events`` (the kernel reports every exec and exit, so processes a poll never
sees are tracked too), three rules go beyond what process-exporter can see:

- A process is named again on every exec (:meth:`Grouper.rename`), and at a poll that
  finds its name changed: its usage so far stays with its old group, its new program's
  goes to the group the rules give it now. A program no rule names keeps it where it
  is: its former self is its nearest tracked ancestor.
- A process whose argv could not be read (gone from its memory before anyone looked:
  ``ProcStatic.cmdline_known``) is named as if it had been run as its comm with no
  arguments: ``comm`` selectors see its comm, ``exe`` and ``cmdline`` selectors the comm
  alone. Never its parent's command line: that is another program's.
- ``group_ttl``: a group that no poll ever found alive (all its processes lived and died
  between two polls) is reported while it has processes and for ``group_ttl`` seconds
  after, then removed like an empty group under ``remove_empty_groups``; otherwise every
  short-lived command would become a group for ever. A group a poll found alive is kept
  when empty, as process-exporter keeps it. Pinned groups (:meth:`Grouper.pin`) are
  always reported and never removed.

Pure and synchronous; the clock is injected through the tracker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .config import MatchNamer, ProcAttributes
from .procfs.errors import READ_ERRORS
from .procfs.models import ExecMark, ProcId, ProcLike, ProcMetrics, ProcStatic, States
from .threadgroups import ThreadCounts, ThreadGroups
from .tracker import (
    ZERO_COUNTS,
    CollectErrors,
    Counts,
    Memory,
    NewProc,
    TrackedProc,
    Tracker,
)

__all__ = ["GroupCounts", "GrouperUpdate", "Renamed", "Grouper"]

_NO_STATES = States()
_NO_MEMORY = Memory()


@dataclass(frozen=True, slots=True)
class GroupCounts:
    """One group as of the latest poll: monotonic counters plus current gauges."""

    procs: int
    counts: Counts
    memory: Memory = _NO_MEMORY
    open_fds: int = 0
    worst_fd_ratio: float = 0.0
    num_threads: int = 0
    states: States = _NO_STATES
    #: epoch seconds of the oldest process in the group; 0.0 when the group is empty
    oldest_start_time: float = 0.0
    #: counters by thread name (only when threads are read: ``FS(threads=True)``)
    threads: tuple[ThreadCounts, ...] = ()
    #: (wait channel, threads waiting in it), by name (only when wait channels are read)
    wchans: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Renamed:
    """A tracked process named again (it exec'd or was renamed): what it was before."""

    tp: TrackedProc
    name: str
    group: str


@dataclass(slots=True)
class GrouperUpdate:
    """What one ``Grouper.update()`` changed."""

    time: float
    #: processes that began to be tracked in this poll, with their group
    started: list[TrackedProc] = field(default_factory=list)
    #: tracked processes found gone in this poll, with their last sample
    exited: list[TrackedProc] = field(default_factory=list)
    #: tracked processes this poll found under another name (``kernel_events`` only)
    renamed: list[Renamed] = field(default_factory=list)
    errors: CollectErrors = field(default_factory=CollectErrors)
    procs_seen: int = 0
    tracked: int = 0
    #: tracked processes not read whole: they had not run since the previous poll
    reads_skipped: int = 0
    #: groups dropped: empty under ``remove_empty_groups``, or past ``group_ttl``
    removed_groups: list[str] = field(default_factory=list)


class _Acc:
    """Mutable per-group sums for one poll (cheaper than building frozen values per proc)."""

    __slots__ = (
        "procs",
        "cpu_user",
        "cpu_system",
        "read_bytes",
        "write_bytes",
        "major_faults",
        "minor_faults",
        "ctx_voluntary",
        "ctx_nonvoluntary",
        "resident",
        "virtual",
        "swapped",
        "pss",
        "swap_pss",
        "wchans",
        "threaded",
        "open_fds",
        "worst_fd_ratio",
        "threads",
        "running",
        "sleeping",
        "waiting",
        "zombie",
        "other",
        "oldest",
        "alive",
    )

    def __init__(self) -> None:
        self.procs = 0
        self.cpu_user = 0.0
        self.cpu_system = 0.0
        self.read_bytes = 0
        self.write_bytes = 0
        self.major_faults = 0
        self.minor_faults = 0
        self.ctx_voluntary = 0
        self.ctx_nonvoluntary = 0
        self.resident = 0
        self.virtual = 0
        self.swapped = 0
        self.pss = 0
        self.swap_pss = 0
        self.wchans: dict[str, int] | None = None
        self.threaded = False
        self.open_fds = 0
        self.worst_fd_ratio = 0.0
        self.threads = 0
        self.running = 0
        self.sleeping = 0
        self.waiting = 0
        self.zombie = 0
        self.other = 0
        self.oldest = 0.0
        #: a process of the group that no source has reported exited
        self.alive = False

    def add(self, tp: TrackedProc) -> None:
        m = tp.metrics
        d = tp.latest
        self.procs += 1
        if not tp.exited:
            self.alive = True
        if d is not ZERO_COUNTS:
            self.cpu_user += d.cpu_user
            self.cpu_system += d.cpu_system
            self.read_bytes += d.read_bytes
            self.write_bytes += d.write_bytes
            self.major_faults += d.major_faults
            self.minor_faults += d.minor_faults
            self.ctx_voluntary += d.ctx_voluntary
            self.ctx_nonvoluntary += d.ctx_nonvoluntary
        self.resident += m.resident_bytes
        self.virtual += m.virtual_bytes
        self.swapped += m.swapped_bytes
        x = m.extras  # None unless smaps, wait channels or threads are read
        if x is not None:
            self.pss += x.pss_bytes
            self.swap_pss += x.swap_pss_bytes
            if x.wchans:
                wchans = self.wchans
                if wchans is None:
                    wchans = self.wchans = {}
                for channel in x.wchans:
                    wchans[channel] = wchans.get(channel, 0) + 1
            if x.threads:
                self.threaded = True
        fds = m.open_fds
        if fds > 0:
            self.open_fds += fds
            if tp.fd_limit > 0:
                ratio = fds / tp.fd_limit
                if ratio > self.worst_fd_ratio:
                    self.worst_fd_ratio = ratio
        self.threads += m.num_threads
        s = m.states
        self.running += s.running
        self.sleeping += s.sleeping
        self.waiting += s.waiting
        self.zombie += s.zombie
        self.other += s.other
        start = tp.static.start_time
        if self.oldest == 0.0 or start < self.oldest:
            self.oldest = start

    def latest(self) -> Counts:
        return Counts(
            self.cpu_user,
            self.cpu_system,
            self.read_bytes,
            self.write_bytes,
            self.major_faults,
            self.minor_faults,
            self.ctx_voluntary,
            self.ctx_nonvoluntary,
        )

    def result(self, totals: Counts, threads: tuple[ThreadCounts, ...] = ()) -> GroupCounts:
        return GroupCounts(
            procs=self.procs,
            counts=totals,
            memory=Memory(self.resident, self.virtual, self.swapped, self.pss, self.swap_pss),
            open_fds=self.open_fds,
            worst_fd_ratio=self.worst_fd_ratio,
            num_threads=self.threads,
            states=States(self.running, self.sleeping, self.waiting, self.zombie, self.other),
            oldest_start_time=self.oldest,
            threads=threads,
            wchans=() if self.wchans is None else tuple(sorted(self.wchans.items())),
        )


class Grouper:
    """Top-level view of the host's processes by group. Call ``update()`` once per poll."""

    def __init__(
        self,
        namer: MatchNamer,
        track_children: bool = True,
        remove_empty_groups: bool = False,
        recheck: bool = False,
        *,
        group_ttl: float | None = None,
        clock: Callable[[], float] = time.time,
        usernames: Callable[[int], str] | None = None,
    ) -> None:
        self.track_children = track_children
        self.remove_empty_groups = remove_empty_groups
        self.recheck = recheck
        #: seconds a group no poll found alive stays reported once empty; None: for ever
        self.group_ttl = group_ttl
        self.tracker = Tracker(clock=clock)
        if usernames is None:
            from .users import UserNames

            usernames = UserNames()
        self.username = usernames
        self.set_namer(namer)
        #: monotonic counters per group, including the usage of exited processes
        self._totals: dict[str, Counts] = {}
        self._groups: dict[str, GroupCounts] = {}
        #: per-thread-name counters; fed only by processes read with their threads
        self._thread_groups = ThreadGroups()
        #: groups reported even when empty or never seen (see ``pin``)
        self.pinned: frozenset[str] = frozenset()
        # groups a poll found alive (kept when empty), and since when others are empty
        self._durable: set[str] = set()
        self._empty_since: dict[str, float] = {}

    @property
    def kernel_events(self) -> bool:
        """Whether execs and exits are reported as they happen (see the module rules)."""
        return self.tracker.watch_execs

    @kernel_events.setter
    def kernel_events(self, on: bool) -> None:
        self.tracker.watch_execs = on

    def pin(self, names: Iterable[str]) -> None:
        """Report these groups from now on, whether or not a process ever joins them, and
        never drop them as empty; replaces the previous set (a group unpinned is then
        treated like any other)."""
        self.pinned = frozenset(names)
        for name in self.pinned:
            total = self._totals.setdefault(name, ZERO_COUNTS)
            if name not in self._groups:
                self._groups[name] = GroupCounts(procs=0, counts=total)

    # -- naming -----------------------------------------------------------------------

    def set_namer(self, namer: MatchNamer) -> None:
        """Use new rules from now on (config reload). Processes already grouped keep
        their group; only processes not decided yet are named by the new rules."""
        self.namer = namer
        self.tracker.read_cgroups = bool(getattr(namer, "needs_cgroups", True))

    def attributes(self, new: NewProc) -> ProcAttributes:
        return self._attributes(new.id.pid, new.static)

    def _attributes(self, pid: int, s: ProcStatic) -> ProcAttributes:
        cmdline = s.cmdline
        if not s.cmdline_known and self.tracker.watch_execs:
            cmdline = (s.name,)  # what is known of it (see the module rules)
        return ProcAttributes(
            name=s.name,
            cmdline=cmdline,
            cgroups=s.cgroups,
            username=self.username(s.uid),
            pid=pid,
            start_time=s.start_time,
            uid=s.uid,
        )

    def match(self, new: NewProc) -> str | None:
        """The group a new process's own attributes put it in, or None."""
        return self._match(new.id.pid, new.static)

    def _match(self, pid: int, static: ProcStatic) -> str | None:
        wanted, name = self.namer.match_and_name(self._attributes(pid, static))
        return name if wanted else None

    def _decide(self, news: list[NewProc]) -> list[TrackedProc]:
        """Track or ignore each new process; return the newly tracked ones in pid order."""
        tracker = self.tracker
        started: list[TrackedProc] = []
        unmatched: dict[int, NewProc] = {}
        for new in news:
            group = self.match(new)
            if group is None:
                unmatched[new.id.pid] = new
            else:
                started.append(tracker.track(group, new))
        if self.track_children and unmatched:
            resolved: dict[int, str | None] = {}
            for pid, new in unmatched.items():
                group = self._ancestor_group(new, unmatched, resolved)
                if group is not None:
                    started.append(tracker.track(group, new))
        for pid, new in unmatched.items():
            if new.id not in tracker.tracked and not self.recheck:
                tracker.ignore(new.id, new.mark)
        started.sort(key=lambda tp: tp.id.pid)
        return started

    def _ancestor_group(
        self,
        new: NewProc,
        unmatched: dict[int, NewProc],
        resolved: dict[int, str | None],
    ) -> str | None:
        """Group of the nearest tracked ancestor of an unmatched new process, or None.

        Walks up through known processes and through other new processes of the same
        poll; iterative, so a deep fork chain can't overflow the stack.
        """
        tracker = self.tracker
        chain: list[int] = []
        group: str | None = None
        current = new
        while True:
            pid = current.id.pid
            if pid in resolved:
                group = resolved[pid]
                break
            chain.append(pid)
            ppid = current.static.parent_pid
            if ppid <= 0 or ppid == pid or ppid in chain:
                break
            parent_id = tracker.known(ppid)
            if parent_id is not None:
                parent = tracker.tracked.get(parent_id)
                group = parent.group if parent is not None else None
                break
            nxt = unmatched.get(ppid)
            if nxt is None:
                break  # parent unseen (exited before we looked): nothing to inherit
            current = nxt
        for pid in chain:
            resolved[pid] = group
        return group

    # -- between polls: another source (kernel events) reports a start or an exit ------

    def admit(self, proc: ProcLike, *, source: str = "netlink") -> TrackedProc | None:
        """Decide one process now, outside a poll (e.g. when it has just exec'd).

        Tracks it if its own attributes or its ancestry put it in a group and returns it;
        returns None when it is already tracked, matches nothing (it is then ignored,
        unless ``recheck``), or is already gone. A process ignored so far is judged anew:
        an exec gives it a new name and command line.
        """
        tracker = self.tracker
        try:
            pid_id = proc.proc_id()
            if pid_id in tracker.tracked:
                return None
            static = proc.static(cgroups=tracker.read_cgroups)
            mark = proc.exec_mark()
        except READ_ERRORS:
            return None
        new = NewProc(proc, pid_id, static, mark)
        group = self.match(new)
        if group is None and self.track_children:
            group = self._ancestor_group(new, {}, {})
        if group is None:
            if not self.recheck:
                tracker.ignore(pid_id, mark)
            return None
        return tracker.track(group, new, source=source)

    def rename(self, tp: TrackedProc, proc: ProcLike) -> Renamed | None:
        """Name a tracked process again: it exec'd (the kernel said so) or a poll found
        another name; ``proc`` is a fresh reading of it. Returns what it was, or None when
        nothing that names it changed (or it can't be read).

        What it used up to ``proc``'s reading stays with its old group.
        """
        tracker = self.tracker
        try:
            static = proc.static(cgroups=tracker.read_cgroups)
            mark = proc.exec_mark()  # of the program ``static`` read
        except READ_ERRORS:
            return None
        metrics: ProcMetrics | None
        try:
            metrics = proc.metrics()
        except READ_ERRORS:
            metrics = None  # gone since: its last sample stands
        return self.rename_as(tp, static, mark, metrics)

    def rename_as(
        self, tp: TrackedProc, static: ProcStatic, mark: ExecMark | None, metrics: ProcMetrics | None
    ) -> Renamed | None:
        """:meth:`rename` from values already known (``metrics``: its counters as of the
        rename, None when unknown)."""
        group = self._match(tp.pid, static)
        if group is None:
            group = tp.group
        tp.mark = mark
        old = tp.static
        same = group == tp.group and static.name == old.name and static.cmdline == old.cmdline
        if same and static.cmdline_known == old.cmdline_known:
            return None
        before = Renamed(tp, old.name, tp.group)
        if group != tp.group:
            # its usage so far, counted or not yet, is the old group's
            self.account_exit(tp, metrics)
            tp.latest = ZERO_COUNTS
            tp.accounted = True
            tp.group = group
        tp.static = static
        self.tracker.changed(tp)
        return before

    def retire(
        self, pid_id: ProcId, final: ProcMetrics | None = None, *, listed: bool = False, reaper: int = 0
    ) -> TrackedProc | None:
        """A tracked process's exit, reported by another source; None if it is not
        tracked or its exit was reported already.

        ``final`` (its last counters, read at exit) adds what it used since the last poll
        to its group's totals, which the poller alone would lose. ``listed``: /proc still
        lists it (a zombie, read at its exit): it stays tracked, and counted in its group,
        until a poll finds it reaped. Otherwise it is gone, and stays ignored in case /proc
        still lists it after all (a zombie must not come back as a new process).
        ``reaper``: its parent at the exit, when known.
        """
        tracker = self.tracker
        tp = tracker.tracked.get(pid_id)
        if tp is None or tp.exited:
            return None
        self.account_exit(tp, final)
        tp.exited = True
        if reaper > 0:
            tp.reaper = reaper
        if not listed:
            tracker.forget(pid_id)
            tracker.ignore(pid_id)
            tracker.credit_parent(tp, tp.metrics.read_bytes, tp.metrics.write_bytes)
        return tp

    def settle(self, tp: TrackedProc, final: ProcMetrics | None) -> None:
        """Count the final usage of a process a poll already found gone (and reported
        as reaped to its parent's counters) now that another source tells it."""
        before = tp.metrics
        self.account_exit(tp, final)
        after = tp.metrics
        self.tracker.credit_parent(
            tp, after.read_bytes - before.read_bytes, after.write_bytes - before.write_bytes
        )

    def account_exit(self, tp: TrackedProc, final: ProcMetrics | None) -> None:
        """Add to ``tp``'s group what it used that no poll has counted yet: its usage
        since it was last sampled, up to its ``final`` counters (when known)."""
        usage = ZERO_COUNTS
        if not tp.accounted:
            usage = tp.latest
            tp.accounted = True
        if final is not None:
            delta = Counts.between(tp.metrics, final)
            tp.metrics = final
            self.tracker.changed(tp)
            tp.latest = delta
            usage = usage + delta
        if tp.children_read or tp.children_write:
            usage = self.tracker.own_usage(tp, usage)
        # also when it used nothing: a process that came and went between polls still
        # makes its group exist, for a while from now (see ``group_ttl``)
        self._totals[tp.group] = self._totals.get(tp.group, ZERO_COUNTS) + usage
        if self._empty_since:
            self._empty_since.pop(tp.group, None)

    # -- one poll ---------------------------------------------------------------------

    def update(self, procs: Iterable[ProcLike]) -> GrouperUpdate:
        """Scan ``procs`` once, track new processes, refresh the groups.

        Raises what the scan raises (e.g. ``ProcfsError``) without changing any state
        the next poll depends on.
        """
        tu = self.tracker.update(procs)
        report = GrouperUpdate(
            time=tu.time,
            exited=tu.exited,
            errors=tu.errors,
            procs_seen=tu.procs_seen,
            reads_skipped=tu.reads_skipped,
        )
        report.started = self._decide(tu.new)
        for tp, proc, _mark in tu.changed:
            renamed = self.rename(tp, proc)
            if renamed is not None:
                report.renamed.append(renamed)
        report.tracked = len(self.tracker)
        report.removed_groups = self._regroup(tu.time)
        return report

    def _regroup(self, now: float) -> list[str]:
        accs: dict[str, _Acc] = {}
        for tp in self.tracker.tracked.values():
            acc = accs.get(tp.group)
            if acc is None:
                acc = accs[tp.group] = _Acc()
            acc.add(tp)
            tp.accounted = True
        threads: dict[str, tuple[ThreadCounts, ...]] = {}
        if self._thread_groups.active or any(acc.threaded for acc in accs.values()):
            threads = self._thread_groups.update(
                tp for tp in self.tracker.tracked.values() if tp.metrics.extras is not None and tp.metrics.extras.threads
            )
        totals = self._totals
        durable = self._durable
        empty_since = self._empty_since
        groups: dict[str, GroupCounts] = {}
        for name, acc in accs.items():
            total = totals.get(name, ZERO_COUNTS) + acc.latest()
            totals[name] = total
            groups[name] = acc.result(total, threads.get(name, ()))
            if acc.alive:
                durable.add(name)
            if empty_since:
                empty_since.pop(name, None)
        removed: list[str] = []
        ttl = self.group_ttl
        for name, total in list(totals.items()):
            if name in groups:
                continue
            if name not in self.pinned:
                if self.remove_empty_groups:
                    del totals[name]
                    removed.append(name)
                    continue
                # only ever seen between polls: reported for ttl seconds once empty
                if ttl is not None and name not in durable and now - empty_since.setdefault(name, now) >= ttl:
                    del totals[name], empty_since[name]
                    removed.append(name)
                    continue
            groups[name] = GroupCounts(procs=0, counts=total)
        self._groups = groups
        return removed

    def groups(self) -> dict[str, GroupCounts]:
        """Every group as of the latest ``update()`` (a new dict each call)."""
        return dict(self._groups)
