"""Who may talk to the server: token, Origin, Host, listening address, TLS.

:class:`Guard` is the server's ``authorize(request)`` seam. It runs before routing, for
plain HTTP and for WebSocket handshakes alike, so a refused WebSocket gets an HTTP status
(401/403) and never an open connection. Rules, in order:

1. ``/healthz`` is open to everyone (health checks and load balancers have no token).
2. **Origin.** A request with an ``Origin`` header comes from a browser page; it passes
   only when that origin is the server's own (the scheme it serves — http or https —
   plus the ``Host`` header, i.e. what the browser put in the address bar) or one of
   ``--allow-origin``. Otherwise 403: a page on another site must not read the stream
   with the user's network position (cross-site WebSocket hijacking). Requests without
   ``Origin`` (curl, programs, browser navigations) are not cross-site reads and pass.
3. **Host (no token only).** Without a token, the ``Host`` header must be an IP address,
   ``localhost`` (or ``*.localhost``), or the host of an ``--allow-origin``. Otherwise a
   page of any site could rebind its DNS name to 127.0.0.1 and read the server as its
   own origin (DNS rebinding). With a token that page has nothing to present, so any
   Host is fine.
4. **Token.** With ``--token``/``PROCSTREAM_TOKEN``, the request must carry it as
   ``Authorization: Bearer TOKEN`` or ``?token=TOKEN`` (compared in constant time), else
   401 with ``WWW-Authenticate: Bearer``.
5. **Browsers.** A page's scripts, styles and WebSocket can't add a header or a query to
   what the page itself loads, so a browser that opens ``/…?token=TOKEN`` (a navigation:
   ``Accept: text/html``) gets the token as an HttpOnly, SameSite=Lax cookie and a 303
   to the same URL without it; the cookie then counts as the token. The redirect goes
   to a path of this server only: one starting with ``//`` or ``/\\`` would be read by a
   browser as another host (``//evil.example/``), so its leading slashes are folded. A browser without
   one gets a small HTML 401 page with a token form (which does exactly that). Programs
   (no ``text/html`` in ``Accept``) always get the data or a plain 401.

The token is never logged: :func:`install_log_redaction` rewrites log records (websockets
logs request lines and headers at debug level) before any handler formats them.

Also here: :func:`check_exposure` (refuse a non-loopback ``--listen`` without a token
unless ``--insecure``) and :class:`TlsFiles` (``--tls-cert``/``--tls-key`` to an
``ssl.SSLContext``, reloadable on SIGHUP).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..stats import Stats
from .server import http_response

__all__ = [
    "COOKIE_NAME",
    "SecurityError",
    "SecurityConfig",
    "GuardStats",
    "Guard",
    "normalize_origin",
    "same_origin_path",
    "is_loopback",
    "check_exposure",
    "check_token",
    "TlsFiles",
    "TokenLogFilter",
    "install_log_redaction",
]

log = logging.getLogger(__name__)

_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_OPEN_PATHS: Final = frozenset({"/healthz"})


class SecurityError(ValueError):
    """A security setting that can't be used (bad origin, token, TLS files, exposure)."""


# -- origins and hosts -------------------------------------------------------------------


