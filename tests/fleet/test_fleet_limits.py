"""A fleet within serve's bounds: its snapshot (which outgrows one frame) goes in parts
that share out its hosts too, and ``--max-memory`` and ``--slow-client-grace`` size its
hub as they size serve's."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from procstream.cli import build_parser
from procstream.fleet.fleetstate import FleetState
from procstream.fleet.service import FleetService
from procstream.serve.resources import MIB
from procstream.stream.hub import MAX_FRAME_BYTES, SNAPSHOT_PART_BYTES, Hub
from procstream.stream.protocol import Filter, Subscription
from procstream.wiring import UsageError
from tests.fleet.test_fleetstate import head, snap, start, update
from tests.stream.test_hub import FakeTransport


def big_fleet(hosts: int, procs: int) -> tuple[Hub, FleetState]:
    state = FleetState()
    for h in range(hosts):
        name = f"web-{h:03d}"
        groups = {f"g{k}": {"group": f"g{k}", "procs": 1, "cpu_pct": 1.5} for k in range(20)}
        procs_of = [start(name, pid, f"g{pid % 20}") for pid in range(1, procs + 1)]
        for p in procs_of:
            p["cmdline"] = [p["name"], "--a-long-option=" + "x" * 200]
        assert state.install(name, {**head(f"run-{h}", 0), "host": name}, snap(*procs_of, groups=groups))
        state.apply_message(update(name, "g0", procs=1), f"run-{h}", 1, h + 1, 100.0)
    hub = Hub(host="agg", interval=1.0, state=state, hosts_filter=True, epoch="e")
    return hub, state


def parts_of(hub: Hub, **kw: Any) -> list[dict[str, Any]]:
    t = FakeTransport()
    sub = hub.attach(t)
    hub.subscribe(sub, Subscription(**kw))
    t.pump(sub)
    assert all(len(f) <= MAX_FRAME_BYTES for f in t.frames)
    return t.of_type("snapshot")


def test_a_fleets_snapshot_goes_in_parts_hosts_and_all() -> None:
    hub, _ = big_fleet(hosts=60, procs=80)
    whole = hub.snapshot()
    assert len(orjson.dumps(whole)) > 2 * SNAPSHOT_PART_BYTES
    parts = parts_of(hub)
    assert len(parts) >= 3 and [p["part"] for p in parts] == list(range(1, len(parts) + 1))
    assert {p["parts"] for p in parts} == {len(parts)} and all("hosts" in p for p in parts)
    # joined as docs/protocol.md says (and the viewer does): every map of every part
    groups: dict[str, Any] = {}
    hosts: dict[str, Any] = {}
    procs: list[Any] = []
    for p in parts:
        groups.update(p["groups"])
        hosts.update(p["hosts"])
        procs.extend(p["procs"])
    assert groups == whole["groups"] and hosts == whole["hosts"] and procs == whole["procs"]
    assert len(hosts) == 60 and len(procs) == 60 * 80
    # a hosts filter keeps the parts to that host
    (one,) = parts_of(hub, filter=Filter(hosts=frozenset({"web-007"})))
    assert list(one["hosts"]) == ["web-007"] and {p["host"] for p in one["procs"]} == {"web-007"}


def fleet_args(*argv: str) -> Any:
    return build_parser().parse_args(["fleet", "--nats", "nats://127.0.0.1:1", "--listen", "127.0.0.1:0", *argv])


def test_the_fleets_hub_is_bounded_by_max_memory_as_serves() -> None:
    service = FleetService(fleet_args("--max-memory", "128M", "--slow-client-grace", "7"))
    hub = service.aggregator.hub
    assert (hub.buffer_bytes, hub.output_bytes, hub.cache_bytes) == (32 * MIB, 32 * MIB, 16 * MIB)
    assert hub.overflow_grace == 7.0 and service.memory.budget == 128 * MIB
    names = {m.name for m in service.metrics.collect()}
    assert {"procstream_memory_budget_bytes", "procstream_max_clients"} <= names


@pytest.mark.parametrize(("argv", "message"), [
    (("--max-memory", "32M"), "at least 64M"),
    (("--max-memory", "lots"), "--max-memory"),
    (("--slow-client-grace", "0"), "--slow-client-grace"),
    (("--max-clients", "0"), "--max-clients"),
    (("--buffer", "0"), "--buffer must be at least 1"),
])
def test_the_fleet_refuses_limits_serve_refuses(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        FleetService(fleet_args(*argv))
