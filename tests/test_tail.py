"""Tests of procstream.tail: NDJSON output, reconnects, resume, resets, exit codes."""

from __future__ import annotations

import asyncio
import io
import os
import re
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
from procstream.tail import StateFile, StateFileError, TailState, build_url, tail
from tests.support.fake_proc_tree import add_proc, remove_proc
from tests.support.served import Served
from tests.support.waiting import async_wait_for, wait_for

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
    text, msgs = st.feed([{"type": "hello", "epoch": "E1", "head_seq": 6, "filter": {"types": None}}])
    # live from the head: the head is already a resume point, and the user is told it
    assert text == "" and msgs == ["connected: epoch E1, head seq 6; resume point: --since 6 --epoch E1"]
    assert st.resume_params() == {"since": "6", "epoch": "E1"}
    ev = {"type": "cycle", "seq": 7, "host": "h"}
    text, msgs = st.feed([ev, {"type": "proc.start", "seq": 8, "pid": 1}])
    assert text == '{"type":"cycle","seq":7,"host":"h"}\n{"type":"proc.start","seq":8,"pid":1}\n'
    assert st.resume_params() == {"since": "8", "epoch": "E1"} and st.resume_point() == (8, "E1")
    st.feed([{"type": "bookmark", "seq": 12}])
    assert st.since == 12
    text, msgs = st.feed([{"type": "overflow", "dropped": 4, "from_seq": 13, "to_seq": 20}])
    assert text == "" and msgs == ["fell behind: 4 events (seq 13..20) were dropped by the server"]
    assert st.since == 20
    assert st.requests() == []


def test_tail_state_hello_says_where_a_resume_stands() -> None:
    st = TailState(since=4, epoch="E")
    _, msgs = st.feed([{"type": "hello", "epoch": "E", "head_seq": 9, "filter": {}}])
    assert msgs == ["connected: epoch E, head seq 9; resume point: --since 4 --epoch E"]
    st = TailState(since=4, epoch="OLD")
    _, msgs = st.feed([{"type": "hello", "epoch": "NEW", "head_seq": 2, "filter": {}}])
    assert msgs == ["connected: epoch NEW, head seq 2; the server restarted since seq 4 of epoch OLD"]
    assert st.resume_point() == (4, "OLD")  # unchanged until the server's reset
    st = TailState()
    _, msgs = st.feed([{"type": "hello", "epoch": "E", "head_seq": 3, "filter": None}])
    assert msgs == ["connected: epoch E, head seq 3"] and st.resume_point() is None


def test_tail_state_epoch_reset_replays_the_new_run_from_its_start() -> None:
    st = TailState(since=10, epoch="OLD")
    st.feed([{"type": "hello", "epoch": "NEW", "head_seq": 3,
              "filter": {"types": ["proc.start", "proc.exit"], "groups": ["db"]}}])
    text, msgs = st.feed([{"type": "reset", "reason": "epoch", "seq": 3, "epoch": "NEW", "since": 10},
                          {"type": "proc.start", "seq": 4, "pid": 1}])
    assert "server restarted (epoch OLD -> NEW)" in msgs[0] and "after seq 10" in msgs[0]
    assert msgs[0].endswith("resume point: --since 0 --epoch NEW")
    # the same subscription (the server's own account of it), from the new run's start
    assert st.requests() == [{"op": "subscribe", "types": ["proc.start", "proc.exit"], "groups": ["db"],
                              "since": 0, "epoch": "NEW", "snapshot": False}]
    assert st.requests() == []
    # what the old request still brings is not printed: the replay brings it in order
    assert text == "" and st.resume_params() == {"since": "0", "epoch": "NEW"}
    st.feed([{"type": "bookmark", "seq": 4}])
    assert st.since == 0
    text, _ = st.feed([{"type": "subscribed", "filter": {}, "seq": 0},
                       *({"type": "proc.start", "seq": n, "pid": n} for n in (1, 2, 3, 4))])
    assert [orjson.loads(x)["seq"] for x in text.splitlines()] == [1, 2, 3, 4]
    assert st.resume_point() == (4, "NEW")


