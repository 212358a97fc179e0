"""The procstream server: ``/ws`` and the HTTP routes on one port.

Built on websockets' Sans-I/O protocol, with our own connections
(:mod:`procstream.serve.connections`); knows nothing of /proc. Every request — HTTP or
WebSocket — passes through one seam, ``authorize(request) -> Response | None``, before
routing (the token/Origin checks plug in there). Extra HTTP routes (``/metrics``) are
added with :meth:`ProcstreamServer.add_route`.

What a client sends never raises out of request handling: a request that can't be read
gets a plain HTTP error (:mod:`procstream.serve.connections`), and an unexpected error
in a handler is a 500, counted, with its traceback logged once. Sockets are counted,
idle ones closed past ``max_clients + handshake_slots`` (see ``connections``), so a
client past the limit gets 503, never a reset.

Usage::

    hub = Hub(host=socket.gethostname(), interval=1.0)
    async with ProcstreamServer(hub, ServerConfig(port=8765), health=poller.health) as srv:
        await stop_event.wait()          # leaving the block closes every client with 1001
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import inspect
import logging
import mimetypes
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Union
from urllib.parse import unquote

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..stats import Stats
from ..stream import protocol as P
from ..stream.fanout import Housekeeper
from ..stream.hub import SERVER_NAME, Hub
from ..stream.protocol import (
    AbuseGuard,
    Filter,
    ProtocolError,
    parse_frame,
    parse_query,
)
from .connections import Connection, Listener, Sockets

__all__ = [
    "ProcstreamServer",
    "ServerConfig",
    "ServerStats",
    "Health",
    "Authorize",
    "RouteHandler",
    "http_response",
    "json_response",
    "DEFAULT_WEB_DIR",
]

log = logging.getLogger(__name__)


def _web_dir() -> Path:
    """The viewer: ``procstream/web`` in an installed wheel, ``web/`` in a checkout."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "web"
    return installed if installed.is_dir() else package.parent / "web"


#: The viewer's files (see :func:`_web_dir`).
DEFAULT_WEB_DIR: Final = _web_dir()

#: ``health()`` returns (ok, details): 200 when ok, else 503; details become the JSON body.
Health = Callable[[], tuple[bool, Mapping[str, Any]]]
#: Called for every request first; return a Response to refuse it, None to let it through.
Authorize = Callable[[Request], Union[Response, None, Awaitable[Union[Response, None]]]]
#: An extra HTTP route (exact path, GET/HEAD).
RouteHandler = Callable[[Request], Union[Response, Awaitable[Response]]]

_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
    ".webmanifest": "application/manifest+json",
}

# The viewer's Content-Security-Policy: its own files only, no inline script or style
# (every process-supplied string is text, and this makes an injection inert anyway),
# WebSockets to this origin only ('self' covers ws:/wss: of the same host and port in
# CSP Level 3 browsers; tests/test_viewer.py checks it in Chromium), no framing.
_VIEWER_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)

_PLACEHOLDER: Final = (
    b"<!doctype html><meta charset=utf-8><title>procstream</title>"
    b"<p>procstream is running. The viewer is not installed; "
    b"connect a WebSocket client to <code>/ws</code> "
    b"or fetch <a href=/api/snapshot>/api/snapshot</a>.</p>\n"
)


@dataclass
class ServerConfig:
    """Listening address and limits. ``port=0`` picks a free port (see ``srv.port``)."""

    host: str = "127.0.0.1"
    port: int = 8765
    max_clients: int = 1024
    #: inbound frames are small subscribe requests; bigger → close 1009
    max_message_size: int = 4096
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float | None = 3.0
    open_timeout: float | None = 10.0
    #: write buffer high-water mark per connection; the fast path writes below it
    write_limit: int = 64 * 1024
    #: directory of the viewer; None = the viewer that ships with procstream
    static_dir: str | os.PathLike[str] | None = None
    #: more than this many bad frames within the window → close 1008
    bad_frame_limit: int = 20
    bad_frame_window: float = 10.0
    #: serve https/wss with this context (None: plain http/ws)
    ssl_context: ssl.SSLContext | None = None
    #: sockets beyond max_clients for plain HTTP requests and handshakes in progress;
    #: past max_clients + handshake_slots, the oldest socket without a request is closed
    handshake_slots: int = 128
    #: the listening socket's queue of connections not accepted yet
    backlog: int = 128

    @property
    def descriptors(self) -> int:
        """Descriptors the listening side may hold at most: every socket it keeps open,
        plus what one round of accepting can add before idle ones are closed."""
        return self.max_clients + self.handshake_slots + self.backlog


@dataclass(slots=True)
class ServerStats(Stats):
    """Server-level counters for self-metrics (the hub's are in ``hub.stats``)."""

    connections: int = 0
    connections_total: int = 0
    refused_max_clients: int = 0
    refused_authorize: int = 0
    http_requests: int = 0
    bad_frames: int = 0
    abusive_closes: int = 0
    #: requests that failed in a handler (answered 500)
    internal_errors: int = 0


