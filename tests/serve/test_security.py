"""Security: token, Origin, Host, listening address, TLS, and secrets visible nowhere.

Most cases run against real ``procstream serve`` processes on loopback. The non-loopback
cases that must really listen run inside a fresh network namespace (``unshare --net``,
root), where the "public" address 10.200.0.1 exists on that namespace's own loopback
device and nothing outside can reach it.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.http11 import Request

from procstream.serve.security import (
    COOKIE_NAME,
    Guard,
    SecurityConfig,
    SecurityError,
    TokenLogFilter,
    check_exposure,
    check_token,
    is_loopback,
    normalize_origin,
)
from tests.support.served import Client, Served, http_get
from tests.support.network import free_port
from tests.support.processes import running
from tests.support.waiting import wait_for

TOKEN = "tok-Zx9+/q_7Rk2mW4nB"  # '+' and '/': base64 characters must survive ?token=

# -- in-process: the guard's decisions ----------------------------------------------------


def req(path: str = "/api/snapshot", **headers: str | list[str]) -> Request:
    h = Headers()
    for name, value in headers.items():
        for v in value if isinstance(value, list) else [value]:
            h[name.replace("_", "-")] = v
    return Request(path, h)


def status_of(guard: Guard, request: Request) -> int:
    response = guard(request)
    return 200 if response is None else response.status_code


def test_normalize_origin() -> None:
    assert normalize_origin("https://Dash.Example.com") == "https://dash.example.com:443"
    assert normalize_origin("https://dash.example.com:443/") == "https://dash.example.com:443"
    assert normalize_origin("http://127.0.0.1:8765") == "http://127.0.0.1:8765"
    assert normalize_origin("http://[::1]:8765") == "http://[::1]:8765"
    for bad in ("null", "", "dash.example.com", "ftp://x", "https://x/path", "https://u@x", "https://x:99999",
                "http://[::1", "file://"):
        assert normalize_origin(bad) is None, bad


def test_token_header_query_and_constant_time_paths() -> None:
    guard = Guard(SecurityConfig(token=TOKEN))
    assert status_of(guard, req("/healthz")) == 200
    assert status_of(guard, req()) == 401
    assert status_of(guard, req(Authorization=f"Bearer {TOKEN}")) == 200
    assert status_of(guard, req(Authorization=f"bearer   {TOKEN} ")) == 200
    assert status_of(guard, req(Authorization=f"Basic {TOKEN}")) == 401
    assert status_of(guard, req(Authorization=f"Bearer {TOKEN}x")) == 401
    assert status_of(guard, req(Authorization=[f"Bearer {TOKEN}", f"Bearer {TOKEN}"])) == 401
    quoted = urllib.request.quote(TOKEN, safe="")
    assert status_of(guard, req(f"/ws?types=cycle&token={quoted}")) == 200
    assert status_of(guard, req(f"/ws?token={TOKEN}")) == 200  # '+' is not a space here
    assert status_of(guard, req(f"/ws?token={quoted}&token={quoted}")) == 401
    assert status_of(guard, req("/ws?token=")) == 401
    assert status_of(guard, req("/ws?token=%ff%fe", Authorization="Bearer \xe9")) == 401  # no crash
    refusal = guard(req("/metrics"))
    assert refusal is not None and refusal.headers["WWW-Authenticate"].startswith("Bearer")
    assert guard.stats.as_dict()["token"] == 8


def test_a_browser_link_with_the_token_becomes_a_cookie() -> None:
    guard = Guard(SecurityConfig(token=TOKEN))
    html = "text/html,application/xhtml+xml,*/*;q=0.8"
    quoted = urllib.request.quote(TOKEN, safe="")
    response = guard(req(f"/?groups=a&token={quoted}&types=cycle", Accept=html))
    assert response is not None and response.status_code == 303
    assert response.headers["Location"] == "/?groups=a&types=cycle"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}={quoted};")
    assert {"HttpOnly", "SameSite=Lax", "Path=/"} <= {a.strip() for a in cookie.split(";")}
    assert "Secure" not in cookie and response.headers["Referrer-Policy"] == "no-referrer"
    assert guard(req("/index.html?token=" + quoted, Accept=html)).headers["Location"] == "/index.html"  # type: ignore[union-attr]
    # the cookie then counts as the token, for pages, their files and the WebSocket
    for path in ("/", "/app.js", "/ws", "/api/snapshot"):
        assert status_of(guard, req(path, Cookie=f"theme=dark; {COOKIE_NAME}={quoted}")) == 200, path
    assert status_of(guard, req("/", Cookie=f"{COOKIE_NAME}=wrong")) == 401
    assert status_of(guard, req("/", Cookie=[f"{COOKIE_NAME}={quoted}", f"{COOKIE_NAME}=x"])) == 401
    # programs asking with ?token= get the data, not a redirect
    assert status_of(guard, req(f"/api/snapshot?token={quoted}", Accept="*/*")) == 200
    # a browser without a token gets a form; a program a plain 401
    page = guard(req("/", Accept=html))
    assert page is not None and page.status_code == 401 and page.headers["Content-Type"].startswith("text/html")
    assert b'<form method="get">' in page.body and b'name="token"' in page.body
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    plain = guard(req("/"))
    assert plain is not None and plain.headers["Content-Type"].startswith("text/plain")
    # over TLS the cookie is Secure
    tls = Guard(SecurityConfig(token=TOKEN, tls=True))
    assert "; Secure" in tls(req(f"/?token={quoted}", Accept=html)).headers["Set-Cookie"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("//evil.com/", "/evil.com/"),
        ("/\\evil.com/", "/evil.com/"),
        ("/\\/evil.com", "/evil.com"),
        ("///evil.com/a", "/evil.com/a"),
        ("/\t/evil.com", "/evil.com"),  # browsers drop tabs and line breaks from URLs
        ("/%2F%2Fevil.com", "/%2F%2Fevil.com"),  # a path, however it reads
    ],
)
def test_the_token_redirect_never_leaves_this_server(path: str, location: str) -> None:
    guard = Guard(SecurityConfig(token=TOKEN))
    quoted = urllib.request.quote(TOKEN, safe="")
    response = guard(req(f"{path}?token={quoted}&x=1", Accept="text/html"))
    assert response is not None and response.status_code == 303
    assert response.headers["Location"] == f"{location}?x=1"
    assert response.headers["Location"].startswith("/") and response.headers["Location"][1] not in "/\\"


def test_unicode_digits_in_a_port_are_not_a_port() -> None:
    guard = Guard(SecurityConfig())
    # headers arrive as Latin-1: these are the digits str.isdigit() accepts there
    for host in ("127.0.0.1:\u00b2", "localhost:8\u00b3", "[::1]:\u00b9"):
        assert status_of(guard, req("/api/snapshot", Host=host)) == 403, host
    assert status_of(guard, req("/api/snapshot", Host="127.0.0.1:8765", Origin="http://127.0.0.1:\u00b2")) == 403
    assert normalize_origin("http://a:\u00b2") is None
    assert status_of(guard, req("/api/snapshot", Host="127.0.0.1:8765")) == 200


def test_origin_own_allowed_and_foreign() -> None:
    guard = Guard(SecurityConfig(token=TOKEN, allow_origins=("https://dash.example.com",)))
    auth = f"Bearer {TOKEN}"
    host = "127.0.0.1:8765"
    assert status_of(guard, req(Host=host, Origin="http://127.0.0.1:8765", Authorization=auth)) == 200
    assert status_of(guard, req(Host="LOCALHOST:8765", Origin="http://localhost:8765", Authorization=auth)) == 200
    assert status_of(guard, req(Host="dash.example.com", Origin="https://dash.example.com:443", Authorization=auth)) == 200
    assert status_of(guard, req(Host=host, Origin="https://dash.example.com", Authorization=auth)) == 200
    for origin in ("http://evil.example", "null", "https://127.0.0.1:8765", "http://127.0.0.1:9999", "junk"):
        assert status_of(guard, req(Host=host, Origin=origin, Authorization=auth)) == 403, origin
    assert status_of(guard, req(Host=host, Origin=["http://127.0.0.1:8765", "http://evil.example"], Authorization=auth)) == 403
    assert status_of(guard, req(Origin="http://127.0.0.1:8765", Authorization=auth)) == 403  # no Host: no own origin
    # a foreign page is refused before the token is even looked at
    assert status_of(guard, req(Host=host, Origin="http://evil.example")) == 403
    # the server's own origin is https when it serves TLS
    tls = Guard(SecurityConfig(token=TOKEN, tls=True))
    assert status_of(tls, req(Host=host, Origin="https://127.0.0.1:8765", Authorization=auth)) == 200
    assert status_of(tls, req(Host="h.example", Origin="https://h.example:443", Authorization=auth)) == 200
    assert status_of(tls, req(Host=host, Origin="http://127.0.0.1:8765", Authorization=auth)) == 403
    with pytest.raises(SecurityError, match="--allow-origin 'dash.example.com'"):
        Guard(SecurityConfig(allow_origins=("dash.example.com",)))


def test_without_a_token_only_local_or_allowed_hosts() -> None:
    guard = Guard(SecurityConfig(allow_origins=("http://dash.lan:8080",)))
    for host in ("127.0.0.1:8765", "localhost:8765", "app.localhost", "[::1]:8765", "10.1.2.3", "dash.lan:8080"):
        assert status_of(guard, req(Host=host)) == 200, host
    for host in ("evil.example:8765", "localhost.evil.example", "[::1", ""):
        assert status_of(guard, req(Host=host)) == 403, host
    assert status_of(guard, req()) == 403  # no Host at all
    assert status_of(guard, req("/healthz", Host="evil.example")) == 200
    # DNS rebinding: the page's own origin matches Host, and is still refused
    assert status_of(guard, req("/ws", Host="evil.example:8765", Origin="http://evil.example:8765")) == 403
    assert guard.stats.as_dict() == {"token": 0, "origin": 0, "host": 6}


def test_exposure_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("localhost") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("")
    assert not is_loopback("10.200.0.1") and not is_loopback("no-such-host.invalid")
    assert check_exposure("127.0.0.1", 1, token=None, insecure=False) is None
    assert check_exposure("0.0.0.0", 1, token="t", insecure=False) is None
    with pytest.raises(SecurityError, match="refusing to listen on 0.0.0.0:1 without a token"):
        check_exposure("0.0.0.0", 1, token=None, insecure=False)
    assert "--insecure" in (check_exposure("0.0.0.0", 1, token=None, insecure=True) or "")
    assert check_token("") is None and check_token(None) is None and check_token(TOKEN) == TOKEN
    for bad in ("two words", "tab\t", "caf\xe9", " "):
        with pytest.raises(SecurityError):
            check_token(bad)


def test_log_filter_hides_tokens() -> None:
    flt = TokenLogFilter(TOKEN)
    records = [
        logging.LogRecord("websockets.server", logging.DEBUG, __file__, 1, "< GET %s HTTP/1.1", (f"/ws?types=a&token={TOKEN}&x=1",), None),
        logging.LogRecord("websockets.server", logging.DEBUG, __file__, 1, "< Authorization: Bearer wrong-guess", None, None),
        logging.LogRecord("procstream", logging.INFO, __file__, 1, "echo %s", (TOKEN,), None),
        logging.LogRecord("websockets.server", logging.DEBUG, __file__, 1, "< Cookie: a=1; procstream_token=abc%2Bd; b=2", None, None),
    ]
    for r in records:
        assert flt.filter(r)
    assert [r.getMessage() for r in records] == [
        "< GET /ws?types=a&token=***&x=1 HTTP/1.1",
        "< Authorization: Bearer ***",
        "echo ***",
        "< Cookie: a=1; procstream_token=***; b=2",
    ]


# -- real servers: token and Origin ------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server with a token (from the environment) and one allowed extra origin."""
    log = tmp_path_factory.mktemp("guarded") / "log"
    srv = Served(
        "--interval", "0.5", "--source", "poll", "--allow-origin", "https://dash.example.com",
        "--log-level", "debug", env={"PROCSTREAM_TOKEN": TOKEN}, log=log,
    )
    with srv:
        yield srv


