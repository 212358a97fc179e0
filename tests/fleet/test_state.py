"""The host's state in the key-value bucket, and how a late reader starts from it: the
state as of ``seq``, then the stream after ``stream_seq`` gives exactly the host's state
now (what the fleet aggregator does at start)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from procstream.fleet import state as state_module
from procstream.fleet.publisher import Publisher
from procstream.fleet.state import StateWriter, read_host_state, state_subject
from tests.fleet.conftest import StreamReader
from tests.fleet.conftest import all_acked, make_publisher, new_hub
from tests.support.nats_servers import NatsServer


def start(pid: int, cmdline: str = "x") -> dict[str, Any]:
    return {"type": "proc.start", "ts": 1.0, "pid": pid, "ppid": 1, "start_time": float(pid), "name": "x",
            "cmdline": [cmdline], "group": "g", "user": "u", "uid": 0, "source": "poll"}


def exit_(pid: int) -> dict[str, Any]:
    return {**start(pid), "type": "proc.exit", "lifetime_s": 1.0, "cpu_s": 0.0, "read_bytes": 0,
            "write_bytes": 0, "exit_code": None, "signal": None}


def procs_of(snapshot: dict[str, Any]) -> set[tuple[int, float]]:
    return {(p["pid"], p["start_time"]) for p in snapshot["procs"]}


def writer_for(p: Publisher, bucket: str = "PROCSTREAM_STATE") -> StateWriter:
    return StateWriter(p.hub, p.link, p.acked_position, bucket=bucket, stream="PROCSTREAM", interval=60)


async def test_a_late_reader_starts_from_the_state_then_the_stream(
    nats_server: NatsServer, reader: StreamReader, publishers: list[Publisher]
) -> None:
    hub = new_hub()
    p = make_publisher(publishers, hub, nats_server.url, state_interval=60)  # creates the bucket
    await p.start()
    hub.publish([start(10), start(11), start(12)])
    await all_acked(p)
    hub.publish([exit_(11), start(13)])  # in the state, perhaps not yet acknowledged
    writer = writer_for(p)
    assert await writer.write_if_changed()
    assert not await writer.write_if_changed()  # unchanged: not written again
    hub.publish([exit_(10), start(14), {"type": "cycle", "ts": 2.0}])  # after the state
    await all_acked(p)

    head, snapshot = await read_host_state(reader.js, "PROCSTREAM_STATE", "web-01")
    assert (head["host"], head["epoch"], head["seq"], head["stream"]) == ("web-01", hub.epoch, 5, "PROCSTREAM")
    assert procs_of(snapshot) == {(10, 10.0), (12, 12.0), (13, 13.0)} and snapshot["seq"] == 5

    # What a reader does: the state, then the host's events after stream_seq with a
    # seq above the state's.
    procs = {(p_["pid"], p_["start_time"]) for p_ in snapshot["procs"]}
    for _subject, _id, event in await reader.messages():
        if event.get("host") != "web-01" or event["seq"] <= head["seq"]:
            continue
        key = (event.get("pid"), event.get("start_time"))
        if event["type"] == "proc.start":
            procs.add(key)
        elif event["type"] == "proc.exit":
            procs.discard(key)
    assert procs == procs_of(hub.snapshot())
    # ...and no event it needs is at or before stream_seq
    info = await reader.js.stream_info("PROCSTREAM")
    after = [(await reader.js.get_msg("PROCSTREAM", s)) for s in range(head["stream_seq"] + 1, info.state.last_seq + 1)]
    assert {int(m.headers["Nats-Msg-Id"].rsplit(":", 1)[1]) for m in after} >= set(range(head["seq"] + 1, hub.head_seq + 1))


async def test_a_big_state_is_cut_into_pieces_and_a_torn_one_is_not_read(
    nats_server: NatsServer, reader: StreamReader, publishers: list[Publisher], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "_CHUNK_MAX", 4096)
    hub = new_hub()
    p = make_publisher(publishers, hub, nats_server.url, state_interval=60)
    await p.start()
    hub.publish([start(100 + i, os.urandom(100).hex()) for i in range(100)])  # ~20 KiB compressed
    writer = writer_for(p)
    assert await writer.write_if_changed()
    head, snapshot = await read_host_state(reader.js, "PROCSTREAM_STATE", "web-01")
    assert len(head["chunks"]) >= 4 and head["size"] == len(hub.state_json()[1])
    assert procs_of(snapshot) == procs_of(hub.snapshot())

    # A newer state half written: its first piece is there, its head not yet.
    await reader.js.publish(state_subject("PROCSTREAM_STATE", "web-01", "chunk.0"), b"newer")
    assert await read_host_state(reader.js, "PROCSTREAM_STATE", "web-01") is None
    hub.publish([exit_(100)])
    assert await writer.write_if_changed()
    head, snapshot = await read_host_state(reader.js, "PROCSTREAM_STATE", "web-01")
    assert (100, 100.0) not in procs_of(snapshot) and len(snapshot["procs"]) == 99
    assert await read_host_state(reader.js, "PROCSTREAM_STATE", "other-host") is None
