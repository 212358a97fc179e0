"""The server's TCP connections, from the accept to the close: how many are open, what a
request that can't be read gets back, and the WebSocket side of ``/ws``.

A :class:`Connection` is the asyncio protocol of one accepted socket. It speaks HTTP and
WebSocket through websockets' Sans-I/O :class:`~websockets.server.ServerProtocol` (the
parsing, the handshake, the framing rules and the closing handshake are websockets'),
and does the I/O itself, with no task per connection: a socket is something that reacts
to bytes and to one timer, and that is all it holds.

- **A connection holds what it needs and nothing more.** Until its first byte, a socket
  is its transport, this object and a timer for the opening deadline. Once open, a
  client is that plus websockets' protocol and its subscriber in the hub: no handler or
  keepalive task, no message queue, no handshake headers. What a thousand clients hold
  at once, Python's allocator mostly keeps after they are gone.
- **Deadlines.** The handshake must be done ``open_timeout`` after the accept (a
  slowloris gets no more). An open connection is pinged every ``ping_interval``; no
  pong ``ping_timeout`` after the ping closes it with 1011. A ping waits while the write
  buffer is full, as websockets' keepalive does. A closing handshake that the
  peer does not finish within ``close_timeout`` (it stopped reading, say) ends with the
  TCP connection aborted.
- **Back-pressure.** The hub writes frames straight into the transport while its write
  buffer is below ``write_limit``; past it, the connection pulls the subscriber's
  pending frames each time the buffer drains (``resume_writing``), one connection's pace
  never holding up another.
- **Counting sockets** (:class:`Sockets`). Each accepted socket holds a file descriptor
  until it closes, also when its peer never sends a request (a half-open or slowloris
  client). Past ``limit`` open sockets, the oldest one that has still not sent its
  request is closed to make room: a descriptor limit is then never reached by idle
  sockets, so the listening socket keeps accepting, and every client that does send a
  request gets an answer (a 503 when the server has all the WebSocket clients it
  takes), never a reset.
- **Requests that can't be read.** websockets answers those for a WebSocket handshake
  ("Failed to open a WebSocket connection") or not at all (a request with a body). The
  same port serves plain HTTP, so the answers here say what was wrong in HTTP terms:
  414 for a request line over 8 KiB, 431 for headers too large or too many, 405 for a
  method with a body other than GET and HEAD, 400 for the rest. The body is read and
  discarded, never left unread: closing a socket with unread data would reset it.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import http
import logging
import os
import socket
import struct
import termios
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Final
from typing import Protocol as Interface

from websockets.exceptions import InvalidMessage, RequestLineTooLong, SecurityError
from websockets.frames import BINARY, CONT, PONG, TEXT, CloseCode, Frame
from websockets.http11 import Request, Response
from websockets.protocol import CONNECTING, OPEN, Protocol
from websockets.server import ServerProtocol

from ..stats import Stats
from ..stream.fanout import text_frame
from ..stream.hub import Subscriber

__all__ = ["Connection", "Handler", "Listener", "SocketStats", "Sockets"]

log = logging.getLogger(__name__)

_NO_BODY_METHODS: Final = (b"GET", b"HEAD")
# Where struct tcp_info keeps tcpi_bytes_acked (Linux >= 4.1), and how much to ask for.
_BYTES_ACKED: Final = 120
_TCP_INFO_LEN: Final = _BYTES_ACKED + 8


@dataclass(slots=True)
class SocketStats(Stats):
    """The server's sockets: ``open`` now; totals of sockets ``closed`` (whoever closed
    them), of idle sockets closed to make room and of requests refused because they could
    not be read."""

    open: int = 0
    closed: int = 0
    idle_closed: int = 0
    unreadable_requests: int = 0


class _Socket(Interface):
    def abort(self) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class Sockets:
    """The open sockets, oldest first, and which of them have sent their request."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.stats = SocketStats()
        self._waiting: collections.OrderedDict[_Socket, None] = collections.OrderedDict()
        self._open: set[_Socket] = set()

    def __iter__(self) -> Iterator[_Socket]:
        """Every open socket (a copy: closing them changes the set)."""
        return iter(list(self._open))

    def opened(self, sock: _Socket) -> None:
        self._open.add(sock)
        self._waiting[sock] = None
        self.stats.open = len(self._open)
        while len(self._open) > self.limit and self._waiting:
            idle = next(iter(self._waiting))
            if idle is sock and len(self._waiting) == 1:
                break  # nothing idle but the newcomer: it may still send its request
            if idle is sock:
                self._waiting.move_to_end(sock)
                continue
            self._forget(idle)
            self.stats.idle_closed += 1
            idle.abort()

    def refused(self) -> None:
        """A request that could not be read was answered with an error status."""
        self.stats.unreadable_requests += 1

    def requested(self, sock: _Socket) -> None:
        """``sock`` sent its request: it is no longer idle."""
        self._waiting.pop(sock, None)

    def closed(self, sock: _Socket) -> None:
        self._forget(sock)
        self.stats.closed += 1

    def _forget(self, sock: _Socket) -> None:
        self._open.discard(sock)
        self._waiting.pop(sock, None)
        self.stats.open = len(self._open)


