"""Lifecycle: expected groups, restarts, crash loops, and why each process ended.

The core hands every batch of events it builds (a poll's, a kernel batch's) to
:meth:`Lifecycle.observe` on its thread. The lifecycle fills in the fields only a group's
history can tell (``restart_of`` on ``proc.start``; ``exit_class`` and ``oom_killed`` on
``proc.exit``) and adds the ``group.missing``, ``group.recovered``, ``group.crashloop``
and ``group.stable`` events; both sources get it alike.

Rules:
- A group's count of processes is its processes in the baseline state, plus one per
  ``proc.start``, minus one per ``proc.exit``: a process is gone at its exit, even while
  its zombie waits to be reaped.
- Expected groups (config ``expected_groups``): the count going below ``min`` sends one
  ``group.missing``; back to ``min``, one ``group.recovered``. At start-up (the baseline)
  a group below its minimum, one never seen included, is missing at once; after a config
  reload, so is a group below its new minimum, and a missing group whose minimum is met
  or gone (``expected_min: None``) has recovered.
- ``exit_class``: ``ok`` (code 0), ``error`` (code != 0), ``oom_kill`` (the OOM record
  names it), ``signal`` (any other signal); ``None`` when the source knows neither code
  nor signal (a poll) and the OOM record does not name it. ``oom_killed``: what the OOM
  record says of a SIGKILL or unknown exit (``None``: it can't tell), ``False`` for
  the others (the OOM killer only sends SIGKILL).
- A ``proc.start`` with ``previous`` is a counted process running another program: it
  leaves its previous group and joins its new one (a start there, restarts included);
  in the same group it changes nothing.
- Restart: a ``proc.start`` in group G replaces the latest exit in G of a process with
  the same ``name`` (the kernel's name of its executable) that is not the same process
  (an exec keeps pid and start time), when the new process started after that exit and
  at most ``restart_window_s`` after it. A poll's exit is only known to have happened
  since the poll before: for it, "after" means after that poll. Each exit is replaced at
  most once. ``restart_of``: the old pid, its code and signal, and ``down_s``, from its
  exit (for a poll's exit: from the poll before) to this start.
- Crash loop: ``crashloop_restarts`` restarts that replace failed exits (any class but
  ``ok``; unknown counts as failed) within ``crashloop_window_s`` send one
  ``group.crashloop``. Restarts after clean exits (a pool recycling its workers, a job
  run again and again) never make a crash loop.
- Stable: a crash-looping group that has had processes, and no restart, for
  ``stable_after_s`` sends one ``group.stable`` (checked at each poll, so up to one
  interval late). A group whose supervisor gave up (no process left) stays in its crash
  loop: it is not up.
- A batch (a poll's, or kernel events read together) is one moment: an expected group
  is missing or not as its ``proc.*`` events leave it, so a restart seen in one batch is
  a restart, not a ``group.missing`` and ``group.recovered`` pair. One event per change
  of state; a batch's lifecycle events come right after its ``proc.*`` events and before
  the rest (a poll's ``group.update`` events and ``cycle``): first where the expected
  groups stand, then crash loops, then (a poll) the time-driven ``group.stable``.
- Bounded: per group a count, a few counters, at most :data:`RECENT_EXITS` exits that may
  still be replaced, and at most ``crashloop_restarts`` restart times. A group the grouper
  drops is forgotten, unless it is expected; so is, at a poll, a group the grouper does
  not report that has nothing left to track (its processes came and went between polls).

Pure and synchronous: the clock and the OOM record (:class:`OomRecord`) are injected.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from .config import ExpectedGroup, LifecycleConfig
from .schema import (
    GROUP_CRASHLOOP,
    GROUP_MISSING,
    GROUP_RECOVERED,
    GROUP_STABLE,
    PROC_EXIT,
    PROC_START,
    Event,
    ProcFields,
    RestartOf,
)

__all__ = [
    "OomRecord",
    "GroupLife",
    "Lifecycle",
    "RECENT_EXITS",
    "UNKNOWN_CLASS",
    "exit_class",
]

#: Exits per group kept for restart matching (those older than the window go first).
RECENT_EXITS: Final = 64
#: The ``class`` label of exits whose class is unknown (a poll's).
UNKNOWN_CLASS: Final = "unknown"
# A netlink exit's time and a start time come from two clocks read at different
# resolutions (ns vs clock ticks): a start this much before the exit still follows it.
_CLOCK_SLACK: Final = 0.05


class OomRecord(Protocol):
    """The kernel's record of its OOM kills."""

    def oom_killed(self, pid: int) -> bool | None:
        """Whether the OOM killer killed process ``pid`` lately; None when unknown."""
        ...


