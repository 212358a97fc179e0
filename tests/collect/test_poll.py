from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from procstream.collect.core import Core
from procstream.collect.poll import Poller
from procstream.events import EventBuilder
from procstream.grouper import Grouper
from procstream.procfs.errors import ProcfsError
from tests.support.fake_procs import ByName, fake
from tests.support.waiting import async_wait_for


class Sink:
    def __init__(self) -> None:
        self.states: list[tuple[dict, list]] = []
        self.batches: list[list[dict]] = []
        self.threads: set[str] = set()

    def load_state(self, groups, procs) -> None:
        self.threads.add(threading.current_thread().name)
        self.states.append((groups, procs))

    def publish(self, events) -> None:
        self.threads.add(threading.current_thread().name)
        self.batches.append(events)


class Scan:
    """A scan whose processes, slowness and failures the test controls."""

    def __init__(self) -> None:
        self.procs = [fake(10, "a", start=100)]
        self.delay = 0.0
        self.fail = False
        self.threads: set[str] = set()

    def __call__(self):
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)  # plays a slow /proc on the worker thread
        if self.fail:
            raise ProcfsError(2, "mount point gone: /nonexistent")
        return list(self.procs)


@pytest.fixture
def cores() -> Iterator[list[Core]]:
    """Closes every core a test made."""
    made: list[Core] = []
    yield made
    for core in made:
        core.close()


@pytest.fixture
def make(cores: list[Core]) -> Callable[..., tuple[Poller, Scan, Sink]]:
    def make(interval: float = 0.05, scan: Scan | None = None) -> tuple[Poller, Scan, Sink]:
        scan = scan or Scan()
        grouper = Grouper(ByName({"a", "b"}), usernames=str)
        builder = EventBuilder(username=grouper.username)
        sink = Sink()
        core = Core(scan, grouper, builder, sink)
        cores.append(core)
        return Poller(core, interval=interval), scan, sink

    return make


async def test_first_poll_loads_state_then_batches_flow(make):
    poller, scan, sink = make()
    task = asyncio.create_task(poller.run())
    try:
        await async_wait_for("condition", lambda: len(sink.batches) >= 1)
        assert len(sink.states) == 1
        groups, procs = sink.states[0]
        assert set(groups) == {"a"} and [p["pid"] for p in procs] == [10]
        scan.procs = [fake(10, "a", start=100), fake(11, "b", start=900)]
        await async_wait_for("condition", lambda: any(e["type"] == "proc.start" for b in sink.batches for e in b))
        start = next(e for b in sink.batches for e in b if e["type"] == "proc.start")
        assert (start["pid"], start["group"]) == (11, "b")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # the scan ran on the core's thread, the sink on the loop thread
    assert scan.threads == {n for n in scan.threads if n.startswith("procstream-core")}
    assert sink.threads == {threading.current_thread().name}


async def test_the_loop_never_blocks_during_a_slow_poll(make):
    poller, scan, sink = make(interval=0.2)
    scan.delay = 0.3
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(poller.run())
    tick = asyncio.create_task(ticker())
    try:
        await async_wait_for("condition", lambda: len(sink.batches) >= 2, 10)
    finally:
        task.cancel()
        tick.cancel()
        await asyncio.gather(task, tick, return_exceptions=True)
    assert max(gaps) < 0.15


