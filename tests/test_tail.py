"""Tests of procstream.tail: NDJSON output, reconnects, resume, resets, exit codes."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from procstream.stream.hub import Hub
from procstream.serve.server import ProcstreamServer, ServerConfig, http_response
from procstream.tail import TailState, build_url, tail
from tests.support.waiting import async_wait_for

ROOT = Path(__file__).resolve().parents[1]


class Out(io.StringIO):
    """stdout stand-in that records flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()

    def events(self) -> list[dict[str, Any]]:
        text = self.getvalue()
        assert text == "" or text.endswith("\n")
        return [orjson.loads(line) for line in text.splitlines()]


def new_hub() -> Hub:
    hub = Hub(host="tailhost", interval=1.0)
    hub.load_state({}, [])
    return hub


@asynccontextmanager
async def serving(hub: Hub, port: int = 0, **kw: Any) -> AsyncIterator[ProcstreamServer]:
    srv = ProcstreamServer(hub, ServerConfig(port=port, close_timeout=0.5), **kw)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


@asynccontextmanager
async def tailing(url: str, **kw: Any) -> AsyncIterator[tuple[Out, io.StringIO, asyncio.Task[int]]]:
    out, err = Out(), io.StringIO()
    kw.setdefault("backoff_initial", 0.05)
    kw.setdefault("backoff_max", 0.2)
    task = asyncio.create_task(tail(url, out=out, err=err, **kw))
    try:
        yield out, err, task
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


def cycle(**kw: Any) -> dict[str, Any]:
    return {"type": "cycle", "ts": time.time(), "duration_ms": 1.0, **kw}


def pstart(pid: int, group: str = "web") -> dict[str, Any]:
    return {"type": "proc.start", "ts": time.time(), "pid": pid, "ppid": 1,
            "start_time": float(pid), "name": group, "cmdline": [group], "group": group,
            "user": "root", "uid": 0, "source": "poll"}


# -- pure parts -------------------------------------------------------------------------------


def test_build_url() -> None:
    assert build_url("ws://h:1") == "ws://h:1/ws?snapshot=0"
    assert build_url("http://h:1/") == "ws://h:1/ws?snapshot=0"
    assert build_url("https://h/x/ws") == "wss://h/x/ws?snapshot=0"
    assert build_url("h:8765", types=["proc.*", "cycle"], groups=["a b"],
                     resume={"since": "5", "epoch": "e"}) == (
        "ws://h:8765/ws?snapshot=0&types=proc.*,cycle&groups=a+b&since=5&epoch=e")
    with pytest.raises(ValueError):
        build_url("ftp://h")


def test_tail_state_prints_events_only_and_tracks_resume_point() -> None:
    st = TailState()
    text, msgs = st.feed([{"type": "hello", "epoch": "E1", "filter": {"types": None}}])
    assert (text, msgs, st.resume_params()) == ("", [], {})
    ev = {"type": "cycle", "seq": 7, "host": "h"}
    text, msgs = st.feed([ev, {"type": "proc.start", "seq": 8, "pid": 1}])
    assert text == '{"type":"cycle","seq":7,"host":"h"}\n{"type":"proc.start","seq":8,"pid":1}\n'
    assert st.resume_params() == {"since": "8", "epoch": "E1"}
    st.feed([{"type": "bookmark", "seq": 12}])
    assert st.since == 12
    text, msgs = st.feed([{"type": "overflow", "dropped": 4, "from_seq": 13, "to_seq": 20}])
    assert text == "" and msgs == ["fell behind: 4 events (seq 13..20) were dropped by the server"]
    assert st.since == 20


def test_tail_state_reset_messages() -> None:
    st = TailState(since=10, epoch="OLD")
    st.feed([{"type": "hello", "epoch": "NEW", "filter": {}}])
    _, msgs = st.feed([{"type": "reset", "reason": "epoch", "seq": 3, "epoch": "NEW", "since": 10}])
    assert "server restarted (epoch OLD -> NEW)" in msgs[0] and "after seq 10" in msgs[0]
    assert st.resume_params() == {"since": "3", "epoch": "NEW"}
    _, msgs = st.feed([{"type": "reset", "reason": "expired", "seq": 50, "since": 20}])
    assert "events 21..50 (up to 30) were not replayed" in msgs[0]
    _, msgs = st.feed([{"type": "reset", "reason": "future", "seq": 5, "since": 9}])
    assert "server is behind our resume point (seq 9 > 5)" in msgs[0]
    _, msgs = st.feed([{"type": "reset", "reason": "resync", "seq": 8, "since": 5}])
    assert "events 6..8 may be missing" in msgs[0]


