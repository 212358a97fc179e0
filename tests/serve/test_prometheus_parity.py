"""Dashboards see the same truth from procstream as from process-exporter.

Debian's Prometheus scrapes ``procstream serve`` (its default source: kernel events, as
root) and Debian's ``prometheus-process-exporter`` (with ``-threads=false
-gather-smaps=false``: the families procstream exports), both on process-exporter's
packaged config and the same live processes, every 2 s. The processes start once both
serve, so procstream's kernel source sees them start: one through ``setsid nohup``, one
leaving a zombie. Then the PromQL that dashboards
for process-exporter use, keyed by group, is asked of both jobs at the same instant:
processes, CPU and I/O rates, memory, threads, open descriptors, zombies. For processes
both can see, the label sets must be the same and the values within a tolerance (the two
sample at different moments of each interval).

Everything runs on loopback, in temporary directories, and is stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from procstream.config import DEFAULT_CONFIG_TEXT
from procstream.netlink import connector as netlink
from tests.support.network import free_port
from tests.support.processes import stop
from tests.support.served import Served, http_get
from tests.support.waiting import wait_for

PROMETHEUS = shutil.which("prometheus")
EXPORTER = shutil.which("prometheus-process-exporter")
if (PROMETHEUS is None or EXPORTER is None) and os.environ.get("PROCSTREAM_SKIP_PEER") == "1":
    pytest.skip("prometheus or prometheus-process-exporter not installed (PROCSTREAM_SKIP_PEER=1)", allow_module_level=True)
OK, WHY = netlink.probe("/proc")
pytestmark = pytest.mark.skipif(not OK, reason=f"kernel events unavailable here: {WHY}")

RUN = os.getpid()
SLEEP, BURN, WRITE, THREADS, ZOMBIES = (f"pp{kind}{RUN}" for kind in ("sl", "cpu", "io", "thr", "z"))
GROUPS = (SLEEP, BURN, WRITE, THREADS, ZOMBIES)

# half a core: 10 ms of work, 10 ms of sleep
BURNER = """
import time
while True:
    end = time.perf_counter() + 0.01
    while time.perf_counter() < end:
        pass
    time.sleep(0.01)
"""
# 256 KiB to storage every 100 ms
WRITER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
block = b"x" * 262144
while True:
    os.pwrite(fd, block, 0)
    os.fsync(fd)
    time.sleep(0.1)
"""
# a fork-only child that exits at once and is never reaped: a zombie, in its parent's group
ZOMBIE_PARENT = """
import os, sys
if os.fork() == 0:
    os._exit(0)
print("ready", flush=True)
sys.stdin.read()
"""
THREADED = """
import sys, threading
files = [open("/dev/null") for _ in range(7)]
ev = threading.Event()
for _ in range(4):
    threading.Thread(target=ev.wait, daemon=True).start()
buf = bytearray(16 * 1024 * 1024)
print("ready", flush=True)
sys.stdin.read()
"""

SCRAPE_S = 2
WINDOW_S = 10
#: the whole test, servers' start-up included, stays within a minute
BUDGET_S = 55.0
RATE = f"[{WINDOW_S}s]"
#: group-keyed queries, as dashboards for process-exporter write them, and how close the
#: two jobs' values must be: (relative, absolute)
QUERIES: dict[str, tuple[str, float, float]] = {
    "num_procs": ("namedprocess_namegroup_num_procs", 0.0, 0.0),
    "cpu": (f"rate(namedprocess_namegroup_cpu_seconds_total{RATE})", 0.25, 0.05),
    "read": (f"rate(namedprocess_namegroup_read_bytes_total{RATE})", 0.25, 64 * 1024),
    "write": (f"rate(namedprocess_namegroup_write_bytes_total{RATE})", 0.25, 64 * 1024),
    "memory": ('namedprocess_namegroup_memory_bytes{memtype=~"resident|virtual|swapped"}', 0.05, 1024 * 1024),
    "threads": ("namedprocess_namegroup_num_threads", 0.0, 0.0),
    "fds": ("namedprocess_namegroup_open_filedesc", 0.0, 0.0),
    "zombies": ('namedprocess_namegroup_states{state="Zombie"}', 0.0, 0.0),
}