async def test_an_overrunning_poll_skips_ticks_and_says_so(make, caplog):
    caplog.set_level("INFO", logger="procstream.collect.poll")
    poller, scan, sink = make(interval=0.05)
    scan.delay = 0.13
    task = asyncio.create_task(poller.run())
    try:
        await async_wait_for("condition", lambda: len(sink.batches) >= 2, 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    cycles = [e for b in sink.batches for e in b if e["type"] == "cycle"]
    assert all(c["skipped"] >= 2 for c in cycles)
    assert poller.status.skipped >= 4
    assert poller.status.polls == len(sink.batches) + 1  # no pile-up
    # said once for the streak, not at every poll
    assert len([r for r in caplog.records if "take longer than the interval" in r.getMessage()]) == 1


async def test_polls_slower_than_three_intervals_are_healthy_and_say_their_interval(make):
    """A host whose polls take longer than 3 intervals is slow, not stuck: /healthz stays
    200 (a liveness probe would otherwise restart it forever), and says why."""
    poller, scan, sink = make(interval=0.02)
    scan.delay = 0.15  # more than 3 intervals (0.06 s)
    task = asyncio.create_task(poller.run())
    try:
        await async_wait_for("condition", lambda: poller.status.polls >= 1, 10)
        seen: list[bool] = []
        while len(sink.batches) < 4:
            seen.append(poller.health()[0])
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert all(seen) and len(seen) > 20
    ok, details = poller.health()
    assert ok and details["stale_after_s"] >= 0.45 and details["interval_s"] == 0.02
    assert details["effective_interval_s"] >= 0.15
    cycles = [e for b in sink.batches for e in b if e["type"] == "cycle"]
    assert all(c["interval_s"] >= 0.15 for c in cycles[1:])


async def test_a_poll_that_hangs_turns_health_bad(make):
    poller, scan, sink = make(interval=0.02)
    scan.delay = 0.05
    task = asyncio.create_task(poller.run())
    try:
        await async_wait_for("condition", lambda: len(sink.batches) >= 3, 10)
        assert poller.health()[0] is True
        scan.delay = 1.5  # hangs: far past 3 times the recent polls
        await async_wait_for("condition", lambda: poller.health()[0] is False, 1.4)
        assert poller.health()[1]["status"] == "stale"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_streak_of_failed_polls_is_logged_once_and_counted_each_time(make, caplog):
    poller, scan, sink = make(interval=0.02)
    task = asyncio.create_task(poller.run())
    try:
        await async_wait_for("condition", lambda: poller.status.polls >= 1)
        scan.fail = True
        await async_wait_for("condition", lambda: poller.status.failures >= 10)
        scan.fail = False
        await async_wait_for("condition", lambda: poller.status.last_error is None)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "procstream.collect.poll"]
    assert len([m for m in lines if "poll failed" in m]) == 1
    assert len([m for m in lines if "works again after" in m]) == 1


async def test_failing_polls_are_retried_and_health_follows(make):
    poller, scan, sink = make(interval=0.05)
    task = asyncio.create_task(poller.run())
    try:
        await async_wait_for("condition", lambda: poller.status.polls >= 1)
        assert poller.health()[0] is True
        scan.fail = True
        await async_wait_for("condition", lambda: poller.health()[0] is False)
        ok, details = poller.health()
        assert details["status"] == "stale"
        assert "mount point gone" in details["last_error"]
        assert poller.status.failures >= 3
        scan.fail = False
        await async_wait_for("condition", lambda: poller.health()[0] is True)
        assert poller.health()[1]["last_error"] is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_request_poll_runs_one_early(make):
    poller, scan, sink = make(interval=30.0)
    task = asyncio.create_task(poller.run())
    try:
        await async_wait_for("condition", lambda: len(sink.states) == 1)
        poller.request_poll()
        await async_wait_for("condition", lambda: len(sink.batches) == 1, 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_interval_must_be_positive(make):
    with pytest.raises(ValueError):
        make(interval=0)


async def test_run_after_a_first_poll_waits_one_interval(make):
    poller, scan, sink = make(interval=0.5)
    assert await poller.poll_now() is True
    assert len(sink.states) == 1
    task = asyncio.create_task(poller.run())
    try:
        t0 = time.monotonic()
        await async_wait_for("condition", lambda: len(sink.batches) == 1)
        assert time.monotonic() - t0 >= 0.4  # the grid starts one interval after the first poll
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_the_healthz_fields_are_the_ones_deploy_md_documents(make):
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    section = doc[doc.index("## Health: `/healthz`"):doc.index("## Limits")]
    rows = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`([^`]+)`", row)}
    poller, _, _ = make()
    assert documented == set(poller.health()[1])
