"""The fast path in turns: with :meth:`Hub.on_deferred`, one publish writes to at most
:data:`SUBSCRIBERS_PER_TURN` subscribers and :meth:`Hub.next_turn` the rest in later
turns of the loop; whatever happens in between, every subscriber still gets every event
once, in order."""

from __future__ import annotations

from typing import Any

from procstream.stream.hub import SUBSCRIBERS_PER_TURN, TURN_ROOM, Hub, Subscriber
from procstream.stream.protocol import Subscription
from tests.stream.test_hub import Clock, FakeTransport, cycle, make_hub, start, subscribe, types_filter


class Turns:
    """What the asyncio layer does: counts the turns asked for; :meth:`run` runs them."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.asked = 0
        hub.on_deferred(self.ask)

    def ask(self) -> None:
        self.asked += 1

    def run(self) -> int:
        """Run the turns asked for until none is; how many ran."""
        ran = 0
        while self.asked:
            self.asked -= 1
            self.hub.next_turn()
            ran += 1
        return ran


def many(hub: Hub, n: int, **kw: Any) -> list[tuple[Subscriber, FakeTransport]]:
    subs = [subscribe(hub, snapshot=False, **kw) for _ in range(n)]
    for sub, t in subs:
        t.pump(sub)  # subscribed: caught up, on the fast path
    return subs


def pump_all(subs: list[tuple[Subscriber, FakeTransport]]) -> None:
    for sub, t in subs:
        if t.woken:
            t.woken = 0
            t.pump(sub)


def seqs(t: FakeTransport) -> list[int]:
    return [e["seq"] for e in t.events()]


def test_a_publish_writes_to_a_share_of_the_subscribers_and_the_next_turns_to_the_rest() -> None:
    hub, _ = make_hub()
    turns = Turns(hub)
    subs = many(hub, 3 * SUBSCRIBERS_PER_TURN + 5)
    hub.publish([start(), cycle()])
    assert sum(1 for _, t in subs if t.events()) == SUBSCRIBERS_PER_TURN
    assert turns.asked == 1 and hub.stats.lagging == len(subs) - SUBSCRIBERS_PER_TURN
    assert turns.run() == 3  # three more shares, the last one short
    assert all(seqs(t) == [1, 2] for _, t in subs)
    assert hub.stats.lagging == 0 and not any(sub.lagging for sub, _ in subs)
    assert not any(t.woken for _, t in subs)  # no pump was needed


def test_without_a_way_to_defer_every_subscriber_is_written_at_once() -> None:
    hub, _ = make_hub()
    subs = many(hub, 2 * SUBSCRIBERS_PER_TURN)
    hub.publish([start(), cycle()])
    assert all(seqs(t) == [1, 2] for _, t in subs)


def test_a_batch_published_before_the_turn_comes_after_the_one_held_on_the_fast_path() -> None:
    hub, _ = make_hub()
    turns = Turns(hub)
    subs = many(hub, 2 * SUBSCRIBERS_PER_TURN)
    hub.publish([start(), cycle()])
    hub.publish([start(), cycle()])  # first the held ones get theirs, then this one
    got = [seqs(t) for _, t in subs]
    assert all(g in ([1, 2], [1, 2, 3, 4]) for g in got) and got.count([1, 2, 3, 4]) == SUBSCRIBERS_PER_TURN
    turns.run()
    assert all(seqs(t) == [1, 2, 3, 4] for _, t in subs)
    assert not any(sub.lagging for sub, _ in subs) and not any(t.woken for _, t in subs)


def test_a_held_subscriber_whose_buffer_filled_goes_on_with_its_pump() -> None:
    hub, _ = make_hub()
    turns = Turns(hub)
    subs = many(hub, SUBSCRIBERS_PER_TURN + 1)
    hub.publish([start(), cycle()])
    (sub, t), = [(sub, t) for sub, t in subs if not t.events()]
    t.ok = False
    hub.publish([cycle()])
    turns.run()
    assert t.woken and seqs(t) == []
    t.ok = True
    pump_all([(sub, t)])
    assert seqs(t) == [1, 2, 3] and not sub.lagging


class SlowTransport(FakeTransport):
    """Each write takes ``cost`` seconds of the hub's clock."""

    def __init__(self, clock: Clock, cost: float) -> None:
        super().__init__()
        self.clock = clock
        self.cost = cost

    def write(self, frame: bytes) -> bool:
        self.clock.t += self.cost
        return super().write(frame)


def test_publishes_closer_than_their_fan_out_allows_go_to_everyone_at_once() -> None:
    hub, clock = make_hub()
    turns = Turns(hub)
    n, cost = 2 * SUBSCRIBERS_PER_TURN, 0.001
    subs = [subscribe(hub, SlowTransport(clock, cost), snapshot=False) for _ in range(n)]
    for sub, t in subs:
        t.pump(sub)
    fan_out = n * cost

    def written_now() -> int:
        hub.publish([cycle()])
        return sum(1 for _, t in subs if t.events() and t.events()[-1]["seq"] == hub.head_seq)

    assert written_now() == SUBSCRIBERS_PER_TURN  # room: the rest in later turns
    turns.run()
    clock.t += TURN_ROOM * fan_out * 0.5
    assert written_now() == n  # the loop does little but fan out: everyone at once
    clock.t += TURN_ROOM * fan_out * 1.5
    assert written_now() == SUBSCRIBERS_PER_TURN  # room again
    turns.run()
    assert all([e["seq"] for e in t.events()] == [1, 2, 3] for _, t in subs)


