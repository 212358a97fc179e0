"""procstream.procfs against the real /proc: processes we start, checked against
os.listdir and psutil."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from procstream.procfs import FS, ProcfsParseError, ProcMetrics, ProcStatic, States
from tests.support.fake_proc_tree import unprivileged
from tests.support.waiting import wait_for

WORKER = """
import sys, threading
files = [open("/dev/null") for _ in range(10)]
stop = threading.Event()
threads = [threading.Thread(target=stop.wait) for _ in range(3)]
for t in threads:
    t.start()
sum(range(2_000_000))  # a little CPU time, so the cpu counters aren't all 0
print("ready", flush=True)
sys.stdin.read()
stop.set()
"""
FD_LIMIT = 1234


@pytest.fixture(scope="module")
def fs() -> FS:
    return FS("/proc")


@pytest.fixture
def sleeper() -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    started = time.time()
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc, started
    finally:
        proc.kill()
        proc.wait()


def _set_fd_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))


@pytest.fixture
def worker() -> Iterator[subprocess.Popen[bytes]]:
    """A python with 4 threads and 10 extra open files, idle until we close its stdin."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        preexec_fn=_set_fd_limit,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_fs(fs: FS) -> None:
    assert fs.is_procfs is True
    assert abs(fs.boot_time - psutil.boot_time()) <= 1


def test_sleep_found_by_all_procs(fs: FS, sleeper: tuple[subprocess.Popen[bytes], float]) -> None:
    proc, started = sleeper

    def exec_done() -> ProcStatic | None:
        # right after fork the child still shows our own name and argv
        found = [p for p in fs.all_procs() if p.pid == proc.pid]
        assert len(found) == 1
        static = found[0].static()
        return static if static.cmdline == ("sleep", "300") else None

    static = wait_for("sleep to exec", exec_done)
    assert static.name == "sleep"
    assert static.parent_pid == os.getpid()
    assert static.uid == os.geteuid()
    assert abs(static.start_time - started) < 2.0

    def asleep() -> ProcMetrics | None:
        # while the loader still runs, sleep opens and closes its libraries
        metrics = fs.proc(proc.pid).metrics()
        return metrics if metrics.states == States(sleeping=1) else None

    metrics = wait_for("sleep to block", asleep)
    assert metrics.num_threads == 1
    assert metrics.open_fds == len(os.listdir(f"/proc/{proc.pid}/fd"))
    assert metrics.partial_errors == 0


def test_threads_fds_memory_against_psutil(fs: FS, worker: subprocess.Popen[bytes]) -> None:
    pid = worker.pid

    def settled() -> tuple[ProcMetrics, psutil.Process] | None:
        # the 4 threads are all asleep once the worker has printed "ready" and blocks
        metrics = fs.proc(pid).metrics()
        return (metrics, psutil.Process(pid)) if metrics.states == States(sleeping=4) else None

    metrics, ps = wait_for("4 sleeping threads", settled)
    assert metrics.num_threads == 4 == ps.num_threads()
    assert metrics.open_fds == len(os.listdir(f"/proc/{pid}/fd"))
    assert metrics.open_fds == ps.num_fds() >= 13
    mem = ps.memory_info()
    assert abs(metrics.resident_bytes - mem.rss) <= max(mem.rss // 20, 1 << 20)
    assert metrics.virtual_bytes == mem.vms
    cpu = ps.cpu_times()
    assert metrics.cpu_user > 0
    assert abs(metrics.cpu_user - cpu.user) < 0.05
    assert abs(metrics.cpu_system - cpu.system) < 0.05
    io = ps.io_counters()
    assert (metrics.read_bytes, metrics.write_bytes) == (io.read_bytes, io.write_bytes)
    # psutil reports the main thread's switches; we sum over the 4 threads
    leader = ps.num_ctx_switches()
    assert metrics.ctx_voluntary >= leader.voluntary
    assert metrics.ctx_nonvoluntary >= leader.involuntary
    assert metrics.ctx_voluntary > leader.voluntary  # the other threads switched too
    assert metrics.partial_errors == 0

    proc = fs.proc(pid)
    static = proc.static(cgroups=True)
    assert static.cmdline == (sys.executable, "-c", WORKER)
    assert static.name == os.path.basename(sys.executable)[:15]
    assert static.cgroups  # every process is in at least one cgroup
    assert proc.fd_limit() == FD_LIMIT


def test_unprivileged_reader(fs: FS, worker: subprocess.Popen[bytes]) -> None:
    as_root = fs.proc(worker.pid).metrics()
    as_nobody = unprivileged(_metrics, worker.pid)
    # another user's io is owner-only: counted, and the rest survives
    assert (as_nobody.read_bytes, as_nobody.write_bytes) == (0, 0)
    assert as_nobody.resident_bytes > 0
    assert as_nobody.num_threads == as_root.num_threads
    release = tuple(int(x) for x in platform.release().split(".")[:2])
    if os.geteuid() == 0 and release >= (6, 2):
        # stat() of fd/ gives the count without the right to list it (Linux >= 6.2)
        assert as_nobody.open_fds == as_root.open_fds
        assert as_nobody.partial_errors == 1


def _metrics(pid: int) -> ProcMetrics:
    return FS("/proc").proc(pid).metrics()


def test_zombie(fs: FS) -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        proc_stat = Path(f"/proc/{pid}/stat")
        wait_for("zombie", lambda: b") Z " in proc_stat.read_bytes())
        proc = fs.proc(pid)
        static = proc.static()
        assert static.cmdline == ()
        assert static.parent_pid == os.getpid()
        metrics = proc.metrics()
        assert metrics.states == States(zombie=1)
        assert metrics.resident_bytes == 0 and metrics.open_fds == 0
    finally:
        os.waitpid(pid, 0)


def test_vanished_process(fs: FS, sleeper: tuple[subprocess.Popen[bytes], float]) -> None:
    proc, _ = sleeper
    reader = fs.proc(proc.pid)
    reader.proc_id()
    proc.kill()
    proc.wait()
    with pytest.raises(ProcessLookupError):
        reader.metrics()


def test_kernel_threads(fs: FS) -> None:
    kthreadd = fs.proc(2).static()
    assert (kthreadd.parent_pid, kthreadd.cmdline) == (0, ())
    children = []
    for proc in fs.all_procs():
        try:
            static = proc.static()
        except ProcessLookupError:
            continue  # a process of another test, exited meanwhile
        if static.parent_pid == 2:
            children.append(static)
    assert children
    assert all(s.cmdline == () for s in children)


def test_every_live_process_parses(fs: FS) -> None:
    seen = 0
    for proc in fs.all_procs():
        try:
            proc.proc_id()
            proc.static(cgroups=True)
            metrics = proc.metrics()
            proc.fd_limit()
        except ProcessLookupError:
            continue  # exited meanwhile
        except ProcfsParseError as exc:
            pytest.fail(f"pid {proc.pid}: {exc}")
        assert metrics.num_threads >= 1
        seen += 1
    assert seen >= 10


def test_start_time_is_precise_not_whole_seconds(fs: FS) -> None:
    # btime is whole seconds; start times must not inherit its up-to-1 s error
    before = time.time()
    proc = subprocess.Popen(["sleep", "30"])
    after = time.time()
    try:
        start = fs.proc(proc.pid).static().start_time
        assert before - 0.05 <= start <= after + 0.05
        assert abs(fs.boot_time_precise - fs.boot_time) < 1.0
    finally:
        proc.kill()
        proc.wait()
