"""With kernel events, what is reported is what the processes really did: real processes
under the real proc connector, grouped by process-exporter's default config (every
process with a command line, by its comm).

- a process is named by the program it runs now, not the first one it ran;
- a process whose argv could not be read says so, and never gets another's;
- a reaped child's I/O is counted once, in its own group, not again in its parent's;
- a zombie stays in its group until its parent reaps it;
- a group of short-lived processes only goes away after a while; a pinned one never.

Each test names its processes after this run's pid (symlinks to the real programs: the
kernel names a process after the path it executes), so other processes on the host,
including other test runs, can't land in the groups a test looks at.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from procstream.config import DEFAULT_CONFIG_TEXT
from procstream.netlink import connector as netlink
from tests.support.kernel_source import Env, kernel_env
from tests.support.processes import stop
from tests.support.waiting import async_wait_for

OK, WHY = netlink.probe("/proc")
pytestmark = pytest.mark.skipif(not OK, reason=f"kernel events unavailable here: {WHY}")

RUN = os.getpid()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with kernel_env(DEFAULT_CONFIG_TEXT) as e:
        yield e


def program(tmp_path: Path, comm: str, target: str) -> Path:
    """``target`` (a program on PATH) under the name ``comm`` (at most 15 bytes)."""
    assert len(comm) <= 15
    link = tmp_path / comm
    found = shutil.which(target)
    assert found is not None, target
    link.symlink_to(found)
    return link


def this_process() -> tuple[str, list[str]]:
    """This process's comm and argv: what a child is until its exec (a copy of it)."""
    comm = Path("/proc/self/comm").read_text().strip()
    argv = Path("/proc/self/cmdline").read_bytes().decode("utf-8", "replace").split("\0")[:-1]
    return comm, argv


def starts_of(env: Env, pid: int) -> list[dict[str, Any]]:
    return env.sink.of("proc.start", pid=pid)


def tracked(env: Env, pid: int) -> Any:
    pid_id = env.grouper.tracker.known(pid)
    return env.grouper.tracker.tracked.get(pid_id) if pid_id is not None else None


