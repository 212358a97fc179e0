"""The stream's messages, in order, from a position the reader chooses (a pull consumer).

A fleet aggregator reads the whole stream from a stream sequence on and must neither
skip a message nor take one twice, across NATS outages and restarts of its server. It
keeps its own position (the stream sequence of the last message it took) and reads
through an ephemeral pull consumer that starts right after it: no acknowledgements,
kept in memory, one replica, deleted when idle. Whenever anything goes wrong — the
connection drops, the consumer is gone (a server restart, a leader change), nothing
arrives for three heartbeats while messages were asked for — the consumer is replaced
by a new one starting after the last message taken. Nothing is ever ahead of the
position, so nothing is taken twice; a message the stream no longer has is a gap in
the sequence, which the caller sees.

Flow control is the pull itself: messages are asked for in batches, at most
``window`` outstanding and only while fewer than ``max_queue`` wait to be taken, so a
reader that falls behind holds the stream back at the server, not in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import nats.errors
import orjson
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from ..stats import Stats
from .link import NatsLink, stop_task
from .subjects import PREFIX

__all__ = ["Feed", "FeedStats", "metadata"]

log = logging.getLogger("procstream.nats")

_HEARTBEAT: Final = 2.0  # seconds between idle heartbeats of a pull request
_EXPIRES: Final = 10.0  # seconds a pull request lasts
_INACTIVE: Final = 60.0  # the server deletes a consumer nobody pulled from for this long
_BACKOFF_MAX: Final = 10.0


def metadata(reply: str) -> tuple[int, float, int]:
    """``(stream seq, stream time in epoch seconds, messages pending after it)`` from a
    JetStream message's reply subject (``$JS.ACK.…``, with or without domain)."""
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[7]) / 1e9, int(tokens[8])
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]
    return int(tokens[7]), int(tokens[9]) / 1e9, int(tokens[10])


@dataclass(slots=True)
class FeedStats(Stats):
    messages: int = 0  # messages taken
    consumers: int = 0  # consumers created (1 + replacements)
    pending: int = 0  # messages in the stream after the last one received
    last_error: str | None = None


