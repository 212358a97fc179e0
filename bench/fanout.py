"""Fan-out benchmark: procstream's hub + server against a bare ``websockets.broadcast``.

Run by hand (not a test)::

    python bench/fanout.py                      # 1,000 subscribers, the default load
    python bench/fanout.py --subscribers 200 --rate 50 --duration 5

The server side (this process) runs a synthetic publisher at a steady rate; the
subscribers live in a SEPARATE client process (this same script with ``--client``), on
raw sockets with a minimal WebSocket frame parser so that the client costs as little CPU
as possible. Every event carries its publish time (``ts``); the client computes the
latency publish → client for every frame it receives.

Phases, all in one run, same frames, same rate:

1. ``bare``        — websockets' ``broadcast()`` of the orjson-encoded batch
2. ``procstream``  — ``Hub.publish()`` through ``ProcstreamServer``
3. ``bare+stall``       — as 1, plus one subscriber that never reads
4. ``procstream+stall`` — as 2, plus one subscriber that never reads

Reported per phase: events delivered per second (all subscribers), server CPU seconds
per million deliveries (so the capacity of one core), p50/p99/max latency, and for the
stall phases the write buffer the server holds for the stalled client. Then the ratios
the budget is about: procstream delivers at least 0.8 of bare's rate, and one stalled
subscriber leaves the others' p99 within 2x of the run without it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import base64
import gc
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

# ---------------------------------------------------------------------------------------
# client process
# ---------------------------------------------------------------------------------------

_DATA_PREFIX = b'[{"type":"proc.'


class _Sub(asyncio.Protocol):
    """One subscriber: handshake, then count data frames and measure their latency."""

    def __init__(self, path: str, stall: bool, lat: list[float]) -> None:
        self.path = path
        self.stall = stall
        self.lat = lat
        self.buf = bytearray()
        self.open = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.frames = 0
        self.control: dict[str, int] = {}
        self.transport: asyncio.Transport | None = None
        self.closed_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's isn't a subclass
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(RuntimeError(bytes(buf[:80]).decode(errors="replace")))
                return
            del buf[: end + 4]
            self.open = True
            self.ready.set_result(None)
            if self.stall:
                assert self.transport is not None
                self.transport.pause_reading()
                return
        pos = 0
        n_buf = len(buf)
        while n_buf - pos >= 2:
            b1 = buf[pos + 1] & 0x7F
            if b1 == 126:
                if n_buf - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hdr = 4
            elif b1 == 127:
                if n_buf - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            else:
                n = b1
                hdr = 2
            if n_buf - pos < hdr + n:
                break
            opcode = buf[pos] & 0x0F
            start = pos + hdr
            if opcode == 1:
                if buf.startswith(_DATA_PREFIX, start):
                    self.frames += 1
                    i = buf.find(b'"ts":', start, start + 80) + 5
                    j = buf.find(b",", i)
                    self.lat.append(now - float(buf[i:j]))
                else:
                    t = bytes(buf[start + 10 : buf.find(b'"', start + 10)]).decode()
                    self.control[t] = self.control.get(t, 0) + 1
            elif opcode == 9:  # ping -> pong (client frames are masked; a zero key is valid)
                payload = bytes(buf[start : start + n])
                assert self.transport is not None
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif opcode == 8:
                self.closed_code = int.from_bytes(buf[start : start + 2], "big") if n >= 2 else None
                assert self.transport is not None
                self.transport.close()
            pos = start + n
        del buf[:pos]


async def client_main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    subs: list[_Sub] = []
    path = "/ws?snapshot=0"

    async def open_one(stall: bool) -> _Sub:
        sock = socket.socket()
        if stall:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", args.port))
        _, proto = await loop.create_connection(lambda: _Sub(path, stall, lat), sock=sock)
        await asyncio.wait_for(proto.ready, 30)
        return proto

    # connect in small waves: the listen backlog is finite
    for i in range(0, args.subscribers, 50):
        subs += await asyncio.gather(*(open_one(False) for _ in range(min(50, args.subscribers - i))))
    stalled = await open_one(True) if args.stall else None
    stalled_port = 0
    if stalled is not None and stalled.transport is not None:
        stalled_port = stalled.transport.get_extra_info("sockname")[1]
    print(f"ready {stalled_port}", flush=True)

    # wait for "stop" from the server process, measuring only while publishing runs
    line = await loop.run_in_executor(None, sys.stdin.readline)
    assert line.strip() == "start", line
    lat.clear()
    for s in subs:
        s.frames = 0
    line = await loop.run_in_executor(None, sys.stdin.readline)
    assert line.strip() == "stop", line
    frames = [s.frames for s in subs]
    lat.sort()
    control: dict[str, int] = {}
    for s in subs:
        for k, v in s.control.items():
            control[k] = control.get(k, 0) + v

    def pct(p: float) -> float | None:
        return lat[min(len(lat) - 1, int(len(lat) * p))] if lat else None

    report = {
        "frames_total": sum(frames),
        "frames_min": min(frames),
        "frames_max": max(frames),
        "lat_p50": pct(0.50),
        "lat_p99": pct(0.99),
        "lat_max": lat[-1] if lat else None,
        "lat_mean": statistics.fmean(lat) if lat else None,
        "control": control,
        "stalled_closed": None if stalled is None else stalled.closed_code,
    }
    print(json.dumps(report), flush=True)
    for s in subs + ([stalled] if stalled else []):
        if s.transport is not None:
            s.transport.abort()


# ---------------------------------------------------------------------------------------
# server process
# ---------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    stall: bool
    kind: str  # "bare" | "procstream"
    result: dict[str, Any] = field(default_factory=dict)


class Churn:
    """Synthetic producer: a host with a steady population of processes; each batch
    starts some and ends as many of the oldest (so the hub's state stays bounded, like
    a real host's), as ``proc.start`` / ``proc.exit`` events in one poll."""

    def __init__(self, population: int, pad: str) -> None:
        self.population = population
        self.pad = pad
        self.live: collections.deque[dict[str, Any]] = collections.deque()
        self.next_pid = 10_000

    def batch(self, n: int) -> list[dict[str, Any]]:
        now = time.time()
        out: list[dict[str, Any]] = []
        for i in range(n):
            if i % 2 and len(self.live) >= self.population:
                p = self.live.popleft()
                out.append({"type": "proc.exit", "ts": now, **p, "lifetime_s": now - p["start_time"],
                            "cpu_s": 0.01, "read_bytes": 0, "write_bytes": 0, "exit_code": None,
                            "signal": None, "source": "poll"})
            else:
                self.next_pid += 1
                p = {"pid": self.next_pid, "ppid": 1, "start_time": now - 0.5, "name": "worker",
                     "cmdline": ["/usr/bin/worker", "--queue", "jobs", self.pad],
                     "group": "worker", "user": "www-data", "uid": 33}
                self.live.append(p)
                out.append({"type": "proc.start", "ts": now, **p, "source": "poll"})
        return out


async def run_phase(phase: Phase, args: argparse.Namespace) -> None:
    from websockets.asyncio.server import broadcast, serve

    from procstream.stream.hub import Hub
    from procstream.serve.server import ProcstreamServer, ServerConfig

    churn = Churn(args.population, "x" * args.pad)
    conns: set[Any] = set()
    hub: Hub | None = None
    srv: Any = None
    bare: Any = None
    if phase.kind == "procstream":
        hub = Hub(host="bench", interval=1.0, bookmark_interval=0,
                  queue_limit=args.queue_limit, overflow_grace=args.grace)
        hub.load_state({}, [])
        srv = ProcstreamServer(hub, ServerConfig(port=0, max_clients=args.subscribers + 10,
                                                 ping_interval=None))
        await srv.start()
        port = srv.port
    else:
        async def handler(ws: Any) -> None:
            conns.add(ws)
            try:
                await ws.wait_closed()
            finally:
                conns.discard(ws)

        bare = await serve(handler, "127.0.0.1", 0, compression=None, max_size=4096,
                           ping_interval=None, write_limit=64 * 1024)
        port = bare.sockets[0].getsockname()[1]

    cmd = [sys.executable, __file__, "--client", "--port", str(port),
           "--subscribers", str(args.subscribers)] + (["--stall"] if phase.stall else [])
    cmd.append("--uvloop" if args.uvloop else "--no-uvloop")
    cmd.append("--pin" if args.pin else "--no-pin")
    client = await asyncio.create_subprocess_exec(*cmd, stdin=subprocess.PIPE,
                                                  stdout=subprocess.PIPE)
    assert client.stdin is not None and client.stdout is not None
    try:
        line = await asyncio.wait_for(client.stdout.readline(), 120)
        word, stalled_port = line.split()
        assert word == b"ready", line
        stalled_conn = None
        if phase.stall:
            # Shrink the stalled connection's server-side socket buffer (the client did
            # the same with SO_RCVBUF): otherwise ~3 MB of kernel buffering on loopback
            # absorbs the whole run and the stall never reaches the server's own buffers.
            live = srv.connections if srv is not None else conns
            stalled_conn = next(c for c in live if c.remote_address[1] == int(stalled_port))
            sock = stalled_conn.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.stdin.write(b"start\n")
        await client.stdin.drain()
        await asyncio.sleep(0.2)

        gc.collect()
        flat_out = args.rate <= 0
        n_planned = 1 << 62 if flat_out else int(args.rate * args.duration)
        seq = 0
        n_batches = 0
        publish_time = 0.0
        publish_cpu = 0.0
        stalled_buffer = 0  # the most the server buffered for the stalled client
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        t_end = t0 + args.duration
        for k in range(n_planned):
            if flat_out:
                if time.perf_counter() >= t_end:
                    break
                await asyncio.sleep(0)  # let the loop write and read between batches
            else:
                # Yield even when behind schedule, as the service does between polls
                # (each waits for the poll thread): what the server does between
                # batches (reading, the hub's later turns) gets its turn.
                await asyncio.sleep(max(0.0, t0 + k / args.rate - time.perf_counter()))
            n_batches += 1
            batch = churn.batch(args.batch)
            tp = time.perf_counter()
            tc = time.thread_time()
            if hub is not None:
                hub.publish(batch)
            else:
                for ev in batch:  # the same envelope the hub adds, for identical frames
                    seq += 1
                    ev["seq"] = seq
                    ev["host"] = "bench"
                broadcast(conns, orjson.dumps(batch), text=True)
            publish_cpu += time.thread_time() - tc
            publish_time += time.perf_counter() - tp
            if stalled_conn is not None and stalled_conn.transport is not None:
                stalled_buffer = max(stalled_buffer, stalled_conn.transport.get_write_buffer_size())
        span = time.perf_counter() - t0
        if flat_out:
            elapsed, lag = span, 0.0
        else:
            # the batches are spread over n/rate seconds, or longer if the publisher
            # fell behind schedule (the server could not keep up)
            lag = max(0.0, span - (n_batches - 1) / args.rate)
            elapsed = n_batches / args.rate + lag
        # let the last frames arrive (the client measures latency per frame anyway)
        await asyncio.sleep(1.0)
        cpu = time.process_time() - cpu0

        client.stdin.write(b"stop\n")
        await client.stdin.drain()
        report = json.loads(await asyncio.wait_for(client.stdout.readline(), 60))
    finally:
        if client.returncode is None:
            try:
                await asyncio.wait_for(client.wait(), 30)
            except TimeoutError:
                client.kill()
                await client.wait()
        if srv is not None:
            await srv.close()
        if bare is not None:
            bare.close()
            await bare.wait_closed()

    events = report["frames_total"] * args.batch
    phase.result = {
        **report,
        "elapsed": elapsed,
        "publisher_lag_s": lag,
        "publish_call_s": publish_time,
        "publish_cpu_s": publish_cpu,
        # fan-out cost alone: deliveries written per CPU second spent in publish/broadcast
        "deliveries_per_publish_cpu_s": (
            n_batches * args.batch * args.subscribers / publish_cpu if publish_cpu else None),
        "server_cpu_s": cpu,
        "delivered_eps": events / elapsed,
        "deliveries_per_cpu_s": events / cpu if cpu else float("nan"),
        "expected_frames_per_sub": n_batches,
        "stalled_buffer": stalled_buffer,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "hub": hub.stats.as_dict() if hub is not None else None,
    }


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:8.1f}"


