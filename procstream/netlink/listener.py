"""What procstream's two kernel sockets share: a non-blocking netlink listener, low level.

:class:`~procstream.netlink.ProcConnector` (the proc connector) and
:class:`~procstream.taskstats.TaskstatsListener` (TASKSTATS exit accounting) are the same
machine around a different conversation with the kernel. This module is the machine:

- :class:`NetlinkListener`, their base class: the socket with a receive buffer forced
  past ``net.core.rmem_max`` when we may, ``fileno()``, ``rcvbuf``, ``closed``,
  ``wait_readable()``, ``read_events()`` (what the subscription step already read comes
  first), the non-blocking receive loop that turns ENOBUFS into an in-band loss marker,
  ``close()`` and the context manager. A subclass brings only what is its own: ``open()``
  (its subscription), how one datagram is received and decoded, its loss marker type,
  and how it says goodbye to the kernel;
- netlink framing shared by their decoders (``NLMSG_*``, :data:`NLMSGHDR`);
- socket option numbers Python 3.11 does not name (:data:`SO_RCVBUFFORCE`,
  :data:`SO_MEMINFO`) and :func:`socket_drops`, a socket's kernel drop counter;
- :func:`decode_exit_status`, the wait status both sockets report at exit;
- :func:`outside_initial_netns`, the one network namespace both kernel sources live in;
- :func:`error_text` / :func:`errno_text`, errors as a log line says them.

Stdlib only, nothing else of procstream. Linux only (the module imports anywhere).
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
from typing import Any, Final, Generic, Protocol, Self, TypeVar

__all__ = [
    "NetlinkListener",
    "NLMSG_NOOP",
    "NLMSG_ERROR",
    "NLMSG_DONE",
    "NLMSG_OVERRUN",
    "NLMSG_MIN_TYPE",
    "NLMSG_HDRLEN",
    "NLMSGHDR",
    "SO_RCVBUFFORCE",
    "SO_MEMINFO",
    "socket_drops",
    "decode_exit_status",
    "outside_initial_netns",
    "error_text",
    "errno_text",
]

# --- netlink framing (linux/netlink.h) -----------------------------------------------------

NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4
NLMSG_MIN_TYPE: Final = 0x10  # first type a family (or the connector) can have

#: nlmsghdr: len, type, flags, seq, pid. Netlink is host-endian: "=" is native order with
#: standard sizes and no padding.
NLMSGHDR: Final = struct.Struct("=IHHII")
NLMSG_HDRLEN: Final = NLMSGHDR.size  # 16


# --- socket options Python 3.11 does not name ---------------------------------------------


def _exotic_socket_numbers() -> bool:
    """alpha, parisc and sparc number their socket options their own way (and without
    AF_NETLINK there is no Linux to ask)."""
    machine = platform.machine().lower()
    return machine.startswith(("alpha", "parisc", "sparc")) or not hasattr(socket, "AF_NETLINK")


def _so_rcvbufforce() -> int | None:
    """SO_RCVBUFFORCE: the socket module names it from Python 3.12 on; 33 is its number on
    every architecture that uses the generic socket numbers (all but alpha, parisc, sparc)."""
    value = getattr(socket, "SO_RCVBUFFORCE", None)
    if value is not None:
        return int(value)
    return None if _exotic_socket_numbers() else 33


def _so_meminfo() -> int | None:
    """SO_MEMINFO (Linux 4.12+; not named by Python 3.11): 55 on the generic numbering."""
    value = getattr(socket, "SO_MEMINFO", None)
    if value is not None:
        return int(value)
    return None if _exotic_socket_numbers() else 55


#: SO_RCVBUFFORCE's number here, None where we can't know it
SO_RCVBUFFORCE: Final = _so_rcvbufforce()
#: SO_MEMINFO's number here, None where we can't know it
SO_MEMINFO: Final = _so_meminfo()
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


# --- what both kernel sources report ------------------------------------------------------


def decode_exit_status(status: int) -> tuple[int | None, int | None, bool]:
    """``(exit_code, signal, core_dumped)`` from a wait status, as waitpid() would say it.

    ``exit 7`` -> ``(7, None, False)``; SIGKILL -> ``(None, 9, False)``; a segfault with a
    core dump -> ``(None, 11, True)``. A status that is neither (stopped/continued, which
    an exit never carries) -> ``(None, None, False)``.
    """
    low = status & 0x7F
    if low == 0:
        return (status >> 8) & 0xFF, None, False
    if low != 0x7F:
        return None, low, bool(status & 0x80)
    return None, None, False


# The initial network namespace has a fixed inode on recent kernels
# (include/linux/proc_ns.h); on older ones a mismatch proves nothing.
_PROC_NET_INIT_INO: Final = 0xEFFFFFF9


def outside_initial_netns(procfs_mount: str = "/proc") -> bool:
    """True when this process is provably outside the initial network namespace, the only
    one where the proc connector exists and TASKSTATS delivers; False when it is inside,
    or when that can't be told (call the kernel's answer to a subscription the judge).

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


