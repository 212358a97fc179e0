"""CPU per poll: procstream vs the bare-Python floor, psutil and process-exporter.

    python bench/scan.py [--sizes 1000,5000] [--polls 20]

For each size N it starts N idle processes (copies of ``sleep``), then measures, in the
same run and on the same processes, CPU time per poll of:

- procstream: ``Grouper.update()`` + ``groups()`` with the default config (steady state,
  after the first poll), and the same plus building the poll's events; and, timed on its
  own, passing those events through the lifecycle (restarts, exit classes, expected
  groups) as the core does (``lifecycle``);
- floor: bare Python reading exactly the files procstream reads in steady state
  (``stat`` of every process; ``status``, ``io`` and the ``fd`` directory of the tracked
  ones) with os.open/os.read, no parsing;
- psutil: ``process_iter`` with the same attributes;
- procstream serve: the whole service (``--source poll``, no subscribers), CPU of its
  process per poll over 10 s;
- process-exporter: Debian's ``prometheus-process-exporter -threads=false
  -gather-smaps=false`` with the same (default) config, CPU of the exporter process per
  ``/metrics`` scrape (read from its /proc/PID/stat).

Prints µs per process per poll and the budget ratios (procstream ≤ 1/4 of
process-exporter and ≤ 2x the floor). Everything it starts, it stops.

Two more measurements, each on its own flag:

- ``--watch N``: per-process numbers (``proc.update``) for a viewer watching a group of N
  more idle processes. In this process: what the core adds to a poll for them (the live
  table, the numbers of the N, the events when all N changed, and the hub encoding them
  for one subscriber), against a poll with nobody watching. And the whole ``serve``
  process's CPU per poll with a viewer's subscription alone, then with the same viewer
  also watching the group, alternating.
- ``--extras``: process-exporter's optional families. procstream with ``--threads
  --gather-smaps`` (and with ``--threads-wchan`` too) against Debian's
  ``prometheus-process-exporter`` with its defaults (``-threads -gather-smaps``, and it
  always reads wait channels), on the same processes, plus ``--threaded K`` python
  processes of 8 threads each so there are threads to read. Budget: ≤ 1/3 of
  process-exporter's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable

from _common import ROOT, free_port, process_cpu, read_bytes, wait_http  # puts the tree on sys.path

from procstream.config import default_config  # noqa: E402
from procstream.events import EventBuilder  # noqa: E402
from procstream.grouper import Grouper  # noqa: E402
from procstream.lifecycle import Lifecycle  # noqa: E402
from procstream.procfs import FS  # noqa: E402

__all__ = ["main"]

PSUTIL_ATTRS = [
    "pid", "ppid", "name", "cmdline", "create_time", "uids", "cpu_times", "io_counters",
    "memory_info", "num_ctx_switches", "num_threads", "num_fds", "status",
]  # fmt: skip


def cpu_of(fn: Callable[[], object], rounds: int) -> float:
    """Median CPU seconds of this process per call of ``fn``."""
    samples = []
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        samples.append(time.process_time() - t0)
    return statistics.median(samples)


def make_floor(mount: str, tracked: set[int]) -> Callable[[], int]:
    def floor() -> int:
        n = 0
        for name in os.listdir(mount):
            if not name.isdigit():
                continue
            d = f"{mount}/{name}/"
            try:
                read_bytes(d + "stat")
                if int(name) in tracked:
                    read_bytes(d + "status")
                    try:
                        read_bytes(d + "io")
                    except PermissionError:
                        pass
                    os.stat(d + "fd")
            except (FileNotFoundError, ProcessLookupError):
                continue
            n += 1
        return n

    return floor


def spawn(n: int, exe: str) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([exe, "3600"], stdin=subprocess.DEVNULL) for _ in range(n)]


class Exporter:
    """Debian's prometheus-process-exporter with the default config and ``options``,
    running until ``close()``; ``cpu_per_scrape(n)`` measures it."""

    def __init__(self, options: tuple[str, ...]) -> None:
        exe = shutil.which("prometheus-process-exporter")
        if exe is None:
            raise FileNotFoundError("prometheus-process-exporter (apt install prometheus-process-exporter)")
        port = free_port()
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            f.write("process_names:\n  - name: '{{.Comm}}'\n    cmdline: ['.+']\n")
            self.cfg = f.name
        self.proc = subprocess.Popen(
            [exe, f"-config.path={self.cfg}", f"-web.listen-address=127.0.0.1:{port}", *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{port}/metrics"
        try:
            wait_http(self.url)
            for _ in range(2):
                urllib.request.urlopen(self.url, timeout=30).read()
        except BaseException:
            self.close()
            raise

    def cpu_per_scrape(self, scrapes: int) -> float:
        c0 = process_cpu(self.proc.pid)
        for _ in range(scrapes):
            urllib.request.urlopen(self.url, timeout=30).read()
        return (process_cpu(self.proc.pid) - c0) / scrapes

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        os.unlink(self.cfg)


def exporter_cpu_per_scrape(scrapes: int, options: tuple[str, ...] = ("-threads=false", "-gather-smaps=false")) -> float | None:
    try:
        exporter = Exporter(options)
    except FileNotFoundError as exc:
        print(f"  process-exporter: not installed ({exc})")
        return None
    try:
        return exporter.cpu_per_scrape(scrapes)
    finally:
        exporter.close()


def serve_cpu_per_poll(seconds: float = 10.0, interval: float = 0.5, extra: tuple[str, ...] = ()) -> float:
    """CPU of a whole ``procstream serve`` process (poller, event building, hub, no
    subscribers) per poll, from its /proc/PID/stat over ``seconds``; ``extra`` options
    are added to its command line."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "procstream", "serve", "--source", "poll", "--interval", str(interval),
         "--listen", f"127.0.0.1:{port}", "--log-level", "warning", *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        wait_http(url)
        time.sleep(2 * interval)  # past start-up: measure the steady state

        def sample() -> tuple[float, int]:
            polls = json.loads(urllib.request.urlopen(url, timeout=5).read())["polls"]
            return process_cpu(proc.pid), polls

        c0, p0 = sample()
        time.sleep(seconds)
        c1, p1 = sample()
        return (c1 - c0) / max(p1 - p0, 1)
    finally:
        proc.terminate()
        proc.wait(10)


