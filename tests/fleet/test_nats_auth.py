"""``--nats-nkey`` and ``--nats-creds`` for real, for ``serve --nats`` and ``fleet``:
a nats-server with an NKey user, and one in operator mode that takes a user's creds
file (JWT and seed), the keys made in the test. And ``fleet``'s own start-up errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nkeys
import pytest

from tests.support.fleet_world import FleetWorld, proc_keys, snapshot_of
from tests.support.nats_auth import Operator, new_key, seed_file
from tests.support.nats_servers import NatsServer, env_without_nats_secrets
from tests.support.served import Served
from tests.support.waiting import wait_for


def run(command: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "procstream", command, "--listen", "127.0.0.1:0", *args],
                          capture_output=True, text=True, timeout=timeout, env=env_without_nats_secrets(),
                          stdin=subprocess.DEVNULL)


def the_fleet_sees(world: FleetWorld, *extra: str) -> None:
    """An agent publishes with ``extra``, a fleet reads with ``extra``: the host is there."""
    (agent,) = world.start_agents("web-01", extra=extra)
    fleet = world.fleet(*extra)
    wait_for("web-01's processes in the fleet",
             lambda: proc_keys([p for p in snapshot_of(fleet.url)["procs"] if p["host"] == "web-01"])
             == proc_keys(agent.snapshot()["procs"]))


def test_an_nkey_seed_file(tmp_path: Path) -> None:
    seed, user = new_key(nkeys.PREFIX_BYTE_USER)
    conf = tmp_path / "nkey.conf"
    conf.write_text(f"authorization {{ users: [ {{ nkey: {user.public_key.decode()} }} ] }}\n")
    good = seed_file(tmp_path / "user.nk", seed)
    other = seed_file(tmp_path / "other.nk", new_key(nkeys.PREFIX_BYTE_USER)[0])
    with NatsServer("-c", str(conf)) as server, FleetWorld(tmp_path, server) as world:
        the_fleet_sees(world, "--nats-nkey", str(good))
        for command, args in (("serve", world.agents["web-01"].args()), ("fleet", ["--nats", server.url])):
            r = run(command, *args, "--nats-nkey", str(other))
            assert r.returncode == 2 and "authorization violation" in r.stderr.lower(), (command, r.stderr)


def test_a_creds_file_of_an_operator_mode_server(tmp_path: Path) -> None:
    operator = Operator()
    conf = tmp_path / "operator.conf"
    conf.write_text(operator.server_config())
    creds = tmp_path / "user.creds"
    creds.write_text(operator.user_creds("procstream"))
    stranger = tmp_path / "stranger.creds"
    stranger.write_text(Operator().user_creds("procstream"))  # signed by another operator
    with NatsServer("-c", str(conf)) as server, FleetWorld(tmp_path, server) as world:
        the_fleet_sees(world, "--nats-creds", str(creds))
        for command, args in (("serve", world.agents["web-01"].args()), ("fleet", ["--nats", server.url])):
            r = run(command, *args, "--nats-creds", str(stranger))
            assert r.returncode == 2 and "authorization violation" in r.stderr.lower(), (command, r.stderr)


@pytest.mark.parametrize("args, message", [
    (["--nats", "http://127.0.0.1:4222"], "scheme 'http'"),
    (["--nats", "nats://127.0.0.1:4222", "--host-timeout", "0"], "--host-timeout must be > 0"),
    (["--nats", "nats://127.0.0.1:4222", "--nats-state-bucket", "a.b"], "--nats-state-bucket 'a.b'"),
    (["--nats", "nats://127.0.0.1:4222", "--nats-creds", "/nonexistent"], "--nats-creds /nonexistent"),
    (["--nats", "nats://127.0.0.1:4222", "--listen", "0.0.0.0:0"], "token"),
])
def test_fleet_refuses_what_cannot_work(args: list[str], message: str) -> None:
    r = run("fleet", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_fleet_needs_jetstream(tmp_path: Path) -> None:
    server = NatsServer()
    server.args = lambda: [a for a in NatsServer.args(server) if a != "-js"]  # type: ignore[method-assign]
    with server:
        r = run("fleet", "--nats", server.url, "--nats-connect-timeout", "2")
    assert r.returncode == 2 and "JetStream" in r.stderr, r.stderr


def documented_block(name: str) -> str:
    """A permissions block of docs/deploy.md's NATS server config, as written there."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    start = doc.index(f"{name} = {{")
    return doc[start:doc.index("\n}\n", start) + 3]


def test_the_documented_fleet_permissions_are_enough(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(documented_block("AGENT_WEB_01") + documented_block("FLEET") + """
accounts {
  PROCSTREAM {
    jetstream: enabled
    users: [
      { user: web-01, password: agent-pw, permissions: $AGENT_WEB_01 }
      { user: fleet, password: fleet-pw, permissions: $FLEET }
      { user: admin, password: admin-pw }
    ]
  }
}
""")
    with NatsServer("-c", str(conf)) as server, FleetWorld(tmp_path, server) as world:
        # the operator creates the stream and the bucket, as the doc says
        host, port = server.url.removeprefix("nats://").split(":")
        subprocess.run([sys.executable, "-c", f"""
import asyncio, nats
from procstream.fleet.options import StreamSpec
from procstream.fleet.stream import stream_config
async def main():
    nc = await nats.connect("nats://admin:admin-pw@{host}:{port}")
    js = nc.jetstream()
    await js.add_stream(stream_config(StreamSpec()))
    await js.create_key_value(bucket="PROCSTREAM_STATE", history=1)
    await nc.close()
asyncio.run(main())
"""], check=True, timeout=30)
        agent = world.add_agent("web-01")
        env = env_without_nats_secrets()
        agent.served = Served(*agent.args("--nats-user", "web-01", "--nats-state-interval", "0.3"),
                              log=tmp_path / "agent.log", env={**env, "PROCSTREAM_NATS_PASSWORD": "agent-pw"}).start()
        fleet = Served("--nats", server.url, "--nats-user", "fleet", "--host-timeout", "2", command="fleet",
                       log=tmp_path / "fleet.log", env={**env, "PROCSTREAM_NATS_PASSWORD": "fleet-pw"})
        world.fleets.append(fleet)
        fleet.start()
        wait_for("web-01 in the fleet, up", lambda: snapshot_of(fleet.url)["hosts"].get("web-01", {}).get("up"))
        agent.kill()
        # the aggregator may publish its decision: it comes back through the stream
        wait_for("web-01 down", lambda: snapshot_of(fleet.url)["hosts"]["web-01"]["up"] is False, timeout=20)
        assert "could not publish" not in (tmp_path / "fleet.log").read_text()
