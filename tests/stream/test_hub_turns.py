"""The fast path in turns: with :meth:`Hub.on_deferred`, one publish writes to at most
:data:`WRITES_PER_TURN` subscribers and :meth:`Hub.deliver_deferred` the rest in later
turns of the loop; whatever happens in between, every subscriber still gets every event
once, in order."""

from __future__ import annotations

from typing import Any

from procstream.stream.hub import WRITES_PER_TURN, Hub, Subscriber
from procstream.stream.protocol import Subscription
from tests.stream.test_hub import FakeTransport, cycle, make_hub, start, subscribe


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
            self.hub.deliver_deferred()
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
    subs = many(hub, 3 * WRITES_PER_TURN + 5)
    hub.publish([start(), cycle()])
    assert sum(1 for _, t in subs if t.events()) == WRITES_PER_TURN
    assert turns.asked == 1 and hub.stats.lagging == len(subs) - WRITES_PER_TURN
    assert turns.run() == 3  # three more shares, the last one short
    assert all(seqs(t) == [1, 2] for _, t in subs)
    assert hub.stats.lagging == 0 and not any(sub.lagging for sub, _ in subs)
    assert not any(t.woken for _, t in subs)  # no pump was needed


def test_without_a_way_to_defer_every_subscriber_is_written_at_once() -> None:
    hub, _ = make_hub()
    subs = many(hub, 2 * WRITES_PER_TURN)
    hub.publish([start(), cycle()])
    assert all(seqs(t) == [1, 2] for _, t in subs)


def test_a_batch_published_before_the_turn_comes_after_the_one_held() -> None:
    hub, _ = make_hub()
    turns = Turns(hub)
    subs = many(hub, 2 * WRITES_PER_TURN)
    hub.publish([start(), cycle()])
    hub.publish([start(), cycle()])  # the held ones lag: not written on the fast path
    turns.run()
    pump_all(subs)  # they went on from the next batch with their pumps
    assert all(seqs(t) == [1, 2, 3, 4] for _, t in subs)
    assert not any(sub.lagging for sub, _ in subs)


def test_what_happens_in_between_keeps_each_subscriber_in_order() -> None:
    hub, clock = make_hub(bookmark_interval=1.0)
    turns = Turns(hub)
    subs = many(hub, WRITES_PER_TURN + 4)
    hub.publish([start(), cycle()])
    held = [(sub, t) for sub, t in subs if not t.events()]
    assert len(held) == 4
    (gone, _), (again, t_again), (full, t_full), (quiet, t_quiet) = held
    hub.detach(gone)
    hub.subscribe(again, Subscription(snapshot=False), ack=True)  # its ack waits behind nothing
    t_full.ok = False
    clock.t += 2.0
    hub.tick()  # bookmarks are due: not before the held batch
    assert t_quiet.of_type("bookmark") == []
    turns.run()
    t_full.ok = True
    pump_all(held)
    assert seqs(t_quiet) == [1, 2] and seqs(t_full) == [1, 2]
    # resubscribed after the batch: its ack says so, and the batch is not sent after it
    assert [o["type"] for o in t_again.objects()][-1] == "subscribed" and seqs(t_again) == []
    assert t_again.of_type("subscribed")[-1]["seq"] == 2
    hub.publish([cycle()])
    turns.run()
    for t in (t_quiet, t_full, t_again):
        assert seqs(t)[-1] == 3 and len(seqs(t)) == len(set(seqs(t)))
    assert not hub._deferred and not any(sub.lagging for sub, _ in subs if not sub.closed)
