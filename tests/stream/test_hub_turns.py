"""A tick in turns: with :meth:`Hub.on_deferred`, one tick checks at most
:data:`SUBSCRIBERS_PER_TURN` subscribers and :meth:`Hub.next_turn` the rest in later
turns of the loop; whatever happens in between, each is checked once, bookmarks say no
more than what came before them, and the output budget is kept once all were measured."""

from __future__ import annotations

from typing import Any

from procstream.stream.hub import SUBSCRIBERS_PER_TURN, Hub, Subscriber
from tests.stream.test_hub import FakeTransport, cycle, make_hub, subscribe, types_filter


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
