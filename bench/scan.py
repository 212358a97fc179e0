"""CPU per poll: procstream vs the bare-Python floor, psutil and process-exporter.

    python bench/scan.py [--sizes 1000,5000] [--polls 20] [--busy 0.1]

For each size N it starts N processes: idle ones (copies of ``sleep``) and, with
``--busy F``, a share F of busy ones (copies of ``tail`` polling a file every 0.2 s: they
run between any two polls, so procstream reads them whole at every poll). Then it
measures, in the same run and on the same processes, CPU time per poll of:

- procstream: ``Grouper.update()`` + ``groups()`` with the default config (steady state,
  after the first poll), and the same plus building the poll's events; and, timed on its
  own, passing those events through the lifecycle (restarts, exit classes, expected
  groups) as the core does (``lifecycle``);
- floor: bare Python reading every file a poll uses (``stat`` of every process;
  ``status``, ``io`` and the ``fd`` directory of the tracked ones) with os.open/os.read,
  no parsing: what reading everything at every poll costs at the least;
- floor stat+schedstat: the same for ``stat`` of every process and ``schedstat`` of the
  tracked ones, what procstream reads of a process that has not run since the last poll:
  the least a poll of an idle host can cost;
- psutil: ``process_iter`` with the same attributes;
- procstream serve: the whole service (``--source poll``, no subscribers), CPU of its
  process per poll over 10 s;
- process-exporter: Debian's ``prometheus-process-exporter -threads=false
  -gather-smaps=false`` with the same (default) config, CPU of the exporter process per
  ``/metrics`` scrape (read from its /proc/PID/stat).

Prints µs per process per poll, the ratios to the floors and peers, and the load
average before and after each size (the machine may be shared). Everything it starts, it
stops.
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


def make_floor(mount: str, tracked: set[int], *, idle: bool = False) -> Callable[[], int]:
    """Bare reads of every file a poll uses, or (``idle``) of those a poll of processes
    that have not run since the last one uses: ``stat`` and ``schedstat``."""

    def floor() -> int:
        n = 0
        for name in os.listdir(mount):
            if not name.isdigit():
                continue
            d = f"{mount}/{name}/"
            try:
                read_bytes(d + "stat")
                if int(name) in tracked:
                    if idle:
                        read_bytes(d + "schedstat")
                        continue
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


def spawn_busy(n: int, exe: str) -> list[subprocess.Popen[bytes]]:
    """``n`` copies of ``tail`` looking at /dev/null every 0.2 s: little CPU, but they run
    between any two polls."""
    return [
        subprocess.Popen([exe, "---disable-inotify", "-f", "-s", "0.2", "/dev/null"], stdin=subprocess.DEVNULL)
        for _ in range(n)
    ]


def exporter_cpu_per_scrape(scrapes: int) -> float | None:
    exe = shutil.which("prometheus-process-exporter")
    if exe is None:
        print("  process-exporter: not installed (apt install prometheus-process-exporter)")
        return None
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write("process_names:\n  - name: '{{.Comm}}'\n    cmdline: ['.+']\n")
        cfg = f.name
    proc = subprocess.Popen(
        [exe, f"-config.path={cfg}", f"-web.listen-address=127.0.0.1:{port}", "-threads=false", "-gather-smaps=false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        # its first scrape of 10,000 processes may take longer than wait_http waits for
        # one answer: wait for the port, then give each scrape all the time it takes
        wait_http(f"http://127.0.0.1:{port}/", timeout=60)
        for _ in range(2):
            urllib.request.urlopen(url, timeout=300).read()

        def cpu() -> float:
            return process_cpu(proc.pid)

        c0 = cpu()
        for _ in range(scrapes):
            urllib.request.urlopen(url, timeout=300).read()
        return (cpu() - c0) / scrapes
    finally:
        proc.terminate()
        proc.wait(10)
        os.unlink(cfg)


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
        "floor stat+schedstat": cpu_of(make_floor("/proc", tracked, idle=True), polls),
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,5000", help="comma list of process counts to start")
    ap.add_argument("--polls", type=int, default=20)
    ap.add_argument("--busy", type=float, default=0.0, metavar="F", help="share of the processes that are busy (default: 0)")
    ap.add_argument("--no-exporter", action="store_true")
    args = ap.parse_args(argv)
    if not 0.0 <= args.busy <= 1.0:
        ap.error("--busy must be between 0 and 1")
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = tempfile.mkdtemp(prefix="procstream-bench-")
    exe = os.path.join(tmp, "bench_sleeper")
    shutil.copy("/bin/sleep", exe)
    busy_exe = os.path.join(tmp, "bench_busy")
    shutil.copy(shutil.which("tail") or "/usr/bin/tail", busy_exe)
    idle: list[subprocess.Popen[bytes]] = []
    busy: list[subprocess.Popen[bytes]] = []
    table: list[tuple[int, dict[str, float]]] = []
    try:
        for size in sizes:
            want_busy = round(size * args.busy)
            busy += spawn_busy(max(want_busy - len(busy), 0), busy_exe)
            idle += spawn(max(size - want_busy - len(idle), 0), exe)
            time.sleep(1.0)  # let the processes settle (exec done) before measuring
            load0 = os.getloadavg()
            print(f"== {len(idle)} idle and {len(busy)} busy processes started; load average {load0[0]:.2f}", flush=True)
            r = measure(args.polls, not args.no_exporter)
            table.append((size, r))
            n = r["_procs"]
            print(f"   {int(n)} processes on the host, {int(r['_tracked'])} tracked by the default config")
            for key, value in r.items():
                if key.startswith("_"):
                    continue
                print(f"   {key:22s} {value * 1e3:9.2f} ms/poll {value / n * 1e6:8.2f} µs/process")
            ours = r["procstream"]
            serve = r["procstream serve"]
            print(f"   procstream / floor                  = {ours / r['floor']:.2f}")
            print(f"   procstream serve / floor            = {serve / r['floor']:.2f}")
            print(f"   procstream / floor stat+schedstat   = {ours / r['floor stat+schedstat']:.2f}")
            if "process-exporter" in r:
                print(f"   procstream / process-exporter       = {ours / r['process-exporter']:.3f}")
                print(f"   procstream serve / process-exporter = {serve / r['process-exporter']:.3f}  (whole service per poll)")
            if "psutil" in r:
                print(f"   procstream / psutil                 = {ours / r['psutil']:.3f}")
            print(f"   load average {load0[0]:.2f} before, {os.getloadavg()[0]:.2f} after", flush=True)
        if len(table) > 1:
            r0, r1 = table[0][1], table[-1][1]
            print(f"== growth from {int(r0['_procs'])} to {int(r1['_procs'])} processes")
            for key in r0:
                if key.startswith("_") or key not in r1:
                    continue
                per0 = r0[key] / r0["_procs"] * 1e6
                per1 = r1[key] / r1["_procs"] * 1e6
                print(f"   {key:22s} {per0:8.2f} -> {per1:8.2f} µs/process (x{r1[key] / r0[key]:.2f} per poll)")
    finally:
        children = idle + busy
        for c in children:
            c.terminate()
        for c in children:
            c.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
