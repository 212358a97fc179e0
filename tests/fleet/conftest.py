"""Fixtures of the fleet tests: a JetStream server per test, a reader of the stream, and
publishers over a hub the test feeds."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import orjson
import pytest
from nats.js.errors import NotFoundError

from procstream.fleet.link import NatsLink
from procstream.fleet.options import NatsSettings, PublishSettings, StreamSpec, split_urls
from procstream.fleet.publisher import Publisher
from procstream.stream.hub import Hub
from tests.support.nats_servers import NatsServer
from tests.support.waiting import async_wait_for


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


class StreamReader:
    """Reads a stream's messages by sequence (subject, message id, payload object)."""

    def __init__(self, nc: Any, stream: str = "PROCSTREAM") -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.stream = stream

    async def count(self) -> int:
        try:
            return (await self.js.stream_info(self.stream)).state.messages
        except NotFoundError:
            return 0

    async def messages(self) -> list[tuple[str, str, dict[str, Any]]]:
        info = await self.js.stream_info(self.stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                m = await self.js.get_msg(self.stream, seq)
            except NotFoundError:
                continue
            out.append((m.subject, (m.headers or {}).get("Nats-Msg-Id", ""), orjson.loads(m.data)))
        return out


@pytest.fixture
async def reader(nats_server: NatsServer) -> AsyncIterator[StreamReader]:
    nc = await nats.connect(nats_server.url)
    try:
        yield StreamReader(nc)
    finally:
        await nc.close()


# -- publishers over a hub the test feeds -------------------------------------------------

_pids = itertools.count(100)


def some_events(n: int) -> list[dict[str, Any]]:
    """``n`` events of every type in turn (a start, its exit, a group update, a cycle)."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        kind = i % 4
        if kind in (0, 1):
            out.append({"type": "proc.start" if kind == 0 else "proc.exit", "ts": time.time(),
                        "pid": next(_pids), "start_time": 1.0, "group": "g", "name": "x"})
        elif kind == 2:
            out.append({"type": "group.update", "ts": time.time(), "group": "g", "procs": i})
        else:
            out.append({"type": "cycle", "ts": time.time(), "duration_ms": 1.0})
    return out


def new_hub(host: str = "web-01", buffer: int = 100_000) -> Hub:
    hub = Hub(host=host, interval=1.0, buffer_size=buffer)
    hub.load_state({}, [])
    return hub


@pytest.fixture
async def publishers() -> AsyncIterator[list[Publisher]]:
    """Publishers a test made (with :func:`make_publisher`); each is closed at the end."""
    made: list[Publisher] = []
    yield made
    for p in made:
        await p.close(timeout=0.5)


def make_publisher(made: list[Publisher], hub: Hub, urls: str, *, replicas: int = 1, ack_timeout: float = 2.0,
                   max_inflight: int = 1000, state_interval: float = 0) -> Publisher:
    settings = NatsSettings(servers=split_urls(urls), connect_timeout=5.0)
    p = Publisher(hub, NatsLink(settings, name="test"), StreamSpec(replicas=replicas),
                  PublishSettings(ack_timeout=ack_timeout, max_inflight=max_inflight,
                                  state_interval=state_interval))
    made.append(p)
    return p


async def all_acked(p: Publisher, timeout: float = 20.0) -> None:
    await async_wait_for("every event to be acknowledged", lambda: p.stats.acked_seq == p.hub.head_seq,
                         timeout=timeout, explain=lambda: p.health())
