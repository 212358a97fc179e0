"""The server's TCP connections: how many are open, and what a request that can't be read
gets back.

websockets accepts every TCP connection and reads its HTTP request itself; two things
about that are decided here, in the connection class the server hands it:

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

import collections
import http
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Final

from websockets.asyncio.server import ServerConnection
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
    """The open sockets, oldest first, and which of them have sent their request."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.stats = SocketStats()
        self._waiting: collections.OrderedDict[ServerConnection, None] = collections.OrderedDict()
        self._open: set[ServerConnection] = set()

    def opened(self, conn: ServerConnection) -> None:
        self._open.add(conn)
        self._waiting[conn] = None
        self.stats.open = len(self._open)
        while len(self._open) > self.limit and self._waiting:
            idle = next(iter(self._waiting))
            if idle is conn and len(self._waiting) == 1:
                break  # nothing idle but the newcomer: it may still send its request
            if idle is conn:
                self._waiting.move_to_end(conn)
                continue
            self._forget(idle)
            self.stats.idle_closed += 1
            idle.transport.abort()

    def refused(self) -> None:
        """A request that could not be read was answered with an error status."""
        self.stats.unreadable_requests += 1

    def requested(self, conn: ServerConnection) -> None:
        """``conn`` sent its request: it is no longer idle."""
        self._waiting.pop(conn, None)

    def closed(self, conn: ServerConnection) -> None:
        self._forget(conn)
        self.stats.closed += 1

    def _forget(self, conn: ServerConnection) -> None:
        self._open.discard(conn)
        self._waiting.pop(conn, None)
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


def connection_class(sockets: Sockets) -> type[ServerConnection]:
    """The ``create_connection`` class for websockets' ``serve()``: counts its sockets in
    ``sockets`` and answers unreadable requests in plain HTTP."""

    class Connection(ServerConnection):
        def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
            # The protocol's parser started at its construction; restart it as ours
            # (nothing was received yet, so nothing is lost).
            protocol.__class__ = _Protocol
            protocol.sockets = sockets  # type: ignore[attr-defined]
            protocol.parser.close()
            protocol.parser = protocol.parse()
            next(protocol.parser)
            super().__init__(protocol, *args, **kwargs)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            sockets.opened(self)

        def connection_lost(self, exc: Exception | None) -> None:
            sockets.closed(self)
            super().connection_lost(exc)

    return Connection