def errno_text(err: int) -> str:
    """``"EPERM: Operation not permitted"`` for an errno number, for a log line."""
    return f"{errno.errorcode.get(err, str(err))}: {os.strerror(err)}"


def error_text(exc: BaseException) -> str:
    """An exception as a log line says it: its errno's name and text when it has one."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code in errno.errorcode:
        return errno_text(code)
    return str(exc) or type(exc).__name__


# --- the listener ----------------------------------------------------------------------------


class _Stats(Protocol):
    """What the base needs of a subclass's decode counters."""

    lost_markers: int


E = TypeVar("E")


class NetlinkListener(ABC, Generic[E]):
    """A non-blocking netlink socket the kernel sends to; base of the kernel sources.

    Read it from asyncio (``loop.add_reader(x.fileno(), ...)``, then ``read_events()``)
    or from a thread (``while x.wait_readable(1.0) is not None: x.read_events()``), one
    reader at a time; call ``close()`` from the reading thread or once it has stopped.
    Loss never raises: it arrives in-band as the subclass's loss marker, and is counted in
    ``lost`` (markers) and ``enobufs`` (receive buffer overflows).

    A subclass sets ``self.stats`` (with a ``lost_markers`` counter its decoder raises for
    each loss marker it emits) and implements ``open()`` (create with
    :meth:`_create_socket`, size with :meth:`_set_rcvbuf`, subscribe, set ``self._sock``;
    what it reads meanwhile goes to ``self._pending``), :meth:`_receiver`, :meth:`_lost`
    and :meth:`_unsubscribe`; :meth:`_drop_count` only if it can count what was lost.
    """

    stats: _Stats

    def __init__(self, *, rcvbuf: int, force_rcvbuf: bool) -> None:
        self._rcvbuf_request = rcvbuf
        self._force = force_rcvbuf
        self._sock: socket.socket | None = None
        #: read during subscription, handed out first by read_events()
        self._pending: list[E] = []
        #: number of loss markers handed out (from ENOBUFS and from decoding)
        self.lost = 0
        #: ENOBUFS errors seen on recv (the kernel dropped messages for us)
        self.enobufs = 0

    # -- what a subclass brings

    @abstractmethod
    def open(self) -> Self:
        """Create, bind and subscribe (the subclass's protocol); returns ``self``."""

    @abstractmethod
    def _receiver(
        self, sock: socket.socket
    ) -> tuple[Callable[[Any], Any], Any, Callable[[Any, list[E]], object]]:
        """``(receive, arg, decode)``: the loop takes each datagram with ``receive(arg)``
        (``sock.recv`` and a size, or ``sock.recv_into`` and a reused buffer; its
        exceptions go through, BlockingIOError when nothing is queued) and hands what it
        returned to ``decode(it, out)``, which appends the items. Called once per
        read_events(); the hot loop then makes no call of its own beyond these two."""

    @abstractmethod
    def _lost(self, ts_ns: int, reason: str, count: int | None) -> E:
        """The subclass's in-band loss marker."""

    @abstractmethod
    def _unsubscribe(self, sock: socket.socket) -> None:
        """Tell the kernel to stop sending (called by close(), once, with the socket that
        is being closed; an OSError is ignored). Forget the subscription here."""

    def _drop_count(self, sock: socket.socket) -> int | None:
        """How many messages the kernel dropped since last asked, for an ENOBUFS marker's
        ``count``; None (the default): unknown."""
        return None

    # -- helpers for open()

    @staticmethod
    def _create_socket(
        sock_type: int, protocol: int, error: type[OSError], failure: str
    ) -> socket.socket:
        """A new AF_NETLINK socket of ``protocol``; if the kernel (or the platform) has none,
        raise ``error`` with ``failure``'s ``{}`` replaced by the reason."""
        try:
            return socket.socket(socket.AF_NETLINK, sock_type, protocol)
        except (OSError, AttributeError) as exc:
            code = getattr(exc, "errno", None) or errno.EPROTONOSUPPORT
            raise error(code, failure.format(error_text(exc))) from exc

    def _set_rcvbuf(self, sock: socket.socket) -> None:
        """Ask for the requested receive buffer (the kernel doubles it)."""
        size = self._rcvbuf_request
        if self._force and SO_RCVBUFFORCE is not None:
            try:
                # beyond net.core.rmem_max; needs CAP_NET_ADMIN
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
                return
            except PermissionError:
                pass
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def _enobufs(self, sock: socket.socket | None) -> E:
        """Count a receive buffer overflow; its marker, with the kernel's drop count when
        ``sock`` is given and the subclass counts drops."""
        ts_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.enobufs += 1
        self.lost += 1
        return self._lost(ts_ns, "enobufs", None if sock is None else self._drop_count(sock))

    # -- lifecycle

    def close(self) -> None:
        """Unsubscribe (so the kernel stops sending to us) and close. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
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

    def read_events(self, max_datagrams: int = 1024) -> list[E]:
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

    def _read(self, max_datagrams: int, out: list[E]) -> None:
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