class _Protocol(ServerProtocol):
    """websockets' server protocol, with plain HTTP answers to requests it can't read."""

    def __init__(self, sockets: Sockets, max_size: int | None) -> None:
        self.sockets = sockets
        super().__init__(max_size=max_size)

    def parse(self) -> Generator[None]:
        if self.state is not CONNECTING:
            yield from super().parse()
            return
        first: list[bytes] = []

        def read_line(*args: Any) -> Generator[None, None, bytes | bytearray]:
            line = yield from self.reader.read_line(*args)
            if not first:
                first.append(bytes(line))
            return line

        try:
            request = yield from Request.parse(read_line)
        except EOFError as exc:  # closed before a whole request: nobody to answer
            self.handshake_exc = InvalidMessage("connection closed before a request")
            self.handshake_exc.__cause__ = exc
            self.send_eof()
            self.parser = self.discard()
            next(self.parser)
            yield
            return
        except Exception as exc:
            self.handshake_exc = exc
            self._refuse(exc, first[0] if first else b"")
            yield
            return
        if self.debug:  # as websockets does (the token filter hides secrets in these)
            self.logger.debug("< %s %s %s", request.method, request.path, request.protocol)
            for key, value in request.headers.raw_items():
                self.logger.debug("< %s: %s", key, value)
        self.events.append(request)
        # This frame lives as long as the connection: it must not hold the request.
        del request, first, read_line
        # the frames that follow: what ServerProtocol.parse() hands over to as well
        yield from Protocol.parse(self)

    def _refuse(self, exc: Exception, request_line: bytes) -> None:
        self.sockets.refused()
        method = request_line.split(b" ", 1)[0]
        headers: dict[str, str] = {}
        if isinstance(exc, RequestLineTooLong):
            status, text = http.HTTPStatus.REQUEST_URI_TOO_LONG, "the request line is longer than 8 KiB"
        elif isinstance(exc, SecurityError):  # a header line too long, too many headers
            status, text = (http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "the request headers are too large or too many")
        elif isinstance(exc, (ValueError, NotImplementedError)) and str(exc) in (
            "unsupported request body", "transfer codings aren't supported"
        ):
            if method in _NO_BODY_METHODS:
                status, text = http.HTTPStatus.BAD_REQUEST, f"a {method.decode()} request has no body"
            else:
                status, text = http.HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed"
                headers["Allow"] = "GET, HEAD"
        else:
            status, text = http.HTTPStatus.BAD_REQUEST, "malformed HTTP request"
        response = self.reject(status, text + "\n")
        for key, value in headers.items():
            response.headers[key] = value
        # send_response() then discards whatever else comes (a body) until the peer closes
        self.send_response(response)


class Handler(Interface):
    """What a :class:`Listener` asks of the server; each method is called on the loop."""

    async def respond(self, conn: Connection, request: Request) -> Response | None:
        """The answer to ``request``: a response, or None to accept a WebSocket
        handshake. Must not raise."""

    def opened(self, conn: Connection) -> None:
        """The handshake of ``conn`` is done (answered 101): attach it to the hub."""

    def received(self, conn: Connection, message: str | bytes) -> None:
        """A whole message from an open connection (``str`` for a text one)."""

    def closed(self, conn: Connection) -> None:
        """An opened connection is gone (called once, after :meth:`opened`)."""


