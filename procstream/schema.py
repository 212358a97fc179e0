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
- A type in :data:`EXPLICIT_TYPES` is sent only to who names it: no wildcard (``*``,
  ``proc.*``) and no "every type" selects it. ``proc.update`` is one: per-process numbers
  at every poll are for a viewer looking at those processes, not for every subscriber;
  and the hub gives it no ``seq`` (see :class:`ProcUpdate`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal, TypedDict, Union

__all__ = [
    "PROC_START",
    "PROC_EXIT",
    "GROUP_UPDATE",
    "GROUP_MISSING",
    "GROUP_RECOVERED",
    "GROUP_CRASHLOOP",
    "GROUP_STABLE",
    "CYCLE",
    "HOST_LOST",
    "EXIT_CLASSES",
    "PROC_UPDATE",
    "HOST_UP",
    "HOST_DOWN",
    "StateCounts",
    "ProcFields",
    "ProcLive",
    "GroupFields",
    "RestartOf",
    "LastExit",
    "GroupLifecycle",
    "Previous",
    "ProcStart",
    "ProcExit",
    "GroupUpdate",
    "GroupRemoved",
    "GroupMissing",
    "GroupRecovered",
    "GroupCrashloop",
    "GroupStable",
    "CycleExtras",
    "Cycle",
    "HostLost",
    "ProcUpdate",
    "HostUp",
    "HostDown",
    "Event",
    "EVENTS",
    "EVENT_TYPES",
    "EXPLICIT_TYPES",
    "DEFAULT_TYPES",
    "EVENT_ONLY_FIELDS",
    "PROC_FIELDS",
    "GROUP_FIELDS",
    "CMDLINE_MAX_ARGS",
    "CMDLINE_MAX_BYTES",
    "STRING_MAX_BYTES",
    "cap_cmdline",
    "cut_text",
    "LIVE_FIELDS",
]

PROC_START: Final = "proc.start"
PROC_EXIT: Final = "proc.exit"
GROUP_UPDATE: Final = "group.update"
GROUP_MISSING: Final = "group.missing"
GROUP_RECOVERED: Final = "group.recovered"
GROUP_CRASHLOOP: Final = "group.crashloop"
GROUP_STABLE: Final = "group.stable"
CYCLE: Final = "cycle"
HOST_LOST: Final = "host.lost"
PROC_UPDATE: Final = "proc.update"
HOST_UP: Final = "host.up"
HOST_DOWN: Final = "host.down"

#: Why a process ended (``exit_class``): code 0, code != 0, a signal, the kernel's OOM killer.
EXIT_CLASSES: Final[tuple[str, ...]] = ("ok", "error", "signal", "oom_kill")


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
    (``cmdline_truncated``); ``cmdline_known`` is False when the argv could not be read
    (the process was gone first): ``cmdline`` is then ``[]``, never another process's.
    ``user`` is ``uid``'s name."""

    pid: int
    ppid: int
    start_time: float
    name: str
    cmdline: list[str]
    cmdline_known: bool
    cmdline_truncated: bool
    group: str
    user: str
    uid: int


class ProcLive(TypedDict):
    """A process's numbers as of the latest poll. ``cpu_pct`` (100 = one core),
    ``read_bps`` and ``write_bps`` are over the last interval; ``cpu_s`` is its CPU time
    since it started; ``open_fds`` is -1 and ``fd_ratio`` 0 when unknown (``fd_ratio``:
    open fds over the soft limit, 0 when unlimited); ``state`` is the scheduler's letter
    (``R`` running, ``S`` sleeping, ``D`` uninterruptible, ``Z`` zombie, ``T`` stopped, ...)."""

    cpu_pct: float
    cpu_s: float
    mem_resident: int
    mem_virtual: int
    mem_swap: int
    threads: int
    open_fds: int
    fd_ratio: float
    state: str
    read_bps: float
    write_bps: float


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
    #: the config's ``expected_groups`` entry for this group; ``None`` when not expected
    expected_min: int | None
    expected_max: int | None


class LastExit(TypedDict):
    """The latest exit of a group's process, as its ``proc.exit`` told it."""

    pid: int
    ts: float
    exit_class: str | None
    exit_code: int | None
    signal: int | None
    oom_killed: bool | None


class GroupLifecycle(TypedDict, total=False):
    """What a snapshot's group may have beyond :class:`GroupFields`, kept by the server
    from the events since it started: ``missing`` (``group.missing`` /
    ``group.recovered``), ``crashloop`` (``group.crashloop`` / ``group.stable``),
    ``restarts`` (starts with ``restart_of``) and ``last_exit``. Each is there once an
    event set it: absent means ``false``, 0, no exit seen."""

    missing: bool
    crashloop: bool
    restarts: int
    last_exit: LastExit


class RestartOf(TypedDict):
    """The process a ``proc.start`` replaces: its pid and how it ended, and how long the
    group went without it (its exit to this start)."""

    pid: int
    exit_code: int | None
    signal: int | None
    down_s: float


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


class Previous(TypedDict):
    """What a process was called before it was named anew (it exec'd, or renamed itself)."""

    name: str
    group: str


class _Renamed(TypedDict, total=False):
    previous: Previous


class ProcStart(ProcFields, _Renamed, _Numbered):
    """A process started (or was first seen). ``source``: ``poll`` or ``netlink``.
    ``restart_of``: the exited process it replaces, or ``None`` when it is no restart.
    ``previous`` only when an already reported process was named anew: it exec'd
    another program, or renamed itself; its identity fields are then what it is now."""

    type: Literal["proc.start"]
    ts: float
    restart_of: RestartOf | None
    source: str


class ProcExit(ProcFields, _CoreDump, _Numbered):
    """A process ended, with its final totals. ``exit_code`` and ``signal`` are ``None``
    when the source can't know them (a poll); ``core_dumped`` only comes with them.
    ``exit_class`` (one of :data:`EXIT_CLASSES`) and ``oom_killed`` say why it ended;
    ``None`` when unknown."""

    type: Literal["proc.exit"]
    ts: float
    lifetime_s: float
    cpu_s: float
    read_bytes: int
    write_bytes: int
    exit_code: int | None
    signal: int | None
    exit_class: str | None
    oom_killed: bool | None
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


class GroupMissing(_Numbered):
    """An expected group went below its minimum (also at start-up, or after a config
    reload, when it is below it). ``procs``: its processes now."""

    type: Literal["group.missing"]
    ts: float
    group: str
    expected_min: int
    procs: int


class GroupRecovered(_Numbered):
    """A missing group is back to its minimum; ``expected_min`` is ``None`` when a config
    reload made it no longer expected."""

    type: Literal["group.recovered"]
    ts: float
    group: str
    expected_min: int | None
    procs: int


class GroupCrashloop(_Numbered):
    """A group restarted ``restarts`` times after failed exits within ``window_s``
    seconds (``lifecycle.crashloop_restarts`` within ``lifecycle.crashloop_window_s``)."""

    type: Literal["group.crashloop"]
    ts: float
    group: str
    restarts: int
    window_s: float


class GroupStable(_Numbered):
    """A crash-looping group stayed up ``window_s`` seconds without a restart
    (``lifecycle.stable_after_s``); ``restarts`` during the crash loop."""

    type: Literal["group.stable"]
    ts: float
    group: str
    restarts: int
    window_s: float


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
    #: tracked processes that had not run since the previous poll: only ``schedstat``
    #: read (``stat`` too when multi-threaded), their other values carried over
    reads_skipped: int


class _InTheFleet(TypedDict, total=False):
    """Added by a fleet aggregator: the event's place in the fleet's stream."""

    seq: int


class _LostExtras(_InTheFleet, total=False):
    #: Set by a fleet aggregator for a stream message it could not use (``deleted``
    #: from the stream, or ``invalid``: not a procstream event); ``epoch``,
    #: ``from_seq`` and ``to_seq`` are then null.
    reason: str


class HostLost(_LostExtras):
    """Events ``from_seq``..``to_seq`` (``count`` of them) of run ``epoch`` of ``host``
    that never reached NATS: the host's resume buffer no longer held them when NATS was
    back. Written by the NATS publisher in their place, never by the hub, so it has no
    ``seq`` of its own (a fleet aggregator gives it one)."""

    type: Literal["host.lost"]
    ts: float
    host: str
    epoch: str
    from_seq: int
    to_seq: int
    count: int


class _Hosted(TypedDict, total=False):
    """Added by the hub to an event it doesn't number."""

    host: str


class ProcUpdate(ProcLive, _Hosted):
    """A process's numbers changed since the last poll (sent only to subscribers whose
    ``types`` name ``proc.update``, and only for the processes they select). ``pid`` and
    ``start_time`` identify it as in its ``proc.start``. A reading, not a change of state:
    it has no ``seq`` (it is never replayed, and doesn't make other subscribers see gaps)."""

    type: Literal["proc.update"]
    ts: float
    pid: int
    start_time: float
    group: str


class HostUp(_InTheFleet):
    """A fleet aggregator hears from ``host`` again after it was down, or from a new
    run of it (``epoch``): its state is that run's from here on. ``last_seen``: when the
    stream last got something from it (epoch seconds)."""

    type: Literal["host.up"]
    ts: float
    host: str
    epoch: str
    last_seen: float


class HostDown(_InTheFleet):
    """A fleet aggregator heard nothing from ``host`` for ``--host-timeout`` seconds;
    ``last_seen``: when it last did. Its last known state stays in snapshots."""

    type: Literal["host.down"]
    ts: float
    host: str
    epoch: str
    last_seen: float


Event = Union[
    ProcStart,
    ProcExit,
    GroupUpdate,
    GroupRemoved,
    GroupMissing,
    GroupRecovered,
    GroupCrashloop,
    GroupStable,
    Cycle,
    HostLost,
    ProcUpdate,
    HostUp,
    HostDown,
]

#: Every event type and the shapes it comes in, in the order types are listed to clients.
EVENTS: Final[dict[str, tuple[type, ...]]] = {
    PROC_START: (ProcStart,),
    PROC_EXIT: (ProcExit,),
    GROUP_UPDATE: (GroupUpdate, GroupRemoved),
    GROUP_MISSING: (GroupMissing,),
    GROUP_RECOVERED: (GroupRecovered,),
    GROUP_CRASHLOOP: (GroupCrashloop,),
    GROUP_STABLE: (GroupStable,),
    CYCLE: (Cycle,),
    HOST_LOST: (HostLost,),
    PROC_UPDATE: (ProcUpdate,),
    HOST_UP: (HostUp,),
    HOST_DOWN: (HostDown,),
}

#: The event type names, in a stable order.
EVENT_TYPES: Final[tuple[str, ...]] = tuple(EVENTS)

#: Types sent only to subscribers that name them (never through a wildcard or "all").
EXPLICIT_TYPES: Final[frozenset[str]] = frozenset({PROC_UPDATE})

#: What "every type" means: all types but the explicit ones, in the stable order.
DEFAULT_TYPES: Final[tuple[str, ...]] = tuple(t for t in EVENT_TYPES if t not in EXPLICIT_TYPES)

#: Fields about the event itself, not about the process or group it describes.
EVENT_ONLY_FIELDS: Final[frozenset[str]] = frozenset(
    {"type", "ts", "seq", "host", "source", "removed", "restart_of", "previous"}
)


#: A process's identity fields, in the order events carry them.
PROC_FIELDS: Final[tuple[str, ...]] = tuple(ProcFields.__annotations__)
#: A group's fields, in the order events carry them.
GROUP_FIELDS: Final[tuple[str, ...]] = tuple(GroupFields.__annotations__)
#: A process's live numbers, in the order ``proc.update`` and a snapshot's procs carry them.
LIVE_FIELDS: Final[tuple[str, ...]] = tuple(ProcLive.__annotations__)


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
