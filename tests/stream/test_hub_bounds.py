"""The hub's bounds in bytes and time, driven without I/O (fake transports, a fake clock):
the resume buffer by bytes, frames within MAX_FRAME_BYTES, snapshots in parts and built
when sent, subscribes that replace each other, clients closed when their output does not
move or when all clients' output passes its budget, per-filter caches, and a publish
path that never raises."""

from __future__ import annotations

import orjson

from procstream.schema import CMDLINE_MAX_BYTES
from procstream.stream.hub import (
    MAX_EVENT_BYTES,
    MAX_FRAME_BYTES,
    SLOW_CONSUMER_CODE,
    SNAPSHOT_PART_BYTES,
    Hub,
)
from procstream.stream.protocol import Subscription
from tests.stream.test_hub import FakeTransport, cycle, make_hub, start, subscribe, types_filter

KIB = 1024


def big_start(group: str, size: int) -> dict:
    """A proc.start whose encoding is about ``size`` bytes (below the event size cap)."""
    return start(group) | {"cmdline": ["x" * size]}


# -- the resume buffer ------------------------------------------------------------------------


def test_the_buffer_is_bounded_by_bytes_too() -> None:
    hub, _ = make_hub(buffer_size=100_000, buffer_bytes=1024 * KIB)
    for _ in range(100):
        hub.publish([big_start("web", 50 * KIB)])  # 5 MB in all
    hub.tick()
    held = hub.head_seq - hub.oldest_seq + 1
    assert hub.stats.buffer_events == held and 15 <= held <= 20  # ~51 KiB each
    assert hub.stats.buffer_bytes <= 1024 * KIB


def test_a_lagging_client_past_the_bytes_bound_overflows_instead_of_holding_events() -> None:
    hub, _ = make_hub(buffer_bytes=512 * KIB)
    sub, transport = subscribe(hub, snapshot=False)
    transport.ok = False
    for _ in range(40):
        hub.publish([big_start("web", 40 * KIB)])
    assert sub.ov_pending
    transport.ok = True
    transport.pump(sub)
    assert transport.objects()[0]["type"] == "overflow"


# -- frame sizes ------------------------------------------------------------------------------


def test_a_batch_bigger_than_a_frame_goes_out_in_several_in_order() -> None:
    hub, _ = make_hub()
    _, fast = subscribe(hub, snapshot=False)
    slow_sub, slow = subscribe(hub, snapshot=False)
    slow.ok = False
    batch = [big_start("web", 100 * KIB) for _ in range(20)] + [cycle()]  # ~2 MB, one poll
    hub.publish(batch)
    assert len(fast.frames) >= 3 and all(len(f) <= MAX_FRAME_BYTES for f in fast.frames)
    assert [e["seq"] for e in fast.events()] == list(range(1, 22))
    # a client that was not writable gets the same frames from the pump
    slow.ok = True
    slow.pump(slow_sub)
    assert [e["seq"] for e in slow.events()] == list(range(1, 22))
    assert all(len(f) <= MAX_FRAME_BYTES for f in slow.frames)


def test_a_client_whose_buffer_fills_between_the_frames_of_one_batch_continues_from_there() -> None:
    hub, _ = make_hub()
    sub, transport = subscribe(hub, snapshot=False)

    class FillsAfterOne(FakeTransport):
        def try_write(self, frame: bytes) -> int:
            r = super().try_write(frame)
            self.ok = False
            return r

    hub.detach(sub)
    t2 = FillsAfterOne()
    sub2 = hub.attach(t2)
    hub.subscribe(sub2, Subscription(snapshot=False))
    hub.publish([big_start("web", 100 * KIB) for _ in range(20)])
    assert len(t2.frames) == 1 and sub2.lagging
    t2.ok = True
    t2.pump(sub2)
    assert [e["seq"] for e in t2.events()] == list(range(1, 21))