_MEDIAN_KEYS = ("delivered_eps", "deliveries_per_cpu_s", "server_cpu_s", "lat_p50", "lat_p99",
                "lat_max", "stalled_buffer", "publisher_lag_s", "elapsed", "publish_cpu_s",
                "deliveries_per_publish_cpu_s")


def server_main(args: argparse.Namespace) -> None:
    names = [("bare", False, "bare"), ("procstream", False, "procstream"),
             ("bare+stall", True, "bare"), ("procstream+stall", True, "procstream")]
    if args.phases:
        wanted = args.phases.split(",")
        names = [n for n in names if n[0] in wanted]
    phases = [Phase(*n) for n in names]
    runs: dict[str, list[dict[str, Any]]] = {p.name: [] for p in phases}

    async def all_phases() -> None:
        # interleaved repeats, so slow drifts of the machine hit every phase alike
        for i in range(args.repeat):
            for p in phases:
                await run_phase(p, args)
                runs[p.name].append(p.result)
                r = p.result
                print(f"  [{i + 1}/{args.repeat}] {p.name:<17} {r['delivered_eps']:>12,.0f} ev/s "
                      f"delivered, p99 {fmt_ms(r['lat_p99']).strip()} ms, "
                      f"server CPU {r['server_cpu_s']:.2f} s, in publish "
                      f"{r['publish_call_s']:.2f} s wall / {r['publish_cpu_s']:.2f} s CPU",
                      file=sys.stderr, flush=True)
        for p in phases:
            merged = dict(runs[p.name][-1])
            for key in _MEDIAN_KEYS:
                values = [r[key] for r in runs[p.name] if r[key] is not None]
                merged[key] = statistics.median(values) if values else None
            merged["frames_min"] = min(r["frames_min"] for r in runs[p.name])
            p.result = merged

    load = ("batches back to back" if args.rate <= 0 else
            f"{args.rate:g} batches/s ({args.rate * args.batch:,.0f} events/s per subscriber, "
            f"{args.rate * args.batch * args.subscribers:,.0f} deliveries/s)")
    print(f"fan-out: {args.subscribers} subscribers in a separate process, "
          f"{args.batch} events per batch, {load}, "
          f"{args.duration:g} s per phase, {args.repeat} run(s) each (medians), "
          f"loop: {'uvloop' if args.uvloop else 'asyncio'}, "
          f"{'server and client pinned to separate CPUs' if args.pin else 'not pinned'}",
          flush=True)
    if args.rate <= 0:
        print("flat out: the publisher publishes back to back; the server's CPU is the limit",
              flush=True)
    print("stall phases: one more subscriber that never reads (its socket buffers shrunk "
          "to 4 KiB on both ends so the stall reaches the server within the run); "
          f"hub queue_limit={args.queue_limit} events, overflow_grace={args.grace:g} s; "
          "'stalled buf' = most the server buffered for it", flush=True)
    if args.uvloop:
        import uvloop
        uvloop.run(all_phases())
    else:
        asyncio.run(all_phases())

    print()
    print(f"{'phase':<18}{'delivered ev/s':>15}{'frames/sub':>15}{'CPU s':>7}"
          f"{'deliv/CPU-s':>13}{'fan-out/CPU-s':>15}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'stalled buf':>13}{'pub lag s':>10}")
    for p in phases:
        r = p.result
        frames = f"{r['frames_min']}-{r['frames_max']}/{r['expected_frames_per_sub']}"
        print(f"{p.name:<18}{r['delivered_eps']:>15,.0f}{frames:>15}{r['server_cpu_s']:>7.2f}"
              f"{r['deliveries_per_cpu_s']:>13,.0f}{r['deliveries_per_publish_cpu_s'] or 0:>15,.0f}"
              f"{fmt_ms(r['lat_p50'])} {fmt_ms(r['lat_p99'])}"
              f" {fmt_ms(r['lat_max'])}{r['stalled_buffer']:>13,.0f}{r['publisher_lag_s']:>10.2f}")
        extra = {k: v for k, v in r["control"].items()}
        if r["hub"]:
            h = r["hub"]
            extra.update(overflows=h["overflows"], slow_closes=h["slow_consumer_closes"],
                         frames_encoded=h["frames_encoded"], frames_sent=h["frames_sent"],
                         pumped_frames=h["replayed_frames"], dropped=h["events_dropped"])
        if extra:
            print(f"{'':<18}  {extra}")

    by = {p.name: p.result for p in phases}
    print()

    def ratio(a: str, b: str, key: str) -> None:
        if a in by and b in by and by[b][key]:
            print(f"  {key:<22} {a} / {b} = {by[a][key] / by[b][key]:.3f}")

    print("ratios:")
    ratio("procstream", "bare", "delivered_eps")
    ratio("procstream", "bare", "deliveries_per_cpu_s")
    ratio("procstream", "bare", "deliveries_per_publish_cpu_s")
    ratio("procstream+stall", "bare+stall", "delivered_eps")
    for kind in ("procstream", "bare"):
        if kind in by and f"{kind}+stall" in by and by[kind]["lat_p99"]:
            print(f"  p99 latency            {kind}+stall / {kind} = "
                  f"{by[f'{kind}+stall']['lat_p99'] / by[kind]['lat_p99']:.2f}")
    print("  budget: delivered >= 0.80 of bare; stalled p99 within 2x of the run without it")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=40.0,
                    help="batches per second; 0 = flat out (server CPU-bound)")
    ap.add_argument("--batch", type=int, default=20, help="events per batch (one poll)")
    ap.add_argument("--pad", type=int, default=60, help="extra cmdline bytes per event")
    ap.add_argument("--population", type=int, default=1000,
                    help="processes alive on the synthetic host (the snapshot's size)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    ap.add_argument("--phases", help="comma list of phases to run (default all)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per phase (medians reported)")
    ap.add_argument("--queue-limit", type=int, default=2000,
                    help="hub queue_limit (events a subscriber may lag before overflow)")
    ap.add_argument("--grace", type=float, default=4.0,
                    help="hub overflow_grace (s) before a stuck subscriber is closed 1013")
    ap.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--stall", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="pin the server to the first CPU and the client to the second")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin and len(cpus) >= 2:
        # Each side gets a core of its own; otherwise the two processes (and the
        # loopback TCP work) preempt each other and the figures measure the scheduler.
        os.sched_setaffinity(0, {cpus[1] if args.client else cpus[0]})
    if args.client:
        if args.uvloop:
            import uvloop
            uvloop.run(client_main(args))
        else:
            asyncio.run(client_main(args))
    else:
        server_main(args)


if __name__ == "__main__":
    main()
