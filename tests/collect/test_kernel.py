"""Kernel process events wired to the grouper: real processes, real proc connector.

CI runs as root, where the connector is available; these tests skip only when the
probe says it is not (and say why).
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from procstream.netlink import connector as netlink
from procstream.config import parse_config
from procstream.events import EventBuilder
from procstream.grouper import Grouper, GrouperUpdate
from procstream.collect.core import Core
from procstream.collect.kernel import ExitHold, KernelApplier, KernelSource, KExit, KLost, KStart, choose_source
from procstream.netlink.connector import ConnectorError
from procstream.collect.poll import Poller
from procstream.procfs import FS
from tests.support.fake_procs import ByName, Clock, fake
from tests.support.waiting import async_wait_for

OK, WHY = netlink.probe("/proc")
live = pytest.mark.skipif(not OK, reason=f"kernel events unavailable here: {WHY}")

# Markers unique to this test run, so a second run on the same host can't be counted here.
RUN = os.getpid()
CONFIG = f"""
process_names:
  - name: short
    cmdline: ['pskern-short-{RUN}']
  - name: burn
    cmdline: ['pskern-burn-{RUN}']
  - name: "{{{{.Comm}}}}"
    comm: [pskern_kill, pskern_long]
  - name: crash
    cmdline: ['pskern-crash-{RUN}']
"""

BURN = """
import sys, time
end = time.process_time() + 0.1
while time.process_time() < end:
    pass
