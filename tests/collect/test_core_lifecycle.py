"""The lifecycle in the core: both sources' batches pass through it, the baseline is
followed by what is missing from the start, a reload changes expectations. Made-up
processes and a made-up kernel log: these always run."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from procstream.collect.core import Core
from procstream.collect.kernel import ExitHold, KernelApplier, KExit, KStart
from procstream.collect.oom import OomWatch
from procstream.config import ExpectedGroup, LifecycleConfig
from procstream.events import EventBuilder
from procstream.grouper import Grouper
from procstream.lifecycle import Lifecycle
from tests.support.fake_procs import BOOT, HZ, ByName, Clock, fake


class Sink:
    def __init__(self) -> None:
        self.states: list[tuple[dict, list]] = []
        self.batches: list[list[dict]] = []

    def load_state(self, groups, procs) -> None:
        self.states.append((groups, procs))

    def publish(self, events) -> None:
        self.batches.append(list(events))

    def of(self, *types: str) -> list[dict]:
        return [e for b in self.batches for e in b if e["type"] in types]


EXPECTED = (ExpectedGroup("db", 1), ExpectedGroup("web", 2, 3))
SETTINGS = LifecycleConfig(restart_window_s=5, crashloop_restarts=2, crashloop_window_s=60, stable_after_s=10)


def kmsg_line(pid: int, comm: str) -> bytes:
    usec = int(time.monotonic() * 1e6)
    return (
        f"6,900,{usec},-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
        f"oom_memcg=/t,task_memcg=/t,task={comm},pid={pid},uid=0\n"
        f"3,901,{usec},-;Memory cgroup out of memory: Killed process {pid} ({comm}) total-vm:1kB\n"
    ).encode()


class Env:
    def __init__(self, tmp: Path) -> None:
        self.clock = Clock()
        self.kmsg = tmp / "kmsg"
        self.kmsg.write_bytes(b"")
        self.oom = OomWatch(str(self.kmsg), str(tmp / "no-vmstat"))
        self.oom.open()
        self.grouper = Grouper(ByName({"db", "web", "job"}), clock=self.clock, usernames=str)
        self.builder = EventBuilder(username=str)
        self.grouper.pin(e.group for e in EXPECTED)
        self.builder.set_expected(EXPECTED)
        self.lifecycle = Lifecycle(SETTINGS, EXPECTED, oom=self.oom, clock=self.clock)
        self.procs = [fake(10, "web", start=100)]
        self.sink = Sink()
        self.core = Core(lambda: list(self.procs), self.grouper, self.builder, self.sink, self.lifecycle)
        self.hold = ExitHold(grace=1.0, clock=self.clock)
        self.applier = KernelApplier(self.grouper, self.builder, self.hold, BOOT, HZ)

    async def poll(self) -> None:
        self.clock.advance(1.0)
        await self.core.poll()

    async def kernel(self, *items: KStart | KExit) -> None:
        await self.core.submit(self.applier.apply, list(items))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.core.close()
    e.oom.close()


def ticks(t: float) -> int:
    """Clock ticks since boot of epoch time ``t`` (a fake process's ``start``)."""
    return round((t - BOOT) * HZ)


async def test_the_baseline_is_followed_by_what_is_missing_from_the_start(env: Env) -> None:
    await env.poll()
    ((groups, procs),) = env.sink.states
    # never seen, yet there, with no process: the expected groups' series exist from the start
    assert (groups["db"]["procs"], groups["db"]["expected_min"], groups["db"]["expected_max"]) == (0, 1, None)
    assert (groups["web"]["procs"], groups["web"]["expected_min"], groups["web"]["expected_max"]) == (1, 2, 3)
    assert [(e["type"], e["group"], e["procs"]) for e in env.sink.of("group.missing")] == [
        ("group.missing", "db", 0),
        ("group.missing", "web", 1),
    ]
    assert env.sink.batches == [env.sink.of("group.missing")]  # one batch, right after the state


async def test_poll_starts_and_exits_recover_and_lose_a_group(env: Env) -> None:
    await env.poll()
    env.procs.append(fake(11, "web", start=ticks(env.clock.t)))
    await env.poll()
    batch = env.sink.batches[-1]
    assert [(e["type"], e.get("group")) for e in batch][:2] == [("proc.start", "web"), ("group.recovered", "web")]
    assert batch[0]["restart_of"] is None
    env.procs = [p for p in env.procs if p.pid != 10]
    await env.poll()
    batch = env.sink.batches[-1]
    assert [(e["type"], e.get("group")) for e in batch][:2] == [("proc.exit", "web"), ("group.missing", "web")]
    # a poll can't tell why it ended; the kernel log says it was no OOM kill
    assert (batch[0]["exit_class"], batch[0]["oom_killed"]) == (None, False)


async def test_kernel_batches_get_exit_classes_oom_kills_and_restarts(env: Env) -> None:
    env.procs = [fake(10, "job", start=100), fake(20, "db", start=100)]
    await env.poll()
    with env.kmsg.open("ab") as f:
        f.write(kmsg_line(20, "db"))
    await env.kernel(KExit(env.clock.t, 20, None, signal.SIGKILL, False, None))
    exit_, missing = env.sink.batches[-1]
    assert (exit_["pid"], exit_["exit_class"], exit_["oom_killed"], exit_["signal"]) == (20, "oom_kill", True, 9)
    assert (missing["type"], missing["group"], missing["procs"]) == ("group.missing", "db", 0)
    # its replacement, 2 s later
    env.clock.advance(2.0)
    new = fake(21, "db", start=ticks(env.clock.t))
    await env.kernel(KStart(env.clock.t, 21, new))
    start, recovered = env.sink.batches[-1]
    assert start["restart_of"] == {"pid": 20, "exit_code": None, "signal": 9, "down_s": 2.0}
    assert (recovered["type"], recovered["group"], recovered["procs"]) == ("group.recovered", "db", 1)
    # a kill -9 the log doesn't name is a signal; a clean exit is ok
    await env.kernel(KExit(env.clock.t, 10, None, signal.SIGKILL, False, None))
    assert [(e["exit_class"], e["oom_killed"]) for e in env.sink.of("proc.exit")][-1:] == [("signal", False)]
    await env.poll()
    assert env.oom.stats.victims == 2 and env.lifecycle.view["db"].oom_kills == 1


async def test_a_crash_loop_from_kernel_batches_then_stable_at_a_poll(env: Env) -> None:
    env.procs = [fake(30, "job", start=ticks(env.clock.t))]
    await env.poll()
    pid = 30
    for _ in range(3):
        env.clock.advance(0.5)
        await env.kernel(KExit(env.clock.t, pid, 1, None, False, None))
        pid += 1
        env.clock.advance(0.1)
        env.procs = [fake(pid, "job", start=ticks(env.clock.t))]
        await env.kernel(KStart(env.clock.t, pid, env.procs[0]))
    assert [(e["group"], e["restarts"]) for e in env.sink.of("group.crashloop")] == [("job", 2)]
    await env.poll()
    assert env.sink.of("group.stable") == []
    env.clock.advance(10.0)
    await env.poll()
    (stable,) = env.sink.of("group.stable")
    assert (stable["group"], stable["restarts"], stable["window_s"]) == ("job", 3, 10.0)
    kinds = [e["type"] for e in env.sink.batches[-1]]
    assert kinds.index("group.stable") < kinds.index("cycle")


async def test_a_reload_changes_expectations_pins_and_group_fields(env: Env) -> None:
    await env.poll()
    await env.poll()
    env.sink.batches.clear()
    await env.core.expect((ExpectedGroup("web", 1), ExpectedGroup("job", 1)), SETTINGS)
    # web is at its new minimum, db is no longer expected, job is expected and absent
    assert [(e["type"], e["group"], e["expected_min"]) for e in env.sink.of("group.missing", "group.recovered")] == [
        ("group.recovered", "db", None),
        ("group.missing", "job", 1),
        ("group.recovered", "web", 1),
    ]
    await env.poll()
    updates = {e["group"]: e for e in env.sink.of("group.update")}
    assert (updates["job"]["procs"], updates["job"]["expected_min"]) == (0, 1)
    assert (updates["db"]["expected_min"], updates["web"]["expected_min"], updates["web"]["expected_max"]) == (None, 1, None)
    assert "job" in env.grouper.groups() and env.grouper.pinned == {"web", "job"}