class Feed:
    """Reads ``stream`` from a stream sequence on. :meth:`start`, then :meth:`take`
    batches as :meth:`wait` says they are there; :meth:`close` at the end.

    ``on_problem`` is called with a short text when the consumer had to be replaced
    (for the log, once per change)."""

    def __init__(
        self,
        link: NatsLink,
        stream: str,
        *,
        batch: int = 2000,
        window: int = 4,
        max_queue: int = 20_000,
        on_problem: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.stream = stream
        self.batch = batch
        self.window = window
        self.max_queue = max_queue
        self.stats = FeedStats()
        self.position = 0  # stream seq of the last message taken
        self._on_problem = on_problem
        self._clock = clock
        self._queue: deque[tuple[int, float, Msg]] = deque()  # (stream seq, stream time, message)
        self._arrived = asyncio.Event()
        self._wake = asyncio.Event()  # the pulling task: room in the queue, or trouble
        self._sub: Subscription | None = None
        self._inbox = ""
        self._consumer: str | None = None
        self._asked = 0  # messages asked for and neither received nor expired
        self._last_heard = 0.0
        self._received_to = 0  # stream seq of the last message received on this consumer
        self._broken: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- the reader's side -------------------------------------------------------------

    def start(self, position: int) -> None:
        """Read from stream seq ``position + 1`` on (in the background)."""
        self.position = position
        self._task = asyncio.create_task(self._run(), name="procstream-fleet-feed")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        await stop_task(self._task)
        await self._drop_consumer()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until messages are there to take (False after ``timeout``)."""
        if not self._queue:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return False
        return True

    def take(self, limit: int) -> list[tuple[int, float, Msg]]:
        """Up to ``limit`` messages as ``(stream seq, stream time, message)``, in stream
        order; the position moves past them."""
        queue = self._queue
        n = min(limit, len(queue))
        out = [queue.popleft() for _ in range(n)]
        if out:
            self.position = out[-1][0]
            self.stats.messages += n
            if len(queue) < self.max_queue // 2:
                self._wake.set()
        return out

    @property
    def lag(self) -> int:
        """Messages in the stream after the position: received and waiting here, plus
        those the server still has for us."""
        return len(self._queue) + self.stats.pending

    # -- the consumer --------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.25
        while not self._closing:
            await self.link.connected.wait()
            try:
                await self._open()
                backoff = 0.25
                await self._pull()
            except asyncio.CancelledError:
                raise
            except (nats.errors.Error, APIError, OSError, TimeoutError) as exc:
                self._problem(str(exc) or type(exc).__name__)
            if self._closing:
                return
            await self._drop_consumer()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _open(self) -> None:
        """A new consumer starting after the last message received (taken or queued)."""
        nc = self.link.nc
        start = self._queued_to() + 1
        name = f"procstream-fleet-{secrets.token_hex(6)}"
        config = ConsumerConfig(
            name=name,
            description="procstream fleet",
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            filter_subjects=[f"{PREFIX}.>"],
            inactive_threshold=_INACTIVE,
            mem_storage=True,
            num_replicas=1,
        )
        # A new inbox for each consumer: what an older one still sends goes nowhere.
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        self.stats.consumers += 1
        generation = self.stats.consumers
        self._inbox = nc.new_inbox()

        async def on_msg(msg: Msg) -> None:
            self._on_msg(msg, generation)

        self._sub = await nc.subscribe(self._inbox, cb=on_msg)
        await nc.jetstream().add_consumer(self.stream, config)
        self._consumer = name
        self._asked = 0
        self._broken = None
        self._received_to = start - 1
        self._last_heard = self._clock()

    def _queued_to(self) -> int:
        return self._queue[-1][0] if self._queue else self.position

    async def _pull(self) -> None:
        """Ask for messages while there is room; return when the consumer must go."""
        nc = self.link.nc
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self._consumer}"
        request = orjson.dumps({
            "batch": self.batch,
            "expires": int(_EXPIRES * 1e9),
            "idle_heartbeat": int(_HEARTBEAT * 1e9),
        })
        while not self._closing:
            if self._broken is not None:
                raise nats.errors.Error(self._broken)
            if not self.link.connected.is_set():
                raise nats.errors.ConnectionClosedError
            if self._asked and self._clock() - self._last_heard > 3 * _HEARTBEAT:
                raise nats.errors.Error("no message or heartbeat from the consumer")
            while self._asked <= self.batch * (self.window - 1) and len(self._queue) < self.max_queue:
                await nc.publish(subject, request, reply=self._inbox)
                if not self._asked:
                    self._last_heard = self._clock()
                self._asked += self.batch
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _HEARTBEAT)

    def _on_msg(self, msg: Msg, generation: int) -> None:
        if generation != self.stats.consumers:
            return  # an older consumer's, still on its way
        self._last_heard = self._clock()
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status is not None:
            self._on_status(status, headers)  # type: ignore[arg-type]
            return
        try:
            seq, ts, pending = metadata(msg.reply)
        except (ValueError, IndexError):
            return
        if seq <= self._received_to:
            return  # cannot happen within one consumer; never take a message twice
        self._received_to = seq
        self._asked = max(0, self._asked - 1)
        self.stats.pending = pending
        self._queue.append((seq, ts, msg))
        self._arrived.set()

    def _on_status(self, status: str, headers: dict[str, str]) -> None:
        if status == "100":
            return  # idle heartbeat
        if status in ("404", "408"):
            # No messages (yet), or the request expired: what it asked for is void.
            left = headers.get("Nats-Pending-Messages")
            self._asked = max(0, self._asked - int(left)) if left and left.isdigit() else 0
            self._wake.set()
            return
        # 409 and others: the consumer is gone or changed (deleted, leader change,
        # too many requests): start a new one.
        self._broken = f"{status} {headers.get('Description', '')}".strip()
        self._wake.set()

    async def _drop_consumer(self) -> None:
        name, self._consumer = self._consumer, None
        if name is None or not self.link.connected.is_set():
            return
        with contextlib.suppress(nats.errors.Error, APIError, NotFoundError, TimeoutError, OSError):
            await self.link.nc.jetstream().delete_consumer(self.stream, name)

    def _problem(self, text: str) -> None:
        if text != self.stats.last_error:
            self.stats.last_error = text
            if self._on_problem is not None:
                self._on_problem(text)
        if not self._closing:
            log.debug("fleet feed: %s", text)