def metric(text: str, family: str, group: str, extra: str = "") -> float | None:
    m = re.search(rf'^namedprocess_namegroup_{family}\{{groupname="{re.escape(group)}"{extra}\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


# -- named by the program it runs now ----------------------------------------------------


async def test_setsid_nohup_ends_in_the_group_of_the_last_program(env: Env, tmp_path: Path) -> None:
    comm = f"pss{RUN}"
    sleeper = program(tmp_path, comm, "sleep")
    me, my_argv = this_process()
    real = {
        me: my_argv,  # read between the fork and the exec: a copy of this process
        "setsid": ["setsid", "nohup", str(sleeper), "60"],
        "nohup": ["nohup", str(sleeper), "60"],
        comm: [str(sleeper), "60"],
    }
    # setsid execs nohup (no fork: it is not a process group leader), which execs sleep
    p = subprocess.Popen(real["setsid"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await async_wait_for(
            f"pid {p.pid} tracked as {comm}",
            lambda: (tp := tracked(env, p.pid)) is not None and tp.group == comm,
            explain=lambda: starts_of(env, p.pid),
        )
        tp = tracked(env, p.pid)
        assert (tp.static.name, list(tp.static.cmdline)) == (comm, real[comm])
        starts = starts_of(env, p.pid)
        # each start is one program, with that program's own command line (or none)
        for ev in starts:
            assert ev["group"] == ev["name"] and ev["cmdline"] in (real[ev["name"]], []), ev
        assert starts[-1]["name"] == comm and starts[-1]["cmdline"] == real[comm]
        for before, after in zip(starts, starts[1:]):
            assert after["previous"] == {"name": before["name"], "group": before["group"]}
        assert "previous" not in starts[0]
        await env.poll()
        assert env.grouper.groups()[comm].procs == 1
        assert metric(env.metrics_text(), "num_procs", comm) == 1
    finally:
        stop(p)
    await async_wait_for("its exit", lambda: env.sink.of("proc.exit", pid=p.pid))
    (ev,) = env.sink.of("proc.exit", pid=p.pid)
    assert (ev["name"], ev["group"], ev["cmdline"]) == (comm, comm, real[comm])


async def test_exec_a_names_the_process_after_the_new_program_with_its_argv(env: Env, tmp_path: Path) -> None:
    shell = program(tmp_path, f"psh{RUN}", "bash")
    comm = f"pse{RUN}"
    sleeper = program(tmp_path, comm, "sleep")
    name = f"pstruth-{RUN}"
    p = subprocess.Popen([str(shell), "-c", f"exec -a {name} {sleeper} 60"], stdin=subprocess.DEVNULL)
    try:
        await async_wait_for(
            f"pid {p.pid} named {comm}",
            lambda: (tp := tracked(env, p.pid)) is not None and tp.group == comm,
            explain=lambda: starts_of(env, p.pid),
        )
        assert list(tracked(env, p.pid).static.cmdline) == [name, "60"]
        starts = starts_of(env, p.pid)
        last = starts[-1]
        assert (last["name"], last["group"], last["cmdline"], last["cmdline_known"]) == (comm, comm, [name, "60"], True)
        # before: the shell, if read before its exec (or this process's copy, before that)
        me, my_argv = this_process()
        real = {me: my_argv, f"psh{RUN}": [str(shell), "-c", f"exec -a {name} {sleeper} 60"], comm: [name, "60"]}
        for ev in starts:
            assert ev["cmdline"] in (real[ev["name"]], []), starts
        for before, after in zip(starts, starts[1:]):
            assert after["previous"] == {"name": before["name"], "group": before["group"]}
    finally:
        stop(p)


async def test_usage_before_an_exec_stays_with_the_old_group(env: Env, tmp_path: Path) -> None:
    burner = program(tmp_path, f"psb{RUN}", "bash")
    comm = f"psa{RUN}"
    after = program(tmp_path, comm, "sleep")
    # some CPU in the shell, then it becomes a sleep that uses none
    script = f"i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done; echo burned; read x; exec {after} 60"
    p = subprocess.Popen([str(burner), "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdin is not None and p.stdout is not None
    try:
        assert await asyncio.to_thread(p.stdout.readline) == b"burned\n"
        assert tracked(env, p.pid) is not None and _cpu(p.pid) > 0.05
        p.stdin.write(b"\n")
        p.stdin.flush()
        await async_wait_for(f"the exec of {comm}", lambda: tracked(env, p.pid).group == comm)
        burned = _cpu(p.pid)
        await env.poll()
        groups = env.grouper.groups()
        assert groups[f"psb{RUN}"].counts.cpu == pytest.approx(burned, abs=0.05)
        assert groups[comm].counts.cpu < 0.05
        assert groups[f"psb{RUN}"].procs == 0 and groups[comm].procs == 1
    finally:
        stop(p)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the argv: the process's own, or none --------------------------------------------------


async def test_a_fork_storm_never_shows_another_programs_command_line(env: Env, tmp_path: Path) -> None:
    # issue 11's scenario: a bash script forks sh children that exit at once; each child's
    # argv is known from its exit code
    script = tmp_path / "storm.sh"
    script.write_text('for i in $(seq 1 200); do sh -c "exit $((i % 250 + 1))"; done\n')
    rounds, misses, children = 3, 0, 0
    for _ in range(rounds):
        parent = subprocess.Popen(["bash", str(script)], stdin=subprocess.DEVNULL)
        await asyncio.to_thread(parent.wait, 60)

        def exits() -> list[dict[str, Any]]:  # the sh children, not $(seq …)
            return [e for e in env.sink.of("proc.exit") if e["ppid"] == parent.pid and e["name"] != "seq"]

        await async_wait_for("200 exits", lambda: len(exits()) >= 200, explain=lambda: len(exits()))
        by_pid = {e["pid"]: e for e in exits()}
        assert len(by_pid) == 200
        for pid, ex in by_pid.items():
            real = ["sh", "-c", f"exit {ex['exit_code']}"]
            (start,) = [s for s in starts_of(env, pid) if s["start_time"] == ex["start_time"]]
            for ev in (start, ex):
                assert ev["cmdline"] == (real if ev["cmdline_known"] else []), ev
                assert (ev["name"], ev["group"]) == ("sh", "sh"), ev
            misses += not start["cmdline_known"]
        children += len(by_pid)
    # counted, and reported where an operator looks
    print(f"argv missed for {misses} of {children} short-lived children ({100 * misses / children:.1f} %)")
    counted = re.search(r"^procstream_kernel_argv_unknown_total (\S+)$", env.metrics_text(), re.M)
    assert counted is not None and float(counted.group(1)) >= misses


# -- reaped children: counted once ---------------------------------------------------------


async def test_a_reaped_childs_io_is_counted_in_its_group_not_again_in_its_parents(env: Env, tmp_path: Path) -> None:
    parent_comm, child_comm = f"psp{RUN}", f"psd{RUN}"
    shell = program(tmp_path, parent_comm, "sh")
    dd = program(tmp_path, child_comm, "dd")
    # on a disk file system (/tmp may be tmpfs, whose writes are no storage I/O)
    out = Path("/var/tmp") / f"procstream-test-{RUN}.bin"
    script = f"{dd} if=/dev/zero of={out} bs=64K count=128 conv=fsync 2>/dev/null; read x"
    p = subprocess.Popen([str(shell), "-c", script], stdin=subprocess.PIPE)
    try:
        await async_wait_for("dd's exit", lambda: env.sink.of("proc.exit", group=child_comm), timeout=30)
        (dd_exit,) = env.sink.of("proc.exit", group=child_comm)
        assert dd_exit["write_bytes"] >= 128 * 64 * 1024, dd_exit
        # the parent has reaped it: its own counters now include dd's bytes
        await async_wait_for("the reap", lambda: _write_bytes(p.pid) >= dd_exit["write_bytes"])
        await env.poll()
        parent_total = _write_bytes(p.pid)
        groups = env.grouper.groups()
        child, parent = groups[child_comm].counts.write_bytes, groups[parent_comm].counts.write_bytes
        assert child == dd_exit["write_bytes"]
        assert child + parent == parent_total  # what was really written, once
        assert parent < 64 * 1024
        text = env.metrics_text()
        assert metric(text, "write_bytes_total", child_comm) == child
        assert metric(text, "write_bytes_total", parent_comm) == parent
    finally:
        stop(p)
        out.unlink(missing_ok=True)


def _write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise AssertionError(f"no write_bytes for {pid}")


# -- zombies ------------------------------------------------------------------------------------


ZOMBIE_PARENT = """
import os, sys
pid = os.posix_spawn(sys.argv[1], [sys.argv[1]], os.environ)
print(pid, flush=True)
sys.stdin.readline()  # keep the child a zombie until told
os.waitpid(pid, 0)
print("reaped", flush=True)
sys.stdin.readline()
"""


async def test_a_zombie_counts_in_its_group_until_reaped_and_its_exit_comes_at_exit(env: Env, tmp_path: Path) -> None:
    comm = f"psz{RUN}"
    child = program(tmp_path, comm, "true")
    p = subprocess.Popen(
        [sys.executable, "-S", "-c", ZOMBIE_PARENT, str(child)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdin is not None and p.stdout is not None
    try:
        pid = int(await asyncio.to_thread(p.stdout.readline))
        await async_wait_for("its exit", lambda: env.sink.of("proc.exit", pid=pid))
        (ex,) = env.sink.of("proc.exit", pid=pid)
        assert (ex["group"], ex["exit_code"], ex["source"]) == (comm, 0, "netlink")
        assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        for _ in range(3):  # poll after poll, as long as it is not reaped
            await env.poll()
            g = env.grouper.groups()[comm]
            assert (g.procs, g.states.zombie) == (1, 1)
            text = env.metrics_text()
            assert metric(text, "num_procs", comm) == 1
            assert metric(text, "states", comm, ',state="Zombie"') == 1
            (update,) = [u for u in env.sink.of("group.update", group=comm)][-1:]
            assert (update["procs"], update["states"]["zombie"]) == (1, 1)
        p.stdin.write("\n")
        p.stdin.flush()
        assert (await asyncio.to_thread(p.stdout.readline)).strip() == "reaped"
        reaped_at = time.time()
        assert ex["ts"] < reaped_at
        await env.poll()
        g = env.grouper.groups()[comm]
        assert (g.procs, g.states.zombie) == (0, 0)
        assert len(env.sink.of("proc.exit", pid=pid)) == 1  # no second exit at the reap
        assert env.sink.of("group.update", group=comm)[-1]["procs"] == 0
    finally:
        p.stdin.close()
        stop(p)


# -- groups of short-lived processes expire; pinned and polled ones stay ----------------------


async def test_groups_of_short_lived_commands_expire_but_a_pinned_one_stays(env: Env, tmp_path: Path) -> None:
    names = [f"pe{RUN}x{i}" for i in range(200)]
    for name in names:
        program(tmp_path, name, "true")
    pinned, seen = names[0], f"psl{RUN}"
    await env.core.call(env.grouper.pin, [pinned])
    env.grouper.group_ttl = 1.0
    # a group a poll saw alive stays, as process-exporter keeps it
    sleeper = subprocess.Popen([str(program(tmp_path, seen, "sleep")), "60"], stdin=subprocess.DEVNULL)
    try:
        await async_wait_for("the sleeper's start", lambda: starts_of(env, sleeper.pid))
        await env.poll()
    finally:
        stop(sleeper)
    script = tmp_path / "many.sh"
    script.write_text("".join(f"{tmp_path / name}\n" for name in names))
    shell = subprocess.Popen(["sh", str(script)], stdin=subprocess.DEVNULL)
    await asyncio.to_thread(shell.wait, 60)

    def exited() -> set[str]:
        return {e["group"] for e in env.sink.of("proc.exit")} & set(names)

    await async_wait_for(
        "200 exits",
        lambda: len(exited()) == 200,
        explain=lambda: (sorted(set(names) - exited()), env.source.stats, env.source.applier.stats),
    )
    await env.poll()  # their groups are reported, empty, for a while
    text = env.metrics_text()
    assert all(metric(text, "num_procs", name) == 0 for name in names)

    async def expired() -> bool:
        await env.poll()
        return not set(env.grouper.groups()) & set(names[1:])

    await async_wait_for("the groups' expiry", expired, timeout=30)
    groups = env.grouper.groups()
    assert pinned in groups and seen in groups
    text = env.metrics_text()
    assert [name for name in names if metric(text, "num_procs", name) is not None] == [pinned]
    assert metric(text, "num_procs", seen) == 0
    removed = {e["group"] for e in env.sink.of("group.update") if e.get("removed")}
    assert removed >= set(names[1:]) and pinned not in removed and seen not in removed
