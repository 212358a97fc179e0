"""Where a server's events go: the hub, then the event log."""

from __future__ import annotations

from ..schema import Event, GroupFields, ProcFields
from .eventlog import EventLog
from .hub import Hub

__all__ = ["HubAndLog"]


class HubAndLog:
    """The core's event sink in ``procstream serve``. The hub goes first: it numbers the
    events (``seq``, ``host``), and the event log writes them as they were sent."""

    def __init__(self, hub: Hub, eventlog: EventLog | None = None) -> None:
        self._hub = hub
        self._eventlog = eventlog

    def load_state(self, groups: dict[str, GroupFields], procs: list[ProcFields]) -> None:
        self._hub.load_state(groups, procs)

    def publish(self, events: list[Event]) -> None:
        self._hub.publish(events)
        if self._eventlog is not None:
            self._eventlog.write(events)
