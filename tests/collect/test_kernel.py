"""Kernel process events wired to the grouper: real processes, real proc connector.

CI runs as root, where the connector is available; these tests skip only when the
probe says it is not (and say why).
"""

from __future__ import annotations

import asyncio
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from procstream.netlink import connector as netlink
from procstream.events import EventBuilder
from procstream.grouper import Grouper, GrouperUpdate
from procstream.collect.kernel import ExitHold, KernelApplier, KExit, KLost, KStart, choose_source
from procstream.netlink.connector import ConnectorError
from procstream.procfs import FixedProc
from tests.support.fake_procs import ByName, Clock, fake
from tests.support.kernel_source import Env, kernel_env
from tests.support.waiting import async_wait_for

OK, WHY = netlink.probe("/proc")
live = pytest.mark.skipif(not OK, reason=f"kernel events unavailable here: {WHY}")

# Markers unique to this test run, so a second run on the same host can't be counted here.
RUN = os.getpid()
SHORT = f"psks{RUN}"  # a comm: the group must not depend on reading the argv in time
CONFIG = f"""
process_names:
  - name: short
    comm: [{SHORT}]
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


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with kernel_env(CONFIG) as e:
        yield e


async def run_and_reap(*args: str, **kw) -> subprocess.Popen:
    p = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, **kw)
    await asyncio.to_thread(p.wait, 30)
    return p


@live
async def test_short_lived_processes_all_exit_with_their_code_and_group(env: Env, tmp_path: Path) -> None:
    # 100 processes of ~20 ms each, one after another, from a shell outside this process;
    # named by their comm, so their group is known even when one is gone before its argv
    # could be read (then its argv must say so, not be made up)
    python = tmp_path / SHORT
    python.symlink_to(sys.executable)
    argv = [str(python), "-S", "-c", "import sys; sys.exit(7)", f"pskern-short-{RUN}"]
    loop = tmp_path / "loop.sh"
    loop.write_text(f"for i in $(seq 100); do {' '.join(shlex.quote(a) for a in argv)}; done\n")
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
    assert all(e["group"] == "short" and e["source"] == "netlink" for e in starts)
    assert all(0 < e["lifetime_s"] < 5 for e in exits)
    for e in starts:
        assert (e["cmdline"], e["cmdline_known"]) in ((argv, True), ([], False)), e
    # polls happen only when asked for; a lost kernel event would have asked for one
    assert env.poller.status.polls == 1


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
    final = fake(20, "a", start=500, cpu=(0.9, 0.1), state="Z")
    events = applier.apply([KExit(clock.t, 20, 0, None, False, final)])
    assert [(e["type"], e["exit_code"]) for e in events] == [("proc.exit", 0)]
    r = grouper.update([final])  # the zombie is still listed: still in its group
    assert r.started == [] and r.exited == []
    a = grouper.groups()["a"]
    assert a.counts.cpu == pytest.approx(1.0)
    assert (a.procs, a.states.zombie) == (1, 1)
    r = grouper.update([])  # reaped: gone from its group, without a second exit
    assert r.exited == [] and grouper.groups()["a"].procs == 0


def test_an_unseen_process_never_gets_its_parents_command_line():
    grouper, builder, hold, applier, clock = _setup()
    grouper.kernel_events = True
    parent = fake(30, "a", start=100, cmdline=("a", "--serve"))
    grouper.update([parent])
    # a fork-only child of "a", and a child that exec'd "b": both seen only as zombies
    copy = unknown_argv(fake(31, "a", start=900, ppid=30, cmdline=(), cpu=(0.2, 0.0), state="Z"))
    other = unknown_argv(fake(32, "b", start=901, ppid=30, cmdline=(), state="Z"))
    events = applier.apply([KExit(clock.t, 31, 0, None, False, copy), KExit(clock.t, 32, 3, None, False, other)])
    assert [(e["type"], e["pid"], e["group"]) for e in events] == [
        ("proc.start", 31, "a"), ("proc.exit", 31, "a"), ("proc.start", 32, "b"), ("proc.exit", 32, "b"),
    ]  # fmt: skip
    assert all(e["cmdline"] == [] and e["cmdline_known"] is False for e in events)
    assert applier.stats.argv_unknown == 2
    grouper.update([parent])
    assert grouper.groups()["a"].counts.cpu == pytest.approx(0.2)


def unknown_argv(p: FixedProc) -> FixedProc:
    """``p`` as read once it had left its memory: its empty argv is not its own."""
    info = p.info
    return replace(p, info=replace(info, static=replace(info.static, cmdline_known=False)))


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


def test_an_exec_of_a_tracked_process_names_it_again_and_an_unread_one_at_its_exit():
    grouper, builder, hold, applier, clock = _setup()
    grouper.kernel_events = True
    grouper.update([])
    events = applier.apply([KStart(clock.t, 50, fake(50, "a", start=700, stack=0x7000))])
    assert [(e["type"], e["group"]) for e in events] == [("proc.start", "a")]
    # it execs b: a second start, with what it was
    events = applier.apply([KStart(clock.t, 50, fake(50, "b", start=700, cmdline=("b", "-v"), stack=0x8000))])
    assert [(e["type"], e["name"], e["cmdline"], e["group"], e["previous"]) for e in events] == [
        ("proc.start", "b", ["b", "-v"], "b", {"name": "a", "group": "a"})
    ]
    # it execs again, gone before it could be read; its zombie tells the new name
    assert applier.apply([KStart(clock.t, 50, None)]) == []
    zombie = unknown_argv(fake(50, "a", start=700, cmdline=(), state="Z"))
    events = applier.apply([KExit(clock.t, 50, 0, None, False, zombie)])
    assert [(e["type"], e["name"], e["cmdline"], e["cmdline_known"], e["group"]) for e in events] == [
        ("proc.start", "a", [], False, "a"),
        ("proc.exit", "a", [], False, "a"),
    ]
    assert events[0]["previous"] == {"name": "b", "group": "b"}


def test_an_unread_exit_on_the_pid_of_an_older_ignored_process_is_not_taken_for_it():
    from procstream.netlink import TaskExit

    grouper, builder, hold, applier, clock = _setup()
    grouper.kernel_events = True
    grouper.update([fake(60, "zzz", start=100, ppid=0)])  # ignored (matches nothing)
    assert grouper.tracker.is_ignored(grouper.tracker.known(60))
    # long after, a new process with the same pid lives and dies unread: only TASKSTATS knows it
    start = 1_700_000_000 + 5000.0
    stats = TaskExit(
        pid=60, tgid=60, aggregate="tgid", ppid=1, uid=0, gid=0, comm="a", status=256, btime=int(start),
        etime_us=2000, utime_us=0, stime_us=1000, minflt=10, majflt=0, read_bytes=0, write_bytes=0,
        nvcsw=1, nivcsw=0, version=14,
    )  # fmt: skip
    events = applier.apply([KExit(start + 0.002, 60, 1, None, False, None, stats)])
    assert [(e["type"], e["name"], e["group"], e["cmdline_known"]) for e in events] == [
        ("proc.start", "a", "a", False),
        ("proc.exit", "a", "a", False),
    ]


def test_an_exec_read_whose_counters_were_gone_leaves_the_usage_counted_once():
    grouper, builder, hold, applier, clock = _setup()
    grouper.kernel_events = True
    grouper.update([])
    applier.apply([KStart(clock.t, 70, fake(70, "a", start=700, cpu=(0.0, 0.0), stack=0x7000))])
    grouper.update([fake(70, "a", start=700, cpu=(1.0, 0.0), stack=0x7000)])
    # it execs b; read in time for its name, not for its counters (reaped meanwhile)
    gone = replace(fake(70, "b", start=700, stack=0x8000), error=ProcessLookupError())
    events = applier.apply([KStart(clock.t, 70, gone)])
    assert [(e["group"], e["previous"]["group"]) for e in events] == [("b", "a")]
    final = fake(70, "b", start=700, cpu=(1.5, 0.0), state="Z")
    applier.apply([KExit(clock.t, 70, 0, None, False, final)])
    grouper.update([final])
    groups = grouper.groups()
    assert groups["a"].counts.cpu + groups["b"].counts.cpu == pytest.approx(1.5)
    assert groups["a"].counts.cpu == pytest.approx(1.0)