def test_http_routes_need_the_token_but_healthz(guarded: Served) -> None:
    base = guarded.url
    status, body, _ = http_get(base + "/healthz")
    assert status == 200 and orjson.loads(body)["status"] == "ok"
    for path in ("/api/snapshot", "/metrics", "/", "/index.html", "/no-such-file", "/ws"):
        for headers, query in (({}, ""), ({"Authorization": "Bearer nope"}, ""), ({}, "?token=nope")):
            status, body, hdrs = http_get(base + path + query, headers)
            assert status == 401, (path, headers, query)
            assert hdrs["WWW-Authenticate"].startswith("Bearer"), path
            assert b"token" in body and TOKEN.encode() not in body
    for headers, query in (({"Authorization": f"Bearer {TOKEN}"}, ""), ({}, "?token=" + urllib.request.quote(TOKEN, safe=""))):
        status, body, _ = http_get(base + "/api/snapshot" + query, headers)
        assert status == 200 and orjson.loads(body)["type"] == "snapshot"
        status, body, _ = http_get(base + "/metrics" + query, headers)
        assert status == 200 and b"namedprocess_namegroup_num_procs" in body
        assert http_get(base + "/ws" + query, headers)[0] == 426  # past the guard: not a WebSocket


async def test_websocket_handshake_refused_without_the_token(guarded: Served) -> None:
    for url, headers in ((guarded.ws, None), (guarded.ws, {"Authorization": "Bearer nope"}), (guarded.ws + "?token=nope", None)):
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, additional_headers=headers, open_timeout=5):
                pass
        assert info.value.response.status_code == 401
        assert info.value.response.headers["WWW-Authenticate"].startswith("Bearer")
    for url, headers in (
        (guarded.ws, {"Authorization": f"Bearer {TOKEN}"}),
        (guarded.ws + "?types=cycle&token=" + urllib.request.quote(TOKEN, safe=""), None),
    ):
        c = await Client.connect(url, additional_headers=headers)
        try:
            await c.wait("hello and snapshot", lambda: c.of("snapshot"))
            assert c.objects[0]["type"] == "hello"
        finally:
            await c.close()


