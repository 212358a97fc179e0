"""The events procstream sends: each type's name and fields, defined once.

Every event is one flat JSON object with snake_case keys, times in epoch seconds, sizes in
bytes. The classes below are ``TypedDict``s: at run time an event is a plain ``dict``, so
it goes to orjson, the hub's state and the event log as it is; to a type checker, and to
a reader, each type's fields are written here and nowhere else.

Rules:
- Every event has ``type`` and ``ts``; the hub adds ``seq`` and ``host`` when it numbers it.
- ``proc.*`` events start with a process's identity (:class:`ProcFields`), the same fields
  a snapshot lists under ``procs``; ``group.update`` carries a group's fields
  (:class:`GroupFields`), the same a snapshot lists under ``groups``.
- Some fields describe the event rather than the process or group it is about
  (:data:`EVENT_ONLY_FIELDS`); a snapshot's state leaves them out.
- To add an event type: write its class here, add it to :data:`Event` and to
  :data:`EVENTS`. The wire protocol's type filter and wildcards, and the order types are
  listed in, follow from :data:`EVENTS`.
- Events have a bounded size, whatever a process puts in its argv or name: a
  ``cmdline`` keeps at most :data:`CMDLINE_MAX_ARGS` arguments and
  :data:`CMDLINE_MAX_BYTES` bytes of them (:func:`cap_cmdline`; a cut one says
  ``cmdline_truncated: true``), every other supplied string at most
  :data:`STRING_MAX_BYTES` (:func:`cut_text`). With JSON's escapes an event then stays
  far below the frames clients accept (websockets' default is 1 MiB).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal, TypedDict, Union

__all__ = [
    "PROC_START",
    "PROC_EXIT",
    "GROUP_UPDATE",
    "CYCLE",
    "StateCounts",
    "ProcFields",
    "GroupFields",
    "ProcStart",
    "ProcExit",
    "GroupUpdate",
    "GroupRemoved",
    "CycleExtras",
    "Cycle",
    "Event",
    "EVENTS",
    "EVENT_TYPES",
    "EVENT_ONLY_FIELDS",
    "PROC_FIELDS",
    "GROUP_FIELDS",
    "CMDLINE_MAX_ARGS",
    "CMDLINE_MAX_BYTES",
    "STRING_MAX_BYTES",
    "cap_cmdline",
    "cut_text",
]

PROC_START: Final = "proc.start"
PROC_EXIT: Final = "proc.exit"
GROUP_UPDATE: Final = "group.update"
CYCLE: Final = "cycle"


# -- what events are about --------------------------------------------------------------


class StateCounts(TypedDict):
    """Processes of a group by scheduler state (``R``; ``S``; ``D``; ``Z``; the rest)."""

    running: int
    sleeping: int
    waiting: int
    zombie: int
    other: int


class ProcFields(TypedDict):
    """A process's identity. ``cmdline`` is redacted, and cut where it was too long
    (``cmdline_truncated``); ``user`` is ``uid``'s name."""

    pid: int
    ppid: int
    start_time: float
    name: str
    cmdline: list[str]
    cmdline_truncated: bool
    group: str
    user: str
    uid: int


class GroupFields(TypedDict):
    """A group's state. Totals only grow, like the Prometheus counters; rates
    (``cpu_pct``, 100 = one core, ``read_bps``, ``write_bps``) are over the last interval."""

    group: str
    procs: int
    threads: int
    cpu_s: float
    cpu_user_s: float
    cpu_system_s: float
    cpu_pct: float
    read_bytes: int
    write_bytes: int
    read_bps: float
    write_bps: float
    mem_resident: int
    mem_virtual: int
    mem_swap: int
    open_fds: int
    worst_fd_ratio: float
    major_faults: int
    minor_faults: int
    ctx_voluntary: int
    ctx_nonvoluntary: int
    oldest_start_time: float
    states: StateCounts


# -- the events -------------------------------------------------------------------------


# Optional fields are declared in ``total=False`` classes rather than with ``NotRequired``:
# under postponed annotations only the former is visible at run time
# (``__optional_keys__``), where the tests read it.


class _Numbered(TypedDict, total=False):
    """Added by the hub: the event's place in the stream and where it comes from."""

    seq: int
    host: str


class _CoreDump(TypedDict, total=False):
    core_dumped: bool


