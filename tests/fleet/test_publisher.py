"""The publisher against real nats-server processes: what lands in JetStream, under
which subject and id, in which order, and what happens across outages, lost
acknowledgements, a buffer that ran out and a cluster node that died.

The hub is the real one, fed batches by the test (the events' content doesn't matter to
the publisher); ``serve`` itself publishing is tested in test_serve_nats.py.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import nats
import orjson

from procstream.fleet.publisher import Publisher
from tests.fleet.conftest import StreamReader, all_acked, make_publisher, new_hub, some_events
from tests.support.nats_servers import NatsCluster, NatsServer
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import async_wait_for

async def test_events_land_under_their_subject_and_id_as_the_hub_encoded_them(
    nats_server: NatsServer, reader: StreamReader, publishers: list[Publisher]
) -> None:
    hub = new_hub(host="web.01 a*")  # characters a subject token can't hold
    p = make_publisher(publishers, hub, nats_server.url)
    assert await p.start()
    for _ in range(5):
        hub.publish(some_events(8))
    await all_acked(p)

    stored = await reader.messages()
    assert len(stored) == 40 == hub.head_seq
    first, types, datas = hub.read(1, 100)
    for seq, (subject, ident, payload), typ, data in zip(itertools.count(1), stored, types, datas):
        assert subject == f"procstream.web_01_a_.{typ}"
        assert ident == f"web.01 a*:{hub.epoch}:{seq}"
        assert payload["seq"] == seq and payload["host"] == "web.01 a*"  # the host field unchanged
        assert payload == orjson.loads(data)  # the WebSocket object itself, not an array
    m = p.metrics()
    assert (m["published"], m["acknowledged"], m["pending"], m["in_flight"], m["lost"]) == (40, 40, 0, 0, 0)
    info = await reader.js.stream_info("PROCSTREAM")
    assert info.config.subjects == ["procstream.>"] and info.config.duplicate_window >= 120


async def test_a_duplicate_publish_is_stored_once(
    nats_server: NatsServer, reader: StreamReader, publishers: list[Publisher]
) -> None:
    hub = new_hub()
    p = make_publisher(publishers, hub, nats_server.url)
    await p.start()
    hub.publish(some_events(3))
    await all_acked(p)
    # The same event sent again, as a retry would: JetStream keeps the first.
    _, _, datas = hub.read(2, 1)
    ack = await reader.js.publish("procstream.web-01.proc.exit", datas[0],
                                  headers={"Nats-Msg-Id": f"web-01:{hub.epoch}:2"})
    assert ack.duplicate and ack.seq == 2
    assert await reader.count() == 3


async def test_an_outage_delays_events_and_loses_none(
    nats_server: NatsServer, reader: StreamReader, publishers: list[Publisher]
) -> None:
    hub = new_hub()
    p = make_publisher(publishers, hub, nats_server.url)
    await p.start()
    hub.publish(some_events(10))
    await all_acked(p)

    await nats_away(nats_server, p)
    for _ in range(6):  # published while NATS is away: they wait in the hub's buffer
        hub.publish(some_events(5))
        await asyncio.sleep(0)
    assert p.pending == 30
    nats_server.start()  # the same port and store
    await all_acked(p)

    stored = await reader.messages()
    assert [m[2]["seq"] for m in stored] == list(range(1, 41))  # all, in order, once
    assert p.stats.lost == 0 and p.health()["publishing"] == "publishing"
    assert p.stats.failures >= 1


async def test_an_outage_longer_than_the_buffer_becomes_one_loss_record(
    nats_server: NatsServer, reader: StreamReader, publishers: list[Publisher]
) -> None:
    hub = new_hub(buffer=10)
    p = make_publisher(publishers, hub, nats_server.url)
    await p.start()
    hub.publish(some_events(5))
    await all_acked(p)

    await nats_away(nats_server, p)
    for _ in range(6):
        hub.publish(some_events(5))  # seq 6..35; the buffer keeps 26..35
    assert hub.oldest_seq == 26
    nats_server.start()
    await all_acked(p)

    stored = await reader.messages()
    lost = [m for m in stored if m[2]["type"] == "host.lost"]
    assert len(lost) == 1
    subject, ident, record = lost[0]
    assert subject == "procstream.web-01.host.lost" and ident == f"web-01:{hub.epoch}:lost:6"
    assert {k: record[k] for k in ("host", "epoch", "from_seq", "to_seq", "count")} == {
        "host": "web-01", "epoch": hub.epoch, "from_seq": 6, "to_seq": 25, "count": 20}
    # in its place in the order, the events around it complete
    assert [m[2].get("seq", "lost") for m in stored] == [1, 2, 3, 4, 5, "lost", *range(26, 36)]
    assert (p.stats.lost, p.stats.lost_records) == (20, 1)


async def test_events_whose_acknowledgement_was_lost_are_found_not_sent_twice(
    nats_server: NatsServer, reader: StreamReader, publishers: list[Publisher]
) -> None:
    async with TcpProxy(nats_server.port) as proxy:
        hub = new_hub()
        p = make_publisher(publishers, hub, f"nats://127.0.0.1:{proxy.port}", ack_timeout=0.5)
        await p.start()
        hub.publish(some_events(2))
        await all_acked(p)

        proxy.mute_replies = True  # JetStream stores, its acknowledgements get lost
        hub.publish(some_events(20))
        await async_wait_for("JetStream to store them", lambda: reader.count(), timeout=10)
        await async_wait_for("JetStream to store them all", _count_is(reader, 22), timeout=10)
        proxy.cut()  # and the connection breaks before they arrive
        proxy.mute_replies = False
        await all_acked(p)

    assert p.stats.recovered == 20  # found in the stream after reconnecting...
    assert p.stats.duplicates == 0  # ...so not sent again (not even deduplicated)
    assert [m[2]["seq"] for m in await reader.messages()] == list(range(1, 23))


async def nats_away(server: NatsServer, p: Publisher) -> None:
    server.stop()  # a clean stop: the store is kept for the restart
    await async_wait_for("the publisher to notice", lambda: not p.link.connected.is_set())


def _count_is(reader: StreamReader, n: int) -> Any:
    async def check() -> bool:
        return await reader.count() == n
    return check


async def test_a_cluster_node_dies_mid_run_and_nothing_is_lost_or_doubled(publishers: list[Publisher]) -> None:
    with NatsCluster() as cluster:
        hub = new_hub()
        p = make_publisher(publishers, hub, cluster.urls, replicas=3, ack_timeout=1.0)
        assert await p.start()
        nc = await nats.connect(cluster.urls.split(","))
        try:
            js = nc.jetstream()
            reader = StreamReader(nc)
            info = await js.stream_info("PROCSTREAM")
            assert info.config.num_replicas == 3

            async def produce() -> None:
                for _ in range(60):
                    hub.publish(some_events(4))
                    await asyncio.sleep(0.03)

            producing = asyncio.create_task(produce())
            await async_wait_for("some events to be acknowledged", lambda: p.stats.acked_seq >= 40)
            leader = (await js.stream_info("PROCSTREAM")).cluster.leader
            cluster.by_name(leader).kill()  # the stream's leader crashes mid-run
            await producing
            await all_acked(p, timeout=40)

            stored = await reader.messages()
            seqs = [m[2]["seq"] for m in stored]
            assert sorted(seqs) == list(range(1, 241))  # nothing lost, nothing doubled
            assert all(m[1] == f"web-01:{hub.epoch}:{m[2]['seq']}" for m in stored)
        finally:
            await nc.close()
