"""Fixtures of the fleet tests: a JetStream server per test, and a reader of the stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import orjson
import pytest
from nats.js.errors import NotFoundError

from tests.support.nats_servers import NatsServer


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