def program(tmp_path: Path, comm: str, target: str) -> str:
    link = tmp_path / comm
    link.symlink_to(target)
    return str(link)


@contextmanager
def workload(tmp_path: Path) -> Iterator[None]:
    """Long-lived processes of five groups, that both exporters see; one of the sleepers
    started through ``setsid nohup``, one group with a zombie. Started once procstream
    serves: its kernel source, not a poll, is what sees them start."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    out = Path("/var/tmp") / f"procstream-parity-{RUN}.bin"  # a disk: tmpfs writes are no storage I/O
    sleeper = program(tmp_path, SLEEP, sleep)
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([sleeper, "120"], **quiet) for _ in range(2)]
    procs.append(subprocess.Popen(["setsid", "nohup", sleeper, "120"], **quiet))
    procs.append(subprocess.Popen([program(tmp_path, BURN, sys.executable), "-S", "-c", BURNER]))
    procs.append(subprocess.Popen([program(tmp_path, WRITE, sys.executable), "-S", "-c", WRITER, str(out)]))
    waiting = [
        subprocess.Popen([program(tmp_path, comm, sys.executable), "-S", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for comm, code in ((THREADS, THREADED), (ZOMBIES, ZOMBIE_PARENT))
    ]
    procs.extend(waiting)
    try:
        for p in waiting:
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        yield
    finally:
        for p in procs:
            stop(p)
        out.unlink(missing_ok=True)


class Prometheus:
    """``prometheus`` scraping ``targets`` (job name -> port) every ``SCRAPE_S`` seconds."""

    def __init__(self, tmp_path: Path, targets: dict[str, int]) -> None:
        self.port = free_port()
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            for job, port in targets.items()
        )
        config = tmp_path / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: {SCRAPE_S}s\n  scrape_timeout: {SCRAPE_S}s\nscrape_configs:\n{jobs}")
        self.log = open(tmp_path / "prometheus.log", "wb")
        assert PROMETHEUS is not None
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def api(self, path: str, **params: Any) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, body, _ = http_get(url)
        assert status == 200, body[:500]
        doc = json.loads(body)
        assert doc["status"] == "success", doc
        return doc["data"]

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}")
        try:
            return http_get(f"http://127.0.0.1:{self.port}/-/ready", timeout=1)[0] == 200
        except OSError:
            return False

    def by_job(self, query: str, at: float) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """job -> (labels without job and instance) -> value, for this run's groups."""
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for series in self.api("query", query=query, time=f"{at:.3f}")["result"]:
            labels = dict(series["metric"])
            job = labels.pop("job")
            labels.pop("instance", None)
            labels.pop("__name__", None)
            if not re.fullmatch(rf"pp[a-z]+{RUN}", labels.get("groupname", "")):
                continue
            out.setdefault(job, {})[tuple(sorted(labels.items()))] = float(series["value"][1])
        return out

    def stop(self) -> None:
        stop(self.proc)
        self.log.close()


