"""The hub: sequence numbers, materialized state, resume buffer, subscribers, back-pressure.

Sans-I/O, like websockets' protocol core: the hub never awaits and never touches a
socket. Each subscriber talks to its connection through a tiny :class:`Transport` (is
the write buffer small? write this frame now; how much is buffered? wake the pump;
close). The server's connections (``procstream.serve.connections``) implement it, each
its own pump (pulling frames as its write buffer drains); :mod:`procstream.stream.fanout`
runs the housekeeping timer; tests drive the hub with fake transports and a fake clock.

How delivery works (the design choice that keeps memory bounded):

* ``publish(batch)`` numbers the events, applies them to the state, encodes each event
  once and appends it to the **resume buffer** (bounded by count, age and bytes). For
  each *distinct filter* among the subscribers it joins the selected encoded events into
  one frame (a JSON array; several when one would pass :data:`MAX_FRAME_BYTES`); every
  subscriber with that filter gets the same bytes.
* Fast path: a subscriber that is caught up and whose transport buffer is small gets the
  frame written right away (what ``websockets.broadcast`` does). At most
  :data:`SUBSCRIBERS_PER_TURN` of them in one call when the connection layer can call back
  (:meth:`Hub.on_deferred`) and the loop has room for it (:data:`TURN_ROOM`): the others
  are held at the batch and written by :meth:`Hub.next_turn` in the next turns, so that
  another client's request waits for one share, not the whole fan-out. Anything sent to
  a held subscriber in between (an ack, an error) first writes its batch, and the next
  publish first writes every held one: each gets everything in order. A tick's checks of
  every subscriber (stalled, output held, bookmark due) go the same way, a share per turn.
* Otherwise the subscriber *lags*: it keeps a cursor (the next seq it needs) into the
  shared resume buffer, and its pump pulls frames from there with
  :meth:`Subscriber.next_frame` as the transport drains. A lagging subscriber thus holds
  no events of its own — its "queue" is a window of the shared buffer.
* What a subscriber does hold is small and bounded in bytes: control frames waiting for
  it (``hello``, ``error``, ``subscribed``: :data:`OUTBOX_BYTES`), and the snapshot it is
  being sent. A snapshot is never queued: a subscription (or a reset, an overflow) only
  marks one as due, and it is built when the pump gets to it, as of the head then, in
  parts of at most :data:`SNAPSHOT_PART_BYTES` shared by every subscriber that gets the
  same one. A new subscription replaces whatever the previous one had not sent yet, so
  a client that sends ``subscribe`` without reading costs one pending snapshot, not one
  per frame.
* A subscriber whose output has not moved for ``drain_grace`` seconds while it had
  something to send is closed with 1013 — also on a quiet host, where no backlog ever
  grows. "Moved" is the pump taking a frame, or the peer acknowledging bytes: a client
  that stopped reading may have everything sent to it in the kernel's send buffer
  (megabytes on loopback), owing us nothing in our own. The window is bounded too: more than ``queue_limit`` events behind (or behind
  the oldest buffered event) means **overflow**: the backlog is dropped (the cursor
  jumps) and, when the transport accepts data again, the subscriber gets ``overflow`` +
  a fresh snapshot. Still not caught up ``overflow_grace`` seconds after the first
  overflow → close 1013.
* All subscribers' pending output together (control frames, snapshot parts being sent,
  what their transports buffer) is bounded by ``output_bytes``: past it, the subscribers
  holding the most are closed with 1013. The caches share ``cache_bytes``: half for the
  per-filter recent frames (a filter's go with its last subscriber), a quarter for
  encoded snapshots, a quarter for each process's encoded snapshot entry (kept while
  the process and its numbers stay the same, so that a snapshot after a poll encodes
  only the processes that ran).
* Resume is the same mechanism: ``since=N`` in this epoch and within the buffer sets the
  cursor to N+1; the pump replays, then the subscriber joins the fast path. Nothing is
  lost or doubled because the live fast path only ever serves caught-up subscribers.

Per-process numbers: a snapshot's processes carry the live numbers of the latest poll
(:meth:`Hub.set_live`). ``proc.update`` events are readings, not history: they exist
only while some subscriber names that type (the hub tells whoever listens which
processes its subscribers select, :meth:`Hub.watch_interest`, so the producer builds
those and nothing else), and they take no ``seq`` and no room in the resume buffer. So a
subscriber that doesn't ask for them sees the same gap-free sequence as if nobody did,
and keeps the same resume window. They go out with their poll's events on the fast path
only; a subscriber that lags gets them only from the recent frames it catches up from
(the next snapshot carries the numbers anyway).

A producer whose events come numbered already (a fleet aggregator: its seqs are a
JetStream stream's) keeps its own :class:`State`, starts the hub at its position and
hands it numbered batches; everything above holds for it unchanged.
"""

from __future__ import annotations

import collections
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson

from .. import __version__
from ..schema import LIVE_FIELDS, PROC_UPDATE, Event, GroupFields, ProcFields
from ..stats import Stats
from . import protocol as P
from .protocol import NO_GROUP, Filter, Subscription, update_key
from .state import HostState

__all__ = [
    "Hub",
    "HubStats",
    "State",
    "Transport",
    "LiveNumbers",
    "Interest",
    "Subscriber",
    "SERVER_NAME",
    "RESET_REASONS",
    "SLOW_CONSUMER_CODE",
    "MAX_FRAME_BYTES",
    "MAX_EVENT_BYTES",
    "SNAPSHOT_PART_BYTES",
    "OUTBOX_BYTES",
    "SUBSCRIBERS_PER_TURN",
]

log = logging.getLogger(__name__)

SERVER_NAME: Final = f"procstream/{__version__}"
RESET_REASONS: Final = ("epoch", "expired", "future", "resync")
#: WebSocket close code for a subscriber that doesn't keep up (1013 "try again later").
SLOW_CONSUMER_CODE: Final = 1013

#: No frame the hub builds is larger (websockets clients accept 1 MiB by default).
MAX_FRAME_BYTES: Final = 768 * 1024
#: An encoded event larger than this (a producer that did not bound its strings) is cut
#: down before it is numbered; the event builder's caps keep its events far below.
MAX_EVENT_BYTES: Final = 128 * 1024
#: A snapshot larger than this is sent in parts of about this size.
SNAPSHOT_PART_BYTES: Final = 512 * 1024
#: Control frames waiting for one subscriber that doesn't read; more is a slow consumer.
OUTBOX_BYTES: Final = 64 * 1024

#: Subscribers a publish writes to, or a tick checks, in one turn of the event loop
#: when the connection layer can run the rest in later turns (:meth:`Hub.on_deferred`):
#: a thousand subscribers then hold the loop up a few at a time, not all at once, and
#: another client's request waits for one share, not the whole.
SUBSCRIBERS_PER_TURN: Final = 64