async def test_browser_origin_own_allowed_and_foreign(guarded: Served) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    own = f"http://127.0.0.1:{guarded.port}"
    for origin in (own, "https://dash.example.com", "https://DASH.example.com:443"):
        assert http_get(guarded.url + "/api/snapshot", {**auth, "Origin": origin})[0] == 200, origin
        c = await Client.connect(guarded.ws, additional_headers=auth, origin=origin)
        try:
            await c.wait("snapshot", lambda: c.of("snapshot"))
        finally:
            await c.close()
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{guarded.port + 1}", f"https://127.0.0.1:{guarded.port}"):
        status, body, _ = http_get(guarded.url + "/api/snapshot", {**auth, "Origin": origin})
        assert status == 403 and b"--allow-origin" in body, origin
        with pytest.raises(InvalidStatus) as info:
            async with connect(guarded.ws, additional_headers=auth, origin=origin, open_timeout=5):  # type: ignore[arg-type]
                pass
        assert info.value.response.status_code == 403, origin
    # the refusals are counted by reason
    status, body, _ = http_get(guarded.url + "/metrics", auth)
    assert b'procstream_refused_requests_total{reason="origin"}' in body


async def test_a_browser_opens_the_viewer_with_a_token_link(guarded: Served) -> None:
    quoted = urllib.request.quote(TOKEN, safe="")
    conn = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=5)
    try:
        conn.request("GET", f"/?token={quoted}", headers={"Accept": "text/html"})
        r = conn.getresponse()
        r.read()
    finally:
        conn.close()
    assert r.status == 303 and r.getheader("Location") == "/"
    cookie = r.getheader("Set-Cookie", "").split(";")[0]
    # the page, and the WebSocket its script opens, with nothing but the cookie
    status, body, _ = http_get(guarded.url + "/", {"Cookie": cookie, "Accept": "text/html"})
    assert status == 200 and b"<" in body
    c = await Client.connect(guarded.ws, additional_headers={"Cookie": cookie}, origin=f"http://127.0.0.1:{guarded.port}")
    try:
        await c.wait("snapshot", lambda: c.of("snapshot"))
    finally:
        await c.close()
    # and with a foreign Origin, the cookie doesn't help
    with pytest.raises(InvalidStatus) as info:
        async with connect(guarded.ws, additional_headers={"Cookie": cookie}, origin="http://evil.example", open_timeout=5):  # type: ignore[arg-type]
            pass
    assert info.value.response.status_code == 403