def test_procstream_and_process_exporter_agree_under_prometheus(tmp_path: Path) -> None:
    deadline = time.monotonic() + BUDGET_S
    config = tmp_path / "procs.yaml"
    config.write_text(DEFAULT_CONFIG_TEXT)  # process-exporter's packaged config: every process, by comm
    exporter_port = free_port()
    assert EXPORTER is not None
    exporter = subprocess.Popen(
        # the families procstream exports, no more (per-thread ones, smaps): its scrapes
        # then fit in the scrape interval on a busy machine too
        [EXPORTER, "-config.path", str(config), "-web.listen-address", f"127.0.0.1:{exporter_port}",
         "-threads=false", "-gather-smaps=false"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    served = Served("--config", str(config), "--interval", str(SCRAPE_S), log=tmp_path / "serve.log")
    prometheus: Prometheus | None = None
    try:
        served.start()
        status, body, _ = http_get(served.url + "/metrics")
        assert status == 200 and b'procstream_event_source{source="netlink"} 1.0' in body, "not the kernel source"
        with workload(tmp_path):
            targets = {"procstream": served.port, "exporter": exporter_port}
            for job, port in targets.items():
                wait_for(f"{job} to export this run's groups", lambda: _exports_groups(port, exporter), timeout=_left(deadline))
            prometheus = Prometheus(tmp_path, targets)
            compare(prometheus, deadline)
    finally:
        if prometheus is not None:
            prometheus.stop()
        served.stop()
        stop(exporter)


def _exports_groups(port: int, exporter: subprocess.Popen[bytes]) -> bool:
    if exporter.poll() is not None:
        raise AssertionError(f"prometheus-process-exporter exited with {exporter.returncode}")
    try:
        status, body, _ = http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    except OSError:
        return False
    return status == 200 and all(f'groupname="{g}"'.encode() in body for g in GROUPS)


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def compare(prometheus: Prometheus, deadline: float) -> None:
    """Ask both jobs the dashboards' queries at one instant, once a rate window is full."""
    wait_for("prometheus to be ready", prometheus.ready, timeout=_left(deadline))

    def both_up() -> bool:
        up = prometheus.api("query", query="up")["result"]
        return sorted((s["metric"]["job"], s["value"][1]) for s in up) == [("exporter", "1"), ("procstream", "1")]

    wait_for("both targets scraped", both_up, timeout=_left(deadline))

    def window_scraped() -> float | None:
        """A recent instant when both jobs' latest scrape succeeded and a rate window
        holds enough samples of every group compared. A failed scrape (on a busy machine
        one can time out) marks its series stale: gauges have no value until the next
        good one. A group whose series began inside the window (process-exporter names a
        process at its first scrape after the start) would have its rate extrapolated
        over part of the window only."""
        at = time.time() - 0.5
        groups = "|".join(GROUPS)
        samples = f'count_over_time(namedprocess_namegroup_num_procs{{groupname=~"{groups}"}}[{WINDOW_S}s])'
        query = f"{samples} >= {WINDOW_S // SCRAPE_S - 1} and on(job) (up == 1)"
        good = prometheus.api("query", query=query, time=f"{at:.3f}")["result"]
        full = sorted((s["metric"]["job"], s["metric"]["groupname"]) for s in good)
        return at if full == sorted((job, g) for job in ("exporter", "procstream") for g in GROUPS) else None

    def durations() -> object:
        return prometheus.api("query", query=f"max_over_time(scrape_duration_seconds[{WINDOW_S}s])")["result"]

    at = wait_for("a rate window of good scrapes of both", window_scraped, timeout=_left(deadline), step=0.5, explain=durations)
    failures: list[str] = []
    for what, (query, rel, abs_) in QUERIES.items():
        jobs = prometheus.by_job(query, at)
        ours, theirs = jobs.get("procstream", {}), jobs.get("exporter", {})
        if set(ours) != set(theirs):
            failures.append(f"{what}: label sets differ: procstream {sorted(ours)} exporter {sorted(theirs)}")
            continue
        if not ours:
            failures.append(f"{what}: no series for this run's groups")
        for labels, value in sorted(ours.items()):
            other = theirs[labels]
            if abs(value - other) > max(abs_, rel * max(abs(value), abs(other))):
                failures.append(f"{what} {dict(labels)}: procstream {value:g}, exporter {other:g}")
    assert not failures, "\n".join(failures)
    # and what was checked is what runs: 3 sleepers, a zombie, half a core, writes
    procs = prometheus.by_job(QUERIES["num_procs"][0], at)["procstream"]
    assert procs[(("groupname", SLEEP),)] == 3 and procs[(("groupname", ZOMBIES),)] == 2
    cpu = prometheus.by_job(f"sum by (groupname, job) ({QUERIES['cpu'][0]})", at)["procstream"]
    assert cpu[(("groupname", BURN),)] > 0.1
    write = prometheus.by_job(QUERIES["write"][0], at)["procstream"]
    assert write[(("groupname", WRITE),)] > 256 * 1024
