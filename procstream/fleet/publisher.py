"""``serve --nats``: every event the hub numbers, published to JetStream, in order.

The publisher is a reader of the hub's resume buffer, not a WebSocket subscriber: it
keeps its own cursor and sends the bytes the hub encoded for each event (the object a
WebSocket frame carries, not wrapped in an array) to ``procstream.<host>.<type>`` with
the message id ``<host>:<epoch>:<seq>``. It runs as its own task, woken by the hub after
each batch; polling and the WebSocket stream never wait for it.

Delivery:

* Pipelined: up to ``max_inflight`` events are sent and not yet acknowledged. Each
  publish carries its own reply subject (``<inbox>.<attempt>.<seq>``), so an
  acknowledgement is matched to its event without a lookup table of futures.
* The acknowledged cursor moves over the events JetStream confirmed, in seq order.
  Every event stays in the in-flight window (with its bytes) until then, so a resend
  never depends on the hub's buffer still holding it.
* Any failure — an error reply, no acknowledgement within ``ack_timeout``, a lost
  connection — stops sending and goes back: once NATS answers again, the publisher asks
  the stream which of the unacknowledged events it holds after all (a publish can be
  stored and its acknowledgement lost), takes those as acknowledged, and sends the rest
  again in order. The message id covers what that check can't see (JetStream drops a
  duplicate within the stream's duplicate window).
* Events the hub's buffer no longer holds when their turn comes (NATS was away longer
  than the buffer) are published as one ``host.lost`` record in their place.

Order: a host's events are stored in seq order. The one exception is a cluster
fail-over while events are in flight: an event the old stream leader never stored is
sent again after later ones the new leader did store. Consumers that need strict order
sort a host's events by ``seq``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import nats.errors
import orjson
from nats.aio.msg import Msg
from nats.js.errors import APIError, NotFoundError

from ..schema import HOST_LOST, HostLost
from ..stats import Stats
from .link import NatsLink, stop_task
from .options import PublishSettings, StreamSpec
from .stream import StreamProblem, ensure_state_bucket, ensure_stream
from .subjects import MSG_ID, event_subject, host_subjects, host_token, lost_msg_id, msg_id, parse_msg_id

__all__ = ["BufferReader", "PublisherStats", "Publisher", "loss_record"]

log = logging.getLogger("procstream.nats")

_BACKOFF_MIN: Final = 0.25
_BACKOFF_MAX: Final = 10.0
# JetStream refuses a message bigger than the stream's max_msg_size for good: it
# becomes a loss record rather than blocking everything behind it.
_ERR_TOO_BIG: Final = 10054


class BufferReader(Protocol):
    """What the publisher reads: the hub (see :class:`~procstream.stream.hub.Hub`)."""

    host: str
    epoch: str

    @property
    def head_seq(self) -> int: ...

    def read(self, from_seq: int, limit: int) -> tuple[int, list[Any], list[bytes]]: ...

    def on_append(self, callback: Callable[[], None]) -> None: ...


@dataclass(slots=True)
class PublisherStats(Stats):
    """Counters of the publisher (events, not messages, unless said)."""

    published: int = 0  # events sent for the first time
    acknowledged: int = 0  # events JetStream confirmed it holds
    duplicates: int = 0  # confirmations that JetStream had the event already
    retried: int = 0  # events sent again after a failure
    lost: int = 0  # events that became host.lost records
    lost_records: int = 0
    failures: int = 0  # times publishing stopped and went back to the last acknowledged event
    recovered: int = 0  # unacknowledged events found in the stream after a failure
    acked_seq: int = 0  # every event up to this seq is in JetStream
    acked_stream_seq: int = 0  # the stream's seq of that event


def loss_record(host: str, epoch: str, first: int, last: int) -> HostLost:
    """The ``host.lost`` record for events ``first``..``last`` of run ``epoch``."""
    return {
        "type": HOST_LOST,
        "ts": time.time(),
        "host": host,
        "epoch": epoch,
        "from_seq": first,
        "to_seq": last,
        "count": last - first + 1,
    }


class _Unit:
    """One message in flight: an event, or a ``host.lost`` record for ``first``..``last``."""

    __slots__ = ("first", "last", "subject", "msg_id", "data", "sent", "stream_seq")

    def __init__(self, first: int, last: int, subject: str, ident: str, data: bytes) -> None:
        self.first = first
        self.last = last
        self.subject = subject
        self.msg_id = ident
        self.data = data
        self.sent = 0.0
        self.stream_seq = 0  # set when acknowledged


def _describe(exc: BaseException) -> str:
    if isinstance(exc, APIError) and exc.description:
        return exc.description
    text = str(exc).removeprefix("nats: ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Failure(Exception):
    """Publishing stopped; the message says why (for the log, once)."""


class Publisher:
    """Publishes the hub's events to JetStream. :meth:`start`, then :meth:`close`."""

    def __init__(
        self,
        hub: BufferReader,
        link: NatsLink,
        spec: StreamSpec,
        settings: PublishSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hub = hub
        self.link = link
        self.spec = spec
        self.settings = settings
        self.stats = PublisherStats()
        self.host = hub.host
        self.epoch = hub.epoch
        self.token = host_token(hub.host)
        self._clock = clock
        self._subjects: dict[str, str] = {}
        self._inflight: collections.deque[_Unit] = collections.deque()
        self._by_last: dict[int, _Unit] = {}
        self._next = 1  # the next seq to take from the hub
        self._attempt = 0  # replies of older attempts can't fail this one
        self._failure: str | None = None
        self._resend = False
        self._ready = False  # the stream was checked on this connection's server
        self._unchecked = False  # looking in the stream for lost acknowledgements failed
        self._inbox: str | None = None
        self._wake = asyncio.Event()
        self._acked_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._status = ("starting", "")
        hub.on_append(self._wake.set)

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> bool:
        """Connect (up to the link's connect timeout) and check the stream, then publish
        in the background. True when NATS answered; False when it didn't (yet): the
        publisher keeps trying and the events wait in the hub's buffer.

        Raises :class:`~.link.NatsRefused` (credentials, TLS) and
        :class:`~.stream.StreamProblem` (an unusable stream, no JetStream): exit 2."""
        connected = await self.link.wait_connected(self.link.settings.connect_timeout)
        if connected:
            try:
                await self._setup()
            except (nats.errors.Error, APIError, OSError, TimeoutError) as exc:
                # Not a refusal: a slow cluster, or no permission to look at the stream.
                log.warning("NATS: could not check stream %s yet (%s); retrying",
                            self.spec.name, _describe(exc))
        else:
            log.warning(
                "NATS %s not reachable yet (%s); serving anyway, events wait in the buffer",
                self.link.settings.where,
                self.link.stats.last_error or "no answer",
            )
        self._task = asyncio.create_task(self._run(), name="procstream-nats-publisher")
        return connected

    async def close(self, timeout: float = 2.0) -> None:
        """Give what is in flight ``timeout`` seconds to be acknowledged, then stop."""
        deadline = self._clock() + timeout
        while self.link.connected.is_set() and self.stats.acked_seq < self.hub.head_seq and self._failure is None:
            left = deadline - self._clock()
            if left <= 0:
                break
            self._acked_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked_event.wait(), left)
        self._closing = True
        self._wake.set()
        await stop_task(self._task)
        await self.link.close()
        pending = self.hub.head_seq - self.stats.acked_seq
        if pending:
            log.warning("NATS: stopped with %d events not acknowledged (seq %d..%d)",
                        pending, self.stats.acked_seq + 1, self.hub.head_seq)

    # -- what /metrics and /healthz report ---------------------------------------------

    @property
    def pending(self) -> int:
        """Events numbered by the hub and not yet in JetStream."""
        return max(0, self.hub.head_seq - self.stats.acked_seq)

    def metrics(self) -> dict[str, Any]:
        out = self.stats.as_dict()
        out["pending"] = self.pending
        out["in_flight"] = len(self._inflight)
        out["connected"] = self.link.connected.is_set()
        out["reconnects"] = max(0, self.link.stats.connects - 1)
        return out

    def health(self) -> dict[str, Any]:
        status, reason = self._status
        return {
            **self.link.describe(),
            "publishing": status,
            "reason": reason or None,
            "acked_seq": self.stats.acked_seq,
            "pending": self.pending,
            "lost": self.stats.lost,
        }

    def acked_position(self) -> tuple[int, int]:
        """``(seq, stream seq)``: every event up to ``seq`` is in the stream at or
        before ``stream seq``, and every later event of this run after it."""
        return self.stats.acked_seq, self.stats.acked_stream_seq

    async def wait_acked(self, seq: int, timeout: float) -> bool:
        """Wait until every event up to ``seq`` is acknowledged (False on timeout)."""
        deadline = self._clock() + timeout
        while self.stats.acked_seq < seq:
            left = deadline - self._clock()
            if left <= 0:
                return False
            self._acked_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked_event.wait(), left)
        return True

    # -- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = _BACKOFF_MIN
        while not self._closing:
            await self.link.connected.wait()
            acked_before = self.stats.acked_seq
            try:
                if not self._ready:
                    await self._setup()
                await self._reconcile()
                await self._pump()
                return  # closing
            except asyncio.CancelledError:
                raise
            except _Failure as exc:
                reason = str(exc)
            except StreamProblem as exc:
                reason = str(exc)
                self._ready = False
            except (nats.errors.Error, APIError, OSError, TimeoutError) as exc:
                reason = _describe(exc)
            self.stats.failures += 1
            self._attempt += 1
            self._failure = None
            self._resend = True
            self._set_status("retrying", reason)
            if self.stats.acked_seq > acked_before:
                backoff = _BACKOFF_MIN  # it worked for a while: a new problem
            # Woken early when the connection comes back.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconnected(), backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _reconnected(self) -> None:
        if self.link.connected.is_set():
            await asyncio.sleep(_BACKOFF_MAX)  # still connected: just the backoff
        await self.link.connected.wait()

    async def _setup(self) -> None:
        """On the first connection (and after the stream went missing): check or create
        the stream and the state bucket, listen for acknowledgements."""
        js = self.link.nc.jetstream()
        info = await ensure_stream(js, self.spec, self.token)
        if self.stats.acked_stream_seq == 0 and self.stats.acked_seq == 0:
            # Every message of this run comes after what the stream holds now.
            self.stats.acked_stream_seq = info.state.last_seq
        if self.settings.state_interval > 0:
            await ensure_state_bucket(js, self.settings.state_bucket, self.spec.replicas)
        if self._inbox is None:
            inbox = self.link.nc.new_inbox()
            await self.link.nc.subscribe(f"{inbox}.>", cb=self._on_reply)
            self._inbox = inbox
        self._ready = True

    async def _pump(self) -> None:
        """Send and wait for acknowledgements until something fails (raises _Failure)."""
        timeout = self.settings.ack_timeout
        while not self._closing:
            self._wake.clear()
            if not self.link.connected.is_set():
                raise _Failure("disconnected")
            if self._failure is not None:
                raise _Failure(self._failure)
            if self._resend:
                self._resend = False
                await self._send_again()
            await self._fill()
            wait: float | None = None
            if not self._inflight:
                self._set_status("publishing", "")  # caught up
            if self._inflight:
                age = self._clock() - self._inflight[0].sent
                if age >= timeout:
                    raise _Failure(f"no acknowledgement from JetStream within {timeout:g}s")
                wait = timeout - age
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _fill(self) -> None:
        """Send the hub's next events while the in-flight window has room."""
        hub = self.hub
        room = self.settings.max_inflight - len(self._inflight)
        while room > 0 and self._next <= hub.head_seq:
            first, types, datas = hub.read(self._next, room)
            if first > self._next:
                await self._send_new(self._loss_unit(self._next, first - 1), events=False)
                room -= 1
                continue
            subjects = self._subjects
            for i, (typ, data) in enumerate(zip(types, datas)):
                seq = first + i
                subject = subjects.get(typ)
                if subject is None:
                    subject = subjects[typ] = event_subject(self.token, str(typ))
                await self._send_new(_Unit(seq, seq, subject, msg_id(self.host, self.epoch, seq), data), events=True)
            room -= len(datas)
            if not datas:
                break

    def _loss_unit(self, first: int, last: int) -> _Unit:
        count = last - first + 1
        self.stats.lost += count
        self.stats.lost_records += 1
        log.warning(
            "NATS: events %d..%d (%d) left the buffer before they could be published; "
            "publishing a host.lost record in their place", first, last, count,
        )
        return _Unit(first, last, event_subject(self.token, HOST_LOST),
                     lost_msg_id(self.host, self.epoch, first),
                     orjson.dumps(loss_record(self.host, self.epoch, first, last)))

    async def _send_new(self, unit: _Unit, *, events: bool) -> None:
        self._inflight.append(unit)
        self._by_last[unit.last] = unit
        self._next = unit.last + 1
        if events:
            self.stats.published += 1
        await self._send(unit)

    async def _send_again(self) -> None:
        for unit in list(self._inflight):
            if not unit.stream_seq:
                self.stats.retried += 1
                await self._send(unit)

    async def _send(self, unit: _Unit) -> None:
        unit.sent = self._clock()
        await self.link.nc.publish(
            unit.subject,
            unit.data,
            reply=f"{self._inbox}.{self._attempt}.{unit.last}",
            headers={MSG_ID: unit.msg_id},
        )

    # -- acknowledgements --------------------------------------------------------------

    async def _on_reply(self, msg: Msg) -> None:
        attempt_text, _, last_text = msg.subject.rpartition(".")
        attempt_text = attempt_text.rpartition(".")[2]
        unit = self._by_last.get(int(last_text)) if last_text.isdigit() else None
        if unit is None or unit.stream_seq:
            return
        current = attempt_text == str(self._attempt)
        if msg.headers and msg.headers.get("Status") == "503":
            if current:
                self._ready = False  # the stream may be gone: check (or create) it again
                self._fail(f"no stream took procstream.{self.token}.* (503)")
            return
        try:
            reply = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(reply, dict):
            return
        error = reply.get("error")
        if error is not None:
            if isinstance(error, dict) and error.get("err_code") == _ERR_TOO_BIG:
                self._replace_with_loss(unit)
            if current:
                desc = error.get("description") if isinstance(error, dict) else error
                self._fail(f"JetStream refused: {desc}")
            return
        seq = reply.get("seq")
        if isinstance(seq, int) and seq > 0:
            unit.stream_seq = seq
            if reply.get("duplicate"):
                self.stats.duplicates += unit.last - unit.first + 1
            self._advance()

    def _replace_with_loss(self, unit: _Unit) -> None:
        loss = self._loss_unit(unit.first, unit.last)
        unit.subject, unit.msg_id, unit.data = loss.subject, loss.msg_id, loss.data
        self._resend = True

    def _fail(self, why: str) -> None:
        if self._failure is None:
            self._failure = why
            self._wake.set()

    def _advance(self) -> None:
        inflight = self._inflight
        stats = self.stats
        moved = False
        while inflight and inflight[0].stream_seq:
            unit = inflight.popleft()
            del self._by_last[unit.last]
            stats.acknowledged += unit.last - unit.first + 1
            stats.acked_seq = unit.last
            stats.acked_stream_seq = unit.stream_seq
            moved = True
        if moved:
            self._acked_event.set()
            self._wake.set()
            self._set_status("publishing", "")

    async def _reconcile(self) -> None:
        """After a failure: find which unacknowledged events the stream holds after all
        (their acknowledgement was lost), so they aren't stored twice."""
        missing = {u.msg_id: u for u in self._inflight if not u.stream_seq}
        if not missing:
            return
        js = self.link.nc.jetstream()
        subject = host_subjects(self.token)
        seq = self.stats.acked_stream_seq + 1
        # Our own messages, plus room for another run's under the same host name.
        budget = 2 * len(missing) + 64
        found = 0
        while missing and budget > 0:
            budget -= 1
            try:
                m = await js.get_msg(self.spec.name, seq=seq, next=True, subject=subject)
            except NotFoundError:
                break
            except (nats.errors.Error, APIError, TimeoutError) as exc:
                # Not permitted (hosts that may not read the stream) or no answer: send
                # them all again; the duplicate window drops what JetStream has.
                if not self._unchecked:
                    log.warning("NATS: cannot look for unacknowledged events in the stream (%s); "
                                "sending them again", _describe(exc))
                self._unchecked = True
                break
            ident = (m.headers or {}).get(MSG_ID, "")
            if parse_msg_id(ident, self.host, self.epoch) is not None:
                unit = missing.pop(ident, None)
                if unit is not None and m.seq is not None:
                    unit.stream_seq = m.seq
                    found += unit.last - unit.first + 1
            if m.seq is None:
                break
            seq = m.seq + 1
        if found:
            self.stats.recovered += found
            self._advance()

    def _set_status(self, status: str, reason: str) -> None:
        if (status, reason) == self._status:
            return
        previous = self._status[0]
        self._status = (status, reason)
        if status == "retrying":
            log.warning("NATS: publishing stopped (%s); %d events waiting, acknowledged up to seq %d; retrying",
                        reason, self.pending, self.stats.acked_seq)
        elif previous == "retrying":
            log.info("NATS: publishing again from seq %d", self.stats.acked_seq + 1)
        else:
            log.info("NATS: publishing %s events to stream %s as procstream.%s.<type>",
                     self.host, self.spec.name, self.token)
