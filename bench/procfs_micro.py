"""Micro benchmark of procstream.procfs against a no-parsing floor (run by hand).

    python bench/procfs_micro.py [--sleepers 500] [--threaded 10] [--rounds 20]

Starts ``--sleepers`` idle ``sleep`` processes and ``--threaded`` idle pythons with 8
threads each (so the host has a realistic process count), then times, per process:

- poll floor: list /proc, then os.open/os.read/os.close of stat, status, io and
  os.stat(fd) -- the same files ``metrics()`` reads, with no parsing at all; the
  "+tasks" variant also reads task/*/stat and task/*/status of multi-threaded
  processes (what ``thread_detail`` adds);
- poll: ``FS.all_procs()`` + ``proc_id()`` + ``metrics()``;
- first sight: ``static(cgroups=False)`` + ``fd_limit()`` on top, against a floor that
  also reads cmdline and limits;
- a poll of processes that have not run since the last one: each follows its last
  sample (``follow`` + ``proc_id()`` + ``sample()``), against a floor that reads
  ``schedstat`` (and ``stat`` and each thread's ``schedstat`` of multi-threaded ones);
- three ways to read ``schedstat`` of every process, bare: by path (what procstream
  does), ``openat`` from a directory descriptor opened for the poll, and ``pread`` of a
  descriptor kept open across polls (one per process, and the 4 KiB buffer the kernel
  keeps for each open seq_file: memory and descriptors procstream does not spend).

Prints the median of ``--rounds`` rounds in microseconds per process and the ratios.
Everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from _common import read_bytes  # puts the tree on sys.path

from procstream.procfs import FS, Sample

__all__ = ["main"]

THREADED = """
import sys, threading
e = threading.Event()
for _ in range(7):
    threading.Thread(target=e.wait, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def floor_poll(mount: str, threaded: dict[str, list[str]], tasks: bool) -> int:
    """Read what metrics() reads, without parsing. Returns the number of processes."""
    n = 0
    for name in os.listdir(mount):
        if not name.isdigit():
            continue
        d = f"{mount}/{name}/"
        try:
            read_bytes(d + "stat")
            read_bytes(d + "status")
            try:
                read_bytes(d + "io")
            except PermissionError:
                pass
            os.stat(d + "fd")
            if tasks:
                for tid in threaded.get(name, ()):
                    read_bytes(f"{d}task/{tid}/stat")
                    read_bytes(f"{d}task/{tid}/status")
        except (FileNotFoundError, ProcessLookupError):
            continue
        n += 1
    return n


def floor_first_sight(mount: str) -> int:
    n = 0
    for name in os.listdir(mount):
        if not name.isdigit():
            continue
        d = f"{mount}/{name}/"
        try:
            for f in ("stat", "status", "cmdline", "io", "limits"):
                try:
                    read_bytes(d + f)
                except PermissionError:
                    pass
            os.stat(d + "fd")
        except (FileNotFoundError, ProcessLookupError):
            continue
        n += 1
    return n


def floor_idle(mount: str, threaded: dict[str, list[str]]) -> int:
    """What a poll of processes that have not run reads, without parsing."""
    n = 0
    for name in os.listdir(mount):
        if not name.isdigit():
            continue
        d = f"{mount}/{name}/"
        try:
            tids = threaded.get(name)
            if tids is None:
                read_bytes(d + "schedstat")
            else:
                read_bytes(d + "stat")
                for tid in tids:
                    read_bytes(f"{d}task/{tid}/schedstat")
        except (FileNotFoundError, ProcessLookupError):
            continue
        n += 1
    return n


def followed(fs: FS, last: dict[int, Sample]) -> int:
    """A poll handing each process its last sample (kept for the next round)."""
    n = 0
    for proc in fs.all_procs():
        prev = last.get(proc.pid)
        if prev is not None:
            proc.follow(prev)
        try:
            proc.proc_id()
            last[proc.pid] = proc.sample()
        except ProcessLookupError:
            continue
        n += 1
    return n


def schedstat_by_path(mount: str) -> int:
    n = 0
    for name in os.listdir(mount):
        if name.isdigit():
            try:
                read_bytes(f"{mount}/{name}/schedstat")
            except (FileNotFoundError, ProcessLookupError):
                continue
            n += 1
    return n


def schedstat_openat(mount: str) -> int:
    n = 0
    flags = os.O_RDONLY | os.O_CLOEXEC
    for name in os.listdir(mount):
        if name.isdigit():
            try:
                dirfd = os.open(f"{mount}/{name}", flags | os.O_DIRECTORY)
            except (FileNotFoundError, ProcessLookupError):
                continue
            try:
                fd = os.open("schedstat", flags, dir_fd=dirfd)
                try:
                    os.read(fd, 8192)
                finally:
                    os.close(fd)
            finally:
                os.close(dirfd)
            n += 1
    return n


def schedstat_held(fds: list[int]) -> int:
    n = 0
    for fd in fds:
        try:
            os.pread(fd, 8192, 0)
        except ProcessLookupError:  # exited since it was opened
            continue
        n += 1
    return n


def poll(fs: FS) -> int:
    n = 0
    for proc in fs.all_procs():
        try:
            proc.proc_id()
            proc.metrics()
        except ProcessLookupError:
            continue
        n += 1
    return n


def first_sight(fs: FS) -> int:
    n = 0
    for proc in fs.all_procs():
        try:
            proc.proc_id()
            proc.static()
            proc.metrics()
            proc.fd_limit()
        except ProcessLookupError:
            continue
        n += 1
    return n


def _time(fn: Callable[[], int], rounds: int) -> float:
    """Median microseconds per process over ``rounds`` calls (after one warm-up)."""
    fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        n = fn()
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sleepers", type=int, default=500)
    parser.add_argument("--threaded", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    children: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(args.sleepers):
            children.append(subprocess.Popen(["sleep", "3600"]))
        for _ in range(args.threaded):
            child = subprocess.Popen(
                [sys.executable, "-c", THREADED], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            children.append(child)
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"

        fs = FS("/proc")
        plain = FS("/proc", thread_detail=False)
        threaded: dict[str, list[str]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    tids = os.listdir(f"/proc/{name}/task")
                except OSError:
                    continue
                if len(tids) > 1:
                    threaded[name] = tids
        nprocs = poll(fs)
        nthreads = sum(len(t) for t in threaded.values())
        print(
            f"{nprocs} processes, {len(threaded)} multi-threaded ({nthreads} threads), "
            f"{args.rounds} rounds, median us/process"
        )
        cases: list[tuple[str, Callable[[], int]]] = [
            ("poll floor (stat+status+io+fd)", lambda: floor_poll("/proc", threaded, False)),
            ("poll, thread_detail=False", lambda: poll(plain)),
            ("poll floor +tasks", lambda: floor_poll("/proc", threaded, True)),
            ("poll, thread_detail=True", lambda: poll(fs)),
            ("first-sight floor (+cmdline+limits)", lambda: floor_first_sight("/proc")),
            ("first sight (id+static+metrics+limit)", lambda: first_sight(plain)),
        ]
        last: dict[int, Sample] = {}
        followed(fs, last)
        held: list[int] = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    held.append(os.open(f"/proc/{name}/schedstat", os.O_RDONLY | os.O_CLOEXEC))
                except OSError:
                    continue
        try:
            cases += [
                ("idle floor (schedstat; +stat, tasks)", lambda: floor_idle("/proc", threaded)),
                ("idle poll (follow+proc_id+sample)", lambda: followed(fs, last)),
                ("schedstat by path", lambda: schedstat_by_path("/proc")),
                ("schedstat by openat(dirfd)", lambda: schedstat_openat("/proc")),
                ("schedstat by pread(held fd)", lambda: schedstat_held(held)),
            ]
            rows = [(label, _time(fn, args.rounds)) for label, fn in cases]
        finally:
            for fd in held:
                os.close(fd)
        for label, us in rows:
            print(f"  {label:40s} {us:7.2f}")
        print(f"  ratio poll/floor          {rows[1][1] / rows[0][1]:.2f}")
        print(f"  ratio poll+tasks/floor    {rows[3][1] / rows[2][1]:.2f}")
        print(f"  ratio first sight/floor   {rows[5][1] / rows[4][1]:.2f}")
        print(f"  ratio idle poll/floor     {rows[7][1] / rows[6][1]:.2f}")
        print(f"  idle poll / poll          {rows[7][1] / rows[3][1]:.2f}")
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()


if __name__ == "__main__":
    main()