#: A publish goes out in turns only while the loop has room for them: when the time
#: since the last publish is at least this many times what writing that one took.
#: Otherwise the loop does little but fan out anyway, and writing to everyone at once
#: delivers soonest (the later turns would only come with the next publish).
TURN_ROOM: Final = 4

# A replayed frame stops growing at the first batch boundary past this many bytes.
_REPLAY_FRAME_BYTES: Final = 256 * 1024
# Per filter, the frames of the latest batches are kept so a subscriber that lags by a
# few polls (a burst filled its buffer) catches up with the very bytes the others got.
_RECENT_FRAMES: Final = 16
# What one buffered event costs beyond its encoding: the bytes object's header and its
# slots in the ring's parallel lists.
_EVENT_OVERHEAD: Final = 112


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

    def buffered(self) -> int:
        """Bytes written but not yet sent (the connection's write buffer)."""

    def unacked(self) -> int:
        """Bytes handed to the kernel that the peer has not acknowledged yet (0 when
        unknown)."""

    def acked(self) -> int:
        """Bytes the peer has acknowledged so far (0 when unknown): grows while it reads."""

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


class LiveNumbers(Protocol):
    """The latest poll's per-process numbers (``procstream.live.LiveTable``)."""

    def fields(self, pid: int, start_time: float | None = None) -> Mapping[str, Any] | None:
        """The numbers of process ``pid`` started at ``start_time``; None if unknown."""

    def version(self, pid: int) -> object:
        """An object that is the same (``is``) in two tables exactly when :meth:`fields`
        of ``pid`` gives the same numbers in both (one of its own when that depends on
        the table)."""


#: Which processes' ``proc.update`` the subscribers select: ``(groups, pids)`` with
#: ``(None, None)`` meaning every process; None: no subscriber names ``proc.update``.
Interest = tuple[frozenset[str] | None, frozenset[int] | None] | None

# A process the latest poll hasn't read yet (started since, seen by kernel events).
_UNKNOWN_LIVE: Final[dict[str, None]] = dict.fromkeys(LIVE_FIELDS)


@dataclass(slots=True)
class HubStats(Stats):
    """Counters for self-metrics. Totals only grow; ``subscribers``, ``lagging`` and the
    ``*_bytes``/``buffer_events`` gauges are current values (the gauges as of the last
    :meth:`Hub.tick`)."""

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
    #: every close with 1013; the next three say why some were closed
    slow_consumer_closes: int = 0
    stalled_closes: int = 0  # no progress for drain_grace seconds
    outbox_closes: int = 0  # control frames past OUTBOX_BYTES
    budget_closes: int = 0  # all subscribers' output past output_bytes
    dead_subscribers: int = 0
    #: events cut down to MAX_EVENT_BYTES, encoded through the fallback, or not
    #: published (or applied to the state) because of an error
    events_shrunk: int = 0
    encode_fallbacks: int = 0
    publish_errors: int = 0
    buffer_events: int = 0
    buffer_bytes: int = 0
    output_bytes: int = 0
    cache_bytes: int = 0


