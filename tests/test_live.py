"""procstream.live (per-process numbers from two polls) and the event builder's
``proc.update`` events (only for the processes selected, only when they changed)."""

from __future__ import annotations

import pytest

from procstream.events import EventBuilder, start_ms
from procstream.grouper import Grouper
from procstream.live import LiveTable, UpdateInterest
from procstream.schema import LIVE_FIELDS
from tests.support.fake_procs import BOOT, HZ, ByName, Clock, fake


class Host:
    """A grouper over made-up processes, polled with a settable clock."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.grouper = Grouper(ByName({"web", "db"}), clock=self.clock, usernames=str)
        self.table: LiveTable | None = None

    def poll(self, *procs, dt: float = 2.0) -> LiveTable:
        self.clock.advance(dt)
        update = self.grouper.update(list(procs))
        self.table = LiveTable.of(update.time, self.grouper.tracker.tracked.values(), self.table)
        return self.table


def test_numbers_and_rates_between_two_polls() -> None:
    h = Host()
    h.poll(fake(10, "web", cpu=(1.0, 0.5), io=(1000, 0), limit=100))  # the limit is read once
    t = h.poll(fake(10, "web", cpu=(2.0, 0.5), io=(5000, 2048), rss=4096, vsize=8192, swap=512,
                    threads=3, fds=25, limit=100, state="R"))
    assert t.fields(10) == {
        "cpu_pct": 50.0, "cpu_s": 2.5, "mem_resident": 4096, "mem_virtual": 8192, "mem_swap": 512,
        "threads": 3, "open_fds": 25, "fd_ratio": 0.25, "state": "R", "read_bps": 2000.0,
        "write_bps": 1024.0,
    }  # fmt: skip
    assert tuple(t.fields(10) or ()) == LIVE_FIELDS


def test_first_sight_has_no_rates() -> None:
    t = Host().poll(fake(10, "web", cpu=(9.0, 0.0), fds=-1, limit=0))
    f = t.fields(10)
    assert f is not None
    assert (f["cpu_pct"], f["read_bps"], f["cpu_s"]) == (0.0, 0.0, 9.0)
    assert (f["open_fds"], f["fd_ratio"]) == (-1, 0.0)  # unknown fds, unlimited: no ratio


def test_a_reused_pid_is_another_process() -> None:
    h = Host()
    h.poll(fake(10, "web", start=100, cpu=(5.0, 0.0)))
    t = h.poll(fake(10, "web", start=900, cpu=(1.0, 0.0)))
    assert t.fields(10)["cpu_pct"] == 0.0  # type: ignore[index]
    assert t.fields(10, start_ms(BOOT + 900 / HZ)) is not None  # as events write it
    assert t.fields(10, start_ms(BOOT + 100 / HZ)) is None
    assert t.fields(99) is None


def test_only_the_previous_poll_is_kept() -> None:
    h = Host()
    first = h.poll(fake(10, "web"))
    h.poll(fake(10, "web"))
    third = h.poll(fake(10, "web"))
    assert third._before is not first.entries


def test_interest_selects_processes() -> None:
    t = Host().poll(fake(10, "web"), fake(11, "db"), fake(12, "web"))
    pick = lambda i: [e.id.pid for e, _ in t.select(i)]  # noqa: E731
    assert pick(UpdateInterest()) == [10, 11, 12]
    assert pick(UpdateInterest(groups=frozenset({"db"}))) == [11]
    assert pick(UpdateInterest(pids=frozenset({12, 77}))) == [12]
    assert pick(UpdateInterest(frozenset({"db"}), frozenset({10}))) == [10, 11]
    assert UpdateInterest().wants("x", 1) and not UpdateInterest(pids=frozenset({2})).wants("x", 1)


def builder_events(h: Host, b: EventBuilder, interest: UpdateInterest | None, *procs) -> list[dict]:
    h.clock.advance(1.0)
    update = h.grouper.update(list(procs))
    h.table = LiveTable.of(update.time, h.grouper.tracker.tracked.values(), h.table)
    return [e for e in b.batch(update, h.grouper.groups(), duration_ms=1.0, live=h.table, interest=interest)
            if e["type"] == "proc.update"]


def test_proc_update_only_for_changes() -> None:
    h, b = Host(), EventBuilder(username=str)
    h.poll(fake(10, "web"), fake(11, "web"))
    b.state(h.grouper.tracker.tracked.values(), h.grouper.groups(), h.clock())
    every = UpdateInterest()
    first = builder_events(h, b, every, fake(10, "web"), fake(11, "web"))
    assert [e["pid"] for e in first] == [10, 11]  # first time: all of them
    assert first[0]["group"] == "web" and first[0]["start_time"] == start_ms(BOOT + 1000 / HZ)  # as in proc.start
    assert set(first[0]) == {"type", "ts", "pid", "start_time", "group", *LIVE_FIELDS}
    # an idle process whose numbers stay the same is not sent again
    again = builder_events(h, b, every, fake(10, "web", cpu=(0.5, 0.0)), fake(11, "web"))
    assert [(e["pid"], e["cpu_pct"]) for e in again] == [(10, 50.0)]
    # 10 idle again: its rate changes back to 0, which is a change
    assert [e["pid"] for e in builder_events(h, b, every, fake(10, "web", cpu=(0.5, 0.0)), fake(11, "web"))] == [10]
    assert builder_events(h, b, every, fake(10, "web", cpu=(0.5, 0.0)), fake(11, "web")) == []


def test_proc_update_follows_the_interest() -> None:
    h, b = Host(), EventBuilder(username=str)
    procs = (fake(10, "web"), fake(11, "db"))
    h.poll(*procs)
    b.state(h.grouper.tracker.tracked.values(), h.grouper.groups(), h.clock())
    assert builder_events(h, b, None, *procs) == []
    assert [e["pid"] for e in builder_events(h, b, UpdateInterest(groups=frozenset({"db"})), *procs)] == [11]
    # newly selected: sent in full; no longer selected: forgotten
    assert [e["pid"] for e in builder_events(h, b, UpdateInterest(pids=frozenset({10})), *procs)] == [10]
    assert [e["pid"] for e in builder_events(h, b, UpdateInterest(groups=frozenset({"db"})), *procs)] == [11]
    assert builder_events(h, b, None, *procs) == []
    assert [e["pid"] for e in builder_events(h, b, UpdateInterest(groups=frozenset({"db"})), *procs)] == [11]


def test_proc_updates_come_after_group_updates_and_before_the_cycle() -> None:
    h, b = Host(), EventBuilder(username=str)
    h.poll(fake(10, "web"))
    b.state(h.grouper.tracker.tracked.values(), h.grouper.groups(), h.clock())
    h.clock.advance(1.0)
    update = h.grouper.update([fake(10, "web", cpu=(1.0, 0.0)), fake(11, "web", start=5000)])
    h.table = LiveTable.of(update.time, h.grouper.tracker.tracked.values(), h.table)
    types = [e["type"] for e in b.batch(update, h.grouper.groups(), duration_ms=1.0, live=h.table,
                                        interest=UpdateInterest())]
    assert types == ["proc.start", "group.update", "proc.update", "proc.update", "cycle"]


@pytest.mark.parametrize("n", [1, 50])
def test_the_table_holds_one_entry_per_tracked_process(n: int) -> None:
    t = Host().poll(*(fake(100 + i, "web") for i in range(n)))
    assert len(t) == n
