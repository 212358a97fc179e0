"""The hub: sequence numbers, materialized state, resume buffer, subscribers, back-pressure.

Sans-I/O, like websockets' protocol core: the hub never awaits and never touches a
socket. Each subscriber talks to its connection through a tiny :class:`Transport` (is
the write buffer small? write this frame now; wake the pump; close). The asyncio glue in
:mod:`procstream.stream.fanout` implements it over a websockets connection and runs the
per-connection pump and the housekeeping timer; tests drive the hub with fake transports
and a fake clock.

How delivery works (the design choice that keeps memory bounded):

* ``publish(batch)`` numbers the events, applies them to the state, encodes each event
  once with orjson and appends it to the **resume buffer** (bounded by count and age).
  For each *distinct filter* among the subscribers it joins the selected encoded events
  into one frame (a JSON array); every subscriber with that filter gets the same bytes.
* Fast path: a subscriber that is caught up and whose transport buffer is small gets the
  frame written right away (what ``websockets.broadcast`` does).
* Otherwise the subscriber *lags*: it keeps a cursor (the next seq it needs) into the
  shared resume buffer, and its pump pulls frames from there with
  :meth:`Subscriber.next_frame` as the transport drains. A lagging subscriber thus holds
  no events of its own — its "queue" is a window of the shared buffer — so a stalled
  client costs the server nothing beyond its socket's write buffer.
* The window is bounded: more than ``queue_limit`` events behind (or behind the oldest
  buffered event) means **overflow**: the backlog is dropped (the cursor jumps) and, when
  the transport accepts data again, the subscriber gets ``overflow`` + a fresh snapshot.
  Still not caught up ``overflow_grace`` seconds after the first overflow → close 1013.
* Resume is the same mechanism: ``since=N`` in this epoch and within the buffer sets the
  cursor to N+1; the pump replays, then the subscriber joins the fast path. Nothing is
  lost or doubled because the live fast path only ever serves caught-up subscribers.
"""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson

from .. import __version__
from ..schema import Event, GroupFields, ProcFields
from ..stats import Stats
from . import protocol as P
from .protocol import NO_GROUP, Filter, Subscription
from .state import HostState

__all__ = [
    "Hub",
    "HubStats",
    "State",
    "Transport",
    "Subscriber",
    "SERVER_NAME",
    "RESET_REASONS",
    "SLOW_CONSUMER_CODE",
]

SERVER_NAME: Final = f"procstream/{__version__}"
RESET_REASONS: Final = ("epoch", "expired", "future", "resync")
#: WebSocket close code for a subscriber that doesn't keep up (1013 "try again later").
SLOW_CONSUMER_CODE: Final = 1013

# A replayed frame stops growing at the first batch boundary past this many bytes, so
# replays of a large backlog don't produce frames bigger than clients accept (websockets
# clients default to 1 MiB).
_REPLAY_FRAME_BYTES: Final = 256 * 1024
# Control frames waiting for a subscriber that doesn't read (errors, snapshots): more
# than this and it is a slow consumer.
_OUTBOX_LIMIT: Final = 64
# The fields of every snapshot; a fleet aggregator's have more.
_SNAPSHOT_KEYS: Final = frozenset({"type", "seq", "host", "epoch", "groups", "procs"})
# Per filter, the frames of the latest batches are kept so a subscriber that lags by a
# few polls (a burst filled its buffer) catches up with the very bytes the others got.
_RECENT_FRAMES: Final = 16


class Transport(Protocol):
    """What the hub needs from a subscriber's connection. Every method returns at once."""

    def writable(self) -> bool:
        """True when the connection is open and its write buffer is small enough to take
        another frame now without queueing up."""

    def write(self, frame: bytes) -> bool:
        """Write one text frame (a JSON array, UTF-8) right away; False if the peer is gone."""

    def try_write(self, frame: bytes) -> int:
        """The fast path in one call: write ``frame`` if :meth:`writable`; returns 1 when
        written, 0 when the buffer is full (nothing written), -1 when the peer is gone."""

    def wake(self) -> None:
        """Frames are waiting: start (or keep) calling :meth:`Subscriber.next_frame` and
        writing what it returns, waiting for the transport to drain between frames."""

    def close(self, code: int, reason: str) -> None:
        """Start closing the connection with this close code."""