def test_the_token_is_never_logged(guarded: Served) -> None:
    # The fixture's server logs at debug level: websockets writes request lines and
    # headers, with the token in them, and every 401 above tried a wrong one.
    http_get(guarded.url + "/api/snapshot?token=" + urllib.request.quote(TOKEN, safe=""))
    http_get(guarded.url + "/api/snapshot", {"Authorization": f"Bearer {TOKEN}"})
    http_get(guarded.url + "/metrics?token=guess-in-query", {"Authorization": "Bearer guess-in-header"})
    http_get(guarded.url + "/?token=" + urllib.request.quote(TOKEN, safe=""), {"Accept": "text/html"})
    http_get(guarded.url + "/", {"Cookie": f"{COOKIE_NAME}=guess-in-cookie"})
    marker = f"/api/snapshot?marker={free_port()}"
    http_get(guarded.url + marker, {"Authorization": f"Bearer {TOKEN}"})
    text = wait_for("the log to reach the last request", lambda: marker in guarded.output() and guarded.output())
    assert "token=***" in text and "Authorization: Bearer ***" in text  # debug lines were written
    for secret in (TOKEN, urllib.request.quote(TOKEN, safe=""), "guess-in-query", "guess-in-header", "guess-in-cookie"):
        assert secret not in text, secret


