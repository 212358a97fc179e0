"""What a snapshot says: one host's groups and processes as of the latest event applied.

The hub keeps one :class:`HostState` for ``serve``; the fleet aggregator keeps one per
host of the fleet, so both follow the same rules. A snapshot taken between two batches
is consistent with the events that follow it because the state moves with every event.

Rules: ``proc.start`` adds a process (keyed by pid and start time, so a reused pid is a
new process), ``proc.exit`` removes it, ``group.update`` replaces the fields it carries
(or forgets the group when it says ``removed``). The lifecycle events set a group's
``missing`` (``group.missing``/``group.recovered``) and ``crashloop``
(``group.crashloop``/``group.stable``); a start that is a restart counts in the group's
``restarts``, an exit is its ``last_exit``. Other types leave the state as it is. What is
kept of an event is its state: the fields about the event itself
(:data:`~procstream.schema.EVENT_ONLY_FIELDS`) are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from ..schema import (
    EVENT_ONLY_FIELDS,
    GROUP_CRASHLOOP,
    GROUP_MISSING,
    GROUP_RECOVERED,
    GROUP_STABLE,
    GROUP_UPDATE,
    PROC_EXIT,
    PROC_START,
    Event,
    GroupFields,
    ProcFields,
)
from .protocol import Filter

__all__ = ["HostState", "strip"]

_EVENT_ONLY: Final = tuple(EVENT_ONLY_FIELDS)
# Groups whose lifecycle fields wait for their first group.update: a group made only of
# processes that came and went between polls may never get one, so the oldest go first.
_PENDING_LIFE_LIMIT: Final = 1024


def strip(fields: Mapping[str, Any]) -> Any:
    """The state an event carries: its fields less those about the event itself."""
    # A copy then a few deletions: cheaper than a comprehension over every field, and
    # the fields keep their order.
    state = dict(fields)
    for key in _EVENT_ONLY:
        if key in state:
            del state[key]
    return state


class HostState:
    """One host's groups (by name) and processes (by pid and start time)."""

    __slots__ = ("groups", "procs", "_pending_life", "_apply")

    def __init__(self) -> None:
        self.groups: dict[str, GroupFields] = {}
        self.procs: dict[tuple[int, float], ProcFields] = {}
        # Lifecycle fields of groups no group.update has described yet (one whose first
        # processes came and went between polls): merged in when one does.
        self._pending_life: dict[str, dict[str, Any]] = {}
        # How each event type changes the state; the types not listed leave it as it is.
        self._apply: dict[str, Callable[[Event], None]] = {
            PROC_START: self._proc_started,
            PROC_EXIT: self._proc_exited,
            GROUP_UPDATE: self._group_updated,
            GROUP_MISSING: lambda ev: self._set_life(ev, "missing", True),
            GROUP_RECOVERED: lambda ev: self._set_life(ev, "missing", False),
            GROUP_CRASHLOOP: lambda ev: self._set_life(ev, "crashloop", True),
            GROUP_STABLE: lambda ev: self._set_life(ev, "crashloop", False),
        }

    def load(self, groups: Mapping[str, GroupFields], procs: Iterable[ProcFields]) -> None:
        """Replace the whole state (a first poll, a re-baseline, a snapshot read back)."""
        self.groups = {}
        self._pending_life.clear()
        for name, fields in groups.items():
            state = strip(fields)
            state["group"] = name
            self.groups[name] = state
        self.procs = {(p.get("pid"), p.get("start_time")): strip(p) for p in procs}

    def apply(self, ev: Event) -> None:
        """Move the state by one event (of any type)."""
        change = self._apply.get(ev.get("type"))  # type: ignore[arg-type]
        if change is not None:
            change(ev)

    def view(self, groups: frozenset[str] | None) -> tuple[dict[str, GroupFields], list[ProcFields]]:
        """``(groups by name, processes)`` of the groups named (None: all); the containers
        are new, the dicts in them are the state's own (copy before changing them)."""
        procs = self.procs.values()
        return (self.groups_view(groups),
                list(procs) if groups is None else [p for p in procs if p.get("group") in groups])

    def groups_view(self, groups: frozenset[str] | None) -> dict[str, GroupFields]:
        """:meth:`view`'s groups alone."""
        if groups is None:
            return dict(self.groups)
        return {k: v for k, v in self.groups.items() if k in groups}

    def snapshot_view(self, filt: Filter) -> tuple[dict[str, GroupFields], list[ProcFields], None]:
        """What the hub's snapshot says for ``filt`` (a host's state filters by group)."""
        groups, procs = self.view(filt.groups)
        return groups, procs, None

    def _proc_started(self, ev: Event) -> None:
        self.procs[(ev.get("pid"), ev.get("start_time"))] = strip(ev)  # type: ignore[index]
        if ev.get("restart_of"):
            life = self._life(ev.get("group"))
            life["restarts"] = life.get("restarts", 0) + 1

    def _proc_exited(self, ev: Event) -> None:
        self.procs.pop((ev.get("pid"), ev.get("start_time")), None)  # type: ignore[arg-type]
        e: Any = ev
        self._life(e.get("group"))["last_exit"] = {
            "pid": e.get("pid"),
            "ts": e.get("ts"),
            "exit_class": e.get("exit_class"),
            "exit_code": e.get("exit_code"),
            "signal": e.get("signal"),
            "oom_killed": e.get("oom_killed"),
        }

    def _group_updated(self, ev: Event) -> None:
        name: Any = ev.get("group")
        if ev.get("removed"):
            self.groups.pop(name, None)
            self._pending_life.pop(name, None)
        else:
            state = self.groups.get(name)
            if state is None:
                state = self.groups[name] = strip(ev)
                state.update(self._pending_life.pop(name, ()))  # type: ignore[typeddict-item]
            else:
                state.update(strip(ev))

    def _life(self, name: Any) -> dict[str, Any]:
        """Where a group's lifecycle fields live: its state, or (no ``group.update`` for
        it yet) its pending fields."""
        state = self.groups.get(name)
        if state is not None:
            return state  # type: ignore[return-value]
        pending = self._pending_life
        life = pending.get(name)
        if life is None:
            if len(pending) >= _PENDING_LIFE_LIMIT:
                del pending[next(iter(pending))]
            life = pending[name] = {}
        return life

    def _set_life(self, ev: Event, key: str, value: bool) -> None:
        self._life(ev.get("group"))[key] = value
