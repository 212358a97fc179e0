"""Kernel process events from the Linux proc connector (netlink), low level.

The poller sees only the processes alive at a poll. The proc connector
(``NETLINK_CONNECTOR``, multicast group ``CN_IDX_PROC``) pushes every fork, exec and exit
as it happens, with the exit status, so short-lived processes and exit codes are not lost.

Three layers, each usable alone:

- decoding, pure functions on bytes: :func:`parse_datagram` (or a stateful :class:`Decoder`
  that also notices events the kernel dropped) turns one datagram into
  :class:`ForkEvent`, :class:`ExecEvent`, :class:`ExitEvent`, :class:`CommEvent` and
  :class:`EventsLost` markers; :func:`decode_exit_status` reads a wait status;
- :class:`ProcConnector`, the non-blocking socket: ``open()``, ``fileno()``,
  ``read_events()``, ``close()``, for ``loop.add_reader`` or a plain thread;
- :func:`probe`, which says whether the connector can be used here, and why not.

Time: an event's ``ts_ns`` is the kernel's ``ktime_get_ns()`` (CLOCK_MONOTONIC).
:func:`monotonic_ns_to_epoch` puts it on the wall clock; :func:`starttime_to_monotonic_ns`
puts a ``/proc/PID/stat`` start time (clock ticks since boot, CLOCK_BOOTTIME) on the same
timeline, so ``exit.ts_ns - starttime_to_monotonic_ns(ticks)`` is a lifetime
(:func:`lifetime_s`).

Stdlib and :mod:`procstream.nlsocket` (the socket mechanics it shares with
:mod:`procstream.taskstats`) only. Linux only (the module imports anywhere; the socket
needs Linux).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from .listener import (
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDRLEN,
    NLMSG_NOOP,  # noqa: F401 - still this module's attribute, as before nlsocket
    NLMSG_OVERRUN,
    NLMSGHDR,
    NetlinkListener,
    decode_exit_status,
    error_text,
    outside_initial_netns,
)

__all__ = [
    "ForkEvent",
    "ExecEvent",
    "ExitEvent",
    "CommEvent",
    "EventsLost",
    "ProcEvent",
    "ConnectorEvent",
    "DecodeStats",
    "Decoder",
    "parse_datagram",
    "decode_exit_status",
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
    "DEFAULT_RCVBUF",
]

# --- kernel constants (linux/connector.h, linux/cn_proc.h; netlink's own: nlsocket) ---------

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

#: names of the event kinds we decode but do not turn into objects (counted in DecodeStats)
IGNORED_KINDS: Final[dict[int, str]] = {
    PROC_EVENT_UID: "uid",
    PROC_EVENT_GID: "gid",
    PROC_EVENT_SID: "sid",
    PROC_EVENT_PTRACE: "ptrace",
    PROC_EVENT_COREDUMP: "coredump",
}

# The init namespaces have fixed inode numbers (include/linux/proc_ns.h); dynamically
# allocated ones start at 0xF0000000, so a match is proof. PID and user: since Linux 3.8.
# (The network namespace's check is nlsocket.outside_initial_netns.)
_PROC_USER_INIT_INO: Final = 0xEFFFFFFD
_PROC_PID_INIT_INO: Final = 0xEFFFFFFC

_CAP_NET_ADMIN: Final = 12

#: clock ticks per second used by /proc/PID/stat (USER_HZ)
CLK_TCK: Final[int] = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

#: receive buffer we ask for; the kernel doubles it (SO_RCVBUFFORCE when we may, else
#: SO_RCVBUF capped by net.core.rmem_max). ~1 KiB of buffer per queued event, so 8 MiB
#: holds several seconds of a 1,000 processes/s storm.
DEFAULT_RCVBUF: Final = 8 * 1024 * 1024

# Netlink is host-endian: "=" is native order with standard sizes and no padding.
# (Bound here, not only imported: CPython 3.11 compiles ``name.method()`` on an imported
# name as an attribute load plus call, which costs a bound method per message in the
# decoding loop; on a module variable it is a plain method call.)
_NLMSGHDR = NLMSGHDR  # len, type, flags, seq, pid
_NLMSG_HDRLEN: Final = NLMSG_HDRLEN  # 16
# nlmsghdr + cn_msg (idx, val, seq, ack, len, flags) + proc_event head (what, cpu, ts)
_HEAD = struct.Struct("=IHHII" "IIIIHH" "IIQ")
_CN_OFF: Final = _NLMSG_HDRLEN  # cn_msg starts here
_CN_HDRLEN: Final = 20
_EV_HEADLEN: Final = 16  # what, cpu, timestamp_ns
_BODY_OFF: Final = _HEAD.size  # 52: the proc_event union
_FORK = struct.Struct("=iiii")
_EXEC = struct.Struct("=ii")
_EXIT = struct.Struct("=iiIi")  # pid, tgid, exit_code (wait status), exit_signal
_EXIT_PARENT = struct.Struct("=ii")  # parent pid/tgid, absent before Linux 4.19
_COMM = struct.Struct("=ii16s")
_NLMSGERR = struct.Struct("=i")
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
class ExecEvent:
    """A process called execve(); read its new name and cmdline from /proc now."""

    ts_ns: int
    pid: int
    tgid: int

    @property
    def is_thread(self) -> bool:
        return self.pid != self.tgid


@dataclass(frozen=True, slots=True)
class ExitEvent:
    """A task exited. A process exit is ``pid == tgid`` (``not is_thread``).

    ``status`` is the kernel's wait status (decoded by ``exit_code``/``signal``/
    ``core_dumped``); ``exit_signal`` is the signal sent to the parent on exit (SIGCHLD,
    -1 for threads), not the signal that killed it. When it is sent the task is a zombie,
    so /proc/PID is usually still readable until the parent reaps it.
    """

    ts_ns: int
    pid: int
    tgid: int
    status: int
    exit_signal: int
    # 0 when unknown: old kernels, or the parent reaped the task before the event was sent
    parent_pid: int = 0
    parent_tgid: int = 0

    @property
    def is_thread(self) -> bool:
        return self.pid != self.tgid

    @property
    def exit_code(self) -> int | None:
        return decode_exit_status(self.status)[0]

    @property
    def signal(self) -> int | None:
        return decode_exit_status(self.status)[1]

    @property
    def core_dumped(self) -> bool:
        return decode_exit_status(self.status)[2]


@dataclass(frozen=True, slots=True)
class CommEvent:
    """A task changed its name (prctl PR_SET_NAME or a write to /proc/PID/comm).

    execve() does not send one: read the name from /proc on :class:`ExecEvent`.
    """

    ts_ns: int
    pid: int
    tgid: int
    comm: str

    @property
    def is_thread(self) -> bool:
        return self.pid != self.tgid


@dataclass(frozen=True, slots=True)
class EventsLost:
    """In-band marker: the kernel dropped events at this point of the stream.

    ``reason``: ``"enobufs"`` (our receive buffer overflowed; count unknown),
    ``"overrun"`` (an NLMSG_OVERRUN message), or ``"gap"`` (a hole of ``count`` events in
    the kernel's per-CPU sequence numbers, which also catches allocation failures that
    ENOBUFS never reports). After one, whatever the caller knows is stale: resynchronise
    from /proc. ``ts_ns`` is CLOCK_MONOTONIC when the loss was noticed.
    """

    ts_ns: int
    reason: str
    count: int | None = None


ProcEvent: TypeAlias = ForkEvent | ExecEvent | ExitEvent | CommEvent
ConnectorEvent: TypeAlias = ProcEvent | EventsLost


# --- decoding ------------------------------------------------------------------------------


@dataclass(slots=True)
class DecodeStats:
    """Counters kept while decoding; never reset by the decoder (read them, diff them)."""

    datagrams: int = 0
    messages: int = 0  # netlink messages seen
    events: int = 0  # events returned (fork/exec/exit/comm)
    acks: int = 0  # PROC_EVENT_NONE: replies to LISTEN/IGNORE requests (anyone's)
    ignored: int = 0  # uid/gid/sid/ptrace/coredump and unknown kinds
    ignored_kinds: dict[str, int] = field(default_factory=dict)
    malformed: int = 0  # truncated or inconsistent input (the rest of a datagram is skipped)
    foreign: int = 0  # connector messages for another connector user (not CN_IDX_PROC)
    errors: int = 0  # NLMSG_ERROR with a non-zero error
    lost_markers: int = 0  # EventsLost markers produced by decoding (overrun, gap)
    missed: int = 0  # events known missing from per-CPU sequence gaps


def parse_datagram(data: bytes, stats: DecodeStats | None = None) -> list[ConnectorEvent]:
    """Decode one datagram (one or more netlink messages) into events. Pure; never raises.

    Garbage and truncated input are counted in ``stats.malformed`` and skipped. Loss is
    reported in-band only for NLMSG_OVERRUN here; sequence gaps need a :class:`Decoder`.
    """
    out: list[ConnectorEvent] = []
    _decode(data, stats if stats is not None else DecodeStats(), out, None, None)
    return out


class Decoder:
    """Stateful decoder: :func:`parse_datagram` plus loss detection across datagrams.

    The kernel numbers its proc events per CPU (``cn_msg.seq``); a hole in one CPU's
    numbers is events we never received, reported as ``EventsLost("gap", n)`` at the place
    it was noticed. Feed datagrams in the order they were received.
    """

    __slots__ = ("stats", "_last_seq", "_acks")

    def __init__(self, stats: DecodeStats | None = None) -> None:
        self.stats = stats if stats is not None else DecodeStats()
        self._last_seq: dict[int, int] = {}
        #: (ack, err) of every PROC_EVENT_NONE seen, when someone wants them (open())
        self._acks: list[tuple[int, int]] | None = None

    def feed(self, data: bytes, out: list[ConnectorEvent] | None = None) -> list[ConnectorEvent]:
        """Decode ``data`` and append its events to ``out`` (a new list if None); return it."""
        if out is None:
            out = []
        _decode(data, self.stats, out, self._last_seq, self._acks)
        return out

    def reset_sequence(self) -> None:
        """Forget the per-CPU sequence baselines (call after a re-subscribe)."""
        self._last_seq.clear()

    def watch_acks(self) -> list[tuple[int, int]]:
        """Start recording ``(ack, err)`` of subscription replies; returns the live list."""
        self._acks = []
        return self._acks

    def unwatch_acks(self) -> None:
        """Stop recording subscription replies."""
        self._acks = None


def _decode(
    data: bytes,
    stats: DecodeStats,
    out: list[ConnectorEvent],
    last_seq: dict[int, int] | None,
    acks: list[tuple[int, int]] | None,
) -> None:
    stats.datagrams += 1
    try:
        _decode_messages(data, stats, out, last_seq, acks)
    except Exception:  # noqa: BLE001 - a decoder fed by the kernel must never take us down
        # Every path above bounds-checks, so this is a bug or truly absurd input; count it.
        stats.malformed += 1


def _decode_messages(
    data: bytes,
    stats: DecodeStats,
    out: list[ConnectorEvent],
    last_seq: dict[int, int] | None,
    acks: list[tuple[int, int]] | None,
) -> None:
    size = len(data)
    off = 0
    while off + _NLMSG_HDRLEN <= size:
        nl_len, nl_type, _flags, _nl_seq, _nl_pid = _NLMSGHDR.unpack_from(data, off)
        if nl_len < _NLMSG_HDRLEN or off + nl_len > size:
            stats.malformed += 1
            return
        stats.messages += 1
        if nl_type == NLMSG_DONE or nl_type >= 0x10:
            # The connector sends its payload in NLMSG_DONE messages (one per event); a
            # DONE too short to hold a cn_msg is a plain end-of-multipart marker.
            if nl_len > _NLMSG_HDRLEN or nl_type != NLMSG_DONE:
                _decode_cn(data, off, nl_len, stats, out, last_seq, acks)
        elif nl_type == NLMSG_ERROR:
            if nl_len >= _NLMSG_HDRLEN + _NLMSGERR.size:
                if _NLMSGERR.unpack_from(data, off + _NLMSG_HDRLEN)[0] != 0:
                    stats.errors += 1
            else:
                stats.malformed += 1
        elif nl_type == NLMSG_OVERRUN:
            stats.lost_markers += 1
            out.append(EventsLost(time.clock_gettime_ns(time.CLOCK_MONOTONIC), "overrun"))
        # NLMSG_NOOP and reserved types: nothing to do
        off += (nl_len + 3) & ~3  # NLMSG_ALIGN
    if off < size:
        # bytes left that can't hold a header (padding was skipped by the aligned step)
        stats.malformed += 1


def _decode_cn(
    data: bytes,
    off: int,
    nl_len: int,
    stats: DecodeStats,
    out: list[ConnectorEvent],
    last_seq: dict[int, int] | None,
    acks: list[tuple[int, int]] | None,
) -> None:
    if nl_len < _NLMSG_HDRLEN + _CN_HDRLEN:
        stats.malformed += 1
        return
    if nl_len < _BODY_OFF:
        # a cn_msg, but too short for a proc_event: can't be ours if the id differs
        idx, val = struct.unpack_from("=II", data, off + _CN_OFF)
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
    if cn_len > nl_len - _NLMSG_HDRLEN - _CN_HDRLEN or cn_len < _EV_HEADLEN:
        stats.malformed += 1
        return
    body = off + _BODY_OFF
    body_len = cn_len - _EV_HEADLEN

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
        stats.acks += 1
        if acks is not None:
            err = struct.unpack_from("=I", data, body)[0] if body_len >= 4 else 0
            acks.append((cn_ack, err))
        return
    else:
        kind = IGNORED_KINDS.get(what, f"0x{what:x}")
        stats.ignored += 1
        stats.ignored_kinds[kind] = stats.ignored_kinds.get(kind, 0) + 1
        return
    stats.events += 1


def _request(op: int, ack: int) -> bytes:
    """A LISTEN/IGNORE request: nlmsghdr + cn_msg + the 4-byte op (all kernels accept it)."""
    payload = struct.pack("=I", op)
    cn = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, ack, len(payload), 0) + payload
    return _NLMSGHDR.pack(_NLMSG_HDRLEN + len(cn), NLMSG_DONE, 0, 0, 0) + cn


# --- the socket ----------------------------------------------------------------------------


class ConnectorError(OSError):
    """The proc connector can't be opened or subscribed to; ``str()`` says why, for a log."""


