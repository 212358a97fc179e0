"""Lifecycle end to end: a real ``procstream serve``, real processes on the real /proc
with the kernel source (root or CAP_NET_ADMIN; skipped, saying why, elsewhere), and a
WebSocket subscriber, the event log, ``/metrics`` and ``/api/snapshot`` as a user reads them.

Every process a test starts, it stops; memory cgroups it creates, it removes; core files
land in the test's own directory and are deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from procstream.netlink import connector as netlink
from tests.serve.test_metrics import Exposition
from tests.support.served import Client, Served, http_get
from tests.support.processes import running, stop
from tests.support.waiting import wait_for

OK, WHY = netlink.probe("/proc")
live = pytest.mark.skipif(not OK, reason=f"kernel events unavailable here: {WHY}")

RUN = os.getpid()
EXP, LOOP, EXIT, OOM = (f"lc-{kind}-{RUN}" for kind in ("exp", "loop", "exit", "oom"))
CONFIG = f"""
process_names:
  - {{name: {EXP}, cmdline: ['pslc-exp-{RUN}']}}
  - {{name: {LOOP}, cmdline: ['pslc-loop-{RUN}']}}
  - {{name: {EXIT}, cmdline: ['pslc-exit-{RUN}']}}
  - {{name: {OOM}, cmdline: ['pslc-oom-{RUN}']}}
expected_groups:
  - {{group: {EXP}, min: 1}}
lifecycle:
  restart_window_s: 3
  crashloop_restarts: 3
  crashloop_window_s: 60
  stable_after_s: 1.5