class ProcStart(ProcFields, _Numbered):
    """A process started (or was first seen). ``source``: ``poll`` or ``netlink``."""

    type: Literal["proc.start"]
    ts: float
    source: str


class ProcExit(ProcFields, _CoreDump, _Numbered):
    """A process ended, with its final totals. ``exit_code`` and ``signal`` are ``None``
    when the source can't know them (a poll); ``core_dumped`` only comes with them."""

    type: Literal["proc.exit"]
    ts: float
    lifetime_s: float
    cpu_s: float
    read_bytes: int
    write_bytes: int
    exit_code: int | None
    signal: int | None
    source: str


class GroupUpdate(GroupFields, _Numbered):
    """A group's fields changed (only changed groups are sent)."""

    type: Literal["group.update"]
    ts: float


class GroupRemoved(_Numbered):
    """A group is gone (``--remove-empty-groups``): a ``group.update`` with ``removed``."""

    type: Literal["group.update"]
    ts: float
    group: str
    removed: Literal[True]


class CycleExtras(TypedDict, total=False):
    """``cycle`` fields that depend on how the service runs: ``skipped`` poll ticks (a
    poll overran) and ``interval_s``, the seconds since the previous poll began (the
    interval in effect), and with kernel events, ``source`` and the ``lost_events`` since
    the last cycle."""

    skipped: int
    interval_s: float
    source: str
    lost_events: int


class Cycle(CycleExtras, _Numbered):
    """One poll happened (not sent for the first, which gives the baseline state)."""

    type: Literal["cycle"]
    ts: float
    duration_ms: float
    procs_seen: int
    tracked: int
    started: int
    exited: int
    permission_errors: int
    read_errors: int
    partial_errors: int


Event = Union[ProcStart, ProcExit, GroupUpdate, GroupRemoved, Cycle]

#: Every event type and the shapes it comes in, in the order types are listed to clients.
EVENTS: Final[dict[str, tuple[type, ...]]] = {
    PROC_START: (ProcStart,),
    PROC_EXIT: (ProcExit,),
    GROUP_UPDATE: (GroupUpdate, GroupRemoved),
    CYCLE: (Cycle,),
}

#: The event type names, in a stable order.
EVENT_TYPES: Final[tuple[str, ...]] = tuple(EVENTS)

#: Fields about the event itself, not about the process or group it describes.
EVENT_ONLY_FIELDS: Final[frozenset[str]] = frozenset({"type", "ts", "seq", "host", "source", "removed"})


#: A process's identity fields, in the order events carry them.
PROC_FIELDS: Final[tuple[str, ...]] = tuple(ProcFields.__annotations__)
#: A group's fields, in the order events carry them.
GROUP_FIELDS: Final[tuple[str, ...]] = tuple(GroupFields.__annotations__)


# -- bounded sizes ----------------------------------------------------------------------

#: Arguments a ``cmdline`` keeps at most.
CMDLINE_MAX_ARGS: Final = 256
#: Bytes (UTF-8) of arguments a ``cmdline`` keeps at most.
CMDLINE_MAX_BYTES: Final = 16 * 1024
#: Bytes (UTF-8) of any other string from a process or its name (``name``, ``user``,
#: ``group``) an event keeps at most.
STRING_MAX_BYTES: Final = 1024


def cut_text(text: str, max_bytes: int = STRING_MAX_BYTES) -> str:
    """``text``, or its start of at most ``max_bytes`` bytes of UTF-8 (never half a
    character)."""
    if len(text) * 4 <= max_bytes:  # even four bytes a character would fit
        return text
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")


def cap_cmdline(argv: Iterable[str]) -> tuple[list[str], bool]:
    """``(argv as a list, False)``, or its start within :data:`CMDLINE_MAX_ARGS` and
    :data:`CMDLINE_MAX_BYTES` and ``True`` when it had to be cut (the last argument kept
    may be cut itself)."""
    args = list(argv)
    if len(args) <= CMDLINE_MAX_ARGS and sum(map(len, args)) * 4 <= CMDLINE_MAX_BYTES:
        return args, False
    kept: list[str] = []
    room = CMDLINE_MAX_BYTES
    for arg in args[:CMDLINE_MAX_ARGS]:
        size = len(arg.encode("utf-8", "replace"))
        if size > room:
            if room:
                kept.append(cut_text(arg, room))
            return kept, True
        kept.append(arg)
        room -= size
    return kept, len(args) > CMDLINE_MAX_ARGS
