"""``proc.update`` over a real ``procstream serve`` and real websockets clients: only who
names the type gets it, for the processes it selects, at every poll they change; nobody
else pays for it; snapshots carry every process's numbers."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from procstream.schema import LIVE_FIELDS, PROC_FIELDS
from tests.serve.test_metrics import scrape
from tests.support.processes import stop
from tests.support.served import Client, Served, http_get
from tests.support.waiting import wait_for

# Busy a fifth of the time, in short bursts: its CPU time grows at every poll.
BUSY = """
import sys, time
print("ready", flush=True)
while True:
    t = time.monotonic()
    while time.monotonic() - t < 0.02:
        pass
    time.sleep(0.08)
"""
IDLE = "import sys; print('ready', flush=True); sys.stdin.read()"


@pytest.fixture
def tag() -> str:
    return secrets.token_hex(3)


@pytest.fixture
def served(tmp_path: Path, tag: str) -> Iterator[Served]:
    config = tmp_path / "config.yml"
    config.write_text(
        "process_names:\n"
        f"  - name: \"pu-{{{{.Matches.Role}}}}\"\n    cmdline: ['pu-{tag}-(?P<Role>busy|idle)']\n"
    )
    with Served("--config", str(config), "--interval", "0.25", "--source", "poll", log=tmp_path / "log") as srv:
        yield srv


@pytest.fixture
def procs(tag: str) -> Iterator[dict[str, int]]:
    """Two busy processes (group pu-busy) and one idle one (pu-idle), by role."""
    started: dict[str, subprocess.Popen] = {}
    try:
        for role, code in (("busy1", BUSY), ("busy2", BUSY), ("idle", IDLE)):
            arg = f"pu-{tag}-{role.rstrip('12')}"
            p = subprocess.Popen([sys.executable, "-c", code, arg], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            started[role] = p
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        yield {role: p.pid for role, p in started.items()}
    finally:
        for p in started.values():
            stop(p)


def polls(c: Client) -> list[list[dict[str, Any]]]:
    """The events c received (proc.update has no seq), cut into polls (each ends with its cycle)."""
    out: list[list[dict[str, Any]]] = [[]]
    for obj in c.of("proc.start", "proc.exit", "group.update", "proc.update", "cycle"):
        out[-1].append(obj)
        if obj["type"] == "cycle":
            out.append([])
    return out[:-1]


def updated(batch: list[dict[str, Any]]) -> set[int]:
    return {e["pid"] for e in batch if e["type"] == "proc.update"}


async def test_only_subscribers_naming_proc_update_get_it(served: Served, procs: dict[str, int]) -> None:
    everything = await Client.connect(served.ws)
    wildcard = await Client.connect(served.ws + "?types=*,proc.*")
    watcher = await Client.connect(served.ws + "?types=proc.update,cycle&groups=pu-busy")
    try:
        busy = {procs["busy1"], procs["busy2"]}
        await watcher.wait("5 polls with updates", lambda: len([b for b in polls(watcher) if updated(b)]) >= 5)
        # once the processes are known (the first polls may predate them), every poll
        # brings the changes of both busy processes, and nothing of the idle one
        seen = [updated(b) for b in polls(watcher)]
        first = next(i for i, pids in enumerate(seen) if pids == busy)
        assert all(pids == busy for pids in seen[first:]), seen
        update = watcher.of("proc.update", pid=procs["busy1"])[-1]
        assert update["group"] == "pu-busy" and update["state"] in "RS" and update["cpu_s"] > 0
        assert update["threads"] == 1 and update["mem_resident"] > 0 and update["open_fds"] >= 3
        assert max(u["cpu_pct"] for u in watcher.of("proc.update", pid=procs["busy1"])) > 0
        # the others were in the same polls and never got one
        await everything.wait("as many cycles", lambda: len(everything.of("cycle")) >= len(watcher.of("cycle")))
        # the process as the others know it: the same (pid, start_time) key
        known = [p for o in everything.of("snapshot") for p in o["procs"]] + everything.of("proc.start")
        assert update["start_time"] in {p["start_time"] for p in known if p["pid"] == procs["busy1"]}
        for c in (everything, wildcard):
            assert c.of("proc.update") == []
    finally:
        for c in (everything, wildcard, watcher):
            await c.close()


async def test_pids_select_processes_and_follow_a_new_subscription(served: Served, procs: dict[str, int]) -> None:
    one, other = procs["busy1"], procs["busy2"]
    c = await Client.connect(served.ws + f"?types=proc.update,cycle&pids={one}")
    try:
        hello = await c.wait("hello", lambda: c.of("hello"))
        assert hello[0]["filter"] == {"types": ["cycle", "proc.update"], "groups": None, "pids": [one]}
        await c.wait("updates of the chosen pid", lambda: len(c.of("proc.update", pid=one)) >= 3)
        assert {e["pid"] for e in c.of("proc.update")} == {one}
        await c.send({"op": "subscribe", "types": ["proc.update", "cycle"], "pids": [other]})
        await c.wait("subscribed", lambda: c.of("subscribed"))
        await c.wait("updates of the other", lambda: len(c.of("proc.update", pid=other)) >= 2)
        ack = next(i for i, o in enumerate(c.objects) if o["type"] == "subscribed")
        after = [o for o in c.objects[ack:] if o["type"] == "proc.update"]
        assert {e["pid"] for e in after} == {other}
        assert all("seq" not in e for e in c.of("proc.update"))  # readings, not numbered
    finally:
        await c.close()


async def test_proc_update_costs_nothing_while_nobody_subscribes(served: Served, procs: dict[str, int]) -> None:
    metrics = served.url + "/metrics"

    def published() -> float:
        exp = scrape(metrics)
        return exp.samples.get(("procstream_events_published_total", frozenset({("type", "proc.update")})), 0.0)

    def after_polls(n: int) -> None:
        start = scrape(metrics).value("procstream_polls_total")
        wait_for(f"{n} polls", lambda: scrape(metrics).value("procstream_polls_total") >= start + n)

    c = await Client.connect(served.ws)
    try:
        after_polls(4)
        assert published() == 0  # a subscriber without proc.update: none built
        w = await Client.connect(served.ws + "?types=proc.update&groups=pu-busy")
        await w.wait("an update", lambda: w.of("proc.update"))
        await w.close()
        after_polls(2)  # a poll that was under way when it left may still have built some
        done = published()
        assert done > 0
        after_polls(4)
        assert published() == done
    finally:
        await c.close()


async def test_snapshots_carry_every_processs_numbers(served: Served, procs: dict[str, int]) -> None:
    def read_by_a_poll() -> dict[int, dict[str, Any]] | None:
        status, body, _ = http_get(served.url + "/api/snapshot?groups=pu-busy,pu-idle")
        assert status == 200
        found = {p["pid"]: p for p in orjson.loads(body)["procs"]}
        wanted = [found.get(pid) for pid in procs.values()]
        if not all(p is not None and p["cpu_s"] is not None for p in wanted):
            return None
        idle = found[procs["idle"]]
        # settled: asleep when read, and a poll interval past the CPU its start-up took
        return found if idle["state"] == "S" and idle["cpu_pct"] == 0.0 else None

    found = wait_for("a poll to read the test's processes", read_by_a_poll)
    idle = found[procs["idle"]]
    assert idle["group"] == "pu-idle" and idle["state"] == "S" and idle["cpu_pct"] == 0.0
    assert idle["mem_resident"] > 0 and idle["threads"] == 1 and idle["fd_ratio"] > 0
    assert set(LIVE_FIELDS) <= set(idle) and set(PROC_FIELDS) <= set(idle)
    c = await Client.connect(served.ws + "?groups=pu-busy")
    try:
        snap = (await c.wait("a snapshot", lambda: c.of("snapshot")))[0]
        busy = {p["pid"]: p for p in snap["procs"]}
        assert set(busy) == {procs["busy1"], procs["busy2"]}
        assert all(p["cpu_s"] > 0 and p["group"] == "pu-busy" for p in busy.values())
    finally:
        await c.close()
