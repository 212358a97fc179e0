"""The core: one thread for tracker/grouper/builder state, two sources, one sink, and
the parties that see every poll."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from procstream.collect.core import Core
from procstream.events import EventBuilder
from procstream.grouper import GroupCounts, Grouper, GrouperUpdate
from procstream.procfs.errors import ProcfsError
from procstream.schema import CycleExtras
from tests.support.fake_procs import ByName, Clock, fake


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def load_state(self, groups, procs) -> None:
        self.calls.append(("state", (groups, procs)))

    def publish(self, events) -> None:
        self.calls.append(("events", events))

    def events(self) -> list[dict]:
        return [e for kind, batch in self.calls if kind == "events" for e in batch]  # type: ignore[union-attr]


class Scan:
    def __init__(self) -> None:
        self.procs = [fake(10, "a", start=100)]
        self.fail = False

    def __call__(self):
        if self.fail:
            raise ProcfsError(2, "mount point gone: /nonexistent")
        return list(self.procs)


class Partner:
    """Holds back every poll exit, and says so in each cycle."""

    def __init__(self) -> None:
        self.held: list[int] = []
        self.threads: set[str] = set()
        self.asked = 0

    def take_exits(self, update: GrouperUpdate) -> None:
        self.threads.add(threading.current_thread().name)
        self.held += [tp.pid for tp in update.exited]
        update.exited = []

    def cycle_fields(self) -> CycleExtras:
        self.asked += 1
        return {"source": "test", "lost_events": len(self.held)}


class Env:
    def __init__(self) -> None:
        self.clock = Clock()
        self.grouper = Grouper(ByName({"a", "b"}), clock=self.clock, usernames=str)
        self.scan = Scan()
        self.sink = Sink()
        self.core = Core(self.scan, self.grouper, EventBuilder(username=str), self.sink)

    async def poll(self, **kw):
        self.clock.advance(1.0)
        return await self.core.poll(**kw)


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.core.close()


async def test_the_first_good_poll_is_the_baseline_and_later_ones_are_events(env: Env) -> None:
    env.scan.fail = True
    with pytest.raises(ProcfsError):
        await env.poll()
    assert env.sink.calls == []  # a failed poll delivers nothing
    env.scan.fail = False
    first = await env.poll()
    assert first.baseline and first.duration >= 0
    (kind, (groups, procs)), = env.sink.calls
    assert kind == "state" and set(groups) == {"a"} and [p["pid"] for p in procs] == [10]
    env.scan.procs.append(fake(11, "b", start=900))
    second = await env.poll(skipped=2)
    assert not second.baseline
    assert [(e["type"], e.get("pid")) for e in env.sink.events()][:1] == [("proc.start", 11)]
    cycle = env.sink.events()[-1]
    assert cycle["type"] == "cycle" and cycle["skipped"] == 2 and "source" not in cycle


async def test_a_partner_sees_every_poll_from_when_it_joined(env: Env) -> None:
    partner = Partner()
    await env.poll()
    env.core.join(partner)
    env.scan.procs = []
    await env.poll()
    # the exit went to the partner, not into the events; its fields are in the cycle
    assert partner.held == [10]
    assert [e["type"] for e in env.sink.events()] == ["group.update", "cycle"]
    cycle = env.sink.events()[-1]
    assert (cycle["skipped"], cycle["source"], cycle["lost_events"]) == (0, "test", 1)
    assert partner.threads == {n for n in partner.threads if n.startswith(Core.THREAD_NAME)} != set()


async def test_a_partner_joined_before_the_baseline_is_not_asked_for_cycle_fields(env: Env) -> None:
    partner = Partner()
    env.core.join(partner)
    assert (await env.poll()).baseline
    assert partner.asked == 0 and partner.threads  # it saw the poll all the same
    await env.poll()
    assert partner.asked == 1


async def test_watchers_see_every_good_poll_after_its_events(env: Env) -> None:
    seen: list[tuple[float, set[str], float, int]] = []

    def watch(update: GrouperUpdate, groups: dict[str, GroupCounts], duration: float) -> None:
        assert threading.current_thread().name.startswith(Core.THREAD_NAME)
        seen.append((update.time, set(groups), duration, len(env.sink.calls)))

    env.core.watch(watch)
    await env.poll()
    env.scan.fail = True
    with pytest.raises(ProcfsError):
        await env.poll()
    env.scan.fail = False
    env.scan.procs.append(fake(11, "b", start=900))
    await env.poll()
    assert [(t, g) for t, g, _, _ in seen] == [(env.clock.t - 2.0, {"a"}), (env.clock.t, {"a", "b"})]
    assert all(d >= 0 for _, _, d, _ in seen)
    # called on the core's thread before the loop delivered that poll's output
    assert [n for _, _, _, n in seen] == [0, 1]


async def test_submitted_work_runs_on_the_core_thread_and_its_events_are_published(env: Env) -> None:
    await env.poll()
    threads: list[str] = []

    def work(n: int) -> list[dict]:
        threads.append(threading.current_thread().name)
        return [{"type": "cycle", "n": i} for i in range(n)]

    await env.core.submit(work, 2)
    await env.core.submit(work, 0)
    assert [e["n"] for e in env.sink.events()] == [0, 1]
    assert [kind for kind, _ in env.sink.calls] == ["state", "events"]  # nothing for an empty batch
    assert all(t.startswith(Core.THREAD_NAME) for t in threads) and len(threads) == 2
    with pytest.raises(ZeroDivisionError):
        await env.core.submit(lambda: [1 / 0])


async def test_call_returns_and_publishes_nothing(env: Env) -> None:
    assert await env.core.call(lambda x: threading.current_thread().name + x, "!") == f"{Core.THREAD_NAME}_0!"
    assert env.sink.calls == []