def _split_host_port(value: str) -> tuple[str, int | None] | None:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` → (host lower-cased, port)."""
    value = value.strip()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            host, port_text = value, None
        elif ":" in host:  # a bare IPv6 address is not a valid Host; refuse it
            return None
    if not host or any(c in host for c in "/?#@ \t"):
        return None
    port: int | None = None
    if port_text is not None:
        # isascii(): str.isdigit() also accepts digits int() refuses, like '²'
        if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5 or not 0 < int(port_text) < 65536:
            return None
        port = int(port_text)
    return host.lower().rstrip("."), port


def normalize_origin(value: str) -> str | None:
    """An origin as ``scheme://host:port`` (lower case, default port filled in), or None
    when ``value`` is not a scheme://host[:port] origin (``null``, paths, junk)."""
    value = value.strip()
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if "@" in parts.netloc:
        return None
    hp = _split_host_port(parts.netloc)
    if hp is None:
        return None
    host, port = hp
    return _origin(scheme, host, port)


def _origin(scheme: str, host: str, port: int | None) -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port if port is not None else _DEFAULT_PORTS[scheme]}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _address_is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable from this machine only: a loopback
    address, or a name all of whose addresses are loopback. ``""``/``0.0.0.0``/``::``
    (every interface) are not."""
    if not host:
        return False
    try:
        return _address_is_loopback(host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(_address_is_loopback(str(a)) for a in addrs)


def check_exposure(host: str, port: int, *, token: str | None, insecure: bool) -> str | None:
    """Refuse (``SecurityError``) to serve a non-loopback address without a token unless
    ``insecure``; returns a warning to log when it is allowed only because of ``insecure``."""
    if token or is_loopback(host):
        return None
    where = f"{host or '*'}:{port}"
    if not insecure:
        raise SecurityError(
            f"refusing to listen on {where} without a token: anyone who can reach it would "
            "see every process and command line of this host. Set PROCSTREAM_TOKEN (or "
            "--token), listen on 127.0.0.1, or pass --insecure if the network is trusted"
        )
    return f"listening on {where} without a token (--insecure): anyone who can reach it can read the stream"


_TOKEN_OK: Final = re.compile(r"[\x21-\x7e]+")


def check_token(token: str | None) -> str | None:
    """The token to use (None for "no token"), or ``SecurityError`` when it can't travel
    in an ``Authorization`` header: empty after stripping, spaces, control or non-ASCII
    characters. An empty string means "no token", like an unset variable."""
    if token is None or token == "":
        return None
    if not _TOKEN_OK.fullmatch(token):
        raise SecurityError(
            "the token must be printable ASCII without spaces "
            "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


# -- the guard ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SecurityConfig:
    """What :class:`Guard` enforces. ``allow_origins`` as given on the command line."""

    token: str | None = None
    allow_origins: tuple[str, ...] = ()
    #: whether the server speaks TLS (its own origin is then https://…)
    tls: bool = False
    open_paths: frozenset[str] = _OPEN_PATHS


@dataclass(slots=True)
class GuardStats(Stats):
    """Refusals by reason, for ``/metrics`` (``procstream_refused_requests``)."""

    token: int = 0
    origin: int = 0
    host: int = 0


class Guard:
    """``authorize(request) -> Response | None`` for :class:`~procstream.server.ProcstreamServer`.

    Build it once from a :class:`SecurityConfig` (``SecurityError`` for a bad
    ``--allow-origin``); the server calls it for every request before routing.
    """

    def __init__(self, config: SecurityConfig) -> None:
        self.config = config
        self.stats = GuardStats()
        origins: set[str] = set()
        for raw in config.allow_origins:
            origin = normalize_origin(raw)
            if origin is None:
                raise SecurityError(
                    f"--allow-origin {raw!r}: expected an origin like https://dash.example.com "
                    "or http://10.0.0.5:8765 (scheme, host and optional port; no path)"
                )
            origins.add(origin)
        self._origins = frozenset(origins)
        self._origin_hosts = frozenset(o.split("://", 1)[1].rsplit(":", 1)[0].strip("[]") for o in origins)
        self._token = config.token.encode() if config.token else None
        self._scheme = "https" if config.tls else "http"

    @property
    def allowed_origins(self) -> frozenset[str]:
        """The normalized ``--allow-origin`` values."""
        return self._origins

    def __call__(self, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path in self.config.open_paths:
            return None
        headers = request.headers
        host_values = headers.get_all("Host")
        host = _split_host_port(host_values[0]) if len(host_values) == 1 else None

        origins = headers.get_all("Origin")
        if origins:
            own = _origin(self._scheme, host[0], host[1]) if host is not None else None
            origin = normalize_origin(origins[0]) if len(origins) == 1 else None
            if origin is None or (origin != own and origin not in self._origins):
                self.stats.origin += 1
                log.debug("refused %s %s: Origin %r not allowed", request.method, path, origins)
                return _refuse(
                    403,
                    f"Origin {', '.join(origins)!s} is not allowed. This server accepts browser "
                    f"pages from its own origin ({own or 'unknown: no Host header'})"
                    + (f" and {', '.join(sorted(self._origins))}" if self._origins else "")
                    + "; start it with --allow-origin ORIGIN to add one.",
                )

        if self._token is None:
            if host is None or not self._host_allowed(host[0]):
                self.stats.host += 1
                log.debug("refused %s %s: Host %r not allowed without a token", request.method, path, host_values)
                return _refuse(
                    403,
                    "Host not allowed: without a token this server answers only requests for "
                    "an IP address, localhost, or the host of an --allow-origin (protection "
                    "against DNS rebinding). Use an IP address, add --allow-origin, or set a token.",
                )
            return None

        source = self._token_source(headers, query)
        navigation = request.method in ("GET", "HEAD") and path != "/ws" and "text/html" in headers.get("Accept", "")
        if source == "query" and navigation:
            # A browser opened a link with ?token=: keep the token in a cookie (which its
            # page's scripts, styles and WebSocket then send by themselves) and take it
            # out of the address bar, history and Referer headers.
            return self._to_cookie(path, query)
        if source is not None:
            return None
        self.stats.token += 1
        log.debug("refused %s %s: missing or wrong token", request.method, path)
        challenge = {"WWW-Authenticate": 'Bearer realm="procstream"'}
        if navigation:
            return http_response(
                401, _TOKEN_FORM, "text/html; charset=utf-8", {**challenge, "Content-Security-Policy": _FORM_CSP}
            )
        return _refuse(
            401, "a token is required: send 'Authorization: Bearer TOKEN' or add ?token=TOKEN", challenge
        )

    def _host_allowed(self, host: str) -> bool:
        return (
            _is_ip(host)
            or host == "localhost"
            or host.endswith(".localhost")
            or host in self._origin_hosts
        )

    def _token_source(self, headers: Headers, query: str) -> str | None:
        """Where a valid token came from: ``header``, ``query``, ``cookie``; None if from nowhere."""
        assert self._token is not None
        candidates: list[tuple[str, str]] = []
        authorization = headers.get_all("Authorization")
        if len(authorization) == 1:
            scheme, _, value = authorization[0].strip().partition(" ")
            if scheme.lower() == "bearer":
                candidates.append(("header", value.strip()))
        # ?token= is percent-decoded without turning '+' into a space: tokens are
        # printable ASCII without spaces, and base64 ones contain '+'.
        query_tokens = [unquote(v) for k, _, v in (p.partition("=") for p in query.split("&")) if unquote(k) == "token"]
        if len(query_tokens) == 1:
            candidates.append(("query", query_tokens[0]))
        cookies = [
            unquote(v.strip())
            for line in headers.get_all("Cookie")
            for k, _, v in (c.partition("=") for c in line.split(";"))
            if k.strip() == COOKIE_NAME
        ]
        if len(cookies) == 1:
            candidates.append(("cookie", cookies[0]))
        found = None
        for source, candidate in candidates:
            # compare_digest wants equal types; bytes also copes with non-ASCII input.
            if hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), self._token) and found is None:
                found = source
        return found

    def _to_cookie(self, path: str, query: str) -> Response:
        assert self.config.token is not None
        rest = "&".join(p for p in query.split("&") if p and unquote(p.partition("=")[0]) != "token")
        path = same_origin_path(path)
        cookie = f"{COOKIE_NAME}={quote(self.config.token, safe='')}; Path=/; HttpOnly; SameSite=Lax"
        if self.config.tls:
            cookie += "; Secure"
        return http_response(
            303,
            b"",
            headers={
                "Location": path + (f"?{rest}" if rest else ""),
                "Set-Cookie": cookie,
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
            },
        )


#: The cookie a browser keeps the token in after opening a ``?token=`` link.
COOKIE_NAME: Final = "procstream_token"

# The page a browser without a token gets: the viewer's look (its colours, light and
# dark, its type and controls), in one static document. Its stylesheet can't be the
# viewer's: every file but /healthz needs the token. So the style is inline, and the CSP
# allows exactly that style by its hash, nothing else (no script, no image, no font).
_FORM_STYLE: Final = """
:root{color-scheme:light dark;--bg:#eef1f5;--panel:#fff;--line:#e4e8ee;--text:#1b2430;
--muted:#535e6d;--control-line:#7d8896;--accent:#0a7281;--shadow:0 1px 2px rgba(20,30,45,.06);
--font:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Helvetica Neue",Arial,sans-serif}
@media (prefers-color-scheme:dark){:root{--bg:#0d1015;--panel:#141920;--line:#212831;
--text:#d6dce4;--muted:#8d99a8;--control-line:#5f6a78;--accent:#4bb8c5;--shadow:none}}
*{box-sizing:border-box}
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;
padding:16px;background:var(--bg);color:var(--text);font:13px/1.45 var(--font)}
main{width:100%;max-width:380px;background:var(--panel);border:1px solid var(--line);
border-radius:8px;box-shadow:var(--shadow);padding:20px 22px}
.brand{display:flex;align-items:center;gap:8px;margin-bottom:14px;color:var(--muted);font-weight:600}
.brand svg{display:block;border-radius:5px}
h1{margin:0 0 6px;font-size:16px;font-weight:650}
p{margin:0 0 14px;color:var(--muted)}
code{font-size:12px}
label{display:block;font-weight:600;margin-bottom:4px}
input{display:block;width:100%;font:inherit;color:var(--text);background:var(--bg);
border:1px solid var(--control-line);border-radius:6px;padding:6px 8px;margin:0 0 12px}
button{font:inherit;font-weight:600;color:#fff;background:var(--accent);border:1px solid var(--accent);
border-radius:6px;padding:5px 16px;cursor:pointer}
:focus-visible{outline:2px solid var(--accent);outline-offset:2px}
@media (prefers-color-scheme:dark){button{color:#0d1015}}
"""
_FORM_CSP: Final = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_FORM_STYLE.encode()).digest()).decode()}'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Static (nothing from the request is echoed into it). Submitting it navigates to
# ?token=…, which the guard turns into the cookie and a redirect to the same page.
_TOKEN_FORM: Final = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark"><meta name="referrer" content="no-referrer">
<title>procstream: token required</title>
<style>"""
    + _FORM_STYLE
    + """</style></head>
<body><main>
<div class="brand"><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32" width="22" height="22" aria-hidden="true"><rect width="32" height="32" rx="7" fill="#0b7a8a"/><path d="M5 18h5l3-8 5 14 3-9 2 3h4" fill="none" stroke="#fff" stroke-width="2.6" stroke-linecap="round" stroke-linejoin="round"/></svg>procstream</div>
<h1>Token required</h1>
<p>This server needs its access token, the value of <code>PROCSTREAM_TOKEN</code> where it runs.</p>
<form method="get"><label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Open</button></form>
</main></body></html>
"""
).encode()


def same_origin_path(path: str) -> str:
    """``path`` as a redirect target that stays on this server: ``/`` followed by no
    further slash or backslash, so it can't be read as ``//host/…``, a reference to
    another host. Browsers treat ``\\`` in a URL as ``/`` and drop tabs and line breaks
    from it, so those count too."""
    path = path.translate(_URL_IGNORED)
    return "/" + path.lstrip("/\\")


# What a browser's URL parser removes from anywhere in a URL.
_URL_IGNORED: Final = str.maketrans("", "", "\t\n\r")


def _refuse(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return http_response(status, (message + "\n").encode(), headers=headers)


# -- TLS ---------------------------------------------------------------------------------


class TlsFiles:
    """A server ``ssl.SSLContext`` from a PEM certificate chain and key.

    ``context`` is what the server listens with. :meth:`reload` reads the files again
    (SIGHUP, after a certificate renewal); new connections get the new certificate through
    the context's SNI callback, while the live context itself is never mutated, so a bad
    new file leaves the old certificate in service.
    """

    def __init__(self, cert: str, key: str | None = None) -> None:
        self.cert = cert
        self.key = key
        self._current = self._load()
        self.context = self._current
        self.context.sni_callback = self._choose

    def _load(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except FileNotFoundError as exc:
            raise SecurityError(f"TLS: {exc.filename or self.cert}: no such file") from exc
        except PermissionError as exc:
            raise SecurityError(f"TLS: {exc.filename or self.cert}: permission denied") from exc
        except IsADirectoryError as exc:
            raise SecurityError(f"TLS: {exc.filename or self.cert}: is a directory") from exc
        except (ssl.SSLError, OSError) as exc:
            what = f"--tls-cert {self.cert}" + (f" / --tls-key {self.key}" if self.key else "")
            raise SecurityError(f"TLS: {what}: not a usable PEM certificate and key ({exc})") from exc
        return ctx

    def _choose(self, sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        # Called for every handshake (with or without SNI): hand it the newest context.
        current = self._current
        if ctx is not current:
            sslobj.context = current

    def reload(self) -> None:
        """Read the files again; ``SecurityError`` (old certificate kept) if they are bad."""
        self._current = self._load()


# -- keeping the token out of logs -------------------------------------------------------

_SECRET_IN_LOG: Final = re.compile(
    r"(?i)(token=)[^&;\s\"']*|(\bauthorization:\s*\w+\s+)\S+"
)


class TokenLogFilter(logging.Filter):
    """Rewrites a record's message so neither the token nor anything sent as one
    (``token=…`` query values, ``Authorization:`` header values) is ever written."""

    def __init__(self, token: str | None) -> None:
        super().__init__()
        self._token = token

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record: leave it to the handler to report
            return True
        clean = _SECRET_IN_LOG.sub(lambda m: (m.group(1) or m.group(2)) + "***", message)
        if self._token:
            clean = clean.replace(self._token, "***")
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def install_log_redaction(token: str | None, handlers: Iterable[logging.Handler] | None = None) -> TokenLogFilter:
    """Add a :class:`TokenLogFilter` to ``handlers`` (default: the root logger's, which
    every procstream and websockets record reaches)."""
    flt = TokenLogFilter(token)
    for handler in handlers if handlers is not None else logging.getLogger().handlers:
        handler.addFilter(flt)
    return flt