def test_tail_state_refused_subscription_is_fatal() -> None:
    st = TailState()
    st.feed([{"type": "hello", "epoch": "E", "filter": None}])
    _, msgs = st.feed([{"type": "error", "error": "unknown query parameter 'x'", "op": None}])
    assert st.fatal and "unknown query parameter" in msgs[0]


# -- against a real server --------------------------------------------------------------------


async def test_prints_ndjson_one_event_per_line_flushed_per_frame() -> None:
    hub = new_hub()
    async with serving(hub) as srv, tailing(f"ws://127.0.0.1:{srv.port}") as (out, err, _):
        await async_wait_for("condition", lambda: hub.stats.subscribers == 1)
        batches = [[cycle(), pstart(10)], [cycle()], [pstart(11), pstart(12)]]
        n = 0
        for i, b in enumerate(batches):
            hub.publish(b)
            n += len(b)
            await async_wait_for("condition", lambda: len(out.events()) == n)
            assert out.flushes == i + 1  # the whole frame is written, then flushed once
        assert out.events() == [e for b in batches for e in b]  # exactly the events, in order
        assert "hello" not in out.getvalue() and err.getvalue() == ""


async def test_filters_are_passed_to_the_server() -> None:
    hub = new_hub()
    async with serving(hub) as srv, tailing(f"ws://127.0.0.1:{srv.port}", types="proc.*",
                                            groups=["db"]) as (out, _, _):
        await async_wait_for("condition", lambda: hub.stats.subscribers == 1)
        hub.publish([cycle(), pstart(1, "web"), pstart(2, "db")])
        hub.publish([pstart(3, "db")])
        await async_wait_for("condition", lambda: len(out.events()) == 2)
        assert [e["pid"] for e in out.events()] == [2, 3]


async def test_resumes_across_plain_reconnect_without_gap() -> None:
    hub = new_hub()
    async with serving(hub) as srv, tailing(f"ws://127.0.0.1:{srv.port}") as (out, err, _):
        await async_wait_for("condition", lambda: hub.stats.subscribers == 1)
        for i in range(3):
            hub.publish([cycle(i=i)])
        await async_wait_for("condition", lambda: len(out.events()) == 3)
        # drop the connection from the server side, publish while tail is away
        for conn in srv.connections:
            await conn.close(1012, "restarting connection")
        await async_wait_for("condition", lambda: hub.stats.subscribers == 0)
        for i in range(3, 8):
            hub.publish([cycle(i=i)])
        await async_wait_for("replay", lambda: len(out.events()) == 8)
        hub.publish([cycle(i=8)])
        await async_wait_for("condition", lambda: len(out.events()) == 9)
        assert [e["seq"] for e in out.events()] == list(range(1, 10))  # no gap, no duplicate
        assert "reconnecting" in err.getvalue() and "reset" not in err.getvalue()
        assert hub.stats.resumes == 1


async def test_resumes_across_server_restart_with_reset_message() -> None:
    hub_a = new_hub()
    async with serving(hub_a) as srv:
        port = srv.port
        async with tailing(f"ws://127.0.0.1:{port}") as (out, err, task):
            await async_wait_for("condition", lambda: hub_a.stats.subscribers == 1)
            hub_a.publish([cycle(run="a"), cycle(run="a")])
            await async_wait_for("condition", lambda: len(out.events()) == 2)
            await srv.close()  # tail sees 1001 and retries
            await async_wait_for("condition", lambda: "closed with 1001" in err.getvalue())
            hub_b = new_hub()
            async with serving(hub_b, port=port):
                await async_wait_for("reconnect", lambda: hub_b.stats.subscribers == 1)
                hub_b.publish([cycle(run="b")])
                await async_wait_for("condition", lambda: len(out.events()) == 3)
            assert not task.done()
    events = out.events()
    assert [(e["seq"], e["run"]) for e in events] == [(1, "a"), (2, "a"), (1, "b")]
    log = err.getvalue()
    assert f"server restarted (epoch {hub_a.epoch} -> {hub_b.epoch})" in log
    assert "after seq 2" in log and hub_b.stats.resets == {"epoch": 1}


