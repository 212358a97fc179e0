"""The tracker over the real /proc, reading less: a process that has not run keeps its
last sample, so what a process does in a blink, and what others do to it while it
sleeps, must still show within the bound the docs state: at the next poll for whatever
takes the process running (I/O, descriptors, its own memory calls), within
``restat_every`` polls for what it undergoes asleep (its pages reclaimed)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from procstream.procfs import FS
from procstream.tracker import TrackedProc, Tracker

PAGE = os.sysconf("SC_PAGE_SIZE")
MAPPED = 16 << 20

#: Idle until told: each command is a few system calls, far below one clock tick of CPU,
#: with no page fault (its buffers are touched at start-up).
CHILD = """
import mmap, os, sys
folder = sys.argv[1]
with open(os.path.join(folder, "mapped"), "wb") as f:
    f.write(b"m" * %(mapped)d)
fd = os.open(os.path.join(folder, "mapped"), os.O_RDONLY)
mapped = mmap.mmap(fd, %(mapped)d, prot=mmap.PROT_READ)
sum(mapped[i] for i in range(0, len(mapped), mmap.PAGESIZE))  # all resident
chunk = b"w" * 65536
out = os.open(os.path.join(folder, "written"), os.O_WRONLY | os.O_CREAT, 0o600)
held = []
print("ready", flush=True)
for line in sys.stdin:
    if line == "write\\n":
        os.write(out, chunk)
    elif line == "open\\n":
        held += [os.open("/dev/null", os.O_RDONLY) for _ in range(20)]
    elif line == "drop\\n":
        mapped.madvise(mmap.MADV_DONTNEED)
    print("done", flush=True)
""" % {"mapped": MAPPED}


class Child:
    def __init__(self, proc: subprocess.Popen[str], folder: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.folder = folder

    def do(self, command: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "done\n"

    def write_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
        raise AssertionError("no write_bytes")

    def resident(self) -> int:
        return int(Path(f"/proc/{self.pid}/stat").read_bytes().rpartition(b")")[2].split()[21]) * PAGE

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def mapping(self) -> tuple[int, int]:
        for line in Path(f"/proc/{self.pid}/maps").read_text().splitlines():
            if line.endswith(str(self.folder / "mapped")):
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                return start, end - start
        raise AssertionError("mapping not found")


@pytest.fixture
def child() -> Iterator[Child]:
    # on a disk, not in a tmpfs /tmp: a tmpfs has no storage I/O to count
    folder = Path(tempfile.mkdtemp(prefix="procstream-test-", dir="/var/tmp"))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield Child(proc, folder)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(folder)


class Polls:
    """A tracker that only looks at the child (the rest of the host is noise here)."""

    def __init__(self, pid: int, *, restat_every: int = 1000) -> None:
        self.fs = FS("/proc")
        self.pid = pid
        self.tracker = Tracker(restat_every=restat_every, full_every=1000)
        report = self.tracker.update([self.fs.proc(pid)])
        (new,) = report.new
        self.tp: TrackedProc = self.tracker.track("child", new)

    def poll(self) -> int:
        """One poll; how many of its processes were not read whole."""
        report = self.tracker.update([self.fs.proc(self.pid)])
        assert not report.exited
        self.tp.accounted = True  # as the grouper does: ``latest`` is this poll's alone
        return report.reads_skipped

    def settle(self) -> None:
        """Poll until the child is found idle (start-up and the last command behind)."""
        for _ in range(10):
            if self.poll():
                return
        raise AssertionError("the child never looked idle")


def test_io_without_a_cpu_tick_shows_at_the_next_poll(child: Child) -> None:
    polls = Polls(child.pid)
    polls.settle()
    for _ in range(3):
        before = polls.tp.metrics.write_bytes
        child.do("write")
        assert child.write_bytes() >= before + 65536
        assert polls.poll() == 0  # it ran: read whole
        assert polls.tp.metrics.write_bytes == child.write_bytes()
        assert polls.tp.latest.write_bytes == polls.tp.metrics.write_bytes - before
        assert polls.poll() == 1  # idle again, and nothing lost
        assert polls.tp.metrics.write_bytes == child.write_bytes()


def test_descriptors_opened_in_a_blink_show_at_the_next_poll(child: Child) -> None:
    polls = Polls(child.pid)
    polls.settle()
    before = polls.tp.metrics.open_fds
    child.do("open")
    polls.poll()
    assert polls.tp.metrics.open_fds == child.fds() == before + 20


def test_memory_the_process_gives_back_shows_at_the_next_poll(child: Child) -> None:
    polls = Polls(child.pid)
    polls.settle()
    before = polls.tp.metrics.resident_bytes
    child.do("drop")
    polls.poll()
    assert polls.tp.metrics.resident_bytes == child.resident() <= before - MAPPED // 2


def _process_madvise(pid: int, start: int, length: int, advice: int) -> None:
    """``process_madvise(2)`` on another process's range (Linux 5.10; root here)."""
    libc = ctypes.CDLL(None, use_errno=True)

    class IoVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    number = {"x86_64": 440, "aarch64": 440}.get(os.uname().machine)
    if number is None:
        pytest.skip(f"process_madvise's syscall number on {os.uname().machine} not known here")
    pidfd = os.pidfd_open(pid)
    try:
        iov = IoVec(start, length)
        if libc.syscall(number, pidfd, ctypes.byref(iov), 1, advice, 0) < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOSYS, errno.EPERM):
                pytest.skip(f"process_madvise: {os.strerror(err)}")
            raise OSError(err, os.strerror(err))
    finally:
        os.close(pidfd)


def test_pages_reclaimed_while_it_sleeps_show_within_restat_every_polls(child: Child) -> None:
    every = 4
    polls = Polls(child.pid, restat_every=every)
    polls.settle()
    before = polls.tp.metrics.resident_bytes
    start, length = child.mapping()
    # another process has its pages paged out: it does not run, its schedstat stays
    _process_madvise(child.pid, start, length, mmap.MADV_PAGEOUT if hasattr(mmap, "MADV_PAGEOUT") else 21)
    now = child.resident()
    assert now <= before - MAPPED // 2
    for _ in range(every):
        polls.poll()
        if polls.tp.metrics.resident_bytes == now:
            break
    assert polls.tp.metrics.resident_bytes == now == child.resident()