def test_replays_never_pass_the_frame_size() -> None:
    hub, _ = make_hub()
    for _ in range(5):
        hub.publish([big_start("web", 100 * KIB) for _ in range(12)])
    sub, transport = subscribe(hub, since=0, epoch=hub.epoch)
    transport.pump(sub)
    assert all(len(f) <= MAX_FRAME_BYTES for f in transport.frames)
    assert [e["seq"] for e in transport.events()] == list(range(1, 61))


def test_an_event_over_the_size_cap_is_cut_down_and_still_numbered() -> None:
    hub, _ = make_hub()
    sub, transport = subscribe(hub, snapshot=False)
    huge = start("web") | {"cmdline": ["y" * 100 * KIB] * 30, "name": "n" * 100_000,
                           "extra": {"deep": [["z" * 50_000] * 10] * 10}}
    hub.publish([huge, cycle()])
    (ev, cyc) = transport.events()
    assert (ev["seq"], cyc["seq"]) == (1, 2)
    assert len(orjson.dumps(ev)) <= MAX_EVENT_BYTES
    assert ev["cmdline_truncated"] is True and sum(map(len, ev["cmdline"])) <= CMDLINE_MAX_BYTES
    assert hub.stats.events_shrunk == 1
    # the state holds the cut event too: a snapshot is as small
    assert len(hub.snapshot_json()) <= MAX_EVENT_BYTES + 1024


# -- snapshots: in parts, built when sent -----------------------------------------------------


def test_a_big_snapshot_comes_in_parts_that_add_up_to_the_state() -> None:
    hub, _ = make_hub()
    procs = [big_start(f"g{i % 7}", 20 * KIB) for i in range(200)]  # ~4 MB of state
    hub.publish(procs)
    sub, transport = subscribe(hub)
    transport.pump(sub)
    parts = transport.of_type("snapshot")
    assert len(parts) == len(transport.frames) >= 4
    assert [p["part"] for p in parts] == list(range(1, len(parts) + 1))
    assert {p["parts"] for p in parts} == {len(parts)} and {p["seq"] for p in parts} == {200}
    assert all(len(f) <= MAX_FRAME_BYTES for f in transport.frames)
    assert all(len(orjson.dumps(p)) <= SNAPSHOT_PART_BYTES + 64 * KIB for p in parts)
    whole = hub.snapshot()
    assert sorted(p["pid"] for part in parts for p in part["procs"]) == sorted(p["pid"] for p in whole["procs"])
    groups: dict = {}
    for part in parts:
        groups.update(part["groups"])
    assert groups == whole["groups"]
    # live events follow the last part
    hub.publish([cycle()])
    assert transport.events()[-1]["seq"] == 201


def test_clients_sending_the_same_snapshot_share_its_parts() -> None:
    hub, _ = make_hub()
    hub.publish([big_start("web", 20 * KIB) for _ in range(100)])
    a_sub, a = subscribe(hub)
    b_sub, b = subscribe(hub)
    a.pump(a_sub)
    b.pump(b_sub)
    assert len(a.frames) > 1
    assert all(x is y for x, y in zip(a.frames[1:], b.frames[1:]))


def test_subscribe_frames_from_a_client_that_does_not_read_replace_each_other() -> None:
    hub, _ = make_hub()
    hub.publish([big_start("web", 20 * KIB) for _ in range(100)])  # a 2 MB snapshot
    transport = FakeTransport(ok=False)
    sub = hub.attach(transport)
    for i in range(63):
        hub.subscribe(sub, Subscription(filter=types_filter(groups=(f"g{i}", "web"))), ack=True)
    # nothing but 63 small acknowledgements waits: no snapshot copies
    assert sub.outbox_bytes < 63 * 200 and sub.restart == "snapshot"
    transport.ok = True
    transport.pump(sub)
    objs = transport.objects()
    assert [o["type"] for o in objs].count("subscribed") == 63
    snaps = [o for o in objs if o["type"] == "snapshot"]
    assert snaps[0]["part"] == 1 and len({s["parts"] for s in snaps}) == 1  # one snapshot
    assert objs[-len(snaps) - 1]["filter"]["groups"] == ["g62", "web"]  # the last request's
    assert hub.stats.snapshots_sent == 1


