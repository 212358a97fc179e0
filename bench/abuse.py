"""Abuse benchmark: ``procstream serve`` under hostile clients and a hostile local user.

Run by hand (not a test)::

    python bench/abuse.py                        # every scenario, 15 s each
    python bench/abuse.py --seconds 30 --only spam,argv
    python bench/abuse.py --max-memory 128M --procs 3000
    python bench/abuse.py --repeat 3             # each scenario 3 times, verdicts on all runs' samples

One server per scenario, over a fake /proc tree of ``--procs`` idle processes (whose files the
scenario changes to play a local user), with ``--max-memory`` and ``--slow-client-grace``
(``--grace``). A well-behaved client, in a process of its own, reads everything sent to
it and sends a ``subscribe`` frame every ``--probe`` seconds (20 ms: some 700 samples in
15 s, so that the p99 is not just the second-worst sample): its latency is the time from each frame
to its ``subscribed`` acknowledgement (one clock, no poll in it: what the server's event
loop and the client's share of it cost). Scenarios, each run for ``--seconds`` after a baseline of the same length
without the attack:

- ``spam``: 40 clients with a 4 KiB receive buffer that never read, each sending 63
  ``subscribe`` frames (issue 10, defect 1);
- ``argv``: a local user starts 5 processes a second, each with a 1.86 MiB argv, each
  living a second (defect 2); a client that resumes from ``since=0`` at the end must get
  every event in frames under 1 MiB;
- ``filters``: 50 reading clients, each with its own ``groups`` filter, while processes
  with 8 KB argvs churn in 50 groups (defect 3);
- ``nofile``: the server starts with a descriptor limit of 1024 (soft and hard) and
  ``--max-clients 1024``; 1,100 half-open sockets, then WebSocket clients until refused
  (defect 4). Reports the clients accepted, what the refused ones got, /healthz, and the
  descriptors the server holds against its limit.

Reported per scenario: the server's resident size (RSS) at baseline, its peak during
the attack and after the attackers left (5 s later), against ``--max-memory``; "after"
also less what the resume buffer grew by (the events the attack caused stay replayable
for 15 minutes: that is the buffer's job, bounded by its own part of the budget); the
well-behaved client's p50/p99 latency during the attack against its baseline. Budget:
RSS never above ``--max-memory``, back within 10 % of baseline after the attackers
leave, the well-behaved client's p99 within 2x of its baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import ROOT, free_port, percentile, wait_http

import orjson  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from tests.support.fake_proc_tree import remove_proc, write_proc  # noqa: E402
from tests.support.raw_ws import masked, stalled_client  # noqa: E402

MIB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- the fake /proc ---------------------------------------------------------------------------


def make_tree(base: Path, procs: int) -> Path:
    root = base / "proc"
    root.mkdir()
    (root / "stat").write_bytes(b"cpu 0 0 0 0\nbtime 1795677232\n")
    for i in range(procs):
        pid = 1000 + i
        write_proc(root, pid, comm=f"app{i % 40}", start=10_000 + i,
                   cmdline=f"/usr/bin/app{i % 40}\0--worker\0{i}\0--config\0/etc/app.yaml\0".encode())
        # As on a real host, each has a schedstat of its own (run time, wait, runs): a
        # poll tells by it that an idle process has not run, and reads no more of it.
        (root / str(pid) / "schedstat").write_bytes(b"10000000 %d 1\n" % (10_000 + i))
    return root


# -- the server -------------------------------------------------------------------------------


class Server:
    def __init__(self, tree: Path, args: argparse.Namespace, *extra: str, nofile: tuple[int, int] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/ws"
        cmd = [sys.executable, "-m", "procstream", "serve", "--procfs", str(tree), "--listen", f"127.0.0.1:{self.port}",
               "--interval", str(args.interval), "--source", "poll", "--max-memory", args.max_memory,
               "--slow-client-grace", str(args.grace), *extra]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=None if nofile is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile)))
        wait_http(self.url + "/healthz")

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in urllib.request.urlopen(self.url + "/metrics", timeout=10).read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name.removesuffix("_total")] = float(value)
        return out

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# -- clients ----------------------------------------------------------------------------------


async def good_client_main(url: str, period: float) -> None:
    """The well-behaved client's process: every ``period`` seconds a subscribe frame, and
    one line per acknowledgement, "arrival latency"; it reads every frame as it comes."""
    request = orjson.dumps({"op": "subscribe", "types": ["cycle"], "snapshot": False}).decode()
    async with connect(url + "?types=cycle&snapshot=0") as ws:
        while True:
            sent = time.monotonic()
            await ws.send(request)
            while True:
                objs = orjson.loads(await ws.recv())
                if any(o.get("type") == "subscribed" for o in objs):
                    break
            got = time.monotonic()
            print(f"{time.time()} {got - sent}", flush=True)
            await asyncio.sleep(max(0.0, period - (got - sent)))


class GoodClient:
    """Runs :func:`good_client_main` in a process of its own (the attacks run in this
    one and would delay it), and collects its (arrival, latency) lines."""

    def __init__(self, url: str, period: float) -> None:
        self.url = url
        self.period = period
        self.latencies: list[tuple[float, float]] = []
        self.closed: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--good-client", self.url, "--probe", str(self.period),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            at, lat = line.split()
            self.latencies.append((float(at), float(lat)))
        assert self._proc.stderr is not None
        err = (await self._proc.stderr.read()).decode()
        if self._proc.returncode not in (None, -15) and err:
            self.closed = err.strip().splitlines()[-1]

    def between(self, t0: float, t1: float) -> list[float]:
        return [lat for at, lat in self.latencies if t0 <= at < t1]

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await self._proc.wait()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


# -- one scenario -----------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    budget: int
    baseline_rss: int = 0
    peak_rss: int = 0
    after_rss: int = 0
    buffer_growth: int = 0
    base_lat: list[float] = field(default_factory=list)
    attack_lat: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


#: Where an attack marks its phases, as (name, time.time() at its start): the scenario
#: then reports the well-behaved client's p99 in each.
MARKS: list[tuple[str, float]] = []


def by_phase(good: GoodClient, end: float) -> str:
    out = []
    for (name, t0), (_, t1) in zip(MARKS, [*MARKS[1:], ("", end)]):
        lat = good.between(t0, t1)
        if lat:
            out.append(f"{name} {t1 - t0:.1f} s: p99 {percentile(lat, 0.99) * 1000:.1f} ms over {len(lat)}")
    return "well-behaved client by phase: " + "; ".join(out)


async def sample_rss(server: Server, into: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        into.append(server.rss())
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except TimeoutError:
            pass


async def scenario(name: str, args: argparse.Namespace, attack: Callable[[Server, Path, float], Any],
                   extra: tuple[str, ...] = (), nofile: tuple[int, int] | None = None) -> Result:
    base = Path(tempfile.mkdtemp(prefix="procstream-abuse-"))
    base.chmod(0o755)
    tree = make_tree(base, args.procs)
    server = Server(tree, args, *extra, nofile=nofile)
    result = Result(name, _size(args.max_memory))
    good = GoodClient(server.ws, args.probe)
    try:
        await good.start()
        t0 = time.time()
        await asyncio.sleep(args.seconds)
        result.base_lat = good.between(t0 + 1, time.time())
        result.baseline_rss = server.rss()
        buffered = server.metrics()['procstream_memory_used_bytes{part="buffer"}']
        samples: list[int] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(server, samples, stop))
        t1 = time.time()
        try:
            MARKS.clear()
            notes = await attack(server, tree, args.seconds)
        finally:
            stop.set()
            await sampler
        result.attack_lat = good.between(t1, time.time())
        result.peak_rss = max(samples)
        result.notes = list(notes or [])
        if MARKS:
            result.notes.append(by_phase(good, time.time()))
        await asyncio.sleep(5)  # attackers gone: let the server give memory back
        result.after_rss = server.rss()
        result.buffer_growth = int(server.metrics()['procstream_memory_used_bytes{part="buffer"}'] - buffered)
        if good.closed is not None:
            result.notes.append(f"well-behaved client closed: {good.closed!r}")
    finally:
        await good.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return result


def _size(text: str) -> int:
    sys.path.insert(0, str(ROOT))
    from procstream.serve.resources import parse_size

    return parse_size(text)


# -- the attacks ------------------------------------------------------------------------------


async def attack_spam(server: Server, tree: Path, seconds: float) -> list[str]:
    t0 = time.monotonic()
    attackers = [stalled_client(server.port) for _ in range(40)]
    frame = masked(b'{"op":"subscribe"}')
    for s in attackers:
        s.sendall(frame * 63)
    closed_at = None
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(0.2)
        if closed_at is None and server.metrics()["procstream_subscribers"] <= 1:
            closed_at = time.monotonic() - t0
    for s in attackers:
        s.close()
    await asyncio.sleep(1)  # what the server does about the closes counts in the attack
    m = server.metrics()
    return [f"40 stalled clients closed after {closed_at:.1f} s" if closed_at is not None
            else "stalled clients NOT all closed",
            f"1013 closes: {m['procstream_slow_consumer_closes']:.0f} (stalled {m['procstream_stalled_closes']:.0f}, "
            f"budget {m['procstream_budget_closes']:.0f}, outbox {m['procstream_outbox_closes']:.0f})"]


async def attack_argv(server: Server, tree: Path, seconds: float) -> list[str]:
    argv = b"\0".join([b"/tmp/hostile"] + [b"A" * 65_000] * 30) + b"\0"  # 1.86 MiB
    pid = 500_000
    living: list[tuple[float, int]] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        write_proc(tree, pid, comm="hostile", cmdline=argv, start=900_000 + pid)
        living.append((time.monotonic(), pid))
        pid += 1
        while living and time.monotonic() - living[0][0] > 1.0:
            remove_proc(tree, living.pop(0)[1])
        await asyncio.sleep(0.2)
    for _, p in living:
        remove_proc(tree, p)
    # a client resuming over all of it, with websockets' default 1 MiB limit
    largest = 0
    events = 0
    async with connect(server.ws + "?snapshot=0") as ws:
        hello = orjson.loads(await ws.recv())[0]
    head = hello["head_seq"]
    async with connect(f"{server.ws}?since=0&epoch={hello['epoch']}") as ws:
        seen = 0
        while seen < head:
            frame = await asyncio.wait_for(ws.recv(), 10)
            largest = max(largest, len(frame))
            for obj in orjson.loads(frame):
                if "seq" in obj and obj["type"] != "bookmark":
                    seen = obj["seq"]
                    events += 1
    m = server.metrics()
    held = m['procstream_memory_used_bytes{part="buffer"}']
    return [f"{pid - 500_000} processes with a 1.86 MiB argv",
            f"resume from 0: {events} events, largest frame {largest / 1024:.0f} KiB (oldest replayable seq {hello['oldest_seq']})",
            f"resume buffer: {m['procstream_buffer_events']:.0f} events, {held / MIB:.1f} MiB"]


async def attack_filters(server: Server, tree: Path, seconds: float) -> list[str]:
    clients = [await connect(f"{server.ws}?groups=g{i}&snapshot=0") for i in range(50)]
    received = [0] * 50

    async def read(i: int) -> None:
        async for frame in clients[i]:
            received[i] += len(frame)

    readers = [asyncio.create_task(read(i)) for i in range(50)]
    pid = 700_000
    t0 = time.monotonic()
    caches = 0.0
    while time.monotonic() - t0 < seconds:
        batch = list(range(pid, pid + 50))
        for i, p in enumerate(batch):
            write_proc(tree, p, comm=f"g{i}", cmdline=b"/bin/worker\0" + b"w" * 8000 + b"\0", start=800_000 + p)
        await asyncio.sleep(0.2)
        for p in batch:
            remove_proc(tree, p)
        pid += 50
        caches = max(caches, server.metrics()['procstream_memory_used_bytes{part="caches"}'])
    for ws in clients:
        await ws.close()
    await asyncio.gather(*readers, return_exceptions=True)
    return [f"50 filters received {sum(received) / MIB:.0f} MiB; caches peaked at {caches / MIB:.1f} MiB"]


async def attack_nofile(server: Server, tree: Path, seconds: float) -> list[str]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    MARKS.append(("connecting", time.time()))
    half_open = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(1100)]
    t = time.monotonic()
    status = urllib.request.urlopen(server.url + "/healthz", timeout=10).status
    healthz_ms = (time.monotonic() - t) * 1000
    accepted = int(server.metrics()["procstream_max_clients"])
    clients, refused = [], {}
    for _ in range(accepted + 20):
        try:
            clients.append(stalled_client(server.port, "snapshot=0"))
        except (ConnectionRefusedError, OSError) as exc:
            refused[str(exc)] = refused.get(str(exc), 0) + 1
    fds = server.fds()
    t = time.monotonic()
    status2 = urllib.request.urlopen(server.url + "/healthz", timeout=10).status
    healthz2_ms = (time.monotonic() - t) * 1000
    MARKS.append(("holding", time.time()))
    await asyncio.sleep(max(0.0, seconds - 5))
    MARKS.append(("closing", time.time()))
    for s in clients + half_open:
        s.close()
    await asyncio.sleep(1)  # what the server does about the closes counts in the attack
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    m = server.metrics()
    return [f"limit 1024: accepts {accepted} clients; {len(clients)} connected, refused: {refused}",
            f"/healthz with 1,100 half-open sockets: {status} in {healthz_ms:.0f} ms; "
            f"with {len(clients)} clients: {status2} in {healthz2_ms:.0f} ms",
            f"descriptors held {fds} of 1024 (headroom {1024 - fds}); idle sockets closed "
            f"{m['procstream_idle_sockets_closed']:.0f}; poll failures {m['procstream_poll_failures']:.0f}"]


SCENARIOS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "spam": (attack_spam, {}),
    "argv": (attack_argv, {}),
    "filters": (attack_filters, {}),
    "nofile": (attack_nofile, {"extra": ("--max-clients", "1024"), "nofile": (1024, 1024)}),
}


def report(results: list[Result]) -> None:
    print()
    print("| scenario | budget | baseline RSS | peak RSS | after | after − buffer growth | after/baseline | "
          "p50 base | p99 base | p50 attack | p99 attack | max attack | samples | p99 ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        p99b, p99a = percentile(r.base_lat, 0.99), percentile(r.attack_lat, 0.99)
        after = r.after_rss - max(0, r.buffer_growth)
        print(f"| {r.name} | {r.budget / MIB:.0f} MiB | {r.baseline_rss / MIB:.1f} MiB | {r.peak_rss / MIB:.1f} MiB | "
              f"{r.after_rss / MIB:.1f} MiB | {after / MIB:.1f} MiB | {after / r.baseline_rss:.2f} | "
              f"{percentile(r.base_lat, 0.5) * 1000:.1f} ms | {p99b * 1000:.1f} ms | "
              f"{percentile(r.attack_lat, 0.5) * 1000:.1f} ms | {p99a * 1000:.1f} ms | "
              f"{max(r.attack_lat) * 1000:.1f} ms | {len(r.attack_lat)} | {p99a / p99b:.2f} |")
    print()
    names = list(dict.fromkeys(r.name for r in results))
    for name in names:
        runs = [r for r in results if r.name == name]
        peak = max(r.peak_rss for r in runs)
        after = statistics.median((r.after_rss - max(0, r.buffer_growth)) / r.baseline_rss for r in runs)
        # The verdict pools every run's samples: one stall in a run moves its own p99 a lot.
        p99 = (percentile([x for r in runs for x in r.attack_lat], 0.99)
               / percentile([x for r in runs for x in r.base_lat], 0.99))
        verdict = [
            f"peak RSS {peak / MIB:.1f} MiB " + ("within budget" if peak <= runs[0].budget else "OVER BUDGET"),
            f"after/baseline {after:.2f} " + ("(back within 10 %)" if after <= 1.1 else "(NOT back within 10 %)"),
            f"p99 ratio {p99:.2f} over {sum(len(r.attack_lat) for r in runs)} samples "
            + ("(within 2x)" if p99 <= 2 else "(OVER 2x)"),
        ]
        print(f"{name} ({len(runs)} run{'s' if len(runs) > 1 else ''}): {'; '.join(verdict)}")
        for r in runs:
            for note in r.notes:
                print(f"    {note}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="baseline and attack length (default 15)")
    parser.add_argument("--procs", type=int, default=3000, help="processes in the fake /proc (default 3000)")
    parser.add_argument("--interval", type=float, default=0.5, help="the server's --interval (default 0.5)")
    parser.add_argument("--max-memory", default="256M", help="the server's --max-memory (default 256M)")
    parser.add_argument("--grace", type=float, default=5.0, help="the server's --slow-client-grace (default 5)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma list of scenarios")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario (default 1)")
    parser.add_argument("--probe", type=float, default=0.02,
                        help="seconds between the well-behaved client's requests (default 0.02)")
    parser.add_argument("--good-client", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.good_client:
        await good_client_main(args.good_client, args.probe)
        return
    results = []
    for name in args.only.split(","):
        attack, kw = SCENARIOS[name]
        for run in range(args.repeat):
            print(f"running {name} ({run + 1}/{args.repeat}) ...", flush=True)
            results.append(await scenario(name, args, attack, **kw))
    report(results)


if __name__ == "__main__":
    asyncio.run(main())
