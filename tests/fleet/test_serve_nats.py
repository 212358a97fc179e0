"""``procstream serve --nats`` as a user runs it: a real serve process over a fake /proc
tree, real nats-server processes. What it publishes, how it starts (or refuses to), and
that NATS trouble never reaches the WebSocket stream."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.js.api import StreamConfig

from procstream.fleet.state import read_host_state
from tests.fleet.conftest import StreamReader
from tests.support.nats_servers import NatsServer, env_without_nats_secrets
from tests.support.served import Client, Served, http_get
from tests.support.waiting import async_wait_for, wait_for


def serve_args(fake_proc: Path, url: str, *extra: str) -> list[str]:
    return ["--procfs", str(fake_proc), "--interval", "0.1", "--source", "poll", "--nats", url,
            "--host-name", "web-01", *extra]


def health(served: Served) -> dict[str, Any]:
    status, body, _ = http_get(served.url + "/healthz")
    assert status == 200, body
    return orjson.loads(body)


def metric(served: Served, name: str) -> float:
    _, body, _ = http_get(served.url + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def stored_seqs(reader: StreamReader) -> list[int]:
    return [m[2]["seq"] for m in await reader.messages() if "seq" in m[2]]


async def test_a_live_serve_publishes_what_its_websocket_clients_get(
    fake_proc: Path, tmp_path: Path, nats_server: NatsServer, reader: StreamReader
) -> None:
    args = serve_args(fake_proc, nats_server.url, "--nats-state-interval", "0.3")
    with Served(*args, log=tmp_path / "serve.log", env=env_without_nats_secrets()) as served:
        client = await Client.connect(served.ws + "?snapshot=0")
        try:
            await client.wait("a dozen events", lambda: len(client.events()) >= 12)
        finally:
            await client.close()
        seen = {e["seq"]: e for e in client.events()}
        last = max(seen)
        await async_wait_for("JetStream to hold them", lambda: reader.count(), timeout=10)
        await async_wait_for("every event the client saw to be stored",
                             lambda: _holds(reader, last), timeout=10)
        stored = await reader.messages()
        epoch = health(served)["nats"]
        assert epoch["state"] == "connected" and epoch["publishing"] == "publishing"
        by_seq = {m[2]["seq"]: m for m in stored}
        assert [m[2]["seq"] for m in stored] == list(range(1, len(stored) + 1))  # in order, from 1
        for seq, event in seen.items():
            subject, ident, payload = by_seq[seq]
            assert payload == event  # the same object as on the WebSocket
            assert subject == f"procstream.web-01.{event['type']}"
            assert ident.startswith("web-01:") and ident.endswith(f":{seq}")
            assert event["host"] == "web-01"
        assert metric(served, "procstream_nats_acknowledged_total") >= len(seen)
        assert metric(served, "procstream_nats_connected") == 1
        state = await async_wait_for("the host's state in the bucket",
                                     lambda: read_host_state(reader.js, "PROCSTREAM_STATE", "web-01"))
        head, snapshot = state
        assert head["host"] == "web-01" and snapshot["type"] == "snapshot" and snapshot["groups"]
        assert served.stop() == 0


async def _holds(reader: StreamReader, seq: int) -> bool:
    seqs = await stored_seqs(reader)
    return bool(seqs) and seqs[-1] >= seq


async def test_nats_going_away_is_logged_once_retried_and_never_stalls_the_websocket_stream(
    fake_proc: Path, tmp_path: Path, nats_server: NatsServer
) -> None:
    log = tmp_path / "serve.log"
    with Served(*serve_args(fake_proc, nats_server.url, "--nats-ack-timeout", "1"), log=log,
                env=env_without_nats_secrets()) as served:
        client = await Client.connect(served.ws + "?snapshot=0&types=cycle")
        try:
            await client.wait("the first cycles", lambda: len(client.events()) >= 3)
            nats_server.stop()
            await async_wait_for("healthz to say NATS is away",
                                 lambda: health(served)["nats"]["state"] != "connected")
            before = len(client.events())
            # The stream goes on while the publisher retries (reconnect attempts every second).
            await client.wait("cycles while NATS is away", lambda: len(client.events()) >= before + 20)
            status = health(served)
            assert status["status"] == "ok" and status["nats"]["pending"] > 0
            nats_server.start()
            await async_wait_for("everything to be acknowledged after NATS came back",
                                 lambda: health(served)["nats"]["publishing"] == "publishing"
                                 and health(served)["nats"]["pending"] < 20, timeout=20)
        finally:
            await client.close()
        text = log.read_text()
        assert text.count("NATS: disconnected from") == 1, text
        assert text.count("Connection refused") <= 1, text  # not one line per attempt
        assert "publishing again from seq" in text
        nc = await nats.connect(nats_server.url)
        try:
            reader = StreamReader(nc)
            seqs = await stored_seqs(reader)
            assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > before
        finally:
            await nc.close()


def run_serve(args: list[str], env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "procstream", "serve", "--listen", "127.0.0.1:0", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**env_without_nats_secrets(), **(env or {})}, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:4222", "scheme 'http'"),
    ("nats://127.0.0.1:notaport", "Port could not be cast"),
    ("nats://127.0.0.1:4222/path", "expected nats://HOST[:PORT]"),
])
def test_a_bad_url_is_exit_2(fake_proc: Path, url: str, message: str) -> None:
    r = run_serve(serve_args(fake_proc, url))
    assert r.returncode == 2 and message in r.stderr and r.stderr.startswith("procstream: --nats"), r.stderr


def test_bad_credentials_are_exit_2_and_good_ones_publish(fake_proc: Path, tmp_path: Path) -> None:
    with NatsServer("--user", "agent", "--pass", "s3cret") as server:
        r = run_serve(serve_args(fake_proc, server.url, "--nats-user", "agent"),
                      env={"PROCSTREAM_NATS_PASSWORD": "wrong"})
        assert r.returncode == 2 and "authorization violation" in r.stderr.lower(), r.stderr
        assert "wrong" not in r.stderr
        r = run_serve(serve_args(fake_proc, server.url))  # none at all
        assert r.returncode == 2 and "authorization violation" in r.stderr.lower(), r.stderr
        with Served(*serve_args(fake_proc, server.url, "--nats-user", "agent"), log=tmp_path / "ok.log",
                    env={**env_without_nats_secrets(), "PROCSTREAM_NATS_PASSWORD": "s3cret"}) as served:
            wait_for("events acknowledged", lambda: health(served)["nats"]["acked_seq"] > 0)


def test_a_token_from_the_environment(fake_proc: Path, tmp_path: Path) -> None:
    with NatsServer("--auth", "t0ken") as server:
        with Served(*serve_args(fake_proc, server.url), log=tmp_path / "ok.log",
                    env={**env_without_nats_secrets(), "PROCSTREAM_NATS_TOKEN": "t0ken"}) as served:
            wait_for("events acknowledged", lambda: health(served)["nats"]["acked_seq"] > 0)


@pytest.mark.parametrize("config, message", [
    ({"subjects": ["other.>"]}, "don't take procstream.web-01.proc.start"),
    ({"subjects": ["procstream.>"], "duplicate_window": 10}, "duplicate window is 10s"),
    ({"subjects": ["procstream.>"], "retention": "workqueue"}, "retention is 'workqueue'"),
])
async def test_an_incompatible_stream_is_exit_2(fake_proc: Path, nats_server: NatsServer,
                                                config: dict[str, Any], message: str) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(StreamConfig(name="PROCSTREAM", **config))
    finally:
        await nc.close()
    r = await asyncio.to_thread(run_serve, serve_args(fake_proc, nats_server.url))
    assert r.returncode == 2, r.stderr
    assert "stream PROCSTREAM exists but won't do" in r.stderr and message in r.stderr, r.stderr


def test_a_bad_host_name_is_exit_2(fake_proc: Path) -> None:
    r = run_serve(["--procfs", str(fake_proc), "--host-name", "web\n01"])
    assert r.returncode == 2 and "--host-name" in r.stderr and "control characters" in r.stderr


async def test_nats_not_there_at_start_then_everything_from_seq_1(fake_proc: Path, tmp_path: Path) -> None:
    server = NatsServer()  # its port is chosen, nothing listens yet
    log = tmp_path / "serve.log"
    try:
        with Served(*serve_args(fake_proc, server.url, "--nats-connect-timeout", "0.5"), log=log,
                    env=env_without_nats_secrets()) as served:
            assert health(served)["nats"]["state"] != "connected"
            await async_wait_for("some events waiting", lambda: health(served)["nats"]["pending"] >= 10)
            server.start()
            await async_wait_for("the backlog acknowledged",
                                 lambda: health(served)["nats"]["acked_seq"] >= 10, timeout=20)
            nc = await nats.connect(server.url)
            try:
                seqs = await stored_seqs(StreamReader(nc))
            finally:
                await nc.close()
            assert seqs[:10] == list(range(1, 11))
        assert "not reachable yet" in log.read_text()
    finally:
        server.close()


def agent_permissions() -> str:
    """The per-host permissions of docs/deploy.md's NATS server config, as written there."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    start = doc.index("AGENT_WEB_01 = {")
    end = doc.index("\n}\n", start) + 3
    return doc[start:end]