def test_tail_state_other_reset_messages() -> None:
    st = TailState(since=10, epoch="E")
    st.feed([{"type": "hello", "epoch": "E", "head_seq": 50, "filter": {}}])
    _, msgs = st.feed([{"type": "reset", "reason": "expired", "seq": 50, "since": 20}])
    assert "events 21..50 (up to 30) were not replayed" in msgs[0]
    assert msgs[0].endswith("resume point: --since 50 --epoch E")
    _, msgs = st.feed([{"type": "reset", "reason": "future", "seq": 5, "since": 9}])
    assert "server is behind our resume point (seq 9 > 5)" in msgs[0]
    _, msgs = st.feed([{"type": "reset", "reason": "resync", "seq": 8, "since": 5}])
    assert "events 6..8 may be missing" in msgs[0]
    assert st.requests() == [] and st.resume_point() == (8, "E")


def test_tail_state_refused_subscription_is_fatal() -> None:
    st = TailState()
    st.feed([{"type": "hello", "epoch": "E", "filter": None}])
    _, msgs = st.feed([{"type": "error", "error": "unknown query parameter 'x'", "op": None}])
    assert st.fatal and "unknown query parameter" in msgs[0]


def test_state_file_round_trip_is_atomic_and_rejects_what_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "tail.state"
    keeper = StateFile(str(path))
    assert keeper.load() is None  # no file: a first run
    keeper.save((41, "E"))
    assert orjson.loads(path.read_bytes()) == {"since": 41, "epoch": "E"}
    keeper.save((42, "E"))
    assert StateFile(str(path)).load() == (42, "E")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tail.state"]  # no temporary left
    for bad in (b"", b"{", b'{"since": -1, "epoch": "E"}', b'{"since": true, "epoch": "E"}',
                b'{"since": 3}', b'{"since": 3, "epoch": ""}', b"[3]", b" " * 5000):
        path.write_bytes(bad)
        with pytest.raises(StateFileError, match="not a tail state file"):
            StateFile(str(path)).load()
    with pytest.raises(StateFileError, match="does not exist"):
        StateFile(str(tmp_path / "missing" / "tail.state")).load()


async def test_state_file_bad_or_unplaceable_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "tail.state"
    path.write_text("garbage")
    err = io.StringIO()
    assert await tail("ws://127.0.0.1:1", state_file=str(path), err=err) == 2
    assert "not a tail state file" in err.getvalue() and str(path) in err.getvalue()
    assert await tail("ws://127.0.0.1:1", state_file=str(tmp_path / "no" / "f"), err=err) == 2


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
        assert "hello" not in out.getvalue()
        # stderr: where this run stands, in the words tail takes back
        assert err.getvalue() == (f"procstream tail: connected: epoch {hub.epoch}, head seq 0; "
                                  f"resume point: --since 0 --epoch {hub.epoch}\n")


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
            conn.close(1012, "restarting connection")
        await async_wait_for("condition", lambda: hub.stats.subscribers == 0)
        for i in range(3, 8):
            hub.publish([cycle(i=i)])
        await async_wait_for("replay", lambda: len(out.events()) == 8)
        hub.publish([cycle(i=8)])
        await async_wait_for("condition", lambda: len(out.events()) == 9)
        assert [e["seq"] for e in out.events()] == list(range(1, 10))  # no gap, no duplicate
        assert "reconnecting" in err.getvalue() and "reset" not in err.getvalue()
        assert hub.stats.resumes == 1