# -- real servers: Host without a token ---------------------------------------------------


def test_without_a_token_a_foreign_host_name_is_refused(tmp_path: Path) -> None:
    with Served("--interval", "0.5", "--source", "poll", "--allow-origin", "http://dash.lan:8080", log=tmp_path / "log") as srv:
        p = srv.port
        for host in (f"127.0.0.1:{p}", f"localhost:{p}", "dash.lan:8080"):
            assert http_get(srv.url + "/api/snapshot", {"Host": host})[0] == 200, host
        status, body, _ = http_get(srv.url + "/api/snapshot", {"Host": f"rebound.example:{p}"})
        assert status == 403 and b"DNS rebinding" in body
        # the rebound page's WebSocket: its Origin matches its Host, still refused
        status, _, _ = http_get(
            srv.url + "/ws",
            {"Host": f"rebound.example:{p}", "Origin": f"http://rebound.example:{p}", "Upgrade": "websocket"},
        )
        assert status == 403
        assert http_get(srv.url + "/healthz", {"Host": "rebound.example"})[0] == 200


# -- listening address --------------------------------------------------------------------


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "procstream", "serve", "--source", "poll", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, **(env or {})),
    )


def finished(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        out.append((p.returncode, err))
    return out


def test_non_loopback_listen_without_a_token_exits_2() -> None:
    env = {"PROCSTREAM_TOKEN": ""}
    port = free_port()
    results = finished([
        run_serve("--listen", addr, env=env)
        for addr in (f"0.0.0.0:{port}", f":{port}", f"10.200.0.1:{port}", f"[::]:{port}")
    ] + [
        run_serve("--listen", f"127.0.0.1:{port}", "--allow-origin", "example.com", env=env),
        run_serve("--listen", f"127.0.0.1:{port}", "--token", "has space", env=env),
    ])
    for code, err in results[:4]:
        assert code == 2, err
        assert "refusing to listen" in err and "without a token" in err and "--insecure" in err
        assert err.count("\n") == 1  # one line, no traceback
    assert results[4][0] == 2 and "--allow-origin 'example.com'" in results[4][1]
    assert results[5][0] == 2 and "printable ASCII" in results[5][1] and "has space" not in results[5][1]


def test_loopback_by_name_needs_no_token(tmp_path: Path) -> None:
    port = free_port()
    srv = Served("--interval", "0.5", "--source", "poll", "--listen", f"localhost:{port}", port=port,
                 env={"PROCSTREAM_TOKEN": ""}, log=tmp_path / "log")
    with srv:
        assert http_get(srv.url + "/api/snapshot")[0] == 200


NETNS_SCRIPT = r"""
import json, os, subprocess, sys, urllib.error, urllib.request
sys.path.insert(0, os.getcwd())  # the checkout: tests.support
from tests.support.waiting import wait_for
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "addr", "add", "10.200.0.1/8", "dev", "lo"], check=True)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
TOKEN, PORT = sys.argv[1], 18765
BASE = f"http://10.200.0.1:{PORT}"

def get(path, headers=None):
    try:
        with opener.open(urllib.request.Request(BASE + path, headers=headers or {}), timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None

def serve(*args, token=""):
    env = dict(os.environ, PROCSTREAM_TOKEN=token)
    p = subprocess.Popen([sys.executable, "-m", "procstream", "serve", "--source", "poll",
                          "--interval", "0.5", "--listen", f"10.200.0.1:{PORT}", *args],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env)
    wait_for("the server to answer or exit", lambda: p.poll() is not None or get("/healthz") == 200, 20)
    return p

def finish(p):
    p.terminate()
    out, _ = p.communicate(timeout=10)
    return p.returncode, out

out = {}
p = serve()
out["no_token_exit"], out["no_token_log"] = p.wait(timeout=20), p.stdout.read()
p = serve("--insecure")
out["insecure_snapshot"] = get("/api/snapshot")
out["insecure_exit"], out["insecure_log"] = finish(p)
p = serve(token=TOKEN)
out["token_without"] = get("/api/snapshot")
out["token_with"] = get("/api/snapshot", {"Authorization": "Bearer " + TOKEN})
out["token_exit"], out["token_log"] = finish(p)
print(json.dumps(out))
"""


def test_non_loopback_address_with_insecure_or_a_token(tmp_path: Path) -> None:
    # needs root for the network namespace (the test suite runs as root, CI too)
    script = tmp_path / "netns.py"
    script.write_text(NETNS_SCRIPT)
    unshare = shutil.which("unshare")
    assert unshare is not None, "util-linux's unshare is needed"
    done = subprocess.run(
        [unshare, "--net", "--", sys.executable, str(script), TOKEN],
        capture_output=True, text=True, timeout=90, cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["no_token_exit"] == 2 and "refusing to listen on 10.200.0.1" in out["no_token_log"]
    assert out["insecure_snapshot"] == 200 and out["insecure_exit"] == 0
    assert "without a token (--insecure)" in out["insecure_log"]
    assert (out["token_without"], out["token_with"], out["token_exit"]) == (401, 200, 0)
    assert "token required" in out["token_log"] and TOKEN not in out["token_log"]


# -- TLS ----------------------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(d: Path) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=procstream test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            cwd=d)


def make_server_cert(d: Path, name: str, serial: int) -> None:
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=localhost", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", str(serial),
            "-days", "2", "-extfile", "ext.cnf", "-out", f"{name}.pem", cwd=d)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    d.mkdir()
    make_ca(d)
    make_server_cert(d, "server", 1001)
    return d


class TlsServed(Served):
    """``Served`` over https/wss, trusting the test CA."""

    def __init__(self, *args: str, ca: Path, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.client_ctx = ssl.create_default_context(cafile=str(ca))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"wss://127.0.0.1:{self.port}/ws"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.client_ctx) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"procstream serve exited with {self.proc.returncode}: {self.output()}")
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def peer_serial(self) -> int:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw:
            with self.client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                cert = tls.getpeercert()
        assert cert is not None
        return int(str(cert["serialNumber"]), 16)


