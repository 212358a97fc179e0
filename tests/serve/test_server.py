"""Tests of procstream.serve.server (and the asyncio glue in procstream.stream.fanout): a real server on
127.0.0.1, port 0, with real websockets clients, raw sockets and a synthetic publisher."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from procstream.stream.hub import Hub
from procstream.serve.server import ProcstreamServer, ServerConfig, http_response, json_response
from tests.support.raw_ws import stalled_client
from tests.support.waiting import async_wait_for

ROOT = Path(__file__).resolve().parents[2]


# -- helpers ----------------------------------------------------------------------------------


def make_hub(**kw: Any) -> Hub:
    kw.setdefault("host", "testhost")
    kw.setdefault("interval", 1.0)
    hub = Hub(**kw)
    hub.load_state(
        {"web": {"procs": 1, "cpu_s": 0.5}},
        [{"pid": 1, "ppid": 0, "start_time": 1.0, "name": "web", "cmdline": ["web"],
          "group": "web", "user": "root", "uid": 0}],
    )
    return hub


@asynccontextmanager
async def running(hub: Hub, **kw: Any) -> AsyncIterator[ProcstreamServer]:
    server_kw = {k: kw.pop(k) for k in ("health", "authorize", "routes") if k in kw}
    kw.setdefault("port", 0)
    srv = ProcstreamServer(hub, ServerConfig(**kw), **server_kw)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


def url(srv: ProcstreamServer, query: str = "") -> str:
    return f"ws://127.0.0.1:{srv.port}/ws" + (f"?{query}" if query else "")


async def recv(ws: ClientConnection, timeout: float = 5.0) -> list[dict[str, Any]]:
    data = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(data, str), "server frames are text"
    arr = orjson.loads(data)
    assert isinstance(arr, list) and arr, "every frame is a non-empty JSON array"
    return arr


async def recv_until(ws: ClientConnection, pred: Callable[[dict[str, Any]], bool],
                     timeout: float = 5.0) -> list[dict[str, Any]]:
    """Objects received until (and including) the first one matching ``pred``."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        for obj in await recv(ws, max(0.01, deadline - time.monotonic())):
            out.append(obj)
            if pred(obj):
                return out


_n = 0


def ev_start(group: str = "web", **kw: Any) -> dict[str, Any]:
    global _n
    _n += 1
    ev = {"type": "proc.start", "ts": time.time(), "pid": 1000 + _n, "ppid": 1,
          "start_time": 100.0 + _n, "name": group, "cmdline": [group], "group": group,
          "user": "root", "uid": 0, "source": "poll"}
    ev.update(kw)
    return ev


def ev_cycle(**kw: Any) -> dict[str, Any]:
    ev = {"type": "cycle", "ts": time.time(), "duration_ms": 1.0, "procs_seen": 10,
          "tracked": 5, "started": 0, "exited": 0, "permission_errors": 0, "read_errors": 0}
    ev.update(kw)
    return ev


def ev_group(group: str, procs: int) -> dict[str, Any]:
    return {"type": "group.update", "ts": time.time(), "group": group, "procs": procs,
            "threads": procs, "cpu_s": 1.0}


async def http_get(port: int, path: str, method: str = "GET",
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = await asyncio.wait_for(reader.read(), 5)  # the server closes after responding
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *hdrs = head.decode().split("\r\n")
    hmap = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in hdrs)}
    return int(status_line.split()[1]), hmap, body


class RawClient:
    """A WebSocket client on a plain socket with a tiny receive buffer, so that when it
    stops reading, the server's write buffer fills up for real."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, query: str = "") -> RawClient:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws{'?' + query if query else ''} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def pause(self) -> None:
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]

    def resume(self) -> None:
        self.writer.transport.resume_reading()  # type: ignore[attr-defined]

    async def frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame (server frames are unmasked)."""
        async def read() -> tuple[int, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)
        return await asyncio.wait_for(read(), timeout)

    def close(self) -> None:
        self.writer.transport.abort()  # type: ignore[attr-defined]


# -- hello, snapshot, live --------------------------------------------------------------------


