"""Where a server's events go: the hub, then the event log."""

from __future__ import annotations

import logging

from ..schema import Event, GroupFields, ProcFields
from .eventlog import EventLog
from .hub import Hub

__all__ = ["HubAndLog"]

log = logging.getLogger(__name__)


class HubAndLog:
    """The core's event sink in ``procstream serve``. The hub goes first: it numbers the
    events (``seq``, ``host``), and the event log writes them as they were sent.

    Neither may stop the poll that feeds them: an error in one is logged the first time,
    counted in the hub's ``publish_errors`` every time, and the other still gets the
    batch. The poll and the service go on.
    """

    def __init__(self, hub: Hub, eventlog: EventLog | None = None) -> None:
        self._hub = hub
        self._eventlog = eventlog
        self._logged: set[str] = set()

    def load_state(self, groups: dict[str, GroupFields], procs: list[ProcFields]) -> None:
        self._hub.load_state(groups, procs)

    def publish(self, events: list[Event]) -> None:
        try:
            self._hub.publish(events)
        except Exception:
            self._failed("the hub")
        if self._eventlog is not None:
            try:
                self._eventlog.write(events)
            except Exception:
                self._failed("the event log")

    def _failed(self, where: str) -> None:
        self._hub.stats.publish_errors += 1
        if where not in self._logged:
            self._logged.add(where)
            log.exception("publishing a batch to %s failed; counted in "
                          "procstream_publish_errors, not logged again", where)
