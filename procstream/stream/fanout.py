"""The thin asyncio layer under the hub: a :class:`~procstream.stream.hub.Transport` over a
websockets connection, the per-connection pump, and the housekeeping timer.

The hub decides *what* to send; this module only moves bytes: the fast path writes a
frame straight into the connection (as ``websockets.broadcast`` does, but framed once
for all the subscribers that get the same bytes: :func:`text_frame`), and when a
connection can't take more, its pump asks the hub for frames one at a time and awaits
``send()``, which waits for the transport to drain — back-pressure for that one client,
never for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
from typing import Final

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from .hub import Hub, Subscriber

__all__ = ["WebSocketTransport", "Housekeeper", "close_bounded", "text_frame"]

log = logging.getLogger(__name__)

_OPEN = State.OPEN
# Where struct tcp_info keeps tcpi_bytes_acked (Linux >= 4.1), and how much to ask for.
_BYTES_ACKED: Final = 120
_TCP_INFO_LEN: Final = _BYTES_ACKED + 8

# The last payload framed, and its frame: a publish writes one payload to many
# connections in a row, so one entry saves all but the first framing and copy.
_last_frame: tuple[bytes, bytes] = (b"", b"\x81\x00")


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked, final text frame (RFC 6455 section 5.2): what a
    server sends on a connection without extensions. The same object passed again
    returns the same frame without building it again."""
    global _last_frame
    last, frame = _last_frame
    if payload is last:
        return frame
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    frame = head + payload
    _last_frame = (payload, frame)
    return frame


async def close_bounded(ws: Connection, code: int, reason: str, timeout: float | None) -> None:
    """``ws.close(code, reason)``, but never longer than ``timeout`` seconds.

    websockets' ``close()`` first waits for the write buffer to drain, without a
    deadline; a peer that stopped reading would hold it (and the server's shutdown)
    forever. After ``timeout`` the TCP connection is aborted instead.
    """
    task = asyncio.ensure_future(ws.close(code, reason))
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except TimeoutError:
        ws.transport.abort()
        # connection_lost() releases the drain, so close() returns promptly now.
        with contextlib.suppress(Exception):
            await task


class WebSocketTransport:
    """Implements the hub's :class:`~procstream.stream.hub.Transport` for one websockets connection.

    ``limit`` is the write-buffer size (bytes) up to which frames are written directly;
    use the connection's ``write_limit`` so the fast path and ``send()``'s own flow
    control agree.
    """

    __slots__ = ("ws", "limit", "close_timeout", "subscriber", "_protocol", "_transport",
                 "_event", "_pump", "_close_task", "_sock")

    def __init__(self, ws: Connection, limit: int, close_timeout: float | None = 3.0) -> None:
        self.ws = ws
        self.limit = limit
        self.close_timeout = close_timeout
        #: what the pump pulls from: set it to what :meth:`Hub.attach` returned for this
        self.subscriber: Subscriber | None = None
        self._protocol = ws.protocol
        self._transport = ws.transport
        # The pump, a task and its event, starts at the first wake: a subscriber the
        # fast path keeps up with never needs one (about 1.7 KiB less per connection).
        self._event: asyncio.Event | None = None
        self._pump: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        sock = ws.transport.get_extra_info("socket")
        # TCP only: the kernel's queue of a unix socket says nothing about the peer
        self._sock = sock if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) else None

    def writable(self) -> bool:
        """Open, and the write buffer is at most ``limit`` bytes."""
        return (
            self._protocol.state is _OPEN
            and self._transport.get_write_buffer_size() <= self.limit
        )

    def write(self, frame: bytes) -> bool:
        """Write a text frame without waiting (``websockets.broadcast``'s technique)."""
        protocol = self._protocol
        try:
            if protocol.extensions or protocol.expect_continuation_frame or protocol.state is not _OPEN:
                # not the plain case text_frame() covers: websockets frames it
                protocol.send_text(frame)
                self.ws.send_data()
            else:
                # Nothing else is pending in the protocol between callbacks (websockets
                # hands over what it has at the end of each), so this frame is in order.
                self._transport.write(text_frame(frame))
        except Exception:  # closed under our feet: the handler will detach us
            return False
        return True

    def try_write(self, frame: bytes) -> int:
        """:meth:`writable` then :meth:`write`, in one call (the hub's hot path)."""
        if self._protocol.state is not _OPEN:
            return -1  # closing or closed: the handler is about to detach us
        if self._transport.get_write_buffer_size() > self.limit:
            return 0
        return 1 if self.write(frame) else -1

    def buffered(self) -> int:
        """Bytes in the connection's write buffer, not yet taken by the kernel."""
        try:
            return self._transport.get_write_buffer_size()
        except Exception:  # closed under our feet: it holds nothing any more
            return 0

    def unacked(self) -> int:
        """Bytes the kernel holds for the peer that it has not acknowledged (SIOCOUTQ).

        On loopback a socket's send buffer grows to megabytes: a client that stopped
        reading can have everything sent to it sitting there, with nothing left in our
        own write buffer to show it."""
        if self._sock is None:
            return 0
        try:
            raw = fcntl.ioctl(self._sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except (OSError, ValueError):
            return 0
        queued: int = struct.unpack("i", raw)[0]
        return queued

    def acked(self) -> int:
        """Bytes the peer has acknowledged since the connection opened (TCP_INFO):
        whether it is still taking what it is sent."""
        if self._sock is None:
            return 0
        try:
            info = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        except (OSError, ValueError):
            return 0
        if len(info) < _TCP_INFO_LEN:
            return 0
        acked: int = struct.unpack_from("Q", info, _BYTES_ACKED)[0]
        return acked

    def wake(self) -> None:
        """Let the pump pull frames from :attr:`subscriber`: starts it the first time."""
        if self._event is None:
            assert self.subscriber is not None, "wake() before the subscriber was set"
            self._event = asyncio.Event()
            self._pump = asyncio.get_running_loop().create_task(self._run_pump(self.subscriber, self._event))
        self._event.set()

    def stop(self) -> None:
        """Stop the pump, if it started (the connection is over)."""
        if self._pump is not None:
            self._pump.cancel()

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (aborting after ``close_timeout`` if the peer
        doesn't read); the connection handler then finishes."""
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(
                close_bounded(self.ws, code, reason, self.close_timeout)
            )

    async def _run_pump(self, sub: Subscriber, event: asyncio.Event) -> None:
        """From the first :meth:`wake` to :meth:`stop`: after each wake, send what the
        hub has for this subscriber, one frame per transport drain."""
        ws = self.ws
        try:
            while True:
                await event.wait()
                event.clear()
                while (frame := sub.next_frame()) is not None:
                    await ws.send(frame, text=True)
        except ConnectionClosed:
            pass


class Housekeeper:
    """Calls :meth:`Hub.tick` every :attr:`Hub.tick_interval` seconds (bookmarks,
    grace periods, buffer age), and gives the hub later turns of the loop for the
    checks a tick left (:meth:`Hub.on_deferred`). :meth:`start` it when serving,
    :meth:`stop` at the end."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            loop = asyncio.get_running_loop()
            self.hub.on_deferred(lambda: loop.call_soon(self._next_turn))
            self._task = loop.create_task(self._run())

    def _next_turn(self) -> None:
        try:
            self.hub.next_turn()
        except Exception:  # a bug here must not stop the next ticks' checks
            log.exception("hub housekeeping failed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.hub.tick_interval)
            try:
                self.hub.tick()
            except Exception:  # a bug here must not stop bookmarks for good
                log.exception("hub housekeeping failed")