async def test_hello_snapshot_then_live_events() -> None:
    hub = make_hub()
    async with running(hub) as srv, connect(url(srv)) as ws:
        (hello,) = await recv(ws)
        assert hello == {"type": "hello", "v": 1, "server": "procstream/0.1.0",
                         "host": "testhost", "epoch": hub.epoch, "head_seq": 0,
                         "oldest_seq": 1, "interval": 1.0,
                         "filter": {"types": None, "groups": None}}
        (snap,) = await recv(ws)
        assert snap["type"] == "snapshot" and snap["seq"] == 0
        assert snap["groups"] == {"web": {"procs": 1, "cpu_s": 0.5, "group": "web"}}
        assert [p["pid"] for p in snap["procs"]] == [1]
        batch = [ev_cycle(), ev_start("web"), ev_group("web", 2)]
        hub.publish(batch)
        got = await recv(ws)
        assert got == batch  # one poll, one frame, in order, with seq and host
        assert [e["seq"] for e in got] == [1, 2, 3] and {e["host"] for e in got} == {"testhost"}
        assert srv.stats.connections == 1 and hub.stats.subscribers == 1
    # after the client left
    await async_wait_for("detach", lambda: hub.stats.subscribers == 0)


async def test_filters_types_wildcard_and_groups() -> None:
    hub = make_hub()
    async with running(hub) as srv, \
            connect(url(srv, "types=proc.*&snapshot=0")) as procs, \
            connect(url(srv, "groups=db&snapshot=0")) as db, \
            connect(url(srv, "types=cycle,group.update&groups=web")) as web:
        for ws in (procs, db, web):
            await recv(ws)  # hello
        (snap,) = await recv(web)
        assert snap["type"] == "snapshot" and list(snap["groups"]) == ["web"]
        hub.publish([ev_start("web"), ev_start("db"), ev_group("db", 1), ev_group("web", 2),
                     ev_cycle()])
        assert [(e["type"], e["group"]) for e in await recv(procs)] == [
            ("proc.start", "web"), ("proc.start", "db")]
        assert [(e["type"], e.get("group")) for e in await recv(db)] == [
            ("proc.start", "db"), ("group.update", "db"), ("cycle", None)]
        assert [(e["type"], e.get("group")) for e in await recv(web)] == [
            ("group.update", "web"), ("cycle", None)]
        # a subscribe frame changes the filter on the same connection
        await procs.send(orjson.dumps({"op": "subscribe", "types": ["cycle"], "snapshot": False}).decode())
        (ack,) = await recv(procs)
        assert ack == {"type": "subscribed", "filter": {"types": ["cycle"], "groups": None},
                       "seq": hub.head_seq}
        hub.publish([ev_start("web"), ev_cycle()])
        assert [e["type"] for e in await recv(procs)] == ["cycle"]


# -- resume -----------------------------------------------------------------------------------


async def test_exact_resume_after_disconnect() -> None:
    hub = make_hub()
    async with running(hub) as srv:
        seen: list[int] = []
        async with connect(url(srv, "snapshot=0")) as ws:
            hello = (await recv(ws))[0]
            for _ in range(3):
                hub.publish([ev_cycle(), ev_start()])
                seen += [e["seq"] for e in await recv(ws)]
        last = seen[-1]
        for _ in range(4):  # missed while disconnected
            hub.publish([ev_cycle(), ev_start()])
        async with connect(url(srv, f"since={last}&epoch={hello['epoch']}")) as ws:
            assert (await recv(ws))[0]["type"] == "hello"
            objs = await recv_until(ws, lambda o: o.get("seq") == hub.head_seq)
            hub.publish([ev_cycle()])
            objs += await recv(ws)
        seen += [o["seq"] for o in objs]
        assert all("seq" in o and o["type"] in ("cycle", "proc.start") for o in objs)
        # gap-free, no duplicates, no snapshot or reset in between
        assert seen == list(range(1, hub.head_seq + 1))
        assert hub.stats.resumes == 1


async def test_resume_by_subscribe_frame() -> None:
    hub = make_hub()
    async with running(hub) as srv:
        for _ in range(3):
            hub.publish([ev_cycle()])
        async with connect(url(srv, "snapshot=0")) as ws:
            await recv(ws)
            await ws.send(orjson.dumps({"op": "subscribe", "since": 1, "epoch": hub.epoch}).decode())
            objs = await recv_until(ws, lambda o: o.get("seq") == 3)
        assert [o["type"] for o in objs] == ["subscribed", "cycle", "cycle"]
        assert [o["seq"] for o in objs[1:]] == [2, 3]