class Subscriber:
    """One connection's subscription state, owned by the hub.

    The connection calls :meth:`next_frame` (its pump) after :meth:`Transport.wake`;
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
        "outbox_bytes",
        "restart",
        "reset_reason",
        "reset_since",
        "ov_from",
        "ov_dropped",
        "ov_since",
        "parts",
        "last_write",
        "progress_at",
        "acked",
        "held",
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
        self.outbox: collections.deque[bytes] | None = None  # made when first needed
        self.outbox_bytes = 0
        #: due before any further event: "snapshot", "reset" or "overflow" (each with a
        #: snapshot after it when want_snapshot), built when the pump gets to it
        self.restart: str | None = None
        self.reset_reason = ""
        self.reset_since: int | None = None
        self.ov_from = 0
        self.ov_dropped = 0
        self.ov_since: float | None = None  # first overflow of the current streak
        self.parts: collections.deque[bytes] | None = None  # snapshot frames still to send
        self.last_write = now
        self.progress_at = now  # when its output last moved (or began to be owed)
        self.acked = 0  # what its peer had acknowledged at the last tick
        #: (filter, frame, first seq, next seq) of the batch a publish left this subscriber
        #: at, for a later turn to write (:meth:`Hub.next_turn`)
        self.held: tuple[Filter, bytes, int, int] | None = None

    def next_frame(self) -> bytes | None:
        """The next frame to send, or None once caught up (the fast path takes over).

        Call after :meth:`Transport.wake`, writing each frame and waiting for the transport
        to drain before asking for the next.
        """
        return self.hub._pull(self)

    @property
    def ov_pending(self) -> bool:
        """An overflow happened; ``overflow`` (+ snapshot) not sent yet."""
        return self.restart == "overflow"

    @property
    def backlog(self) -> int:
        """Events (before filtering) between this subscriber and the head."""
        if self.restart is not None:
            return 0
        return max(0, self.hub.head_seq - self.cursor + 1)

    def __repr__(self) -> str:
        return (
            f"<Subscriber {self.id} cursor={self.cursor} lagging={self.lagging} "
            f"restart={self.restart} closed={self.closed}>"
        )


class _Ring:
    """The resume buffer: encoded events with their type, group, host and publish time.

    Parallel lists with a moving start offset, compacted now and then: O(1) append,
    O(1) indexing by seq, amortized O(1) trimming at the front. ``nbytes`` is what the
    held events cost (their encodings plus :data:`_EVENT_OVERHEAD` each).
    """

    __slots__ = ("times", "types", "groups", "hosts", "data", "eob", "start", "nbytes")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.types: list[Any] = []
        self.groups: list[Any] = []
        self.hosts: list[Any] = []
        self.data: list[bytes] = []
        self.eob: list[bool] = []  # last event of its batch (replay frames end there)
        self.start = 0
        self.nbytes = 0

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
        self.nbytes += sum(map(len, data)) + n * _EVENT_OVERHEAD

    def drop_front(self, n: int) -> None:
        if n <= 0:
            return
        s = self.start
        self.nbytes -= sum(map(len, self.data[s : s + n])) + n * _EVENT_OVERHEAD
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
        self.nbytes = 0


# (groups filter, hosts filter, whole: one object for HTTP rather than parts)
_SnapshotKey = tuple[frozenset[str] | None, frozenset[str] | None, bool]


@dataclass(slots=True)
class _Snapshot:
    """One encoded snapshot: the first part as an object (a reset or overflow may go
    before it in its frame), the later parts as ready frames."""

    seq: int
    first: bytes
    rest: tuple[bytes, ...]
    nbytes: int


@dataclass(slots=True)
class _Sweep:
    """One pass over the subscribers: a tick's (a share per turn of the loop), or
    :meth:`Hub.shed`'s (at once). ``held``: (output for ranking, output of its own,
    the snapshot parts it was sending, subscriber); ``shared``: snapshot parts by id,
    as [size, senders], each counted once in ``total`` and given back when its last
    sender goes."""

    now: float
    todo: list[Subscriber]
    bookmark_before: float | None = None  # a bookmark to who heard nothing since
    bookmark: bytes = b""
    bookmark_seq: int = -1
    held: list[tuple[int, int, tuple[bytes, ...], Subscriber]] = field(default_factory=list)
    shared: dict[int, list[int]] = field(default_factory=dict)
    total: int = 0


class Hub:
    """Numbers events, keeps state and the resume buffer, and fans frames out.

    Create one per server run (``epoch`` is a new random id unless given). The producer
    calls :meth:`load_state` once before the first batch (and again to re-baseline) and
    :meth:`publish` once per poll, on the event loop thread. The connection layer calls
    :meth:`attach`, :meth:`subscribe`, :meth:`send`, :meth:`detach`; a timer calls
    :meth:`tick` every :attr:`tick_interval` seconds.

    Bounds: the resume buffer keeps at most ``buffer_size`` events, ``buffer_bytes``
    bytes and ``buffer_age`` seconds; subscribers' pending output at most
    ``output_bytes``; per-filter caches at most ``cache_bytes``. ``drain_grace``
    (default: ``overflow_grace``) is how long a subscriber may hold undelivered output
    without its transport taking any.

    A producer whose events come numbered already (the fleet aggregator) passes its own
    ``state``, moves it itself, starts the hub at its position with :meth:`start_at` and
    hands batches to :meth:`publish_numbered`. ``hosts_filter`` lets subscribers filter
    by host; ``hello_extra`` adds fields to ``hello``; ``future_wait`` seconds is how
    long a resume from a seq the hub has not reached yet waits for it (another replica
    of the producer may be a little ahead) before it becomes a ``reset``.
    """

    def __init__(
        self,
        *,
        host: str,
        interval: float,
        buffer_size: int = 100_000,
        buffer_age: float = 900.0,
        buffer_bytes: int = 64 * 1024 * 1024,
        queue_limit: int = 10_000,
        overflow_grace: float = 30.0,
        drain_grace: float | None = None,
        output_bytes: int = 64 * 1024 * 1024,
        cache_bytes: int = 32 * 1024 * 1024,
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
        if min(buffer_bytes, output_bytes, cache_bytes) < 1:
            raise ValueError("buffer_bytes, output_bytes and cache_bytes must be at least 1")
        self.host = host
        self.interval = interval
        self.buffer_size = buffer_size
        self.buffer_age = buffer_age
        self.buffer_bytes = buffer_bytes
        # A lag beyond the buffer can't be served from it anyway.
        self.queue_limit = min(queue_limit, buffer_size)
        self.overflow_grace = overflow_grace
        self.drain_grace = overflow_grace if drain_grace is None else drain_grace
        self.output_bytes = output_bytes
        self.cache_bytes = cache_bytes
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
        # Encoded snapshots by groups and hosts filter ("whole" ones for HTTP apart),
        # valid until the next publish; a quarter of cache_bytes.
        self._snapshots: dict[_SnapshotKey, _Snapshot] = {}
        self._snapshot_bytes_held = 0
        # Each process's snapshot entry as encoded last, by id of its state dict:
        # (that dict, the live numbers' version then, the bytes). State dicts of
        # processes are never changed, only replaced, and the entry holds its dict, so
        # an id can't be reused while cached; an idle process's numbers keep their
        # version, so the next snapshot reuses its bytes. Within a quarter of cache_bytes.
        self._proc_bytes: dict[int, tuple[Any, object, bytes]] = {}
        self._proc_bytes_held = 0
        # filter -> recent batches as (first seq, next seq, frame or None if nothing
        # matched); half of cache_bytes, shared by the filters.
        self._recent: dict[Filter, collections.deque[tuple[int, int, bytes | None]]] = {}
        self._recent_size: dict[Filter, int] = {}
        self._recent_bytes = 0
        self._failures_logged: set[str] = set()

        self._readers: tuple[Callable[[], None], ...] = ()

        self._next_id = 0
        self._subs: set[Subscriber] = set()
        self._by_filter: dict[Filter, set[Subscriber]] = {}
        self._lagging: set[Subscriber] = set()
        self._live: LiveNumbers | None = None
        # Fast-path writes left for later turns (each subscriber's ``held`` says which
        # frame), and how to ask for a turn.
        self._deferred: collections.deque[list[Subscriber]] = collections.deque()
        self._defer: Callable[[], None] | None = None
        self._last_publish = -math.inf  # when the last fan-out began, and what it took
        self._fanout_cost = 0.0
        self._sweep: _Sweep | None = None  # a tick's checks still to finish
        self._turn_asked = False
        self._interest: Interest = None
        self._interest_listeners: list[Callable[[Interest], None]] = []

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
        for grace in (self.overflow_grace, self.drain_grace):
            if grace > 0:
                candidates.append(grace / 4)
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
        subscriber (not counted as a snapshot sent), without the per-process numbers:
        they are readings, not state, and are stale by the time another reads them."""
        obj, procs = self._snapshot_view(Filter())
        obj["procs"] = procs
        return self._head, P.encode(obj)

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
        self._forget_snapshots()

    def _rebaseline(self, reason: str, baseline: int) -> None:
        self._forget_snapshots()
        self._baseline_seq = baseline
        self._ring.clear()
        self._recent.clear()
        self._recent_size.clear()
        self._recent_bytes = 0
        head = self._head
        for sub in list(self._subs):
            if not sub.active:
                continue
            sub.ov_since = None
            sub.cursor = head + 1
            sub.replay_end = 0
            self._count_reset(reason)
            if sub.want_snapshot:
                self._set_restart(sub, "reset", reason, None)
            else:
                sub.restart = None
                sub.parts = None
                self._push(sub, P.frame(P.reset(reason, seq=head, epoch=self.epoch)))
        for reader in self._readers:
            reader()

    def publish(self, batch: Sequence[Event]) -> None:
        """Number, record and deliver one poll's events, in order.

        Takes ownership of the dicts: ``seq`` and ``host`` are added in place. Call on
        the event loop thread; it never blocks, and it never raises because of what an
        event holds: an event it can't number is left out (and counted), one it can't
        apply to the state is still sent.
        """
        if not batch:
            return
        now = self._clock()
        host = self.host
        stats = self.stats
        counts = stats.events_by_type
        apply = self._state.apply
        seq = self._head
        first = seq + 1
        types: list[Any] = []
        groups: list[Any] = []
        parts: list[bytes] = []
        cursors: list[int] = []  # the seq of each part, or the next one for a proc.update
        updates = 0
        for ev in batch:
            try:
                t = ev.get("type")
                reading = t == PROC_UPDATE
                if not reading:
                    ev["seq"] = seq + 1
                ev["host"] = host
                g = update_key(ev.get("group"), ev.get("pid")) if reading else ev.get("group", NO_GROUP)
            except Exception:  # not a mutable mapping: nothing to number
                self._failed("numbering an event")
                continue
            if not reading:
                seq += 1
            data = _encode(ev, stats)
            # The filters and counters key on them: hashable strings, whatever came.
            if type(t) is not str:
                t = str(t)
            if reading:
                # a reading, not history: no seq, no state, no room in the resume buffer
                updates += 1
                types.append(t)
                groups.append(g)
                parts.append(data)
                cursors.append(seq + 1)
                counts[t] = counts.get(t, 0) + 1
                continue
            if g is not NO_GROUP and type(g) is not str:
                g = str(g)
            cursors.append(seq)
            try:
                apply(ev)
            except Exception:
                self._failed(f"applying a {t} event to the state")
            types.append(t)
            groups.append(g)
            parts.append(data)
            counts[t] = counts.get(t, 0) + 1
        if not parts:
            return
        self._deliver(now, first, seq, types, groups, None, parts, cursors, updates)

    def publish_numbered(self, batch: Sequence[Event]) -> None:
        """Record and deliver events that carry their ``seq`` and ``host`` already, in
        order and without a gap from :attr:`head_seq` + 1. The state is the producer's
        to move (before or after this call, on the same turn of the event loop)."""
        if not batch:
            return
        first = self._head + 1
        if batch[0].get("seq") != first or batch[-1].get("seq") != first + len(batch) - 1:
            raise ValueError(f"events must be numbered from {first} without a gap")
        stats = self.stats
        counts = stats.events_by_type
        types: list[Any] = []
        groups: list[Any] = []
        hosts: list[Any] = []
        parts: list[bytes] = []
        for ev in batch:
            parts.append(_encode(ev, stats))
            t = ev.get("type")
            if type(t) is not str:
                t = str(t)
            g = ev.get("group", NO_GROUP)
            if g is not NO_GROUP and type(g) is not str:
                g = str(g)
            types.append(t)
            groups.append(g)
            hosts.append(ev.get("host"))
            counts[t] = counts.get(t, 0) + 1
        last = first + len(parts) - 1
        self._deliver(self._clock(), first, last, types, groups, hosts, parts, list(range(first, last + 1)), 0)

    def _deliver(
        self,
        now: float,
        first: int,
        seq: int,
        types: list[Any],
        groups: list[Any],
        hosts: list[Any] | None,
        parts: list[bytes],
        cursors: list[int],
        updates: int,
    ) -> None:
        """Append a batch (seqs ``first`` to ``seq``, and ``updates`` of its parts
        ``proc.update`` readings without one) to the buffer and fan it out. ``hosts``:
        each part's host, or None when they are all :attr:`host`'s."""
        stats = self.stats
        if self._deferred:
            # The last batch's turns did not come yet: its writes first, all of them,
            # so that its subscribers take this one on the fast path too.
            self._write_deferred(None)
        self._head = seq
        ring_hosts = hosts if hosts is not None else [self.host] * len(parts)
        if not updates:
            self._ring.extend(now, types, groups, ring_hosts, parts)
        elif seq >= first:
            kept = [i for i, t in enumerate(types) if t != PROC_UPDATE]
            self._ring.extend(now, [types[i] for i in kept], [groups[i] for i in kept],
                              [ring_hosts[i] for i in kept], [parts[i] for i in kept])
        self._forget_snapshots()
        stats.batches += 1
        stats.events_published += len(parts) - updates

        next_seq = seq + 1
        # Only numbered events can be pulled from the buffer later (a batch of nothing
        # but readings has no place in it: past a full transport, they are just dropped).
        numbered = seq >= first
        dead: list[Subscriber] = []
        # Direct writes left this turn (only numbered batches can wait: their subscribers
        # are held at the batch like lagging ones).
        split = (numbered and self._defer is not None
                 and now - self._last_publish >= TURN_ROOM * self._fanout_cost)
        turn = SUBSCRIBERS_PER_TURN if split else -1
        self._last_publish = now
        clock = self._clock
        began = clock()
        # This loop is the hot path (once per subscriber per poll): keep it to one transport
        # call per subscriber and count into locals.
        for filt, subs in self._by_filter.items():
            if filt.everything and not updates:
                sel = parts
            elif filt.hosts is None or hosts is None:
                match = filt.matches
                host = self.host if filt.hosts is not None else None
                sel = [p for p, t, g in zip(parts, types, groups) if match(t, g, host)]
            else:
                match = filt.matches
                sel = [p for p, t, g, h in zip(parts, types, groups, hosts) if match(t, g, h)]
            nsel = len(sel)
            if not nsel:
                if numbered:
                    self._remember(filt, first, next_seq, None)
                for sub in subs:
                    if not sub.lagging:
                        sub.cursor = next_seq
                continue
            frame = b"[" + b",".join(sel) + b"]"
            if len(frame) > MAX_FRAME_BYTES:
                self._deliver_split(filt, subs, parts, types, groups, ring_hosts, cursors, next_seq, numbered, now, dead)
                continue
            if numbered:
                self._remember(filt, first, next_seq, frame)
            stats.frames_encoded += 1
            written = 0
            later: list[Subscriber] = []
            for sub in subs:
                if sub.lagging:
                    if sub.restart == "overflow":
                        sub.ov_dropped += nsel
                    continue
                if not turn:
                    later.append(sub)
                    continue
                turn -= 1
                r = sub.transport.try_write(frame)
                if r > 0:
                    sub.cursor = next_seq
                    sub.last_write = now
                    written += 1
                elif r == 0:
                    # cursor stays at `first`: the pump will pull this batch from the buffer
                    if numbered:
                        self._set_lagging(sub)
                else:
                    dead.append(sub)
            stats.frames_sent += written
            stats.bytes_sent += written * len(frame)
            if later:
                self._hold(filt, frame, first, next_seq, later, now)
        self._fanout_cost = clock() - began
        for sub in dead:
            self._drop_dead(sub)
        self._trim(now)
        if self._waiting:
            self._resume_waiting(now)
        for reader in self._readers:
            reader()

    def _deliver_split(
        self,
        filt: Filter,
        subs: set[Subscriber],
        parts: list[bytes],
        types: list[Any],
        groups: list[Any],
        hosts: list[Any],
        cursors: list[int],
        next_seq: int,
        numbered: bool,
        now: float,
        dead: list[Subscriber],
    ) -> None:
        """A batch too big for one frame under ``filt``: consecutive frames, each within
        :data:`MAX_FRAME_BYTES`, each remembered with the seqs it covers. ``cursors[i]``:
        the seq part ``i`` is (or, a ``proc.update``, the next one to come)."""
        chunks: list[tuple[int, int, bytes]] = []
        sel: list[bytes] = []
        size = 1
        start = cursors[0]
        nsel = 0
        everything, match = filt.everything, filt.matches
        for i, data in enumerate(parts):
            if not (everything or match(types[i], groups[i], hosts[i])):
                continue
            if sel and size + len(data) + 1 > MAX_FRAME_BYTES:
                chunks.append((start, cursors[i], b"[" + b",".join(sel) + b"]"))
                sel, size, start = [], 1, cursors[i]
            sel.append(data)
            size += len(data) + 1
            nsel += 1
        chunks.append((start, next_seq, b"[" + b",".join(sel) + b"]"))
        stats = self.stats
        if numbered:
            for begin, end, frame in chunks:
                self._remember(filt, begin, end, frame)
        stats.frames_encoded += len(chunks)
        for sub in subs:
            if sub.lagging:
                if sub.restart == "overflow":
                    sub.ov_dropped += nsel
                continue
            for _, end, frame in chunks:
                r = sub.transport.try_write(frame)
                if r > 0:
                    sub.cursor = end
                    sub.last_write = now
                    stats.frames_sent += 1
                    stats.bytes_sent += len(frame)
                    continue
                if r == 0:
                    if numbered:
                        self._set_lagging(sub)  # the pump goes on from sub.cursor
                else:
                    dead.append(sub)
                break

    def on_deferred(self, callback: Callable[[], None]) -> None:
        """Let :meth:`publish` write to, and :meth:`tick` check, at most
        :data:`SUBSCRIBERS_PER_TURN` subscribers at once: when one leaves some for
        later it calls ``callback()``, which must return at once and have
        :meth:`next_turn` called soon, after whatever else is ready to run
        (``loop.call_soon``)."""
        self._defer = callback

    def _hold(self, filt: Filter, frame: bytes, first: int, next_seq: int, subs: list[Subscriber], now: float) -> None:
        """Leave ``subs`` at the batch ``first``..``next_seq - 1`` (whose frame for them
        is ``frame``) for :meth:`next_turn`: lagging, so that they get everything
        else in order after it, but not woken: the frame is written for them later,
        or as soon as anything else is sent to one of them (:meth:`_write_held`)."""
        lagging = self._lagging
        held = (filt, frame, first, next_seq)
        for sub in subs:
            sub.lagging = True
            sub.progress_at = now
            sub.held = held
            lagging.add(sub)
        self.stats.lagging = len(lagging)
        self._deferred.append(subs)
        self._ask_turn()

    def next_turn(self) -> None:
        """Do the next share of what a publish or a tick left for later (asking for
        another turn while anything is left): the fast path's writes, then the tick's
        checks, :data:`SUBSCRIBERS_PER_TURN` subscribers each."""
        self._turn_asked = False
        if self._deferred:
            self._write_deferred()
        if self._sweep is not None:
            self._sweep_on(SUBSCRIBERS_PER_TURN)
        if self._deferred or self._sweep is not None:
            self._ask_turn()

    def _ask_turn(self) -> None:
        if not self._turn_asked and self._defer is not None:
            self._turn_asked = True
            self._defer()

    def _write_deferred(self, share: int | None = SUBSCRIBERS_PER_TURN) -> None:
        """Write to ``share`` of the subscribers the fast path left (None: all)."""
        deferred = self._deferred
        turn = -1 if share is None else share
        now = self._clock()
        dead: list[Subscriber] = []
        while deferred and turn:
            subs = deferred[0]
            while subs and turn:
                sub = subs.pop()
                turn -= 1
                if sub.held is not None and self._write_held(sub, now) < 0:
                    dead.append(sub)
            if not subs:
                deferred.popleft()
        self._fanout_cost += self._clock() - now
        for sub in dead:
            self._drop_dead(sub)

    def _write_held(self, sub: Subscriber, now: float) -> int:
        """Write the batch a publish held ``sub`` at (:meth:`_hold`) now: 1 when written,
        0 when its pump goes on instead, -1 when the peer is gone (the caller drops it).
        A subscriber whose state moved on in between (closed, a full buffer, restarted)
        is handed to its pump, which goes on from the same seq."""
        assert sub.held is not None
        filt, frame, first, next_seq = sub.held
        sub.held = None
        if sub.closed or not sub.lagging:
            return 0
        if (sub.cursor != first or sub.restart is not None or sub.outbox or sub.parts
                or (sub.filter is not filt and sub.filter != filt)):
            sub.transport.wake()
            return 0
        r = sub.transport.try_write(frame)
        if r > 0:
            stats = self.stats
            sub.cursor = next_seq
            sub.last_write = sub.progress_at = now
            stats.frames_sent += 1
            stats.bytes_sent += len(frame)
            if next_seq > self._head:
                self._caught_up(sub)  # the fast path again
            else:
                sub.transport.wake()  # batches came since: its pump goes on
        elif r == 0:
            sub.transport.wake()
        return r

    def set_live(self, live: LiveNumbers) -> None:
        """The per-process numbers of the poll whose events come next (call before that
        :meth:`publish` or :meth:`load_state`); snapshots carry them from then on."""
        self._live = live
        self._forget_snapshots()

    def watch_interest(self, listener: Callable[[Interest], None]) -> None:
        """Call ``listener`` with the current :data:`Interest` now and whenever it
        changes (a subscriber naming ``proc.update`` comes, goes or changes its filter)."""
        self._interest_listeners.append(listener)
        listener(self._interest)

    @property
    def interest(self) -> Interest:
        """Which processes' ``proc.update`` the subscribers select now (see :data:`Interest`)."""
        return self._interest

    def _update_interest(self) -> None:
        everyone = False
        groups: set[str] = set()
        pids: set[int] = set()
        anyone = False
        for filt in self._by_filter:
            if not filt.wants_updates:
                continue
            anyone = True
            if filt.groups is None and filt.pids is None:
                everyone = True
                break
            groups.update(filt.groups or ())
            pids.update(filt.pids or ())
        interest: Interest
        if not anyone:
            interest = None
        elif everyone:
            interest = (None, None)
        else:
            interest = (frozenset(groups) if groups else None, frozenset(pids) if pids else None)
        if interest != self._interest:
            self._interest = interest
            for listener in self._interest_listeners:
                listener(interest)

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
        sub.outbox = None
        sub.outbox_bytes = 0
        sub.parts = None
        sub.restart = None
        sub.held = None
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
        replayed; otherwise ``reset`` + snapshot. Without ``since``, a snapshot (unless
        ``snapshot`` is false) then live events. Whatever an earlier subscription had not
        sent yet is dropped: the latest request wins.
        """
        self._subscribe(sub, request, ack, wait=self.future_wait > 0)

    def _subscribe(self, sub: Subscriber, request: Subscription, ack: bool, wait: bool) -> None:
        if sub.closed or (sub.held is not None and not self._unhold(sub)):
            return
        if self._waiting:
            self._waiting = [w for w in self._waiting if w[0] is not sub]
        if wait and request.since is not None and request.since > self._head and request.epoch == self.epoch:
            # Not there yet: nothing for this subscriber until the hub gets there (or
            # gives up: then it is a reset like any other).
            self._unlist(sub)
            sub.active = False
            sub.restart = None
            sub.parts = None
            self._waiting.append((sub, request, ack, self._clock() + self.future_wait))
            return
        self._unlist(sub)
        sub.filter = request.filter
        sub.want_snapshot = request.snapshot
        sub.active = True
        sub.restart = None
        sub.parts = None
        sub.ov_since = None
        sub.replay_end = 0
        self._by_filter.setdefault(sub.filter, set()).add(sub)
        self._update_interest()
        head = self._head

        if ack:
            since = request.since
            self._push(sub, P.frame(P.subscribed(sub.filter, head if since is None else min(since, head))))
        sub.cursor = head + 1
        if request.since is not None:
            reason = self.resume_problem(request.since, request.epoch)
            if reason is None:
                self.stats.resumes += 1
                sub.cursor = request.since + 1
                sub.replay_end = head
                if sub.cursor <= head:
                    self._set_lagging(sub)
                return
            self._count_reset(reason)
            if request.snapshot:
                self._set_restart(sub, "reset", reason, request.since)
            else:
                # Nothing to build later: the reset goes now, live events after it.
                self._push(sub, P.frame(P.reset(reason, seq=head, epoch=self.epoch, since=request.since)))
            return
        if request.snapshot:
            self._set_restart(sub, "snapshot", "", None)

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
        """The state as of :attr:`head_seq` (filtered by groups), as a fresh dict:
        :meth:`snapshot_json` decoded.

        ``{"type": "snapshot", "seq", "host", "epoch", "groups": {name: fields},
        "procs": [fields]}``.
        """
        obj: dict[str, Any] = orjson.loads(self.snapshot_json(filter))
        return obj

    def snapshot_json(self, filter: Filter | None = None) -> bytes:
        """:meth:`snapshot` encoded whole, in one object (``/api/snapshot``; cached
        until the state changes)."""
        filt = filter or Filter()
        key = (filt.groups, filt.hosts, True)
        snap = self._snapshots.get(key)
        if snap is None:
            data = self._encode_snapshot(filt, None)[0]
            snap = _Snapshot(self._head, data, (), len(data))
            self._keep_snapshot(key, snap)
        return snap.first

    def tick(self) -> None:
        """Housekeeping; call every :attr:`tick_interval` seconds.

        Trims the buffer by age, closes subscribers still stuck ``overflow_grace``
        seconds after their first overflow or ``drain_grace`` seconds without progress,
        keeps all subscribers' output within ``output_bytes``, refreshes the memory
        gauges, and sends ``bookmark`` to subscribers that heard nothing for
        ``bookmark_interval`` seconds. The checks of each subscriber are done a share per
        turn of the loop when it can (:meth:`on_deferred`), all at once otherwise.
        """
        now = self._clock()
        self._trim(now)
        if self._waiting:
            self._resume_waiting(now)
        grace = self.overflow_grace
        for sub in list(self._lagging):
            if sub.ov_since is not None and now - sub.ov_since >= grace:
                self._close_slow(sub)
        stats = self.stats
        stats.buffer_events = len(self._ring)
        stats.buffer_bytes = self._ring.nbytes
        stats.cache_bytes = self._recent_bytes + self._snapshot_bytes_held + self._proc_bytes_held
        if self._sweep is not None:
            self._sweep_on(None)  # the last tick's, not done yet: the loop gave it no turn
        self._sweep = _Sweep(now, list(self._subs),
                             now - self.bookmark_interval if self.bookmark_interval > 0 else None)
        self._sweep_on(SUBSCRIBERS_PER_TURN if self._defer is not None else None)
        if self._sweep is not None:
            self._ask_turn()

    def _sweep_on(self, n: int | None) -> None:
        """Check the next ``n`` subscribers of the tick's sweep (None: all that are
        left); once all are, keep their output within ``output_bytes``."""
        sw = self._sweep
        assert sw is not None
        todo = sw.todo
        drain = self.drain_grace
        stats = self.stats
        dead: list[Subscriber] = []
        for _ in range(len(todo) if n is None else min(n, len(todo))):
            sub = todo.pop()
            if sub.closed:
                continue
            transport = sub.transport
            buffered = transport.buffered()
            if drain > 0:
                if not (sub.lagging or buffered or transport.unacked()):
                    sub.progress_at = sw.now  # owes nothing: not stalled
                else:
                    acked = transport.acked()
                    if acked != sub.acked:
                        sub.acked = acked
                        sub.progress_at = sw.now
                    elif sw.now - sub.progress_at >= drain:
                        stats.stalled_closes += 1
                        self._close_slow(sub)
                        continue
            self._measure(sub, buffered, sw)
            if (sw.bookmark_before is not None and sub.active and not sub.lagging
                    and sub.last_write <= sw.bookmark_before and transport.writable()):
                if sw.bookmark_seq != self._head:
                    sw.bookmark_seq = self._head
                    sw.bookmark = P.frame(P.bookmark(self._head))
                if transport.write(sw.bookmark):
                    sub.last_write = sw.now
                    stats.bookmarks_sent += 1
                    stats.frames_sent += 1
                    stats.bytes_sent += len(sw.bookmark)
                else:
                    dead.append(sub)
        for sub in dead:
            self._drop_dead(sub)
        if todo:
            return  # the next turn goes on
        self._sweep = None
        self._settle(sw, self.output_bytes)

    def shed(self) -> None:
        """Give memory back now (the process is near its budget): drop the caches, halve
        the resume buffer, and close the subscribers holding the most output until what
        is left holds at most half of ``output_bytes``."""
        self._forget_snapshots()
        self._forget_proc_bytes()
        self._recent.clear()
        self._recent_size.clear()
        self._recent_bytes = 0
        ring = self._ring
        keep = ring.nbytes // 2
        data, i = ring.data, ring.start
        held = ring.nbytes
        while held > keep and i < len(data):
            held -= len(data[i]) + _EVENT_OVERHEAD
            i += 1
        self._drop_until(self.oldest_seq + (i - ring.start), self._clock())
        self._sweep = None  # measured again here; its other checks wait for the next tick
        self._bound_output(self.output_bytes // 2)

    # -- internals ---------------------------------------------------------------------

    def _failed(self, what: str) -> None:
        """An error while publishing: counted, logged (with its traceback) the first time
        for each kind, never raised to the producer."""
        self.stats.publish_errors += 1
        if what not in self._failures_logged:
            self._failures_logged.add(what)
            log.exception("publishing: %s failed (counted in procstream_publish_errors; "
                          "not logged again)", what)

    def _snapshot_parts(self, filt: Filter) -> _Snapshot:
        """The snapshot for ``filt`` as of the head, in parts (cached until the next
        publish: a thousand clients (re)connecting within one interval cost one
        encoding; and each process's entry until it or its numbers change)."""
        key = (filt.groups, filt.hosts, False)
        snap = self._snapshots.get(key)
        if snap is not None:
            return snap
        encoded = self._encode_snapshot(filt, SNAPSHOT_PART_BYTES)
        rest = tuple(b"[" + part + b"]" for part in encoded[1:])
        snap = _Snapshot(self._head, encoded[0], rest, sum(map(len, encoded)))
        self._keep_snapshot(key, snap)
        return snap

    def _snapshot_view(self, filt: Filter) -> tuple[dict[str, Any], list[Any]]:
        """The snapshot object for ``filt`` as of the head with its ``procs`` empty, and
        the state dicts of those processes."""
        gstate, procs, extra = self._state.snapshot_view(filt)
        obj = P.snapshot(seq=self._head, host=self.host, epoch=self.epoch, groups=gstate, procs=[])
        if extra:
            obj.update(extra)
        return obj, procs

    def _encode_snapshot(self, filt: Filter, part_bytes: int | None) -> list[bytes]:
        """The snapshot for ``filt`` as of the head, encoded (:func:`P.snapshot_parts`)."""
        obj, procs = self._snapshot_view(filt)
        return P.snapshot_parts(obj, part_bytes, procs=self._encoded_procs(procs, filt))

    def _encoded_procs(self, procs: list[Any], filt: Filter) -> list[bytes]:
        """The snapshot entries of ``procs`` (state dicts), encoded, each with the live
        numbers of the latest poll; from :attr:`_proc_bytes` where neither changed."""
        live = self._live
        version = live.version if live is not None else None
        cache = self._proc_bytes
        budget = self.cache_bytes // 4
        whole = filt.groups is None and filt.hosts is None
        fresh: dict[int, tuple[Any, object, bytes]] = {}
        held = 0 if whole else self._proc_bytes_held
        keep = fresh if whole else cache
        out: list[bytes] = []
        for p in procs:
            key = id(p)
            v = version(p.get("pid")) if version is not None else None
            old = cache.get(key)
            if old is not None and old[1] is v:
                data = old[2]
            else:
                if live is None:
                    entry = p
                else:
                    # identity as the events told it, numbers as the latest poll read them
                    entry = {**p, **(live.fields(p.get("pid"), p.get("start_time")) or _UNKNOWN_LIVE)}
                data = P.encode(entry)
                if old is not None and not whole:
                    del cache[key]  # outdated: its bytes are given back
                    held -= len(old[2]) + _EVENT_OVERHEAD
                old = None
            if (whole or old is None) and held + len(data) + _EVENT_OVERHEAD <= budget:
                keep[key] = (p, v, data)
                held += len(data) + _EVENT_OVERHEAD
            out.append(data)
        # A snapshot of everything says what every process's entry is now: the exited
        # ones go. Filtered ones only add, up to the budget.
        self._proc_bytes = keep
        self._proc_bytes_held = held
        return out

    def _forget_proc_bytes(self) -> None:
        self._proc_bytes = {}
        self._proc_bytes_held = 0

    def _keep_snapshot(self, key: _SnapshotKey, snap: _Snapshot) -> None:
        budget = self.cache_bytes // 4
        if snap.nbytes > budget:
            return  # used by the subscribers that asked, not kept
        held = self._snapshots
        while held and self._snapshot_bytes_held + snap.nbytes > budget:
            oldest = next(iter(held))
            self._snapshot_bytes_held -= held.pop(oldest).nbytes
        held[key] = snap
        self._snapshot_bytes_held += snap.nbytes

    def _forget_snapshots(self) -> None:
        self._snapshots.clear()
        self._snapshot_bytes_held = 0

    def _remember(self, filt: Filter, first: int, next_seq: int, frame: bytes | None) -> None:
        """Keep a batch's frame for ``filt`` in its recent frames, within its share of
        half of ``cache_bytes``."""
        recent = self._recent.get(filt)
        if recent is None:
            recent = self._recent[filt] = collections.deque()
            self._recent_size[filt] = 0
        recent.append((first, next_seq, frame))
        added = len(frame) if frame is not None else 0
        size = self._recent_size[filt] + added
        self._recent_bytes += added
        # Evicting even this batch's frame is fine: a subscriber that lags then gets it
        # from the resume buffer, joined again.
        share = self.cache_bytes // 2 // max(1, len(self._by_filter))
        while recent and (len(recent) > _RECENT_FRAMES or size > share):
            old = recent.popleft()[2]
            if old is not None:
                size -= len(old)
                self._recent_bytes -= len(old)
        self._recent_size[filt] = size

    def _push(self, sub: Subscriber, frame: bytes) -> None:
        """Send a control frame now, or queue it (bounded in bytes) behind what waits."""
        if sub.held is not None and not self._unhold(sub):
            return
        if not sub.lagging and sub.transport.writable():
            if sub.transport.write(frame):
                sub.last_write = self._clock()
                self.stats.frames_sent += 1
                self.stats.bytes_sent += len(frame)
            else:
                self._drop_dead(sub)
            return
        if sub.outbox_bytes + len(frame) > OUTBOX_BYTES:
            self.stats.outbox_closes += 1
            self._close_slow(sub)
            return
        if sub.outbox is None:
            sub.outbox = collections.deque()
        sub.outbox.append(frame)
        sub.outbox_bytes += len(frame)
        self._set_lagging(sub)

    def _set_restart(self, sub: Subscriber, kind: str, reason: str, since: int | None) -> None:
        """Mark a snapshot (after a reset or an overflow) as due; the pump builds it."""
        sub.restart = kind
        sub.reset_reason = reason
        sub.reset_since = since
        sub.parts = None
        self._set_lagging(sub)

    def _set_lagging(self, sub: Subscriber) -> None:
        if not sub.lagging:
            sub.lagging = True
            sub.progress_at = self._clock()
            self._lagging.add(sub)
            self.stats.lagging = len(self._lagging)
            sub.transport.wake()

    def _pull(self, sub: Subscriber) -> bytes | None:
        """Implementation of :meth:`Subscriber.next_frame`."""
        if sub.closed:
            return None
        stats = self.stats
        if sub.parts:
            frame: bytes | None = sub.parts.popleft()
        elif sub.outbox:
            frame = sub.outbox.popleft()
            sub.outbox_bytes -= len(frame)
        elif not sub.active:
            frame = None  # not subscribed (yet): control frames only
        else:
            frame = self._restart_frame(sub) if sub.restart is not None else None
            head = self._head
            while frame is None and sub.cursor <= head:
                if sub.cursor < self.oldest_seq:
                    # Fell out of the buffer (a re-baseline or a trim got there first).
                    self._overflow(sub, self._clock())
                    return self._pull(sub)
                frame, sub.cursor = self._collect(sub.filter, sub.cursor)
            if frame is not None:
                stats.replayed_frames += 1
        if frame is None:
            self._caught_up(sub)
            return None
        sub.last_write = sub.progress_at = self._clock()
        stats.frames_sent += 1
        stats.bytes_sent += len(frame)
        return frame

    def _unhold(self, sub: Subscriber) -> bool:
        """Write the batch a publish holds ``sub`` at before anything else goes to it: a
        client's own request never waits for the fan-out to the others. False when the
        peer turned out to be gone."""
        if self._write_held(sub, self._clock()) < 0:
            self._drop_dead(sub)
            return False
        return True

    def _caught_up(self, sub: Subscriber) -> None:
        """From now on the fast path delivers to ``sub``."""
        sub.lagging = False
        sub.ov_since = None
        sub.replay_end = 0
        self._lagging.discard(sub)
        self.stats.lagging = len(self._lagging)

    def _restart_frame(self, sub: Subscriber) -> bytes | None:
        """The frame that starts a subscriber over: ``reset`` or ``overflow`` (as of the
        head now) and the first part of a snapshot; the other parts follow."""
        kind, sub.restart = sub.restart, None
        head = self._head
        objs: list[bytes] = []
        if kind == "overflow":
            objs.append(P.encode(P.overflow(sub.ov_dropped, sub.ov_from, head)))
        elif kind == "reset":
            objs.append(P.encode(P.reset(sub.reset_reason, seq=head, epoch=self.epoch,
                                         since=sub.reset_since)))
        sub.cursor = head + 1
        if sub.want_snapshot:
            snap = self._snapshot_parts(sub.filter)
            objs.append(snap.first)
            if snap.rest:
                sub.parts = collections.deque(snap.rest)
            self.stats.snapshots_sent += 1
        if not objs:
            return None
        return b"[" + b",".join(objs) + b"]"

    def _collect(self, filt: Filter, from_seq: int) -> tuple[bytes | None, int]:
        """Frame of the buffered events from ``from_seq`` that pass ``filt``, ending at a
        batch boundary once the frame is big enough, and always before it would pass
        :data:`MAX_FRAME_BYTES`; returns (frame or None, next seq)."""
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
        size = 1
        while i < end:
            if everything or match(types[i], groups[i], hosts[i]):
                d = data[i]
                if sel and size + len(d) + 1 > MAX_FRAME_BYTES:
                    break
                sel.append(d)
                size += len(d) + 1
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
        sub.ov_from = sub.cursor
        sub.ov_dropped = dropped
        sub.replay_end = 0
        self.stats.overflows += 1
        self.stats.events_dropped += dropped
        self._set_restart(sub, "overflow", "", None)

    def _trim(self, now: float) -> None:
        """Apply the buffer's count, bytes and age bounds, and the subscribers' lag bound."""
        ring = self._ring
        oldest = self.oldest_seq
        new_oldest = oldest + max(0, len(ring) - self.buffer_size)
        i = ring.start + (new_oldest - oldest)
        end = len(ring.data)
        if ring.nbytes > self.buffer_bytes:
            data = ring.data
            held = ring.nbytes - (sum(map(len, data[ring.start : i])) + (i - ring.start) * _EVENT_OVERHEAD)
            while held > self.buffer_bytes and i < end:
                held -= len(data[i]) + _EVENT_OVERHEAD
                i += 1
        if self.buffer_age > 0 and i < end:
            limit = now - self.buffer_age
            times = ring.times
            while i < end and times[i] < limit:
                i += 1
        self._drop_until(oldest + (i - ring.start), now)

    def _drop_until(self, new_oldest: int, now: float) -> None:
        """Drop the buffered events before ``new_oldest``; lagging subscribers that needed
        them, or that are more than ``queue_limit`` behind, overflow."""
        if self._lagging:
            head = self._head
            qlimit = self.queue_limit
            for sub in list(self._lagging):
                if sub.restart is not None or sub.closed or not sub.active:
                    continue
                behind = head - max(sub.cursor - 1, sub.replay_end)
                if behind > qlimit or sub.cursor < new_oldest:
                    self._overflow(sub, now)
        self._ring.drop_front(new_oldest - self.oldest_seq)

    def _bound_output(self, budget: int) -> None:
        """Measure every subscriber's pending output now; close those holding the most
        while the total is past ``budget``."""
        sw = _Sweep(self._clock(), [])
        for sub in self._subs:
            self._measure(sub, sub.transport.buffered(), sw)
        self._settle(sw, budget)

    @staticmethod
    def _measure(sub: Subscriber, buffered: int, sw: _Sweep) -> None:
        """Count a subscriber's pending output (its transport holds ``buffered``) in ``sw``."""
        own = sub.outbox_bytes + buffered
        rank = own
        parts: tuple[bytes, ...] = ()
        if sub.parts:
            # Snapshot parts are shared by every subscriber sending the same snapshot
            parts = tuple(sub.parts)
            shared = sw.shared
            for part in parts:
                entry = shared.get(id(part))
                if entry is None:
                    shared[id(part)] = [len(part), 1]
                    sw.total += len(part)
                else:
                    entry[1] += 1
                rank += len(part)
        sw.held.append((rank, own, parts, sub))
        sw.total += own

    def _settle(self, sw: _Sweep, limit: int) -> None:
        """Close the subscribers measured in ``sw`` that hold the most while their total
        is past ``limit``; a subscriber gone since gave its share back already."""
        total = sw.total
        for _, own, parts, sub in sw.held:
            if sub.closed:
                total -= own + self._release(parts, sw)
        if total > limit:
            for rank, own, parts, sub in sorted(sw.held, key=lambda item: item[0], reverse=True):
                if total <= limit or rank == 0:
                    break
                if sub.closed:
                    continue
                total -= own + self._release(parts, sw)
                self.stats.budget_closes += 1
                self._close_slow(sub)
        self.stats.output_bytes = total

    @staticmethod
    def _release(parts: tuple[bytes, ...], sw: _Sweep) -> int:
        """The bytes of the shared snapshot ``parts`` that nobody sends any more once
        one of their senders stops."""
        freed = 0
        for part in parts:
            entry = sw.shared[id(part)]
            entry[1] -= 1
            if not entry[1]:
                freed += entry[0]
        return freed

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
                self._recent_bytes -= self._recent_size.pop(sub.filter, 0)
                if sub.filter.wants_updates:
                    self._update_interest()

    def _count_reset(self, reason: str) -> None:
        self.stats.resets[reason] = self.stats.resets.get(reason, 0) + 1


def _encode(ev: Any, stats: HubStats) -> bytes:
    """One event's bytes, whatever it holds: through the fallback when orjson can't, cut
    down (in place) past :data:`MAX_EVENT_BYTES`."""
    try:
        # orjson's bytes have spare capacity; the buffer keeps an exact copy
        data = memoryview(orjson.dumps(ev)).tobytes()
    except TypeError:
        stats.encode_fallbacks += 1
        data = P.encode(ev)
    if len(data) > MAX_EVENT_BYTES:
        P.shrink(ev, MAX_EVENT_BYTES)
        stats.events_shrunk += 1
        data = P.encode(ev)
    return data
