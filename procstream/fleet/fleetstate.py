"""The fleet's state: every host's groups and processes, and whether it is up (pure).

The aggregator moves it with every message of the stream, in stream order, and the hub
takes its snapshots from it. Each host has a :class:`~procstream.stream.state.HostState`
that follows the same rules as ``serve``'s own, for one run (``epoch``) of the host:

- A host's events apply once, in the host's ``seq`` order: an event at or below the
  ``seq`` its state is at (a resend, or what a state read from the bucket already holds)
  leaves the state as it is.
- A new run replaces the state rather than mixing two: the first message of an epoch
  not seen before, later in the stream than what the state knows, empties the host's
  state. A run's first events don't describe what was there before them, so the state
  waits for that run's snapshot from the bucket (:meth:`FleetState.install`), keeping
  the run's events meanwhile (bounded) to apply after it. Messages of an earlier run
  arriving late are passed on to clients but change nothing.
- ``host.lost`` (events of the run that never reached the stream) means the state
  missed something: it waits for a snapshot of the run taken after the loss, like a new
  run does.
- ``host.up`` and ``host.down`` set ``up``. Neither touches the processes: a host that
  went quiet keeps its last known state (marked down). A host is due a ``host.up``
  (:meth:`HostEntry.due_up`) when it is heard from while down, when a new run's state is
  in, and when its state is whole again after a loss: ``host.up`` says "this host's
  state starts over here".

A snapshot (:meth:`snapshot_view`) lists each group's totals over the hosts that are up,
every process with its ``host``, and under ``hosts`` each host's own groups.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, Final

from ..schema import CYCLE, HOST_DOWN, HOST_LOST, HOST_UP, PROC_EXIT, PROC_START, Event, GroupFields, ProcFields
from ..stream.protocol import Filter
from ..stream.state import HostState

__all__ = ["Outcome", "HostEntry", "FleetState", "merge_groups"]

#: Events of a new run kept while its snapshot is on its way; past this the run waits
#: for a snapshot newer than what was dropped.
PENDING_LIMIT: Final = 10_000
#: Earlier runs of a host remembered, so their late messages never pass for a new run.
_OLD_EPOCHS: Final = 8
# Group fields whose total over hosts is the largest (a ratio) or the earliest
# non-zero (a start time) rather than the sum.
_LARGEST: Final = frozenset({"worst_fd_ratio"})
_EARLIEST: Final = frozenset({"oldest_start_time"})
_PROC_EVENTS: Final = frozenset({PROC_START, PROC_EXIT})


class Outcome(enum.Enum):
    """What one message did to the state (the aggregator acts on some)."""

    APPLIED = "applied"  # the host's state moved (or would have: an event of no effect)
    SKIPPED = "skipped"  # already in the state, or of an earlier run
    PENDING = "pending"  # kept until the run's snapshot arrives
    NEW_RUN = "new_run"  # a new run of the host began with this message (kept pending)
    LOST = "lost"  # host.lost: the state waits for a snapshot taken after the loss
    STATUS = "status"  # host.up or host.down


class HostEntry:
    """One host: its run, its state and what the stream says about it."""

    __slots__ = (
        "name", "epoch", "epoch_pos", "old_epochs", "state", "seq", "synced", "pending",
        "dropped_to", "up", "up_epoch", "up_mark", "up_after", "last_seen", "last_poll",
        "interval", "last_host_seq", "_procs",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.epoch: str | None = None
        self.epoch_pos = 0  # stream seq from which `epoch` is known to be the current run
        self.old_epochs: list[str] = []
        self.state = HostState()
        self.seq = 0  # the host's seq the state is at
        self.synced = False  # the state holds the run's snapshot (or gave up waiting for it)
        self.pending: list[tuple[int, Event]] = []  # (host seq, event) until synced
        self.dropped_to = 0  # pending events dropped up to this host seq
        self.up = False
        self.up_epoch: str | None = None  # the run the last host.up was about
        self.up_mark = -1  # the host seq the last host.up of that run was after
        self.up_after = 0  # the host seq of the run's latest host.down or host.lost
        self.last_seen = 0.0  # stream time of the host's latest message
        self.last_poll: float | None = None  # time of its latest cycle
        self.interval: float | None = None  # its poll interval, from its snapshot
        self.last_host_seq = 0  # the highest host seq seen in this run
        self._procs: list[ProcFields] | None = None  # its processes with their host

    def procs_with_host(self) -> list[ProcFields]:
        """Its processes, each with ``host`` (cached until the state changes)."""
        procs = self._procs
        if procs is None:
            host = self.name
            procs = self._procs = [{**p, "host": host} for p in self.state.procs.values()]  # type: ignore[typeddict-unknown-key]
        return procs

    def changed(self) -> None:
        self._procs = None

    def due_up(self) -> bool:
        """Whether a ``host.up`` should say that this host's state starts over: it is
        whole, and the last ``host.up`` was not about this run after its latest
        ``host.down`` or ``host.lost``."""
        return self.synced and self.epoch is not None and (
            not self.up or self.up_epoch != self.epoch or self.up_mark < self.up_after)

    def describe(self, groups: frozenset[str] | None) -> dict[str, Any]:
        """Its entry under a snapshot's ``hosts``."""
        own = self.state.groups_view(groups)
        return {
            "up": self.up,
            "epoch": self.epoch,
            "last_seen": self.last_seen,
            "last_poll": self.last_poll,
            "interval": self.interval,
            "synced": self.synced,
            "groups": own,
        }