async def test_the_documented_permissions_let_a_host_publish_only_as_itself(fake_proc: Path, tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(agent_permissions() + """
accounts {
  PROCSTREAM {
    jetstream: enabled
    users: [
      { user: web-01, password: agent-pw, permissions: $AGENT_WEB_01 }
      { user: admin, password: admin-pw }
    ]
  }
}
""")
    from procstream.fleet.options import StreamSpec
    from procstream.fleet.stream import stream_config

    with NatsServer("-c", str(conf)) as server:
        host, port = server.url.removeprefix("nats://").split(":")
        admin = await nats.connect(f"nats://admin:admin-pw@{host}:{port}")
        try:  # the operator creates the stream and the bucket, as the doc says
            js = admin.jetstream()
            await js.add_stream(stream_config(StreamSpec()))
            await js.create_key_value(bucket="PROCSTREAM_STATE", history=1)
            env = {**env_without_nats_secrets(), "PROCSTREAM_NATS_PASSWORD": "agent-pw"}
            args = serve_args(fake_proc, server.url, "--nats-user", "web-01", "--nats-state-interval", "0.2")
            with Served(*args, log=tmp_path / "ok.log", env=env) as served:
                await async_wait_for("web-01's events and state", lambda: health(served)["nats"]["acked_seq"] >= 5
                                     and metric(served, "procstream_nats_state_writes_total") >= 1)
            impostor = [*serve_args(fake_proc, server.url, "--nats-user", "web-01", "--nats-state-interval", "0",
                                    "--nats-ack-timeout", "1"), "--host-name", "web-02"]  # the last one counts
            with Served(*impostor, log=tmp_path / "impostor.log", env=env) as served:
                await async_wait_for("the refusal", lambda: health(served)["nats"]["publishing"] == "retrying")
                assert health(served)["nats"]["acked_seq"] == 0
            log = (tmp_path / "impostor.log").read_text()
            assert 'permissions violation for publish to "procstream.web-02.' in log.lower()
            assert log.count("publishing stopped") == 1, log  # retried, not logged at every retry
            reader = StreamReader(admin)
            assert {m[2]["host"] for m in await reader.messages()} == {"web-01"}
        finally:
            await admin.close()
