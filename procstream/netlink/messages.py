"""Netlink messages as both kernel sockets receive them.

A datagram from the kernel holds one or more netlink messages, each a ``nlmsghdr``
followed by its payload, 4-byte aligned. :class:`MessageDecoder` walks them: the walk
handles netlink's own control messages (an error or acknowledgement, an overrun, an end
marker) the same way for every protocol, and hands each protocol message to the
subclass. The walk never raises: what does not add up is counted in
:class:`DecodeStats` and skipped, since the input comes from the kernel and a decoder
that raises would take the reader down with it.

Also here, because both protocols report them: :class:`EventsLost`, the in-band marker
for messages the kernel dropped, and how an exit's wait status reads
(:func:`decode_exit_status`, :class:`ExitStatus`).
"""

from __future__ import annotations

import struct
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Final, Generic, TypeAlias, TypeVar

__all__ = [
    "NLMSG_NOOP",
    "NLMSG_ERROR",
    "NLMSG_DONE",
    "NLMSG_OVERRUN",
    "NLMSG_MIN_TYPE",
    "NLMSG_HDRLEN",
    "NLMSGHDR",
    "Buffer",
    "EventsLost",
    "DecodeStats",
    "MessageDecoder",
    "ExitStatus",
    "decode_exit_status",
]

# linux/netlink.h
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4
NLMSG_MIN_TYPE: Final = 0x10  # the first type a protocol's own messages can have

#: nlmsghdr: len, type, flags, seq, pid. Netlink is host-endian: "=" is native order with
#: standard sizes and no padding.
NLMSGHDR: Final = struct.Struct("=IHHII")
NLMSG_HDRLEN: Final = NLMSGHDR.size
_ERRNO = struct.Struct("=i")  # the negative errno that starts an NLMSG_ERROR payload

#: what a datagram can be read from: recv() gives bytes, recv_into() a buffer's view
Buffer: TypeAlias = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class EventsLost:
    """In-band marker: the kernel dropped messages at this point of the stream.

    ``reason``:

    - ``"enobufs"``: our receive buffer overflowed. ``count`` is how many messages the
      kernel dropped when the socket can tell (TASKSTATS), else None;
    - ``"overrun"``: an NLMSG_OVERRUN message; ``count`` is None;
    - ``"gap"``: a hole of ``count`` events in the proc connector's per-CPU sequence
      numbers, which also catches drops that no ENOBUFS reports.

    After one, whatever the reader knows is stale or incomplete: resynchronise from
    /proc. ``ts_ns`` is CLOCK_MONOTONIC when the loss was noticed (for a gap, the
    timestamp of the event that revealed it).
    """

    ts_ns: int
    reason: str
    count: int | None = None


@dataclass(slots=True)
class DecodeStats:
    """Counters kept while decoding, never reset by the decoder (read them, diff them).

    These are the ones every netlink protocol has; each socket's stats add their own.
    """

    datagrams: int = 0
    messages: int = 0  # netlink messages seen
    acks: int = 0  # answers to requests: NLMSG_ERROR 0, or the protocol's own kind
    errors: int = 0  # NLMSG_ERROR with a non-zero error
    foreign: int = 0  # messages for another user of the protocol
    ignored: int = 0  # well-formed messages or attributes we have no use for
    malformed: int = 0  # truncated or inconsistent input (the rest of it is skipped)
    lost_markers: int = 0  # EventsLost markers produced by decoding


R = TypeVar("R")


