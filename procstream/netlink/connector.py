"""The kernel's process events, from the Linux proc connector.

A poll sees only the processes alive at that moment. The proc connector
(``NETLINK_CONNECTOR``, multicast group ``CN_IDX_PROC``) pushes every fork, exec and exit
as it happens, with the exit status, so short-lived processes and exit codes are not lost.

- :class:`Decoder` turns datagrams into :class:`ForkEvent`, :class:`ExecEvent`,
  :class:`ExitEvent` and :class:`CommEvent`, with an
  :class:`~procstream.netlink.messages.EventsLost` marker where the kernel dropped
  events; :func:`parse_datagram` decodes one datagram alone;
- :class:`ProcConnector` is the subscription, a
  :class:`~procstream.netlink.listener.NetlinkListener`;
- :func:`probe` says whether the connector can be used here, and why not.

Time: an event's ``ts_ns`` is the kernel's ``ktime_get_ns()`` (CLOCK_MONOTONIC).
:func:`monotonic_ns_to_epoch` puts it on the wall clock; :func:`starttime_to_monotonic_ns`
puts a ``/proc/PID/stat`` start time (clock ticks since boot, CLOCK_BOOTTIME) on the same
timeline, so ``exit.ts_ns - starttime_to_monotonic_ns(ticks)`` is a lifetime
(:func:`lifetime_s`).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Final, Self, TypeAlias

from .listener import NetlinkError, NetlinkListener, Probe, opening_problem, platform_problem
from .listener import error_text, errno_text, outside_initial_netns
from .messages import NLMSG_DONE, NLMSG_HDRLEN, NLMSGHDR, Buffer, DecodeStats, EventsLost, ExitStatus, MessageDecoder

__all__ = [
    "ForkEvent",
    "ExecEvent",
    "ExitEvent",
    "CommEvent",
    "ProcEvent",
    "ConnectorEvent",
    "ConnectorStats",
    "Decoder",
    "parse_datagram",
    "ProcConnector",
    "ConnectorError",
    "probe",
    "monotonic_ns_to_epoch",
    "starttime_to_monotonic_ns",
    "starttime_to_epoch",
    "lifetime_s",
    "wall_offset_ns",
    "boot_offset_ns",
    "CLK_TCK",
]

# --- kernel constants (linux/connector.h, linux/cn_proc.h) ------------------------------------

NETLINK_CONNECTOR: Final = 11
CN_IDX_PROC: Final = 1
CN_VAL_PROC: Final = 1

PROC_CN_MCAST_LISTEN: Final = 1
PROC_CN_MCAST_IGNORE: Final = 2

PROC_EVENT_NONE: Final = 0x00000000
PROC_EVENT_FORK: Final = 0x00000001
PROC_EVENT_EXEC: Final = 0x00000002
PROC_EVENT_UID: Final = 0x00000004
PROC_EVENT_GID: Final = 0x00000040
PROC_EVENT_SID: Final = 0x00000080
PROC_EVENT_PTRACE: Final = 0x00000100
PROC_EVENT_COMM: Final = 0x00000200
PROC_EVENT_COREDUMP: Final = 0x40000000
PROC_EVENT_EXIT: Final = 0x80000000

#: names of the event kinds we decode but do not turn into objects (counted in the stats)
IGNORED_KINDS: Final[dict[int, str]] = {
    PROC_EVENT_UID: "uid",
    PROC_EVENT_GID: "gid",
    PROC_EVENT_SID: "sid",
    PROC_EVENT_PTRACE: "ptrace",
    PROC_EVENT_COREDUMP: "coredump",
}

# The init namespaces have fixed inode numbers (include/linux/proc_ns.h); dynamically
# allocated ones start at 0xF0000000, so a match is proof. PID and user: since Linux 3.8.
_PROC_USER_INIT_INO: Final = 0xEFFFFFFD
_PROC_PID_INIT_INO: Final = 0xEFFFFFFC

_CAP_NET_ADMIN: Final = 12

#: clock ticks per second used by /proc/PID/stat (USER_HZ)
CLK_TCK: Final[int] = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# nlmsghdr + cn_msg (idx, val, seq, ack, len, flags) + proc_event head (what, cpu, ts),
# read in one call: this is the per-event hot path
_HEAD = struct.Struct("=IHHII" "IIIIHH" "IIQ")
_CN = struct.Struct("=IIIIHH")
_CN_HDRLEN: Final = _CN.size
_EV_HEADLEN: Final = 16  # what, cpu, timestamp_ns
_BODY_OFF: Final = _HEAD.size  # the proc_event union
_FORK = struct.Struct("=iiii")
_EXEC = struct.Struct("=ii")
_EXIT = struct.Struct("=iiIi")  # pid, tgid, exit_code (wait status), exit_signal
_EXIT_PARENT = struct.Struct("=ii")  # parent pid/tgid, absent before Linux 4.19
_COMM = struct.Struct("=ii16s")
_U32 = struct.Struct("=I")
_U32_CPU_NONE: Final = 0xFFFFFFFF


# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForkEvent:
    """A task was created. ``child_pid != child_tgid`` means a new thread, not a process.

    The parent is the new task's ``real_parent``: for a new process the one that forked
    it; for a new thread the parent of its process, not the thread that created it. Pids
    are as seen from the initial PID namespace (the host's /proc).
    """

    ts_ns: int
    parent_pid: int
    parent_tgid: int
    child_pid: int
    child_tgid: int

    @property
    def is_thread(self) -> bool:
        return self.child_pid != self.child_tgid


@dataclass(frozen=True, slots=True)
class _TaskEvent:
    """What happened to the task ``pid`` of process ``tgid``."""

    ts_ns: int
    pid: int
    tgid: int

    @property
    def is_thread(self) -> bool:
        return self.pid != self.tgid


@dataclass(frozen=True, slots=True)
class ExecEvent(_TaskEvent):
    """A process called execve(); read its new name and cmdline from /proc now."""


@dataclass(frozen=True, slots=True)
class ExitEvent(_TaskEvent, ExitStatus):
    """A task exited. A process exit is ``pid == tgid`` (``not is_thread``).

    ``status`` is the kernel's wait status (read by ``exit_code``/``signal``/
    ``core_dumped``); ``exit_signal`` is the signal sent to the parent on exit (SIGCHLD,
    -1 for threads), not the signal that killed it. When it is sent the task is a zombie,
    so /proc/PID is usually still readable until the parent reaps it.
    """

    status: int
    exit_signal: int
    # 0 when unknown: old kernels, or the parent reaped the task before the event was sent
    parent_pid: int = 0
    parent_tgid: int = 0


@dataclass(frozen=True, slots=True)
class CommEvent(_TaskEvent):
    """A task changed its name (prctl PR_SET_NAME or a write to /proc/PID/comm).

    execve() does not send one: read the name from /proc on :class:`ExecEvent`.
    """

    comm: str


ProcEvent: TypeAlias = ForkEvent | ExecEvent | ExitEvent | CommEvent
ConnectorEvent: TypeAlias = ProcEvent | EventsLost


# --- decoding ------------------------------------------------------------------------------


@dataclass(slots=True)
class ConnectorStats(DecodeStats):
    """The decoder's counters. ``acks`` also counts the PROC_EVENT_NONE answers to
    LISTEN/IGNORE requests, whatever they say and whoever asked: the kernel multicasts
    them to every listener."""

    events: int = 0  # events returned (fork/exec/exit/comm)
    ignored_kinds: dict[str, int] = field(default_factory=dict)  # what ``ignored`` counted
    missed: int = 0  # events known missing from per-CPU sequence gaps


class Decoder(MessageDecoder[ProcEvent]):
    """Turns the connector's datagrams into events, noticing the events the kernel dropped.

    The kernel numbers its proc events per CPU (``cn_msg.seq``); a hole in one CPU's
    numbers is events we never received, reported as ``EventsLost("gap", n)`` where it
    was noticed. Feed datagrams in the order they were received. ``sequence=False``
    decodes datagrams independently, without that check.

    Garbage and truncated input are counted in ``stats.malformed`` and skipped; an
    NLMSG_OVERRUN becomes ``EventsLost("overrun")``.
    """

    __slots__ = ("_last_seq",)
    stats: ConnectorStats

    def __init__(self, stats: ConnectorStats | None = None, *, sequence: bool = True) -> None:
        super().__init__(stats if stats is not None else ConnectorStats())
        self._last_seq: dict[int, int] | None = {} if sequence else None

    def reset_sequence(self) -> None:
        """Forget the per-CPU sequence baselines (call after a re-subscribe)."""
        if self._last_seq is not None:
            self._last_seq.clear()

    def _message(
        self, data: Buffer, off: int, end: int, nl_type: int, nl_seq: int, out: list[ConnectorEvent]
    ) -> None:
        stats = self.stats
        nl_len = end - off
        if nl_len < NLMSG_HDRLEN + _CN_HDRLEN:
            stats.malformed += 1
            return
        if nl_len < _BODY_OFF:
            # a cn_msg, but too short for a proc_event: can't be ours if the id differs
            idx, val = _CN.unpack_from(data, off + NLMSG_HDRLEN)[:2]
            if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
                stats.foreign += 1
            else:
                stats.malformed += 1
            return
        head = _HEAD.unpack_from(data, off)
        idx, val, cn_seq, cn_ack, cn_len = head[5:10]
        what, cpu, ts_ns = head[11:14]
        if idx != CN_IDX_PROC or val != CN_VAL_PROC:
            stats.foreign += 1
            return
        if cn_len > nl_len - NLMSG_HDRLEN - _CN_HDRLEN or cn_len < _EV_HEADLEN:
            stats.malformed += 1
            return
        body = off + _BODY_OFF
        body_len = cn_len - _EV_HEADLEN

        last_seq = self._last_seq
        if last_seq is not None and cpu != _U32_CPU_NONE:
            # Old kernels send acks with cpu = -1 and the requester's seq: not part of the count.
            prev = last_seq.get(cpu)
            last_seq[cpu] = cn_seq
            if prev is not None:
                hole = (cn_seq - prev - 1) & 0xFFFFFFFF
                # A "negative" hole means reordering or a counter reset: re-baseline silently.
                if 0 < hole < 0x80000000:
                    stats.missed += hole
                    stats.lost_markers += 1
                    out.append(EventsLost(ts_ns, "gap", hole))

        if what == PROC_EVENT_FORK:
            if body_len < _FORK.size:
                stats.malformed += 1
                return
            out.append(ForkEvent(ts_ns, *_FORK.unpack_from(data, body)))
        elif what == PROC_EVENT_EXEC:
            if body_len < _EXEC.size:
                stats.malformed += 1
                return
            out.append(ExecEvent(ts_ns, *_EXEC.unpack_from(data, body)))
        elif what == PROC_EVENT_EXIT:
            if body_len < _EXIT.size:
                stats.malformed += 1
                return
            pid, tgid, status, exit_signal = _EXIT.unpack_from(data, body)
            if body_len >= _EXIT.size + _EXIT_PARENT.size:
                ppid, ptgid = _EXIT_PARENT.unpack_from(data, body + _EXIT.size)
            else:
                ppid = ptgid = 0
            out.append(ExitEvent(ts_ns, pid, tgid, status, exit_signal, ppid, ptgid))
        elif what == PROC_EVENT_COMM:
            if body_len < _COMM.size:
                stats.malformed += 1
                return
            pid, tgid, raw = _COMM.unpack_from(data, body)
            comm = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            out.append(CommEvent(ts_ns, pid, tgid, comm))
        elif what == PROC_EVENT_NONE:
            # the answer to a LISTEN/IGNORE: ``cn_ack`` is the request's number + 1
            stats.acks += 1
            if self.acks is not None:
                err = _U32.unpack_from(data, body)[0] if body_len >= _U32.size else 0
                self.acks.append((cn_ack, err))
            return
        else:
            kind = IGNORED_KINDS.get(what, f"0x{what:x}")
            stats.ignored += 1
            stats.ignored_kinds[kind] = stats.ignored_kinds.get(kind, 0) + 1
            return
        stats.events += 1


def parse_datagram(data: Buffer, stats: ConnectorStats | None = None) -> list[ConnectorEvent]:
    """Decode one datagram on its own (no sequence check: see :class:`Decoder`). Pure;
    never raises."""
    return Decoder(stats, sequence=False).feed(data)


def _request(op: int, ack: int) -> bytes:
    """A LISTEN/IGNORE request: nlmsghdr + cn_msg + the 4-byte op (all kernels accept it)."""
    payload = _U32.pack(op)
    cn = _CN.pack(CN_IDX_PROC, CN_VAL_PROC, 0, ack, len(payload), 0) + payload
    return NLMSGHDR.pack(NLMSG_HDRLEN + len(cn), NLMSG_DONE, 0, 0, 0) + cn


# --- the socket ----------------------------------------------------------------------------


class ConnectorError(NetlinkError):
    """The proc connector can't be opened or subscribed to; ``str()`` says why, for a log."""


