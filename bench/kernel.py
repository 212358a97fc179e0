"""Short-lived processes: capture rate and latency, kernel events vs polling vs process-exporter.

    python bench/kernel.py [--count 100] [--lifetimes 0.005,0.05,0.5] [--storm 1000x10] [--storm-exec]

For each lifetime L it starts ``--count`` processes (copies of ``sleep`` named
``psb_<L>``, each sleeping L seconds; one every 20 ms) and measures, in the same run:

- ``procstream serve --source netlink`` and ``--source poll`` (interval 1 s), through a
  WebSocket subscriber: the share of processes that got a ``proc.start``/``proc.exit``,
  an exit code, and their argv (``cmdline_known``), and the latency from the real exec
  (Popen's return) and the real exit (waitpid's return) to the event's arrival at the
  subscriber, p50/p99;
- process-exporter scraped every second, with a ``{{.Comm}}:{{.PID}}`` config so each
  process is its own group: the share of processes that ever showed up in a scrape, and
  the delay from exec to the first scrape that showed it.

``--storm RATExSECONDS`` then runs a fork storm (RATE ``/bin/true`` per second for
SECONDS; copies of ``true``) against the netlink server and reports: events received vs
processes, the server's peak RSS growth, and /healthz latency during the storm (a blocked event loop
would show there). Repeated ``--storm-rounds`` times on one server: memory must level off
once the resume buffer (``--buffer`` events) is full. Each round also says for how many
processes the argv was gone before it could be read (``cmdline_known`` false). With
``--storm-exec`` each process is a shell (a copy of ``sh``) that execs the short program:
two execs, so each is named twice (the shell's group, then the program's), and the round
says how many exits came in the program's group and how many renames were seen as they
happened. Everything it starts, it stops. Needs root (kernel events).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from _common import ROOT, free_port, wait_http  # noqa: E402  (also puts the tree on sys.path)
from _common import percentile as pct

import orjson
from websockets.asyncio.client import connect

__all__ = ["main"]

class Workload:
    """Starts processes and records when each really started (exec done) and exited."""

    def __init__(self, exe: Path, lifetime: float, count: int, gap: float = 0.02) -> None:
        self.exe, self.lifetime, self.count, self.gap = exe, lifetime, count, gap
        self.started: dict[int, float] = {}
        self.exited: dict[int, float] = {}

    def run(self) -> None:
        reaper_done = threading.Event()

        def reap() -> None:
            while len(self.exited) < self.count:
                try:
                    pid, _ = os.waitpid(-1, 0)
                except ChildProcessError:
                    if reaper_done.is_set():
                        return
                    time.sleep(0.001)
                    continue
                self.exited[pid] = time.time()

        t = threading.Thread(target=reap)
        t.start()
        for _ in range(self.count):
            pid = os.posix_spawn(str(self.exe), [str(self.exe), f"{self.lifetime}"], os.environ)
            self.started[pid] = time.time()  # posix_spawn returns once exec succeeded
            time.sleep(self.gap)
        reaper_done.set()
        t.join(30)


async def subscribe(url: str, events: list[tuple[float, dict]], ready: asyncio.Event, stop: asyncio.Event) -> None:
    async with connect(url, max_size=None) as ws:
        while not stop.is_set():
            try:
                frame = await asyncio.wait_for(ws.recv(), 0.2)
            except TimeoutError:
                continue
            now = time.time()
            for obj in orjson.loads(frame):
                if obj.get("type") == "snapshot":
                    ready.set()
                events.append((now, obj))


async def measure_procstream(source: str, config: Path, exe: Path, lifetime: float, count: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "procstream", "serve", "--config", str(config), "--source", source,
         "--interval", "1", "--listen", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
        events: list[tuple[float, dict]] = []
        ready, stop = asyncio.Event(), asyncio.Event()
        sub = asyncio.create_task(subscribe(f"ws://127.0.0.1:{port}/ws?types=proc.*", events, ready, stop))
        await asyncio.wait_for(ready.wait(), 10)
        work = Workload(exe, lifetime, count)
        await asyncio.to_thread(work.run)
        await asyncio.sleep(2.5)  # let the next polls come and go
        stop.set()
        await sub
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    starts = {ev["pid"]: t for t, ev in events if ev.get("type") == "proc.start" and ev["pid"] in work.started}
    exits = {ev["pid"]: (t, ev) for t, ev in events if ev.get("type") == "proc.exit" and ev["pid"] in work.started}
    start_lat = [(starts[p] - work.started[p]) * 1000 for p in starts]
    exit_lat = [(exits[p][0] - work.exited[p]) * 1000 for p in exits if p in work.exited]
    with_code = sum(1 for _, ev in exits.values() if ev.get("exit_code") == 0)
    with_argv = sum(1 for _, ev in exits.values() if ev.get("cmdline_known", True))
    return {
        "argv_known": with_argv / count * 100,
        "start_capture": len(starts) / count * 100,
        "exit_capture": len(exits) / count * 100,
        "exit_code_known": with_code / count * 100,
        "start_p50": pct(start_lat, 0.5),
        "start_p99": pct(start_lat, 0.99),
        "exit_p50": pct(exit_lat, 0.5),
        "exit_p99": pct(exit_lat, 0.99),
    }


def measure_exporter(config: Path, exe: Path, lifetime: float, count: int) -> dict[str, float] | None:
    binary = shutil.which("prometheus-process-exporter")
    if binary is None:
        return None
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"-config.path={config}", f"-web.listen-address=127.0.0.1:{port}", "-threads=false", "-gather-smaps=false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    seen: dict[int, float] = {}
    stop = threading.Event()

    def scrape() -> None:
        url = f"http://127.0.0.1:{port}/metrics"
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                text = urllib.request.urlopen(url, timeout=5).read().decode()
            except OSError:
                continue
            now = time.time()
            for line in text.splitlines():
                if line.startswith("namedprocess_namegroup_num_procs{") and not line.endswith(" 0"):
                    name = line.split('groupname="', 1)[1].split('"', 1)[0]
                    if name.startswith("psb_") and ":" in name:
                        seen.setdefault(int(name.rsplit(":", 1)[1]), now)
            stop.wait(max(0.0, 1.0 - (time.monotonic() - t0)))

    try:
        wait_http(f"http://127.0.0.1:{port}/metrics")
        t = threading.Thread(target=scrape)
        t.start()
        work = Workload(exe, lifetime, count)
        work.run()
        time.sleep(2.5)
        stop.set()
        t.join(10)
    finally:
        proc.terminate()
        proc.wait(10)
    caught = [p for p in work.started if p in seen]
    lat = [(seen[p] - work.started[p]) * 1000 for p in caught]
    return {"start_capture": len(caught) / count * 100, "start_p50": pct(lat, 0.5), "start_p99": pct(lat, 0.99)}


async def storm(
    config: Path, exe: Path, rate: int, seconds: int, rounds: int, buffer: int, shell: Path | None = None
) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "procstream", "serve", "--config", str(config), "--source", "netlink",
         "--interval", "1", "--listen", f"127.0.0.1:{port}", "--log-level", "warning", "--buffer", str(buffer)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def rss_kb() -> int:
        for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    how = f"{shell.name} -c 'exec {exe.name}'" if shell is not None else exe.name
    print(f"== fork storm: {rate}/s for {seconds}s of {how}, {rounds} rounds, kernel events, --buffer {buffer}")
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
        events: list[tuple[float, dict]] = []
        ready, stop = asyncio.Event(), asyncio.Event()
        sub = asyncio.create_task(subscribe(f"ws://127.0.0.1:{port}/ws?types=proc.*", events, ready, stop))
        await asyncio.wait_for(ready.wait(), 10)
        print(f"   server RSS before: {rss_kb() / 1024:.1f} MiB")
        for round_no in range(1, rounds + 1):
            events.clear()
            peak = rss_kb()
            health: list[float] = []
            done = threading.Event()
            spawned: list[int] = []
            reaped: list[int] = []

            def fork_storm() -> None:
                t0 = time.monotonic()
                n = 0
                while n < rate * seconds:
                    delay = t0 + n / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    if shell is None:
                        spawned.append(os.posix_spawn(str(exe), [str(exe)], os.environ))
                    else:
                        spawned.append(os.posix_spawn(str(shell), [str(shell), "-c", f"exec {exe}"], os.environ))
                    n += 1
                done.set()

            def reap() -> None:
                while not (done.is_set() and len(reaped) >= len(spawned)):
                    try:
                        pid, _ = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        time.sleep(0.005)
                        continue
                    if pid == 0:
                        time.sleep(0.002)
                        continue
                    reaped.append(pid)

            threads = [threading.Thread(target=fork_storm), threading.Thread(target=reap)]
            for th in threads:
                th.start()
            while not done.is_set():
                t0 = time.perf_counter()
                await asyncio.to_thread(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read)
                health.append((time.perf_counter() - t0) * 1000)
                peak = max(peak, rss_kb())
                await asyncio.sleep(0.05)
            for th in threads:
                await asyncio.to_thread(th.join, 30)
            await asyncio.sleep(2.0)
            mine = set(spawned)
            exits = {ev["pid"]: ev for _, ev in events if ev.get("type") == "proc.exit" and ev["pid"] in mine}
            starts = [ev for _, ev in events if ev.get("type") == "proc.start" and ev["pid"] in mine]
            n = len(spawned)
            print(
                f"   round {round_no}: {len(exits)}/{n} exits received ({len(exits) / n * 100:.1f} %),"
                f" RSS peak {peak / 1024:.1f} MiB, after {rss_kb() / 1024:.1f} MiB;"
                f" /healthz p50 {pct(health, 0.5):.1f} ms p99 {pct(health, 0.99):.1f} ms max {max(health):.1f} ms"
            )
            unknown = {ev["pid"] for ev in starts if not ev.get("cmdline_known", True)}
            print(f"   argv unknown (gone before it could be read): {len(unknown)}/{n} processes ({len(unknown) / n * 100:.1f} %)")
            if shell is not None:
                last = sum(1 for ev in exits.values() if ev["group"] == exe.name)
                renamed = {ev["pid"] for ev in starts if (ev.get("previous") or {}).get("group") == shell.name}
                print(
                    f"   exits in {exe.name}'s group: {last}/{n} ({last / n * 100:.1f} %);"
                    f" renamed from {shell.name} as it happened: {len(renamed)}/{n}"
                )
        stop.set()
        await sub
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)


async def amain(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="procstream-bench-kernel-"))
    try:
        config = tmp / "config.yml"
        # one group per process, so process-exporter's scrapes tell which processes it saw
        config.write_text("process_names:\n  - name: '{{.Comm}}:{{.PID}}'\n    comm: [psb_5ms, psb_50ms, psb_500ms]\n")
        storm_config = tmp / "storm.yml"
        storm_config.write_text("process_names:\n  - name: '{{.Comm}}'\n    comm: [psb_storm, psb_sh]\n")
        for lifetime in [float(x) for x in args.lifetimes.split(",")]:
            label = f"{lifetime * 1000:g}ms"
            exe = tmp / f"psb_{label}"
            shutil.copy("/bin/sleep", exe)
            print(f"== processes living {label} ({args.count}, one every 20 ms)", flush=True)
            print(f"   {'source':22s} {'starts':>7s} {'exits':>7s} {'codes':>7s} {'argv':>7s} {'start p50/p99 ms':>18s} {'exit p50/p99 ms':>18s}")
            for source in ("netlink", "poll"):
                r = await measure_procstream(source, config, exe, lifetime, args.count)
                print(
                    f"   procstream {source:11s} {r['start_capture']:6.0f}% {r['exit_capture']:6.0f}% {r['exit_code_known']:6.0f}%"
                    f" {r['argv_known']:6.0f}%"
                    f" {r['start_p50']:8.1f}/{r['start_p99']:<8.1f} {r['exit_p50']:8.1f}/{r['exit_p99']:<8.1f}",
                    flush=True,
                )
            e = await asyncio.to_thread(measure_exporter, config, exe, lifetime, args.count)
            if e is None:
                print("   process-exporter: not installed")
            else:
                print(f"   {'process-exporter 1s':22s} {e['start_capture']:6.0f}%     n/a     n/a     n/a {e['start_p50']:8.1f}/{e['start_p99']:<8.1f}", flush=True)
        if args.storm:
            rate, seconds = (int(x) for x in args.storm.split("x"))
            true = tmp / "psb_storm"
            shutil.copy(shutil.which("true") or "/bin/true", true)
            shell = None
            if args.storm_exec:
                shell = tmp / "psb_sh"
                shutil.copy(shutil.which("sh") or "/bin/sh", shell)
            await storm(storm_config, true, rate, seconds, args.storm_rounds, args.buffer, shell)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--lifetimes", default="0.005,0.05,0.5")
    ap.add_argument("--storm", default="1000x10", help="RATExSECONDS, or '' to skip")
    ap.add_argument("--storm-rounds", type=int, default=3, help="storms in a row on one server (memory must level off)")
    ap.add_argument("--buffer", type=int, default=100_000, help="the server's --buffer (resume events kept)")
    ap.add_argument("--storm-exec", action="store_true", help="storm processes are shells that exec the short program")
    args = ap.parse_args(argv)
    asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