async def test_across_a_server_restart_says_so_and_prints_the_new_run_from_its_start() -> None:
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
            # the new run numbers events before tail is back: they are replayed, not lost
            hub_b.publish([cycle(run="b")])
            hub_b.publish([cycle(run="b"), cycle(run="b")])
            async with serving(hub_b, port=port):
                await async_wait_for("the new run's events", lambda: len(out.events()) == 5)
                hub_b.publish([cycle(run="b")])
                await async_wait_for("a live event of the new run", lambda: len(out.events()) == 6)
            assert not task.done()
    events = out.events()
    assert [(e["seq"], e["run"]) for e in events] == [(1, "a"), (2, "a"), (1, "b"), (2, "b"), (3, "b"), (4, "b")]
    log = err.getvalue()
    assert f"server restarted (epoch {hub_a.epoch} -> {hub_b.epoch})" in log
    assert f"resume point: --since 0 --epoch {hub_b.epoch}" in log
    assert "after seq 2" in log and hub_b.stats.resets == {"epoch": 1} and hub_b.stats.resumes == 1


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
            assert rc == 0
            assert (await proc.stderr.read()).decode().splitlines() == [
                f"procstream tail: connected: epoch {hub.epoch}, head seq 0; "
                f"resume point: --since 0 --epoch {hub.epoch}"]  # and no traceback
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
            assert stderr.decode().splitlines()[1:] == ["tail-status=0"]  # no traceback, exit code 0
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)  # bash, tail and head
                await proc.wait()


# -- the state file against a real server ------------------------------------------------------


class CheckedOut(Out):
    """stdout stand-in that checks, at every write, that the state file never holds a
    resume point past what was already flushed (a crash then would skip events)."""

    def __init__(self, state: Path) -> None:
        super().__init__()
        self.state = state
        self.flushed_seq = 0
        self.checks = 0

    def write(self, text: str) -> int:
        if self.state.exists():
            assert orjson.loads(self.state.read_bytes())["since"] <= self.flushed_seq
            self.checks += 1
        return super().write(text)

    def flush(self) -> None:
        super().flush()
        events = self.events()
        if events:
            self.flushed_seq = events[-1]["seq"]


async def test_state_file_follows_stdout_and_a_restarted_tail_resumes_from_it(tmp_path: Path) -> None:
    hub = new_hub()
    state = tmp_path / "tail.state"
    async with serving(hub) as srv:
        url = f"ws://127.0.0.1:{srv.port}"
        out = CheckedOut(state)
        stop = asyncio.Event()
        first = asyncio.create_task(tail(url, state_file=str(state), out=out, err=io.StringIO(), stop=stop))
        await async_wait_for("the head as first resume point", state.exists)
        assert orjson.loads(state.read_bytes()) == {"since": 0, "epoch": hub.epoch}
        for i in range(4):
            hub.publish([cycle(i=i), cycle(i=i)])
            await async_wait_for("the frame", lambda: len(out.events()) == 2 * (i + 1))
        await async_wait_for("the state file to follow",
                             lambda: orjson.loads(state.read_bytes())["since"] == 8)
        stop.set()
        assert await first == 0
        assert out.checks >= 4
        for i in range(4, 6):
            hub.publish([cycle(i=i)])  # while no tail runs
        # its own restart: the file says where to go on
        async with tailing(url, state_file=str(state)) as (out2, err2, _):
            await async_wait_for("the missed events", lambda: len(out2.events()) == 2)
            hub.publish([cycle(i=6)])
            await async_wait_for("a live one", lambda: len(out2.events()) == 3)
            assert f"resume point: --since 8 --epoch {hub.epoch}" in err2.getvalue()
        assert [e["seq"] for e in out.events() + out2.events()] == list(range(1, 12))
        assert orjson.loads(state.read_bytes()) == {"since": 11, "epoch": hub.epoch}
        # --since/--epoch given by hand win over the file
        async with tailing(url, state_file=str(state), since=9, epoch=hub.epoch) as (out3, _, _):
            await async_wait_for("the replay from 9", lambda: len(out3.events()) == 2)
            assert [e["seq"] for e in out3.events()] == [10, 11]