def test_what_happens_in_between_keeps_each_subscriber_in_order() -> None:
    hub, clock = make_hub(bookmark_interval=1.0)
    turns = Turns(hub)
    subs = many(hub, SUBSCRIBERS_PER_TURN + 5)
    hub.publish([start(), cycle()])
    held = [(sub, t) for sub, t in subs if not t.events()]
    assert len(held) == 5
    (gone, _), (again, t_again), (told, t_told), (_, t_full), (_, t_quiet) = held
    hub.detach(gone)
    # A request of its own does not wait for the turns: the held batch goes first, at once.
    hub.subscribe(again, Subscription(snapshot=False), ack=True)
    assert [o["type"] for o in t_again.objects()] == ["proc.start", "cycle", "subscribed"]
    assert t_again.of_type("subscribed")[0]["seq"] == 2 and not again.lagging
    hub.send(told, {"type": "error", "error": "bad frame"})
    assert [o["type"] for o in t_told.objects()] == ["proc.start", "cycle", "error"] and not told.lagging
    t_full.ok = False
    clock.t += 2.0
    hub.tick()  # bookmarks are due: not before the held batch
    assert t_quiet.of_type("bookmark") == []
    turns.run()
    t_full.ok = True
    pump_all(held)
    assert seqs(t_quiet) == [1, 2] and seqs(t_full) == [1, 2]
    assert seqs(t_again) == [1, 2] and seqs(t_told) == [1, 2]  # not written twice
    hub.publish([cycle()])
    turns.run()
    for t in (t_quiet, t_full, t_again, t_told):
        assert seqs(t)[-1] == 3 and len(seqs(t)) == len(set(seqs(t)))
    assert not hub._deferred and not any(sub.lagging for sub, _ in subs if not sub.closed)


# -- a tick's checks, a share per turn --------------------------------------------------------

KIB = 1024


def test_a_tick_checks_a_share_of_the_subscribers_and_the_next_turns_the_rest() -> None:
    hub, clock = make_hub(bookmark_interval=1.0)
    turns = Turns(hub)
    subs = many(hub, 2 * SUBSCRIBERS_PER_TURN + 3, filter=types_filter("proc.start"))
    clock.t += 2.0
    hub.tick()
    assert [len(t.of_type("bookmark")) for _, t in subs].count(1) == SUBSCRIBERS_PER_TURN
    hub.publish([cycle()])  # between turns, and none of them takes it
    turns.run()
    assert all(len(t.of_type("bookmark")) == 1 for _, t in subs)
    # each bookmark says where the head was when it was written
    seqs = sorted(t.of_type("bookmark")[0]["seq"] for _, t in subs)
    assert seqs == [0] * SUBSCRIBERS_PER_TURN + [1] * (len(subs) - SUBSCRIBERS_PER_TURN)
    assert hub._sweep is None and hub.stats.bookmarks_sent == len(subs)


def test_stalled_clients_are_closed_in_the_turns_and_the_budget_is_kept_after_the_last() -> None:
    hub, clock = make_hub(drain_grace=5.0, output_bytes=1024 * KIB, bookmark_interval=0)
    turns = Turns(hub)
    subs = many(hub, SUBSCRIBERS_PER_TURN + 10)
    stalled = subs[:5]
    for _, t in stalled:
        t.in_kernel = 1000  # owes its peer bytes it never acknowledges
    hub.tick()  # they begin to owe
    turns.run()
    holders = subs[5:8]
    for i, (_, t) in enumerate(holders):
        t.held = (i + 1) * 300 * KIB  # 300 + 600 + 900 KiB > 1 MiB
    for _, t in holders:
        t.peer_acked += 1  # they read: only slowly
    clock.t += 6.0
    hub.tick()
    assert hub.stats.budget_closes == 0  # not before every subscriber was measured
    first_gone = next(sub for sub, t in holders if t.held == 900 * KIB)
    hub.detach(first_gone)  # went between turns: what it held is given back
    turns.run()
    assert all(t.closed_with == (1013, "slow consumer") for _, t in stalled)
    assert hub.stats.stalled_closes == 5
    # 300 + 600 KiB left: within the budget, nobody else closed
    assert hub.stats.budget_closes == 0 and hub.stats.output_bytes == 900 * KIB
    assert not any(t.closed_with for _, t in subs[5:])


def test_a_tick_the_loop_gave_no_turn_finishes_the_last_ones_checks_first() -> None:
    hub, clock = make_hub(bookmark_interval=1.0)
    turns = Turns(hub)
    subs = many(hub, 2 * SUBSCRIBERS_PER_TURN)
    clock.t += 2.0
    hub.tick()
    clock.t += 2.0
    hub.tick()  # before the loop ran the turn the first asked for
    turns.run()
    # each got the first tick's bookmark, and the second's (two seconds later) too
    assert all(len(t.of_type("bookmark")) == 2 for _, t in subs)