"""
PY = sys.executable
SLEEPER = "import time; time.sleep(120)"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    config = tmp_path / "config.yml"
    config.write_text(CONFIG)
    srv = Served(
        "--config", str(config), "--interval", "0.3", "--source", "netlink",
        "--event-log", str(tmp_path / "events.ndjson"), log=tmp_path / "serve.log",
    )  # fmt: skip
    with srv:
        yield srv


def metrics(srv: Served) -> Exposition:
    status, body, _ = http_get(srv.url + "/metrics")
    assert status == 200
    return Exposition(body.decode())


def event_log(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "events.ndjson"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


async def subscribe(srv: Served) -> Client:
    client = await Client.connect(srv.ws + "?types=proc.*,group.missing,group.recovered,group.crashloop,group.stable")
    await client.wait("the snapshot", lambda: client.of("snapshot"))
    return client


# -- expected groups -----------------------------------------------------------------------


@live
async def test_an_expected_group_never_started_then_started_then_killed(served: Served, tmp_path: Path) -> None:
    # missing from the first poll: the event log's first line, the series at 0
    first = wait_for("the start-up's group.missing", lambda: event_log(tmp_path))[0]
    assert {k: first[k] for k in ("type", "group", "expected_min", "procs")} == {
        "type": "group.missing", "group": EXP, "expected_min": 1, "procs": 0,
    }  # fmt: skip
    m = wait_for("the first poll's metrics", lambda: (x := metrics(served)).by_group("namedprocess_namegroup_num_procs") and x)
    assert m.by_group("namedprocess_namegroup_num_procs")[EXP] == 0
    assert (m.by_group("procstream_group_missing"), m.by_group("procstream_group_expected_min")) == ({EXP: 1}, {EXP: 1})
    status, body, _ = http_get(served.url + "/api/snapshot")
    group = orjson.loads(body)["groups"][EXP]
    assert (status, group["procs"], group["expected_min"], group["missing"]) == (200, 0, 1, True)

    client = await subscribe(served)
    try:
        assert client.of("snapshot")[0]["groups"][EXP]["missing"] is True
        with running(PY, "-S", "-c", SLEEPER, f"pslc-exp-{RUN}") as proc:
            recovered = await client.wait("group.recovered", lambda: client.of("group.recovered", group=EXP))
            assert (recovered[0]["procs"], recovered[0]["expected_min"]) == (1, 1)
            wait_for("missing 0 in /metrics", lambda: metrics(served).by_group("procstream_group_missing") == {EXP: 0})
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
            missing = await client.wait("group.missing", lambda: client.of("group.missing", group=EXP))
            assert missing[0]["procs"] == 0
            (exit_,) = client.of("proc.exit", group=EXP)
            assert (exit_["pid"], exit_["signal"], exit_["exit_class"], exit_["oom_killed"]) == (proc.pid, 15, "signal", False)
            # one event per change, in order: the exit, then what it caused
            kinds = [o["type"] for o in client.events()]
            assert kinds == ["proc.start", "group.recovered", "proc.exit", "group.missing"]
        wait_for("missing 1 in /metrics", lambda: metrics(served).by_group("procstream_group_missing") == {EXP: 1})
        assert [e["type"] for e in event_log(tmp_path) if e.get("group") == EXP] == [
            "group.missing", "proc.start", "group.recovered", "proc.exit", "group.missing",
        ]  # fmt: skip
    finally:
        await client.close()


# -- restarts and crash loops --------------------------------------------------------------


@live
async def test_a_supervisor_loop_restarts_crash_loops_then_stays_up(served: Served, tmp_path: Path) -> None:
    stop_file = tmp_path / "stop"
    script = tmp_path / "supervise.sh"
    crash = "import sys, time; time.sleep(0.05); sys.exit(1)"
    script.write_text(
        f"while [ ! -e {stop_file} ]; do {PY} -S -c '{crash}' pslc-loop-{RUN}; done\n"
        f"{PY} -S -c '{SLEEPER}' pslc-loop-{RUN}\n"
    )
    client = await subscribe(served)
    try:
        with running("sh", str(script), group=True):
            await client.wait("a crash loop", lambda: client.of("group.crashloop", group=LOOP), timeout=30)
            await client.wait("a few more restarts", lambda: len(client.of("proc.exit", group=LOOP)) >= 6, timeout=30)
            stop_file.touch()
            stable = await client.wait("group.stable", lambda: client.of("group.stable", group=LOOP), timeout=30)
            assert stable[0]["window_s"] == 1.5 and stable[0]["restarts"] >= 6
            ups = client.of("proc.start", group=LOOP)
            exits = client.of("proc.exit", group=LOOP)
            # the last one stayed up: it is running, not exited
            assert {s["pid"] for s in ups} - {e["pid"] for e in exits} == {ups[-1]["pid"]}
            snapshot = orjson.loads(http_get(served.url + "/api/snapshot")[1])["groups"][LOOP]
            assert (snapshot["restarts"], snapshot["crashloop"]) == (len(ups) - 1, False)
            assert snapshot["last_exit"]["exit_class"] == "error"
        assert len(client.of("group.crashloop", group=LOOP)) == 1
        assert len(client.of("group.stable", group=LOOP)) == 1
        (loop,) = client.of("group.crashloop", group=LOOP)
        assert (loop["restarts"], loop["window_s"]) == (3, 60.0)
        # every exit was an error exit; every start after the first replaced the one before
        assert all((e["exit_code"], e["signal"], e["exit_class"]) == (1, None, "error") for e in exits)
        assert ups[0]["restart_of"] is None
        by_pid = {e["pid"]: e for e in exits}
        events = client.events()
        for start in ups[1:]:
            r = start["restart_of"]
            assert r is not None, start
            old = by_pid[r["pid"]]
            assert (r["exit_code"], r["signal"]) == (1, None)
            assert 0 <= r["down_s"] < 3 and r["down_s"] == pytest.approx(start["start_time"] - old["ts"], abs=0.02)
            assert events.index(old) < events.index(start)  # it replaced an exit already reported
        m = wait_for(
            "the restarts in /metrics",
            lambda: (x := metrics(served)).by_group("procstream_group_restarts_total").get(LOOP) == len(ups) - 1 and x,
        )
        assert m.value("procstream_group_exits_total", groupname=LOOP, **{"class": "error"}) == len(exits)
        assert m.by_group("procstream_group_crashloop")[LOOP] == 0
    finally:
        await client.close()


# -- why a process died --------------------------------------------------------------------


def core_files(where: Path) -> list[Path]:
    return [p for p in where.iterdir() if p.name == "core" or p.name.startswith("core.")]


@contextlib.contextmanager
def cores_kept_in(where: Path) -> Iterator[None]:
    """Cores of the children started in ``where`` land there, and are deleted after."""
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"core_pattern {pattern!r} sends cores outside the test's directory; not changing it for a test")
    try:
        yield
    finally:
        for core in core_files(where):
            core.unlink()


def with_cores() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


@live
async def test_exit_classes(served: Served, tmp_path: Path) -> None:
    cases = {
        "ok": ("import time, sys; time.sleep(0.2); sys.exit(0)", (0, None, "ok", False)),
        "error": ("import time, sys; time.sleep(0.2); sys.exit(3)", (3, None, "error", False)),
        "term": ("import os, time; time.sleep(0.2); os.kill(os.getpid(), 15)", (None, 15, "signal", False)),
        "kill": ("import os, time; time.sleep(0.2); os.kill(os.getpid(), 9)", (None, 9, "signal", False)),
        "segv": ("import os, time; time.sleep(0.2); os.kill(os.getpid(), 11)", (None, 11, "signal", False)),
    }
    client = await subscribe(served)
    pids: dict[str, int] = {}
    try:
        with cores_kept_in(tmp_path):
            for key, (code, _) in cases.items():
                p = subprocess.Popen(
                    [PY, "-S", "-c", code, f"pslc-exit-{RUN}-{key}"], cwd=tmp_path,
                    preexec_fn=with_cores if key == "segv" else None,
                )  # fmt: skip
                p.wait(30)
                pids[key] = p.pid
            await client.wait("every exit", lambda: len(client.of("proc.exit", group=EXIT)) == len(cases))
            assert len(core_files(tmp_path)) == 1, "the SIGSEGV dumped one core, here"
        by_pid = {e["pid"]: e for e in client.of("proc.exit", group=EXIT)}
        for key, (_, want) in cases.items():
            e = by_pid[pids[key]]
            assert (e["exit_code"], e["signal"], e["exit_class"], e["oom_killed"]) == want, key
            assert e["core_dumped"] is (key == "segv"), key
        m = wait_for(
            "the exits in /metrics",
            lambda: (x := metrics(served)).value("procstream_group_exits_total", groupname=EXIT, **{"class": "signal"}) == 3 and x,
        )
        counts = {c: m.value("procstream_group_exits_total", groupname=EXIT, **{"class": c}) for c in ("ok", "error", "oom_kill")}
        assert counts == {"ok": 1, "error": 1, "oom_kill": 0}
    finally:
        await client.close()
    assert core_files(tmp_path) == []


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[Path]:
    """A memory cgroup of ``limit`` bytes, no swap: its ``cgroup.procs`` (removed after)."""
    name = f"procstream-test-{RUN}"
    v2 = Path("/sys/fs/cgroup")
    candidates = [p for p in (v2, v2 / "unified") if "memory" in _read(p / "cgroup.controllers").split()]
    if candidates:
        cg = candidates[0] / name
        settings = {"memory.max": str(limit), "memory.swap.max": "0"}
    elif Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
        cg = Path("/sys/fs/cgroup/memory") / name
        settings = {"memory.limit_in_bytes": str(limit), "memory.swappiness": "0"}
    else:
        pytest.skip("no memory cgroup controller on this machine (neither cgroup v2 nor v1)")
    try:
        cg.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup: {exc}")
    try:
        for key, value in settings.items():
            if (cg / key).exists():
                (cg / key).write_text(value)
        yield cg / "cgroup.procs"
    finally:
        wait_for("the cgroup to empty", lambda: not _read(cg / "cgroup.procs").strip(), timeout=10)
        cg.rmdir()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@live
async def test_an_oom_kill_for_real(served: Served) -> None:
    if os.geteuid() != 0:
        pytest.skip("a memory cgroup needs root")
    client = await subscribe(served)
    try:
        with memory_cgroup(64 << 20) as procs:
            # joins the cgroup, then becomes a python that writes 512 MiB
            hog = 'b = b"\\x01" * (512 << 20)'
            p = subprocess.Popen(
                ["sh", "-c", 'echo $$ > "$1" && exec "$2" -S -c "$3" "$0"', f"pslc-oom-{RUN}", str(procs), PY, hog],
                stderr=subprocess.PIPE,
            )
            try:
                p.wait(60)
            finally:
                stop(p)
            if p.returncode != -signal.SIGKILL:
                pytest.skip(f"the kernel did not OOM-kill the process (exit {p.returncode}: {p.stderr.read()!r})")
        (e,) = await client.wait("its exit", lambda: client.of("proc.exit", group=OOM, pid=p.pid))
        assert (e["signal"], e["exit_class"], e["oom_killed"]) == (9, "oom_kill", True)
        wait_for("the OOM kill in /metrics", lambda: metrics(served).by_group("procstream_group_oom_kills_total").get(OOM) == 1)
        m = metrics(served)
        assert m.value("procstream_group_exits_total", groupname=OOM, **{"class": "oom_kill"}) == 1
        assert m.value("procstream_oom_source", source="kmsg") == 1
    finally:
        await client.close()


def test_the_serve_log_says_where_oom_kills_come_from(served: Served) -> None:
    wait_for("the start-up lines", lambda: "OOM kills:" in served.output())
    assert re.search(r"OOM kills: (OOM kills from the kernel log|.*oom_kill counter|.*not told apart)", served.output())