class FleetState:
    """Every host's state; the hub's :class:`~procstream.stream.hub.State` in a fleet."""

    def __init__(self, *, pending_limit: int = PENDING_LIMIT) -> None:
        self.hosts: dict[str, HostEntry] = {}
        self.pending_limit = pending_limit

    # -- the hub's State protocol --------------------------------------------------------

    def load(self, groups: Mapping[str, GroupFields], procs: Iterable[ProcFields]) -> None:
        """Not for a fleet: its state is loaded host by host (:meth:`install`)."""
        raise TypeError("a fleet's state is loaded host by host")

    def apply(self, ev: Event) -> None:
        """Not for a fleet: events come with their run (:meth:`apply_message`)."""
        raise TypeError("a fleet's events are applied with apply_message()")

    def snapshot_view(self, filt: Filter) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
        groups = filt.groups
        wanted = filt.hosts
        totals: dict[str, dict[str, Any]] = {}
        procs: list[Any] = []
        hosts: dict[str, Any] = {}
        for name in sorted(self.hosts):
            if wanted is not None and name not in wanted:
                continue
            entry = self.hosts[name]
            described = entry.describe(groups)
            hosts[name] = described
            if entry.up:
                merge_groups(totals, described["groups"])
            own = entry.procs_with_host()
            procs.extend(own if groups is None else (p for p in own if p.get("group") in groups))
        return totals, procs, {"hosts": hosts}

    # -- the aggregator's side -------------------------------------------------------------

    def entry(self, host: str) -> HostEntry:
        entry = self.hosts.get(host)
        if entry is None:
            entry = self.hosts[host] = HostEntry(host)
        return entry

    def apply_message(self, ev: Event, epoch: str, host_seq: int, stream_seq: int, stream_ts: float) -> Outcome:
        """Move the state by one message of a host's run ``epoch`` (``ev`` is what
        clients get; ``host_seq`` its seq in the run, 0 when it has none)."""
        host: Any = ev.get("host")
        entry = self.hosts.get(host) or self.entry(host)
        typ = ev.get("type")
        if typ == HOST_UP or typ == HOST_DOWN:
            # host_seq: the host seq the decision was taken after (from its message id)
            if epoch == entry.epoch or entry.epoch is None:
                if typ == HOST_UP:
                    entry.up_mark = max(entry.up_mark, host_seq) if entry.up_epoch == epoch else host_seq
                    entry.up = True
                    entry.up_epoch = epoch
                else:
                    entry.up = False
                    entry.up_after = max(entry.up_after, host_seq)
            return Outcome.STATUS
        if stream_ts > entry.last_seen:
            entry.last_seen = stream_ts
        outcome = Outcome.APPLIED
        if epoch != entry.epoch:
            if epoch in entry.old_epochs or (entry.epoch is not None and stream_seq <= entry.epoch_pos):
                if epoch not in entry.old_epochs:
                    self._remember(entry, epoch)
                return Outcome.SKIPPED
            self._new_run(entry, epoch, stream_seq)
            outcome = Outcome.NEW_RUN
        if host_seq > entry.last_host_seq:
            entry.last_host_seq = host_seq
        if typ == HOST_LOST:
            # host_seq: the last seq the record stands for
            entry.synced = False
            entry.dropped_to = max(entry.dropped_to, host_seq)
            entry.up_after = max(entry.up_after, host_seq)
            return outcome if outcome is Outcome.NEW_RUN else Outcome.LOST
        if typ == CYCLE:
            ts = ev.get("ts")
            if isinstance(ts, (int, float)):
                entry.last_poll = float(ts)
        if not entry.synced:
            if len(entry.pending) < self.pending_limit:
                entry.pending.append((host_seq, ev))
            else:
                entry.dropped_to = max(entry.dropped_to, host_seq)
            return outcome if outcome is Outcome.NEW_RUN else Outcome.PENDING
        if host_seq <= entry.seq:
            return Outcome.SKIPPED
        entry.state.apply(ev)
        entry.seq = host_seq
        if typ in _PROC_EVENTS:
            entry.changed()  # its processes with their host, listed again when asked
        return outcome

    def install(self, host: str, head: Mapping[str, Any], snapshot: Mapping[str, Any], *, stream_ts: float = 0.0) -> bool:
        """A snapshot of ``host`` read from the bucket (``head`` says its run, seq and
        stream position). Taken when it is of the host's current run and no older than
        what its state holds; the run's events kept meanwhile are applied after it.
        True when taken."""
        entry = self.entry(host)
        epoch = head.get("epoch")
        seq = head.get("seq")
        if not isinstance(epoch, str) or not isinstance(seq, int):
            return False
        if entry.epoch is None:
            entry.epoch = epoch
            entry.epoch_pos = int(head.get("stream_seq") or 0)
        if epoch != entry.epoch or (entry.synced and seq <= entry.seq) or seq < entry.dropped_to:
            return False
        groups = snapshot.get("groups")
        procs = snapshot.get("procs")
        if not isinstance(groups, dict) or not isinstance(procs, list):
            return False
        entry.state.load(groups, [p for p in procs if isinstance(p, dict)])
        entry.seq = seq
        interval = head.get("interval")
        if isinstance(interval, (int, float)) and interval > 0:
            entry.interval = float(interval)
        entry.last_seen = max(entry.last_seen, stream_ts)
        pending, entry.pending = entry.pending, []
        entry.synced = True
        entry.dropped_to = 0
        for host_seq, ev in pending:
            if host_seq > entry.seq:
                entry.state.apply(ev)
                entry.seq = host_seq
        entry.changed()
        return True

    def give_up_waiting(self, host: str) -> None:
        """No snapshot of this run will come (the host writes none): its state is what
        its events since the run began make."""
        entry = self.hosts.get(host)
        if entry is None or entry.synced:
            return
        pending, entry.pending = entry.pending, []
        entry.synced = True
        for host_seq, ev in pending:
            if host_seq > entry.seq:
                entry.state.apply(ev)
                entry.seq = host_seq
        entry.changed()

    def counts(self) -> tuple[int, int]:
        """``(hosts up, hosts down)``."""
        up = sum(1 for e in self.hosts.values() if e.up)
        return up, len(self.hosts) - up

    def _new_run(self, entry: HostEntry, epoch: str, stream_seq: int) -> None:
        if entry.epoch is not None:
            self._remember(entry, entry.epoch)
        entry.epoch = epoch
        entry.epoch_pos = stream_seq
        entry.state = HostState()
        entry.seq = 0
        entry.synced = False
        entry.pending = []
        entry.dropped_to = 0
        entry.up_after = 0
        entry.last_host_seq = 0
        entry.last_poll = None
        entry.changed()

    @staticmethod
    def _remember(entry: HostEntry, epoch: str) -> None:
        entry.old_epochs.append(epoch)
        del entry.old_epochs[:-_OLD_EPOCHS]


