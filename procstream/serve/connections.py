"""The server's TCP connections: how many are open, and what a request that can't be read
gets back.

websockets accepts every TCP connection and reads its HTTP request itself; four things
about that are decided here, in the connection factory the server hands it:

- **A socket is cheap until it speaks.** Until its first byte, an accepted socket is a
  transport and a small :class:`_Silent` protocol with a timer for the opening
  deadline, not a websockets connection with its handler task, futures and parser
  (about 3 KiB instead of 10: a thousand half-open sockets would otherwise grow the
  heap by 9 MiB, which Python's allocator keeps after they are gone). The first byte
  makes it a websockets connection; the handshake still has to be done
  ``open_timeout`` after the socket was accepted.
- **A connection holds no more than it needs.** Its handshake headers go once the
  handshake is over (2-5 KiB a connection would otherwise hold for its whole life).
- **Counting sockets.** Each accepted socket holds a file descriptor until it closes,
  also when its peer never sends a request (a half-open or slowloris client). Past
  ``limit`` open sockets, the oldest one that has still not sent its request is closed
  to make room: a descriptor limit is then never reached by idle sockets, so the
  listening socket keeps accepting, and every client that does send a request gets an
  answer (a 503 when the server has all the WebSocket clients it takes), never a reset.
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
import dataclasses
import http
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Final

from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage, RequestLineTooLong, SecurityError
from websockets.http11 import Request
from websockets.protocol import CONNECTING, Protocol
from websockets.server import ServerProtocol

from ..stats import Stats

__all__ = ["SocketStats", "Sockets", "connection_class"]

_NO_BODY_METHODS: Final = (b"GET", b"HEAD")


@dataclass(slots=True)
class SocketStats(Stats):
    """The server's sockets: ``open`` now; totals of sockets ``closed`` (whoever closed
    them), of idle sockets closed to make room and of requests refused because they could
    not be read."""

    open: int = 0
    closed: int = 0
    idle_closed: int = 0
    unreadable_requests: int = 0


class Sockets:
    """The open sockets (their transports), oldest first, and which of them have sent
    their request."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.stats = SocketStats()
        self._waiting: collections.OrderedDict[asyncio.BaseTransport, None] = collections.OrderedDict()
        self._open: set[asyncio.BaseTransport] = set()

    def opened(self, transport: asyncio.BaseTransport) -> None:
        self._open.add(transport)
        self._waiting[transport] = None
        self.stats.open = len(self._open)
        while len(self._open) > self.limit and self._waiting:
            idle = next(iter(self._waiting))
            if idle is transport and len(self._waiting) == 1:
                break  # nothing idle but the newcomer: it may still send its request
            if idle is transport:
                self._waiting.move_to_end(transport)
                continue
            self._forget(idle)
            self.stats.idle_closed += 1
            idle.abort()  # type: ignore[attr-defined]

    def refused(self) -> None:
        """A request that could not be read was answered with an error status."""
        self.stats.unreadable_requests += 1

    def requested(self, transport: asyncio.BaseTransport) -> None:
        """The socket of ``transport`` sent its request: it is no longer idle."""
        self._waiting.pop(transport, None)

    def closed(self, transport: asyncio.BaseTransport) -> None:
        self._forget(transport)
        self.stats.closed += 1

    def abort_silent(self) -> None:
        """Close every socket that has sent nothing (the server is closing: websockets
        only knows of the others)."""
        for transport in list(self._waiting):
            if isinstance(transport.get_protocol(), _Silent):
                transport.abort()  # type: ignore[attr-defined]

    def _forget(self, transport: asyncio.BaseTransport) -> None:
        self._open.discard(transport)
        self._waiting.pop(transport, None)
        self.stats.open = len(self._open)


class _Protocol(ServerProtocol):
    """websockets' server protocol, with plain HTTP answers to requests it can't read."""

    sockets: Sockets

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


class _Silent(asyncio.Protocol):
    """An accepted socket that has sent nothing yet. Its first bytes make it a websockets
    connection (``make(deadline)``), which takes the transport over; past
    ``open_timeout`` after the accept, a socket still silent or still in its handshake is
    closed."""

    __slots__ = ("_make", "_sockets", "_open_timeout", "_transport", "_deadline")

    def __init__(self, make: Callable[[asyncio.TimerHandle | None], ServerConnection],
                 sockets: Sockets, open_timeout: float | None) -> None:
        self._make = make
        self._sockets = sockets
        self._open_timeout = open_timeout
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._sockets.opened(transport)
        if self._open_timeout is not None:
            self._deadline = asyncio.get_running_loop().call_later(self._open_timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        connection = self._make(self._deadline)
        transport.set_protocol(connection)
        connection.connection_made(transport)
        connection.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        assert self._transport is not None
        self._sockets.closed(self._transport)

    def _expire(self) -> None:
        transport = self._transport
        assert transport is not None
        protocol = transport.get_protocol()
        if protocol is self or (isinstance(protocol, ServerConnection) and protocol.protocol.state is CONNECTING):
            transport.abort()


def connection_class(sockets: Sockets, open_timeout: float | None) -> Callable[..., asyncio.Protocol]:
    """The ``create_connection`` factory for websockets' ``serve()``: a socket is a
    :class:`_Silent` protocol until its first bytes; its connection counts its socket in
    ``sockets`` and answers unreadable requests in plain HTTP. ``open_timeout`` is the
    one given to ``serve()``."""

    class Connection(ServerConnection):
        def __init__(self, protocol: ServerProtocol, *args: Any,
                     deadline: asyncio.TimerHandle | None = None, **kwargs: Any) -> None:
            # The protocol's parser started at its construction; restart it as ours
            # (nothing was received yet, so nothing is lost).
            protocol.__class__ = _Protocol
            protocol.sockets = sockets  # type: ignore[attr-defined]
            protocol.parser = protocol.parse()
            next(protocol.parser)
            super().__init__(protocol, *args, **kwargs)
            #: the opening deadline :class:`_Silent` set at the accept
            self.deadline = deadline

        async def handshake(self, *args: Any, **kwargs: Any) -> None:
            try:
                await super().handshake(*args, **kwargs)
            finally:
                if self.deadline is not None:
                    # done in time, or over: the timer would hold this connection
                    self.deadline.cancel()
                    self.deadline = None
            # The headers were for the request's checks, done now; a connection would
            # otherwise hold them (2-5 KiB) for its whole life.
            if self.request is not None:
                self.request = dataclasses.replace(self.request, headers=Headers())
            if self.response is not None:
                self.response = dataclasses.replace(self.response, headers=Headers(), body=b"")

        def connection_lost(self, exc: Exception | None) -> None:
            sockets.closed(self.transport)
            super().connection_lost(exc)

    def create(protocol: ServerProtocol, server: Server, **kwargs: Any) -> asyncio.Protocol:
        protocol.parser.close()  # its frames are what a silent socket should not hold
        return _Silent(lambda deadline: Connection(protocol, server, deadline=deadline, **kwargs),
                       sockets, open_timeout)

    return create