class State(Protocol):
    """What a snapshot is made of: :class:`~procstream.stream.state.HostState` for one
    host, the fleet's state in a fleet aggregator."""

    def load(self, groups: Mapping[str, GroupFields], procs: Iterable[ProcFields]) -> None:
        """Replace the whole state."""

    def apply(self, ev: Event) -> None:
        """Move the state by one event."""

    def snapshot_view(self, filt: Filter) -> tuple[dict[str, Any], list[Any], dict[str, Any] | None]:
        """``(groups, procs, extra fields or None)`` of a snapshot for this filter."""


@dataclass(slots=True)
class HubStats(Stats):
    """Counters for self-metrics. Totals only grow; ``subscribers`` and ``lagging`` are
    current values."""

    subscribers: int = 0
    lagging: int = 0
    subscribers_total: int = 0
    batches: int = 0
    events_published: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    frames_encoded: int = 0  # frames built by joining encoded events (per filter)
    frames_sent: int = 0
    bytes_sent: int = 0
    snapshots_sent: int = 0
    bookmarks_sent: int = 0
    resumes: int = 0
    replayed_frames: int = 0
    resets: dict[str, int] = field(default_factory=dict)
    overflows: int = 0
    events_dropped: int = 0
    slow_consumer_closes: int = 0
    dead_subscribers: int = 0


class Subscriber:
    """One connection's subscription state, owned by the hub.

    The connection layer calls :meth:`next_frame` from its pump after :meth:`Transport.wake`;
    everything else is the hub's business.
    """

    __slots__ = (
        "id",
        "hub",
        "transport",
        "filter",
        "active",
        "closed",
        "want_snapshot",
        "cursor",
        "replay_end",
        "lagging",
        "outbox",
        "ov_pending",
        "ov_from",
        "ov_dropped",
        "ov_since",
        "last_write",
        "__weakref__",
    )

    def __init__(self, hub: Hub, transport: Transport, sid: int, now: float) -> None:
        self.id = sid
        self.hub = hub
        self.transport = transport
        self.filter = Filter()
        self.active = False  # True once subscribed: receives events
        self.closed = False
        self.want_snapshot = True
        self.cursor = hub.head_seq + 1  # next seq this subscriber needs
        self.replay_end = 0  # head when a resume started: the replay is not "backlog"
        self.lagging = False  # True while the pump, not the fast path, delivers
        self.outbox: collections.deque[bytes] = collections.deque()
        self.ov_pending = False  # overflow happened; overflow+snapshot not yet sent
        self.ov_from = 0
        self.ov_dropped = 0
        self.ov_since: float | None = None  # first overflow of the current streak
        self.last_write = now

    def next_frame(self) -> bytes | None:
        """The next frame to send, or None once caught up (the fast path takes over).

        Call after :meth:`Transport.wake`, writing each frame and waiting for the transport
        to drain before asking for the next.
        """
        return self.hub._pull(self)

    @property
    def backlog(self) -> int:
        """Events (before filtering) between this subscriber and the head."""
        if self.ov_pending:
            return 0
        return max(0, self.hub.head_seq - self.cursor + 1)

    def __repr__(self) -> str:
        return (
            f"<Subscriber {self.id} cursor={self.cursor} lagging={self.lagging} "
            f"overflow={self.ov_pending} closed={self.closed}>"
        )


class _Ring:
    """The resume buffer: encoded events with their type, group, host and publish time.

    Parallel lists with a moving start offset, compacted now and then: O(1) append,
    O(1) indexing by seq, amortized O(1) trimming at the front.
    """

    __slots__ = ("times", "types", "groups", "hosts", "data", "eob", "start")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.types: list[Any] = []
        self.groups: list[Any] = []
        self.hosts: list[Any] = []
        self.data: list[bytes] = []
        self.eob: list[bool] = []  # last event of its batch (replay frames end there)
        self.start = 0

    def __len__(self) -> int:
        return len(self.data) - self.start

    def _lists(self) -> tuple[list[Any], ...]:
        return (self.times, self.types, self.groups, self.hosts, self.data, self.eob)

    def extend(self, now: float, types: list[Any], groups: list[Any], hosts: list[Any], data: list[bytes]) -> None:
        n = len(data)
        self.times.extend([now] * n)
        self.types.extend(types)
        self.groups.extend(groups)
        self.hosts.extend(hosts)
        self.data.extend(data)
        self.eob.extend([False] * (n - 1))
        self.eob.append(True)

    def drop_front(self, n: int) -> None:
        if n <= 0:
            return
        self.start += n
        if self.start >= len(self.data):
            self.clear()
        elif self.start > 4096 and self.start * 2 > len(self.data):
            s = self.start
            for lst in self._lists():
                del lst[:s]
            self.start = 0

    def clear(self) -> None:
        for lst in self._lists():
            lst.clear()
        self.start = 0


