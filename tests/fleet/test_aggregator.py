"""The aggregator in-process against a real nats-server, hosts played by the real
publisher over hubs the test feeds: what it makes of messages that are not events or
are gone, and that it takes every message once, in order, whatever happens to its
consumer or the server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import nats
import orjson
import pytest

from procstream.fleet.aggregator import Aggregator
from procstream.fleet.options import NatsSettings, split_urls
from procstream.fleet.publisher import Publisher
from procstream.stream.protocol import Subscription
from tests.fleet.conftest import StreamReader, all_acked, make_publisher, new_hub, some_events
from tests.stream.test_hub import FakeTransport
from tests.support.nats_servers import NatsServer
from tests.support.waiting import async_wait_for


@pytest.fixture
async def aggregators() -> AsyncIterator[list[Aggregator]]:
    made: list[Aggregator] = []
    yield made
    for a in made:
        await a.close()


def aggregator(made: list[Aggregator], url: str, **kw: Any) -> Aggregator:
    a = Aggregator(NatsSettings(servers=split_urls(url), connect_timeout=5.0), stream="PROCSTREAM",
                   bucket="PROCSTREAM_STATE", host_name="agg", **kw)
    made.append(a)
    return a


class Watcher:
    """A subscriber of the aggregator's hub that replays from a seq and stays live."""

    def __init__(self, agg: Aggregator, since: int) -> None:
        self.t = FakeTransport()
        self.sub = agg.hub.attach(self.t)
        agg.hub.subscribe(self.sub, Subscription(since=since, epoch=agg.hub.epoch))

    def events(self) -> list[dict[str, Any]]:
        self.t.pump(self.sub)
        return self.t.events()


async def test_every_message_keeps_its_place(nats_server: NatsServer, reader: StreamReader,
                                             publishers: list[Publisher], aggregators: list[Aggregator]) -> None:
    hub = new_hub("web-01")
    p = make_publisher(publishers, hub, nats_server.url)
    await p.start()
    hub.publish(some_events(8))
    await all_acked(p)
    js = reader.js
    # a host that publishes garbage, and one that passes for another
    await js.publish("procstream.web-01.cycle", b"\xff not json", headers={"Nats-Msg-Id": "junk-1"})
    await js.publish("procstream.web-01.cycle", orjson.dumps({"type": "cycle", "ts": 1.0, "seq": 1, "host": "db-01"}),
                     headers={"Nats-Msg-Id": "db-01:x:1"})
    await js.delete_msg("PROCSTREAM", 3)  # an operator removed one
    agg = aggregator(aggregators, nats_server.url, buffer_size=1000)
    await agg.start()
    hub.publish(some_events(4))
    watcher = Watcher(agg, 0)
    await async_wait_for("the live events too", lambda: agg.hub.head_seq == 14)
    events = watcher.events()
    assert [e["seq"] for e in events] == list(range(1, 15))
    assert events[2]["type"] == "host.lost" and events[2]["reason"] == "deleted"
    assert [e.get("reason") for e in events[8:10]] == ["invalid", "invalid"]
    assert all(e["host"] == "web-01" for e in events if e.get("reason") != "deleted")  # the subject's host
    _, types, datas = hub.read(1, 100)  # what the host published, its seq 3 being the deleted one
    fleet = [e for e in events if e["type"] != "host.lost"]
    sent = [orjson.loads(d) for d in datas]
    assert [(e["type"], e["ts"]) for e in fleet] == [(e["type"], e["ts"]) for e in sent if e["seq"] != 3]
    assert agg.stats.invalid == 2 and agg.stats.deleted == 1
    # no state in the bucket (this host writes none): its run's events wait for one
    entry = agg.state.hosts["web-01"]
    assert not entry.synced and [seq for seq, _ in entry.pending] == [s for s in range(1, 13) if s != 3]


async def test_messages_are_taken_once_in_order_whatever_happens_to_the_consumer_or_the_server(
    nats_server: NatsServer, publishers: list[Publisher], aggregators: list[Aggregator]
) -> None:
    hub = new_hub("web-01")
    p = make_publisher(publishers, hub, nats_server.url, ack_timeout=1.0)
    await p.start()
    hub.publish(some_events(50))
    await all_acked(p)
    agg = aggregator(aggregators, nats_server.url)
    await agg.start()
    watcher = Watcher(agg, agg.hub.head_seq)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        consumers = [c.name async for c in _consumers(js)]
        assert len(consumers) == 1
        await js.delete_consumer("PROCSTREAM", consumers[0])
        hub.publish(some_events(20))
        await async_wait_for("the feed on a new consumer", lambda: agg.hub.head_seq == 70, timeout=20)
    finally:
        await nc.close()
    assert agg.feed.stats.consumers >= 2
    nats_server.stop()
    hub.publish(some_events(20))  # waits in the host's buffer while NATS is away
    nats_server.start()
    hub.publish(some_events(10))
    await all_acked(p, timeout=30)
    await async_wait_for("everything after the outage", lambda: agg.hub.head_seq == 100, timeout=30)
    seqs = [e["seq"] for e in watcher.events()]
    assert seqs == list(range(51, 101))  # nothing twice, nothing skipped
    assert agg.stats.deleted == 0 and agg.stats.invalid == 0


async def _consumers(js: Any) -> AsyncIterator[Any]:
    for info in await js.consumers_info("PROCSTREAM"):
        yield info


async def test_a_stream_created_again_is_a_new_epoch(nats_server: NatsServer, publishers: list[Publisher],
                                                     aggregators: list[Aggregator]) -> None:
    hub = new_hub("web-01")
    p = make_publisher(publishers, hub, nats_server.url, ack_timeout=1.0, state_interval=0.2)
    await p.start()
    hub.publish(some_events(10))
    await all_acked(p)
    agg = aggregator(aggregators, nats_server.url, stream_check=0.2)
    await agg.start()
    first = agg.hub.epoch
    watcher = Watcher(agg, agg.hub.head_seq)
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().delete_stream("PROCSTREAM")
    finally:
        await nc.close()
    hub.publish(some_events(6))  # the publisher creates the stream again and sends them
    await async_wait_for("a new epoch", lambda: agg.hub.epoch != first and agg.hub.head_seq >= 6, timeout=30)
    watcher.events()
    reset = watcher.t.of_type("reset")
    assert reset and reset[-1]["reason"] == "epoch" and reset[-1]["epoch"] == agg.hub.epoch
    assert agg.stats.epoch_changes == 1
    # from the reset on: a snapshot of the new epoch (built when sent), then its events, up to the head
    objs = watcher.t.objects()
    after = objs[max(i for i, o in enumerate(objs) if o["type"] == "reset"):]
    assert after[1]["type"] == "snapshot" and after[1]["epoch"] == agg.hub.epoch
    assert [o["seq"] for o in after[1:] if o["type"] != "bookmark"][-1] == agg.hub.head_seq