def test_a_new_subscription_ends_a_snapshot_in_progress() -> None:
    hub, _ = make_hub()
    hub.publish([big_start("web", 20 * KIB) for _ in range(100)])
    sub, transport = subscribe(hub)
    first = sub.next_frame()
    assert first is not None and sub.parts
    hub.subscribe(sub, Subscription(snapshot=False), ack=True)
    assert not sub.parts
    rest = transport.pump(sub)
    assert rest == 1 and transport.objects()[-1]["type"] == "subscribed"


# -- clients that don't drain -----------------------------------------------------------------


def test_a_client_that_does_not_drain_is_closed_after_the_grace_period_on_a_quiet_host() -> None:
    hub, clock = make_hub(overflow_grace=30.0, drain_grace=5.0)
    hub.publish([start("web")])
    sub, transport = subscribe(hub)  # a snapshot is due; nothing else will ever happen
    transport.ok = False  # it never reads: the pump is never given a chance
    clock.t += 4.9
    hub.tick()
    assert transport.closed_with is None
    clock.t += 0.2
    hub.tick()
    assert transport.closed_with == (SLOW_CONSUMER_CODE, "slow consumer")
    assert hub.stats.stalled_closes == 1 and hub.stats.subscribers == 0


def test_a_client_whose_output_sits_unread_in_the_kernel_is_closed_too() -> None:
    """Loopback send buffers hold megabytes: a client that stopped reading may owe nothing
    to our own buffers. What its peer acknowledges tells."""
    hub, clock = make_hub(drain_grace=5.0)
    hub.publish([start("web")])
    sub, transport = subscribe(hub)
    transport.pump(sub)  # the snapshot went out: into the kernel's buffer
    reader_sub, reader = subscribe(hub)
    reader.pump(reader_sub)
    transport.in_kernel = reader.in_kernel = 300_000
    for _ in range(6):
        clock.t += 1.0
        reader.peer_acked += 50_000  # this one reads: its peer acknowledges bytes
        hub.tick()
    assert transport.closed_with == (SLOW_CONSUMER_CODE, "slow consumer")
    assert reader.closed_with is None and hub.stats.stalled_closes == 1
    # owing nothing, a client that reads nothing is left alone (a quiet host)
    idle_sub, idle = subscribe(hub, snapshot=False)
    clock.t += 60
    reader.in_kernel = 0
    hub.tick()
    assert idle.closed_with is None and reader.closed_with is None


def test_a_client_that_drains_slowly_but_steadily_is_not_closed() -> None:
    hub, clock = make_hub(drain_grace=5.0)
    hub.publish([big_start("web", 20 * KIB) for _ in range(100)])
    sub, transport = subscribe(hub)
    for _ in range(6):  # one part every 4 s: slower than the whole grace, never stuck
        clock.t += 4.0
        hub.tick()
        assert transport.closed_with is None
        if sub.next_frame() is None:
            break
    assert not sub.closed


def test_all_clients_output_is_bounded_and_the_biggest_holders_go_first() -> None:
    hub, _ = make_hub(output_bytes=1024 * KIB)
    subs = [subscribe(hub, snapshot=False) for _ in range(6)]
    for i, (_, t) in enumerate(subs):
        t.held = (i + 1) * 40 * KIB  # what their sockets' write buffers hold: 840 KiB
    hub.tick()
    assert hub.stats.budget_closes == 0 and hub.stats.output_bytes == 840 * KIB
    subs[3][1].held = 600 * KIB  # 40+80+120+600+200+240 KiB > 1 MiB
    hub.tick()
    closed = [i for i, (_, t) in enumerate(subs) if t.closed_with is not None]
    assert closed == [3] and hub.stats.budget_closes == 1
    assert hub.stats.output_bytes <= 1024 * KIB