class MessageDecoder(ABC, Generic[R]):
    """Decodes datagrams into a protocol's records ``R`` and :class:`EventsLost` markers.

    :meth:`feed` walks the messages; a subclass implements :meth:`_message` for the
    protocol's own. While ``acks`` is a list, every answer to a request is appended to
    it as ``(token, errno)``: for NLMSG_ERROR the token is the message's sequence number
    (a subclass may add answers of its own kind). A listener sets it while it waits for
    an answer and resets it to None after, so that it stays bounded.
    """

    __slots__ = ("stats", "acks")

    def __init__(self, stats: DecodeStats) -> None:
        self.stats = stats
        self.acks: list[tuple[int, int]] | None = None

    @abstractmethod
    def _message(
        self, data: Buffer, off: int, end: int, nl_type: int, nl_seq: int, out: list[R | EventsLost]
    ) -> None:
        """Decode one protocol message, ``data[off:end]`` from its nlmsghdr on, and append
        what it holds to ``out``. Bounds-check everything: count what does not fit in
        ``self.stats.malformed`` rather than raise."""

    def feed(self, data: Buffer, out: list[R | EventsLost] | None = None) -> list[R | EventsLost]:
        """Decode one datagram and append its records to ``out`` (a new list if None);
        return it. Never raises."""
        if out is None:
            out = []
        stats = self.stats
        stats.datagrams += 1
        message = self._message
        size = len(data)
        off = 0
        try:
            while off + NLMSG_HDRLEN <= size:
                nl_len, nl_type, _flags, nl_seq, _pid = NLMSGHDR.unpack_from(data, off)
                if nl_len < NLMSG_HDRLEN or off + nl_len > size:
                    stats.malformed += 1
                    return out
                stats.messages += 1
                if nl_type >= NLMSG_MIN_TYPE or (nl_type == NLMSG_DONE and nl_len > NLMSG_HDRLEN):
                    # A DONE with a body is a protocol message: the proc connector sends
                    # every event as one. Bare, it only ends a multipart answer.
                    message(data, off, off + nl_len, nl_type, nl_seq, out)
                elif nl_type == NLMSG_ERROR:
                    self._error(data, off, nl_len, nl_seq, stats)
                elif nl_type == NLMSG_OVERRUN:
                    stats.lost_markers += 1
                    out.append(EventsLost(time.clock_gettime_ns(time.CLOCK_MONOTONIC), "overrun"))
                # NLMSG_NOOP, a bare NLMSG_DONE and reserved types carry nothing
                off += (nl_len + 3) & ~3  # NLMSG_ALIGN
        except Exception:  # noqa: BLE001 - the kernel's input must never take the reader down
            # Every path bounds-checks, so this is a bug or truly absurd input; count it.
            stats.malformed += 1
            return out
        if off < size:
            # bytes left that can't hold a header (the aligned step skipped padding)
            stats.malformed += 1
        return out

    def _error(self, data: Buffer, off: int, nl_len: int, nl_seq: int, stats: DecodeStats) -> None:
        """An NLMSG_ERROR: the answer to request ``nl_seq``, 0 for success."""
        if nl_len < NLMSG_HDRLEN + _ERRNO.size:
            stats.malformed += 1
            return
        err = -_ERRNO.unpack_from(data, off + NLMSG_HDRLEN)[0]
        if err:
            stats.errors += 1
        else:
            stats.acks += 1
        if self.acks is not None:
            self.acks.append((nl_seq, err))


def decode_exit_status(status: int) -> tuple[int | None, int | None, bool]:
    """``(exit_code, signal, core_dumped)`` from a wait status, as waitpid() would say it.

    ``exit 7`` -> ``(7, None, False)``; SIGKILL -> ``(None, 9, False)``; a segfault with a
    core dump -> ``(None, 11, True)``. A status that is neither (stopped or continued,
    which an exit never carries) -> ``(None, None, False)``.
    """
    low = status & 0x7F
    if low == 0:
        return (status >> 8) & 0xFF, None, False
    if low != 0x7F:
        return None, low, bool(status & 0x80)
    return None, None, False


class ExitStatus:
    """How an exit record's wait status ``status`` reads, as waitpid() would say it.

    Both sockets' exit records mix this in, so that they read alike.
    """

    __slots__ = ()
    status: int

    @property
    def exit_code(self) -> int | None:
        """As ``WEXITSTATUS``; None when a signal killed the task."""
        return decode_exit_status(self.status)[0]

    @property
    def signal(self) -> int | None:
        """As ``WTERMSIG``: the signal that killed the task; None for a normal exit."""
        return decode_exit_status(self.status)[1]

    @property
    def core_dumped(self) -> bool:
        return decode_exit_status(self.status)[2]