def measure(polls: int, exporter: bool) -> dict[str, float]:
    fs = FS("/proc")
    grouper = Grouper(default_config())
    builder = EventBuilder(username=grouper.username)
    grouper.update(fs.all_procs())
    _, procs = builder.state(grouper.tracker.tracked.values(), grouper.groups(), time.time())
    lifecycle = Lifecycle()
    lifecycle.baseline(procs)
    tracked = {tp.pid for tp in grouper.tracker.tracked.values()}

    def ours() -> None:
        grouper.update(fs.all_procs())
        grouper.groups()

    def ours_events() -> None:
        u = grouper.update(fs.all_procs())
        builder.batch(u, grouper.groups(), duration_ms=0.0)

    def lifecycle_alone() -> float:
        # Its share is too small to show as the difference of two rows measured one
        # after the other on a busy machine: time it alone, within a poll.
        u = grouper.update(fs.all_procs())
        groups = grouper.groups()
        events = builder.batch(u, groups, duration_ms=0.0)
        t0 = time.process_time()
        lifecycle.observe(events, tick=True, reported=groups, now=u.time)
        return time.process_time() - t0

    results = {
        "procstream": cpu_of(ours, polls),
        "procstream+events": cpu_of(ours_events, polls),
        "lifecycle": statistics.median(lifecycle_alone() for _ in range(polls)),
        "floor": cpu_of(make_floor("/proc", tracked), polls),
    }
    try:
        import psutil  # type: ignore[import-untyped]

        def ps() -> None:
            for p in psutil.process_iter(PSUTIL_ATTRS):
                p.info  # noqa: B018

        ps()
        results["psutil"] = cpu_of(ps, max(polls // 4, 3))
    except ImportError:
        print("  psutil: not installed")
    results["procstream serve"] = serve_cpu_per_poll()
    if exporter:
        cost = exporter_cpu_per_scrape(max(polls // 2, 5))
        if cost is not None:
            results["process-exporter"] = cost
    results["_procs"] = sum(1 for name in os.listdir("/proc") if name.isdigit())
    results["_tracked"] = len(tracked)
    return results


# -- --watch: per-process numbers for a viewer -----------------------------------------------


def core_cost_of_watching(group: str, repeat: int = 200) -> dict[str, float]:
    """CPU seconds, in this process, of each piece of work per-process numbers add to a
    poll (timed alone: next to the scan of /proc they would be lost in its noise).

    ``table``: the poll's live table, built whenever a hub listens, watched or not;
    ``numbers``: computing the watched processes' numbers and finding what changed;
    ``events``: the same when all of them changed, building their ``proc.update``;
    ``hub``: numbering a poll's batch and encoding it for a viewer and a watcher, with
    those events in it, minus the same without them.
    """
    from procstream.live import LiveTable, UpdateInterest
    from procstream.stream.hub import Hub
    from procstream.stream.protocol import Filter, Subscription

    class Sink:
        def writable(self) -> bool:
            return True

        def write(self, frame: bytes) -> bool:
            return True

        def try_write(self, frame: bytes) -> int:
            return 1

        def wake(self) -> None:
            pass

        def close(self, code: int, reason: str) -> None:
            pass

    fs = FS("/proc")
    grouper = Grouper(default_config())
    builder = EventBuilder(username=grouper.username)
    grouper.update(fs.all_procs())
    grouper.update(fs.all_procs())
    tracked = list(grouper.tracker.tracked.values())
    interest = UpdateInterest(groups=frozenset({group}))
    before = LiveTable.of(time.time() - 1, tracked)
    table = LiveTable.of(time.time(), tracked, before)
    builder.proc_updates(table, interest, 0.0)

    def per_call(fn: Callable[[], object]) -> float:
        t0 = time.process_time()
        for _ in range(repeat):
            fn()
        return (time.process_time() - t0) / repeat

    def all_changed() -> None:
        builder._live_sent = {}
        builder.proc_updates(table, interest, 0.0)

    builder._live_sent = {}
    updates = builder.proc_updates(table, interest, 0.0)
    hub = Hub(host="bench", interval=1.0)
    hub.load_state({}, [])
    for filt in (Filter(), Filter(frozenset({"proc.update", "cycle"}), frozenset({group}))):
        hub.subscribe(hub.attach(Sink()), Subscription(filter=filt), ack=False)
    cycle = {"type": "cycle", "ts": 0.0, "duration_ms": 1.0, "procs_seen": 1, "tracked": 1, "started": 0,
             "exited": 0, "permission_errors": 0, "read_errors": 0, "partial_errors": 0}
    with_updates = per_call(lambda: hub.publish([dict(u) for u in updates] + [dict(cycle)]))
    without = per_call(lambda: hub.publish([dict(cycle)]))
    return {
        "table": per_call(lambda: LiveTable.of(time.time(), tracked, table)),
        "numbers": per_call(lambda: builder.proc_updates(table, interest, 0.0)),
        "events": per_call(all_changed),
        "hub": with_updates - without,
        "_watched": len(updates),
        "_tracked": len(tracked),
    }


def serve_cost_of_watching(group: str, rounds: int, seconds: float = 8.0, interval: float = 0.5) -> dict[str, float]:
    """CPU of a whole ``serve`` per poll with one viewer subscribed (no proc.update), and
    with the viewer also watching ``group`` (proc.update), alternating ``rounds`` times."""
    import asyncio

    from websockets.asyncio.client import connect

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "procstream", "serve", "--source", "poll", "--interval", str(interval),
         "--listen", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/healthz"

    def sample() -> tuple[float, int]:
        polls = json.loads(urllib.request.urlopen(url, timeout=5).read())["polls"]
        return process_cpu(proc.pid), polls

    async def drain(ws) -> None:  # type: ignore[no-untyped-def]
        async for _ in ws:
            pass

    async def phase(watch: bool) -> float:
        async with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as viewer:
            tasks = [asyncio.create_task(drain(viewer))]
            live = None
            if watch:
                live = await connect(f"ws://127.0.0.1:{port}/ws?types=proc.update,cycle&groups={group}", max_size=None)
                tasks.append(asyncio.create_task(drain(live)))
            await asyncio.sleep(2 * interval)  # past the snapshots
            c0, p0 = sample()
            await asyncio.sleep(seconds)
            c1, p1 = sample()
            if live is not None:
                await live.close()
            for t in tasks:
                t.cancel()
            return (c1 - c0) / max(p1 - p0, 1)

    try:
        wait_http(url)
        time.sleep(2 * interval)
        out: dict[str, list[float]] = {"viewer": [], "viewer watching": []}
        for _ in range(rounds):
            out["viewer"].append(asyncio.run(phase(False)))
            out["viewer watching"].append(asyncio.run(phase(True)))
        return {k: statistics.median(v) for k, v in out.items()}
    finally:
        proc.terminate()
        proc.wait(10)


def watch_report(n: int, rounds: int, exe_dir: str) -> None:
    exe = os.path.join(exe_dir, "bench_watched")
    shutil.copy("/bin/sleep", exe)
    watched = spawn(n, exe)
    try:
        time.sleep(1.0)
        core = core_cost_of_watching("bench_watched")
        n, total = int(core["_watched"]), int(core["_tracked"])
        print(f"== a viewer watching {n} idle processes (group bench_watched) of {total} tracked")
        print(f"   live table, every poll ({total} entries)       {core['table'] * 1e6:9.1f} µs")
        print(f"   numbers of the {n}, none changed          {core['numbers'] * 1e6:9.1f} µs")
        print(f"   numbers and proc.update, all {n} changed  {core['events'] * 1e6:9.1f} µs")
        print(f"   hub: {n} proc.update encoded and sent      {core['hub'] * 1e6:9.1f} µs")
        print(f"   a poll watching {n} that all changed: +{(core['table'] + core['events'] + core['hub']) * 1e3:.3f} ms; "
              f"with nobody watching: +{core['table'] * 1e3:.3f} ms (the table)")
        serve = serve_cost_of_watching("bench_watched", rounds)
        v, w = serve["viewer"], serve["viewer watching"]
        print(f"   serve, one viewer              {v * 1e3:9.2f} ms/poll")
        print(f"   serve, the viewer watching     {w * 1e3:9.2f} ms/poll  (+{(w - v) * 1e3:.2f} ms, medians of {rounds})")
    finally:
        for c in watched:
            c.terminate()
        for c in watched:
            c.wait()


# -- --extras: process-exporter's optional families ------------------------------------------

THREADED = r"""
import sys, threading
ev = threading.Event()
for _ in range(7):
    threading.Thread(target=ev.wait, daemon=True).start()
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.read()
"""


def extras_report(polls: int, threaded: int, rounds: int) -> None:
    kids = [subprocess.Popen([sys.executable, "-c", THREADED], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            for _ in range(threaded)]
    exporter: Exporter | None = None
    try:
        for k in kids:
            assert k.stdout is not None and k.stdout.readline() == b"ready\n"

        def ours(**extras: bool) -> Callable[[], None]:
            fs = FS("/proc", **extras)
            grouper = Grouper(default_config())
            grouper.update(fs.all_procs())
            grouper.update(fs.all_procs())

            def poll() -> None:
                grouper.update(fs.all_procs())
                grouper.groups()

            return poll

        runs = {
            "procstream (defaults)": ours(),
            "procstream --threads --gather-smaps": ours(threads=True, smaps=True),
            "procstream + --threads-wchan": ours(threads=True, smaps=True, wchan=True),
        }
        try:
            exporter = Exporter(())  # Debian's defaults: -threads -gather-smaps
        except FileNotFoundError as exc:
            print(f"  process-exporter: not installed ({exc})")
        # Rounds alternate between them all, so a load that changes weighs on each alike.
        samples: dict[str, list[float]] = {key: [] for key in runs}
        samples["process-exporter"] = []
        for _ in range(rounds):
            for key, poll in runs.items():
                samples[key].append(cpu_of(poll, polls))
            if exporter is not None:
                samples["process-exporter"].append(exporter.cpu_per_scrape(max(polls // 2, 5)))
        results = {key: statistics.median(v) for key, v in samples.items() if v}
        procs = sum(1 for name in os.listdir("/proc") if name.isdigit())
        threads = sum(int(open(f"/proc/{k.pid}/stat").read().rpartition(")")[2].split()[17]) for k in kids)
        print(f"== optional families: {procs} processes on the host, {threaded} of them python with "
              f"{threads // max(threaded, 1)} threads; medians of {rounds} alternating rounds")
        for key, value in results.items():
            unit = "scrape" if key == "process-exporter" else "poll"
            name = "process-exporter -threads -gather-smaps" if key == "process-exporter" else key
            print(f"   {name:40s} {value * 1e3:9.2f} ms/{unit}")
        if "process-exporter" in results:
            theirs = results["process-exporter"]
            for key in list(runs)[1:]:
                print(f"   {key} / process-exporter = {results[key] / theirs:.3f}  (budget ≤ 0.33)")
    finally:
        if exporter is not None:
            exporter.close()
        for k in kids:
            k.kill()
        for k in kids:
            k.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,5000", help="comma list of idle process counts to start")
    ap.add_argument("--polls", type=int, default=20)
    ap.add_argument("--no-exporter", action="store_true")
    ap.add_argument("--watch", type=int, default=0, metavar="N",
                    help="also measure a viewer watching a group of N more processes (proc.update)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of --watch's serve phases and of --extras")
    ap.add_argument("--extras", action="store_true",
                    help="also measure --threads --gather-smaps against process-exporter's defaults")
    ap.add_argument("--threaded", type=int, default=50, metavar="K",
                    help="python processes of 8 threads each started for --extras (default: 50)")
    ap.add_argument("--only", action="store_true", help="skip the default measurement (with --watch or --extras)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = tempfile.mkdtemp(prefix="procstream-bench-")
    exe = os.path.join(tmp, "bench_sleeper")
    shutil.copy("/bin/sleep", exe)
    children: list[subprocess.Popen[bytes]] = []
    table: list[tuple[int, dict[str, float]]] = []
    try:
        for size in sizes:
            children += spawn(size - len(children), exe)
            time.sleep(1.0)  # let the sleepers settle (exec done) before measuring
            print(f"== {size} idle processes started", flush=True)
            if args.watch:
                watch_report(args.watch, args.rounds, tmp)
            if args.extras:
                extras_report(args.polls, args.threaded, args.rounds)
            if args.only:
                continue
            r = measure(args.polls, not args.no_exporter)
            table.append((size, r))
            n = r["_procs"]
            print(f"   {int(n)} processes on the host, {int(r['_tracked'])} tracked by the default config")
            for key, value in r.items():
                if key.startswith("_"):
                    continue
                print(f"   {key:18s} {value * 1e3:9.2f} ms/poll {value / n * 1e6:8.2f} µs/process")
            ours = r["procstream"]
            print(f"   procstream / floor            = {ours / r['floor']:.2f}   (budget ≤ 2)")
            if "process-exporter" in r:
                print(f"   procstream / process-exporter = {ours / r['process-exporter']:.3f}  (budget ≤ 0.25)")
                serve = r["procstream serve"]
                print(f"   procstream serve / process-exporter = {serve / r['process-exporter']:.3f}  (whole service per poll)")
            if "psutil" in r:
                print(f"   procstream / psutil           = {ours / r['psutil']:.3f}")
        if len(table) > 1:
            r0, r1 = table[0][1], table[-1][1]
            print(f"== growth from {int(r0['_procs'])} to {int(r1['_procs'])} processes")
            for key in r0:
                if key.startswith("_") or key not in r1:
                    continue
                per0 = r0[key] / r0["_procs"] * 1e6
                per1 = r1[key] / r1["_procs"] * 1e6
                print(f"   {key:18s} {per0:8.2f} -> {per1:8.2f} µs/process (x{r1[key] / r0[key]:.2f} per poll)")
    finally:
        for c in children:
            c.terminate()
        for c in children:
            c.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