async def test_tls_round_trip_and_certificate_reload(pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    srv = TlsServed(
        "--interval", "0.5", "--source", "poll", "--tls-cert", str(pki / "server.pem"),
        "--tls-key", str(pki / "server.key"), ca=pki / "ca.pem", env={"PROCSTREAM_TOKEN": TOKEN},
        log=tmp_path / "log",
    )
    with srv:
        status, body = srv.get("/api/snapshot", auth)
        assert status == 200 and orjson.loads(body)["type"] == "snapshot"
        assert srv.get("/api/snapshot")[0] == 401
        # the server's own origin is https now
        assert srv.get("/api/snapshot", {**auth, "Origin": f"https://127.0.0.1:{srv.port}"})[0] == 200
        assert srv.get("/api/snapshot", {**auth, "Origin": f"http://127.0.0.1:{srv.port}"})[0] == 403

        c = await Client.connect(srv.ws, additional_headers=auth, ssl=srv.client_ctx)
        try:
            await c.wait("hello and snapshot over wss", lambda: c.of("snapshot"))
        finally:
            await c.close()
        with pytest.raises(ssl.SSLCertVerificationError):  # a client that doesn't trust the CA
            async with connect(srv.ws, additional_headers=auth, open_timeout=5):
                pass
        # ... until it is told to, the way docs/deploy.md says (websockets' default context,
        # which ``procstream tail`` uses, reads SSL_CERT_FILE)
        monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.pem"))
        async with connect(srv.ws, additional_headers=auth, open_timeout=5) as ws:
            assert orjson.loads(await ws.recv())[0]["type"] == "hello"
        with pytest.raises(InvalidMessage):  # plain ws:// to a TLS port gets no HTTP answer
            async with connect(f"ws://127.0.0.1:{srv.port}/ws", additional_headers=auth, open_timeout=3):
                pass
        assert "https://127.0.0.1:" in srv.output()

        # Renewal: new files in place, SIGHUP, new connections get the new certificate.
        assert srv.peer_serial() == 1001
        make_server_cert(pki, "renewed", 2002)
        shutil.copy(pki / "renewed.pem", pki / "server.pem")
        shutil.copy(pki / "renewed.key", pki / "server.key")
        srv.signal(signal.SIGHUP)
        wait_for("the renewed certificate", lambda: srv.peer_serial() == 2002)
        # A broken file on reload: logged, the working certificate stays.
        (pki / "server.pem").write_text("not a certificate\n")
        srv.signal(signal.SIGHUP)
        wait_for("the reload error in the log", lambda: "keeping the previous certificate" in srv.output())
        assert srv.peer_serial() == 2002
        assert srv.get("/api/snapshot", auth)[0] == 200
        assert srv.stop() == 0


def test_bad_tls_files_exit_2(pki: Path, tmp_path: Path) -> None:
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    port = f"127.0.0.1:{free_port()}"
    cases = [
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(pki / "server.key")], "no such file"),
        (["--tls-cert", str(tmp_path / "garbage.pem"), "--tls-key", str(pki / "server.key")], "not a usable PEM"),
        (["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "ca.key")], "not a usable PEM"),
        (["--tls-cert", str(pki / "server.pem")], "not a usable PEM"),  # no key in the cert file
        (["--tls-key", str(pki / "server.key")], "--tls-key needs --tls-cert"),
        (["--tls-cert", str(pki), "--tls-key", str(pki / "server.key")], "is a directory"),
    ]
    results = finished([run_serve("--listen", port, *args) for args, _ in cases])
    for (args, expected), (code, err) in zip(cases, results):
        assert code == 2, (args, err)
        assert expected in err and "Traceback" not in err, (args, err)


# -- secrets visible nowhere ---------------------------------------------------------------

SECRET_PROC = "import sys; print('up', flush=True); sys.stdin.read()"


async def test_secrets_on_a_live_command_line_are_visible_nowhere(tmp_path: Path) -> None:
    flag_token = "flag-token-7c1d2e9f"
    events_log = tmp_path / "events.ndjson"
    srv = Served(
        "--interval", "0.2", "--source", "poll", "--token", flag_token, "--event-log", str(events_log),
        "--event-log-types", "proc.*", "--log-level", "debug", env={"PROCSTREAM_TOKEN": ""}, log=tmp_path / "log",
    )
    auth = {"Authorization": f"Bearer {flag_token}"}
    secrets = ("hunter2", "s3cr3tpw", flag_token)
    with srv:
        live = await Client.connect(srv.ws + "?types=proc.*", additional_headers=auth)
        try:
            await live.wait("snapshot", lambda: live.of("snapshot"))
            with running(
                sys.executable, "-c", SECRET_PROC, "--password=hunter2", "https://alice:s3cr3tpw@db.example/x",
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            ) as p:
                assert p.stdout is not None and p.stdout.readline() == b"up\n"
                (start,) = await live.wait("its start", lambda: live.of("proc.start", pid=p.pid))
                assert start["cmdline"][-2:] == ["--password=***", "https://alice:***@db.example/x"]
                late = await Client.connect(srv.ws, additional_headers=auth)
                try:
                    (snap,) = await late.wait("a snapshot with it", lambda: late.of("snapshot"))
                    (mine,) = [q for q in snap["procs"] if q["pid"] == p.pid]
                    assert mine["cmdline"] == start["cmdline"]
                    # our own command line is in there too, with --token hidden
                    (me,) = [q for q in snap["procs"] if q["pid"] == srv.proc.pid]  # type: ignore[union-attr]
                    assert "--token" in me["cmdline"] and "***" in me["cmdline"]
                finally:
                    await late.close()
                status, api, _ = http_get(srv.url + "/api/snapshot", auth)
                assert status == 200 and f'"pid":{p.pid},'.encode() in api
                status, metrics, _ = http_get(srv.url + "/metrics", auth)
                assert status == 200 and b'groupname="python' in metrics
            await live.wait("its exit", lambda: live.of("proc.exit", pid=p.pid))
        finally:
            await live.close()

        def logged_exit() -> str | None:
            text = events_log.read_text()
            lines = [orjson.loads(line) for line in text.splitlines()]
            return text if any(e["type"] == "proc.exit" and e["pid"] == p.pid for e in lines) else None

        logged = wait_for("the exit in the event log", logged_exit)
        assert "--password=***" in logged
    texts = {
        "websocket (live)": orjson.dumps(live.objects).decode(),
        "websocket (snapshot)": orjson.dumps(snap).decode(),
        "/api/snapshot": api.decode(),
        "/metrics": metrics.decode(),
        "event log": logged,
        "server log": srv.output(),
    }
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} visible in {where}"