class ProcConnector(NetlinkListener[ConnectorEvent]):
    """A non-blocking subscription to the kernel's process events.

    Use from asyncio::

        conn = ProcConnector().open()
        loop.add_reader(conn.fileno(), lambda: handle(conn.read_events()))

    or from a thread: ``while conn.wait_readable(1.0) is not None: handle(conn.read_events())``.
    One reader at a time; call ``close()`` from the reading thread or once it has stopped.
    A datagram is about one event, which ``read_events``'s ``max_datagrams`` counts.

    Loss never raises: it arrives as an :class:`EventsLost` marker in the returned list
    and is counted in ``lost`` (markers: ENOBUFS, overrun, gap), ``enobufs`` (the kernel
    dropped events, count unknown) and ``stats.missed`` (events known missing).

    The socket mechanics (``fileno``, ``rcvbuf``, ``closed``, ``wait_readable``,
    ``read_events``, ``close``, the context manager) are
    :class:`~procstream.nlsocket.NetlinkListener`'s; this class is the connector's
    subscription (LISTEN, waiting for the kernel's acknowledgement, IGNORE) and decoding.
    """

    def __init__(
        self,
        *,
        rcvbuf: int = DEFAULT_RCVBUF,
        recv_size: int = 65536,
        force_rcvbuf: bool = True,
    ) -> None:
        super().__init__(rcvbuf=rcvbuf, force_rcvbuf=force_rcvbuf)
        self._recv_size = recv_size
        self._subscribed = False
        self._ack = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        self.stats = DecodeStats()
        self._decoder = Decoder(self.stats)

    # -- lifecycle

    def open(self, *, confirm: bool = True, timeout: float = 1.0) -> ProcConnector:
        """Create, bind and subscribe; with ``confirm``, wait for the kernel's acknowledgement.

        Without the acknowledgement a subscription can fail silently (the kernel ignores
        requests from a child PID or user namespace), so keep ``confirm`` unless you know.
        Raises :class:`ConnectorError` with a reason fit for a log. Returns ``self``.
        """
        if self._sock is not None:
            return self
        sock = self._create_socket(
            socket.SOCK_DGRAM, NETLINK_CONNECTOR, ConnectorError,
            "cannot create a NETLINK_CONNECTOR socket ({}); "
            "is the kernel built with CONFIG_CONNECTOR and CONFIG_PROC_EVENTS?",
        )  # fmt: skip
        try:
            self._set_rcvbuf(sock)
            try:
                sock.bind((0, 1 << (CN_IDX_PROC - 1)))
            except OSError as exc:
                raise ConnectorError(
                    exc.errno, f"cannot join the proc events group ({error_text(exc)}); "
                    "kernels before 6.6 need root or CAP_NET_ADMIN"
                ) from exc
            # Connected to the kernel (port 0), the socket refuses unicast datagrams from other
            # processes, which could otherwise forge events; multicast is unaffected.
            sock.connect((0, 0))
            sock.setblocking(False)
            self._sock = sock
            # a new subscription: sequence numbers since the last one are not a gap
            self._decoder.reset_sequence()
            acks = self._decoder.watch_acks() if confirm else None
            try:
                sock.send(_request(PROC_CN_MCAST_LISTEN, self._ack))
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    raise ConnectorError(
                        exc.errno, "the kernel's connector refused us: this process is not "
                        "in the initial network namespace (a container needs host networking)"
                    ) from exc
                raise ConnectorError(exc.errno, f"cannot subscribe ({error_text(exc)})") from exc
            self._subscribed = True
            if acks is not None:
                self._await_ack(acks, timeout)
        except BaseException:
            self._subscribed = False
            self._sock = None
            sock.close()
            raise
        finally:
            self._decoder.unwatch_acks()
        return self

    def _await_ack(self, acks: list[tuple[int, int]], timeout: float) -> None:
        assert self._sock is not None
        want = (self._ack + 1) & 0xFFFFFFFF
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        while True:
            for ack, err in acks:
                if ack == want:
                    if err:
                        raise ConnectorError(
                            err, f"the kernel refused the subscription "
                            f"({errno.errorcode.get(err, err)}: {os.strerror(err)}); "
                            "kernels before 6.6 need root or CAP_NET_ADMIN"
                        )
                    return
            acks.clear()  # other processes' subscriptions are acknowledged to us too
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectorError(
                    errno.ETIMEDOUT,
                    f"no acknowledgement from the kernel within {timeout:g} s: this "
                    "process is probably in a child PID or user namespace (the kernel "
                    "ignores those), or the kernel lacks CONFIG_PROC_EVENTS",
                )
            if poller.poll(max(1, int(left * 1000))):
                # events that arrive before the ack are kept for the first read_events()
                self._read(256, self._pending)

    def _unsubscribe(self, sock: socket.socket) -> None:
        subscribed, self._subscribed = self._subscribed, False
        if subscribed:
            # The kernel counts listeners globally; without IGNORE the count leaks.
            sock.send(_request(PROC_CN_MCAST_IGNORE, self._ack))

    # -- reading (the loop is NetlinkListener._read)

    def _receiver(
        self, sock: socket.socket
    ) -> tuple[Callable[[int], bytes], int, Callable[[bytes, list[ConnectorEvent]], object]]:
        # a bytes object per datagram, straight into the stateful decoder
        return sock.recv, self._recv_size, self._decoder.feed

    def _lost(self, ts_ns: int, reason: str, count: int | None) -> EventsLost:
        return EventsLost(ts_ns, reason, count)


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