@dataclass(slots=True)
class Listener:
    """What the connections of one server share: its handler, sockets and limits."""

    handler: Handler
    sockets: Sockets
    open_timeout: float | None = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float | None = 3.0
    #: write buffer size (bytes) past which writing pauses
    write_limit: int = 64 * 1024
    #: inbound messages bigger than this close the connection with 1009
    max_size: int | None = 4096
    server_header: str | None = None
    #: False once the server closes: a handshake still in progress gets 503
    serving: bool = True
    _all_closed: asyncio.Event | None = field(default=None, init=False)

    def __call__(self) -> Connection:
        """The protocol factory for ``loop.create_server``."""
        return Connection(self)

    async def shut(self, code: int, reason: str) -> None:
        """Close every socket: open WebSockets with ``code`` and ``reason``, silent ones
        now, those being answered after their answer (a 503 for a handshake); whatever
        is still open ``close_timeout`` later is aborted. Returns once all are closed."""
        self.serving = False
        if not self.sockets.stats.open:
            return
        self._all_closed = asyncio.Event()
        for sock in self.sockets:
            sock.close(code, reason)
        try:
            await asyncio.wait_for(self._all_closed.wait(), self.close_timeout)
        except TimeoutError:
            for sock in self.sockets:
                sock.abort()
            await self._all_closed.wait()

    def closed(self, conn: Connection) -> None:
        """``conn``'s socket is closed (from its ``connection_lost``)."""
        self.sockets.closed(conn)
        if self._all_closed is not None and not self.sockets.stats.open:
            self._all_closed.set()


