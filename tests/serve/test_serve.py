"""``procstream serve`` as users run it: a real server process, real websockets clients
on loopback, over a fake /proc the test changes between polls and over live processes."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
from websockets.exceptions import ConnectionClosed

from tests.support.fake_proc_tree import add_proc, remove_proc
from tests.support.served import Client, Served, http_get, seqs
from tests.support.processes import running
from tests.support.waiting import async_wait_for, wait_for




async def test_hello_snapshot_then_live_events_over_a_fake_proc(fake_proc: Path, tmp_path: Path) -> None:
    with Served("--procfs", str(fake_proc), "--interval", "0.2", log=tmp_path / "log") as srv:
        c = await Client.connect(srv.ws)
        try:
            await c.wait("hello and snapshot", lambda: c.of("snapshot"))
            hello, snapshot = c.objects[0], c.objects[1]
            assert hello["type"] == "hello" and hello["v"] == 1 and hello["interval"] == 0.2
            assert snapshot["type"] == "snapshot" and snapshot["seq"] == hello["head_seq"]
            assert set(snapshot["groups"]) == {"sleep", "a) (b c)", "python3"}
            assert {p["pid"] for p in snapshot["procs"]} == {1000, 1001, 1006, 1010}

            add_proc(fake_proc, 2000, comm="worker", cmdline=("worker", "--id", "1"), start=90_000, utime=50)
            await c.wait("the new process", lambda: c.of("proc.start", pid=2000))
            (start,) = c.of("proc.start", pid=2000)
            assert (start["group"], start["cmdline"], start["source"]) == ("worker", ["worker", "--id", "1"], "poll")

            # pid reuse: same pid, a new start time -> the old one exits, a new one starts
            add_proc(fake_proc, 2000, comm="other", cmdline=("other",), start=95_000)
            await c.wait("pid reuse", lambda: c.of("proc.start", pid=2000, group="other"))
            (old_exit,) = c.of("proc.exit", pid=2000)
            assert old_exit["group"] == "worker" and old_exit["cpu_s"] == 0.5
            assert old_exit["seq"] < c.of("proc.start", pid=2000, group="other")[0]["seq"]

            remove_proc(fake_proc, 2000)
            await c.wait("its exit", lambda: c.of("proc.exit", pid=2000, group="other"))
            updates = c.of("group.update", group="worker")
            assert updates and updates[-1]["procs"] == 0 and updates[-1]["cpu_s"] == 0.5

            events = c.events()
            assert seqs(events) == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(events)))
        finally:
            await c.close()
        assert srv.stop() == 0


async def test_live_processes_start_and_exit_and_snapshot_api(tmp_path: Path) -> None:
    exe = tmp_path / "psserve_live"
    shutil.copy("/bin/sleep", exe)
    with Served("--interval", "0.2", "--source", "poll", log=tmp_path / "log") as srv:
        c = await Client.connect(srv.ws + "?types=proc.*&groups=psserve_live")
        try:
            await c.wait("snapshot", lambda: c.of("snapshot"))
            with running(str(exe), "60") as p:
                await c.wait("start", lambda: c.of("proc.start", pid=p.pid))
                status, body, headers = http_get(srv.url + "/api/snapshot")
                assert status == 200 and headers["Content-Type"].startswith("application/json")
                doc = orjson.loads(body)
                assert doc["groups"]["psserve_live"]["procs"] == 1
                assert any(proc["pid"] == p.pid for proc in doc["procs"])
            await c.wait("exit", lambda: c.of("proc.exit", pid=p.pid))
            # the filter held: only proc.* of that group, plus control objects
            assert {o["type"] for o in c.objects} <= {"hello", "snapshot", "proc.start", "proc.exit", "bookmark"}
            assert all(o.get("group", "psserve_live") == "psserve_live" for o in c.events())
        finally:
            await c.close()


async def test_sigterm_closes_clients_with_1001_and_exits_0(tmp_path: Path) -> None:
    srv = Served("--interval", "0.2", "--source", "poll", log=tmp_path / "log").start()
    try:
        clients = [await Client.connect(srv.ws) for _ in range(3)]
        for c in clients:
            await c.wait("snapshot", lambda c=c: c.of("snapshot"))
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        code = await asyncio.to_thread(srv.proc.wait, 5)
        assert code == 0 and time.monotonic() - t0 < 5
        for c in clients:
            await c.wait("the close", lambda c=c: c._reader.done())
            assert isinstance(c.closed, ConnectionClosed) or c.ws.close_code is not None
            assert c.ws.close_code == 1001
    finally:
        srv.stop()


async def test_resume_after_a_disconnect_replays_exactly_what_was_missed(fake_proc: Path, tmp_path: Path) -> None:
    with Served("--procfs", str(fake_proc), "--interval", "0.1", log=tmp_path / "log") as srv:
        c = await Client.connect(srv.ws)
        await c.wait("snapshot", lambda: c.of("snapshot"))
        add_proc(fake_proc, 3000, comm="a1", cmdline=("a1",), start=80_000)
        await c.wait("a1", lambda: c.of("proc.start", pid=3000))
        hello = c.objects[0]
        last = c.events()[-1]["seq"]
        await c.close()
        seen_before = c.events()
        # while nobody listens
        add_proc(fake_proc, 3001, comm="a2", cmdline=("a2",), start=80_100)
        remove_proc(fake_proc, 3000)

        def polled_while_away() -> bool:
            snap = orjson.loads(http_get(f"{srv.url}/api/snapshot")[1])
            pids = {p["pid"] for p in snap["procs"]}
            return 3001 in pids and 3000 not in pids

        await async_wait_for("the server to poll the changes", lambda: asyncio.to_thread(polled_while_away))
        c2 = await Client.connect(f"{srv.ws}?since={last}&epoch={hello['epoch']}")
        try:
            await c2.wait("the missed start", lambda: c2.of("proc.start", pid=3001))
            await c2.wait("the missed exit", lambda: c2.of("proc.exit", pid=3000))
            assert not c2.of("reset") and not c2.of("snapshot")
            replay = c2.events()
            assert seqs(replay)[0] == last + 1
            assert seqs(replay) == list(range(last + 1, last + 1 + len(replay)))
            assert not set(seqs(seen_before)) & set(seqs(replay))
        finally:
            await c2.close()
        # a foreign epoch gets reset + snapshot
        c3 = await Client.connect(f"{srv.ws}?since={last}&epoch=not-this-one")
        try:
            await c3.wait("reset", lambda: c3.of("snapshot"))
            assert c3.of("reset") and c3.objects.index(c3.of("reset")[0]) < c3.objects.index(c3.of("snapshot")[0])
        finally:
            await c3.close()


async def test_event_log_holds_the_wire_objects(fake_proc: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "events.ndjson"
    with Served("--procfs", str(fake_proc), "--interval", "0.1", "--event-log", str(log_file), log=tmp_path / "log") as srv:
        c = await Client.connect(srv.ws)
        try:
            await c.wait("snapshot", lambda: c.of("snapshot"))
            add_proc(fake_proc, 4000, comm="logged", cmdline=("logged", "--password=hunter2"), start=85_000)
            await c.wait("start", lambda: c.of("proc.start", pid=4000))
            remove_proc(fake_proc, 4000)
            await c.wait("exit", lambda: c.of("proc.exit", pid=4000))
            wire = [o for o in c.objects if o.get("type") in ("proc.start", "proc.exit")]
        finally:
            await c.close()
        assert srv.stop() == 0
    logged = [orjson.loads(line) for line in log_file.read_bytes().splitlines()]
    assert logged == wire
    assert b"hunter2" not in log_file.read_bytes()


async def test_sighup_reloads_a_good_config_and_keeps_the_old_on_a_bad_one(fake_proc: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("process_names:\n  - name: 'first-{{.Comm}}'\n    cmdline: ['.+']\n")
    srv = Served("--procfs", str(fake_proc), "--interval", "0.1", "--config", str(config), log=tmp_path / "log").start()
    c = await Client.connect(srv.ws)
    try:
        await c.wait("snapshot", lambda: c.of("snapshot"))
        assert "first-sleep" in c.of("snapshot")[0]["groups"]
        config.write_text("process_names:\n  - name: 'second-{{.Comm}}'\n    cmdline: ['.+']\n")
        srv.signal(signal.SIGHUP)
        wait_for("the reload", lambda: "reloaded" in srv.output())
        add_proc(fake_proc, 5000, comm="fresh", cmdline=("fresh",), start=86_000)
        await c.wait("new rules", lambda: c.of("proc.start", pid=5000))
        assert c.of("proc.start", pid=5000)[0]["group"] == "second-fresh"
        config.write_text("process_names:\n  - name: '{{.Nope}}'\n    cmdline: ['.+']\n")
        srv.signal(signal.SIGHUP)
        wait_for("the refusal", lambda: "keeping the previous config" in srv.output())
        add_proc(fake_proc, 5001, comm="later", cmdline=("later",), start=86_100)
        await c.wait("old rules kept", lambda: c.of("proc.start", pid=5001))
        assert c.of("proc.start", pid=5001)[0]["group"] == "second-later"
        assert srv.proc.poll() is None
    finally:
        await c.close()
        srv.stop()


def test_bad_config_stops_serve_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("process_names:\n  - comm: [a]\n    bogus: 1\n")
    r = subprocess.run(
        [sys.executable, "-m", "procstream", "serve", "--config", str(bad), "--listen", "127.0.0.1:0"],
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert str(bad) in r.stderr.decode() and "process_names[0]" in r.stderr.decode()


async def test_healthz_turns_503_when_polls_fail(fake_proc: Path, tmp_path: Path) -> None:
    with Served("--procfs", str(fake_proc), "--interval", "0.1", log=tmp_path / "log") as srv:
        assert http_get(srv.url + "/healthz")[0] == 200
        moved = fake_proc.parent / "moved"
        fake_proc.rename(moved)  # the /proc mount disappears
        try:
            wait_for("503", lambda: http_get(srv.url + "/healthz")[0] == 503)
            body = orjson.loads(http_get(srv.url + "/healthz")[1])
            assert body["status"] == "stale" and body["last_error"]
        finally:
            moved.rename(fake_proc)
        wait_for("200 again", lambda: http_get(srv.url + "/healthz")[0] == 200)
        assert srv.proc.poll() is None


async def test_event_log_follows_logrotate_survives_a_lost_directory_and_rotates(fake_proc: Path, tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    log_file = logdir / "events.ndjson"
    args = ("--procfs", str(fake_proc), "--interval", "0.1", "--event-log", str(log_file),
            "--event-log-max-bytes", "4000", "--event-log-backups", "2")  # fmt: skip
    with Served(*args, log=tmp_path / "log") as srv:

        def logged(pid: int, path: Path = log_file) -> bool:
            return path.exists() and any(orjson.loads(line)["pid"] == pid for line in path.read_bytes().splitlines())

        add_proc(fake_proc, 6000, comm="first", cmdline=("first",), start=70_000)
        wait_for("the first start in the log", lambda: logged(6000))
        # logrotate: move the file away, then SIGHUP
        log_file.rename(logdir / "events.ndjson.moved")
        srv.signal(signal.SIGHUP)
        add_proc(fake_proc, 6001, comm="second", cmdline=("second",), start=70_100)
        wait_for("the next start in a new file", lambda: logged(6001))
        assert not logged(6001, logdir / "events.ndjson.moved")
        # the directory disappears: errors are counted, the stream goes on
        shutil.rmtree(logdir)
        add_proc(fake_proc, 6002, comm="third", cmdline=("third",), start=70_200)

        def errors() -> float:
            body = http_get(srv.url + "/metrics")[1].decode()
            line = next(x for x in body.splitlines() if x.startswith("procstream_event_log_write_errors_total"))
            return float(line.split()[-1])

        wait_for("write errors counted", lambda: errors() > 0)
        assert srv.proc.poll() is None and http_get(srv.url + "/healthz")[0] == 200
        logdir.mkdir()
        add_proc(fake_proc, 6003, comm="fourth", cmdline=("fourth",), start=70_300)
        wait_for("logging to resume", lambda: logged(6003))
        # size rotation keeps whole lines and the backups asked for
        for i in range(30):
            add_proc(fake_proc, 6100 + i, comm=f"r{i}", cmdline=(f"r{i}", "x" * 60), start=71_000 + i)
        wait_for("the last of them", lambda: any(logged(6129, p) for p in logdir.glob("events.ndjson*")))
        assert (logdir / "events.ndjson.1").exists()
        assert sorted(p.name for p in logdir.iterdir()) <= ["events.ndjson", "events.ndjson.1", "events.ndjson.2"]
        for p in logdir.iterdir():
            assert p.stat().st_size <= 4000
            for line in p.read_bytes().splitlines():
                orjson.loads(line)  # whole lines only


async def test_procstream_tail_prints_ndjson_and_carries_on_across_a_restart(fake_proc: Path, tmp_path: Path) -> None:
    srv = Served("--procfs", str(fake_proc), "--interval", "0.1", log=tmp_path / "log").start()
    out, err = tmp_path / "tail.out", tmp_path / "tail.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        tail = subprocess.Popen(
            [sys.executable, "-m", "procstream", "tail", srv.ws, "--types", "proc.*"], stdout=fo, stderr=fe
        )
    try:

        def lines() -> list[dict]:
            return [orjson.loads(x) for x in out.read_bytes().splitlines()]

        def has(pid: int, type_: str = "proc.start") -> bool:
            return any(e["pid"] == pid and e["type"] == type_ for e in lines())

        def subscribers() -> int:
            body = http_get(srv.url + "/metrics")[1].decode()
            return int(float(next(x for x in body.splitlines() if x.startswith("procstream_subscribers ")).split()[1]))

        wait_for("tail to subscribe", lambda: subscribers() == 1, timeout=15)  # it prints live events only
        add_proc(fake_proc, 7000, comm="tailed", cmdline=("tailed",), start=60_000)
        wait_for("tail to print the start", lambda: has(7000))
        remove_proc(fake_proc, 7000)
        wait_for("tail to print the exit", lambda: has(7000, "proc.exit"))
        assert all(set(e) >= {"type", "seq", "ts", "host", "pid"} for e in lines())
        # a restart is a new epoch: tail says so and keeps following the new server
        assert srv.stop() == 0
        srv = Served("--procfs", str(fake_proc), "--interval", "0.1", port=srv.port, log=tmp_path / "log2").start()
        wait_for("tail to notice the new epoch", lambda: "server restarted" in err.read_text(), timeout=30)
        wait_for("tail to subscribe again", lambda: subscribers() == 1)
        add_proc(fake_proc, 7001, comm="after", cmdline=("after",), start=60_100)
        wait_for("tail to print a start from the new server", lambda: has(7001))
    finally:
        tail.send_signal(signal.SIGTERM)
        code = tail.wait(10)
        srv.stop()
    assert code == 0
    seqs_seen = [e["seq"] for e in lines()]
    assert len(seqs_seen) == len({(e["host"], e["seq"], e["type"], e["pid"]) for e in lines()})  # no line twice


def test_source_netlink_when_not_permitted_exits_2_with_the_reason(fake_proc: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "procstream", "serve", "--source", "netlink", "--procfs", str(fake_proc),
         "--listen", "127.0.0.1:0"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "--source netlink" in err and "not a live procfs" in err