async def test_a_state_file_that_cannot_be_written_is_reported_and_printing_goes_on(tmp_path: Path) -> None:
    hub = new_hub()
    where = tmp_path / "state"
    where.mkdir()
    state = where / "tail.state"
    async with serving(hub) as srv, tailing(f"ws://127.0.0.1:{srv.port}",
                                            state_file=str(state)) as (out, err, _):
        await async_wait_for("the first save", state.exists)
        state.unlink()
        where.rmdir()  # the next save has nowhere to go
        hub.publish([cycle()])
        await async_wait_for("the event", lambda: len(out.events()) == 1)
        await async_wait_for("the complaint", lambda: "cannot write --state-file" in err.getvalue())
        hub.publish([cycle()])
        await async_wait_for("the next event", lambda: len(out.events()) == 2)
        assert err.getvalue().count("cannot write --state-file") == 1  # once per streak
        where.mkdir()
        hub.publish([cycle()])
        await async_wait_for("the recovery", lambda: "written again" in err.getvalue())
        assert orjson.loads(state.read_bytes()) == {"since": 3, "epoch": hub.epoch}


# -- real `procstream serve` and `procstream tail` processes ------------------------------------

PASTE = re.compile(r"--since (\d+) --epoch (\S+)")
# what the event log records by default: the reference
PROC_EVENTS = "proc.start,proc.exit,group.missing,group.recovered,group.crashloop,group.stable"


class TailProc:
    """``procstream tail`` in a child process, its stdout and stderr in files."""

    def __init__(self, tmp: Path, name: str, url: str, *args: str) -> None:
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        with open(self.out, "wb") as fo, open(self.err, "wb") as fe:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "procstream", "tail", url, "--types", PROC_EVENTS, *args],
                stdin=subprocess.DEVNULL, stdout=fo, stderr=fe)

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in self.out.read_bytes().splitlines()]

    def stderr(self) -> str:
        return self.err.read_text()

    def has(self, pid: int, type_: str = "proc.start") -> bool:
        return any(e["pid"] == pid and e["type"] == type_ for e in self.lines())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"procstream tail did not stop on {sig}") from None