class Connection(asyncio.Protocol):
    """One accepted socket (see the module's docstring), and the hub's
    :class:`~procstream.stream.hub.Transport` for it once it is an open WebSocket.

    ``protocol`` is websockets' Sans-I/O protocol, made at the first byte; ``path`` the
    request's path and query once read; ``subscriber`` what the handler attached.
    """

    __slots__ = ("listener", "transport", "protocol", "path", "subscriber", "is_open",
                 "_timer", "_closing", "_task", "_early", "_message", "_ping", "_ping_waits",
                 "_paused", "_pulling", "_pull_due")

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.protocol: _Protocol | None = None
        self.path = ""
        self.subscriber: Subscriber | None = None
        #: the handshake is done and the handler's ``opened`` was called
        self.is_open = False
        # The one timer a connection has at a time: the opening deadline, the next
        # keepalive ping or its deadline, or the closing deadline.
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False  # the closing deadline is set
        self._task: asyncio.Task[None] | None = None  # answering the request
        self._early: list[Frame] | None = None  # frames that came with the request
        self._message: tuple[bool, bytearray] | None = None  # (text?, fragments so far)
        self._ping: bytes | None = None  # the keepalive ping still unanswered
        self._ping_waits = False  # a ping is due once the write buffer drains
        self._paused = False  # the write buffer is past the limit
        self._pulling = False  # woken: the subscriber has frames to pull
        self._pull_due = False  # a pull is scheduled

    def __repr__(self) -> str:
        return f"<Connection {self.remote_address} {self.path[:60]!r}>"

    @property
    def remote_address(self) -> Any:
        """The peer's address (``(host, port)`` for TCP); None once closed."""
        return None if self.transport is None else self.transport.get_extra_info("peername")

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(self.listener.write_limit, self.listener.write_limit // 4)
        self.listener.sockets.opened(self)
        if self.listener.open_timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(self.listener.open_timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol is None:
            protocol = self.protocol = _Protocol(self.listener.sockets, self.listener.max_size)
        protocol.receive_data(data)
        events = protocol.events_received()
        self._send()
        for event in events:
            if isinstance(event, Request):
                self._answer(event)
            elif isinstance(event, Frame):
                if protocol.state is CONNECTING:  # came with the request: read once answered
                    if self._early is None:
                        self._early = []
                    self._early.append(event)
                else:
                    self._received(event)

    def eof_received(self) -> None:
        if self.protocol is not None:
            self.protocol.receive_eof()
            self._send()
        # returning None closes the transport: nothing is written after the peer's EOF

    def connection_lost(self, exc: Exception | None) -> None:
        listener = self.listener
        listener.closed(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
        if self.protocol is not None:
            self.protocol.receive_eof()  # idempotent: the state is CLOSED now
            # Its parser holds the protocol (a cycle): closed, reference counting frees
            # the connection now rather than at the next full collection.
            self.protocol.parser.close()
        if self.is_open:
            self.is_open = False
            listener.handler.closed(self)
        self.subscriber = None
        self.transport = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._ping_waits:
            self._ping_waits = False
            self._send_ping()
        if self._pulling:
            self._pull()

    # -- the hub's Transport -----------------------------------------------------------

    def writable(self) -> bool:
        """Open, and writing not paused (it pauses past ``write_limit`` bytes in the
        buffer, until they drained to a quarter of that)."""
        protocol = self.protocol
        return protocol is not None and protocol.state is OPEN and not self._paused

    def write(self, frame: bytes) -> bool:
        """Write a text frame now (``websockets.broadcast``'s technique, framed once for
        every connection that gets the same bytes: :func:`text_frame`)."""
        transport = self.transport
        protocol = self.protocol
        if transport is None or protocol is None or protocol.state is not OPEN:
            return False
        try:
            # Nothing else is pending in the protocol between callbacks (every callback
            # here hands over what it has at its end), so this frame is in order.
            transport.write(text_frame(frame))
        except Exception:  # closed under our feet: connection_lost() detaches us
            return False
        return True

    def try_write(self, frame: bytes) -> int:
        """:meth:`writable` then :meth:`write`, in one call (the hub's hot path)."""
        protocol = self.protocol
        if protocol is None or protocol.state is not OPEN:
            return -1  # closing or closed: about to be detached
        if self._paused:
            return 0
        return 1 if self.write(frame) else -1

    def buffered(self) -> int:
        """Bytes in the write buffer, not yet taken by the kernel."""
        try:
            return self.transport.get_write_buffer_size() if self.transport is not None else 0
        except Exception:  # closed under our feet: it holds nothing any more
            return 0

    def unacked(self) -> int:
        """Bytes the kernel holds for the peer that it has not acknowledged (SIOCOUTQ).

        On loopback a socket's send buffer grows to megabytes: a client that stopped
        reading can have everything sent to it sitting there, with nothing left in our
        own write buffer to show it."""
        sock = self._tcp_socket()
        if sock is None:
            return 0
        try:
            raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except (OSError, ValueError):
            return 0
        queued: int = struct.unpack("i", raw)[0]
        return queued

    def acked(self) -> int:
        """Bytes the peer has acknowledged since the connection opened (TCP_INFO):
        whether it is still taking what it is sent."""
        sock = self._tcp_socket()
        if sock is None:
            return 0
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        except (OSError, ValueError):
            return 0
        if len(info) < _TCP_INFO_LEN:
            return 0
        acked: int = struct.unpack_from("Q", info, _BYTES_ACKED)[0]
        return acked

    def wake(self) -> None:
        """The subscriber has frames the fast path could not write: pull them as the
        write buffer drains (first at the loop's next turn, never inside the hub's call)."""
        self._pulling = True
        if not self._pull_due and not self._paused:
            self._pull_due = True
            asyncio.get_running_loop().call_soon(self._pull)

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake with ``code`` (aborting after ``close_timeout``
        if the peer does not finish it); a socket whose handshake is not done yet is
        just closed."""
        protocol = self.protocol
        if protocol is not None and protocol.state is OPEN:
            protocol.send_close(code, reason)
            self._send()
        elif protocol is None or (protocol.state is CONNECTING and self._task is None):
            self.abort()  # (a request being answered gets its answer, then closes)

    def abort(self) -> None:
        """Close the TCP connection now, without a closing handshake."""
        if self.transport is not None:
            self.transport.abort()

    # -- internals ---------------------------------------------------------------------

    def _send(self) -> None:
        """Write what the protocol has to send; arm the closing deadline once the TCP
        connection is expected to close."""
        protocol = self.protocol
        transport = self.transport
        if protocol is None or transport is None:
            return
        for data in protocol.data_to_send():
            try:
                if data:
                    transport.write(data)
                elif transport.can_write_eof():
                    transport.write_eof()  # half-close: the peer then closes its side
                else:  # TLS: no half-close
                    transport.close()
            except Exception:  # the transport is gone or failing: end it
                transport.abort()
                return
        if not self._closing and protocol.close_expected():
            self._closing = True
            self._set_timer(self.listener.close_timeout, self.abort)

    def _set_timer(self, delay: float | None, callback: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if delay is None else asyncio.get_running_loop().call_later(delay, callback)

    def _expire(self) -> None:
        """The opening deadline: a socket still silent or still in its handshake goes."""
        self._timer = None
        if self.protocol is None or self.protocol.state is CONNECTING:
            self.abort()

    def _answer(self, request: Request) -> None:
        self.listener.sockets.requested(self)
        self.path = request.path
        assert self.transport is not None
        self.transport.pause_reading()  # nothing more is read until it is answered
        self._task = asyncio.get_running_loop().create_task(self._respond(request))

    async def _respond(self, request: Request) -> None:
        listener = self.listener
        protocol = self.protocol
        assert protocol is not None  # it read the request
        try:
            response = await listener.handler.respond(self, request)
        except Exception:  # the handler's bug: answered as websockets would
            log.exception("answering %s %s failed", request.method, request.path[:200])
            response = protocol.reject(http.HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error\n")
        self._task = None
        if self.transport is None or protocol.state is not CONNECTING:
            return  # gone meanwhile
        if response is None:
            response = protocol.accept(request)
            if response.status_code == http.HTTPStatus.SWITCHING_PROTOCOLS and not listener.serving:
                response = protocol.reject(http.HTTPStatus.SERVICE_UNAVAILABLE, "Server is shutting down.\n")
        if listener.server_header is not None:
            response.headers["Server"] = listener.server_header
        protocol.send_response(response)
        if protocol.state is OPEN:
            self._set_timer(None, None)  # the opening deadline: done in time
            self._send()
            self.is_open = True
            try:
                listener.handler.opened(self)
            except Exception:  # the handler's bug: closed as websockets would
                log.exception("opening a WebSocket connection failed")
                self.close(CloseCode.INTERNAL_ERROR, "internal server error")
            if not self._closing and listener.ping_interval is not None:
                self._set_timer(listener.ping_interval, self._keepalive)
            early, self._early = self._early, None
            for frame in early or ():
                self._received(frame)
        else:
            self._send()
        if self.transport is not None:
            self.transport.resume_reading()

    def _received(self, frame: Frame) -> None:
        protocol = self.protocol
        assert protocol is not None
        opcode = frame.opcode
        if opcode is PONG:
            if frame.data == self._ping:
                self._ping = None
            return
        if opcode is TEXT or opcode is BINARY:
            if not frame.fin:
                self._message = (opcode is TEXT, bytearray(frame.data))
                return
            text, data = opcode is TEXT, frame.data
        elif opcode is CONT and self._message is not None:
            self._message[1].extend(frame.data)
            if not frame.fin:
                return
            (text, buf), self._message = self._message, None
            data = bytes(buf)
        else:  # a ping or a close: the protocol answered it
            return
        if protocol.state is not OPEN:
            return  # closing: what comes now is not read
        message: str | bytes = data
        if text:
            try:
                message = data.decode()
            except UnicodeDecodeError as exc:
                protocol.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                self._send()
                return
        try:
            self.listener.handler.received(self, message)
        except Exception:  # the handler's bug: closed as websockets would
            log.exception("handling a WebSocket message failed")
            self.close(CloseCode.INTERNAL_ERROR, "internal server error")

    def _keepalive(self) -> None:
        """Every ``ping_interval``: a ping; ``ping_timeout`` later, its pong must be in."""
        self._timer = None
        self._send_ping()

    def _send_ping(self) -> None:
        protocol = self.protocol
        if protocol is None or protocol.state is not OPEN:
            return
        if self._paused:
            # Behind a full buffer the ping would time out on a peer that is only slow:
            # it goes once the buffer drains (one that never does is the hub's to close).
            self._ping_waits = True
            return
        listener = self.listener
        self._ping = os.urandom(4)
        protocol.send_ping(self._ping)
        self._send()
        if listener.ping_timeout is None:
            self._ping = None  # nothing waits for it
            self._set_timer(listener.ping_interval, self._keepalive)
        else:
            self._set_timer(listener.ping_timeout, self._pong_due)

    def _pong_due(self) -> None:
        self._timer = None
        protocol = self.protocol
        if protocol is None or protocol.state is not OPEN:
            return
        if self._ping is not None:
            protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            self._send()
            return
        interval, timeout = self.listener.ping_interval, self.listener.ping_timeout
        assert interval is not None and timeout is not None
        self._set_timer(max(0.0, interval - timeout), self._keepalive)

    def _pull(self) -> None:
        """Write the subscriber's pending frames until the write buffer is full or the
        subscriber has none left (then it waits for the next :meth:`wake`)."""
        self._pull_due = False
        sub = self.subscriber
        while self._pulling and not self._paused and sub is not None:
            frame = sub.next_frame()
            if frame is None or not self.write(frame):
                self._pulling = False  # nothing left, or the peer is gone

    def _tcp_socket(self) -> socket.socket | None:
        # TCP only: the kernel's queue of a unix socket says nothing about the peer
        sock = None if self.transport is None else self.transport.get_extra_info("socket")
        return sock if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) else None
