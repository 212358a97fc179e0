"""The serve wiring in-process: source selection and its log lines, listen parsing."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

import pytest

from websockets.asyncio.client import connect

from procstream.collect.core import SWITCH_INTERVAL
from procstream.netlink import connector as netlink
from procstream.serve.connections import Connection
from procstream.serve.resources import MemoryGuard
from procstream.serve.service import Service, parse_listen
from procstream.cli import UsageError, build_parser
from procstream.netlink.connector import ConnectorError
from tests.support.network import free_port


def serve_args(*extra: str):
    return build_parser().parse_args(["serve", "--listen", f"127.0.0.1:{free_port()}", "--interval", "0.2", *extra])


async def run_briefly(service: Service) -> None:
    started = asyncio.Event()
    task = asyncio.create_task(service.run(ready=lambda srv: started.set()))
    try:
        await asyncio.wait_for(started.wait(), 10)
    finally:
        service.stop()
        assert await asyncio.wait_for(task, 10) == 0


@pytest.mark.skipif(not netlink.probe("/proc")[0], reason="kernel events unavailable: nothing to fall back from")
async def test_auto_falls_back_to_polling_when_the_connector_fails(monkeypatch, caplog) -> None:
    def broken_open(self, **kw):
        raise ConnectorError("netlink proc connector unavailable: simulated socket failure")

    monkeypatch.setattr(netlink.ProcConnector, "open", broken_open)
    caplog.set_level(logging.INFO, logger="procstream")
    service = Service(serve_args("--source", "auto"))
    await run_briefly(service)
    assert service.kernel is None
    lines = [r.getMessage() for r in caplog.records if r.name == "procstream"]
    assert any("poll every" in m and "only" in m and "simulated socket failure" in m for m in lines), lines


@pytest.mark.skipif(not netlink.probe("/proc")[0], reason="kernel events unavailable here")
async def test_auto_uses_kernel_events_when_permitted(caplog) -> None:
    caplog.set_level(logging.INFO, logger="procstream")
    service = Service(serve_args("--source", "auto"))
    await run_briefly(service)
    lines = [r.getMessage() for r in caplog.records if r.name == "procstream"]
    assert any("kernel process events" in m for m in lines), lines


async def test_netlink_when_the_socket_fails_is_a_usage_error(monkeypatch) -> None:
    monkeypatch.setattr(netlink, "probe", lambda *a, **k: (True, "ok"))
    monkeypatch.setattr("procstream.collect.kernel.probe_connector", lambda *a, **k: (True, "ok"))

    def broken_open(self, **kw):
        raise ConnectorError("simulated socket failure")

    monkeypatch.setattr(netlink.ProcConnector, "open", broken_open)
    service = Service(serve_args("--source", "netlink"))
    with pytest.raises(UsageError, match="simulated socket failure"):
        await service.run()


async def test_poll_source_logs_why(caplog) -> None:
    caplog.set_level(logging.INFO, logger="procstream")
    service = Service(serve_args("--source", "poll"))
    await run_briefly(service)
    assert any("poll every 0.2s only (--source poll)" in r.getMessage() for r in caplog.records)


async def test_while_serving_the_loop_waits_less_for_the_gil_and_the_collector() -> None:
    """A 1 ms switch interval, and what exists once serving (modules, the first
    poll's state) frozen out of the collector's way; both undone when it stops."""
    service = Service(serve_args("--source", "poll"))
    before = sys.getswitchinterval()
    assert gc.get_freeze_count() == 0
    started = asyncio.Event()
    seen: list[float] = []
    frozen: list[int] = []

    def ready(_srv) -> None:
        seen.append(sys.getswitchinterval())
        frozen.append(gc.get_freeze_count())
        started.set()

    task = asyncio.create_task(service.run(ready=ready))
    try:
        await asyncio.wait_for(started.wait(), 10)
    finally:
        service.stop()
        assert await asyncio.wait_for(task, 10) == 0
    assert seen == [SWITCH_INTERVAL] and before > SWITCH_INTERVAL
    assert frozen[0] > 10_000  # the interpreter's and our modules' objects at least
    assert sys.getswitchinterval() == before and gc.get_freeze_count() == 0  # undone


async def test_after_a_wave_of_connections_the_collector_frees_them() -> None:
    """Once a wave of connections is over, the memory guard's check runs a full
    collection (whatever cycles they left), and none of them is left."""
    service = Service(serve_args("--source", "poll"))
    started = asyncio.Event()
    task = asyncio.create_task(service.run(ready=lambda srv: started.set()))
    try:
        await asyncio.wait_for(started.wait(), 10)
        port = service.server.port
        wave = MemoryGuard.COLLECT_AFTER + 10
        for _ in range(wave):
            async with connect(f"ws://127.0.0.1:{port}/ws?snapshot=0", compression=None) as ws:
                await asyncio.wait_for(ws.recv(), 10)  # hello
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while service.memory.collections == 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert service.memory.collections == 1
        assert service.server.sockets.stats.closed >= wave
        assert not [o for o in gc.get_objects() if isinstance(o, Connection)]
    finally:
        service.stop()
        assert await asyncio.wait_for(task, 10) == 0


def test_a_buffer_of_nothing_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--buffer must be at least 1"):
        Service(serve_args("--buffer", "0"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8765", ("127.0.0.1", 8765)),
        (":9000", ("0.0.0.0", 9000)),
        ("[::1]:8765", ("::1", 8765)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8765", "host:port", "h:70000"])
def test_parse_listen_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_listen(text)
