"""procstream.serve.connections: which socket makes room when there are too many
(:class:`Sockets`), and what one :class:`Connection` does on a real socket: frames in
order, messages whole, keepalive and closing deadlines, pulling after a wake, and no
cycle left behind."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from procstream.serve.connections import Connection, Listener, Sockets
from procstream.stream.fanout import text_frame
from tests.support.raw_ws import (
    handshake,
    masked,
    response_head,
    response_line,
    stalled_client,
)
from tests.support.waiting import async_wait_for


class Conn:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_sockets_close_the_oldest_idle_one_never_one_that_sent_its_request() -> None:
    sockets = Sockets(limit=3)
    a, b, c, d, e = (Conn() for _ in range(5))
    for conn in (a, b, c):
        sockets.opened(conn)  # type: ignore[arg-type]
    sockets.requested(a)  # type: ignore[arg-type]
    sockets.opened(d)  # type: ignore[arg-type]
    assert (a.aborted, b.aborted, c.aborted) == (False, True, False)
    sockets.requested(c)  # type: ignore[arg-type]
    sockets.requested(d)  # type: ignore[arg-type]
    sockets.opened(e)  # type: ignore[arg-type]
    assert not e.aborted and sockets.stats.open == 4  # nothing idle but the newcomer
    sockets.closed(a)  # type: ignore[arg-type]
    assert sockets.stats.open == 3 and sockets.stats.idle_closed == 1
    sockets.closed(b)  # type: ignore[arg-type]  # the idle one it aborted, gone now
    assert sockets.stats.open == 3 and sockets.stats.closed == 2


# -- Connection: a real listener on 127.0.0.1 with a handler that records what it gets ----


class Recorder:
    """A connections Handler: accepts ``/ws``, 404 for the rest; keeps what it is told."""

    def __init__(self) -> None:
        self.opened_conns: list[Connection] = []
        self.messages: list[str | bytes] = []
        self.closed_conns: list[Connection] = []

    async def respond(self, conn: Connection, request: Request) -> Response | None:
        if request.path == "/bug":
            raise RuntimeError("a handler's bug")
        if request.path.startswith("/ws"):
            return None
        assert conn.protocol is not None
        return conn.protocol.reject(404, "not found\n")

    def opened(self, conn: Connection) -> None:
        self.opened_conns.append(conn)

    def received(self, conn: Connection, message: str | bytes) -> None:
        if message == "bug":
            raise RuntimeError("a handler's bug")
        self.messages.append(message)

    def closed(self, conn: Connection) -> None:
        self.closed_conns.append(conn)


@contextlib.asynccontextmanager
async def listening(**limits: Any) -> AsyncIterator[tuple[Recorder, Listener, int]]:
    handler = Recorder()
    listener = Listener(handler, Sockets(100), **limits)
    server = await asyncio.get_running_loop().create_server(listener, "127.0.0.1", 0)
    try:
        yield handler, listener, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await asyncio.wait_for(listener.shut(1001, "test over"), 10)
        await server.wait_closed()


async def opened(handler: Recorder, n: int = 1) -> Connection:
    await async_wait_for("the handshake", lambda: len(handler.opened_conns) >= n)
    return handler.opened_conns[n - 1]


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (what follows the 101's head)."""
    sock.settimeout(10)
    data = b""
    with contextlib.suppress(ConnectionResetError):  # an abort resets it
        while chunk := sock.recv(65536):
            data += chunk
    return data


async def stalling(handler: Recorder, port: int) -> tuple[socket.socket, Connection]:
    """A client that reads nothing it is not asked to (:func:`stalled_client`), whose
    socket buffers little on the server's side too: a test fills the buffers fast."""
    sock = await asyncio.to_thread(stalled_client, port)
    conn = await opened(handler)
    assert conn.transport is not None
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return sock, conn


def close_code(data: bytes) -> int:
    """The code of the close frame at the end of ``data`` (unmasked server frames)."""
    i = data.rindex(b"\x88")
    return int.from_bytes(data[i + 2 : i + 4], "big")