def http_response(
    status: int,
    body: bytes = b"",
    content_type: str = "text/plain; charset=utf-8",
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A complete HTTP response (for route handlers and ``authorize``)."""
    st = http.HTTPStatus(status)
    h = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("X-Content-Type-Options", "nosniff"),
            ("Cache-Control", "no-cache"),
        ]
    )
    for k, v in (headers or {}).items():
        h[k] = v
    return Response(st.value, st.phrase, h, body)


def json_response(status: int, obj: Any) -> Response:
    """An ``application/json`` response."""
    return http_response(status, orjson.dumps(obj), "application/json")


def _text(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return http_response(status, (message + "\n").encode(), headers=headers)


class ProcstreamServer:
    """The WebSocket + HTTP server over a :class:`~procstream.hub.Hub`.

    ``async with ProcstreamServer(hub, config) as srv`` (or ``await srv.start()`` …
    ``await srv.close()``). Closing closes every client with 1001 and stops the hub's
    housekeeping. uvloop, signals and the producer are the caller's business.
    """

    def __init__(
        self,
        hub: Hub,
        config: ServerConfig | None = None,
        *,
        health: Health | None = None,
        authorize: Authorize | None = None,
        routes: Mapping[str, RouteHandler] | None = None,
    ) -> None:
        self.hub = hub
        self.config = config or ServerConfig()
        self.stats = ServerStats()
        self._health = health
        self._authorize = authorize
        static = self.config.static_dir
        self._static_root = Path(static if static is not None else DEFAULT_WEB_DIR).resolve()
        self._routes: dict[str, RouteHandler] = {
            "/healthz": self._healthz,
            "/api/snapshot": self._api_snapshot,
        }
        self._routes.update(routes or {})
        self._connections: set[Connection] = set()
        # per connection that sent a bad request: when (made at its first)
        self._guards: dict[Connection, AbuseGuard] = {}
        self._server: asyncio.Server | None = None
        self._housekeeper = Housekeeper(hub)
        self.sockets = Sockets(self.config.max_clients + self.config.handshake_slots)
        cfg = self.config
        self._listener = Listener(
            self, self.sockets,
            open_timeout=cfg.open_timeout,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            close_timeout=cfg.close_timeout,
            write_limit=cfg.write_limit,
            max_size=cfg.max_message_size,
            server_header=SERVER_NAME,
        )
        self._errors_logged = False

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening (and the hub's housekeeping timer)."""
        if self._server is not None:
            raise RuntimeError("server already started")
        cfg = self.config
        self._listener.serving = True
        self._server = await asyncio.get_running_loop().create_server(
            self._listener, cfg.host, cfg.port, ssl=cfg.ssl_context, backlog=cfg.backlog)
        self._housekeeper.start()
        log.info("listening on %s:%d%s", cfg.host, self.port, " (TLS)" if cfg.ssl_context is not None else "")

    async def close(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Stop listening, close every client with ``code`` (1001 "going away") and wait
        until every socket is closed. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()  # no more accepts
            # (a peer that stopped reading never finishes its closing handshake: it is
            # aborted close_timeout later)
            await self._listener.shut(code, reason)
            await server.wait_closed()
        await self._housekeeper.stop()

    async def __aenter__(self) -> ProcstreamServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful with ``port=0``)."""
        if self._server is None:
            raise RuntimeError("server not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connections(self) -> set[Connection]:
        """Open ``/ws`` connections (a copy)."""
        return set(self._connections)

    def add_route(self, path: str, handler: RouteHandler) -> None:
        """Serve ``GET path`` (exact match) with ``handler(request) -> Response``."""
        if not path.startswith("/") or path == "/ws":
            raise ValueError(f"bad route path {path!r}")
        self._routes[path] = handler

    # -- HTTP (connections call respond(); see connections.Handler) -------------------

    async def respond(self, conn: Connection, request: Request) -> Response | None:
        """The answer to ``request`` on ``conn``: None accepts a WebSocket handshake."""
        # The one place every request passes: authorization first, then routing.
        self.stats.http_requests += 1
        try:
            return await self._route(request)
        except Exception:
            self.stats.internal_errors += 1
            if not self._errors_logged:
                self._errors_logged = True
                log.exception("handling %s %s failed (answered 500; later failures are only "
                              "counted in procstream_http_internal_errors)", request.method,
                              request.path.partition("?")[0][:200])
            return _text(500, "internal server error")

    async def _route(self, request: Request) -> Response | None:
        if self._authorize is not None:
            refusal = self._authorize(request)
            if inspect.isawaitable(refusal):
                refusal = await refusal
            if refusal is not None:
                self.stats.refused_authorize += 1
                return refusal

        path = request.path.partition("?")[0]
        if path == "/ws":
            if request.method != "GET":
                return _text(405, "method not allowed", {"Allow": "GET"})
            if "websocket" not in request.headers.get("Upgrade", "").lower():
                return _text(
                    426, "/ws is a WebSocket endpoint; connect with a WebSocket client",
                    {"Upgrade": "websocket"},
                )
            if len(self._connections) >= self.config.max_clients:
                self.stats.refused_max_clients += 1
                return _text(
                    503,
                    f"too many clients: this server accepts {self.config.max_clients} "
                    "WebSocket connections; try again later",
                    {"Retry-After": "5"},
                )
            return None  # proceed with the WebSocket handshake

        if request.method not in ("GET", "HEAD"):
            return _text(405, "method not allowed", {"Allow": "GET, HEAD"})
        handler = self._routes.get(path)
        if handler is not None:
            response = handler(request)
            if inspect.isawaitable(response):
                response = await response
        else:
            response = await self._static(path)
        if request.method == "HEAD":
            response.body = b""  # Content-Length still tells the size
        return response

    def _healthz(self, request: Request) -> Response:
        ok, details = self._health() if self._health is not None else (True, {})
        body = dict(details)
        body.setdefault("status", "ok" if ok else "unhealthy")
        return json_response(200 if ok else 503, body)

    def _api_snapshot(self, request: Request) -> Response:
        try:
            sub = parse_query(request.path, hosts=self.hub.hosts_filter)
        except ProtocolError as exc:
            return json_response(400, P.error(exc.message))
        return http_response(
            200, self.hub.snapshot_json(Filter(groups=sub.filter.groups, hosts=sub.filter.hosts)), "application/json"
        )

    async def _static(self, path: str) -> Response:
        rel = unquote(path)
        if rel.endswith("/"):
            rel += "index.html"
        parts = [p for p in rel.split("/") if p]
        # No dot-segments or hidden files, no NUL or backslash tricks.
        if any(p.startswith(".") or "\x00" in p or "\\" in p for p in parts) or not parts:
            return _text(404, "not found")
        root = self._static_root
        if not root.is_dir():
            if parts == ["index.html"]:
                return http_response(
                    200, _PLACEHOLDER, _CONTENT_TYPES[".html"],
                    {"Content-Security-Policy": _VIEWER_CSP},
                )
            return _text(404, "not found")
        target = root.joinpath(*parts).resolve()
        # resolve() follows symlinks: whatever it lands on must still be inside root.
        if not target.is_relative_to(root) or not target.is_file():
            return _text(404, "not found")
        try:
            body = await asyncio.to_thread(target.read_bytes)
        except OSError:
            return _text(404, "not found")
        suffix = target.suffix.lower()
        ctype = _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(target.name)[0]
        return http_response(
            200, body, ctype or "application/octet-stream",
            {"Content-Security-Policy": _VIEWER_CSP},
        )

    # -- WebSocket (connections call these; see connections.Handler) -----------------

    def opened(self, conn: Connection) -> None:
        """A ``/ws`` handshake is done: attach the connection and send its hello (and
        what its query asks for)."""
        cfg = self.config
        hub = self.hub
        self._connections.add(conn)
        self.stats.connections = len(self._connections)
        self.stats.connections_total += 1
        sub = conn.subscriber = hub.attach(conn)
        if len(self._connections) > cfg.max_clients:
            # Handshakes answered in the same turn: refuse like the HTTP check would.
            self.stats.refused_max_clients += 1
            conn.close(1013, "too many clients")
            return
        try:
            request = parse_query(conn.path, hosts=hub.hosts_filter)
        except ProtocolError as exc:
            hub.send(sub, hub.hello(None), P.error(exc.message, exc.op))
        else:
            hub.send(sub, hub.hello(request.filter))
            hub.subscribe(sub, request)

    def received(self, conn: Connection, message: str | bytes) -> None:
        """A message from a client: a subscribe request, or a counted bad one (too many
        of those close it with 1008)."""
        hub = self.hub
        sub = conn.subscriber
        assert sub is not None  # set by opened(), before any message is read
        try:
            request = parse_frame(message, hosts=hub.hosts_filter)
        except ProtocolError as exc:
            self.stats.bad_frames += 1
            hub.send(sub, P.error(exc.message, exc.op))
            guard = self._guards.get(conn)
            if guard is None:
                cfg = self.config
                guard = self._guards[conn] = AbuseGuard(cfg.bad_frame_limit, cfg.bad_frame_window)
            if guard.record(time.monotonic()):
                self.stats.abusive_closes += 1
                conn.close(1008, "too many bad requests")
            return
        hub.subscribe(sub, request, ack=True)

    def closed(self, conn: Connection) -> None:
        """An opened connection is gone: detach it."""
        if conn.subscriber is not None:
            self.hub.detach(conn.subscriber)
        self._guards.pop(conn, None)
        self._connections.discard(conn)
        self.stats.connections = len(self._connections)