async def test_initial_since_and_epoch_resume() -> None:
    hub = new_hub()
    for i in range(5):
        hub.publish([cycle(i=i)])
    async with serving(hub) as srv, tailing(f"ws://127.0.0.1:{srv.port}", since=2,
                                            epoch=hub.epoch) as (out, _, _):
        await async_wait_for("condition", lambda: len(out.events()) == 3)
        assert [e["seq"] for e in out.events()] == [3, 4, 5]


async def test_backoff_doubles_to_the_cap_while_server_is_down() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    async with tailing(f"ws://127.0.0.1:{port}", backoff_initial=0.01,
                       backoff_max=0.04) as (_, err, _):
        await async_wait_for("condition", lambda: err.getvalue().count("reconnecting") >= 5)
    delays = [line.rsplit("in ", 1)[1] for line in err.getvalue().splitlines()
              if "reconnecting" in line][:5]
    assert delays == ["0.01 s", "0.02 s", "0.04 s", "0.04 s", "0.04 s"]


async def test_refusals_that_retrying_cannot_fix_exit_1() -> None:
    def authorize(request: Any) -> Any:
        if request.headers.get("Authorization") != "Bearer right":
            return http_response(401, b"token required\n")
        return None

    hub = new_hub()
    async with serving(hub, authorize=authorize) as srv:
        out, err = Out(), io.StringIO()
        rc = await asyncio.wait_for(
            tail(f"ws://127.0.0.1:{srv.port}", token="wrong", out=out, err=err), 5)
        assert rc == 1 and "HTTP 401 unauthorized" in err.getvalue()
        async with tailing(f"ws://127.0.0.1:{srv.port}", token="right") as (out, _, _):
            await async_wait_for("condition", lambda: hub.stats.subscribers == 1)
            hub.publish([cycle()])
            await async_wait_for("condition", lambda: len(out.events()) == 1)


async def test_bad_arguments_exit_2() -> None:
    err = io.StringIO()
    assert await tail("ws://127.0.0.1:1", types="proc.begin", err=err) == 2
    assert "unknown event type 'proc.begin'" in err.getvalue()
    assert await tail("ws://127.0.0.1:1", since=3, err=err) == 2
    assert await tail("ftp://x", err=err) == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_cli_exits_0_quietly_on_signal(sig: int) -> None:
    hub = new_hub()
    async with serving(hub) as srv:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "procstream.tail", f"127.0.0.1:{srv.port}", "--types", "cycle",
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            await async_wait_for("tail process", lambda: hub.stats.subscribers == 1, 10)
            hub.publish([cycle(), pstart(5)])
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 5)
            assert orjson.loads(line)["type"] == "cycle"
            proc.send_signal(sig)
            rc = await asyncio.wait_for(proc.wait(), 5)
            assert proc.stderr is not None
            assert rc == 0 and await proc.stderr.read() == b""
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_cli_stops_quietly_when_stdout_reader_goes_away() -> None:
    hub = new_hub()
    async with serving(hub) as srv:
        # `procstream tail … | head -1`; the shell reports tail's own exit status
        script = (f'"{sys.executable}" -m procstream.tail ws://127.0.0.1:{srv.port} | head -1; '
                  'echo "tail-status=${PIPESTATUS[0]}" >&2')
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", script, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            await async_wait_for("tail process", lambda: hub.stats.subscribers == 1, 10)
            deadline = time.monotonic() + 10
            while proc.returncode is None and time.monotonic() < deadline:
                hub.publish([cycle()])  # head exits after the first line; tail's next write fails
                try:
                    await asyncio.wait_for(proc.wait(), 0.02)
                except TimeoutError:
                    pass
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 5)
            assert orjson.loads(stdout)["seq"] == 1
            assert stderr.decode() == "tail-status=0\n"  # no traceback, exit code 0
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)  # bash, tail and head
                await proc.wait()