class ProcConnector(NetlinkListener[ProcEvent]):
    """A non-blocking subscription to the kernel's process events.

    Use from asyncio::

        conn = ProcConnector().open()
        loop.add_reader(conn.fileno(), lambda: handle(conn.read_events()))

    or from a thread: ``while conn.wait_readable(1.0) is not None: handle(conn.read_events())``.
    One reader at a time; call ``close()`` from the reading thread or once it has stopped.
    A datagram is about one event, which ``read_events``'s ``max_datagrams`` counts.

    Loss never raises: it arrives as an :class:`EventsLost` marker in the returned list
    and is counted in ``lost`` (markers: ENOBUFS, overrun, gap), ``enobufs`` (the kernel
    dropped events) and ``stats.missed`` (events known missing). An ENOBUFS marker
    carries no count: the sequence gap that follows it measures the hole.
    """

    Error = ConnectorError
    #: about a kilobyte of buffer per queued event: several seconds of a fork storm
    DEFAULT_RCVBUF = 8 * 1024 * 1024
    _decoder: Decoder
    stats: ConnectorStats

    def __init__(
        self, *, rcvbuf: int | None = None, recv_size: int = 65536, force_rcvbuf: bool = True
    ) -> None:
        super().__init__(Decoder(), rcvbuf=rcvbuf, recv_size=recv_size, force_rcvbuf=force_rcvbuf)
        # our requests' number: the kernel's answer to LISTEN carries it + 1
        self._ack = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF

    def open(self, *, confirm: bool = True, timeout: float = 1.0) -> Self:
        """Create, bind and subscribe; with ``confirm``, wait for the kernel's acknowledgement.

        Without the acknowledgement a subscription can fail silently (the kernel ignores
        requests from a child PID or user namespace), so keep ``confirm`` unless you know.
        Raises :class:`ConnectorError` with a reason fit for a log. Returns ``self``.
        """
        return self._open(
            socket.SOCK_DGRAM, NETLINK_CONNECTOR,
            "cannot create a NETLINK_CONNECTOR socket ({}); "
            "is the kernel built with CONFIG_CONNECTOR and CONFIG_PROC_EVENTS?",
            lambda sock: self._subscribe(sock, confirm, timeout),
        )  # fmt: skip

    def _subscribe(self, sock: socket.socket, confirm: bool, timeout: float) -> None:
        try:
            self._bind(sock, 1 << (CN_IDX_PROC - 1))
        except OSError as exc:
            raise ConnectorError(
                exc.errno, f"cannot join the proc events group ({error_text(exc)}); "
                "kernels before 6.6 need root or CAP_NET_ADMIN"
            ) from exc
        # a new subscription: sequence numbers since the last one are not a gap
        self._decoder.reset_sequence()
        try:
            self._send(_request(PROC_CN_MCAST_LISTEN, self._ack))
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                raise ConnectorError(
                    exc.errno, "the kernel's connector refused us: this process is not "
                    "in the initial network namespace (a container needs host networking)"
                ) from exc
            raise ConnectorError(exc.errno, f"cannot subscribe ({error_text(exc)})") from exc
        self._subscribed = True
        if not confirm:
            return
        deadline = time.monotonic() + timeout
        err = self._await_answer((self._ack + 1) & 0xFFFFFFFF, deadline, "the subscription")
        if err is None:
            raise ConnectorError(
                errno.ETIMEDOUT,
                f"no acknowledgement from the kernel within {timeout:g} s: this "
                "process is probably in a child PID or user namespace (the kernel "
                "ignores those), or the kernel lacks CONFIG_PROC_EVENTS",
            )
        if err:
            raise ConnectorError(
                err, f"the kernel refused the subscription ({errno_text(err)}); "
                "kernels before 6.6 need root or CAP_NET_ADMIN"
            )

    def _unsubscribe(self, sock: socket.socket) -> None:
        # The kernel counts listeners globally; without IGNORE the count leaks.
        sock.send(_request(PROC_CN_MCAST_IGNORE, self._ack))