def probe(procfs_mount: str = "/proc", *, require_privilege: bool = True) -> tuple[bool, str]:
    """Can procstream use the proc connector here? ``(ok, reason)``; the reason is a log line.

    Call once at start-up (``--source auto|netlink``). Checks, in order: root or
    CAP_NET_ADMIN (skip with ``require_privilege=False``: kernels since 6.6 let anyone
    listen); the initial user and PID namespaces (the kernel silently ignores other
    listeners, and reports pids as the host sees them); that ``procfs_mount`` is a procfs
    of that PID namespace (so event pids are its directories, even at /host/proc); the
    initial network namespace; then it opens and subscribes for real, waiting for the
    kernel's acknowledgement, and closes again.
    """
    prefix = "netlink proc connector unavailable: "
    if not hasattr(socket, "AF_NETLINK"):
        return False, prefix + "not Linux (no AF_NETLINK)"

    euid = os.geteuid()
    cap = _has_cap_net_admin()
    if require_privilege and euid != 0 and cap is not True:
        return False, prefix + "not root and no CAP_NET_ADMIN"

    why = _namespace_problem()
    if why:
        return False, prefix + why

    why = _procfs_problem(procfs_mount)
    if why:
        return False, prefix + why

    why = _netns_problem(procfs_mount)
    if why:
        return False, prefix + why

    try:
        ProcConnector(rcvbuf=64 * 1024).open(confirm=True, timeout=1.0).close()
    except ConnectorError as exc:
        return False, prefix + (exc.strerror or str(exc))
    except OSError as exc:
        return False, prefix + f"unexpected error opening it ({error_text(exc)})"

    who = "root" if euid == 0 else ("CAP_NET_ADMIN" if cap else f"uid {euid}")
    return True, (
        f"netlink proc connector available ({who}, initial namespaces, "
        f"{procfs_mount} is the host's procfs)"
    )


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
