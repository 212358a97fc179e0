"""``procstream fleet`` as a user runs it: real ``serve --nats`` agents over fake /proc
trees with their own host names, one real nats-server, real aggregators, real clients."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.serve.test_security import TOKEN, TlsServed, make_ca, make_server_cert
from tests.support.fleet_world import FleetWorld, proc_keys, snapshot_of
from tests.support.nats_servers import NatsServer, env_without_nats_secrets
from tests.support.served import Client, http_get
from tests.support.waiting import wait_for
from tests.test_tail import PASTE, TailProc


@pytest.fixture
def world(tmp_path: Path, nats_server: NatsServer) -> Any:
    with FleetWorld(tmp_path, nats_server) as w:
        yield w


def by_seq(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {e["seq"]: e for e in events}


def gap_free(seqs: list[int]) -> bool:
    return seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def started(client: Client, host: str, pid: int) -> bool:
    return bool(client.of("proc.start", host=host, pid=pid))


async def hello_of(client: Client) -> dict[str, Any]:
    (hello,) = await client.wait("hello", lambda: client.of("hello"))
    return hello


async def test_three_agents_one_aggregator(world: FleetWorld) -> None:
    agents = world.start_agents("web-01", "web-02", "db-01",
                                services={"web-01": ("nginx", "nginx"), "web-02": ("nginx",), "db-01": ("postgres",)})
    fleet = world.fleet()
    client = await Client.connect(fleet.ws)
    only = await Client.connect(fleet.ws + "?hosts=web-02")
    try:
        snap = await client.wait("the snapshot", lambda: next(iter(client.of("snapshot")), None))
        hello = await hello_of(client)
        assert hello["type"] == "hello" and hello["fleet"] == {"stream": "PROCSTREAM"}
        assert (snap["seq"], snap["epoch"]) == (hello["head_seq"], hello["epoch"])
        assert sorted(snap["hosts"]) == ["db-01", "web-01", "web-02"]
        for agent in agents:
            entry = snap["hosts"][agent.name]
            own = agent.snapshot()
            assert entry["up"] and entry["synced"] and entry["epoch"] == agent.snapshot()["epoch"]
            assert proc_keys([p for p in snap["procs"] if p["host"] == agent.name]) == proc_keys(own["procs"])
            assert set(entry["groups"]) == set(own["groups"])
        # group totals over the hosts, with the breakdown under hosts
        assert snap["groups"]["nginx"]["procs"] == 3
        assert [snap["hosts"][h]["groups"]["nginx"]["procs"] for h in ("web-01", "web-02")] == [2, 1]
        assert "nginx" not in snap["hosts"]["db-01"]["groups"] and snap["groups"]["postgres"]["procs"] == 1

        # live events of each host arrive with their host, numbered without a gap
        pids = {agent.name: agent.spawn("worker", agent.name) for agent in agents}
        for host, pid in pids.items():
            await client.wait(f"{host}'s start", lambda h=host, p=pid: started(client, h, p))
        events = client.events()
        assert gap_free([e["seq"] for e in events]) and events[0]["seq"] == snap["seq"] + 1
        assert {e["host"] for e in events if e["type"] == "cycle"} == set(pids)

        # hosts=web-02: its state and its events only
        await only.wait("web-02's start", lambda: started(only, "web-02", pids["web-02"]))
        (part,) = only.of("snapshot")
        assert (await hello_of(only))["filter"]["hosts"] == ["web-02"]
        assert list(part["hosts"]) == ["web-02"] and {p["host"] for p in part["procs"]} == {"web-02"}
        assert part["groups"]["nginx"]["procs"] == 1
        assert {e["host"] for e in only.events()} == {"web-02"}
        assert only.of("proc.start") and not only.of("proc.start", host="web-01")
        # the same through /api/snapshot
        assert list(snapshot_of(fleet.url, "?hosts=db-01,web-01")["hosts"]) == ["db-01", "web-01"]

        # its own health: hosts, lag, events; not the hosts' process metrics
        status, body, _ = http_get(fleet.url + "/healthz")
        health = orjson.loads(body)
        assert status == 200 and health["ready"] and health["hosts"] == {"up": 3, "down": 0}
        assert health["epoch"] == hello["epoch"] and health["nats"]["state"] == "connected"
        text = http_get(fleet.url + "/metrics")[1].decode()
        assert 'procstream_fleet_hosts{state="up"} 3.0' in text and 'procstream_fleet_hosts{state="down"} 0.0' in text
        for name in ("procstream_fleet_consumer_lag", "procstream_fleet_events_total", "procstream_fleet_events_per_second",
                     "procstream_subscribers 2.0", "process_cpu_seconds_total"):
            assert name in text, name
        assert "namedprocess_" not in text and "procstream_poll" not in text and "procstream_groups" not in text
    finally:
        await client.close()
        await only.close()


async def test_a_killed_agent_goes_down_and_its_restart_replaces_its_state(world: FleetWorld) -> None:
    (web, db) = world.start_agents("web-01", "db-01", services={"db-01": ("postgres", "backup")})
    fleet = world.fleet("--host-timeout", "2")
    client = await Client.connect(fleet.ws + "?types=host.*,proc.*")
    try:
        old_epoch = db.snapshot()["epoch"]
        backup = next(p["pid"] for p in db.snapshot()["procs"] if p["name"] == "backup")
        db.kill()
        down = await client.wait("db-01 down", lambda: client.of("host.down", host="db-01"), timeout=20)
        assert down[0]["epoch"] == old_epoch and down[0]["last_seen"] > 0
        assert not client.of("host.down", host="web-01")  # the other host still talks
        snap = snapshot_of(fleet.url)
        assert snap["hosts"]["db-01"]["up"] is False and snap["hosts"]["web-01"]["up"] is True
        # its last known state stays, but counts in no total
        assert any(p["host"] == "db-01" for p in snap["procs"]) and "postgres" not in snap["groups"]

        # a new run, on a changed host: backup is gone, a new process is there
        db.vanish(backup)
        fresh = db.spawn("cron")
        db.start()
        new_epoch = db.snapshot()["epoch"]
        assert new_epoch != old_epoch
        up = await client.wait("db-01 up again", lambda: client.of("host.up", host="db-01", epoch=new_epoch), timeout=20)
        assert up[0]["seq"] > down[0]["seq"]
        part = snapshot_of(fleet.url, "?hosts=db-01")
        entry = part["hosts"]["db-01"]
        assert entry["up"] and entry["epoch"] == new_epoch and entry["synced"]
        keys = proc_keys(part["procs"])
        assert keys == proc_keys(db.snapshot()["procs"])  # the new run's, nothing of the old
        assert fresh in {pid for pid, _ in keys} and backup not in {pid for pid, _ in keys}
        assert part["groups"]["postgres"]["procs"] == 1 and "backup" not in part["groups"]
    finally:
        await client.close()


async def test_a_restarted_aggregator_resumes_a_client_and_two_aggregators_agree(world: FleetWorld) -> None:
    (web, db) = world.start_agents("web-01", "db-01")
    first = world.fleet()
    other = world.fleet()
    reference = await Client.connect(other.ws + "?snapshot=0")
    client = await Client.connect(first.ws + "?snapshot=0")
    resumed: Client | None = None
    try:
        epoch = (await hello_of(client))["epoch"]
        assert (await hello_of(reference))["epoch"] == epoch  # one stream, one epoch
        pids = [web.spawn("job"), db.spawn("job")]
        await client.wait("the new processes", lambda: all(client.of("proc.start", pid=p) for p in pids))
        have = client.events()
        since = have[-1]["seq"]
        first.kill()
        # what happens while the client has no aggregator
        missed = [web.spawn("job2"), db.spawn("job2")]
        web.vanish(pids[0])
        await reference.wait("what the client misses", lambda: all(reference.of("proc.start", pid=p) for p in missed)
                             and reference.of("proc.exit", pid=pids[0]))
        again = world.fleet(port=first.port)
        resumed = await Client.connect(again.ws + f"?since={since}&epoch={epoch}&snapshot=0")
        later = db.spawn("job3")
        await resumed.wait("the replay and the live events",
                           lambda: resumed.of("proc.start", pid=later) and reference.of("proc.start", pid=later))
        assert not resumed.of("reset") and (await hello_of(resumed))["epoch"] == epoch
        got = have + resumed.events()
        seqs = [e["seq"] for e in got]
        assert gap_free(seqs) and got[len(have)]["seq"] == since + 1  # nothing missed, nothing twice
        assert all(resumed.of("proc.start", pid=p) for p in missed) and resumed.of("proc.exit", pid=pids[0])
        # every aggregator of the stream hands out the same events under the same seqs
        ref = by_seq(reference.events())
        common = [s for s in seqs if s in ref]
        assert len(common) > 20
        assert all(by_seq(got)[s] == ref[s] for s in common)
    finally:
        for c in (client, reference, resumed):
            if c is not None:
                await c.close()


async def test_a_client_ahead_of_a_replica_waits_for_it_rather_than_reset(world: FleetWorld) -> None:
    world.start_agents("web-01")
    fleet = world.fleet()
    snap = await asyncio.to_thread(snapshot_of, fleet.url)
    ahead = snap["seq"] + 5  # a replica that is a few events ahead handed this out
    client = await Client.connect(fleet.ws + f"?since={ahead}&epoch={snap['epoch']}&snapshot=0")
    try:
        await client.wait("live events after the resume point", lambda: client.events())
        assert not client.of("reset") and client.events()[0]["seq"] == ahead + 1
    finally:
        await client.close()


def test_procstream_tail_follows_a_fleet_unchanged_across_an_aggregator_restart(world: FleetWorld, tmp_path: Path) -> None:
    (web, db) = world.start_agents("web-01", "db-01")
    fleet = world.fleet()
    tail = TailProc(tmp_path, "tail", fleet.ws)
    try:
        wait_for("tail to connect", lambda: PASTE.search(tail.stderr()), timeout=30)  # it starts at the head
        pids = {"web-01": web.spawn("job"), "db-01": db.spawn("job")}
        wait_for("tail to print both starts", lambda: all(tail.has(p) for p in pids.values()), timeout=30,
                 explain=tail.stderr)
        assert {e["host"] for e in tail.lines() if e["pid"] in pids.values()} == set(pids)
        fleet.kill()
        missed = db.spawn("job2")  # while tail has no aggregator: it retries, then resumes
        again = world.fleet(port=fleet.port)
        later = web.spawn("job3")
        wait_for("tail to print what it missed and what came after",
                 lambda: tail.has(missed) and tail.has(later), timeout=30, explain=tail.stderr)
        seqs = [e["seq"] for e in tail.lines()]
        assert seqs == sorted(set(seqs))  # nothing twice, in order
        # one epoch (the stream's) at every connect: a resume, not a reset
        epochs = {epoch for _, epoch in PASTE.findall(tail.stderr())}
        assert len(epochs) == 1 and "reset" not in tail.stderr().lower()
        assert again.proc is not None and again.proc.poll() is None
    finally:
        tail.stop()


async def test_a_fleet_behind_its_token_origin_check_and_tls(world: FleetWorld, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki)
    make_server_cert(pki, "server", 1001)
    world.start_agents("web-01")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    fleet = TlsServed("--nats", world.nats.url, "--host-name", "agg-tls", "--tls-cert", str(pki / "server.pem"),
                      "--tls-key", str(pki / "server.key"), ca=pki / "ca.pem", command="fleet",
                      env={**env_without_nats_secrets(), "PROCSTREAM_TOKEN": TOKEN}, log=tmp_path / "fleet-tls.log")
    with fleet:
        assert fleet.get("/healthz")[0] == 200  # no token for health
        assert fleet.get("/api/snapshot")[0] == 401
        status, body = fleet.get("/api/snapshot", auth)
        assert status == 200 and list(orjson.loads(body)["hosts"]) == ["web-01"]
        assert fleet.get("/api/snapshot", {**auth, "Origin": f"https://127.0.0.1:{fleet.port}"})[0] == 200
        assert fleet.get("/api/snapshot", {**auth, "Origin": "https://elsewhere.example"})[0] == 403
        client = await Client.connect(fleet.ws + "?hosts=web-01", additional_headers=auth, ssl=fleet.client_ctx)
        try:
            snap = (await client.wait("a snapshot over wss", lambda: client.of("snapshot")))[0]
            assert list(snap["hosts"]) == ["web-01"]
        finally:
            await client.close()
        assert "procstream fleet serving https://127.0.0.1:" in fleet.output()
