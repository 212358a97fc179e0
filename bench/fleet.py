"""One ``procstream fleet`` for many hosts: ingest, CPU, latency, a fresh start.

    python bench/fleet.py [--hosts 1000] [--period 5] [--events 10] [--subscribers 100]
                          [--seconds 30] [--scale 2500,5000,10000] [--replay 100000]
                          [--max-memory 1G]

Starts its own ``nats-server -js`` on loopback and, for each fleet size (``--hosts``,
then each of ``--scale``):

- **Hosts**: simulated in child processes of this script (500 per process, 100 per NATS
  connection, at a lower priority than the rest: ``nice`` 10), each the real publishing
  code of ``serve --nats``: a ``Hub`` numbering
  and encoding its events, a ``Publisher`` sending them to JetStream with
  acknowledgements, a ``StateWriter`` keeping its state in the bucket. Each host has
  ``--procs`` processes in 5 groups and polls every ``--period`` seconds (the hosts'
  polls spread over the period), ``--events`` events a poll: a cycle, group updates,
  starts and the exits of the previous poll's starts.
- **A fresh aggregator** (``procstream fleet``, its own process) started once the hosts
  have their states in the bucket: seconds to ready (``/healthz`` 200) and to a full
  snapshot (``/api/snapshot`` with every host). Its ``--max-memory`` is ``--max-memory``
  (the fleet's state is in it: the default 256M does not hold thousands of hosts), and
  its resident size and memory sheds are reported after the live part.
- **Live**, ``--seconds``: ``--subscribers`` WebSocket clients of the aggregator (one
  process; 4 of them parse every frame and note publish → client latency from each
  event's ``ts``, which the simulated host sets right before its hub publishes it; the
  others only read), and beside them a bare nats-py subscriber (an ordered push
  consumer of the same stream, noting the same latency). Events/s offered and ingested
  (the aggregator's ``procstream_fleet_events_total``), its lag at the end, its CPU
  per 10,000 events (its process's user+system time), p50/p99 latency of both.
- **Catch-up**: with the hosts stopped, the last ``--replay`` messages of the stream
  read as fast as each can: the bare subscriber, and a second fresh aggregator started
  with ``--buffer`` that large (its replay, from its log's "replaying" line to its
  "ready" line). Messages/s of each and the ratio (budget: aggregator ≥ 0.5 of bare).

With ``--cheap`` the ``--scale`` sizes' hosts hand their events (numbered and encoded by
their hubs, with the publisher's subjects and ids) to core NATS without waiting for
acknowledgements: the real publisher with acknowledgements costs the hosts' processes
more CPU than a small machine has beside the aggregator, its clients and nats-server.

A fleet size is sustained when the aggregator ends the run with its lag under one
period's events and the p99 latency under 1 s (budget: 10,000 events/s on one core).
Everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from typing import Any

from _common import ROOT, NatsServer, free_port, percentile, process_cpu  # puts the tree on sys.path

import nats  # noqa: E402
import orjson  # noqa: E402
from nats.js.api import ConsumerConfig, DeliverPolicy  # noqa: E402

__all__ = ["main"]

HOSTS_PER_PROCESS = 500
HOSTS_PER_LINK = 100
PROBES = 4
GROUPS = ("web", "worker", "db", "cache", "agent")


# -- children: simulated hosts, WebSocket clients, the bare subscriber ---------------------


def host_batch(poll: int, events: int, procs: int) -> list[dict[str, Any]]:
    """One poll of a host: a cycle, group updates, then pairs of a start and the exit of
    the previous poll's start (so the host's process count stays where it is)."""
    ts = time.time()
    out: list[dict[str, Any]] = [{"type": "cycle", "ts": ts, "duration_ms": 3.0, "procs_seen": procs + 50,
                                  "tracked": procs, "started": 1, "exited": 1, "permission_errors": 0,
                                  "read_errors": 0, "partial_errors": 0}]
    pairs = max(0, (events - 4) // 2)
    for k in range(3):
        g = GROUPS[(poll + k) % len(GROUPS)]
        out.append({"type": "group.update", "ts": ts, "group": g, "procs": procs // len(GROUPS), "threads": 40,
                    "cpu_s": 10.0 + poll, "cpu_user_s": 8.0 + poll, "cpu_system_s": 2.0, "cpu_pct": 1.5 + k,
                    "read_bytes": 4096 * poll, "write_bytes": 1024 * poll, "read_bps": 100.0, "write_bps": 50.0,
                    "mem_resident": 50_000_000, "mem_virtual": 200_000_000, "mem_swap": 0, "open_fds": 30,
                    "worst_fd_ratio": 0.01, "major_faults": 1, "minor_faults": 1000 + poll,
                    "ctx_voluntary": 500 + poll, "ctx_nonvoluntary": 10,
                    "oldest_start_time": 1764000000.0, "states": {"running": 1, "sleeping": 39, "waiting": 0,
                                                                  "zombie": 0, "other": 0}})
    for k in range(pairs):
        pid = 100_000 + (poll * pairs + k) % 50_000
        proc = {"pid": pid, "ppid": 1, "start_time": 1764140000.0 + poll, "name": "job",
                "cmdline": ["/usr/bin/job", "--id", str(pid)], "group": "worker", "user": "app", "uid": 1000,
                "source": "netlink"}
        out.append({"type": "proc.start", "ts": ts, **proc, "restart_of": None})
        if poll:
            prev = dict(proc, pid=100_000 + ((poll - 1) * pairs + k) % 50_000, start_time=1764140000.0 + poll - 1)
            out.append({"type": "proc.exit", "ts": ts, **prev, "lifetime_s": 5.0, "cpu_s": 0.1, "read_bytes": 0,
                        "write_bytes": 0, "exit_code": 0, "signal": None, "exit_class": "ok"})
    while len(out) < events:
        out.append({**out[0], "duration_ms": 3.5})
    return out[:events]


def initial_state(procs: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    groups = {g: {"procs": procs // len(GROUPS), "threads": 40, "cpu_pct": 1.0, "mem_resident": 50_000_000}
              for g in GROUPS}
    plist = [{"pid": 1000 + i, "ppid": 1, "start_time": 1764000000.0 + i, "name": GROUPS[i % len(GROUPS)],
              "cmdline": [f"/usr/sbin/{GROUPS[i % len(GROUPS)]}", "--serve"], "group": GROUPS[i % len(GROUPS)],
              "user": "app", "uid": 1000} for i in range(procs)]
    return groups, plist


async def hosts_main(args: argparse.Namespace) -> None:
    from procstream.fleet.link import NatsLink
    from procstream.fleet.options import NatsSettings, PublishSettings, StreamSpec
    from procstream.fleet.publisher import Publisher
    from procstream.fleet.state import StateWriter
    from procstream.stream.hub import Hub

    # The hosts yield the CPU to the aggregator: on a small machine they would otherwise
    # starve it, and what is measured is the aggregator keeping up with what they send.
    os.nice(10)
    settings = NatsSettings(servers=(args.url,))
    publish = PublishSettings(state_interval=10.0)
    links = [NatsLink(settings, name=f"bench hosts {args.first}+{i}") for i in range(0, args.count, HOSTS_PER_LINK)]
    hubs: list[Hub] = []
    writers: list[StateWriter] = []
    pubs: list[Publisher] = []
    # --cheap: where the stream is, for the state writers (no publisher tells them):
    # the stream's last seq read first, then the hub's head: every later event of the
    # host is stored after that position.
    positions: dict[str, tuple[int, int]] = {}
    for i in range(args.count):
        n = args.first + i
        hub = Hub(host=f"h{n:05d}", interval=args.period, buffer_size=10_000)
        link = links[i // HOSTS_PER_LINK]
        hubs.append(hub)
        if args.cheap:
            position = (lambda h: lambda: positions.get(h, (0, 0)))(hub.host)
        else:
            pub = Publisher(hub, link, StreamSpec(), publish)
            pubs.append(pub)
            position = pub.acked_position
        writers.append(StateWriter(hub, link, position, bucket=publish.state_bucket, stream="PROCSTREAM",
                                   interval=publish.state_interval))
    if args.cheap:
        from procstream.fleet.stream import ensure_state_bucket, ensure_stream

        for link in links:
            link.start()
            await link.connected.wait()
        js = links[0].nc.jetstream()
        await ensure_stream(js, StreamSpec(), "h")
        await ensure_state_bucket(js, publish.state_bucket, 1)

        async def track() -> None:
            while True:
                last = (await js.stream_info("PROCSTREAM")).state.last_seq
                for hub in hubs:
                    positions[hub.host] = (hub.head_seq, last)
                await asyncio.sleep(1.0)

        tracker = asyncio.create_task(track())  # noqa: F841 - runs for the life of the process
    for pub in pubs:
        await pub.start()
    for hub, writer in zip(hubs, writers):
        writer.start()
        hub.load_state(*initial_state(args.procs))
    while sum(w.writes for w in writers) < len(writers):
        await asyncio.sleep(0.2)
    print("ready", flush=True)
    t0 = time.monotonic()
    offsets = [(i / len(hubs)) * args.period for i in range(len(hubs))]
    poll = 0
    while True:
        base = t0 + poll * args.period
        for i, (hub, off) in enumerate(zip(hubs, offsets)):
            due = base + off
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            first = hub.head_seq + 1
            hub.publish(host_batch(poll, args.events, args.procs))
            if args.cheap:
                await send_cheap(links[i // HOSTS_PER_LINK].nc, hub, first)
        poll += 1


async def send_cheap(nc: Any, hub: Any, first: int) -> None:
    from procstream.fleet.subjects import event_subject, host_token, msg_id

    start, types, datas = hub.read(first, hub.head_seq - first + 1)
    token = host_token(hub.host)
    for i, (typ, data) in enumerate(zip(types, datas)):
        await nc.publish(event_subject(token, typ), data, headers={"Nats-Msg-Id": msg_id(hub.host, hub.epoch, start + i)})


async def clients_main(args: argparse.Namespace) -> None:
    from websockets.asyncio.client import connect

    latencies: list[list[float]] = [[] for _ in range(PROBES)]
    counts = [0] * args.subscribers
    closed = [0]
    stop = time.monotonic() + args.seconds

    async def one(i: int) -> None:
        async with connect(args.ws + "?snapshot=0", max_size=None, open_timeout=30) as ws:
            probe = i < PROBES
            while time.monotonic() < stop:
                try:
                    frame = await asyncio.wait_for(ws.recv(), 1.0)
                except TimeoutError:
                    continue
                if probe:
                    now = time.time()
                    for o in orjson.loads(frame):
                        if "ts" in o and o.get("type") != "bookmark":
                            latencies[i].append(now - o["ts"])
                            counts[i] += 1
                else:
                    counts[i] += 1

    results = await asyncio.gather(*(one(i) for i in range(args.subscribers)), return_exceptions=True)
    closed[0] = sum(1 for r in results if isinstance(r, Exception))
    lat = [x for probe in latencies for x in probe]
    print(json.dumps({"p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99), "max": max(lat, default=float("nan")),
                      "events_per_probe": [c for c in counts[:PROBES]], "closed": closed[0]}), flush=True)


async def bare_main(args: argparse.Namespace) -> None:
    nc = await nats.connect(args.url)
    js = nc.jetstream()
    latencies: list[float] = []
    count = 0
    done = asyncio.Event()
    t_first = 0.0

    async def cb(msg: Any) -> None:
        nonlocal count, t_first
        if not count:
            t_first = time.perf_counter()
        count += 1
        if args.live:
            latencies.append(time.time() - orjson.loads(msg.data)["ts"])
        elif args.parse:
            orjson.loads(msg.data)
        if args.target and count >= args.target:
            done.set()

    config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW) if args.live else ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=args.start)
    t0 = time.perf_counter()
    sub = await js.subscribe("procstream.>", stream="PROCSTREAM", cb=cb, ordered_consumer=True, config=config,
                             pending_msgs_limit=-1, pending_bytes_limit=-1)
    if args.live:
        await asyncio.sleep(args.seconds)
    else:
        await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - t0
    await sub.unsubscribe()
    await nc.close()
    print(json.dumps({"count": count, "seconds": elapsed, "p50": percentile(latencies, 0.5),
                      "p99": percentile(latencies, 0.99)}), flush=True)


# -- the orchestra ---------------------------------------------------------------------


def child(*args: str, out: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=out, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Aggregator:
    """``procstream fleet`` in a process of its own, its log in a file."""

    def __init__(self, url: str, buffer: int, max_memory: str) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="procstream-bench-fleet-", suffix=".log", delete=False)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "procstream", "fleet", "--nats", url, "--listen", f"127.0.0.1:{self.port}",
             "--buffer", str(buffer), "--max-clients", "2000", "--host-timeout", "120", "--max-memory", max_memory],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return r.read()

    def ready(self, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get("/healthz")
                return time.monotonic() - self.t0
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the aggregator did not start:\n{open(self.log.name).read()[-2000:]}") from None
                time.sleep(0.05)

    def metric(self, name: str) -> float:
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return float("nan")

    def replay_seconds(self) -> tuple[int, float]:
        """(messages replayed, seconds) from its log's "replaying" and "ready" lines."""
        text = open(self.log.name).read()
        a = re.search(r"^(\S+ \S+) .*replaying stream \S+ from seq (\d+) to (\d+)", text, re.M)
        b = re.search(r"^(\S+ \S+) .*ready in", text, re.M)
        if not a or not b:
            return 0, float("nan")

        def t(stamp: str) -> float:
            return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return int(a.group(3)) - int(a.group(2)) + 1, t(b.group(1)) - t(a.group(1))

    def close(self) -> None:
        stop(self.proc)
        os.unlink(self.log.name)