def logged(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def has(events: list[dict[str, Any]], pid: int, type_: str = "proc.start") -> bool:
    return any(e["pid"] == pid and e["type"] == type_ for e in events)


class Runs:
    """Server runs over a fake /proc and the tails that follow them; everything started
    is stopped at the end. Each run's event log (every proc.start/proc.exit it numbered)
    is the reference the tails' output is checked against."""

    def __init__(self, fake_proc: Path, tmp: Path) -> None:
        self.fake_proc, self.tmp = fake_proc, tmp
        self.run = 0
        self.tails: list[TailProc] = []
        self.srv = self._serve(None)

    def _serve(self, port: int | None) -> Served:
        self.run += 1
        return Served("--procfs", str(self.fake_proc), "--interval", "0.1", "--source", "poll",
                      "--event-log", str(self.log(self.run)), port=port,
                      log=self.tmp / f"serve{self.run}.log").start()

    def log(self, run: int) -> Path:
        return self.tmp / f"events{run}.ndjson"

    def tail(self, *args: str) -> TailProc:
        t = TailProc(self.tmp, f"t{len(self.tails) + 1}", self.srv.ws, *args)
        self.tails.append(t)
        return t

    def start(self, pid: int) -> None:
        add_proc(self.fake_proc, pid, comm=f"p{pid}", cmdline=(f"p{pid}",), start=pid * 10)

    def numbered(self, pid: int, type_: str = "proc.start") -> None:
        wait_for(f"the server to number {type_} of {pid}", lambda: has(logged(self.log(self.run)), pid, type_))

    def restart(self) -> None:
        """Stop the server and serve again on its port: a new epoch."""
        assert self.srv.stop() == 0
        self.srv = self._serve(self.srv.port)

    def printed(self) -> list[dict[str, Any]]:
        return [e for t in self.tails for e in t.lines()]

    def logged(self) -> list[dict[str, Any]]:
        return [e for run in range(1, self.run + 1) for e in logged(self.log(run))]

    def __enter__(self) -> Runs:
        return self

    def __exit__(self, *exc: object) -> None:
        for t in self.tails:
            t.stop(signal.SIGKILL)
        self.srv.stop()


def test_resume_by_hand_from_what_tail_printed(fake_proc: Path, tmp_path: Path) -> None:
    with Runs(fake_proc, tmp_path) as runs:
        t1 = runs.tail()
        wait_for("tail's resume point on stderr", lambda: PASTE.search(t1.stderr()), timeout=20)
        runs.start(9000)
        wait_for("tail to print the start", lambda: t1.has(9000), timeout=20)
        assert t1.stop() == 0
        # while no tail runs
        runs.start(9001)
        remove_proc(fake_proc, 9000)
        runs.numbered(9000, "proc.exit")
        # what a user pastes: the epoch from stderr, the seq of the last line kept
        epoch = PASTE.findall(t1.stderr())[-1][1]
        t2 = runs.tail("--since", str(t1.lines()[-1]["seq"]), "--epoch", epoch)
        wait_for("the missed events", lambda: t2.has(9001) and t2.has(9000, "proc.exit"), timeout=20)
        # a server restart under a running tail: a new epoch, said on stderr, ready to paste
        runs.restart()
        runs.start(9002)
        wait_for("the new run's start", lambda: t2.has(9002), timeout=30)
        assert t2.stop() == 0
        remove_proc(fake_proc, 9002)
        runs.numbered(9002, "proc.exit")
        since, epoch2 = PASTE.findall(t2.stderr())[-1]
        assert epoch2 != epoch and since == "0" and "server restarted" in t2.stderr()
        t3 = runs.tail("--since", str(t2.lines()[-1]["seq"]), "--epoch", epoch2)
        wait_for("the exit missed after the restart", lambda: t3.has(9002, "proc.exit"), timeout=20)
        assert t3.stop() == 0
    printed = runs.printed()
    assert printed == runs.logged()  # every event of both runs, once, in order
    assert {(e["pid"], e["type"]) for e in printed} >= {(9000, "proc.start"), (9000, "proc.exit"),
                                                        (9001, "proc.start"), (9002, "proc.start"),
                                                        (9002, "proc.exit")}


def test_state_file_carries_tail_across_its_own_crash_and_server_restarts(fake_proc: Path, tmp_path: Path) -> None:
    state = tmp_path / "tail.state"

    def saved() -> dict[str, Any]:
        return orjson.loads(state.read_bytes()) if state.exists() else {}

    with Runs(fake_proc, tmp_path) as runs:
        t1 = runs.tail("--state-file", str(state))
        wait_for("the first resume point", lambda: "since" in saved(), timeout=20)
        runs.start(8000)
        wait_for("tail to print the start", lambda: t1.has(8000), timeout=20)
        wait_for("the state file to catch up", lambda: saved().get("since") == t1.lines()[-1]["seq"])
        assert t1.stop(signal.SIGKILL) == -signal.SIGKILL  # a crash: no clean shutdown
        runs.start(8001)
        remove_proc(fake_proc, 8000)
        runs.numbered(8000, "proc.exit")
        t2 = runs.tail("--state-file", str(state))
        wait_for("the events missed while down", lambda: t2.has(8001) and t2.has(8000, "proc.exit"), timeout=20)
        # the server restarts under it: new epoch, the new run from its start
        runs.restart()
        runs.start(8002)
        wait_for("the new run's start", lambda: t2.has(8002), timeout=30)
        assert t2.stop() == 0
        since2, epoch2 = saved()["since"], saved()["epoch"]
        # and restarts again while no tail runs
        runs.restart()
        runs.start(8003)
        runs.numbered(8003)
        t3 = runs.tail("--state-file", str(state))
        wait_for("the start the new run numbered before tail came back", lambda: t3.has(8003), timeout=20)
        assert t3.stop() == 0
    printed = runs.printed()
    assert printed == runs.logged()  # nothing lost, nothing twice, in order
    assert {(e["pid"], e["type"]) for e in printed} >= {(8000, "proc.start"), (8000, "proc.exit"),
                                                        (8001, "proc.start"), (8002, "proc.start"),
                                                        (8003, "proc.start")}
    err3 = t3.stderr()
    assert f"the server restarted since seq {since2} of epoch {epoch2}" in err3
    assert "replaying the new run from its start" in err3
    assert saved()["epoch"] != epoch2