def test_snapshot_parts_count_once_however_many_clients_send_them() -> None:
    hub, _ = make_hub(output_bytes=3 * 1024 * KIB)
    hub.publish([big_start("web", 20 * KIB) for _ in range(100)])  # 2 MB snapshot
    subs = [subscribe(hub) for _ in range(20)]
    for sub, _ in subs:
        assert sub.next_frame() is not None  # each is sending the same parts
    hub.tick()
    assert hub.stats.budget_closes == 0
    assert 1024 * KIB < hub.stats.output_bytes <= 3 * 1024 * KIB


# -- per-filter caches ------------------------------------------------------------------------


def test_recent_frames_share_a_bytes_bound_and_go_with_the_last_subscriber_of_a_filter() -> None:
    hub, _ = make_hub(cache_bytes=2 * 1024 * KIB)
    subs = [subscribe(hub, filter=types_filter(groups=(f"g{i}", "web")), snapshot=False) for i in range(50)]
    for _ in range(30):
        hub.publish([big_start("web", 30 * KIB), cycle()])
    hub.tick()
    assert hub.stats.cache_bytes <= 1024 * KIB  # the recent frames' half
    for sub, _ in subs:
        hub.detach(sub)
    hub.tick()
    assert hub.stats.cache_bytes == 0 and hub._recent == {}


def test_snapshot_caches_stay_within_their_quarters() -> None:
    hub, _ = make_hub(cache_bytes=2 * 1024 * KIB)
    hub.publish([big_start(f"g{i}", 20 * KIB) for i in range(60)])
    for i in range(60):
        sub, t = subscribe(hub, filter=types_filter(groups=(f"g{i}", f"g{(i + 1) % 60}")))
        t.pump(sub)
    hub.tick()
    assert hub._snapshot_bytes_held <= 512 * KIB and hub._proc_bytes_held <= 512 * KIB
    assert hub.stats.cache_bytes <= 1024 * KIB


# -- publishing never raises ------------------------------------------------------------------


def test_publish_survives_what_producers_put_in_events() -> None:
    hub, _ = make_hub()
    sub, transport = subscribe(hub, snapshot=False)
    batch = [
        start("web") | {"mem_resident": 2**70},  # beyond 64 bits
        start("web") | {"group": ["not", "hashable"]},
        "not an event",  # type: ignore[list-item]
        start("web") | {"start_time": {"unhashable": 1}},  # can't key the state
        cycle() | {"odd": {1, 2}, "text": "\ud800"},
    ]
    hub.publish(batch)  # type: ignore[arg-type]
    events = transport.events()
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert events[0]["mem_resident"] == 2**64 - 1
    assert events[1]["group"] == ["not", "hashable"]
    assert hub.stats.publish_errors == 2 and hub.stats.encode_fallbacks == 2
    hub.publish([cycle()])
    assert transport.events()[-1]["seq"] == 5
    assert orjson.loads(hub.snapshot_json())["seq"] == 5


def test_shed_gives_memory_back() -> None:
    hub, _ = make_hub(buffer_bytes=8 * 1024 * KIB)
    subs = [subscribe(hub, filter=types_filter(groups=(f"g{i}",)), snapshot=False) for i in range(5)]
    for _ in range(100):
        hub.publish([big_start("g0", 30 * KIB)])
    hub.tick()
    before = hub.stats.buffer_bytes
    subs[0][1].held = hub.output_bytes  # one client holds all it may
    hub.shed()
    hub.tick()
    assert hub.stats.buffer_bytes <= before // 2 + 64 * KIB
    assert subs[0][1].closed_with == (SLOW_CONSUMER_CODE, "slow consumer")
    assert hub.stats.cache_bytes == 0


def test_bounds_must_be_positive() -> None:
    for kw in ({"buffer_bytes": 0}, {"output_bytes": 0}, {"cache_bytes": 0}):
        try:
            Hub(host="h", interval=1.0, **kw)
        except ValueError:
            continue
        raise AssertionError(kw)