print(time.process_time(), flush=True)
"""


@dataclass
class Sink:
    states: list = field(default_factory=list)
    events: list = field(default_factory=list)

    def load_state(self, groups, procs) -> None:
        self.states.append((groups, procs))

    def publish(self, events) -> None:
        self.events.extend(events)

    def of(self, type_: str, **match) -> list[dict]:
        return [e for e in self.events if e["type"] == type_ and all(e.get(k) == v for k, v in match.items())]


@dataclass
class Env:
    poller: Poller
    source: KernelSource
    sink: Sink
    grouper: Grouper


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    fs = FS("/proc")
    grouper = Grouper(parse_config(CONFIG))
    builder = EventBuilder(username=grouper.username)
    sink = Sink()
    core = Core(fs.all_procs, grouper, builder, sink)
    poller = Poller(core, interval=5.0)
    source = KernelSource(fs, grouper, builder, core, interval=poller.interval, request_poll=poller.request_poll)
    assert await poller.poll_now()
    source.open()
    source.start()
    task = asyncio.create_task(poller.run())
    try:
        yield Env(poller, source, sink, grouper)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await source.close()
        core.close()


async def run_and_reap(*args: str, **kw) -> subprocess.Popen:
    p = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, **kw)
    await asyncio.to_thread(p.wait, 30)
    return p


@live
async def test_short_lived_processes_all_exit_with_their_code_and_group(env: Env, tmp_path: Path) -> None:
    # 100 processes of ~20 ms each, one after another, from a shell outside this process
    loop = tmp_path / "loop.sh"
    loop.write_text(
        f"for i in $(seq 100); do {sys.executable} -S -c 'import sys; sys.exit(7)' pskern-short-{RUN}; done\n"
    )
    shell = await run_and_reap("sh", str(loop))
    assert shell.returncode == 7

    def shorts() -> list[dict]:
        return env.sink.of("proc.exit", group="short")

    def exits_seen() -> list[tuple[object, int]]:
        return Counter((e["group"], e["name"], e["exit_code"]) for e in env.sink.of("proc.exit")).most_common(5)

    await async_wait_for("100 exits", lambda: len(shorts()) >= 100, explain=exits_seen)
    exits = shorts()
    pids = {e["pid"] for e in exits}
    starts = [e for e in env.sink.of("proc.start") if e["pid"] in pids]
    assert len(exits) == len(pids) == 100  # exactly one exit per process
    assert len(starts) == 100 and {e["pid"] for e in starts} == pids  # and one start
    assert all(e["exit_code"] == 7 and e["signal"] is None and e["source"] == "netlink" for e in exits)
    assert all(e["group"] == "short" for e in starts)
    assert all(0 < e["lifetime_s"] < 5 for e in exits)
    assert env.poller.status.polls == 1  # nothing of this came from a poll


@live
async def test_sigkill_and_segfault_with_core(env: Env, tmp_path: Path) -> None:
    killme = tmp_path / "pskern_kill"
    shutil.copy("/bin/sleep", killme)
    victim = subprocess.Popen([str(killme), "60"])
    await async_wait_for("the victim's start", lambda: env.sink.of("proc.start", pid=victim.pid))
    victim.send_signal(signal.SIGKILL)
    await asyncio.to_thread(victim.wait, 10)
    await async_wait_for("the victim's exit", lambda: env.sink.of("proc.exit", pid=victim.pid))
    (ev,) = env.sink.of("proc.exit", pid=victim.pid)
    assert (ev["exit_code"], ev["signal"], ev["core_dumped"], ev["group"]) == (None, 9, False, "pskern_kill")

    def allow_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    crash = await run_and_reap(
        sys.executable, "-S", "-c", "import time, ctypes; time.sleep(0.05); ctypes.string_at(0)", f"pskern-crash-{RUN}",
        cwd=tmp_path, preexec_fn=allow_core,
    )  # fmt: skip
    assert crash.returncode == -signal.SIGSEGV
    await async_wait_for("the crash's exit", lambda: env.sink.of("proc.exit", pid=crash.pid))
    (ev,) = env.sink.of("proc.exit", pid=crash.pid)
    assert (ev["exit_code"], ev["signal"], ev["group"]) == (None, 11, "crash")
    if open("/proc/sys/kernel/core_pattern").read().strip().startswith("core"):
        assert ev["core_dumped"] is True


@live
async def test_cpu_of_burners_that_exit_between_polls_is_counted(env: Env) -> None:
    before = env.grouper.groups().get("burn")
    before_cpu = before.counts.cpu if before else 0.0
    burners = [
        subprocess.Popen([sys.executable, "-S", "-c", BURN, f"pskern-burn-{RUN}"], stdout=subprocess.PIPE) for _ in range(5)
    ]
    pids = {b.pid for b in burners}
    # the burners stay unreaped zombies until their exits are seen, as under a supervisor
    await async_wait_for(
        "5 burner exits", lambda: {e["pid"] for e in env.sink.of("proc.exit", group="burn")} >= pids, timeout=20
    )
    used = 0.0
    for b in burners:
        out, _ = await asyncio.to_thread(b.communicate, timeout=10)
        used += float(out)
    assert env.poller.status.polls == 1  # they lived and died between polls
    env.poller.request_poll()
    await async_wait_for("a poll", lambda: env.poller.status.polls >= 2)
    burned = env.grouper.groups()["burn"].counts.cpu - before_cpu
    assert burned >= 0.9 * used, (burned, used)
    exits = [e for e in env.sink.of("proc.exit") if e["pid"] in pids]
    assert all(e["cpu_s"] >= 0.09 for e in exits)


@live
async def test_a_process_seen_by_both_sources_is_reported_once(env: Env, tmp_path: Path) -> None:
    exe = tmp_path / "pskern_long"
    shutil.copy("/bin/sleep", exe)
    p = subprocess.Popen([str(exe), "60"])
    try:
        await async_wait_for("its start", lambda: env.sink.of("proc.start", pid=p.pid))
        env.poller.request_poll()  # a poll sees it alive and tracked
        await async_wait_for("a poll", lambda: env.poller.status.polls >= 2)
        p.terminate()
        await asyncio.to_thread(p.wait, 10)
        await async_wait_for("its exit", lambda: env.sink.of("proc.exit", pid=p.pid))
        env.poller.request_poll()  # a poll after the exit finds nothing more to say
        await async_wait_for("another poll", lambda: env.poller.status.polls >= 3)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert len(env.sink.of("proc.start", pid=p.pid)) == 1
    (ev,) = env.sink.of("proc.exit", pid=p.pid)
    assert (ev["signal"], ev["source"]) == (signal.SIGTERM, "netlink")


# -- without the kernel: the pieces' rules ---------------------------------------------


def _setup() -> tuple[Grouper, EventBuilder, ExitHold, KernelApplier, Clock]:
    clock = Clock()
    grouper = Grouper(ByName({"a", "b"}), clock=clock, usernames=str)
    builder = EventBuilder(username=str)
    hold = ExitHold(grace=1.0, clock=clock)
    return grouper, builder, hold, KernelApplier(grouper, builder, hold, 1_700_000_000, 100), clock


def test_a_poll_exit_is_held_for_the_kernels_report_then_released():
    grouper, builder, hold, applier, clock = _setup()
    grouper.update([fake(10, "a", start=100)])
    update = grouper.update([])
    assert [tp.pid for tp in update.exited] == [10]
    hold.hold(update)
    assert update.exited == [] and len(hold) == 1
    # the kernel's report arrives: it wins, with the exit code
    events = applier.apply([KExit(clock.t, 10, 3, None, False, None)])
    assert [(e["type"], e["pid"], e["exit_code"], e["source"]) for e in events] == [("proc.exit", 10, 3, "netlink")]
    # a second poll exit whose kernel report never comes is released after the grace
    grouper.update([fake(11, "b", start=200)])
    u = grouper.update([])
    hold.hold(u)
    clock.advance(0.5)
    u2 = GrouperUpdate(time=clock.t)
    hold.hold(u2)
    assert u2.exited == []
    clock.advance(0.6)
    u3 = GrouperUpdate(time=clock.t)
    hold.hold(u3)
    assert [tp.pid for tp in u3.exited] == [11]


def test_kernel_start_then_exit_and_no_second_start_from_a_poll():
    grouper, builder, hold, applier, clock = _setup()
    grouper.update([])
    p = fake(20, "a", start=500, cpu=(0.5, 0.0))
    events = applier.apply([KStart(clock.t, 20, p)])
    assert [(e["type"], e["source"]) for e in events] == [("proc.start", "netlink")]
    r = grouper.update([p])
    assert r.started == [] and r.exited == []
    final = fake(20, "a", start=500, cpu=(0.9, 0.1))
    events = applier.apply([KExit(clock.t, 20, 0, None, False, final)])
    assert [(e["type"], e["exit_code"]) for e in events] == [("proc.exit", 0)]
    grouper.update([final])  # the zombie is still listed
    assert grouper.groups()["a"].counts.cpu == pytest.approx(1.0)
    assert grouper.groups()["a"].procs == 0


def test_an_unseen_fork_only_child_inherits_its_parents_command_line_and_group():
    grouper, builder, hold, applier, clock = _setup()
    parent = fake(30, "a", start=100, cmdline=("a", "--serve"))
    grouper.update([parent])
    zombie = fake(31, "a-child", start=900, ppid=30, cmdline=(), cpu=(0.2, 0.0), state="Z")
    events = applier.apply([KExit(clock.t, 31, 0, None, False, zombie)])
    assert [(e["type"], e["pid"], e["group"]) for e in events] == [("proc.start", 31, "a"), ("proc.exit", 31, "a")]
    assert events[0]["cmdline"] == ["a", "--serve"]
    grouper.update([parent])
    assert grouper.groups()["a"].counts.cpu == pytest.approx(0.2)


def test_an_exit_of_an_ignored_process_says_nothing_and_lost_events_are_counted():
    grouper, builder, hold, applier, clock = _setup()
    grouper.update([fake(40, "zzz", start=100, ppid=0)])
    assert applier.apply([KExit(clock.t, 40, 0, None, False, None), KLost(3, "enobufs")]) == []
    assert applier.lost == 3


def test_choose_source():
    assert choose_source("poll", "/proc") == (False, "--source poll")
    use, why = choose_source("auto", "/nonexistent")
    assert use is False and why
    with pytest.raises(ConnectorError):
        choose_source("netlink", "/nonexistent")


@live
async def test_lost_events_trigger_a_poll_and_show_in_the_cycle(env: Env) -> None:
    polls = env.poller.status.polls
    env.source.stats.events_lost += 5  # as the reader thread counts them
    env.source._hand_over([KLost(5, "enobufs")])
    await async_wait_for("a resync poll", lambda: env.poller.status.polls > polls)
    cycles = env.sink.of("cycle")
    assert cycles and cycles[-1]["lost_events"] == 5 and cycles[-1]["source"] == "netlink"
    assert env.source.applier.lost == 5
