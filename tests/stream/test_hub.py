"""Tests of procstream.stream.hub, driven without I/O: fake transports and a fake clock."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import orjson
import pytest

from procstream.schema import PROC_FIELDS, ProcStart
from procstream.stream.hub import OUTBOX_BYTES, SLOW_CONSUMER_CODE, Hub, Subscriber
from procstream.stream.protocol import Filter, Subscription, expand_types


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeTransport:
    """A connection whose write buffer is either free (``ok``) or full."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.frames: list[bytes] = []
        self.woken = 0
        self.closed_with: tuple[int, str] | None = None
        self.gone = False
        self.held = 0  # bytes its write buffer holds (for the output budget)
        self.in_kernel = 0  # bytes the kernel holds for the peer, unacknowledged
        self.peer_acked = 0  # bytes the peer acknowledged

    def writable(self) -> bool:
        return self.ok and self.closed_with is None

    def write(self, frame: bytes) -> bool:
        if self.gone:
            return False
        self.frames.append(frame)
        return True

    def try_write(self, frame: bytes) -> int:
        if not self.writable():
            return 0
        return 1 if self.write(frame) else -1

    def buffered(self) -> int:
        return self.held

    def unacked(self) -> int:
        return self.in_kernel

    def acked(self) -> int:
        return self.peer_acked

    def wake(self) -> None:
        self.woken += 1

    def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)

    def pump(self, sub: Subscriber) -> int:
        """What the asyncio pump does once the transport drained."""
        n = 0
        while (frame := sub.next_frame()) is not None:
            self.frames.append(frame)
            n += 1
        return n

    def objects(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for f in self.frames:
            arr = orjson.loads(f)
            assert isinstance(arr, list) and arr, "every frame is a non-empty JSON array"
            out.extend(arr)
        return out

    def events(self) -> list[dict[str, Any]]:
        return [o for o in self.objects() if "seq" in o and o["type"] not in ("snapshot", "bookmark", "reset", "subscribed")]

    def of_type(self, t: str) -> list[dict[str, Any]]:
        return [o for o in self.objects() if o["type"] == t]


_pids = itertools.count(100)


def start(group: str = "web", pid: int | None = None, st: float = 5.0) -> ProcStart:
    pid = next(_pids) if pid is None else pid
    return {"type": "proc.start", "ts": 10.0, "pid": pid, "ppid": 1, "start_time": st,
            "name": group, "cmdline": [group, "-x"], "cmdline_known": True, "cmdline_truncated": False, "group": group,
            "user": "root", "uid": 0, "restart_of": None, "source": "poll"}


def exit_(ev: ProcStart) -> dict[str, Any]:
    out: dict[str, Any] = {k: ev[k] for k in PROC_FIELDS}  # type: ignore[literal-required]
    out.update(type="proc.exit", ts=11.0, lifetime_s=1.0, cpu_s=0.1, read_bytes=0, write_bytes=0,
               exit_code=None, signal=None, exit_class=None, oom_killed=None, source="poll")
    return out


def last_exit(ev: dict[str, Any]) -> dict[str, Any]:
    """What a group's ``last_exit`` holds after the ``proc.exit`` ``ev``."""
    return {k: ev[k] for k in ("pid", "ts", "exit_class", "exit_code", "signal", "oom_killed")}


def gupd(group: str, procs: int, **kw: Any) -> dict[str, Any]:
    """A ``group.update`` with some of a group's fields (the hub merges what it gets)."""
    ev = {"type": "group.update", "ts": 10.0, "group": group, "procs": procs, "threads": procs,
          "cpu_s": 1.5}
    ev.update(kw)
    return ev


def cycle() -> dict[str, Any]:
    return {"type": "cycle", "ts": 10.0, "duration_ms": 3.1, "procs_seen": 250, "tracked": 120,
            "started": 1, "exited": 0, "permission_errors": 0, "read_errors": 0}


def make_hub(**kw: Any) -> tuple[Hub, Clock]:
    clock = Clock()
    kw.setdefault("host", "h1")
    kw.setdefault("interval", 1.0)
    hub = Hub(clock=clock, **kw)
    hub.load_state({}, [])
    return hub, clock


def subscribe(hub: Hub, transport: FakeTransport | None = None, **kw: Any) -> tuple[Subscriber, FakeTransport]:
    transport = transport or FakeTransport()
    sub = hub.attach(transport)
    hub.subscribe(sub, Subscription(**kw))
    return sub, transport


def types_filter(*names: str, groups: tuple[str, ...] | None = None) -> Filter:
    return Filter(expand_types(names) if names else None,
                  frozenset(groups) if groups else None)


# -- numbering, state, snapshot ---------------------------------------------------------------


def test_seq_and_host_are_added_gap_free() -> None:
    hub, _ = make_hub()
    assert (hub.head_seq, hub.oldest_seq) == (0, 1)
    b1 = [cycle(), start()]
    b2 = [gupd("web", 1)]
    hub.publish(b1)
    hub.publish([])
    hub.publish(b2)
    assert [e["seq"] for e in b1 + b2] == [1, 2, 3]
    assert all(e["host"] == "h1" for e in b1 + b2)
    assert (hub.head_seq, hub.oldest_seq) == (3, 1)
    assert hub.stats.events_by_type == {"cycle": 1, "proc.start": 1, "group.update": 1}
    assert hub.stats.batches == 2


def test_odd_values_do_not_break_numbering_or_state() -> None:
    hub, _ = make_hub()
    sub, transport = subscribe(hub, snapshot=False)
    odd = start("web") | {"labels": {1: "x"}, "extra": {"b"}}
    hub.publish([cycle(), odd, cycle()])
    assert [e["seq"] for e in transport.events()] == [1, 2, 3]
    assert transport.events()[1]["extra"] == "{'b'}" and transport.events()[1]["labels"] == {"1": "x"}
    assert len(hub.snapshot()["procs"]) == 1
    assert orjson.loads(hub.snapshot_json())["procs"][0]["extra"] == "{'b'}"


def test_epoch_is_random_per_hub_unless_given() -> None:
    a, b = Hub(host="h", interval=1), Hub(host="h", interval=1)
    assert a.epoch != b.epoch and len(a.epoch) >= 8
    assert Hub(host="h", interval=1, epoch="fixed").epoch == "fixed"


def test_state_is_materialized_from_events() -> None:
    hub, _ = make_hub()
    init = start("db", pid=1, st=1.0)
    hub.load_state({"db": {"procs": 1, "cpu_s": 0.5}},
                   [{k: v for k, v in init.items() if k not in ("type", "ts", "source")}])
    a, b = start("web", pid=7, st=2.0), start("web", pid=7, st=3.0)  # pid reused: two processes
    hub.publish([a, b, gupd("web", 2), cycle()])
    snap = hub.snapshot()
    assert snap["seq"] == 4 and snap["host"] == "h1" and snap["epoch"] == hub.epoch
    assert {(p["pid"], p["start_time"]) for p in snap["procs"]} == {(1, 1.0), (7, 2.0), (7, 3.0)}
    # state has no envelope fields
    assert all(set(p).isdisjoint({"type", "ts", "seq", "host", "source"}) for p in snap["procs"])
    assert snap["groups"]["web"] == {"group": "web", "procs": 2, "threads": 2, "cpu_s": 1.5}
    assert snap["groups"]["db"] == {"group": "db", "procs": 1, "cpu_s": 0.5}

    hub.publish([exit_(a), gupd("web", 1, cpu_s=2.0), gupd("db", 0, removed=True)])
    snap = hub.snapshot()
    assert {(p["pid"], p["start_time"]) for p in snap["procs"]} == {(1, 1.0), (7, 3.0)}
    assert snap["groups"] == {"web": {"group": "web", "procs": 1, "threads": 1, "cpu_s": 2.0, "last_exit": last_exit(exit_(a))}}
    # a snapshot is a copy: changing it doesn't change the hub
    snap["groups"]["web"]["procs"] = 99
    assert hub.snapshot()["groups"]["web"]["procs"] == 1


def test_snapshot_plus_following_events_equals_later_snapshot() -> None:
    """A snapshot is exactly the state as of its seq: applying the events after it
    (as a client does) gives the hub's later snapshot."""
    hub, _ = make_hub()
    live: list[dict[str, Any]] = []
    for i in range(30):
        batch: list[dict[str, Any]] = [cycle()]
        if i % 3 == 0:
            live.append(start(f"g{i % 4}"))
            batch.append(live[-1])
        if i % 5 == 4 and live:
            batch.append(exit_(live.pop(0)))
        batch.append(gupd(f"g{i % 4}", len(live)))
        hub.publish(batch)
        if i == 10:
            snap = hub.snapshot()
            transport = FakeTransport()
            sub = hub.attach(transport)
            hub.subscribe(sub, Subscription(snapshot=False))
    groups, procs = snap["groups"], {(p["pid"], p["start_time"]): p for p in snap["procs"]}
    for ev in transport.events():
        assert ev["seq"] > snap["seq"]
        key = (ev.get("pid"), ev.get("start_time"))
        if ev["type"] == "proc.start":
            procs[key] = {k: v for k, v in ev.items() if k not in ("type", "ts", "seq", "host", "source", "restart_of")}
        elif ev["type"] == "proc.exit":
            del procs[key]
            groups[ev["group"]]["last_exit"] = last_exit(ev)
        elif ev["type"] == "group.update":
            fields = {k: v for k, v in ev.items() if k not in ("type", "ts", "seq", "host")}
            groups.setdefault(ev["group"], {}).update(fields)
    final = hub.snapshot()
    assert groups == final["groups"]
    assert sorted(procs) == sorted((p["pid"], p["start_time"]) for p in final["procs"])


def test_snapshot_filtered_by_groups() -> None:
    hub, _ = make_hub()
    hub.publish([start("web"), start("db"), gupd("web", 1), gupd("db", 1)])
    snap = hub.snapshot(types_filter(groups=("web",)))
    assert list(snap["groups"]) == ["web"]
    assert {p["group"] for p in snap["procs"]} == {"web"}


# -- fan-out and filters --------------------------------------------------------------------


def test_snapshot_then_live_events_in_frames_that_are_arrays() -> None:
    hub, _ = make_hub()
    hub.publish([start("web")])
    sub, transport = subscribe(hub)
    assert transport.frames == [] and sub.lagging  # the pump sends the snapshot
    transport.pump(sub)
    objs = transport.objects()
    assert [o["type"] for o in objs] == ["snapshot"] and objs[0]["seq"] == 1
    assert (objs[0]["part"], objs[0]["parts"]) == (1, 1)
    batch = [cycle(), start("web")]
    hub.publish(batch)
    assert len(transport.frames) == 2  # one poll = one frame
    assert orjson.loads(transport.frames[1]) == batch
    assert sub.cursor == hub.head_seq + 1 and not sub.lagging


def test_filters_types_wildcard_and_groups() -> None:
    hub, _ = make_hub()
    _, all_ = subscribe(hub, snapshot=False)
    _, procs = subscribe(hub, filter=types_filter("proc.*"), snapshot=False)
    _, web = subscribe(hub, filter=types_filter(groups=("web",)), snapshot=False)
    _, cyc = subscribe(hub, filter=types_filter("cycle", "group.update", groups=("db",)),
                       snapshot=False)
    s_web, s_db = start("web"), start("db")
    hub.publish([s_web, s_db, gupd("web", 1), gupd("db", 1), cycle(), exit_(s_web)])
    assert [e["seq"] for e in all_.events()] == [1, 2, 3, 4, 5, 6]
    assert [e["type"] for e in procs.events()] == ["proc.start", "proc.start", "proc.exit"]
    # cycle has no group: it passes a groups filter
    assert [(e["type"], e.get("group")) for e in web.events()] == [
        ("proc.start", "web"), ("group.update", "web"), ("cycle", None), ("proc.exit", "web")]
    assert [(e["type"], e.get("group")) for e in cyc.events()] == [
        ("group.update", "db"), ("cycle", None)]
    # a batch nothing in which passes sends nothing
    n = len(cyc.frames)
    hub.publish([start("web")])
    assert len(cyc.frames) == n


def test_each_batch_is_encoded_once_per_distinct_filter() -> None:
    hub, _ = make_hub()
    same = [subscribe(hub, filter=types_filter("proc.start", "proc.exit"), snapshot=False)[1]
            for _ in range(5)]
    # spelled differently, same canonical filter
    same.append(subscribe(hub, filter=types_filter("proc.*"), snapshot=False)[1])
    every = [subscribe(hub, snapshot=False)[1] for _ in range(3)]
    every.append(subscribe(hub, filter=types_filter("*"), snapshot=False)[1])
    before = hub.stats.frames_encoded
    hub.publish([start("web"), cycle()])
    assert hub.stats.frames_encoded - before == 2
    assert all(s.frames[-1] is same[0].frames[-1] for s in same)
    assert all(s.frames[-1] is every[0].frames[-1] for s in every)
    assert same[0].frames[-1] is not every[0].frames[-1]
    assert hub.stats.frames_sent >= 10


# -- resume -----------------------------------------------------------------------------------


def test_resume_replays_exactly_then_goes_live() -> None:
    hub, _ = make_hub()
    for _ in range(5):
        hub.publish([cycle(), start("web")])
    sub, transport = subscribe(hub, since=4, epoch=hub.epoch)
    assert sub.lagging and transport.woken == 1 and transport.frames == []
    transport.pump(sub)
    assert [e["seq"] for e in transport.events()] == list(range(5, 11))
    assert not sub.lagging
    hub.publish([cycle()])
    assert [e["seq"] for e in transport.events()] == list(range(5, 12))
    assert hub.stats.resumes == 1


def test_resume_at_head_sends_nothing_then_live() -> None:
    hub, _ = make_hub()
    hub.publish([cycle(), cycle()])
    sub, transport = subscribe(hub, since=2, epoch=hub.epoch)
    assert not sub.lagging and transport.frames == []
    hub.publish([cycle()])
    assert [e["seq"] for e in transport.events()] == [3]


def test_resume_with_filter_replays_only_matching() -> None:
    hub, _ = make_hub()
    hub.publish([cycle(), start("web"), start("db"), cycle()])
    sub, transport = subscribe(hub, filter=types_filter("proc.start", groups=("db",)),
                          since=0, epoch=hub.epoch)
    transport.pump(sub)
    assert [(e["seq"], e["group"]) for e in transport.events()] == [(3, "db")]


@pytest.mark.parametrize("snapshot", [True, False])
def test_reset_for_foreign_epoch_future_and_expired(snapshot: bool) -> None:
    hub, _ = make_hub(buffer_size=10)
    for _ in range(20):
        hub.publish([cycle()])
    assert (hub.oldest_seq, hub.head_seq) == (11, 20)

    cases = [(lambda: dict(since=hub.head_seq - 5, epoch="other"), "epoch"),
             (lambda: dict(since=hub.head_seq + 1, epoch=hub.epoch), "future"),
             (lambda: dict(since=hub.oldest_seq - 2, epoch=hub.epoch), "expired")]
    for make_kw, reason in cases:
        kw = make_kw()
        sub, transport = subscribe(hub, snapshot=snapshot, **kw)
        transport.pump(sub)
        objs = transport.objects()
        assert objs[0] == {"type": "reset", "reason": reason, "seq": hub.head_seq,
                           "epoch": hub.epoch, "since": kw["since"]}
        assert [o["type"] for o in objs[1:]] == (["snapshot"] if snapshot else [])
        # then live, no replay
        hub.publish([cycle()])
        assert [e["seq"] for e in transport.events()] == [hub.head_seq]
    # oldest-1 is still a valid resume point: the client has everything up to it
    sub, transport = subscribe(hub, since=hub.oldest_seq - 1, epoch=hub.epoch)
    transport.pump(sub)
    assert transport.of_type("reset") == []
    assert [e["seq"] for e in transport.events()] == list(range(hub.oldest_seq, hub.head_seq + 1))
    assert hub.stats.resets == {"epoch": 1, "future": 1, "expired": 1}


def test_load_state_again_is_a_resync() -> None:
    hub, _ = make_hub()
    hub.publish([cycle(), start("web")])
    sub, transport = subscribe(hub, snapshot=False)
    hub.load_state({"x": {"procs": 3}}, [])
    objs = transport.objects()
    assert objs[0]["type"] == "reset" and objs[0]["reason"] == "resync" and objs[0]["seq"] == 2
    assert len(objs) == 1  # snapshot=0: no state
    sub2, transport2 = subscribe(hub)
    hub.load_state({"y": {"procs": 1}}, [])
    transport2.pump(sub2)
    reset, snap = transport2.objects()[-2:]
    assert reset["reason"] == "resync" and snap["groups"] == {"y": {"procs": 1, "group": "y"}}
    # resume points from before the re-baseline can't be replayed
    sub3, transport3 = subscribe(hub, since=1, epoch=hub.epoch)
    transport3.pump(sub3)
    assert transport3.objects()[0]["reason"] == "resync"


def test_resume_far_back_is_a_replay_not_an_overflow() -> None:
    hub, _ = make_hub(queue_limit=5, buffer_size=1000)
    for _ in range(50):
        hub.publish([cycle()])
    sub, transport = subscribe(hub, since=0, epoch=hub.epoch)
    hub.publish([cycle()])  # the replay itself isn't backlog
    assert not sub.ov_pending
    transport.pump(sub)
    assert [e["seq"] for e in transport.events()] == list(range(1, 52))


def test_replay_frames_are_chunked_at_batch_boundaries() -> None:
    hub, _ = make_hub()
    pad = "x" * 2000
    batches = []
    for _ in range(300):
        batch = [cycle() | {"pad": pad} for _ in range(3)]
        hub.publish(batch)
        batches.append([e["seq"] for e in batch])
    sub, transport = subscribe(hub, since=0, epoch=hub.epoch)
    transport.pump(sub)
    assert len(transport.frames) > 1
    assert all(len(f) < 1024 * 1024 for f in transport.frames)
    ends = {b[-1] for b in batches}
    for f in transport.frames:
        assert orjson.loads(f)[-1]["seq"] in ends  # never split a poll
    assert [e["seq"] for e in transport.events()] == list(range(1, 901))


# -- buffer bounds ----------------------------------------------------------------------------


def test_buffer_bounded_by_count_and_age() -> None:
    hub, clock = make_hub(buffer_size=100, buffer_age=60.0)
    for _ in range(30):
        hub.publish([cycle() for _ in range(10)])
    assert (hub.oldest_seq, hub.head_seq) == (201, 300)
    clock.t += 30
    hub.publish([cycle()])
    clock.t += 31
    hub.tick()  # the 100 old events are older than 60 s now; the last one isn't
    assert (hub.oldest_seq, hub.head_seq) == (301, 301)
    clock.t += 61
    hub.tick()
    assert (hub.oldest_seq, hub.head_seq) == (302, 301)
    hub.publish([cycle()])
    assert hub.oldest_seq == 302


# -- back-pressure ----------------------------------------------------------------------------


def test_full_write_buffer_switches_to_pump_in_order() -> None:
    hub, _ = make_hub()
    sub, transport = subscribe(hub, snapshot=False)
    hub.publish([cycle()])
    transport.ok = False
    hub.publish([cycle(), cycle()])
    hub.publish([cycle()])
    assert sub.lagging and transport.woken == 1 and sub.backlog == 3
    transport.ok = True
    hub.publish([cycle()])  # still lagging: the fast path must not jump the queue
    assert len(transport.frames) == 1
    transport.pump(sub)
    assert [e["seq"] for e in transport.events()] == [1, 2, 3, 4, 5]
    assert not sub.lagging
    hub.publish([cycle()])
    assert [e["seq"] for e in transport.events()] == [1, 2, 3, 4, 5, 6]


def test_short_lag_catches_up_with_the_shared_frames() -> None:
    hub, _ = make_hub()
    _, fast = subscribe(hub, snapshot=False)
    sub, slow = subscribe(hub, snapshot=False)
    slow.ok = False
    for _ in range(3):
        hub.publish([cycle(), start("web")])
    slow.ok = True
    slow.pump(sub)
    # one frame per poll, the very bytes objects the caught-up subscriber got
    assert len(slow.frames) == 3
    assert all(a is b for a, b in zip(slow.frames, fast.frames))
    # a lag deeper than the recent frames is served from the buffer, still in order
    slow.ok = False
    for _ in range(40):
        hub.publish([cycle()])
    slow.ok = True
    slow.pump(sub)
    assert [e["seq"] for e in slow.events()] == [e["seq"] for e in fast.events()]


def test_control_frames_queue_behind_a_full_buffer() -> None:
    hub, _ = make_hub()
    transport = FakeTransport(ok=False)
    sub = hub.attach(transport)
    hub.send(sub, hub.hello(Filter()))
    hub.subscribe(sub, Subscription())
    hub.publish([cycle()])
    transport.ok = True
    transport.pump(sub)
    # the snapshot is built when it is sent: as of then, so it covers the cycle
    assert [o["type"] for o in transport.objects()] == ["hello", "snapshot"]
    assert transport.objects()[1]["seq"] == 1
    hub.publish([cycle()])
    assert [o["type"] for o in transport.objects()] == ["hello", "snapshot", "cycle"]


def test_unsubscribed_connection_gets_no_events() -> None:
    hub, _ = make_hub()
    transport = FakeTransport(ok=False)
    sub = hub.attach(transport)
    hub.send(sub, {"type": "error", "error": "x", "op": None})
    hub.publish([cycle()])
    transport.ok = True
    transport.pump(sub)
    assert [o["type"] for o in transport.objects()] == ["error"]


def test_overflow_drops_backlog_then_overflow_and_snapshot() -> None:
    hub, clock = make_hub(queue_limit=10, overflow_grace=30.0)
    healthy_sub, healthy = subscribe(hub, snapshot=False)
    sub, transport = subscribe(hub, filter=types_filter("proc.*"), snapshot=True)
    transport.pump(sub)
    transport.frames.clear()
    transport.ok = False
    started = []
    for i in range(8):  # 16 events, 8 of them proc.start: more than 10 behind
        started.append(start("web"))
        hub.publish([cycle(), started[-1]])
        clock.t += 1
    assert sub.ov_pending and sub.backlog == 0
    assert hub.stats.overflows == 1
    # while stalled, nothing accumulates for it
    for _ in range(100):
        hub.publish([cycle(), start("web")])
    assert len(transport.frames) == 0 and not sub.outbox
    # the healthy subscriber got every event, unaffected
    assert [e["seq"] for e in healthy.events()] == list(range(1, hub.head_seq + 1))

    transport.ok = True
    transport.pump(sub)
    ov, snap = transport.objects()
    assert ov["type"] == "overflow" and snap["type"] == "snapshot"
    assert ov["to_seq"] == snap["seq"] == hub.head_seq
    # dropped counts what its filter selects: the proc.start events it never got
    assert ov["from_seq"] == 1 and ov["dropped"] == 108
    assert len(snap["procs"]) == 108
    hub.publish([start("web"), cycle()])
    assert [e["seq"] for e in transport.events()] == [hub.head_seq - 1]
    assert not sub.lagging and sub.ov_since is None


def test_overflow_without_snapshot_when_live_only() -> None:
    hub, _ = make_hub(queue_limit=3)
    sub, transport = subscribe(hub, snapshot=False)
    transport.ok = False
    for _ in range(5):
        hub.publish([cycle()])
    transport.ok = True
    transport.pump(sub)
    assert transport.objects() == [{"type": "overflow", "dropped": 5, "from_seq": 1, "to_seq": 5}]


def test_still_stuck_after_grace_is_closed_1013() -> None:
    hub, clock = make_hub(queue_limit=3, overflow_grace=10.0)
    sub, transport = subscribe(hub, snapshot=False)
    transport.ok = False
    for _ in range(5):
        hub.publish([cycle()])
    assert sub.ov_pending
    clock.t += 9.9
    hub.tick()
    assert transport.closed_with is None
    clock.t += 0.2
    hub.tick()
    assert transport.closed_with == (SLOW_CONSUMER_CODE, "slow consumer")
    assert sub.closed and sub not in hub.subscribers
    assert hub.stats.slow_consumer_closes == 1 and hub.stats.subscribers == 0


def test_repeated_overflow_after_grace_closes() -> None:
    hub, clock = make_hub(queue_limit=3, overflow_grace=10.0)
    sub, transport = subscribe(hub, snapshot=False)
    transport.ok = False
    for _ in range(5):
        hub.publish([cycle()])
    # each time it drains the overflow notice, but never catches up for good
    for _ in range(2):
        transport.ok = True
        assert orjson.loads(sub.next_frame() or b"[]")[0]["type"] == "overflow"
        transport.ok = False
        clock.t += 5
        for _ in range(5):
            hub.publish([cycle()])
        assert sub.ov_pending == (transport.closed_with is None)
    # the second overflow came 10 s (the grace period) after the first
    assert transport.closed_with == (SLOW_CONSUMER_CODE, "slow consumer")
    assert hub.stats.overflows == 2


def test_outbox_bound_closes_a_client_that_never_reads() -> None:
    hub, _ = make_hub()
    transport = FakeTransport(ok=False)
    sub = hub.attach(transport)
    error = {"type": "error", "error": "x" * 1000, "op": None}
    fits = OUTBOX_BYTES // len(orjson.dumps([error]))
    for _ in range(fits):
        hub.send(sub, error)
    assert not sub.closed and sub.outbox_bytes <= OUTBOX_BYTES
    hub.send(sub, error)
    assert sub.closed and transport.closed_with == (SLOW_CONSUMER_CODE, "slow consumer")
    assert not sub.outbox and hub.stats.outbox_closes == 1


def test_dead_transport_is_detached() -> None:
    hub, _ = make_hub()
    sub, transport = subscribe(hub, snapshot=False)
    transport.gone = True
    hub.publish([cycle()])
    assert sub.closed and hub.stats.subscribers == 0 and hub.stats.dead_subscribers == 1


def test_bookmark_after_silence_only() -> None:
    hub, clock = make_hub(bookmark_interval=15.0)
    sub, transport = subscribe(hub, filter=types_filter("proc.start"), snapshot=False)
    hub.publish([cycle(), cycle()])  # filtered out: silence for this subscriber
    clock.t += 14.9
    hub.tick()
    assert transport.frames == []
    clock.t += 0.2
    hub.tick()
    assert transport.objects() == [{"type": "bookmark", "seq": 2}]
    clock.t += 10
    hub.publish([start("web")])
    clock.t += 10
    hub.tick()  # 10 s after the event: not yet
    assert [o["type"] for o in transport.objects()] == ["bookmark", "proc.start"]
    clock.t += 5.1
    hub.tick()
    assert transport.objects()[-1] == {"type": "bookmark", "seq": 3}
    assert hub.stats.bookmarks_sent == 2
    # a lagging subscriber gets no bookmark (its seq would skip its backlog)
    transport.ok = False
    hub.publish([start("web")])
    clock.t += 20
    hub.tick()
    assert transport.objects()[-1]["type"] == "bookmark" and transport.objects()[-1]["seq"] == 3


def test_tick_interval_follows_settings() -> None:
    assert Hub(host="h", interval=1, bookmark_interval=0.2).tick_interval == pytest.approx(0.05)
    assert Hub(host="h", interval=1).tick_interval == 1.0


def test_detach_forgets_everything() -> None:
    hub, _ = make_hub()
    subs = [subscribe(hub, filter=types_filter("cycle"))[0] for _ in range(50)]
    for s in subs[:49]:
        s.transport.ok = False  # type: ignore[attr-defined]
    hub.publish([cycle()])
    for s in subs:
        hub.detach(s)
        hub.detach(s)  # idempotent
    assert hub.subscribers == [] and hub._by_filter == {} and hub._lagging == set()
    assert hub.stats.subscribers == 0 and hub.stats.lagging == 0
    assert hub.stats.subscribers_total == 50


def test_subscribe_again_replaces_filter_with_ack() -> None:
    hub, _ = make_hub()
    sub, transport = subscribe(hub, snapshot=False)
    hub.publish([cycle(), start("web")])
    hub.subscribe(sub, Subscription(filter=types_filter("proc.start"), snapshot=False), ack=True)
    hub.publish([cycle(), start("web")])
    objs = transport.objects()
    assert objs[2] == {"type": "subscribed", "filter": {"types": ["proc.start"], "groups": None},
                       "seq": 2}
    assert [o["seq"] for o in objs[3:]] == [4]
    assert len(hub._by_filter) == 1


def test_stats_as_dict_is_a_copy() -> None:
    hub, _ = make_hub()
    hub.publish([cycle()])
    d = hub.stats.as_dict()
    d["events_by_type"]["cycle"] = 99
    assert hub.stats.events_by_type["cycle"] == 1
    assert {"subscribers", "overflows", "slow_consumer_closes", "frames_sent", "bytes_sent",
            "events_by_type"} <= set(d)


def test_publish_does_not_reencode_for_each_subscriber() -> None:
    """Delivering to many subscribers costs the same number of encodings as to one."""
    hub, _ = make_hub()
    for _ in range(200):
        subscribe(hub, snapshot=False)
    batch = [copy.deepcopy(start("web")) for _ in range(10)]
    before = hub.stats.frames_encoded
    hub.publish(batch)
    assert hub.stats.frames_encoded - before == 1
    assert hub.stats.frames_sent >= 200


# -- readers of the buffer (the NATS publisher) -----------------------------------------


def test_a_reader_gets_the_encoded_events_by_seq_and_sees_what_the_buffer_lost() -> None:
    hub, clock = make_hub(buffer_size=5)
    woken: list[int] = []
    hub.on_append(lambda: woken.append(hub.head_seq))
    hub.publish([start(), cycle()])
    hub.publish([gupd("web", 1), cycle()])
    assert woken == [2, 4]
    first, types, datas = hub.read(2, 10)
    assert first == 2 and types == ["cycle", "group.update", "cycle"]
    assert [orjson.loads(d)["seq"] for d in datas] == [2, 3, 4]
    assert hub.read(1, 2)[1] == ["proc.start", "cycle"]  # at most `limit`
    assert hub.read(5, 10) == (5, [], [])  # past the head
    hub.publish([cycle(), cycle(), cycle()])  # seq 5..7: the buffer keeps 3..7
    first, types, datas = hub.read(1, 10)
    assert first == 3 == hub.oldest_seq and len(datas) == 5  # the caller sees 1..2 are gone
    subscriber = FakeTransport()
    sub = hub.attach(subscriber)
    hub.subscribe(sub, Subscription(Filter()))
    subscriber.pump(sub)
    assert subscriber.events() == []
    hub.publish([cycle()])
    subscriber.pump(sub)
    # the bytes a reader gets are the very bytes the WebSocket frame was joined from
    assert subscriber.frames[-1] == b"[" + hub.read(8, 1)[2][0] + b"]"


def test_the_state_for_readers_is_the_snapshot_and_not_counted_as_sent() -> None:
    hub, clock = make_hub()
    hub.publish([start("web")])
    sent = hub.stats.snapshots_sent
    seq, data = hub.state_json()
    assert seq == 1 and orjson.loads(data) == hub.snapshot()
    assert hub.stats.snapshots_sent == sent
    woken: list[int] = []
    hub.on_append(lambda: woken.append(1))
    hub.load_state({}, [])  # a re-baseline empties the buffer: readers are told
    assert woken == [1] and hub.read(1, 10) == (2, [], [])
