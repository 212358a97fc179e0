"""The socket both kernel sources are: a non-blocking netlink listener.

:class:`NetlinkListener` is the machine that the proc connector
(:class:`~procstream.netlink.connector.ProcConnector`) and TASKSTATS
(:class:`~procstream.netlink.taskstats.TaskstatsListener`) share: the socket, its receive
buffer, the receive loop that turns a buffer overflow into an in-band
:class:`~procstream.netlink.messages.EventsLost`, the wait for the kernel's answer to a
request, and closing. A subclass brings its subscription and its decoder.

Also here: what a probe returns (:class:`Probe`), the errors the sources raise
(:class:`NetlinkError`), and the socket facts both need (:func:`socket_drops`,
:func:`outside_initial_netns`).

Linux only, but the module imports anywhere: without AF_NETLINK, opening fails with a
reason.
"""

from __future__ import annotations

import errno
import os
import platform
import select
import socket
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Final, Generic, NamedTuple, Self, TypeVar

from .messages import DecodeStats, EventsLost, MessageDecoder

__all__ = [
    "NetlinkListener",
    "NetlinkError",
    "Probe",
    "SO_RCVBUFFORCE",
    "SO_MEMINFO",
    "socket_drops",
    "outside_initial_netns",
    "opening_problem",
    "platform_problem",
    "error_text",
    "errno_text",
]


# --- socket options Python 3.11 does not name ---------------------------------------------


def _exotic_socket_numbers() -> bool:
    """alpha, parisc and sparc number their socket options their own way (and without
    AF_NETLINK there is no Linux to ask)."""
    machine = platform.machine().lower()
    return machine.startswith(("alpha", "parisc", "sparc")) or not hasattr(socket, "AF_NETLINK")


def _socket_option(name: str, generic: int) -> int | None:
    """The socket module's number for ``name`` when it has one, else its number on every
    architecture that uses the generic numbering; None where we can't know it."""
    value = getattr(socket, name, None)
    if value is not None:
        return int(value)
    return None if _exotic_socket_numbers() else generic


#: sets a receive buffer beyond net.core.rmem_max (needs CAP_NET_ADMIN); Python 3.12 names it
SO_RCVBUFFORCE: Final = _socket_option("SO_RCVBUFFORCE", 33)
#: a socket's memory counters, among them its drops (Linux 4.12+)
SO_MEMINFO: Final = _socket_option("SO_MEMINFO", 55)
_SK_MEMINFO_DROPS: Final = 8  # index in the u32[SK_MEMINFO_VARS] array
_SK_MEMINFO_VARS: Final = 9
_U32 = struct.Struct("=I")


def socket_drops(sock: socket.socket) -> int | None:
    """The socket's drop counter (SO_MEMINFO's SK_MEMINFO_DROPS, a u32 that wraps), None
    if unknown. Netlink counts there every message it could not queue for us."""
    if SO_MEMINFO is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * _SK_MEMINFO_VARS)
    except OSError:
        return None
    if len(raw) < 4 * (_SK_MEMINFO_DROPS + 1):
        return None
    return int(_U32.unpack_from(raw, 4 * _SK_MEMINFO_DROPS)[0])


# --- where the kernel sources work ---------------------------------------------------------

# The initial network namespace has a fixed inode on recent kernels
# (include/linux/proc_ns.h); on older ones a mismatch proves nothing.
_PROC_NET_INIT_INO: Final = 0xEFFFFFF9


def outside_initial_netns(procfs_mount: str = "/proc") -> bool:
    """True when this process is provably outside the initial network namespace, the only
    one where the proc connector exists and TASKSTATS delivers; False when it is inside,
    or when that can't be told (then the kernel's answer to a subscription decides).

    Compared with pid 1's namespace (through ``procfs_mount``) when we may read it; a
    fixed init inode proves we are inside on recent kernels."""
    try:
        ours = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    if ours.st_ino == _PROC_NET_INIT_INO:
        return False
    try:
        init = os.stat(os.path.join(procfs_mount, "1", "ns", "net"))
    except OSError:
        return False  # pid 1's links are often unreadable (ptrace rules)
    return (init.st_dev, init.st_ino) != (ours.st_dev, ours.st_ino)


# --- errors and probes ---------------------------------------------------------------------


def errno_text(err: int) -> str:
    """``"EPERM: Operation not permitted"`` for an errno number, for a log line."""
    return f"{errno.errorcode.get(err, str(err))}: {os.strerror(err)}"


def error_text(exc: BaseException) -> str:
    """An exception as a log line says it: its errno's name and text when it has one."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code in errno.errorcode:
        return errno_text(code)
    return str(exc) or type(exc).__name__


class NetlinkError(OSError):
    """A kernel source can't be opened or subscribed to; ``strerror`` says why, for a log."""


