"""Turn one poll's grouper report into events (their types and fields: :mod:`procstream.schema`).

Rules:
- Events are plain dicts, so they go to orjson, the event log and the hub's state
  unchanged. The hub adds ``seq`` and ``host``.
- One batch per poll, in this order: ``proc.exit`` (so a reused pid's old process ends
  before the new one starts), ``proc.start`` (new processes, then renamed ones),
  ``group.update`` (only for groups whose fields changed), then one ``cycle``.
- ``proc.*`` events carry the process's identity fields; its command line is redacted
  once, when the process is first reported (and again when it is named anew), and reused
  for its exit. Then it is capped (``schema.cap_cmdline``), like every other string from
  a process or a group name (``schema.cut_text``): an event's size never depends on what
  a process wrote.
- A tracked process named anew (it exec'd another program, or renamed itself) gets a
  second ``proc.start`` for the same ``pid`` and ``start_time``, with ``previous``: its
  name and group before. It has not ended, so no ``proc.exit``; a client keeping state
  replaces the process's fields, as it would for any ``proc.start`` of a known process.
- Start times are truncated, never rounded: to the millisecond in events, to the second
  in ``/metrics``, so a group's ``oldest_start_time`` is the same instant in both.
- ``group.update`` rates are over the interval since the previous poll; its
  ``expected_min``/``expected_max`` are the config's ``expected_groups`` entry.
- ``restart_of``, ``exit_class`` and ``oom_killed`` start as ``None``: the lifecycle
  (:mod:`procstream.lifecycle`) fills them in, knowing the group's history.
- ``proc.update`` events (after the ``group.update`` events) only for the processes
  someone subscribes to (an :class:`~procstream.live.UpdateInterest`), and only those
  whose numbers changed since they were last sent; with no interest, nothing is built.
- The first poll yields no ``proc.start`` for processes already running: it yields the
  baseline state (``EventBuilder.state()``) instead, like a list before a watch.

Pure: no I/O, no clock (times come from the reports).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from .config import ExpectedGroup
from .grouper import GroupCounts, GrouperUpdate, Renamed
from .live import LiveTable, UpdateInterest
from .procfs.models import ProcId
from .schema import (
    CYCLE,
    EVENT_TYPES,
    GROUP_UPDATE,
    PROC_EXIT,
    PROC_START,
    PROC_UPDATE,
    Cycle,
    CycleExtras,
    Event,
    GroupFields,
    GroupRemoved,
    GroupUpdate,
    ProcExit,
    ProcFields,
    ProcLive,
    ProcStart,
    ProcUpdate,
    StateCounts,
    cap_cmdline,
    cut_text,
)
from .tracker import TrackedProc

__all__ = [
    # the vocabulary's names, importable from here too
    "Event",
    "PROC_START",
    "PROC_EXIT",
    "GROUP_UPDATE",
    "CYCLE",
    "PROC_UPDATE",
    "EVENT_TYPES",
    "EventBuilder",
    "group_fields",
]

Redact = Callable[[tuple[str, ...]], tuple[str, ...]]


def _r(x: float, digits: int) -> float:
    return round(x, digits)


def start_ms(t: float) -> float:
    """A start time (epoch seconds) truncated to the millisecond: its floor to the second
    is the whole-second value ``/metrics`` reports."""
    return math.floor(t * 1000.0) / 1000.0


def group_fields(
    name: str,
    g: GroupCounts,
    prev: GroupCounts | None = None,
    dt: float = 0.0,
    expected: ExpectedGroup | None = None,
) -> GroupFields:
    """The fields of one group (``group.update`` minus type/seq/ts/host).

    Rates are computed against ``prev`` over ``dt`` seconds; without either they are 0.
    ``expected``: the group's ``expected_groups`` entry, if any.
    """
    c = g.counts
    if prev is not None and dt > 0:
        p = prev.counts
        cpu_pct = max(c.cpu - p.cpu, 0.0) / dt * 100.0
        read_bps = max(c.read_bytes - p.read_bytes, 0) / dt
        write_bps = max(c.write_bytes - p.write_bytes, 0) / dt
    else:
        cpu_pct = read_bps = write_bps = 0.0
    m = g.memory
    return {
        "group": cut_text(name),
        "procs": g.procs,
        "threads": g.num_threads,
        "cpu_s": _r(c.cpu, 6),
        "cpu_user_s": _r(c.cpu_user, 6),
        "cpu_system_s": _r(c.cpu_system, 6),
        "cpu_pct": _r(cpu_pct, 2),
        "read_bytes": c.read_bytes,
        "write_bytes": c.write_bytes,
        "read_bps": _r(read_bps, 1),
        "write_bps": _r(write_bps, 1),
        "mem_resident": m.resident_bytes,
        "mem_virtual": m.virtual_bytes,
        "mem_swap": m.swapped_bytes,
        "open_fds": g.open_fds,
        "worst_fd_ratio": _r(g.worst_fd_ratio, 6),
        "major_faults": c.major_faults,
        "minor_faults": c.minor_faults,
        "ctx_voluntary": c.ctx_voluntary,
        "ctx_nonvoluntary": c.ctx_nonvoluntary,
        "oldest_start_time": start_ms(g.oldest_start_time),
        "states": cast(StateCounts, g.states.as_dict()),
        "expected_min": expected.min if expected is not None else None,
        "expected_max": expected.max if expected is not None else None,
    }


class EventBuilder:
    """Builds each poll's batch of events and the state they apply to.

    Keeps, per tracked process, its identity fields (redacted once) and, per group, the
    last fields sent, so a group is sent only when it changed.
    """

    def __init__(
        self,
        *,
        username: Callable[[int], str],
        redact: Redact | None = None,
    ) -> None:
        self.username = username
        self.redact: Redact = redact if redact is not None else (lambda argv: argv)
        self._procs: dict[ProcId, ProcFields] = {}
        self._groups: dict[str, GroupFields] = {}
        self._prev_counts: dict[str, GroupCounts] = {}
        self._prev_time: float | None = None
        #: the live numbers last sent in a proc.update, per watched process
        self._live_sent: dict[ProcId, ProcLive] = {}
        #: ``expected_groups`` by group name (set on the core's thread, at a config load)
        self.expected: Mapping[str, ExpectedGroup] = {}

    def set_expected(self, expected: Iterable[ExpectedGroup]) -> None:
        """Use these ``expected_groups`` from now on: a group whose entry changed is sent
        again by the next ``group_updates()``."""
        self.expected = {e.group: e for e in expected}

    # -- identity ---------------------------------------------------------------------

    def proc_fields(self, tp: TrackedProc) -> ProcFields:
        """Identity fields of a tracked process (cached; the cmdline redacted once)."""
        fields = self._procs.get(tp.id)
        if fields is None:
            s = tp.static
            # Redacted before it is cut, so a secret is hidden whole, not what is left of it.
            cmdline, cut = cap_cmdline(self.redact(s.cmdline))
            fields = {
                "pid": tp.id.pid,
                "ppid": s.parent_pid,
                "start_time": start_ms(s.start_time),
                "name": cut_text(s.name),
                "cmdline": cmdline,
                "cmdline_known": s.cmdline_known,
                "cmdline_truncated": bool(cmdline) and (cut or s.cmdline_truncated),
                "group": cut_text(tp.group),
                "user": cut_text(self.username(s.uid)),
                "uid": s.uid,
            }
            self._procs[tp.id] = fields
        return fields

    def procs(self, tracked: Iterable[TrackedProc]) -> list[ProcFields]:
        """The identity fields of ``tracked``, by pid: a snapshot's ``procs``."""
        return [self.proc_fields(tp).copy() for tp in sorted(tracked, key=lambda t: t.id.pid)]

    def proc_start(self, tp: TrackedProc, ts: float, *, source: str = "poll") -> ProcStart:
        return {"type": PROC_START, "ts": _r(ts, 6), **self.proc_fields(tp), "restart_of": None, "source": source}

    def proc_renamed(self, renamed: Renamed, ts: float, *, source: str = "poll") -> ProcStart:
        """The ``proc.start`` of a tracked process named anew, with its ``previous`` name
        and group; its identity fields are built again from what it runs now."""
        tp = renamed.tp
        self._procs.pop(tp.id, None)
        ev = self.proc_start(tp, ts, source=source)
        ev["previous"] = {"name": cut_text(renamed.name), "group": cut_text(renamed.group)}
        return ev

    def proc_exit(
        self,
        tp: TrackedProc,
        ts: float,
        *,
        source: str = "poll",
        exit_code: int | None = None,
        signal: int | None = None,
        core_dumped: bool | None = None,
        lifetime_s: float | None = None,
    ) -> ProcExit:
        """The exit of ``tp`` with its last sample as final totals; forgets ``tp``."""
        fields = self.proc_fields(tp)
        self._procs.pop(tp.id, None)
        m = tp.metrics
        if lifetime_s is None:
            lifetime_s = ts - tp.static.start_time
        ev: dict[str, Any] = {
            "type": PROC_EXIT,
            "ts": _r(ts, 6),
            **fields,
            "lifetime_s": _r(max(lifetime_s, 0.0), 3),
            "cpu_s": _r(m.cpu_time, 6),
            "read_bytes": m.read_bytes,
            "write_bytes": m.write_bytes,
            "exit_code": exit_code,
            "signal": signal,
        }
        if core_dumped is not None:
            ev["core_dumped"] = core_dumped
        ev["exit_class"] = None
        ev["oom_killed"] = None
        ev["source"] = source
        return cast(ProcExit, ev)

    # -- one poll ---------------------------------------------------------------------

    def state(
        self, tracked: Iterable[TrackedProc], groups: dict[str, GroupCounts], ts: float
    ) -> tuple[dict[str, GroupFields], list[ProcFields]]:
        """The baseline state after the first poll: (groups by name, processes).

        Also primes the builder so the next ``batch()`` only reports changes.
        """
        expected = self.expected
        group_state = {name: group_fields(name, g, expected=expected.get(name)) for name, g in groups.items()}
        self._groups = dict(group_state)
        self._prev_counts = dict(groups)
        self._prev_time = ts
        return group_state, self.procs(tracked)

    def batch(
        self,
        update: GrouperUpdate,
        groups: dict[str, GroupCounts],
        *,
        duration_ms: float,
        extra_cycle: CycleExtras | None = None,
        live: LiveTable | None = None,
        interest: UpdateInterest | None = None,
    ) -> list[Event]:
        """All events of one poll, in order (see the module rules). ``proc.update``
        events need both ``live`` (this poll's table) and an ``interest``."""
        ts = update.time
        events: list[Event] = []
        for tp in sorted(update.exited, key=lambda t: t.id.pid):
            events.append(self.proc_exit(tp, ts))
        for tp in update.started:
            events.append(self.proc_start(tp, ts))
        for renamed in update.renamed:
            events.append(self.proc_renamed(renamed, ts))
        events.extend(self.group_updates(groups, ts, update.removed_groups))
        if interest is not None and live is not None:
            events.extend(self.proc_updates(live, interest, ts))
        elif self._live_sent:
            self._live_sent = {}  # nobody watches now: whoever comes next gets everything
        cycle: Cycle = {
            "type": CYCLE,
            "ts": _r(ts, 6),
            "duration_ms": _r(duration_ms, 3),
            "procs_seen": update.procs_seen,
            "tracked": update.tracked,
            "started": len(update.started) + len(update.renamed),
            "exited": len(update.exited),
            "permission_errors": update.errors.permission,
            "read_errors": update.errors.read,
            "partial_errors": update.errors.partial,
        }
        if extra_cycle:
            cycle.update(extra_cycle)
        events.append(cycle)
        return events

    def proc_updates(self, live: LiveTable, interest: UpdateInterest, ts: float) -> list[ProcUpdate]:
        """``proc.update`` events for the processes of ``live`` that ``interest`` selects
        and whose numbers differ from those last sent (all of them the first time)."""
        sent = self._live_sent
        now: dict[ProcId, ProcLive] = {}
        events: list[ProcUpdate] = []
        t = _r(ts, 6)
        for entry, fields in live.select(interest):
            now[entry.id] = fields
            if sent.get(entry.id) != fields:
                ev: dict[str, Any] = {
                    "type": PROC_UPDATE,
                    "ts": t,
                    "pid": entry.id.pid,
                    "start_time": start_ms(entry.static.start_time),
                    "group": entry.group,
                }
                ev.update(fields)
                events.append(cast(ProcUpdate, ev))
        # Processes no longer selected (or gone) are forgotten: sent in full if selected again.
        self._live_sent = now
        return events

    def group_updates(
        self, groups: dict[str, GroupCounts], ts: float, removed: Iterable[str] = ()
    ) -> list[GroupUpdate | GroupRemoved]:
        """``group.update`` events for the groups that changed since the last call."""
        prev_time = self._prev_time
        dt = ts - prev_time if prev_time is not None else 0.0
        events: list[GroupUpdate | GroupRemoved] = []
        sent = self._groups
        prev_counts = self._prev_counts
        expected = self.expected
        for name in sorted(groups):
            g = groups[name]
            fields = group_fields(name, g, prev_counts.get(name), dt, expected.get(name))
            if sent.get(name) == fields:
                continue
            sent[name] = fields
            events.append({"type": GROUP_UPDATE, "ts": _r(ts, 6), **fields})
        for name in sorted(removed):
            sent.pop(name, None)
            events.append({"type": GROUP_UPDATE, "ts": _r(ts, 6), "group": cut_text(name), "removed": True})
        self._prev_counts = dict(groups)
        self._prev_time = ts
        return events
