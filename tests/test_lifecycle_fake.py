"""Lifecycle edges on a fake /proc tree (a real ``procstream serve``, the poll source):
a pid reused within the restart window, two groups restarting at once, a config reload
that changes expectations. These run anywhere."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import orjson

from tests.serve.test_metrics import Exposition
from tests.support.fake_proc_tree import add_proc, remove_proc, ticks_now
from tests.support.processes import running
from tests.support.served import Client, Served, http_get
from tests.support.waiting import wait_for

CONFIG = """
process_names:
  - name: "{{.Comm}}"
    comm: [svc, alpha, beta, gamma]
expected_groups:
  - {group: svc, min: 1}
  - {group: alpha, min: 1}
lifecycle: {restart_window_s: 30}
"""


def serve(fake_proc: Path, tmp_path: Path, config: str = CONFIG) -> Served:
    path = tmp_path / "config.yml"
    path.write_text(config)
    return Served(
        "--procfs", str(fake_proc), "--interval", "0.1", "--source", "poll", "--config", str(path), log=tmp_path / "log"
    )  # fmt: skip


async def connect(srv: Served) -> Client:
    client = await Client.connect(srv.ws)
    await client.wait("the snapshot", lambda: client.of("snapshot"))
    return client


async def test_a_pid_reused_within_the_window_is_a_restart_of_the_old_process(fake_proc: Path, tmp_path: Path) -> None:
    add_proc(fake_proc, 2001, comm="svc", cmdline=("svc", "--serve"), start=ticks_now(-60))
    add_proc(fake_proc, 2002, comm="alpha", cmdline=("alpha",), start=ticks_now(-60))
    with serve(fake_proc, tmp_path) as srv:
        client = await connect(srv)
        try:
            # the same pid, a new start time: another process
            add_proc(fake_proc, 2001, comm="svc", cmdline=("svc", "--serve"))
            start = await client.wait("the new process", lambda: client.of("proc.start", pid=2001))
            (exit_,) = client.of("proc.exit", pid=2001)
            assert client.events().index(exit_) < client.events().index(start[0])
            assert start[0]["restart_of"]["pid"] == 2001
            assert (start[0]["restart_of"]["exit_code"], start[0]["restart_of"]["signal"]) == (None, None)
            assert start[0]["start_time"] != exit_["start_time"]
            # a poll can't tell why it ended; the group never went below its minimum in one poll
            assert exit_["exit_class"] is None and client.of("group.missing") == []
        finally:
            await client.close()


async def test_two_groups_restarting_at_once(fake_proc: Path, tmp_path: Path) -> None:
    add_proc(fake_proc, 2101, comm="alpha", cmdline=("alpha",), start=ticks_now(-60))
    add_proc(fake_proc, 2102, comm="beta", cmdline=("beta",), start=ticks_now(-60))
    add_proc(fake_proc, 2103, comm="beta", cmdline=("beta", "2"), start=ticks_now(-60))
    with serve(fake_proc, tmp_path) as srv:
        client = await connect(srv)
        try:
            # one poll: both groups lose their processes and get new ones, a third group starts
            for pid in (2101, 2102, 2103):
                remove_proc(fake_proc, pid)
            add_proc(fake_proc, 2201, comm="alpha", cmdline=("alpha",))
            add_proc(fake_proc, 2202, comm="beta", cmdline=("beta",))
            add_proc(fake_proc, 2203, comm="gamma", cmdline=("gamma",))
            await client.wait("three starts", lambda: len(client.of("proc.start")) == 3)
            restarts = {e["pid"]: e["restart_of"] for e in client.of("proc.start")}
            assert restarts[2201]["pid"] == 2101
            assert restarts[2202]["pid"] in (2102, 2103)
            assert restarts[2203] is None
            m = await client.wait(
                "the restarts in /metrics",
                lambda: (x := Exposition(http_get(srv.url + "/metrics")[1].decode())).by_group(
                    "procstream_group_restarts_total"
                ).get("beta") == 1 and x,
            )
            assert {g: m.by_group("procstream_group_restarts_total")[g] for g in ("alpha", "beta", "gamma")} == {
                "alpha": 1, "beta": 1, "gamma": 0,
            }  # fmt: skip
            assert m.value("procstream_group_exits_total", groupname="beta", **{"class": "unknown"}) == 2
        finally:
            await client.close()


async def test_a_reload_changes_expectations(fake_proc: Path, tmp_path: Path) -> None:
    add_proc(fake_proc, 2301, comm="alpha", cmdline=("alpha",), start=ticks_now(-60))
    srv = serve(fake_proc, tmp_path).start()
    try:
        client = await connect(srv)
        snap = client.of("snapshot")[0]["groups"]
        assert (snap["svc"]["procs"], snap["svc"]["expected_min"], snap["svc"]["missing"]) == (0, 1, True)
        assert (snap["alpha"]["expected_min"], snap["alpha"].get("missing", False)) == (1, False)
        # svc no longer expected, alpha needs two, gamma (never seen) one
        (tmp_path / "config.yml").write_text(
            CONFIG.replace("{group: svc, min: 1}", "{group: gamma, min: 1}").replace("{group: alpha, min: 1}", "{group: alpha, min: 2, max: 4}")
        )  # fmt: skip
        srv.signal(signal.SIGHUP)
        await client.wait("the new expectations", lambda: len(client.of("group.missing", "group.recovered")) == 3)
        got = [(e["type"], e["group"], e["expected_min"], e["procs"]) for e in client.of("group.missing", "group.recovered")]
        assert got == [
            ("group.missing", "alpha", 2, 1),
            ("group.missing", "gamma", 1, 0),
            ("group.recovered", "svc", None, 0),
        ]
        await client.wait("the groups' new fields", lambda: {"alpha", "gamma", "svc"} <= {e["group"] for e in client.of("group.update")})
        updates = {e["group"]: e for e in client.of("group.update")}
        assert (updates["alpha"]["expected_min"], updates["alpha"]["expected_max"]) == (2, 4)
        assert (updates["gamma"]["procs"], updates["gamma"]["expected_min"]) == (0, 1)
        assert updates["svc"]["expected_min"] is None
        api = orjson.loads(http_get(srv.url + "/api/snapshot")[1])["groups"]
        assert [(api[g]["expected_min"], api[g]["missing"]) for g in ("alpha", "gamma", "svc")] == [(2, True), (1, True), (None, False)]
        m = Exposition(http_get(srv.url + "/metrics")[1].decode())
        assert m.by_group("procstream_group_expected_min") == {"alpha": 2, "gamma": 1}
        assert m.by_group("procstream_group_missing") == {"alpha": 1, "gamma": 1}
        # and the new minimum is met
        add_proc(fake_proc, 2302, comm="alpha", cmdline=("alpha",))
        await client.wait("alpha recovered", lambda: client.of("group.recovered", group="alpha"))
        # the reload was logged with what it holds
        wait_for("the reload's log line", lambda: "2 expected groups" in srv.output())
        await client.close()
    finally:
        srv.stop()


def test_tail_prints_the_lifecycle_events_its_types_select(fake_proc: Path, tmp_path: Path) -> None:
    with serve(fake_proc, tmp_path) as srv:
        epoch = orjson.loads(http_get(srv.url + "/api/snapshot")[1])["epoch"]
        out = tmp_path / "tail.out"
        # from the very start of the stream: the start-up's group.missing included
        with out.open("wb") as f, running(
            sys.executable, "-m", "procstream", "tail", srv.ws, "--types", "group.missing,group.recovered",
            "--since", "0", "--epoch", epoch, stdout=f, stderr=subprocess.DEVNULL,
        ):  # fmt: skip

            def printed() -> list[dict]:
                return [orjson.loads(line) for line in out.read_bytes().splitlines()]

            wait_for("the start-up's group.missing", lambda: printed())
            add_proc(fake_proc, 2401, comm="svc", cmdline=("svc",))
            wait_for("group.recovered", lambda: len(printed()) == 3)
        assert [(e["type"], e["group"], e["procs"]) for e in printed()] == [
            ("group.missing", "svc", 0),  # in the config's order
            ("group.missing", "alpha", 0),
            ("group.recovered", "svc", 1),
        ]
        assert printed()[0]["seq"] == 1
