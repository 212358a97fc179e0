"""Each host's latest state in a JetStream key-value bucket, for readers that start late.

A reader of the stream (the fleet aggregator, a dashboard) that starts now needs every
host's current groups and processes, also of hosts that are quiet. Replaying the stream
from its beginning is slow and, past its retention, impossible; asking every host is
what NATS is there to avoid. So each ``serve --nats`` also keeps its state in the bucket
(default ``PROCSTREAM_STATE``), at most every ``--nats-state-interval`` seconds: the
whole state when it changed, else only ``head`` again when the host published since (the
same pieces, as of a later ``seq``), so that where a reader starts is never far back:

- ``<host>.chunk.<i>`` (subject ``$KV.<bucket>.<host>.chunk.<i>``): the hub's snapshot
  (the ``snapshot`` object of the WebSocket protocol) compressed with zlib, cut into
  pieces below the server's max payload;
- ``<host>.head``: what the pieces make, written after them::

    {"host", "epoch", "seq", "interval", "stream", "stream_seq", "ts",
     "encoding": "zlib", "size", "chunks": [revision of each piece]}

How a reader starts: read ``head``, then each piece, and check that its revision is the
one ``head`` names (otherwise a newer state is being written: read ``head`` again). The
snapshot is the state as of ``seq``; consume the stream from ``stream_seq + 1`` and apply
that host's events with a ``seq`` above ``seq`` (same ``epoch``). Every event of the host
that the snapshot doesn't contain is at a stream position after ``stream_seq``.

``<host>`` is the subject token of :func:`~.subjects.host_token`. Pieces of an older,
bigger state stay in the bucket; ``head`` says how many belong to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any, Final, Protocol

import nats.errors
import orjson
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from .link import NatsLink, stop_task
from .subjects import host_token

__all__ = ["StateSource", "StateWriter", "read_host_state", "state_subject", "STATE_ENCODING"]

log = logging.getLogger("procstream.nats")

STATE_ENCODING: Final = "zlib"
_CHUNK_MAX: Final = 256 * 1024
# A state this big (decompressed) is not one a host of ours wrote.
_STATE_MAX: Final = 512 * 1024 * 1024


class StateSource(Protocol):
    """The hub, as the state writer sees it."""

    host: str
    epoch: str
    interval: float

    def state_json(self) -> tuple[int, bytes]: ...

    def on_append(self, callback: Callable[[], None]) -> None: ...


def state_subject(bucket: str, token: str, key: str) -> str:
    return f"$KV.{bucket}.{token}.{key}"


def _state_part(data: bytes) -> bytes:
    """The part of an encoded snapshot that is state, not position (seq, time)."""
    i = data.find(b'"groups":')
    return data[i:] if i >= 0 else data


class StateWriter:
    """Writes the hub's state to the bucket every ``interval`` seconds when it changed.

    ``position()`` says how far the stream has the host's events: ``(seq, stream seq)``
    (the publisher's acknowledged position).
    """

    def __init__(
        self,
        hub: StateSource,
        link: NatsLink,
        position: Callable[[], tuple[int, int]],
        *,
        bucket: str,
        stream: str,
        interval: float,
        timeout: float = 5.0,
    ) -> None:
        self.hub = hub
        self.link = link
        self.position = position
        self.bucket = bucket
        self.stream = stream
        self.interval = interval
        self.timeout = timeout
        self.token = host_token(hub.host)
        self.writes = 0
        self.failures = 0
        self._last: int | None = None  # crc of the state last written
        self._last_chunks: list[int] = []  # its pieces' revisions
        self._last_stream_seq = -1  # the stream position the last head was written at
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        # Nothing before the hub has its first state (serve connects before its first
        # poll): a reader must never take an empty state for the host's.
        loaded = asyncio.Event()
        self.hub.on_append(loaded.set)
        self._task = asyncio.create_task(self._run(loaded), name="procstream-nats-state")

    async def close(self) -> None:
        await stop_task(self._task)

    async def _run(self, loaded: asyncio.Event) -> None:
        await loaded.wait()
        while True:
            await self.link.connected.wait()
            with contextlib.suppress(asyncio.TimeoutError):
                await self.write_if_changed()
            await asyncio.sleep(self.interval)

    async def write_if_changed(self) -> bool:
        """Write the current state unless it is the one written last (then only its
        ``head`` again, when the host published since); True if the state was written."""
        seq, data = self.hub.state_json()
        crc = zlib.crc32(_state_part(data))
        acked, stream_seq = self.position()
        same = crc == self._last
        if same and stream_seq == self._last_stream_seq:
            return False
        try:
            if same:
                await self._write_head(seq, len(data), stream_seq, self._last_chunks)
            else:
                await self._write(seq, data, stream_seq)
        except (nats.errors.Error, APIError, OSError, TimeoutError) as exc:
            self.failures += 1
            if not self._failing:
                log.warning("NATS: could not write the host state to %s (%s); retrying", self.bucket, exc or type(exc).__name__)
            self._failing = True
            return False
        if self._failing:
            log.info("NATS: host state written to %s again", self.bucket)
        self._failing = False
        self._last_stream_seq = stream_seq
        if same:
            return False
        self._last = crc
        self.writes += 1
        return True

    async def _write(self, seq: int, data: bytes, stream_seq: int) -> None:
        js = self.link.nc.jetstream()
        packed = await asyncio.to_thread(zlib.compress, data, 6)
        size = max(1024, min(_CHUNK_MAX, self.link.nc.max_payload - 4096))
        revisions: list[int] = []
        for i in range(0, max(1, len(packed)), size):
            ack = await js.publish(state_subject(self.bucket, self.token, f"chunk.{i // size}"),
                                   packed[i:i + size], timeout=self.timeout)
            revisions.append(ack.seq)
        await self._write_head(seq, len(data), stream_seq, revisions)
        self._last_chunks = revisions

    async def _write_head(self, seq: int, size: int, stream_seq: int, revisions: list[int]) -> None:
        js = self.link.nc.jetstream()
        head = {
            "host": self.hub.host,
            "epoch": self.hub.epoch,
            "seq": seq,
            "interval": self.hub.interval,
            "stream": self.stream,
            "stream_seq": stream_seq,
            "ts": time.time(),
            "encoding": STATE_ENCODING,
            "size": size,
            "chunks": revisions,
        }
        await js.publish(state_subject(self.bucket, self.token, "head"), orjson.dumps(head), timeout=self.timeout)


async def read_host_state(js: JetStreamContext, bucket: str, host: str | None, *, tries: int = 3,
                          token: str | None = None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(head, snapshot)`` of ``host``'s latest state in ``bucket`` (or of the host
    whose subject token is ``token``), or None when it has none (or it kept changing
    while we read, ``tries`` times)."""
    stream = f"KV_{bucket}"
    if token is None:
        token = host_token(host or "")
    for _ in range(tries):
        try:
            msg = await js.get_last_msg(stream, state_subject(bucket, token, "head"))
        except NotFoundError:
            return None
        head = orjson.loads(msg.data)
        chunks = head.get("chunks") if isinstance(head, dict) else None
        if not isinstance(chunks, list) or head.get("encoding") != STATE_ENCODING:
            return None
        parts: list[bytes] = []
        for i, revision in enumerate(chunks):
            try:
                piece = await js.get_last_msg(stream, state_subject(bucket, token, f"chunk.{i}"))
            except NotFoundError:
                break
            if piece.seq != revision:
                break  # a newer state is being written
            parts.append(piece.data)
        if len(parts) != len(chunks):
            continue
        inflater = zlib.decompressobj()
        data = inflater.decompress(b"".join(parts), _STATE_MAX)
        if inflater.unconsumed_tail:
            return None
        return head, orjson.loads(data)
    return None
