"""``procstream serve`` under what a hostile client or local user does, on loopback: real
server processes over fake /proc trees, real sockets, bounded loops.

Each test is one defect of the kind an attacker found: clients that never read and spam
subscribe frames, command lines of megabytes, many distinct filters, more sockets than
descriptors, Unicode digits, a 2**70 counter, an unreadable ``stat``, polls slower than
the interval. Memory is compared with the ``--max-memory`` the server runs with (its
resident size, sampled all along), never with a figure tuned to pass.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from tests.support.fake_proc_tree import remove_proc, write_proc
from tests.support.processes import running
from tests.support.raw_ws import handshake, masked, response_line, stalled_client
from tests.support.served import Client, Served, http_get
from tests.support.waiting import async_wait_for, wait_for

MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
README = Path(__file__).resolve().parents[2] / "README.md"


# -- helpers ----------------------------------------------------------------------------------


def rss(srv: Served) -> int:
    assert srv.proc is not None
    with open(f"/proc/{srv.proc.pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


class RssWatch:
    """Samples a server's resident size every 50 ms while the block runs."""

    def __init__(self, srv: Served) -> None:
        self.srv = srv
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.samples.append(rss(self.srv))
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> RssWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.samples.append(rss(self.srv))

    @property
    def peak(self) -> int:
        return max(self.samples)


def metrics(srv: Served) -> dict[str, float]:
    """``/metrics`` as {'name{labels}': value}; counters also without their ``_total``."""
    status, body, _ = http_get(srv.url + "/metrics")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
            if name.endswith("_total"):
                out[name[: -len("_total")]] = float(value)
    return out


def procs_with_cmdlines(tree: Path, first_pid: int, count: int, size: int, groups: int = 1) -> None:
    for i in range(count):
        arg = (b"%d-" % i) * (size // 8)
        write_proc(tree, first_pid + i, comm=f"g{i % groups}", cmdline=b"/bin/hostile\0" + arg[:size] + b"\0",
                   start=100_000 + i)


def readme_client() -> str:
    code = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)
    return next(b for b in code if "websockets" in b and "proc.exit" in b)


