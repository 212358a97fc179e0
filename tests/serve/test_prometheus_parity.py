"""Dashboards see the same truth from procstream as from process-exporter.

Debian's Prometheus scrapes ``procstream serve`` (its default source: kernel events, as
root) and Debian's ``prometheus-process-exporter``, run with its defaults, both on the
same config and the same live processes, every second. Then the PromQL that dashboards
for process-exporter use, keyed by group, is asked of both jobs at the same instant:
processes, CPU and I/O rates, memory, threads, open descriptors. For processes both can
see, the label sets must be the same and the values within a tolerance (the two sample at
different moments of each second).

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

SCRAPE_S = 1
RATE = "[10s]"
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


@pytest.fixture
def workload(tmp_path: Path) -> Iterator[None]:
    """Long-lived processes of five groups, that both exporters see; one of the sleepers
    started through ``setsid nohup``, one group with a zombie."""
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
    """``prometheus`` scraping ``targets`` (job name -> port) every second."""

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


def test_procstream_and_process_exporter_agree_under_prometheus(tmp_path: Path, workload: None) -> None:
    config = tmp_path / "procs.yaml"
    config.write_text(DEFAULT_CONFIG_TEXT)  # process-exporter's packaged config: every process, by comm
    exporter_port = free_port()
    assert EXPORTER is not None
    exporter = subprocess.Popen(
        [EXPORTER, "-config.path", str(config), "-web.listen-address", f"127.0.0.1:{exporter_port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    served = Served("--config", str(config), "--interval", str(SCRAPE_S), log=tmp_path / "serve.log")
    prometheus: Prometheus | None = None
    try:
        served.start()
        status, body, _ = http_get(served.url + "/metrics")
        assert status == 200 and b'procstream_event_source{source="netlink"} 1.0' in body, "not the kernel source"
        prometheus = Prometheus(tmp_path, {"procstream": served.port, "exporter": exporter_port})
        wait_for("prometheus to be ready", prometheus.ready, timeout=30)

        def both_up() -> bool:
            assert prometheus is not None
            up = prometheus.api("query", query="up")["result"]
            return sorted((s["metric"]["job"], s["value"][1]) for s in up) == [("exporter", "1"), ("procstream", "1")]

        wait_for("both targets scraped", both_up, timeout=20)
        first = time.time()
        # a rate window's worth of scrapes of both, with the workload steady
        wait_for("12 s of samples", lambda: time.time() - first >= 12, timeout=20, step=0.5)
        at = time.time() - SCRAPE_S
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
    finally:
        if prometheus is not None:
            prometheus.stop()
        served.stop()
        stop(exporter)
