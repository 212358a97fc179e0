"""The asyncio layer's own framing: what :class:`WebSocketTransport` writes straight into
a connection must be what websockets itself would send, in order with what it sends."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode

from procstream.stream.fanout import WebSocketTransport, text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_a_text_frame_is_the_one_websockets_builds(size: int) -> None:
    payload = bytes(b"x"[0] + i % 7 for i in range(size))
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


def test_the_same_payload_is_framed_once_and_another_one_afresh() -> None:
    a = b'[{"type":"cycle"}]'
    first = text_frame(a)
    assert text_frame(a) is first
    b = b'[{"type":"group.update"}]'
    assert text_frame(b) == Frame(Opcode.TEXT, b).serialize(mask=False)
    assert text_frame(a) == first  # built again, still right


async def test_frames_written_directly_arrive_whole_and_in_order_with_websockets_own() -> None:
    texts = ["a" * n for n in (3, 200, 70_000, 0, 126)]
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        t = WebSocketTransport(ws, limit=1 << 30)
        for i, text in enumerate(texts):
            if i == 2:
                await ws.send("from websockets")  # its own framing, between ours
            assert t.try_write(text.encode()) == 1
        await done.wait()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as client:
            got = [await asyncio.wait_for(client.recv(), 10) for _ in range(len(texts) + 1)]
            done.set()
    assert got == [*texts[:2], "from websockets", *texts[2:]]


async def test_a_connection_with_an_extension_is_framed_by_websockets() -> None:
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        assert ws.protocol.extensions  # permessage-deflate: websockets compresses
        t = WebSocketTransport(ws, limit=1 << 30)
        assert t.try_write(b"compressed " * 100) == 1
        await done.wait()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        head = await asyncio.wait_for(reader.readexactly(2), 10)
        done.set()
        writer.close()
    assert head[0] == 0xC1  # final, RSV1 (compressed), text
    assert head[1] < len(b"compressed " * 100)


async def test_a_closing_connection_takes_no_more_frames() -> None:
    done = asyncio.Event()
    result: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        t = WebSocketTransport(ws, limit=1 << 30)
        await ws.close()
        result.append(t.try_write(b"late"))
        done.set()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as client:
            await asyncio.wait_for(done.wait(), 10)
            assert await asyncio.wait_for(client.wait_closed(), 10) is None
    assert result == [-1]
