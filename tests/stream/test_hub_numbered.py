"""The hub fed by a producer that numbers its events itself (a fleet aggregator): its own
state for snapshots, a start in the middle of the numbering, a new epoch, the hosts
filter, and a resume from a seq the hub has not reached yet."""

from __future__ import annotations

from typing import Any

import pytest

from procstream.stream import protocol as P
from procstream.stream.hub import Hub
from procstream.stream.protocol import Filter, ProtocolError, Subscription, parse_frame, parse_query
from tests.stream.test_hub import Clock, FakeTransport


class Listing:
    """A state that lists every event it was told about (the producer moves it)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def load(self, groups: Any, procs: Any) -> None:
        raise AssertionError("not for this state")

    def apply(self, ev: Any) -> None:
        raise AssertionError("a numbering producer moves its state itself")

    def snapshot_view(self, filt: Filter) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
        hosts = sorted({e["host"] for e in self.events if filt.hosts is None or e["host"] in filt.hosts})
        return {}, [], {"hosts": hosts}


def ev(seq: int, host: str, typ: str = "cycle") -> dict[str, Any]:
    return {"type": typ, "ts": 1.0, "seq": seq, "host": host}


def fleet_hub(**kw: Any) -> tuple[Hub, Listing, Clock]:
    clock = Clock()
    state = Listing()
    hub = Hub(host="agg", interval=1.0, clock=clock, state=state, hosts_filter=True,
              hello_extra={"fleet": {"stream": "S"}}, epoch="e", **kw)
    return hub, state, clock


def feed(hub: Hub, state: Listing, *events: dict[str, Any]) -> None:
    state.events.extend(events)
    hub.publish_numbered(list(events))


def attach(hub: Hub, **kw: Any) -> tuple[Any, FakeTransport]:
    t = FakeTransport()
    sub = hub.attach(t)
    hub.subscribe(sub, Subscription(**kw))
    t.pump(sub)  # what is due (a snapshot) is built when the pump asks
    return sub, t


def test_numbered_events_go_out_as_they_are_from_where_the_producer_starts() -> None:
    hub, state, _ = fleet_hub()
    hub.start_at(41)
    assert (hub.head_seq, hub.oldest_seq) == (41, 42)
    sub, t = attach(hub)
    snap = t.of_type("snapshot")[0]
    assert snap["seq"] == 41 and snap["hosts"] == [] and snap["host"] == "agg"
    feed(hub, state, ev(42, "a"), ev(43, "b"))
    assert [(e["seq"], e["host"]) for e in t.events()] == [(42, "a"), (43, "b")]
    assert hub.hello(None)["fleet"] == {"stream": "S"}
    with pytest.raises(ValueError, match="from 44 without a gap"):
        hub.publish_numbered([ev(45, "a")])
    with pytest.raises(RuntimeError):
        hub.start_at(100)
    # resumes: into the buffer exactly, before it expired
    late_sub, late = attach(hub, since=42, epoch="e")
    late.pump(late_sub)
    assert [e["seq"] for e in late.events()] == [43]
    _, old = attach(hub, since=40, epoch="e")
    assert old.of_type("reset")[0]["reason"] == "expired"


def test_the_hosts_filter_live_replayed_and_in_snapshots() -> None:
    hub, state, _ = fleet_hub()
    hub.start_at(0)
    _, only_b = attach(hub, filter=Filter(hosts=frozenset({"b"})))
    assert only_b.of_type("snapshot")[0]["hosts"] == []
    feed(hub, state, ev(1, "a"), ev(2, "b"), ev(3, "a", "proc.start"))
    feed(hub, state, ev(4, "b", "proc.exit"))
    assert [(e["seq"], e["host"]) for e in only_b.events()] == [(2, "b"), (4, "b")]
    sub, replay = attach(hub, filter=Filter(types=frozenset({"proc.start", "proc.exit"}), hosts=frozenset({"a"})),
                         since=0, epoch="e")
    replay.pump(sub)
    assert [e["seq"] for e in replay.events()] == [3]
    assert hub.snapshot(Filter(hosts=frozenset({"a"})))["hosts"] == ["a"]
    assert hub.snapshot()["hosts"] == ["a", "b"]


def test_a_new_epoch_resets_every_subscriber() -> None:
    hub, state, _ = fleet_hub()
    hub.start_at(10)
    sub, t = attach(hub)
    feed(hub, state, ev(11, "a"))
    state.events.clear()
    hub.restart("e2", 0)
    t.pump(sub)
    reset = t.of_type("reset")[-1]
    assert (reset["reason"], reset["epoch"], reset["seq"]) == ("epoch", "e2", 0)
    assert t.of_type("snapshot")[-1]["epoch"] == "e2"
    feed(hub, state, ev(1, "a"))
    assert t.events()[-1]["seq"] == 1
    _, stale = attach(hub, since=11, epoch="e")
    assert stale.of_type("reset")[0]["reason"] == "epoch"
    back_sub, back = attach(hub, since=0, epoch="e2")  # had the reset's snapshot, reconnected
    back.pump(back_sub)
    assert not back.of_type("reset") and [e["seq"] for e in back.events()] == [1]


def test_a_resume_from_a_seq_not_reached_yet_waits_then_replays_exactly() -> None:
    hub, state, clock = fleet_hub(future_wait=5.0)
    hub.start_at(0)
    feed(hub, state, ev(1, "a"))
    sub, t = attach(hub, since=3, epoch="e")  # another replica was two events ahead
    assert t.objects() == []
    feed(hub, state, ev(2, "a"))
    assert t.objects() == []  # still behind the resume point: nothing, not even seq 2
    feed(hub, state, ev(3, "b"), ev(4, "a"))
    t.pump(sub)
    assert [e["seq"] for e in t.events()] == [4] and not t.of_type("reset")
    feed(hub, state, ev(5, "a"))
    assert [e["seq"] for e in t.events()] == [4, 5]
    # one too far ahead is a reset once the wait is over
    far_sub, far = attach(hub, since=100, epoch="e")
    clock.t += 5.0
    hub.tick()
    far.pump(far_sub)
    assert far.of_type("reset")[0]["reason"] == "future"


def test_only_a_fleet_knows_the_hosts_parameter() -> None:
    assert parse_query("/ws?hosts=a,b&hosts=c", hosts=True).filter.hosts == frozenset({"a", "b", "c"})
    with pytest.raises(ProtocolError, match="unknown query parameter 'hosts'"):
        parse_query("/ws?hosts=a")
    assert parse_frame('{"op": "subscribe", "hosts": ["a"]}', hosts=True).filter.hosts == frozenset({"a"})
    with pytest.raises(ProtocolError, match="unknown field 'hosts'"):
        parse_frame('{"op": "subscribe", "hosts": ["a"]}')
    with pytest.raises(ProtocolError, match="host names must be"):
        parse_query("/ws?hosts=" + "x" * 300, hosts=True)
    assert Filter(hosts=frozenset({"b", "a"})).to_json()["hosts"] == ["a", "b"]
    assert "hosts" not in Filter().to_json() and not Filter(hosts=frozenset({"a"})).everything
    assert P.hello(server="s", host="h", epoch="e", head_seq=0, oldest_seq=1, interval=1.0, filter=None).keys() \
        == Hub(host="h", interval=1.0).hello(None).keys()  # serve's hello has no more fields