class Hub:
    """Numbers events, keeps state and the resume buffer, and fans frames out.

    Create one per server run (``epoch`` is a new random id unless given). The producer
    calls :meth:`load_state` once before the first batch (and again to re-baseline) and
    :meth:`publish` once per poll, on the event loop thread. The connection layer calls
    :meth:`attach`, :meth:`subscribe`, :meth:`send`, :meth:`detach`; a timer calls
    :meth:`tick` every :attr:`tick_interval` seconds.

    A producer whose events come numbered already (the fleet aggregator: its seqs are
    the JetStream stream's) passes its own ``state``, moves it itself, starts the hub
    at its position with :meth:`start_at` and hands batches to :meth:`publish_numbered`.
    ``hosts_filter`` lets subscribers filter by host; ``hello_extra`` adds fields to
    ``hello``; ``future_wait`` seconds is how long a resume from a seq the hub has not
    reached yet waits for it (another replica of the producer may be a little ahead)
    before it becomes a ``reset``.
    """

    def __init__(
        self,
        *,
        host: str,
        interval: float,
        buffer_size: int = 100_000,
        buffer_age: float = 900.0,
        queue_limit: int = 10_000,
        overflow_grace: float = 30.0,
        bookmark_interval: float = 15.0,
        clock: Callable[[], float] = time.time,
        epoch: str | None = None,
        state: State | None = None,
        hosts_filter: bool = False,
        hello_extra: Mapping[str, Any] | None = None,
        future_wait: float = 0.0,
    ) -> None:
        if buffer_size < 1 or queue_limit < 1:
            raise ValueError("buffer_size and queue_limit must be at least 1")
        self.host = host
        self.interval = interval
        self.buffer_size = buffer_size
        self.buffer_age = buffer_age
        # A lag beyond the buffer can't be served from it anyway.
        self.queue_limit = min(queue_limit, buffer_size)
        self.overflow_grace = overflow_grace
        self.bookmark_interval = bookmark_interval
        self._clock = clock
        self.epoch: str = epoch if epoch is not None else secrets.token_hex(8)
        self.stats = HubStats()

        self._head = 0
        self._ring = _Ring()
        self._baseline_seq = -1  # head at the last load_state; no resume across it
        self._state: State = state if state is not None else HostState()
        self.hosts_filter = hosts_filter
        self._hello_extra = dict(hello_extra or {})
        self.future_wait = future_wait
        # Resumes from a seq not reached yet: (subscriber, request, ack, give up at).
        self._waiting: list[tuple[Subscriber, Subscription, bool, float]] = []
        # by (groups, hosts) filter, until the next change
        self._snapshots: dict[tuple[frozenset[str] | None, frozenset[str] | None], bytes] = {}
        # filter -> recent batches as (first seq, next seq, frame or None if nothing matched)
        self._recent: dict[Filter, collections.deque[tuple[int, int, bytes | None]]] = {}

        self._readers: tuple[Callable[[], None], ...] = ()

        self._next_id = 0
        self._subs: set[Subscriber] = set()
        self._by_filter: dict[Filter, set[Subscriber]] = {}
        self._lagging: set[Subscriber] = set()

    # -- read-only views ---------------------------------------------------------------

    @property
    def head_seq(self) -> int:
        """Seq of the latest event (0 before the first)."""
        return self._head

    @property
    def oldest_seq(self) -> int:
        """Seq of the oldest event still in the resume buffer (``head_seq + 1`` if empty)."""
        return self._head - len(self._ring) + 1

    @property
    def subscribers(self) -> list[Subscriber]:
        """Every attached subscriber (a copy)."""
        return list(self._subs)

    @property
    def tick_interval(self) -> float:
        """How often :meth:`tick` should run so bookmarks and grace periods are on time."""
        candidates = [1.0]
        if self.bookmark_interval > 0:
            candidates.append(self.bookmark_interval / 4)
        if self.overflow_grace > 0:
            candidates.append(self.overflow_grace / 4)
        return max(0.01, min(candidates))

    # -- readers of the buffer (the NATS publisher) --------------------------------------

    def on_append(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every batch is appended to the buffer and after a
        re-baseline (which empties it), on the event loop thread. It must return at once
        (set an ``asyncio.Event``); the reader then pulls with :meth:`read`."""
        self._readers = (*self._readers, callback)

    def read(self, from_seq: int, limit: int) -> tuple[int, list[Any], list[bytes]]:
        """Up to ``limit`` buffered events from ``from_seq`` on, each as the hub encoded
        it (one JSON object, the bytes WebSocket frames are joined from): ``(seq of the
        first, their types, their bytes)``. Starts at :attr:`oldest_seq` when ``from_seq``
        is older (the caller sees the gap in the first seq); empty past the head. The
        lists are copies; the bytes are shared and immutable."""
        first = max(from_seq, self.oldest_seq)
        ring = self._ring
        i = ring.start + (first - self.oldest_seq)
        j = min(len(ring.data), i + max(0, limit))
        return first, ring.types[i:j], ring.data[i:j]

    def state_json(self) -> tuple[int, bytes]:
        """``(head seq, the unfiltered snapshot encoded)`` for a reader that is not a
        subscriber (not counted as a snapshot sent)."""
        return self._head, self._snapshot_bytes(Filter(), count=False)

    # -- producer side -----------------------------------------------------------------

    def load_state(self, groups: Mapping[str, GroupFields], procs: Iterable[ProcFields]) -> None:
        """Replace the materialized state (the producer's first poll, or a re-baseline).

        Call before the first :meth:`publish`; calling it again later re-baselines:
        the resume buffer is cleared (earlier points can't be replayed onto the new
        state) and every subscriber gets ``reset`` {"reason": "resync"} + snapshot.
        """
        self._state.load(groups, procs)
        # The first load (before any event) is the baseline itself, not a re-baseline:
        # resumes from seq 0 stay valid.
        self._rebaseline("resync", self._head if self._head > 0 else -1)

    def start_at(self, seq: int) -> None:
        """Before anything is published: the next event is ``seq + 1`` (a producer that
        numbers its events itself and starts in the middle of its sequence). A resume
        from ``seq`` is valid and replays nothing; anything older is ``expired``."""
        if self._head or len(self._ring) or self._subs:
            raise RuntimeError("start_at() is for a hub that has published nothing yet")
        self._head = seq

    def restart(self, epoch: str, seq: int) -> None:
        """The producer's numbering starts over: a new ``epoch`` whose next event is
        ``seq + 1``. The buffer is cleared and every subscriber gets ``reset``
        {"reason": "epoch"} + snapshot (of the state as the producer left it)."""
        self.epoch = epoch
        self._head = seq
        # Points of the old epoch are refused by their epoch; the new one has no past.
        self._rebaseline("epoch", -1)

    def state_changed(self) -> None:
        """The producer changed its state between batches (not through an event): the
        next snapshot is built afresh."""
        self._snapshots.clear()

    def _rebaseline(self, reason: str, baseline: int) -> None:
        self._snapshots.clear()
        self._baseline_seq = baseline
        self._ring.clear()
        self._recent.clear()
        head = self._head
        for sub in list(self._subs):
            if not sub.active:
                continue
            sub.ov_pending = False
            sub.ov_since = None
            sub.cursor = head + 1
            sub.replay_end = 0
            parts = [P.encode(P.reset(reason, seq=head, epoch=self.epoch))]
            if sub.want_snapshot:
                parts.append(self._snapshot_bytes(sub.filter))
            self._count_reset(reason)
            self._push(sub, _join(parts))
        for reader in self._readers:
            reader()

    def publish(self, batch: Sequence[Event]) -> None:
        """Number, record and deliver one poll's events, in order.

        Takes ownership of the dicts: ``seq`` and ``host`` are added in place. Call on
        the event loop thread; it never blocks.
        """
        if not batch:
            return
        host = self.host
        dumps = _dumps
        counts = self.stats.events_by_type
        apply = self._state.apply
        seq = self._head
        first = seq + 1
        types: list[Any] = []
        groups: list[Any] = []
        parts: list[bytes] = []
        for ev in batch:
            seq += 1
            ev["seq"] = seq
            ev["host"] = host
            parts.append(dumps(ev))  # never raises, so numbering and state stay in step
            apply(ev)
            t = ev.get("type")
            types.append(t)
            groups.append(ev.get("group", NO_GROUP))
            counts[t] = counts.get(t, 0) + 1
        self._deliver(first, types, groups, [host] * len(parts), parts)

    def publish_numbered(self, batch: Sequence[Event]) -> None:
        """Record and deliver events that carry their ``seq`` and ``host`` already, in
        order and without a gap from :attr:`head_seq` + 1. The state is the producer's
        to move (before or after this call, on the same turn of the event loop)."""
        if not batch:
            return
        first = self._head + 1
        if batch[0].get("seq") != first or batch[-1].get("seq") != first + len(batch) - 1:
            raise ValueError(f"events must be numbered from {first} without a gap")
        dumps = _dumps
        counts = self.stats.events_by_type
        types: list[Any] = []
        groups: list[Any] = []
        hosts: list[Any] = []
        parts: list[bytes] = []
        for ev in batch:
            parts.append(dumps(ev))
            t = ev.get("type")
            types.append(t)
            groups.append(ev.get("group", NO_GROUP))
            hosts.append(ev.get("host"))
            counts[t] = counts.get(t, 0) + 1
        self._deliver(first, types, groups, hosts, parts)

    def _deliver(self, first: int, types: list[Any], groups: list[Any], hosts: list[Any], parts: list[bytes]) -> None:
        """Append a batch (seqs ``first``...) to the buffer and fan it out."""
        now = self._clock()
        seq = first + len(parts) - 1
        self._head = seq
        self._ring.extend(now, types, groups, hosts, parts)
        self._snapshots.clear()
        stats = self.stats
        stats.batches += 1
        stats.events_published += len(parts)

        next_seq = seq + 1
        dead: list[Subscriber] = []
        # This loop is the hot path (once per subscriber per poll): keep it to one transport
        # call per subscriber and count into locals.
        for filt, subs in self._by_filter.items():
            if filt.everything:
                sel = parts
            elif filt.hosts is None:
                match = filt.matches
                sel = [p for p, t, g in zip(parts, types, groups) if match(t, g)]
            else:
                match = filt.matches
                sel = [p for p, t, g, h in zip(parts, types, groups, hosts) if match(t, g, h)]
            nsel = len(sel)
            recent = self._recent.get(filt)
            if recent is None:
                recent = self._recent[filt] = collections.deque(maxlen=_RECENT_FRAMES)
            if not nsel:
                recent.append((first, next_seq, None))
                for sub in subs:
                    if not sub.lagging:
                        sub.cursor = next_seq
                continue
            frame = b"[" + b",".join(sel) + b"]"
            recent.append((first, next_seq, frame))
            stats.frames_encoded += 1
            written = 0
            for sub in subs:
                if sub.lagging:
                    if sub.ov_pending:
                        sub.ov_dropped += nsel
                    continue
                r = sub.transport.try_write(frame)
                if r > 0:
                    sub.cursor = next_seq
                    sub.last_write = now
                    written += 1
                elif r == 0:
                    # cursor stays at `first`: the pump will pull this batch from the buffer
                    self._set_lagging(sub)
                else:
                    dead.append(sub)
            stats.frames_sent += written
            stats.bytes_sent += written * len(frame)
        for sub in dead:
            self._drop_dead(sub)
        self._trim(now)
        if self._waiting:
            self._resume_waiting(now)
        for reader in self._readers:
            reader()

    # -- connection side ---------------------------------------------------------------

    def attach(self, transport: Transport) -> Subscriber:
        """Register a new connection; it receives nothing until :meth:`subscribe`."""
        self._next_id += 1
        sub = Subscriber(self, transport, self._next_id, self._clock())
        self._subs.add(sub)
        self.stats.subscribers = len(self._subs)
        self.stats.subscribers_total += 1
        return sub

    def detach(self, sub: Subscriber) -> None:
        """Forget a subscriber (its connection closed). Idempotent."""
        if sub.closed:
            return
        sub.closed = True
        sub.active = False
        self._subs.discard(sub)
        self._unlist(sub)
        self._lagging.discard(sub)
        sub.outbox.clear()
        self.stats.subscribers = len(self._subs)
        self.stats.lagging = len(self._lagging)

    def hello(self, filter: Filter | None) -> dict[str, Any]:
        """The ``hello`` object for a new connection (send it first, with :meth:`send`)."""
        obj = P.hello(
            server=SERVER_NAME,
            host=self.host,
            epoch=self.epoch,
            head_seq=self._head,
            oldest_seq=self.oldest_seq,
            interval=self.interval,
            filter=filter,
        )
        if self._hello_extra:
            obj.update(self._hello_extra)
        return obj

    def send(self, sub: Subscriber, *objs: Mapping[str, Any]) -> None:
        """Send control objects to one subscriber, in order with everything else it gets."""
        if objs and not sub.closed:
            self._push(sub, P.frame(*objs))

    def subscribe(self, sub: Subscriber, request: Subscription, *, ack: bool = False) -> None:
        """Start (or replace) a subscription: replay, snapshot, or live only.

        ``ack=True`` (a ``subscribe`` frame, as opposed to the URL) sends ``subscribed``
        first. With ``since``+``epoch`` within the buffer the events after ``since`` are
        replayed; otherwise ``reset`` + snapshot. Without ``since``, a snapshot as of the
        head (unless ``snapshot`` is false) then live events.
        """
        self._subscribe(sub, request, ack, wait=self.future_wait > 0)

    def _subscribe(self, sub: Subscriber, request: Subscription, ack: bool, wait: bool) -> None:
        if sub.closed:
            return
        if self._waiting:
            self._waiting = [w for w in self._waiting if w[0] is not sub]
        if wait and request.since is not None and request.since > self._head and request.epoch == self.epoch:
            # Not there yet: nothing for this subscriber until the hub gets there (or
            # gives up: then it is a reset like any other).
            self._unlist(sub)
            sub.active = False
            self._waiting.append((sub, request, ack, self._clock() + self.future_wait))
            return
        self._unlist(sub)
        sub.filter = request.filter
        sub.want_snapshot = request.snapshot
        sub.active = True
        sub.ov_pending = False
        sub.ov_since = None
        sub.replay_end = 0
        self._by_filter.setdefault(sub.filter, set()).add(sub)
        head = self._head

        parts: list[bytes] = []
        if ack:
            parts.append(P.encode(P.subscribed(sub.filter, head if request.since is None
                                               else min(request.since, head))))
        if request.since is not None:
            reason = self.resume_problem(request.since, request.epoch)
            if reason is None:
                self.stats.resumes += 1
                sub.cursor = request.since + 1
                sub.replay_end = head
                if parts:
                    self._push(sub, _join(parts))
                if sub.cursor <= head:
                    self._set_lagging(sub)
                return
            self._count_reset(reason)
            parts.append(P.encode(P.reset(reason, seq=head, epoch=self.epoch, since=request.since)))
        sub.cursor = head + 1
        if request.snapshot:
            parts.append(self._snapshot_bytes(sub.filter))
        if parts:
            self._push(sub, _join(parts))

    def _resume_waiting(self, now: float) -> None:
        """Resume the subscribers whose ``since`` the hub reached; reset those that
        waited long enough."""
        head = self._head
        ready = [w for w in self._waiting if w[0].closed or w[1].since <= head or now >= w[3]]  # type: ignore[operator]
        if not ready:
            return
        self._waiting = [w for w in self._waiting if w not in ready]
        for sub, request, ack, _deadline in ready:
            self._subscribe(sub, request, ack, wait=False)

    def resume_problem(self, since: int, epoch: str | None) -> str | None:
        """Why ``since``+``epoch`` can't be replayed exactly (a reset reason), or None."""
        if epoch != self.epoch:
            return "epoch"
        if since > self._head:
            return "future"
        if since <= self._baseline_seq:
            return "resync"
        if since < self.oldest_seq - 1:
            return "expired"
        return None

    def snapshot(self, filter: Filter | None = None) -> dict[str, Any]:
        """The state as of :attr:`head_seq` (filtered by groups), as a fresh dict.

        ``{"type": "snapshot", "seq", "host", "epoch", "groups": {name: fields},
        "procs": [fields]}``; the dicts are copies the caller may keep or change.
        """
        obj = self._snapshot_obj(filter or Filter())
        obj["groups"] = {k: dict(v) for k, v in obj["groups"].items()}
        obj["procs"] = [dict(p) for p in obj["procs"]]
        for key in obj.keys() - _SNAPSHOT_KEYS:
            obj[key] = orjson.loads(orjson.dumps(obj[key]))  # a fleet's extra parts, copied
        return obj

    def snapshot_json(self, filter: Filter | None = None) -> bytes:
        """:meth:`snapshot` encoded (cached until the state changes)."""
        return self._snapshot_bytes(filter or Filter())

    def tick(self) -> None:
        """Housekeeping; call every :attr:`tick_interval` seconds.

        Trims the buffer by age, closes subscribers still stuck ``overflow_grace``
        seconds after their first overflow, and sends ``bookmark`` to subscribers that
        heard nothing for ``bookmark_interval`` seconds.
        """
        now = self._clock()
        self._trim(now)
        if self._waiting:
            self._resume_waiting(now)
        grace = self.overflow_grace
        for sub in list(self._lagging):
            if sub.ov_since is not None and now - sub.ov_since >= grace:
                self._close_slow(sub)
        if self.bookmark_interval <= 0:
            return
        due = now - self.bookmark_interval
        frame: bytes | None = None
        dead: list[Subscriber] = []
        for subs in self._by_filter.values():
            for sub in subs:
                if sub.lagging or sub.last_write > due:
                    continue
                transport = sub.transport
                if not transport.writable():
                    continue
                if frame is None:
                    frame = P.frame(P.bookmark(self._head))
                if transport.write(frame):
                    sub.last_write = now
                    self.stats.bookmarks_sent += 1
                    self.stats.frames_sent += 1
                    self.stats.bytes_sent += len(frame)
                else:
                    dead.append(sub)
        for sub in dead:
            self._drop_dead(sub)

    # -- internals ---------------------------------------------------------------------

    def _snapshot_obj(self, filt: Filter) -> dict[str, Any]:
        groups, procs, extra = self._state.snapshot_view(filt)
        obj = P.snapshot(seq=self._head, host=self.host, epoch=self.epoch, groups=groups, procs=procs)
        if extra:
            obj.update(extra)
        return obj

    def _snapshot_bytes(self, filt: Filter, *, count: bool = True) -> bytes:
        # Cached per groups (and hosts) filter until the next change: a thousand
        # clients (re)connecting within one interval cost one encoding.
        key = (filt.groups, filt.hosts)
        data = self._snapshots.get(key)
        if data is None:
            data = _dumps(self._snapshot_obj(filt))
            self._snapshots[key] = data
        if count:
            self.stats.snapshots_sent += 1
        return data

    def _push(self, sub: Subscriber, frame: bytes) -> None:
        if not sub.lagging and sub.transport.writable():
            if sub.transport.write(frame):
                sub.last_write = self._clock()
                self.stats.frames_sent += 1
                self.stats.bytes_sent += len(frame)
            else:
                self._drop_dead(sub)
            return
        if len(sub.outbox) >= _OUTBOX_LIMIT:
            self._close_slow(sub)
            return
        sub.outbox.append(frame)
        self._set_lagging(sub)

    def _set_lagging(self, sub: Subscriber) -> None:
        if not sub.lagging:
            sub.lagging = True
            self._lagging.add(sub)
            self.stats.lagging = len(self._lagging)
            sub.transport.wake()

    def _pull(self, sub: Subscriber) -> bytes | None:
        """Implementation of :meth:`Subscriber.next_frame`."""
        if sub.closed:
            return None
        stats = self.stats
        if sub.outbox:
            frame = sub.outbox.popleft()
        elif not sub.active:
            frame = None  # not subscribed (yet): control frames only
        elif sub.ov_pending:
            head = self._head
            sub.ov_pending = False
            parts = [P.encode(P.overflow(sub.ov_dropped, sub.ov_from, head))]
            if sub.want_snapshot:
                parts.append(self._snapshot_bytes(sub.filter))
            frame = _join(parts)
            sub.cursor = head + 1
        else:
            frame = None
            head = self._head
            while frame is None and sub.cursor <= head:
                if sub.cursor < self.oldest_seq:
                    # Fell out of the buffer (a re-baseline or age trim got there first).
                    self._overflow(sub, self._clock())
                    return self._pull(sub)
                frame, sub.cursor = self._collect(sub.filter, sub.cursor)
            if frame is not None:
                stats.replayed_frames += 1
        if frame is None:
            # Caught up: from now on the fast path delivers.
            sub.lagging = False
            sub.ov_since = None
            sub.replay_end = 0
            self._lagging.discard(sub)
            stats.lagging = len(self._lagging)
            return None
        sub.last_write = self._clock()
        stats.frames_sent += 1
        stats.bytes_sent += len(frame)
        return frame

    def _collect(self, filt: Filter, from_seq: int) -> tuple[bytes | None, int]:
        """Frame of the buffered events from ``from_seq`` that pass ``filt``, ending at a
        batch boundary once the frame is big enough; returns (frame or None, next seq)."""
        recent = self._recent.get(filt)
        if recent and recent[0][0] <= from_seq:
            # A short lag: reuse the frame built at publish time for this batch.
            for first, nxt, frame in recent:
                if first == from_seq:
                    return frame, nxt
        ring = self._ring
        i = i0 = ring.start + (from_seq - self.oldest_seq)
        end = len(ring.data)
        data, eob = ring.data, ring.eob
        everything = filt.everything
        match = filt.matches
        types, groups, hosts = ring.types, ring.groups, ring.hosts
        sel: list[bytes] = []
        size = 0
        while i < end:
            if everything or match(types[i], groups[i], hosts[i]):
                d = data[i]
                sel.append(d)
                size += len(d)
            i += 1
            if eob[i - 1] and size >= _REPLAY_FRAME_BYTES:
                break
        next_seq = from_seq + (i - i0)
        if not sel:
            return None, next_seq
        return b"[" + b",".join(sel) + b"]", next_seq

    def _count_matching(self, filt: Filter, from_seq: int) -> int:
        """Events from ``from_seq`` to the head that pass ``filt``; events no longer in
        the buffer count as passing (their type and group are gone)."""
        oldest = self.oldest_seq
        n = max(0, oldest - from_seq)
        ring = self._ring
        start = ring.start + max(0, from_seq - oldest)
        if filt.everything:
            return n + len(ring.data) - start
        match = filt.matches
        types, groups, hosts = ring.types, ring.groups, ring.hosts
        return n + sum(1 for i in range(start, len(ring.data)) if match(types[i], groups[i], hosts[i]))

    def _overflow(self, sub: Subscriber, now: float) -> None:
        if sub.ov_since is not None and now - sub.ov_since >= self.overflow_grace:
            self._close_slow(sub)
            return
        if sub.ov_since is None:
            sub.ov_since = now
        dropped = self._count_matching(sub.filter, sub.cursor)
        sub.ov_pending = True
        sub.ov_from = sub.cursor
        sub.ov_dropped = dropped
        sub.replay_end = 0
        self.stats.overflows += 1
        self.stats.events_dropped += dropped
        self._set_lagging(sub)

    def _trim(self, now: float) -> None:
        """Apply the buffer's count and age bounds, and the subscribers' lag bound."""
        ring = self._ring
        oldest = self.oldest_seq
        new_oldest = oldest + max(0, len(ring) - self.buffer_size)
        if self.buffer_age > 0 and len(ring):
            limit = now - self.buffer_age
            times = ring.times
            i = ring.start + (new_oldest - oldest)
            end = len(times)
            while i < end and times[i] < limit:
                i += 1
            new_oldest = oldest + (i - ring.start)
        if self._lagging:
            head = self._head
            qlimit = self.queue_limit
            for sub in list(self._lagging):
                if sub.ov_pending or sub.closed or not sub.active:
                    continue
                behind = head - max(sub.cursor - 1, sub.replay_end)
                if behind > qlimit or sub.cursor < new_oldest:
                    self._overflow(sub, now)
        ring.drop_front(new_oldest - oldest)

    def _close_slow(self, sub: Subscriber) -> None:
        self.stats.slow_consumer_closes += 1
        self.detach(sub)
        sub.transport.close(SLOW_CONSUMER_CODE, "slow consumer")

    def _drop_dead(self, sub: Subscriber) -> None:
        self.stats.dead_subscribers += 1
        self.detach(sub)

    def _unlist(self, sub: Subscriber) -> None:
        subs = self._by_filter.get(sub.filter)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_filter[sub.filter]
                self._recent.pop(sub.filter, None)

    def _count_reset(self, reason: str) -> None:
        self.stats.resets[reason] = self.stats.resets.get(reason, 0) + 1


def _dumps(obj: Any) -> bytes:
    """orjson, falling back to ``str()`` for values JSON can't hold (a set, a Path…):
    one odd value from a producer must not break the stream.

    The result is an exact-size copy: orjson hands back bytes with spare capacity, a
    multiple of a small event's size, and the resume buffer keeps ``buffer_size`` of them.
    """
    try:
        data = orjson.dumps(obj)
    except TypeError:
        data = orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)
    return memoryview(data).tobytes()


def _join(parts: list[bytes]) -> bytes:
    return b"[" + b",".join(parts) + b"]"