class Probe(NamedTuple):
    """Whether a kernel source can be used here; ``reason`` is a log line either way."""

    ok: bool
    reason: str

    @classmethod
    def refused(cls, source: str, why: str) -> Probe:
        return cls(False, f"{source} unavailable: {why}")


def platform_problem() -> str | None:
    """Why no kernel source can work on this platform at all (None: it is Linux)."""
    return None if hasattr(socket, "AF_NETLINK") else "not Linux (no AF_NETLINK)"


def opening_problem(open_: Callable[[], object]) -> str | None:
    """Why ``open_()`` failed, as a probe's reason says it; None when it did not."""
    try:
        open_()
    except NetlinkError as exc:
        return exc.strerror or str(exc)
    except OSError as exc:
        return f"unexpected error opening it ({error_text(exc)})"
    return None


# --- the listener ----------------------------------------------------------------------------

R = TypeVar("R")


class NetlinkListener(ABC, Generic[R]):
    """A non-blocking netlink socket the kernel sends records ``R`` to; base of the sources.

    Read it from asyncio (``loop.add_reader(x.fileno(), ...)``, then ``read_events()``)
    or from a thread (``while x.wait_readable(1.0) is not None: x.read_events()``), one
    reader at a time; call ``close()`` from the reading thread or once it has stopped.
    Loss never raises: it arrives in-band as an :class:`EventsLost`, and is counted in
    ``lost`` (markers) and ``enobufs`` (receive buffer overflows).

    A subclass sets :attr:`Error` and :attr:`DEFAULT_RCVBUF`, and implements ``open()``
    with :meth:`_open` (which creates the socket and calls back to subscribe; the
    subscription sends with :meth:`_send`, waits with :meth:`_await_answer` and sets
    ``_subscribed``) and :meth:`_unsubscribe`. It may replace :meth:`_receiver` (how a
    datagram is received) and :meth:`_drop_count` (how many messages a loss is).
    """

    #: what open() raises when the kernel refuses; ``strerror`` is the reason
    Error: ClassVar[type[NetlinkError]] = NetlinkError
    #: the receive buffer asked for when none is given (the kernel doubles it): enough to
    #: ride out a burst while the reader is busy
    DEFAULT_RCVBUF: ClassVar[int]

    def __init__(
        self,
        decoder: MessageDecoder[R],
        *,
        rcvbuf: int | None = None,
        recv_size: int = 65536,
        force_rcvbuf: bool = True,
    ) -> None:
        self._decoder = decoder
        #: the decoder's counters (the subclass's kind of DecodeStats)
        self.stats: DecodeStats = decoder.stats
        self._rcvbuf_request = self.DEFAULT_RCVBUF if rcvbuf is None else rcvbuf
        self._recv_size = recv_size
        self._force = force_rcvbuf
        self._sock: socket.socket | None = None
        #: the kernel sends to us until we tell it to stop (close() does)
        self._subscribed = False
        #: records read while waiting for an answer, handed out first by read_events()
        self._pending: list[R | EventsLost] = []
        #: loss markers handed out (from ENOBUFS and from decoding)
        self.lost = 0
        #: ENOBUFS errors seen on recv (the kernel dropped messages for us)
        self.enobufs = 0

    # -- what a subclass brings

    @abstractmethod
    def open(self) -> Self:
        """Create, bind and subscribe (the subclass's protocol); returns ``self``."""

    @abstractmethod
    def _unsubscribe(self, sock: socket.socket) -> None:
        """Tell the kernel to stop sending. close() calls it once per subscription, with
        the socket it is closing; an OSError is ignored, as nothing better can be done
        while closing."""

    def _receiver(
        self, sock: socket.socket
    ) -> tuple[Callable[[Any], Any], Any, Callable[[Any, list[R | EventsLost]], object]]:
        """``(receive, arg, decode)``: the read loop takes each datagram with
        ``receive(arg)`` (whose exceptions go through: BlockingIOError when nothing is
        queued) and hands what it returned to ``decode(it, out)``, which appends the
        records. Called once per read, so the hot loop makes no other call of its own.

        By default a bytes object per datagram, straight into the decoder."""
        return sock.recv, self._recv_size, self._decoder.feed

    def _drop_count(self, sock: socket.socket) -> int | None:
        """How many messages the kernel dropped since last asked, for an ENOBUFS marker's
        ``count``; None (the default): unknown."""
        return None

    # -- opening

    @classmethod
    def _create_socket(cls, sock_type: int, protocol: int, failure: str) -> socket.socket:
        """A new AF_NETLINK socket of ``protocol``; if the kernel (or the platform) has none,
        raise :attr:`Error` with ``failure``'s ``{}`` replaced by the reason."""
        try:
            return socket.socket(socket.AF_NETLINK, sock_type, protocol)
        except (OSError, AttributeError) as exc:
            code = getattr(exc, "errno", None) or errno.EPROTONOSUPPORT
            raise cls.Error(code, failure.format(error_text(exc))) from exc

    def _set_rcvbuf(self, sock: socket.socket) -> None:
        """Ask for the requested receive buffer (the kernel doubles it)."""
        size = self._rcvbuf_request
        if self._force and SO_RCVBUFFORCE is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
                return
            except PermissionError:
                pass  # no CAP_NET_ADMIN: what net.core.rmem_max allows
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def _open(
        self, sock_type: int, protocol: int, failure: str, subscribe: Callable[[socket.socket], None]
    ) -> Self:
        """The body of a subclass's ``open()``: a non-blocking socket with the receive
        buffer asked for, then ``subscribe(sock)`` (which binds it with :meth:`_bind`).
        If anything fails the socket is closed and the listener left closed."""
        if self._sock is not None:
            return self
        sock = self._create_socket(sock_type, protocol, failure)
        self._sock = sock
        try:
            sock.setblocking(False)
            self._set_rcvbuf(sock)
            subscribe(sock)
        except BaseException:
            self._sock = None
            self._subscribed = False
            self._pending.clear()
            sock.close()
            raise
        return self

    @staticmethod
    def _bind(sock: socket.socket, groups: int) -> None:
        """Bind to the multicast ``groups`` (a bit mask; 0: unicast only) and connect to
        the kernel: a connected socket refuses unicast datagrams from other processes,
        which could otherwise forge records. Multicast from the kernel is unaffected."""
        sock.bind((0, groups))
        sock.connect((0, 0))

    def _send(self, message: bytes) -> None:
        self._open_sock().send(message)

    def _await_answer(self, token: int, deadline: float, what: str) -> int | None:
        """Read until the decoder has met the kernel's answer ``token``: its errno (0: done),
        or None once ``deadline`` (time.monotonic()) has passed.

        Records that arrive meanwhile are decoded as always and kept for the first
        read_events(); a receive error other than ENOBUFS raises :attr:`Error`, saying
        ``what`` failed.
        """
        sock = self._open_sock()
        decoder = self._decoder
        decoder.acks = acks = []
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        try:
            while True:
                for got, err in acks:
                    if got == token:
                        return err
                acks.clear()  # answers to other requests (the kernel may send us others')
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if poller.poll(max(1, int(left * 1000))):
                    try:
                        self._read(256, self._pending)
                    except OSError as exc:
                        raise self.Error(exc.errno, f"{what} failed ({error_text(exc)})") from exc
        finally:
            decoder.acks = None

    # -- lifecycle

    def close(self) -> None:
        """Unsubscribe (so the kernel stops sending to us) and close. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        subscribed, self._subscribed = self._subscribed, False
        try:
            if subscribed:
                self._unsubscribe(sock)
        except OSError:
            pass
        finally:
            self._pending.clear()
            sock.close()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading

    @property
    def closed(self) -> bool:
        return self._sock is None

    def _open_sock(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            raise ValueError(f"{type(self).__name__} is not open")
        return sock

    def fileno(self) -> int:
        """The socket's file descriptor, for ``loop.add_reader`` / select / poll."""
        return self._open_sock().fileno()

    @property
    def rcvbuf(self) -> int:
        """Effective receive buffer in bytes, as the kernel reports it (already doubled)."""
        return self._open_sock().getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def wait_readable(self, timeout: float | None) -> bool | None:
        """For thread readers: block until data is ready (True), timeout (False), or the
        socket is closed (None)."""
        sock = self._sock
        if sock is None:
            return None
        if self._pending:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000))
        return bool(poller.poll(ms))

    def read_events(self, max_datagrams: int = 1024) -> list[R | EventsLost]:
        """Read what is queued now, without blocking; ``[]`` when nothing is.

        Reads at most ``max_datagrams`` datagrams so one call stays short on an event
        loop; if it read that many, more may be waiting (with ``loop.add_reader`` the
        callback simply fires again). Raises ValueError when not open.
        """
        self._open_sock()
        if self._pending:
            out, self._pending = self._pending, []
        else:
            out = []
        self._read(max_datagrams, out)
        return out

    def _read(self, max_datagrams: int, out: list[R | EventsLost]) -> None:
        """Receive and decode up to ``max_datagrams`` datagrams into ``out``."""
        sock = self._sock
        assert sock is not None
        receive, arg, decode = self._receiver(sock)
        stats = self.stats
        markers_before = stats.lost_markers
        for _ in range(max_datagrams):
            try:
                data = receive(arg)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # The kernel reports an overflow once, then keeps delivering what it
                    # still has queued: note it in-band and go on reading.
                    out.append(self._enobufs(sock))
                    continue
                raise
            decode(data, out)
        self.lost += stats.lost_markers - markers_before

    def _enobufs(self, sock: socket.socket) -> EventsLost:
        """Count a receive buffer overflow; its marker."""
        ts_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.enobufs += 1
        self.lost += 1
        return EventsLost(ts_ns, "enobufs", self._drop_count(sock))
