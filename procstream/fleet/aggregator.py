"""``procstream fleet``: the JetStream stream of every host, as one numbered stream.

The aggregator reads the stream every ``serve --nats`` publishes to and feeds a
:class:`~procstream.stream.hub.Hub` with it, so that the fleet is served exactly as one
host is: hello, snapshot, events, resume, reset, overflow.

Numbering. An event's ``seq`` is the stream sequence of its message, and the epoch is
derived from the stream's name and creation time. Every aggregator of the stream — a
replica behind a load balancer, the same one restarted — hands out the same ``seq`` for
the same event, so a client resumes with any of them. Every message becomes one event
(see :mod:`.intake`), so the numbers have no gaps.

Start-up, without asking any host: each host's latest state comes from the state
bucket (the snapshot as of a host ``seq``, and the stream position after which the
rest of its events are, see :mod:`.state`). The stream is replayed from a little before
the oldest of those positions (and at least the last ``buffer`` messages, so that
clients can resume into it); each event moves its host's state when it is newer than
the snapshot. A host whose position is far older (long quiet, or gone) has its few
later messages read on their own. Then the aggregator is live: it listens once it has
caught up with the stream as it was when it started.

Hosts coming and going: a host silent for its timeout is published ``host.down``, one
heard from again (or starting a new run, or whole again after a loss) ``host.up``. The
aggregators publish these into the stream, on the host's subjects, with ids every
aggregator derives alike (:func:`~.subjects.status_msg_id`): JetStream keeps one, and
they take effect, like everything, when they come back through the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import nats.errors
import orjson
from nats.js import JetStreamContext
from nats.js.api import StreamInfo
from nats.js.errors import APIError, NotFoundError

from ..schema import HOST_DOWN, HOST_UP
from ..stats import Stats
from ..stream.hub import Hub
from .feed import Feed
from .fleetstate import FleetState, HostEntry, Outcome
from .intake import DELETED, Incoming, Intake, filler
from .link import NatsLink, NatsRefused, stop_task
from .options import NatsSettings
from .state import read_host_state
from .stream import api_problem, jetstream_missing
from .subjects import MSG_ID, PREFIX, event_subject, host_subjects, host_token, status_msg_id

__all__ = ["Aggregator", "AggregatorStats", "FleetStartError", "stream_epoch", "host_timeout", "status_record"]

log = logging.getLogger("procstream.fleet")

#: A host is down after this many of its poll intervals of silence, and never sooner
#: than MIN_HOST_TIMEOUT seconds.
TIMEOUT_INTERVALS: Final = 3
MIN_HOST_TIMEOUT: Final = 15.0
# At start, a host whose state is older than this many messages has its later messages
# read on their own instead of replaying everything since.
_REPLAY_SPAN: Final = 2
# Read one by one, a host's messages after its state are for a host quiet or gone: past
# this many, its state is taken as it is.
_CATCH_UP_MAX: Final = 5000
_CATCH_UP_PARALLEL: Final = 32
# How long a new run's state is waited for in the bucket (its first write is at once).
_STATE_WAIT: Final = 30.0
_TAKE: Final = 2000  # messages handled per turn of the event loop
# Live, the messages of this many seconds go to the subscribers together: a frame costs
# the same to every subscriber whatever it holds, and hosts' events trickle in one poll
# at a time. (Replaying, batches are full anyway.)
_COALESCE: Final = 0.05
_FILLERS_PER_BATCH: Final = 10_000
_CHECK_EVERY: Final = 1.0


class FleetStartError(Exception):
    """NATS refused us, or the stream can't be read: ``fleet`` must not start (exit 2)."""


def stream_epoch(info: StreamInfo) -> str:
    """The fleet's epoch: the stream's name and creation time, hashed. A stream deleted
    and created again numbers from 1 again, and is another epoch."""
    created = info.created.isoformat() if info.created is not None else ""
    return hashlib.sha256(f"{info.config.name}\0{created}".encode()).hexdigest()[:16]