async def test_reset_for_foreign_epoch_expired_point_and_future_seq() -> None:
    hub = make_hub(buffer_size=5)
    async with running(hub) as srv:
        for _ in range(10):
            hub.publish([ev_cycle()])
        assert hub.oldest_seq == 6
        cases: list[tuple[Callable[[], str], str]] = [
            (lambda: f"since={hub.head_seq - 2}&epoch=not-{hub.epoch}", "epoch"),
            (lambda: f"since={hub.oldest_seq - 2}&epoch={hub.epoch}", "expired"),
            (lambda: f"since={hub.head_seq + 1}&epoch={hub.epoch}", "future"),
        ]
        for query, reason in cases:
            async with connect(url(srv, query())) as ws:
                hello = (await recv(ws))[0]
                assert hello["type"] == "hello" and hello["oldest_seq"] == hub.oldest_seq
                reset, snap = await recv(ws)
                assert reset["type"] == "reset" and reset["reason"] == reason
                assert reset["seq"] == hub.head_seq and reset["epoch"] == hub.epoch
                assert snap["type"] == "snapshot" and snap["seq"] == hub.head_seq
                hub.publish([ev_cycle()])
                assert [e["seq"] for e in await recv(ws)] == [hub.head_seq]


# -- bad input --------------------------------------------------------------------------------


async def test_bad_frames_get_errors_and_connection_stays_usable() -> None:
    hub = make_hub()
    async with running(hub) as srv, connect(url(srv, "snapshot=0")) as ws:
        await recv(ws)
        cases = [
            ("{oops", "malformed JSON", None),
            ('{"op": "unsubscribe"}', "unknown op 'unsubscribe'", "unsubscribe"),
            ('{"op": "subscribe", "types": "cycle"}', '"types" must be a list', "subscribe"),
            ('{"op": "subscribe", "since": "x", "epoch": "e"}', '"since" must be', "subscribe"),
            ('[]', "expected a JSON object", None),
        ]
        for data, fragment, op in cases:
            await ws.send(data)
            (err,) = await recv(ws)
            assert err["type"] == "error" and fragment in err["error"] and err["op"] == op
        # binary frames are parsed the same way
        await ws.send(b'{"op":"nope"}')
        assert (await recv(ws))[0]["op"] == "nope"
        # still subscribed and still able to subscribe
        hub.publish([ev_cycle()])
        assert (await recv(ws))[0]["type"] == "cycle"
        await ws.send('{"op":"subscribe","types":["proc.start"],"snapshot":false}')
        assert (await recv(ws))[0]["type"] == "subscribed"
        assert srv.stats.bad_frames == 6


async def test_bad_query_gets_hello_and_error_then_can_subscribe() -> None:
    hub = make_hub()
    async with running(hub) as srv, connect(url(srv, "types=proc.begin")) as ws:
        hello, err = await recv(ws)  # one frame: hello first, then what was wrong
        assert hello["type"] == "hello" and hello["filter"] is None
        assert err["type"] == "error" and err["op"] is None
        assert "unknown event type 'proc.begin'" in err["error"]
        hub.publish([ev_cycle()])  # not subscribed: nothing arrives
        await ws.send('{"op":"subscribe","snapshot":false}')
        (ack,) = await recv(ws)
        assert ack["type"] == "subscribed" and ack["seq"] == 1
        hub.publish([ev_cycle()])
        assert [e["seq"] for e in await recv(ws)] == [2]