async def _stream_last(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info("PROCSTREAM")).state.last_seq
    finally:
        await nc.close()


def stream_last(url: str) -> int:
    return asyncio.run(_stream_last(url))


def phase(args: argparse.Namespace, hosts: int, replay: bool, cheap: bool) -> dict[str, Any]:
    offered = hosts * args.events / args.period
    print(f"== {hosts} hosts, a poll each per {args.period:g} s, {args.events} events a poll: "
          f"{offered:,.0f} events/s offered; {args.subscribers} subscribers"
          f"{'; hosts send unacknowledged' if cheap else ''}", flush=True)
    server = NatsServer()
    sims: list[subprocess.Popen[str]] = []
    agg: Aggregator | None = None
    try:
        for first in range(0, hosts, HOSTS_PER_PROCESS):
            sims.append(child("_hosts", "--url", server.url, "--first", str(first),
                              "--count", str(min(HOSTS_PER_PROCESS, hosts - first)), "--period", str(args.period),
                              "--events", str(args.events), "--procs", str(args.procs),
                              *(("--cheap",) if cheap else ())))
        for sim in sims:
            assert sim.stdout is not None
            if sim.stdout.readline().strip() != "ready":
                raise SystemExit("a host simulator did not start")
        time.sleep(args.period)  # every host polled at least once
        agg = Aggregator(server.url, 100_000, args.max_memory)
        ready = agg.ready()
        t_snap = time.monotonic()
        snap = orjson.loads(agg.get("/api/snapshot"))
        full = time.monotonic() - agg.t0
        print(f"   fresh aggregator: ready in {ready:.2f} s, full snapshot ({len(snap['hosts'])} hosts, "
              f"{len(snap['procs']):,} processes, {len(orjson.dumps(snap)) / 1e6:.1f} MB) at {full:.2f} s "
              f"(the GET {time.monotonic() - t_snap:.2f} s)", flush=True)
        clients = child("_clients", "--ws", f"ws://127.0.0.1:{agg.port}/ws", "--subscribers", str(args.subscribers),
                        "--seconds", str(args.seconds + 3))
        bare = child("_bare", "--url", server.url, "--live", "--seconds", str(args.seconds + 3))
        time.sleep(3)  # connected, warm
        seq0, ev0, cpu0, t0 = stream_last(server.url), agg.metric("procstream_fleet_events_total"), \
            process_cpu(agg.proc.pid), time.monotonic()
        time.sleep(args.seconds)
        seq1, ev1, cpu1, t1 = stream_last(server.url), agg.metric("procstream_fleet_events_total"), \
            process_cpu(agg.proc.pid), time.monotonic()
        lag = agg.metric("procstream_fleet_consumer_lag")
        resident = agg.metric('procstream_memory_used_bytes{part="resident"}')
        sheds = agg.metric("procstream_memory_sheds_total")
        out_c, _ = clients.communicate(timeout=120)
        out_b, _ = bare.communicate(timeout=120)
        c = json.loads(out_c.strip().splitlines()[-1])
        b = json.loads(out_b.strip().splitlines()[-1])
        dt = t1 - t0
        stored, ingested = (seq1 - seq0) / dt, (ev1 - ev0) / dt
        cpu = cpu1 - cpu0
        per10k = cpu / max(1.0, ev1 - ev0) * 10_000
        ok = lag < offered * args.period and c["p99"] < 1.0 and c["closed"] == 0
        print(f"   live {dt:.0f} s: stored {stored:,.0f} events/s, aggregator ingested {ingested:,.0f}/s "
              f"(lag at the end {lag:,.0f}), CPU {cpu / dt:.2f} of a core = {per10k:.2f} s per 10,000 events", flush=True)
        print(f"   publish → WebSocket client: p50 {c['p50'] * 1000:.0f} ms, p99 {c['p99'] * 1000:.0f} ms, "
              f"max {c['max'] * 1000:.0f} ms ({c['closed']} clients closed); bare nats-py subscriber: "
              f"p50 {b['p50'] * 1000:.0f} ms, p99 {b['p99'] * 1000:.0f} ms", flush=True)
        print(f"   aggregator resident {resident / 2**20:,.0f} MiB of --max-memory {args.max_memory}, "
              f"{sheds:.0f} sheds", flush=True)
        print(f"   {'sustained' if ok else 'NOT sustained'}", flush=True)
        result = {"hosts": hosts, "offered": offered, "stored": stored, "ingested": ingested, "lag": lag,
                  "cpu_core": cpu / dt, "cpu_per_10k": per10k, "p50": c["p50"], "p99": c["p99"],
                  "bare_p99": b["p99"], "ready": ready, "full": full, "resident": resident, "sheds": sheds, "ok": ok}
        if replay:
            for sim in sims:
                stop(sim)
            sims = []
            last = stream_last(server.url)
            n = min(args.replay, last)
            rates: dict[str, list[float]] = {"bare": [], "bare+json": [], "aggregator": []}
            for _ in range(2):  # alternating: the machine's other load moves between runs
                for name, extra in (("bare", ()), ("bare+json", ("--parse",))):
                    bare = child("_bare", "--url", server.url, "--start", str(last - n + 1), "--target", str(n), *extra)
                    out_b, _ = bare.communicate(timeout=900)
                    b = json.loads(out_b.strip().splitlines()[-1])
                    rates[name].append(b["count"] / b["seconds"])
                second = Aggregator(server.url, n, args.max_memory)
                try:
                    second.ready(900)
                    count, seconds = second.replay_seconds()
                finally:
                    second.close()
                rates["aggregator"].append(count / seconds)
            best = {k: max(v) for k, v in rates.items()}
            print(f"   catch-up of {n:,} messages (best of 2): bare nats-py {best['bare']:,.0f} messages/s, "
                  f"bare decoding the JSON {best['bare+json']:,.0f}/s, aggregator {best['aggregator']:,.0f}/s: "
                  f"ratio {best['aggregator'] / best['bare']:.2f} / {best['aggregator'] / best['bare+json']:.2f} "
                  f"(budget ≥ 0.5); runs {json.dumps({k: [round(x) for x in v] for k, v in rates.items()})}",
                  flush=True)
            result.update(bare_rate=best["bare"], agg_rate=best["aggregator"])
        return result
    finally:
        for sim in sims:
            stop(sim)
        if agg is not None:
            agg.close()
        server.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):
        return child_main(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--period", type=float, default=5.0)
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--procs", type=int, default=20, help="processes per host (in 5 groups)")
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--scale", default="", help="more fleet sizes to try after --hosts, comma list of host counts")
    ap.add_argument("--cheap", action="store_true",
                    help="in the --scale sizes, hosts send their events without waiting for acknowledgements "
                         "(core NATS publish), to offer more than the real publisher can beside everything else")
    ap.add_argument("--replay", type=int, default=100_000, help="messages of the catch-up part (0 = skip)")
    ap.add_argument("--max-memory", default="1G", help="the aggregators' --max-memory (its fleet's state lives in it)")
    args = ap.parse_args(argv)
    results = [phase(args, args.hosts, bool(args.replay), False)]
    for hosts in (int(h) for h in args.scale.split(",") if h.strip()):
        results.append(phase(args, hosts, False, args.cheap))
        if not results[-1]["ok"]:
            break
    sustained = [r for r in results if r["ok"]]
    if sustained:
        best = max(sustained, key=lambda r: r["offered"])
        print(f"== largest fleet sustained: {best['hosts']} hosts, {best['ingested']:,.0f} events/s, "
              f"p99 {best['p99'] * 1000:.0f} ms, {best['cpu_core']:.2f} of a core")
    return 0


def child_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode")
    ap.add_argument("--url")
    ap.add_argument("--ws")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--period", type=float, default=5.0)
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--procs", type=int, default=20)
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--live", action="store_true")
    ap.add_argument("--start", type=int, default=1)
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--parse", action="store_true", help="decode each message's JSON (catch-up)")
    ap.add_argument("--cheap", action="store_true")
    args = ap.parse_args(argv)
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    run = {"_hosts": hosts_main, "_clients": clients_main, "_bare": bare_main}[args.mode]
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