def status_record(kind: str, host: str, epoch: str, last_seen: float, ts: float) -> dict[str, Any]:
    """The ``host.up`` (``kind`` "up") or ``host.down`` an aggregator publishes."""
    return {"type": HOST_UP if kind == "up" else HOST_DOWN, "ts": ts, "host": host, "epoch": epoch,
            "last_seen": last_seen}


def host_timeout(entry: HostEntry, configured: float | None) -> float:
    """Seconds of silence after which ``entry`` is down."""
    if configured is not None:
        return configured
    return max(MIN_HOST_TIMEOUT, TIMEOUT_INTERVALS * (entry.interval or 1.0))


@dataclass(slots=True)
class AggregatorStats(Stats):
    """What the aggregator counts (``/metrics``)."""

    messages: int = 0  # stream messages taken
    events: int = 0  # events handed to the hub (messages and the places of missing ones)
    invalid: int = 0  # messages that were not procstream events
    deleted: int = 0  # stream sequences with no message (deleted from the stream)
    skipped: int = 0  # events already in a host's state, or of an earlier run
    new_runs: int = 0
    states_read: int = 0  # host states installed from the bucket
    state_waits_given_up: int = 0
    caught_up: int = 0  # messages read host by host at start
    published: dict[str, int] = field(default_factory=dict)  # host.up / host.down published
    publish_failures: int = 0
    epoch_changes: int = 0
    start_seconds: float = 0.0  # from connected to ready


