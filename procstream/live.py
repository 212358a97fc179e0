"""Each tracked process's live numbers (CPU %, memory, fds, state, I/O rates), on demand.

Rules:
- :meth:`LiveTable.of` takes what one poll read of every tracked process: one dict entry
  per process, a plain tuple of references to what the tracker already made (samples
  are never changed once made), so the poll pays no per-process computation.
  :meth:`LiveTable.then` makes the next poll's table from this one and the pids that
  changed (:meth:`~procstream.tracker.Tracker.take_changes`): a copy of the dict and a
  tuple per change, so that a poll of a host where few processes ran makes few new
  objects (each would also be traversed by the garbage collector). A process's fields
  (:class:`~procstream.schema.ProcLive`) are computed only when asked for: by a snapshot,
  or for the processes someone watches (``proc.update``).
- A table is immutable once made, so the event loop may read it while the core builds the
  next one. It keeps the previous poll's entries for the rates, never older ones.
- Rates are over the interval between the two polls; a process first seen at this poll
  has rates of 0.
- :class:`UpdateInterest` is which processes' ``proc.update`` subscribers want: all of them,
  or those of some groups or pids. No interest at all is ``None``: nothing is built.

Pure: the core makes the tables on its thread; the hub and the event builder read them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from .procfs.models import ProcId, ProcMetrics, ProcStatic
from .schema import ProcLive
from .tracker import TrackedProc

__all__ = ["LiveEntry", "LiveTable", "UpdateInterest"]


class LiveEntry(NamedTuple):
    """One tracked process as one poll left it (a table holds these as plain tuples, in
    this order: a NamedTuple costs several times as much to make, once per process and
    poll)."""

    id: ProcId
    group: str
    metrics: ProcMetrics
    fd_limit: int
    static: ProcStatic


@dataclass(frozen=True, slots=True)
class UpdateInterest:
    """The processes ``proc.update`` subscribers select: with ``groups`` and ``pids`` both
    None every process; otherwise those in one of ``groups`` or with one of ``pids``."""

    groups: frozenset[str] | None = None
    pids: frozenset[int] | None = None

    @property
    def everyone(self) -> bool:
        return self.groups is None and self.pids is None

    def wants(self, group: str, pid: int) -> bool:
        if self.groups is None and self.pids is None:
            return True
        return (self.groups is not None and group in self.groups) or (self.pids is not None and pid in self.pids)


# Events write a start time to the millisecond: within this of the exact one, it is the
# same process (a pid is never reused within a millisecond).
_SAME_START = 0.002


def _r(x: float, digits: int) -> float:
    return round(x, digits)


def _entry(tp: TrackedProc) -> tuple:
    return (tp.id, tp.group, tp.metrics, tp.fd_limit, tp.static)


class LiveTable:
    """The tracked processes of one poll, by pid, and the previous poll's for rates."""

    __slots__ = ("time", "entries", "_before", "_dt", "_stamp")

    def __init__(
        self,
        time: float,
        entries: Mapping[int, tuple],
        before: LiveTable | None = None,
    ) -> None:
        self.time = time
        self.entries = entries
        # Only the previous poll's entries are kept: a chain of tables would never be freed.
        self._before: Mapping[int, tuple] = before.entries if before is not None else {}
        self._dt = time - before.time if before is not None else 0.0
        self._stamp = object()  # this table's :meth:`version` of what changed at its poll

    @classmethod
    def of(cls, time: float, tracked: Iterable[TrackedProc], before: LiveTable | None = None) -> LiveTable:
        """The table of a poll at ``time`` that left ``tracked``."""
        return cls(time, {tp.id.pid: _entry(tp) for tp in tracked}, before)

    def then(self, time: float, changed: Iterable[int], current: Callable[[int], TrackedProc | None]) -> LiveTable:
        """The table of the next poll, at ``time``: this one's entries but those of the
        ``changed`` pids, which ``current`` gives as they are now (None: no longer
        tracked). Equal to :meth:`of` that poll's tracked processes when ``changed``
        holds every pid whose entry differs."""
        entries = dict(self.entries)
        for pid in changed:
            tp = current(pid)
            if tp is None:
                entries.pop(pid, None)
            else:
                entries[pid] = _entry(tp)
        return LiveTable(time, entries, self)

    def __len__(self) -> int:
        return len(self.entries)

    def fields(self, pid: int, start_time: float | None = None) -> ProcLive | None:
        """The live numbers of process ``pid`` (of that ``start_time``, as events write it
        (to the millisecond), when given: a pid reused since is another process); None
        when this poll didn't see it."""
        raw = self.entries.get(pid)
        if raw is None:
            return None
        entry = LiveEntry(*raw)
        if start_time is not None and abs(entry.static.start_time - start_time) >= _SAME_START:
            return None
        return self._fields(entry)

    def version(self, pid: int) -> object:
        """What :meth:`fields` of ``pid`` depends on, as one object: two tables that
        give the same object (``is``) give the same fields (for the same start time).
        When they depend on the time between polls too (the process changed at this
        poll: its rates are over that time), an object of this table's own.

        Lets a snapshot keep each process's encoding from one poll to the next while
        the process is idle, which on most hosts is most of them."""
        raw = self.entries.get(pid)
        if raw is None:
            return None
        prev = self._before.get(pid)
        # Rates are 0 unless the previous poll read this process other than now.
        if prev is None or prev is raw or prev[0] != raw[0] or self._dt <= 0:
            return raw
        return self._stamp

    def _fields(self, entry: LiveEntry) -> ProcLive:
        m = entry.metrics
        prev = self._before.get(entry.id.pid)
        dt = self._dt
        if prev is not None and prev[0] == entry.id and dt > 0:
            p = prev[2]
            cpu_pct = max(m.cpu_time - p.cpu_time, 0.0) / dt * 100.0
            read_bps = max(m.read_bytes - p.read_bytes, 0) / dt
            write_bps = max(m.write_bytes - p.write_bytes, 0) / dt
        else:
            cpu_pct = read_bps = write_bps = 0.0
        fds = m.open_fds
        limit = entry.fd_limit
        return {
            "cpu_pct": _r(cpu_pct, 2),
            "cpu_s": _r(m.cpu_time, 3),
            "mem_resident": m.resident_bytes,
            "mem_virtual": m.virtual_bytes,
            "mem_swap": m.swapped_bytes,
            "threads": m.num_threads,
            "open_fds": fds,
            "fd_ratio": _r(fds / limit, 6) if fds > 0 and limit > 0 else 0.0,
            "state": m.state,
            "read_bps": _r(read_bps, 1),
            "write_bps": _r(write_bps, 1),
        }

    def select(self, interest: UpdateInterest) -> Iterable[tuple[LiveEntry, ProcLive]]:
        """(entry, fields) of every process ``interest`` wants, in pid order."""
        entries = self.entries
        if interest.everyone:
            chosen: Iterable[tuple] = entries.values()
        else:
            groups, pids = interest.groups or (), interest.pids or ()
            chosen = [e for pid, e in entries.items() if e[1] in groups or pid in pids]
        for raw in sorted(chosen, key=lambda e: e[0].pid):
            entry = LiveEntry(*raw)
            yield entry, self._fields(entry)
