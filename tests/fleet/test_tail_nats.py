"""``procstream tail nats://…``: the stream through a durable consumer, as NDJSON, resumable
after a crash. The stream is filled by the real publisher from hubs in this process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import orjson

from procstream.fleet.publisher import Publisher
from procstream.fleet.tail import ACK_WAIT, _consumer, filter_subjects
from tests.fleet.conftest import StreamReader
from tests.fleet.conftest import all_acked, make_publisher, new_hub, some_events
from tests.support.nats_servers import NatsServer, env_without_nats_secrets
from tests.support.processes import stop
from tests.support.waiting import async_wait_for


class Tail:
    """``procstream tail`` as a child process, its stdout appended to a file."""

    def __init__(self, tmp: Path, *args: str, run: int = 1) -> None:
        self.out = tmp / f"out-{run}.ndjson"
        self.err = tmp / f"err-{run}.log"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Tail:
        with open(self.out, "ab") as out, open(self.err, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "procstream", "tail", *self.args],
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=env_without_nats_secrets())
        return self

    def lines(self) -> list[dict[str, Any]]:
        text = self.out.read_bytes()
        complete = text[: text.rfind(b"\n") + 1]
        return [orjson.loads(line) for line in complete.splitlines()]

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)


def test_filters_become_subjects() -> None:
    assert filter_subjects(None, []) == ["procstream.>"]
    assert filter_subjects(None, ["web.01", "db"]) == ["procstream.db.>", "procstream.web_01.>"]
    assert filter_subjects(frozenset({"proc.exit"}), []) == ["procstream.*.proc.exit"]
    assert filter_subjects(frozenset({"proc.exit", "cycle"}), ["a"]) == ["procstream.a.cycle", "procstream.a.proc.exit"]


async def test_tail_prints_the_events_of_the_hosts_and_types_asked_for(
    nats_server: NatsServer, reader: StreamReader, publishers: list[Publisher], tmp_path: Path
) -> None:
    web, db = new_hub("web-01"), new_hub("db-01")
    for hub in (web, db):
        p = make_publisher(publishers, hub, nats_server.url)
        await p.start()
        hub.publish(some_events(40))
        await all_acked(p)
    tail = Tail(tmp_path, nats_server.url, "--durable", "exits", "--deliver", "all",
                "--types", "proc.exit", "--hosts", "web-01").start()
    try:
        await async_wait_for("web-01's exits", lambda: len(tail.lines()) >= 10,
                             explain=lambda: tail.err.read_text())
        web.publish(some_events(4))  # live ones too
        db.publish(some_events(4))
        await async_wait_for("the live exit", lambda: len(tail.lines()) >= 11)
    finally:
        tail.close()
    lines = tail.lines()
    assert {(e["type"], e["host"]) for e in lines} == {("proc.exit", "web-01")}
    assert [e["seq"] for e in lines] == list(range(2, 44, 4))
    stored = {(m[2]["host"], m[2]["seq"]): m[2] for m in await reader.messages()}
    assert all(stored["web-01", e["seq"]] == e for e in lines)  # the stored object, one per line
    assert tail.out.read_bytes().count(b"\n") == len(lines)


async def test_tail_killed_mid_stream_goes_on_after_the_last_batch_it_acknowledged(
    nats_server: NatsServer, publishers: list[Publisher], tmp_path: Path
) -> None:
    hub = new_hub()
    p = make_publisher(publishers, hub, nats_server.url)
    await p.start()
    hub.publish(some_events(4))
    await all_acked(p)
    total = 1200

    async def produce() -> None:
        while hub.head_seq < total:
            hub.publish(some_events(min(20, total - hub.head_seq)))
            await asyncio.sleep(0.02)

    args = (nats_server.url, "--durable", "shipper", "--deliver", "all", "--batch", "25")
    tail = Tail(tmp_path, *args).start()
    producing = asyncio.create_task(produce())
    try:
        await async_wait_for("tail to be mid-stream", lambda: len(tail.lines()) >= 300,
                             explain=lambda: tail.err.read_text())
        assert tail.proc is not None
        tail.proc.send_signal(signal.SIGKILL)  # a crash: no goodbye, no last acknowledgement
        tail.proc.wait(10)
        first_run = [e["seq"] for e in tail.lines()]
        printed = len(first_run)
        await async_wait_for("more events while tail is down", lambda: hub.head_seq >= printed + 100)
        tail = Tail(tmp_path, *args, run=2).start()  # the same durable consumer
        await producing
        await all_acked(p)
        # The batch the killed tail held comes back after the consumer's ack wait.
        await async_wait_for("tail to print the last event", lambda: tail.lines() and tail.lines()[-1]["seq"] == total,
                             timeout=ACK_WAIT + 20, explain=lambda: (len(tail.lines()), tail.err.read_text()[-500:]))
    finally:
        producing.cancel()
        tail.close()
    second_run = [e["seq"] for e in tail.lines()]
    assert first_run == list(range(1, printed + 1))
    # At least once, in order: the second run starts no later than the line after the
    # first run's last one, and repeats at most the one batch written but not acknowledged.
    assert second_run[0] <= printed + 1 and printed - second_run[0] + 1 <= 25
    assert second_run == list(range(second_run[0], total + 1))


def run_tail(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "procstream", "tail", *args], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL, env={**env_without_nats_secrets(), **(env or {})})


def test_tail_refusals_are_exit_2(nats_server: NatsServer) -> None:
    r = run_tail(nats_server.url, "--durable", "x")  # no stream yet
    assert r.returncode == 2 and "no stream PROCSTREAM" in r.stderr, r.stderr
    r = run_tail(nats_server.url, "--since", "5", "--epoch", "e")
    assert r.returncode == 2 and "--since is for ws:// URLs" in r.stderr
    r = run_tail(nats_server.url, "--types", "proc.nope")
    assert r.returncode == 2 and "unknown event type" in r.stderr
    r = run_tail("nats://127.0.0.1:1/x")
    assert r.returncode == 2 and "expected nats://HOST[:PORT]" in r.stderr
    with NatsServer("--auth", "right") as locked:
        r = run_tail(locked.url, env={"PROCSTREAM_NATS_TOKEN": "wrong"})
        assert r.returncode == 2 and "authorization violation" in r.stderr.lower(), r.stderr


async def test_a_batch_a_dead_tail_held_comes_first_and_at_once(
    nats_server: NatsServer, publishers: list[Publisher], tmp_path: Path
) -> None:
    """The consumer's next messages must not go to a new tail while a dead one's batch
    waits out the ack wait: acknowledging them (AckAll) would skip that batch."""
    hub = new_hub()
    p = make_publisher(publishers, hub, nats_server.url)
    await p.start()
    hub.publish(some_events(30))
    await all_acked(p)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        assert await _consumer(js, "PROCSTREAM", "shipper", ["procstream.>"], "all", 25) is None
        psub = await js.pull_subscribe_bind("shipper", stream="PROCSTREAM")
        held = await psub.fetch(25, timeout=5)
        await held[9].ack_sync()  # 1..10 printed and acknowledged; 11..25 held, then the crash
    finally:
        await nc.close()
    hub.publish(some_events(10))
    await all_acked(p)
    tail = Tail(tmp_path, nats_server.url, "--durable", "shipper", "--batch", "25").start()
    try:
        await async_wait_for("the held batch and the rest", lambda: len(tail.lines()) >= 30,
                             timeout=ACK_WAIT / 2, explain=lambda: tail.err.read_text())
    finally:
        tail.close()
    assert [e["seq"] for e in tail.lines()] == list(range(11, 41))