class Aggregator:
    """Reads the stream into a hub. :meth:`start` (returns once caught up), :meth:`close`."""

    def __init__(
        self,
        settings: NatsSettings,
        *,
        stream: str,
        bucket: str,
        host_name: str,
        buffer_size: int = 100_000,
        buffer_bytes: int = 64 * 1024 * 1024,
        output_bytes: int = 64 * 1024 * 1024,
        cache_bytes: int = 32 * 1024 * 1024,
        overflow_grace: float = 30.0,
        host_timeout: float | None = None,
        future_wait: float = 5.0,
        stream_check: float = 10.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.stream = stream
        self.bucket = bucket
        self.host_timeout = host_timeout
        self.stream_check = stream_check
        self.stats = AggregatorStats()
        self.state = FleetState()
        self.hub = Hub(
            host=host_name,
            interval=1.0,
            buffer_size=buffer_size,
            buffer_bytes=buffer_bytes,
            output_bytes=output_bytes,
            cache_bytes=cache_bytes,
            overflow_grace=overflow_grace,
            state=self.state,
            hosts_filter=True,
            hello_extra={"fleet": {"stream": stream}},
            future_wait=future_wait,
            epoch="-",
        )
        self.link = NatsLink(settings, name=f"procstream fleet {host_name}")
        self.feed = Feed(self.link, stream, on_problem=self._feed_problem)
        self.ready = False
        self._intake = Intake()
        self._clock = clock
        self._mono = monotonic
        self._heard: dict[str, float] = {}  # host -> monotonic time it was last heard from
        self._sent: dict[str, tuple[str, str, int]] = {}  # host -> the last status published
        self._want_state: dict[str, float] = {}  # host -> give up waiting at (monotonic)
        self._state_wake = asyncio.Event()
        self._status_wake = asyncio.Event()
        self._ingesting: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()  # host.up / host.down on their way
        self._caught_up = asyncio.Event()
        self._target = 0  # the stream's last seq when we started reading
        self._created: str | None = None

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, build the fleet's state and catch up with the stream; raises
        :class:`FleetStartError` for what retrying won't fix."""
        try:
            if not await self.link.wait_connected(self.settings.connect_timeout):
                log.warning("NATS %s not reachable yet (%s); waiting for it",
                            self.settings.where, self.link.stats.last_error or "no answer")
                await self.link.connected.wait()
        except NatsRefused as exc:
            await self.link.close()
            raise FleetStartError(f"NATS {self.settings.where}: {exc}") from None
        began = self._mono()
        info = await self._find_stream()
        start = await self._load(info)
        self.hub.epoch = stream_epoch(info)
        self.hub.start_at(start)
        self.feed.start(start)
        self._ingesting = asyncio.create_task(self._ingest(), name="procstream-fleet-ingest")
        self._tasks = [asyncio.create_task(self._fetch_states(), name="procstream-fleet-states")]
        await self._caught_up.wait()
        self._mark_initial_status()
        self.ready = True
        self.stats.start_seconds = self._mono() - began
        up, down = self.state.counts()
        log.info("fleet: stream %s at seq %d (epoch %s): %d hosts up, %d down; ready in %.1fs",
                 self.stream, self.hub.head_seq, self.hub.epoch, up, down, self.stats.start_seconds)
        self._tasks += [
            asyncio.create_task(self._watch_hosts(), name="procstream-fleet-hosts"),
            asyncio.create_task(self._watch_stream(), name="procstream-fleet-stream"),
        ]

    async def close(self) -> None:
        for task in [self._ingesting, *self._tasks, *self._sends]:
            await stop_task(task)
        await self.feed.close()
        await self.link.close()

    # -- what /healthz and /metrics report -----------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        up, down = self.state.counts()
        connected = self.link.connected.is_set()
        return connected and self.ready, {
            "nats": self.link.describe(),
            "stream": self.stream,
            "epoch": self.hub.epoch,
            "seq": self.hub.head_seq,
            "lag": self.feed.lag,
            "ready": self.ready,
            "hosts": {"up": up, "down": down},
        }

    def metrics(self) -> dict[str, Any]:
        up, down = self.state.counts()
        out = self.stats.as_dict()
        out.update(hosts_up=up, hosts_down=down, lag=self.feed.lag, seq=self.hub.head_seq,
                   connected=self.link.connected.is_set(), consumers=self.feed.stats.consumers,
                   waiting_for_state=len(self._want_state))
        return out

    # -- start-up ------------------------------------------------------------------------

    async def _find_stream(self) -> StreamInfo:
        said = False
        while True:
            try:
                return await self.link.nc.jetstream().stream_info(self.stream)
            except NotFoundError:
                why = f"no stream {self.stream} yet (no serve --nats has published to it)"
            except (APIError, nats.errors.NoRespondersError) as exc:
                if jetstream_missing(exc):
                    raise FleetStartError(str(api_problem(exc, self.stream))) from None
                why = str(api_problem(exc, f"stream {self.stream}"))
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                why = f"stream {self.stream}: {exc or type(exc).__name__}"
            if not said:
                log.warning("fleet: %s; waiting", why)
                said = True
            await asyncio.sleep(1.0)

    async def _load(self, info: StreamInfo) -> int:
        """Every host's state from the bucket; returns where the replay starts (the
        stream seq before the first message to read)."""
        js = self.link.nc.jetstream()
        self._created = info.created.isoformat() if info.created is not None else None
        last = info.state.last_seq
        first = info.state.first_seq if info.state.messages else last + 1
        heads = await self._read_states(js)
        for host, (head, snapshot) in list(heads.items()):
            if int(head.get("stream_seq") or 0) > last:
                # Written against an earlier stream of that name (deleted, created again):
                # its position means nothing in this one.
                heads[host] = ({**head, "stream_seq": 0}, snapshot)
        span = self.hub.buffer_size
        positions = [int(head.get("stream_seq") or 0) for head, _ in heads.values()]
        recent = [p for p in positions if p >= last - _REPLAY_SPAN * span]
        start = max(first - 1, min([last - span, *recent]), 0)
        intervals = []
        for host, (head, snapshot) in heads.items():
            if self.state.install(host, head, snapshot, stream_ts=float(head.get("ts") or 0.0)):
                self.stats.states_read += 1
                entry = self.state.hosts[host]
                if entry.interval:
                    intervals.append(entry.interval)
        if intervals:
            self.hub.interval = min(intervals)
        stale = [(h, int(head.get("stream_seq") or 0)) for h, (head, _) in heads.items()
                 if int(head.get("stream_seq") or 0) < start]
        await self._catch_up(js, stale, start)
        self._target = last
        if start >= last:
            self._caught_up.set()
        log.info("fleet: %d host states from %s; replaying stream %s from seq %d to %d",
                 len(heads), self.bucket, self.stream, start + 1, last)
        return start

    async def _read_states(self, js: JetStreamContext) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """Each host's latest state in the bucket: ``{host: (head, snapshot)}``."""
        try:
            info = await js.stream_info(f"KV_{self.bucket}", subjects_filter=f"$KV.{self.bucket}.*.head")
        except NotFoundError:
            log.warning("fleet: no state bucket %s: hosts' states come from their events only", self.bucket)
            return {}
        tokens = [s.split(".")[2] for s in (info.state.subjects or {})]
        out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        limit = asyncio.Semaphore(_CATCH_UP_PARALLEL)

        async def one(token: str) -> None:
            async with limit:
                try:
                    got = await read_host_state(js, self.bucket, None, token=token)
                except orjson.JSONDecodeError:
                    return
                host = got[0].get("host") if got is not None else None
                if got is not None and isinstance(host, str) and host_token(host) == token:
                    out[host] = got

        await asyncio.gather(*(one(t) for t in tokens))
        return out

    async def _catch_up(self, js: JetStreamContext, stale: list[tuple[str, int]], until: int) -> None:
        """The messages of hosts whose state is older than the replay, up to ``until``,
        read host by host (a quiet or gone host has few)."""
        limit = asyncio.Semaphore(_CATCH_UP_PARALLEL)

        async def one(host: str, after: int) -> None:
            async with limit:
                subject = host_subjects(host_token(host))
                seq = after + 1
                for _ in range(_CATCH_UP_MAX):
                    try:
                        m = await js.get_msg(self.stream, seq=seq, next=True, subject=subject)
                    except NotFoundError:
                        return
                    if m.seq is None or m.seq > until:
                        return
                    ts = m.time.timestamp() if m.time is not None else 0.0
                    inc = self._intake.decode(m.subject or "", m.headers, m.data or b"", m.seq, ts)
                    if inc.usable and inc.event.get("host") == host:
                        self._apply(inc)
                    self.stats.caught_up += 1
                    seq = m.seq + 1
                log.warning("fleet: host %s: more than %d messages after its stored state; "
                            "taking its state as it is", host, _CATCH_UP_MAX)

        await asyncio.gather(*(one(h, p) for h, p in stale))

    def _mark_initial_status(self) -> None:
        """Hosts whose up or down no message of the replay said: up when heard from
        within their timeout."""
        now, mono = self._clock(), self._mono()
        for host, entry in self.state.hosts.items():
            self._heard.setdefault(host, mono - max(0.0, now - entry.last_seen))
            if entry.up_epoch is None and entry.synced:
                entry.up = now - entry.last_seen < host_timeout(entry, self.host_timeout)
                entry.up_epoch = entry.epoch
                entry.up_mark = entry.up_after
        self.hub.state_changed()

    # -- the stream, message by message --------------------------------------------------------

    async def _ingest(self) -> None:
        feed = self.feed
        while True:
            if not await feed.wait(timeout=2.0):
                if not self._caught_up.is_set() and await self._nothing_before_target():
                    self._caught_up.set()
                continue
            msgs = feed.take(_TAKE)
            if self._caught_up.is_set() and len(msgs) < _TAKE:
                await asyncio.sleep(_COALESCE)
                msgs += feed.take(_TAKE - len(msgs))
            if msgs:
                self._handle(msgs)
            if not self._caught_up.is_set() and self.hub.head_seq >= self._target:
                self._caught_up.set()
            await asyncio.sleep(0)

    async def _nothing_before_target(self) -> bool:
        """Whether the stream has no message left to read up to where it was when we
        started (its last ones were removed since)."""
        try:
            m = await self.link.nc.jetstream().get_msg(
                self.stream, seq=self.hub.head_seq + 1, next=True, subject=f"{PREFIX}.>")
        except NotFoundError:
            return True
        except (nats.errors.Error, APIError, TimeoutError, OSError):
            return False
        return m.seq is None or m.seq > self._target

    def _handle(self, msgs: list[Any]) -> None:
        hub = self.hub
        expected = hub.head_seq + 1
        batch: list[Any] = []
        live = self._caught_up.is_set()
        mono = self._mono()
        decode = self._intake.decode
        for seq, ts, msg in msgs:
            if seq < expected:
                continue
            while expected < seq:  # messages deleted from the stream: keep their places
                batch.append(filler(expected, ts, DELETED).event)
                self.stats.deleted += 1
                expected += 1
                if len(batch) >= _FILLERS_PER_BATCH:
                    self._publish(batch)
                    batch = []
            inc = decode(msg.subject, msg.headers, msg.data, seq, ts)
            self.stats.messages += 1
            if inc.usable:
                host = self._apply(inc)
                if live and host is not None and inc.event.get("type") not in (HOST_UP, HOST_DOWN):
                    self._heard[host] = mono
            else:
                self.stats.invalid += 1
            batch.append(inc.event)
            expected += 1
        self._publish(batch)

    def _publish(self, batch: list[Any]) -> None:
        if batch:
            self.stats.events += len(batch)
            self.hub.publish_numbered(batch)

    def _apply(self, inc: Incoming) -> str | None:
        """Move the host's state by one usable message; the host's name."""
        ev = inc.event
        host: Any = ev.get("host")
        outcome = self.state.apply_message(ev, inc.epoch or "", inc.host_seq, inc.seq, inc.ts)
        if outcome is Outcome.APPLIED:
            return host
        if outcome is Outcome.SKIPPED:
            self.stats.skipped += 1
        elif outcome is Outcome.NEW_RUN or outcome is Outcome.LOST:
            if outcome is Outcome.NEW_RUN:
                self.stats.new_runs += 1
                self._sent.pop(host, None)
            self._want_state[host] = self._mono() + _STATE_WAIT
            self._state_wake.set()
        return host

    # -- states of new runs ------------------------------------------------------------------

    async def _fetch_states(self) -> None:
        """Read the state of each host that waits for one (a new run, a loss)."""
        while True:
            if not self._want_state:
                self._state_wake.clear()
                await self._state_wake.wait()
            await self.link.connected.wait()
            js = self.link.nc.jetstream()
            for host, give_up in list(self._want_state.items()):
                entry = self.state.hosts.get(host)
                if entry is None or entry.synced:
                    self._want_state.pop(host, None)
                    continue
                try:
                    got = await read_host_state(js, self.bucket, host)
                except (nats.errors.Error, APIError, TimeoutError, OSError):
                    got = None
                if got is not None and self.state.install(host, got[0], got[1],
                                                          stream_ts=float(got[0].get("ts") or 0.0)):
                    self.stats.states_read += 1
                    self._want_state.pop(host, None)
                    self.hub.state_changed()
                    self._check_soon()
                elif self._mono() >= give_up:
                    log.warning("fleet: host %s: no state of its run %s in %s after %.0fs; "
                                "its state is what its events since then say", host, entry.epoch,
                                self.bucket, _STATE_WAIT)
                    self.stats.state_waits_given_up += 1
                    self.state.give_up_waiting(host)
                    self._want_state.pop(host, None)
                    self.hub.state_changed()
                    self._check_soon()
            if self._want_state:
                await asyncio.sleep(0.5)

    # -- hosts up and down -------------------------------------------------------------

    def _check_soon(self) -> None:
        self._status_wake.set()

    async def _watch_hosts(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_wake.wait(), _CHECK_EVERY)
            self._status_wake.clear()
            if self.link.connected.is_set() and self.feed.lag < self.hub.buffer_size:
                self.check_hosts()

    def check_hosts(self) -> None:
        """Publish ``host.down`` for hosts silent past their timeout and ``host.up`` for
        hosts due one (see :meth:`~.fleetstate.HostEntry.due_up`)."""
        mono = self._mono()
        for host, entry in self.state.hosts.items():
            if entry.epoch is None:
                continue
            silent = mono - self._heard.get(host, mono) > host_timeout(entry, self.host_timeout)
            if entry.up and silent and entry.up_epoch == entry.epoch:
                self._status(entry, "down", entry.last_host_seq)
            elif not silent and entry.due_up():
                self._status(entry, "up", entry.up_after)

    def _status(self, entry: HostEntry, kind: str, after: int) -> None:
        key = (kind, entry.epoch or "", after)
        if self._sent.get(entry.name) == key:
            return  # published; it takes effect when it comes back through the stream
        self._sent[entry.name] = key
        event = status_record(kind, entry.name, entry.epoch or "", entry.last_seen, self._clock())
        ident = status_msg_id(kind, entry.name, entry.epoch or "", after)
        subject = event_subject(host_token(entry.name), event["type"])
        task = asyncio.create_task(self._send(entry.name, key, subject, orjson.dumps(event), ident))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, host: str, key: tuple[str, str, int], subject: str, data: bytes, ident: str) -> None:
        try:
            await self.link.nc.jetstream().publish(subject, data, headers={MSG_ID: ident}, timeout=5.0)
        except (nats.errors.Error, APIError, TimeoutError, OSError) as exc:
            self.stats.publish_failures += 1
            if self._sent.get(host) == key:
                del self._sent[host]  # try again at the next check
            if self.stats.publish_failures == 1 or self.stats.publish_failures % 100 == 0:
                log.warning("fleet: could not publish %s to %s (%s); %d failures so far",
                            key[0], subject, exc or type(exc).__name__, self.stats.publish_failures)
            return
        self.stats.published[key[0]] = self.stats.published.get(key[0], 0) + 1

    # -- the stream itself ---------------------------------------------------------------

    async def _watch_stream(self) -> None:
        """A stream deleted and created again numbers from 1: a new epoch, and the
        fleet's state is read again."""
        while True:
            await asyncio.sleep(self.stream_check)
            try:
                info = await self.link.nc.jetstream().stream_info(self.stream)
            except (nats.errors.Error, APIError, TimeoutError, OSError):
                continue
            created = info.created.isoformat() if info.created is not None else None
            if created == self._created:
                continue
            log.warning("fleet: stream %s was created again; reading the fleet's state again", self.stream)
            self.stats.epoch_changes += 1
            await self._restart(info)

    async def _restart(self, info: StreamInfo) -> None:
        await stop_task(self._ingesting)
        await self.feed.close()
        self.state.hosts.clear()
        self._heard.clear()
        self._sent.clear()
        self._want_state.clear()
        self._caught_up = asyncio.Event()
        self.feed = Feed(self.link, self.stream, on_problem=self._feed_problem)
        start = await self._load(info)
        # The hub keeps its subscribers: they get reset {"reason": "epoch"} + snapshot.
        self.hub.restart(stream_epoch(info), start)
        self.feed.start(start)
        self._ingesting = asyncio.create_task(self._ingest(), name="procstream-fleet-ingest")
        await self._caught_up.wait()
        self._mark_initial_status()

    def _feed_problem(self, text: str) -> None:
        log.warning("fleet: reading stream %s again from seq %d (%s)", self.stream, self.feed.position + 1, text)