def exit_class(exit_code: int | None, sig: int | None, oom_killed: bool | None) -> str | None:
    """``ok``, ``error``, ``signal`` or ``oom_kill``; None when nothing tells."""
    if oom_killed:
        return "oom_kill"
    if exit_code is not None:
        return "ok" if exit_code == 0 else "error"
    if sig is not None:
        return "signal"
    return None


@dataclass(frozen=True, slots=True)
class GroupLife:
    """One group's lifecycle for ``/metrics``, as of the latest poll. Immutable."""

    #: starts that replaced an exit, since the service started
    restarts: int
    #: exits by ``exit_class``, :data:`UNKNOWN_CLASS` for unknown ones
    exits: Mapping[str, int]
    oom_kills: int
    crashloop: bool
    missing: bool
    expected: ExpectedGroup | None


@dataclass(slots=True)
class _Exit:
    #: when it ended, at the latest (a poll's exit: the poll that found it gone)
    ts: float
    #: when it ended, at the earliest (a poll's exit: the poll before)
    since: float
    pid: int
    start_time: float
    name: str
    exit_code: int | None
    signal: int | None
    failed: bool


class _Group:
    __slots__ = (
        "procs",
        "exits",
        "restart_times",
        "restarts",
        "loop_restarts",
        "crashloop",
        "up_since",
        "missing",
        "by_class",
        "oom_kills",
    )

    def __init__(self, crashloop_restarts: int) -> None:
        self.procs = 0
        self.exits: deque[_Exit] = deque(maxlen=RECENT_EXITS)
        self.restart_times: deque[float] = deque(maxlen=crashloop_restarts)
        self.restarts = 0
        self.loop_restarts = 0  # counted restarts since the crash loop began
        self.crashloop = False
        self.up_since: float | None = None  # when it last came up, or last restarted
        self.missing = False
        self.by_class: dict[str, int] = {}
        self.oom_kills = 0

    def life(self, expected: ExpectedGroup | None) -> GroupLife:
        return GroupLife(
            self.restarts, dict(self.by_class), self.oom_kills, self.crashloop, self.missing, expected
        )