async def test_oversize_frame_closes_1009() -> None:
    hub = make_hub()
    async with running(hub, max_message_size=4096) as srv, connect(url(srv)) as ws:
        await recv(ws)
        await ws.send("x" * 5000)
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await recv(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_abusive_client_closed_1008() -> None:
    hub = make_hub()
    async with running(hub) as srv, connect(url(srv, "snapshot=0")) as ws:
        await recv(ws)
        for _ in range(21):
            await ws.send("not json")
        errors = 0
        with pytest.raises(ConnectionClosed) as info:
            while True:
                errors += len(await recv(ws))
        assert errors == 21
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        assert srv.stats.abusive_closes == 1


# -- limits -----------------------------------------------------------------------------------


async def test_max_clients_refused_with_503() -> None:
    hub = make_hub()
    async with running(hub, max_clients=3) as srv:
        clients = [await connect(url(srv, "snapshot=0")) for _ in range(3)]
        try:
            with pytest.raises(InvalidStatus) as info:
                await connect(url(srv))
            assert info.value.response.status_code == 503
            assert b"too many clients" in info.value.response.body
            assert srv.stats.refused_max_clients == 1
            await clients.pop().close()
            await async_wait_for("disconnect", lambda: len(srv.connections) == 2)
            async with connect(url(srv)) as ws:
                assert (await recv(ws))[0]["type"] == "hello"
        finally:
            for ws in clients:
                await ws.close()


async def test_dead_peer_dropped_by_ping_timeout() -> None:
    hub = make_hub()
    async with running(hub, ping_interval=0.1, ping_timeout=0.2, close_timeout=0.2) as srv:
        raw = await RawClient.open(srv.port)  # never answers pings
        try:
            await async_wait_for("subscriber", lambda: hub.stats.subscribers == 1)
            await async_wait_for("ping timeout", lambda: hub.stats.subscribers == 0, 5)
            assert srv.connections == set()
        finally:
            raw.close()


# -- slow subscribers -------------------------------------------------------------------------


async def _publish_until(hub: Hub, cond: Callable[[], bool], *, pad: int = 1000,
                         per_batch: int = 20, max_batches: int = 2000) -> int:
    """Synthetic publisher: batches of padded cycle events, one per loop turn, until cond."""
    n = 0
    while not cond():
        assert n < max_batches, "publisher gave up"
        hub.publish([ev_cycle(pad="x" * pad) for _ in range(per_batch)])
        n += 1
        await asyncio.sleep(0.002)
    return n


async def test_slow_subscriber_overflows_while_healthy_one_keeps_up() -> None:
    limit = 16 * 1024
    hub = make_hub(queue_limit=500, overflow_grace=30.0)
    async with running(hub, write_limit=limit, ping_interval=None, close_timeout=0.5) as srv:
        healthy = await connect(url(srv, "snapshot=0"), max_size=None)
        slow = await RawClient.open(srv.port)
        try:
            await recv(healthy)
            await slow.frame()  # hello
            await slow.frame()  # snapshot
            slow.pause()
            await async_wait_for("condition", lambda: len(srv.connections) == 2)
            slow_conn = next(c for c in srv.connections
                             if c.remote_address[1] == slow.writer.get_extra_info("sockname")[1])
            slow_sub = next(s for s in hub.subscribers if s.transport is slow_conn)

            received: list[int] = []
            latencies: list[float] = []

            async def read_healthy() -> None:
                while True:
                    for e in await recv(healthy):
                        received.append(e["seq"])
                        latencies.append(time.time() - e["ts"])

            reader = asyncio.create_task(read_healthy())
            max_buffer = 0

            def overflowed() -> bool:
                nonlocal max_buffer
                max_buffer = max(max_buffer, slow_conn.transport.get_write_buffer_size())
                # the hub keeps nothing queued for it: no outbox, no per-subscriber events
                assert not slow_sub.outbox
                return hub.stats.overflows >= 1

            await _publish_until(hub, overflowed)
            for _ in range(20):  # keep publishing a while after the overflow
                overflowed()
                hub.publish([ev_cycle(pad="x" * 1000) for _ in range(20)])
                await asyncio.sleep(0.002)
            await async_wait_for("healthy catch-up", lambda: received and received[-1] == hub.head_seq)
            reader.cancel()

            # the healthy one got every event, in order, on time
            assert received == list(range(1, hub.head_seq + 1))
            latencies.sort()
            assert latencies[int(len(latencies) * 0.99)] < 0.5
            # the stalled one never cost more than its write-buffer bound (+ one frame)
            assert max_buffer <= limit + 64 * 1024
            assert slow_sub.ov_pending

            # when it reads again: what was in flight, then overflow + snapshot, then live
            slow.resume()
            objs: list[dict[str, Any]] = []
            while not any(o["type"] == "snapshot" for o in objs):
                opcode, payload = await slow.frame()
                assert opcode == 1
                objs.extend(orjson.loads(payload))
            ov = next(o for o in objs if o["type"] == "overflow")
            snap = objs[-1]
            assert snap["seq"] == ov["to_seq"] == hub.head_seq
            delivered = [o["seq"] for o in objs if o["type"] == "cycle"]
            assert delivered == list(range(1, ov["from_seq"]))  # gap-free up to the drop
            assert ov["dropped"] == ov["to_seq"] - ov["from_seq"] + 1
            hub.publish([ev_cycle()])
            opcode, payload = await slow.frame()
            assert [e["seq"] for e in orjson.loads(payload)] == [hub.head_seq]
        finally:
            slow.close()
            await healthy.close()


async def test_stuck_subscriber_closed_1013_after_grace() -> None:
    hub = make_hub(queue_limit=200, overflow_grace=0.3)
    async with running(hub, write_limit=16 * 1024, ping_interval=None, close_timeout=0.3) as srv:
        slow = await RawClient.open(srv.port, "snapshot=0")
        try:
            await slow.frame()
            slow.pause()
            # behind past the bound, or not draining at all: either way within the grace
            await _publish_until(hub, lambda: hub.stats.slow_consumer_closes >= 1)
            await async_wait_for("1013 close", lambda: hub.stats.slow_consumer_closes == 1)
            # the server dropped it for good (closing handshake bounded, then abort)
            await async_wait_for("connection gone", lambda: srv.connections == set())
            assert hub.stats.subscribers == 0
            # what it can still read ends with the 1013 close frame, or the connection was cut
            slow.resume()
            opcode = None
            try:
                while opcode != 8:
                    opcode, payload = await slow.frame()
                assert struct.unpack("!H", payload[:2])[0] == 1013
                assert payload[2:] == b"slow consumer"
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
        finally:
            slow.close()


# -- scale and churn --------------------------------------------------------------------------


async def test_500_subscribers_each_receive_every_event() -> None:
    hub = make_hub()
    async with running(hub) as srv:
        clients = await asyncio.gather(*(connect(url(srv, "snapshot=0")) for _ in range(500)))
        try:
            await asyncio.gather(*(recv(ws) for ws in clients))
            await async_wait_for("condition", lambda: hub.stats.subscribers == 500)
            for i in range(20):
                hub.publish([ev_cycle(), ev_start()])
                await asyncio.sleep(0)
            head = hub.head_seq

            async def collect(ws: ClientConnection) -> list[int]:
                objs = await recv_until(ws, lambda o: o.get("seq") == head, timeout=20)
                return [o["seq"] for o in objs]

            results = await asyncio.gather(*(collect(ws) for ws in clients))
            assert all(r == list(range(1, head + 1)) for r in results)
            # one encoding per batch, not per subscriber
            assert hub.stats.frames_encoded == 20
        finally:
            await asyncio.gather(*(ws.close() for ws in clients))


async def test_connect_disconnect_churn_keeps_memory_flat() -> None:
    hub = make_hub()
    async with running(hub) as srv:
        hub.publish([ev_start() for _ in range(50)])

        async def cycles(n: int) -> None:
            for _ in range(n // 25):
                async def one() -> None:
                    async with connect(url(srv)) as ws:
                        await recv(ws)
                        await recv(ws)
                await asyncio.gather(*(one() for _ in range(25)))
            await async_wait_for("condition", lambda: hub.stats.subscribers == 0 and not srv.connections)

        await cycles(200)  # warm-up: caches, lazily created objects
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            base_tasks = len(asyncio.all_tasks())
            await cycles(1000)
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
        assert growth < 200 * 1024, f"memory grew by {growth} bytes over 1,000 connections"
        assert len(asyncio.all_tasks()) <= base_tasks
        assert hub.stats.subscribers_total == 1200
        assert hub._by_filter == {} and hub._lagging == set()


# -- bookmark ---------------------------------------------------------------------------------


async def test_bookmark_after_silence() -> None:
    hub = make_hub(bookmark_interval=0.2)
    async with running(hub) as srv, connect(url(srv, "types=proc.start&snapshot=0")) as ws:
        await recv(ws)
        hub.publish([ev_cycle(), ev_cycle()])  # filtered out: silence for this client
        t0 = time.monotonic()
        (bm,) = await recv(ws, timeout=3)
        assert bm == {"type": "bookmark", "seq": 2}
        assert 0.15 <= time.monotonic() - t0 < 1.5


# -- HTTP -------------------------------------------------------------------------------------


async def test_healthz_200_then_503() -> None:
    state = {"ok": True}

    def health() -> tuple[bool, dict[str, Any]]:
        return state["ok"], {"last_poll_age_s": 0.5 if state["ok"] else 9.0}

    async with running(make_hub(), health=health) as srv:
        status, headers, body = await http_get(srv.port, "/healthz")
        assert status == 200 and headers["content-type"] == "application/json"
        assert orjson.loads(body) == {"status": "ok", "last_poll_age_s": 0.5}
        state["ok"] = False
        status, _, body = await http_get(srv.port, "/healthz")
        assert status == 503 and orjson.loads(body) == {"status": "unhealthy", "last_poll_age_s": 9.0}


async def test_api_snapshot() -> None:
    hub = make_hub()
    hub.publish([ev_start("db"), ev_group("db", 1)])
    async with running(hub) as srv:
        status, headers, body = await http_get(srv.port, "/api/snapshot")
        snap = orjson.loads(body)
        assert status == 200 and headers["content-type"] == "application/json"
        assert snap == hub.snapshot()
        assert (snap["host"], snap["epoch"], snap["seq"]) == ("testhost", hub.epoch, 2)
        _, _, body = await http_get(srv.port, "/api/snapshot?groups=db")
        assert list(orjson.loads(body)["groups"]) == ["db"]
        status, _, body = await http_get(srv.port, "/api/snapshot?groupz=db")
        assert status == 400 and "unknown query parameter" in orjson.loads(body)["error"]


async def test_static_files_types_and_traversal(tmp_path: Path) -> None:
    web = tmp_path / "web"
    (web / "js").mkdir(parents=True)
    (web / "index.html").write_text("<!doctype html><title>viewer</title>")
    (web / "app.css").write_text("body{}")
    (web / "js" / "app.js").write_text("console.log(1)")
    (web / ".secret").write_text("no")
    (tmp_path / "outside.txt").write_text("secret")
    (web / "link.txt").symlink_to(tmp_path / "outside.txt")
    async with running(make_hub(), static_dir=web) as srv:
        p = srv.port
        status, h, body = await http_get(p, "/")
        assert (status, h["content-type"], body) == (
            200, "text/html; charset=utf-8", b"<!doctype html><title>viewer</title>")
        assert h["x-content-type-options"] == "nosniff"
        assert (await http_get(p, "/index.html"))[0] == 200
        status, h, body = await http_get(p, "/app.css")
        assert (status, h["content-type"], body) == (200, "text/css; charset=utf-8", b"body{}")
        status, h, _ = await http_get(p, "/js/app.js?v=1")
        assert (status, h["content-type"]) == (200, "text/javascript; charset=utf-8")
        status, h, body = await http_get(p, "/app.css", method="HEAD")
        assert status == 200 and h["content-length"] == "6" and body == b""
        for bad in ["/missing.js", "/../outside.txt", "/%2e%2e/outside.txt", "/js/../../outside.txt",
                    "/..%2foutside.txt", "/.secret", "/link.txt", "/js", "/js%00.html",
                    "//etc/passwd", "/%2fetc/passwd"]:
            status, _, body = await http_get(p, bad)
            assert status == 404, bad
            assert b"secret" not in body
        assert (await http_get(p, "/", method="POST"))[0] == 405
        status, h, _ = await http_get(p, "/ws")  # plain HTTP to the WebSocket endpoint
        assert status == 426 and h["upgrade"] == "websocket"


async def test_placeholder_page_without_viewer(tmp_path: Path) -> None:
    async with running(make_hub(), static_dir=tmp_path / "absent") as srv:
        status, h, body = await http_get(srv.port, "/")
        assert status == 200 and b"procstream is running" in body
        assert (await http_get(srv.port, "/app.js"))[0] == 404


async def test_authorize_seam_and_extra_routes() -> None:
    seen: list[str] = []

    def authorize(request: Any) -> Any:
        seen.append(request.path)
        if request.path.startswith("/healthz"):
            return None
        if request.headers.get("Authorization") != "Bearer s3cret":
            return http_response(401, b"token required\n", headers={"WWW-Authenticate": "Bearer"})
        return None

    async def metrics(request: Any) -> Any:
        return http_response(200, b"procstream_up 1\n", "text/plain; version=0.0.4")

    async with running(make_hub(), authorize=authorize, routes={"/metrics": metrics}) as srv:
        good = {"Authorization": "Bearer s3cret"}
        assert (await http_get(srv.port, "/healthz"))[0] == 200
        assert (await http_get(srv.port, "/metrics"))[0] == 401
        status, h, body = await http_get(srv.port, "/metrics", headers=good)
        assert (status, body) == (200, b"procstream_up 1\n")
        srv.add_route("/extra", lambda r: json_response(200, {"x": 1}))
        assert (await http_get(srv.port, "/extra", headers=good))[2] == b'{"x":1}'
        with pytest.raises(InvalidStatus) as info:
            await connect(url(srv))
        assert info.value.response.status_code == 401
        async with connect(url(srv), additional_headers=good) as ws:
            assert (await recv(ws))[0]["type"] == "hello"
        assert srv.stats.refused_authorize == 2
        assert seen.count("/ws") == 2 and "/healthz" in seen


# -- shutdown ---------------------------------------------------------------------------------


async def test_close_sends_1001_to_every_client() -> None:
    hub = make_hub()
    srv = ProcstreamServer(hub, ServerConfig(port=0, close_timeout=1.0))
    await srv.start()
    clients = [await connect(url(srv), max_size=None) for _ in range(3)]
    stalled = await RawClient.open(srv.port)

    async def drain(ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    readers = [asyncio.create_task(drain(ws)) for ws in clients]
    try:
        stalled.pause()
        # a client that stopped reading, with a full write buffer, must not hold up shutdown
        await _publish_until(hub, lambda: hub.stats.lagging >= 1)
        t0 = time.monotonic()
        await srv.close()
        assert time.monotonic() - t0 < 5
        await asyncio.wait_for(asyncio.gather(*readers), 5)
        for ws in clients:
            assert ws.close_code == 1001
            assert ws.close_reason == "server shutting down"
        assert hub.stats.subscribers == 0
    finally:
        stalled.close()
        await srv.close()
        for ws in clients:
            await ws.close()


_SERVER_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from procstream.stream.hub import Hub
    from procstream.serve.server import ProcstreamServer, ServerConfig

    async def main():
        hub = Hub(host="sub", interval=1.0)
        hub.load_state({}, [])
        srv = ProcstreamServer(hub, ServerConfig(port=0))
        await srv.start()
        print(srv.port, flush=True)
        loop = asyncio.get_running_loop()
        while (line := await loop.run_in_executor(None, sys.stdin.readline)).strip() != "stop":
            hub.publish([{"type": "cycle", "ts": 0.0}])
        await srv.close()
        print("closed", flush=True)

    asyncio.run(main())
""")


async def test_server_process_shutdown_closes_clients_1001() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SERVER_SCRIPT], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10))
        clients = [await connect(f"ws://127.0.0.1:{port}/ws?snapshot=0") for _ in range(2)]
        for ws in clients:
            assert (await recv(ws))[0]["host"] == "sub"
        proc.stdin.write("publish\n")
        proc.stdin.flush()
        for ws in clients:
            assert (await recv(ws))[0]["seq"] == 1
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1001
        rc = await asyncio.wait_for(asyncio.to_thread(proc.wait), 5)
        assert rc == 0 and proc.stdout.read().strip() == "closed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


async def test_a_connected_client_that_only_listens_costs_little_heap() -> None:
    """What a subscribed client that keeps up costs the server: its connection, the
    protocol's parser and its subscriber; no task, no queue, no handshake headers. A
    thousand such clients are a thousand times this, and Python's allocator keeps most
    of it after they leave."""
    hub = make_hub()
    async with running(hub) as srv:
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            clients = await asyncio.to_thread(lambda: [stalled_client(srv.port, "snapshot=0") for _ in range(100)])
            await async_wait_for("100 subscribers", lambda: hub.stats.subscribers == 100)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        try:
            clients_own = [tracemalloc.Filter(False, "*/raw_ws.py"), tracemalloc.Filter(False, "*/socket.py")]
            growth = sum(s.size_diff for s in after.filter_traces(clients_own).compare_to(
                before.filter_traces(clients_own), "filename"))
            # 4 KiB on asyncio's loop; 13 KiB as a websockets asyncio connection
            assert growth / 100 < 6 * 1024, f"a client costs {growth / 100:.0f} bytes"
        finally:
            for s in clients:
                s.close()
