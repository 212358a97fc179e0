"""The kernel's process-event sockets: the proc connector and TASKSTATS.

- :mod:`.messages`: netlink messages, walked the same way for both sockets; the loss
  marker and decode counters they share;
- :mod:`.listener`: the non-blocking socket both sources are built on;
- :mod:`.genl`: the generic-netlink client TASKSTATS needs (family lookup, requests,
  attributes);
- :mod:`.connector`: every fork, exec and exit, with exit status (the proc connector);
- :mod:`.taskstats`: each task's final CPU, memory and I/O accounting at exit.

Stdlib only. Linux only, but everything imports anywhere.
"""

from __future__ import annotations

from .connector import (
    CommEvent,
    ConnectorError,
    ConnectorEvent,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    ProcConnector,
    ProcEvent,
    monotonic_ns_to_epoch,
)
from .connector import probe as probe_connector
from .listener import NetlinkError, Probe
from .messages import EventsLost, decode_exit_status
from .taskstats import TaskExit, TaskstatsError, TaskstatsEvent, TaskstatsListener
from .taskstats import probe as probe_taskstats

__all__ = [
    "CommEvent",
    "ConnectorError",
    "ConnectorEvent",
    "EventsLost",
    "ExecEvent",
    "ExitEvent",
    "ForkEvent",
    "NetlinkError",
    "Probe",
    "ProcConnector",
    "ProcEvent",
    "TaskExit",
    "TaskstatsError",
    "TaskstatsEvent",
    "TaskstatsListener",
    "decode_exit_status",
    "monotonic_ns_to_epoch",
    "probe_connector",
    "probe_taskstats",
]