async def test_frames_written_directly_arrive_whole_and_in_order_with_the_protocols_own() -> None:
    texts = ["a" * n for n in (3, 200, 70_000, 0, 126, 300_000)]
    async with listening(write_limit=1 << 30) as (handler, _, port):
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None, max_size=None) as client:
            conn = await opened(handler)
            for text in texts:
                assert conn.try_write(text.encode()) == 1
            conn.close(1000, "that was all")  # websockets frames this one
            got = [await asyncio.wait_for(client.recv(), 10) for _ in texts]
            with pytest.raises(ConnectionClosedOK):
                await asyncio.wait_for(client.recv(), 10)
            assert client.close_code == 1000 and client.close_reason == "that was all"
    assert got == texts
    assert handler.closed_conns == [conn]


async def test_a_client_offering_compression_gets_plain_frames() -> None:
    async with listening() as (handler, _, port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            sock.sendall(handshake().replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"))
            head = await asyncio.to_thread(response_head, sock)
            assert head.startswith(b"HTTP/1.1 101 ") and b"sec-websocket-extensions" not in head.lower()
            conn = await opened(handler)
            assert conn.try_write(b"plain " * 100) == 1
            frame = await asyncio.to_thread(sock.recv, 4)
            assert frame[:2] == b"\x81\x7e"  # final text frame, not compressed (no RSV1), 16-bit length
        finally:
            sock.close()


async def test_a_handler_that_raises_answers_500_or_closes_1011_and_the_server_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async with listening() as (handler, _, port):
        sock = socket.create_connection(("127.0.0.1", port))
        try:
            sock.sendall(b"GET /bug HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await asyncio.to_thread(read_until_closed, sock)).startswith(b"HTTP/1.1 500 ")
        finally:
            sock.close()
        assert "answering GET /bug failed" in caplog.text
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as client:
            await client.send("bug")
            await asyncio.wait_for(client.wait_closed(), 10)
            assert client.close_code == 1011
        assert "handling a WebSocket message failed" in caplog.text
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as client:
            await client.send("fine")
            await async_wait_for("its message", lambda: handler.messages == ["fine"])


async def test_a_closing_connection_takes_no_more_frames() -> None:
    async with listening() as (handler, _, port):
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as client:
            conn = await opened(handler)
            conn.close(1000, "")
            assert conn.try_write(b"late") == -1 and not conn.writable() and not conn.write(b"late")
            await asyncio.wait_for(client.wait_closed(), 10)
        await async_wait_for("the close", lambda: handler.closed_conns == [conn])
        assert conn.try_write(b"later") == -1


async def test_messages_whole_fragmented_and_binary_reach_the_handler_invalid_utf8_closes_1007() -> None:
    async with listening() as (handler, _, port):
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as client:
            await client.send("whole")
            await client.send(iter(["frag", "mented"]))
            await client.send(b"\x00\x01")
            await async_wait_for("three messages", lambda: len(handler.messages) == 3)
        assert handler.messages == ["whole", "fragmented", b"\x00\x01"]
        sock = await asyncio.to_thread(stalled_client, port)
        try:
            sock.sendall(masked(b"\xff\xfe"))
            data = await asyncio.to_thread(read_until_closed, sock)
            assert close_code(data) == 1007
        finally:
            sock.close()
        assert len(handler.messages) == 3


async def test_a_message_sent_with_the_handshake_is_read_once_the_handshake_is_done() -> None:
    async with listening() as (handler, _, port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            sock.sendall(handshake() + masked(b"right behind"))  # one packet
            assert (await asyncio.to_thread(response_line, sock)).startswith(b"HTTP/1.1 101 ")
            await async_wait_for("the message", lambda: handler.messages == ["right behind"])
            assert len(handler.opened_conns) == 1
        finally:
            sock.close()


async def test_keepalive_keeps_a_client_that_answers_and_closes_one_that_does_not_with_1011() -> None:
    async with listening(ping_interval=0.2, ping_timeout=0.3, close_timeout=0.5) as (handler, _, port):
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None, ping_interval=None) as answering:
            silent = await asyncio.to_thread(stalled_client, port)  # reads, never answers a ping
            try:
                started = time.monotonic()
                data = await asyncio.to_thread(read_until_closed, silent)
                took = time.monotonic() - started
            finally:
                silent.close()
            assert data.startswith(b"\x89\x04")  # the ping: 4 bytes of payload
            assert close_code(data) == 1011
            # a ping, no pong 0.3 s later: 1011; no answer to that 0.5 s later: aborted
            assert 0.4 <= took < 2.5, took
            # all the while, the other one answered (websockets' client does it by itself)
            conn = handler.opened_conns[0]
            assert conn.writable()
            await answering.send("still here")
            await async_wait_for("its message", lambda: handler.messages == ["still here"])


async def test_a_ping_waits_while_the_buffer_is_full() -> None:
    """A peer that is only slow to read would miss the pong deadline behind a full
    buffer: the ping goes once the buffer drains (one that never reads is the hub's to
    close, with 1013)."""
    async with listening(ping_interval=0.2, ping_timeout=0.2, close_timeout=0.5, write_limit=4096) as (
            handler, _, port):
        sock, conn = await stalling(handler, port)
        try:
            for _ in range(300):  # far more than the kernel's buffers take
                assert conn.write(b"x" * 1000)
            await asyncio.sleep(1.0)  # the time this test is about: five ping intervals
            assert not conn.writable() and conn.protocol is not None and conn.protocol.state is OPEN
            data = await asyncio.to_thread(read_until_closed, sock)  # reads, never answers
            assert data.count(b"\x81\x7e\x03\xe8") == 300  # every frame, then the ping
            assert b"\x89\x04" in data and close_code(data) == 1011
        finally:
            sock.close()


async def test_a_peer_that_does_not_finish_the_closing_handshake_is_aborted_close_timeout_later() -> None:
    async with listening(close_timeout=0.5) as (handler, _, port):
        sock = await asyncio.to_thread(stalled_client, port)
        try:
            conn = await opened(handler)
            started = time.monotonic()
            conn.close(1000, "bye")
            data = await asyncio.to_thread(read_until_closed, sock)  # reads, never answers
            took = time.monotonic() - started
        finally:
            sock.close()
        assert close_code(data) == 1000
        assert 0.4 <= took < 1.5, took
        await async_wait_for("the close", lambda: handler.closed_conns == [conn])


class Frames:
    """What a connection pulls from after a wake: a subscriber's ``next_frame``."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = collections.deque(frames)
        self.pulled = 0

    def next_frame(self) -> bytes | None:
        if not self.frames:
            return None
        self.pulled += 1
        return self.frames.popleft()


async def test_a_woken_connection_pulls_as_its_buffer_drains_never_inside_the_wake() -> None:
    frames = [b"%05d" % i + b"x" * 2000 for i in range(300)]
    async with listening(write_limit=8192) as (handler, _, port):
        sock, conn = await stalling(handler, port)
        try:
            source = Frames(frames)
            conn.subscriber = source  # type: ignore[assignment]
            conn.wake()
            assert source.pulled == 0  # the hub's call returns first
            # nobody reads: it stops when the buffers are full, far from the end
            await async_wait_for("the buffer to fill", lambda: not conn.writable())
            assert conn.try_write(b"fast path") == 0  # full: not written
            assert 0 < source.pulled < len(frames)
            expected = b"".join(text_frame(f) for f in frames)
            got = await asyncio.to_thread(read_exactly, sock, len(expected))
            assert got == expected  # every frame, in order, each one whole
            assert source.pulled == len(frames)
        finally:
            sock.close()


async def test_a_closed_connection_is_freed_without_the_collector() -> None:
    async with listening() as (handler, listener, port):
        gc.collect()
        gc.disable()
        try:
            for _ in range(5):
                client = await connect(f"ws://127.0.0.1:{port}/ws", compression=None)
                await client.close()
            for _ in range(5):
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert (await asyncio.to_thread(read_until_closed, sock)).startswith(b"HTTP/1.1 404 ")
                sock.close()
            await async_wait_for("every socket closed", lambda: listener.sockets.stats.closed == 10)
            handler.opened_conns.clear()
            handler.closed_conns.clear()
            await async_wait_for("no connection left", lambda: not [
                o for o in gc.get_objects() if type(o) is Connection or issubclass(type(o), ServerProtocol)])
        finally:
            gc.enable()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    sock.settimeout(10)
    data = b""
    while len(data) < n and (chunk := sock.recv(65536)):
        data += chunk
    return data