class Lifecycle:
    """Observes the core's events; see the module's rules. Use on one thread only.

    ``baseline()`` once, with the first poll's state; ``observe()`` for every later batch
    (``tick=True`` for a poll's); ``configure()`` when the config is reloaded.
    """

    def __init__(
        self,
        config: LifecycleConfig | None = None,
        expected: Iterable[ExpectedGroup] = (),
        *,
        oom: OomRecord | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config if config is not None else LifecycleConfig()
        self.expected: dict[str, ExpectedGroup] = {e.group: e for e in expected}
        self.oom = oom
        self.clock = clock
        self._groups: dict[str, _Group] = {}
        self._looping: set[str] = set()  # groups in a crash loop
        self._dirty: set[str] = set()  # groups changed since the view was published
        self._with_exits: set[str] = set()  # groups holding exits that may be replaced
        self._unreported: set[str] = set()  # groups known from events, not (yet) from a poll
        self._last_poll: float | None = None
        self._baselined = False
        #: every group's :class:`GroupLife` as of the latest poll (replaced, never changed)
        self.view: Mapping[str, GroupLife] = {}
        for name in self.expected:
            self._group(name)

    # -- inputs -------------------------------------------------------------------------

    def baseline(self, procs: Iterable[ProcFields], now: float | None = None) -> list[Event]:
        """Count the processes of the first poll's state (``now``: that poll's time);
        returns the ``group.missing`` events of the expected groups below their minimum."""
        for p in procs:
            self._group(p["group"]).procs += 1
        if now is None:
            now = self.clock()
        self._last_poll = now
        for name, g in self._groups.items():
            if g.procs:
                g.up_since = now
        out: list[Event] = []
        for name in self.expected:
            self._check_expected(name, self._groups[name], now, out)
        self._baselined = True
        self._publish_view()
        return out

    def observe(
        self,
        events: list[Event],
        *,
        tick: bool = False,
        reported: Collection[str] | None = None,
        now: float | None = None,
    ) -> list[Event]:
        """Annotate ``events`` in place and return them with the lifecycle's events added.

        ``tick``: the batch is a poll's: check the time-driven changes and publish
        :attr:`view`; ``reported``: the groups that poll reported; ``now``: its time
        (the moment it began to look: what it did not see had ended before).
        """
        out: list[Event] = []
        changed: dict[str, float] = {}  # groups whose count changed -> time of the last change
        caused: list[Event] = []
        flushed = False
        when = (now if now is not None else self.clock()) if tick else None
        for ev in events:
            t = ev["type"]
            if t == PROC_EXIT:
                out.append(ev)
                self._exited(cast(dict[str, Any], ev), changed)
            elif t == PROC_START:
                out.append(ev)
                self._started(cast(dict[str, Any], ev), changed, caused)
            else:
                if not flushed:
                    self._flush(changed, caused, when, out)
                    flushed = True
                out.append(ev)
        if not flushed:
            self._flush(changed, caused, when, out)
        if tick:
            if reported is not None:
                self._drop_unreported(reported)
            self._publish_view()
        return out

    def _flush(self, changed: dict[str, float], caused: list[Event], now: float | None, out: list[Event]) -> None:
        """The batch's own events, after its ``proc.*`` ones: where the expected groups it
        changed stand now, its crash loops, then (a poll, at ``now``) what time changed."""
        for name, ts in changed.items():
            g = self._groups.get(name)
            if g is not None:
                self._check_expected(name, g, ts, out)
        out.extend(caused)
        if now is not None:
            self._tick(now, out)

    def forget(self, groups: Iterable[str]) -> None:
        """The grouper dropped these groups: forget them unless they are expected."""
        for name in groups:
            if name not in self.expected and self._groups.pop(name, None) is not None:
                self._looping.discard(name)
                self._with_exits.discard(name)
                self._dirty.add(name)

    def configure(self, config: LifecycleConfig, expected: Iterable[ExpectedGroup]) -> list[Event]:
        """Use a reloaded config's settings from now on; returns the ``group.missing`` /
        ``group.recovered`` events its new expectations cause."""
        old = self.expected
        self.expected = {e.group: e for e in expected}
        if config.crashloop_restarts != self.config.crashloop_restarts:
            for g in self._groups.values():
                g.restart_times = deque(g.restart_times, maxlen=config.crashloop_restarts)
        self.config = config
        out: list[Event] = []
        now = self.clock()
        for name in sorted(old.keys() | self.expected.keys()):
            g = self._group(name)
            if name in self.expected:
                if self._baselined:
                    self._check_expected(name, g, now, out)
            elif g.missing:
                g.missing = False
                out.append(_group_event(GROUP_RECOVERED, now, name, expected_min=None, procs=g.procs))
            self._dirty.add(name)
        if self._baselined:
            self._publish_view()
        return out

    # -- the rules ----------------------------------------------------------------------

    def _group(self, name: str) -> _Group:
        g = self._groups.get(name)
        if g is None:
            g = self._groups[name] = _Group(self.config.crashloop_restarts)
            self._dirty.add(name)
            self._unreported.add(name)
        return g

    def _drop_unreported(self, reported: Collection[str]) -> None:
        for name in list(self._unreported):
            g = self._groups.get(name)
            if g is None or name in reported or name in self.expected:
                self._unreported.discard(name)
            elif g.procs == 0 and not g.exits and not g.crashloop:
                self._unreported.discard(name)
                self.forget((name,))

    def _exited(self, ev: dict[str, Any], changed: dict[str, float]) -> None:
        name = ev["group"]
        g = self._group(name)
        code, sig = ev.get("exit_code"), ev.get("signal")
        oom = self._oom_killed(ev["pid"], code, sig)
        cls = exit_class(code, sig, oom)
        ev["exit_class"] = cls
        ev["oom_killed"] = oom
        key = cls if cls is not None else UNKNOWN_CLASS
        g.by_class[key] = g.by_class.get(key, 0) + 1
        if oom:
            g.oom_kills += 1
        if g.procs > 0:
            g.procs -= 1
        if g.procs == 0:
            g.up_since = None
        ts = ev["ts"]
        since = ts
        if ev.get("source") == "poll" and self._last_poll is not None:
            since = min(self._last_poll, ts)
        g.exits.append(_Exit(ts, since, ev["pid"], ev["start_time"], ev["name"], code, sig, cls != "ok"))
        self._with_exits.add(name)
        self._dirty.add(name)
        changed[name] = ts

    def _oom_killed(self, pid: int, code: int | None, sig: int | None) -> bool | None:
        if code is not None or (sig is not None and sig != signal.SIGKILL):
            return False
        if self.oom is None:
            return None
        return self.oom.oom_killed(pid)

    def _started(self, ev: dict[str, Any], changed: dict[str, float], caused: list[Event]) -> None:
        name = ev["group"]
        previous = ev.get("previous")
        if previous is not None:
            # A counted process runs another program: it leaves its old group and, from
            # here on, starts in its new one like any other start (an exec is how many
            # supervisors start a service again).
            if previous["group"] == name:
                return
            old = self._groups.get(previous["group"])
            if old is not None and old.procs > 0:
                old.procs -= 1
                self._dirty.add(previous["group"])
                changed[previous["group"]] = ev["ts"]
        g = self._group(name)
        g.procs += 1
        # Up since it was seen (a process first seen late may have started long before)
        ts = ev["ts"]
        if g.procs == 1:
            g.up_since = ts
        self._dirty.add(name)
        start = ev["start_time"]
        replaced = self._replaced(g, ev["pid"], start, ev["name"])
        if replaced is not None:
            restart: RestartOf = {
                "pid": replaced.pid,
                "exit_code": replaced.exit_code,
                "signal": replaced.signal,
                "down_s": round(max(start - replaced.since, 0.0), 3),
            }
            ev["restart_of"] = restart
            g.restarts += 1
            g.up_since = ts
        changed[name] = ts
        if replaced is not None and replaced.failed:
            self._failed_restart(name, g, ts, caused)

    def _replaced(self, g: _Group, pid: int, start: float, name: str) -> _Exit | None:
        window = self.config.restart_window_s
        exits = g.exits
        for i in range(len(exits) - 1, -1, -1):  # the latest first
            e = exits[i]
            if e.name != name or (e.pid == pid and e.start_time == start):
                continue
            if start < e.since - _CLOCK_SLACK or start - e.ts > window:
                continue
            del exits[i]
            return e
        return None

    def _failed_restart(self, name: str, g: _Group, ts: float, out: list[Event]) -> None:
        times = g.restart_times
        times.append(ts)
        if g.crashloop:
            g.loop_restarts += 1
            return
        window = self.config.crashloop_window_s
        while times and ts - times[0] > window:
            times.popleft()
        if len(times) >= self.config.crashloop_restarts:
            g.crashloop = True
            g.loop_restarts = len(times)
            self._looping.add(name)
            out.append(_group_event(GROUP_CRASHLOOP, ts, name, restarts=len(times), window_s=window))

    def _check_expected(self, name: str, g: _Group, ts: float, out: list[Event]) -> None:
        e = self.expected.get(name)
        if e is None:
            return
        below = g.procs < e.min
        if below and not g.missing:
            g.missing = True
            out.append(_group_event(GROUP_MISSING, ts, name, expected_min=e.min, procs=g.procs))
        elif g.missing and not below:
            g.missing = False
            out.append(_group_event(GROUP_RECOVERED, ts, name, expected_min=e.min, procs=g.procs))
        else:
            return
        self._dirty.add(name)

    def _tick(self, now: float, out: list[Event]) -> None:
        self._drop_old_exits(now)
        self._last_poll = now
        if not self._looping:
            return
        after = self.config.stable_after_s
        for name in sorted(self._looping):
            g = self._groups[name]
            if g.procs > 0 and g.up_since is not None and now - g.up_since >= after:
                out.append(_group_event(GROUP_STABLE, now, name, restarts=g.loop_restarts, window_s=after))
                g.crashloop = False
                g.loop_restarts = 0
                g.restart_times.clear()
                self._looping.discard(name)
                self._dirty.add(name)

    def _drop_old_exits(self, now: float) -> None:
        # A start reported from now on began after the previous poll (a poll reports what
        # began since the one before; the kernel, as it happens): exits more than the
        # window before that are out of its reach.
        if self._last_poll is None:
            return
        limit = self._last_poll - self.config.restart_window_s - _CLOCK_SLACK
        for name in list(self._with_exits):
            g = self._groups.get(name)
            exits = g.exits if g is not None else None
            if exits is not None:
                while exits and exits[0].ts < limit:
                    exits.popleft()
            if not exits:
                self._with_exits.discard(name)

    def _publish_view(self) -> None:
        if not self._dirty:
            return
        view = dict(self.view)
        for name in self._dirty:
            g = self._groups.get(name)
            if g is None:
                view.pop(name, None)
            else:
                view[name] = g.life(self.expected.get(name))
        self._dirty.clear()
        self.view = view  # one reference swap: a scrape sees the old view or this one


def _group_event(type_: str, ts: float, group: str, **fields: Any) -> Event:
    return cast(Event, {"type": type_, "ts": round(ts, 6), "group": group, **fields})