@contextmanager
def more_descriptors(n: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip(f"this test needs {n} descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def no_tracebacks(srv: Served) -> None:
    log = srv.output()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


# -- clients that never read ------------------------------------------------------------------


async def test_clients_that_never_read_and_spam_subscribe_are_closed_within_the_grace_period(
    fake_proc: Path, tmp_path: Path
) -> None:
    """Defect 1: each subscribe frame queued a fresh snapshot copy for a client that does
    not read, and on a quiet host nothing ever closed it."""
    procs_with_cmdlines(fake_proc, 20_000, 300, 16 * 1024)  # a ~5 MB snapshot, in parts
    grace = 2.0
    with Served("--procfs", str(fake_proc), "--interval", "0.2", "--source", "poll",
                "--max-memory", "96M", "--slow-client-grace", str(grace), log=tmp_path / "log") as srv:
        good = await Client.connect(srv.ws + "?types=cycle&snapshot=0")  # websockets' defaults
        try:
            await good.wait("a cycle", lambda: good.of("cycle"))
            async with RssWatch(srv) as watch:
                attackers = [stalled_client(srv.port) for _ in range(30)]
                try:
                    frame = masked(b'{"op":"subscribe"}')
                    for s in attackers:
                        s.sendall(frame * 63)
                    sent = time.monotonic()
                    cycles_before = len(good.of("cycle"))
                    await async_wait_for(
                        "every attacker closed", lambda: metrics(srv)["procstream_subscribers"] == 1,
                        timeout=grace + 8, explain=lambda: metrics(srv)["procstream_subscribers"])
                    closed_after = time.monotonic() - sent
                finally:
                    for s in attackers:
                        s.close()
            assert closed_after <= grace + 3.0  # tick and close handshake on a busy machine
            m = metrics(srv)
            assert m["procstream_stalled_closes"] + m["procstream_budget_closes"] + m["procstream_outbox_closes"] >= 30
            assert watch.peak < 96 * MIB, f"peak RSS {watch.peak / MIB:.0f} MiB"
            # the well-behaved client was served all along
            assert len(good.of("cycle")) >= cycles_before + 5 and good.closed is None
        finally:
            await good.close()
        no_tracebacks(srv)


# -- command lines of megabytes ---------------------------------------------------------------


async def test_megabyte_command_lines_keep_every_frame_small_and_the_readme_client_working(
    fake_proc: Path, tmp_path: Path
) -> None:
    """Defect 2: a local user's processes with argvs of megabytes grew the resume buffer
    without bound and produced frames over websockets' default 1 MiB (1009 for the
    README's client, and a reconnect loop for one resuming over them)."""
    with Served("--procfs", str(fake_proc), "--interval", "0.1", "--source", "poll",
                "--max-memory", "96M", log=tmp_path / "log") as srv:
        code = readme_client().replace("ws://127.0.0.1:8765/ws", srv.ws)
        watcher = await Client.connect(srv.ws)  # every event, websockets' default max_size
        sizes: list[int] = []
        original = watcher.ws.recv

        async def recv_sized(*args: Any, **kw: Any) -> Any:
            data = await original(*args, **kw)
            sizes.append(len(data))
            return data

        watcher.ws.recv = recv_sized  # type: ignore[method-assign]
        try:
            with running(sys.executable, "-c", code, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as readme:
                wait_for("the README client to subscribe",
                         lambda: metrics(srv)["procstream_subscribers"] == 2, timeout=20)
                async with RssWatch(srv) as watch:
                    pid = 30_000
                    for _ in range(20):  # 3 MiB argvs, started and ended, a few per poll
                        for k in range(3):
                            write_proc(fake_proc, pid + k, comm="hostile", start=200_000 + pid + k,
                                       cmdline=b"\0".join([b"/tmp/hostile"] + [b"A" * 1_000_000] * 3) + b"\0")
                        await asyncio.sleep(0.12)
                        for k in range(3):
                            remove_proc(fake_proc, pid + k)
                        pid += 3
                    await watcher.wait("the last exits", lambda: watcher.of("proc.exit", pid=pid - 1), timeout=10)
                assert readme.poll() is None, readme.communicate()[1].decode()[-2000:]
            starts = watcher.of("proc.start")
            assert len(starts) >= 60 and all(s["cmdline_truncated"] for s in starts)
            assert all(sum(len(a.encode()) for a in s["cmdline"]) <= 16 * 1024 for s in starts)
            assert watcher.closed is None and max(sizes) < MIB
            assert watch.peak < 96 * MIB, f"peak RSS {watch.peak / MIB:.0f} MiB"
            # a client resuming over all of it gets every event, in frames under 1 MiB
            head = watcher.events()[-1]["seq"]
            epoch = watcher.objects[0]["epoch"]
            async with connect(f"{srv.ws}?since=0&epoch={epoch}") as again:
                got: list[int] = []
                while not got or got[-1] < head:
                    frame = await asyncio.wait_for(again.recv(), 10)
                    assert len(frame) < MIB
                    got += [o["seq"] for o in orjson.loads(frame) if "seq" in o and o["type"] != "bookmark"]
                assert got[: head] == list(range(1, head + 1))
        finally:
            await watcher.close()
        no_tracebacks(srv)


# -- many distinct filters --------------------------------------------------------------------


async def test_many_distinct_filters_stay_within_the_cache_budget_and_give_it_back(
    fake_proc: Path, tmp_path: Path
) -> None:
    """Defect 3: each distinct filter kept the frames of its recent batches, ~9 MB under
    heavy flow, and kept them after its subscribers left."""
    groups = 20
    procs_with_cmdlines(fake_proc, 40_000, groups, 4096, groups=groups)
    with Served("--procfs", str(fake_proc), "--interval", "0.1", "--source", "poll",
                "--max-memory", "64M", log=tmp_path / "log") as srv:
        clients = [await Client.connect(f"{srv.ws}?groups=g{i}&snapshot=0") for i in range(groups)]
        caches: list[float] = []
        try:
            async with RssWatch(srv) as watch:
                pid = 50_000
                for _ in range(20):  # every group gets a new big process and loses one each poll
                    for i in range(groups):  # 200 KB argvs: the frames are big
                        write_proc(fake_proc, pid + i, comm=f"g{i}", start=300_000 + pid + i,
                                   cmdline=b"/bin/worker\0" + b"w" * 200_000 + b"\0")
                    await asyncio.sleep(0.1)
                    for i in range(groups):
                        remove_proc(fake_proc, pid + i)
                    pid += groups
                    caches.append(metrics(srv)['procstream_memory_used_bytes{part="caches"}'])
                await clients[0].wait("its group's exits", lambda: clients[0].of("proc.exit", group="g0"))
            assert all(c.closed is None and c.of("proc.start") for c in clients)
            assert max(caches) <= 64 * MIB // 8 and watch.peak < 64 * MIB
        finally:
            for c in clients:
                await c.close()
        await async_wait_for("the caches to go with the filters",
                             lambda: metrics(srv)['procstream_memory_used_bytes{part="caches"}'] == 0, timeout=5)
        assert rss(srv) < 64 * MIB
        no_tracebacks(srv)


# -- descriptors ------------------------------------------------------------------------------


async def test_a_low_descriptor_limit_lowers_the_clients_and_half_open_sockets_never_starve_healthz(
    fake_proc: Path, tmp_path: Path
) -> None:
    """Defect 4: with a soft limit of 1024 and --max-clients 1024, clients past ~1010 were
    reset, /healthz was unreachable and polls failed with EMFILE; half-open sockets alone
    took it down."""
    with more_descriptors(4096), Served(
        "--procfs", str(fake_proc), "--interval", "0.2", "--source", "poll", "--max-clients", "1024",
        nofile=(1024, 1024), log=tmp_path / "log",
    ) as srv:
        half_open = []
        try:
            for _ in range(1100):  # connect, send nothing
                half_open.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
            assert http_get(srv.url + "/healthz", timeout=5)[0] == 200
            accepted = int(metrics(srv)["procstream_max_clients"])
            assert accepted < 1024 and f"accepting {accepted} WebSocket clients" in srv.output()
            clients = []
            try:
                for _ in range(accepted):
                    clients.append(stalled_client(srv.port, "snapshot=0"))
                for _ in range(5):  # past the limit: 503, never a reset
                    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                    try:
                        s.sendall(handshake())
                        assert response_line(s) == b"HTTP/1.1 503 Service Unavailable"
                    finally:
                        s.close()
                status, body, _ = http_get(srv.url + "/healthz", timeout=5)
                assert status == 200, body
            finally:
                for s in clients:
                    s.close()
        finally:
            for s in half_open:
                s.close()
        m = metrics(srv)
        assert m["procstream_idle_sockets_closed"] > 0 and m["procstream_poll_failures"] == 0
        log = srv.output()
        assert "Too many open files" not in log and "cannot list processes" not in log


# -- input that parses as digits but isn't ----------------------------------------------------


async def test_unicode_digits_anywhere_are_refused_without_a_traceback(fake_proc: Path, tmp_path: Path) -> None:
    """Defect 5: str.isdigit() then int() gave a 500 and a traceback per request, a 1011
    per WebSocket, and a failed poll for every poll over a '²' directory."""
    (fake_proc / "\u00b2").mkdir()
    (fake_proc / "\u00b2" / "stat").write_bytes((fake_proc / "1000" / "stat").read_bytes())
    with Served("--procfs", str(fake_proc), "--interval", "0.2", "--source", "poll", log=tmp_path / "log") as srv:
        for header in (b"Host: 127.0.0.1:\xb2", b"Host: 127.0.0.1\r\nOrigin: http://a:\xb2"):
            for path in (b"/", b"/ws", b"/api/snapshot", b"/metrics"):
                with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                    s.sendall(b"GET " + path + b" HTTP/1.1\r\n" + header + b"\r\n\r\n")
                    assert response_line(s).startswith(b"HTTP/1.1 403"), (header, path)
        c = await Client.connect(srv.ws + "?since=%C2%B2&epoch=x")
        try:
            await c.wait("hello and error", lambda: c.of("error"))
            await c.send({"op": "subscribe", "types": ["cycle"], "snapshot": False})
            await c.wait("cycles", lambda: len(c.of("cycle")) >= 3)
        finally:
            await c.close()
        assert http_get(srv.url + "/healthz")[0] == 200
        assert metrics(srv)["procstream_poll_failures"] == 0
        no_tracebacks(srv)


# -- numbers beyond 64 bits -------------------------------------------------------------------


async def test_a_stat_field_of_2_to_the_70_is_a_counted_read_error(fake_proc: Path, tmp_path: Path) -> None:
    """Defect 6: one field of 2**70 stopped the poll's publishing (the encoder's fallback
    raised too), lost its events and, run outside the poll's error handling, the service."""
    def crafted(pid: int) -> bytes:
        return (f"{pid} (crafted) S 1 {pid} {pid} 0 -1 4194304 10 0 0 0 1 0 0 0 20 0 1 0 "
                f"{400_000 + pid} {2**70} 423\n").encode()

    write_proc(fake_proc, 60_000, comm="crafted", cmdline=b"crafted\0", start=0, stat=crafted(60_000))
    with Served("--procfs", str(fake_proc), "--interval", "0.1", "--source", "poll", log=tmp_path / "log") as srv:
        c = await Client.connect(srv.ws + "?snapshot=0")
        try:
            await c.wait("a cycle", lambda: c.of("cycle"))
            write_proc(fake_proc, 60_001, comm="crafted", cmdline=b"crafted\0", start=0, stat=crafted(60_001))
            write_proc(fake_proc, 60_002, comm="honest", cmdline=b"honest\0", start=500_000)
            await c.wait("the honest one", lambda: c.of("proc.start", pid=60_002))
            await c.wait("more cycles", lambda: len(c.of("cycle")) >= 10)
            assert not c.of("proc.start", pid=60_001)
            assert all(cyc["read_errors"] >= 2 for cyc in c.of("cycle")[-3:])  # 60000, 60001 (and 1003)
            events = c.events()
            assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[0]["seq"] + len(events)))
        finally:
            await c.close()
        assert srv.proc is not None and srv.proc.poll() is None
        assert metrics(srv)["procstream_poll_failures"] == 0
        assert "poll failed" not in srv.output()
        no_tracebacks(srv)


# -- an unreadable stat -----------------------------------------------------------------------


@pytest.mark.parametrize("spoil", ["garbage", "unreadable"])
async def test_an_unreadable_or_garbage_stat_is_no_exit_and_no_new_start(fake_proc: Path, tmp_path: Path, spoil: str) -> None:
    stat = fake_proc / "1000" / "stat"
    good = stat.read_bytes()
    with Served("--procfs", str(fake_proc), "--interval", "0.1", "--source", "poll", log=tmp_path / "log") as srv:
        c = await Client.connect(srv.ws + "?snapshot=0")
        try:
            await c.wait("a cycle", lambda: c.of("cycle"))
            baseline = c.of("cycle")[-1]["read_errors"]  # pid 1003's stat is garbage all along
            tmp = fake_proc / "1000" / "stat.new"
            if spoil == "garbage":
                tmp.write_bytes(b"1000 (sleep) S 900 1000 100")  # cut short
                tmp.rename(stat)
            else:
                stat.unlink()
                stat.mkdir()  # opens, but reads fail (EISDIR): an I/O error, not a vanished process
            await c.wait("read errors", lambda: len([y for y in c.of("cycle") if y["read_errors"] > baseline]) >= 5)
            if spoil == "unreadable":
                stat.rmdir()
            tmp.write_bytes(good)
            tmp.rename(stat)
            n = len(c.of("cycle"))
            await c.wait("good polls again", lambda: len(c.of("cycle")) >= n + 5)
            assert c.of("cycle")[-1]["read_errors"] == baseline
            assert not c.of("proc.exit", pid=1000) and not c.of("proc.start", pid=1000)
        finally:
            await c.close()


# -- slow polls -------------------------------------------------------------------------------


async def test_polls_slower_than_three_intervals_keep_healthz_200(fake_proc: Path, tmp_path: Path) -> None:
    """Defect 7: at 100 k processes a poll took 4-5 s at a 1 s interval and /healthz stayed
    503 although every poll succeeded. Here a process with 16,000 threads makes each poll
    take longer than 3 intervals."""
    task = fake_proc / "1010" / "task"
    for tid in range(100_000, 116_000):
        os.symlink("1010", task / str(tid))  # each one the same thread directory
    with Served("--procfs", str(fake_proc), "--interval", "0.02", "--source", "poll", log=tmp_path / "log") as srv:
        c = await Client.connect(srv.ws + "?types=cycle&snapshot=0")
        try:
            statuses = []
            while len(c.of("cycle")) < 8:
                statuses.append(http_get(srv.url + "/healthz")[0])
                await asyncio.sleep(0.02)
            durations = [y["duration_ms"] for y in c.of("cycle")]
        finally:
            await c.close()
        assert min(durations) > 3 * 20, durations  # the case at hand: slower than 3 intervals
        assert set(statuses) == {200} and len(statuses) > 20
        body = orjson.loads(http_get(srv.url + "/healthz")[1])
        assert body["stale_after_s"] > 0.06 and body["effective_interval_s"] > 0.06