# --- time ----------------------------------------------------------------------------------


def wall_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC now, in ns (changes when the wall clock is set)."""
    m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    r = time.time_ns()
    m2 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    return r - (m1 + m2) // 2


def boot_offset_ns() -> int:
    """CLOCK_BOOTTIME - CLOCK_MONOTONIC now, in ns: the time the machine spent suspended."""
    m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    b = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    m2 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    return b - (m1 + m2) // 2


def monotonic_ns_to_epoch(ts_ns: int, offset_ns: int | None = None) -> float:
    """An event's ``ts_ns`` as epoch seconds, using the current wall/monotonic offset (or
    ``offset_ns`` from :func:`wall_offset_ns`, to convert a batch with one offset)."""
    if offset_ns is None:
        offset_ns = wall_offset_ns()
    return (ts_ns + offset_ns) / 1e9


def starttime_to_monotonic_ns(
    start_ticks: int, *, clk_tck: int = CLK_TCK, boot_offset: int | None = None
) -> int:
    """A /proc/PID/stat start time (field 22: ticks since boot, CLOCK_BOOTTIME) on the
    events' CLOCK_MONOTONIC timeline, in ns.

    The kernel truncates the start to a tick, so the result is up to one tick (10 ms at
    USER_HZ=100) earlier than the real start. If the machine was suspended since, the
    result moves back by the suspended time, so lifetimes include it (wall-clock lifetimes).
    """
    if boot_offset is None:
        boot_offset = boot_offset_ns()
    return start_ticks * 1_000_000_000 // clk_tck - boot_offset


def starttime_to_epoch(start_ticks: int, *, clk_tck: int = CLK_TCK) -> float:
    """A /proc/PID/stat start time as epoch seconds, on the same timeline as the events.

    (Finer than ``btime + ticks / CLK_TCK``, whose btime is rounded to the second.)
    """
    return monotonic_ns_to_epoch(starttime_to_monotonic_ns(start_ticks, clk_tck=clk_tck))


def lifetime_s(start_ticks: int, exit_ts_ns: int, *, clk_tck: int = CLK_TCK) -> float:
    """Seconds from a /proc start time to an :class:`ExitEvent`'s ``ts_ns`` (0..+1 tick)."""
    return (exit_ts_ns - starttime_to_monotonic_ns(start_ticks, clk_tck=clk_tck)) / 1e9


