"""What the server answers to requests it can't read or handle, and how it holds its
sockets: a real server on 127.0.0.1 (port 0), raw sockets sending what clients and
attackers send."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import tracemalloc
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from procstream.serve.security import Guard, SecurityConfig
from tests.serve.test_server import make_hub, recv, running, url
from tests.support.waiting import async_wait_for


async def exchange(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send ``raw``, read until the server closes; the whole response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def status_and_body(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


# -- requests that can't be read --------------------------------------------------------------


async def test_a_body_on_a_method_other_than_get_is_405_and_the_body_is_read() -> None:
    async with running(make_hub()) as srv:
        body = b"x" * 100_000  # more than a socket buffer: left unread, it would reset
        raw = (b"POST /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
        status, headers, text = status_and_body(await exchange(srv.port, raw))
        assert status == 405 and headers["allow"] == "GET, HEAD"
        assert text == b"method not allowed\n"
        chunked = b"PUT /x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        assert status_and_body(await exchange(srv.port, chunked))[0] == 405
        get_body = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc"
        status, _, text = status_and_body(await exchange(srv.port, get_body))
        assert (status, text) == (400, b"a GET request has no body\n")
        assert srv.sockets.stats.unreadable_requests == 3


@pytest.mark.parametrize(
    ("raw", "status", "text"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414,
         b"the request line is longer than 8 KiB\n"),
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431,
         b"the request headers are too large or too many\n"),
        (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431,
         b"the request headers are too large or too many\n"),
        (b"GET /\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, b"malformed HTTP request\n"),
        (b"GET / HTTP/0.9\r\n\r\n", 400, b"malformed HTTP request\n"),
    ],
)
async def test_requests_that_cannot_be_read_get_plain_http_answers(raw: bytes, status: int, text: bytes) -> None:
    async with running(make_hub()) as srv:
        got, headers, body = status_and_body(await exchange(srv.port, raw))
        assert (got, body) == (status, text)
        assert b"WebSocket" not in body and headers["content-type"].startswith("text/plain")


async def test_unicode_digits_in_host_and_origin_are_refused_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(make_hub(), authorize=Guard(SecurityConfig())) as srv:
        for header in (b"Host: 127.0.0.1:\xb2", b"Host: 127.0.0.1\r\nOrigin: http://a:\xb2",
                       b"Host: 127.0.0.1\r\nOrigin: http://127.0.0.1:\xd9\xa3"):
            for path in (b"/", b"/ws", b"/api/snapshot", b"/metrics"):
                raw = b"GET " + path + b" HTTP/1.1\r\n" + header + b"\r\n\r\n"
                assert status_and_body(await exchange(srv.port, raw))[0] == 403, (header, path)
        assert srv.stats.internal_errors == 0
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_failing_handler_is_a_counted_500_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    def broken(request: Any) -> Any:
        raise RuntimeError("handler bug")

    async with running(make_hub(), routes={"/broken": broken}) as srv:
        for _ in range(3):
            raw = b"GET /broken HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            assert status_and_body(await exchange(srv.port, raw))[:3:2] == (500, b"internal server error\n")
        assert srv.stats.internal_errors == 3
        async with connect(url(srv)) as ws:  # the server goes on
            assert (await recv(ws))[0]["type"] == "hello"
    assert len([r for r in caplog.records if r.exc_info]) == 1


async def test_unicode_digits_in_a_resume_point_are_an_error_not_a_close() -> None:
    async with running(make_hub()) as srv, connect(url(srv, "since=%C2%B2&epoch=x")) as ws:
        hello, error = await recv(ws)
        assert hello["filter"] is None and error["type"] == "error" and "since" in error["error"]
        await ws.send('{"op": "subscribe", "snapshot": false}')
        assert (await recv(ws))[0]["type"] == "subscribed"


# -- sockets ----------------------------------------------------------------------------------


async def test_idle_sockets_make_room_and_clients_past_the_limit_get_503() -> None:
    """More half-open sockets than the server keeps: the oldest idle ones are closed, so
    /healthz and new clients are answered; past max_clients WebSocket clients get 503."""
    async with running(make_hub(), max_clients=4, handshake_slots=8) as srv:
        idle = []
        for _ in range(40):  # connect and say nothing
            s = socket.create_connection(("127.0.0.1", srv.port))
            idle.append(s)
        try:
            await async_wait_for("the idle ones to be closed", lambda: srv.sockets.stats.open <= 12)
            raw = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            assert status_and_body(await exchange(srv.port, raw))[0] == 200
            clients = [await connect(url(srv, "snapshot=0")) for _ in range(4)]
            try:
                with pytest.raises(InvalidStatus) as info:
                    await connect(url(srv))
                assert info.value.response.status_code == 503
                assert status_and_body(await exchange(srv.port, raw))[0] == 200
            finally:
                for ws in clients:
                    await ws.close()
            assert srv.sockets.stats.idle_closed >= 28
        finally:
            for s in idle:
                s.close()


async def test_a_silent_socket_costs_no_task_and_no_parser_until_it_speaks() -> None:
    """A socket that has sent nothing holds its transport, its connection and a timer:
    no task, no parser (a websockets connection with its handler task was about 11 KiB
    of heap each on asyncio's loop, which the allocator keeps after they close)."""
    async with running(make_hub()) as srv:
        tasks = len(asyncio.all_tasks())
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            silent = await asyncio.to_thread(
                lambda: [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(200)])
            await async_wait_for("the server to accept them", lambda: srv.sockets.stats.open == 200)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        try:
            per_socket = sum(s.size_diff for s in after.compare_to(before, "filename")) / 200
            # 3.1 KiB, mostly asyncio's transport
            assert per_socket < 4 * 1024, f"a silent socket costs {per_socket:.0f} bytes"
            # (asyncio's own loop has a task per accept for a moment)
            await async_wait_for("no task per socket", lambda: len(asyncio.all_tasks()) == tasks)
            # the first bytes make it a connection like any other, request split or not
            silent[0].sendall(b"G")
            await asyncio.sleep(0)
            silent[0].sendall(b"ET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            response = await asyncio.to_thread(silent[0].recv, 65536)
            assert response.startswith(b"HTTP/1.1 200 ")
            async with connect(url(srv, "snapshot=0")) as ws:
                assert (await recv(ws))[0]["type"] == "hello"
        finally:
            for s in silent:
                s.close()
        await async_wait_for("the sockets to be gone", lambda: srv.sockets.stats.open == 0)
        assert srv.sockets.stats.closed == 201


def _closed_after(sock: socket.socket, started: float) -> float:
    """Block until the server closes ``sock``; seconds since ``started``."""
    sock.settimeout(10)
    with contextlib.suppress(ConnectionResetError):  # an abort resets it
        while sock.recv(65536):
            continue
    return time.monotonic() - started


async def test_a_handshake_must_be_done_open_timeout_after_the_accept() -> None:
    """A silent socket is closed ``open_timeout`` after its accept; so is one that
    speaks but has not finished its handshake by then (not ``open_timeout`` after its
    first byte: a slowloris would get twice the time)."""
    async with running(make_hub(), open_timeout=1.0) as srv:
        started = time.monotonic()
        silent = socket.create_connection(("127.0.0.1", srv.port))
        slow = socket.create_connection(("127.0.0.1", srv.port))
        try:
            await asyncio.sleep(0.7)  # the time this test is about, not a condition
            slow.sendall(b"GET /ws HTTP/1.1\r\n")
            closes = await asyncio.gather(asyncio.to_thread(_closed_after, silent, started),
                                          asyncio.to_thread(_closed_after, slow, started))
            assert all(0.9 <= t < 1.6 for t in closes), closes
        finally:
            silent.close()
            slow.close()
        # a connection whose handshake is done stays past the deadline
        async with connect(url(srv, "snapshot=0")) as ws:
            await recv(ws)
            await asyncio.sleep(1.2)  # past the deadline
            await ws.send('{"op": "subscribe", "snapshot": false}')
            assert (await recv(ws))[0]["type"] == "subscribed"


async def test_closing_the_server_closes_the_silent_sockets() -> None:
    srv_cm = running(make_hub())
    srv = await srv_cm.__aenter__()
    silent = socket.create_connection(("127.0.0.1", srv.port))
    try:
        await async_wait_for("the server to accept it", lambda: srv.sockets.stats.open == 1)
        await asyncio.wait_for(srv_cm.__aexit__(None, None, None), 5)
        assert await asyncio.to_thread(_closed_after, silent, time.monotonic()) < 5
    finally:
        silent.close()
