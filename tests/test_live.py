"""procstream.live (per-process numbers from two polls) and the event builder's
``proc.update`` events (only for the processes selected, only when they changed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from procstream.config import default_config
from procstream.events import EventBuilder, start_ms
from procstream.grouper import Grouper
from procstream.live import LiveTable, UpdateInterest
from procstream.procfs import FS
from procstream.schema import LIVE_FIELDS
from tests.support.fake_proc_tree import BOOT_TIME, add_proc, remove_proc, ticks_now
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


def test_a_version_stays_while_a_process_is_idle_and_is_new_while_it_runs() -> None:
    h = Host()
    first = h.poll(fake(10, "web", cpu=(1.0, 0.0)), fake(11, "web", cpu=(1.0, 0.0)))
    assert first.version(11) is first.version(11) and first.version(99) is None
    current = h.grouper.tracker.current

    def then(table: LiveTable, changed: list[int], *procs) -> LiveTable:
        h.clock.advance(2.0)
        return table.then(h.grouper.update(list(procs)).time, changed, current)

    second = then(first, [10], fake(10, "web", cpu=(3.0, 0.0)), fake(11, "web", cpu=(1.0, 0.0)))
    assert second.version(11) is first.version(11)  # idle: the same numbers
    assert second.fields(11) == first.fields(11)
    # ran: its rates depend on the time between polls, so on this table
    assert second.version(10) is second.version(10) is not first.version(10)
    assert second.fields(10)["cpu_pct"] == 100.0  # type: ignore[index]
    third = then(second, [], fake(10, "web", cpu=(3.0, 0.0)), fake(11, "web", cpu=(1.0, 0.0)))
    assert third.version(10) is third.version(10) is not second.version(10)
    assert third.fields(10)["cpu_pct"] == 0.0  # type: ignore[index]


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


def identical(a: LiveTable, b: LiveTable) -> bool:
    """The same processes, each entry the same objects, and the same numbers."""
    same_entries = a.entries.keys() == b.entries.keys() and all(
        all(x is y for x, y in zip(a.entries[pid], b.entries[pid], strict=True)) for pid in a.entries
    )
    return same_entries and all(a.fields(pid) == b.fields(pid) for pid in a.entries)


def test_a_table_made_from_the_last_one_and_the_changes_is_the_whole_one(fake_proc: Path) -> None:
    """Every way a tracked process changes, in a poll (it ran, started, exited, its pid
    reused) or between polls (another source renames it or reports its exit), on /proc
    as the tracker reads it: processes that did not run keep their readings."""
    clock = Clock(float(BOOT_TIME + 10_000))
    g = Grouper(default_config(), clock=clock, usernames=str)
    tracker = g.tracker
    fs = FS(str(fake_proc))
    start = ticks_now(-60)
    for pid in range(3000, 3040):
        add_proc(fake_proc, pid, comm=f"w{pid % 3}", cmdline=("w",), start=start)

    def poll() -> tuple[LiveTable, LiveTable, set[int] | None]:
        clock.advance(1.0)
        update = g.update(fs.all_procs())
        changes = tracker.take_changes()
        whole = LiveTable.of(update.time, tracker.tracked.values(), h.whole)
        made = h.made.then(update.time, changes, tracker.current) if h.made and changes is not None else whole
        h.whole, h.made = whole, made
        return whole, made, changes

    class h:  # the two chains of tables
        whole: LiveTable | None = None
        made: LiveTable | None = None

    assert poll()[2] is None  # nothing recorded before the first take: the whole table
    whole, made, changes = poll()
    assert identical(whole, made) and len(made) >= 40
    assert changes is not None and not changes & set(range(3000, 3040))  # none of them ran

    add_proc(fake_proc, 3001, comm="w1", cmdline=("w",), start=start, utime=50)  # it ran
    remove_proc(fake_proc, 3002)  # exited
    add_proc(fake_proc, 3003, comm="w0", cmdline=("w",))  # the pid reused
    add_proc(fake_proc, 3100, comm="w9", cmdline=("w",))  # started
    whole, made, changes = poll()
    assert changes is not None and {3001, 3002, 3003, 3100} <= changes
    assert identical(whole, made) and made.fields(3001)["cpu_pct"] > 0  # type: ignore[index]
    assert 3002 not in made.entries and 3100 in made.entries

    # between polls, another source (kernel events) renames one and reports another's exit
    tp = tracker.current(3004)
    assert tp is not None
    g.rename_as(tp, dataclasses.replace(tp.static, name="renamed"), tp.mark, None)
    gone = tracker.current(3005)
    assert gone is not None
    g.retire(gone.id, dataclasses.replace(gone.metrics, cpu_user=gone.metrics.cpu_user + 5))
    zombie = tracker.current(3006)
    assert zombie is not None
    g.retire(zombie.id, dataclasses.replace(zombie.metrics, cpu_user=zombie.metrics.cpu_user + 1), listed=True)
    whole, made, changes = poll()
    assert changes is not None and {3004, 3005, 3006} <= changes
    assert identical(whole, made)
    assert made.entries[3004][4].name == "renamed" and 3005 not in made.entries
    assert made.fields(3006)["cpu_s"] == whole.fields(3006)["cpu_s"]  # type: ignore[index]

    for _ in range(12):  # past restat and full re-reads of each process
        whole, made, _ = poll()
        assert identical(whole, made)


def test_changes_are_recorded_only_between_takes() -> None:
    h = Host()
    h.poll(fake(10, "web"))
    tracker = h.grouper.tracker
    assert tracker.take_changes() is None
    h.poll(fake(10, "web"), fake(11, "web"))
    assert tracker.take_changes() == {10, 11}  # made-up processes are read anew at every poll
    tracker.drop_changes()
    h.poll(fake(11, "web"))
    assert tracker.take_changes() is None  # not known: nobody recorded them
    h.poll(fake(11, "web"))
    assert tracker.take_changes() == {11}
    assert tracker.take_changes() == set()