# --- probe ---------------------------------------------------------------------------------

_SOURCE: Final = "netlink proc connector"


def probe(procfs_mount: str = "/proc", *, require_privilege: bool = True) -> Probe:
    """Can procstream use the proc connector here? The reason is a log line either way.

    Call once at start-up (``--source auto|netlink``). Checks, in order: root or
    CAP_NET_ADMIN (skip with ``require_privilege=False``: kernels since 6.6 let anyone
    listen); the initial user and PID namespaces (the kernel silently ignores other
    listeners, and reports pids as the host sees them); that ``procfs_mount`` is a procfs
    of that PID namespace (so event pids are its directories, even at /host/proc); the
    initial network namespace; then it opens and subscribes for real, waiting for the
    kernel's acknowledgement, and closes again.
    """
    why = platform_problem()
    if why:
        return Probe.refused(_SOURCE, why)
    euid = os.geteuid()
    cap = _has_cap_net_admin()
    if require_privilege and euid != 0 and cap is not True:
        return Probe.refused(_SOURCE, "not root and no CAP_NET_ADMIN")
    why = (
        _namespace_problem()
        or _procfs_problem(procfs_mount)
        or _netns_problem(procfs_mount)
        or opening_problem(lambda: ProcConnector(rcvbuf=64 * 1024).open(timeout=1.0).close())
    )
    if why:
        return Probe.refused(_SOURCE, why)
    who = "root" if euid == 0 else ("CAP_NET_ADMIN" if cap else f"uid {euid}")
    return Probe(True, (
        f"{_SOURCE} available ({who}, initial namespaces, "
        f"{procfs_mount} is the host's procfs)"
    ))