def merge_groups(totals: dict[str, dict[str, Any]], groups: Mapping[str, Mapping[str, Any]]) -> None:
    """Add one host's groups to fleet-wide totals: numbers add up (``worst_fd_ratio``
    the largest, ``oldest_start_time`` the earliest), so do numbers inside a dict
    (``states``); a flag is set when any host's is; a dict with a ``ts`` is the latest."""
    for name, fields in groups.items():
        total = totals.get(name)
        if total is None:
            total = totals[name] = {"group": name}
        for key, value in fields.items():
            if key == "group":
                continue
            have = total.get(key)
            if isinstance(value, bool):
                total[key] = bool(have) or value
            elif isinstance(value, (int, float)):
                if not isinstance(have, (int, float)):
                    total[key] = value
                elif key in _LARGEST:
                    total[key] = max(have, value)
                elif key in _EARLIEST:
                    if value > 0 and (have <= 0 or value < have):
                        total[key] = value
                else:
                    total[key] = have + value
            elif isinstance(value, dict):
                if "ts" in value:
                    if not isinstance(have, dict) or (value.get("ts") or 0) > (have.get("ts") or 0):
                        total[key] = value
                else:
                    into = dict(have) if isinstance(have, dict) else {}
                    for k, v in value.items():
                        if isinstance(v, (int, float)) and not isinstance(v, bool):
                            into[k] = into.get(k, 0) + v
                    total[key] = into