def _has_cap_net_admin() -> bool | None:
    """CapEff bit 12 of /proc/self/status; None when it can't be read."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _ns_ino(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _namespace_problem() -> str | None:
    """Are we in the initial user and PID namespaces? (None: yes, or can't tell.)"""
    user = _ns_ino("/proc/self/ns/user")
    if user is not None and user != _PROC_USER_INIT_INO:
        return (
            "this process is in a child user namespace (a rootless container?); the "
            "kernel ignores proc connector listeners there"
        )
    pid = _ns_ino("/proc/self/ns/pid")
    if pid is not None and pid != _PROC_PID_INIT_INO:
        return (
            "this process is in a child PID namespace (a container without the host's "
            "PID namespace); the kernel ignores proc connector listeners there"
        )
    return None


def _procfs_problem(mount: str) -> str | None:
    """Is ``mount`` a procfs of our (initial) PID namespace, so that event pids name its
    directories? Its ``self`` link resolves to our pid only then: a procfs of a child PID
    namespace doesn't show us at all, and a plain directory has no such link. (Two procfs
    mounts of one namespace have different devices, so st_dev can't decide this.)"""
    try:
        target = os.readlink(os.path.join(mount, "self"))
    except FileNotFoundError:
        if not os.path.isdir(mount):
            return f"procfs mount {mount} does not exist"
        if os.path.isdir(os.path.join(mount, "1")):
            return (
                f"{mount} is the procfs of another PID namespace (this process is not "
                "visible in it): event pids would not match it"
            )
        return f"{mount} is not a live procfs (no 'self' link)"
    except OSError as exc:
        return f"cannot read {mount}/self ({error_text(exc)})"
    if target != str(os.getpid()):
        return (
            f"{mount} is the procfs of another PID namespace (it shows this process as "
            f"{target}, we are {os.getpid()}): event pids would not match it"
        )
    return None


def _netns_problem(mount: str) -> str | None:
    """Are we in the initial network namespace (the only one the connector lives in)?

    When it can't be told, the subscription attempt decides (ECONNREFUSED)."""
    if outside_initial_netns(mount):
        return (
            "this process is not in the initial network namespace (a container needs "
            "host networking); the connector exists only there"
        )
    return None
