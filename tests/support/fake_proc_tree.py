"""Helpers shared by the procfs test modules (not a test module itself).

- ``fake_proc``: a writable, world-readable copy of ``fixtures/proc`` (tests delete and
  chmod files in it; an unprivileged child must be able to walk it).
- ``unprivileged``: run a function where file modes are enforced. We run as root (CI
  too), where ``chmod 000`` denies nothing, so the function runs in a forked child that
  drops to uid/gid 65534 (``tests._child.in_child``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.children import NOBODY, become, in_child

__all__ = [
    "FIXTURES", "NOBODY", "BOOT_TIME", "LIFECYCLE_CONFIG", "make_fake_proc", "ticks_now", "unprivileged", "deny",
    "add_proc", "remove_proc", "set_stat",
]  # fmt: skip

FIXTURES = Path(__file__).parents[1] / "fixtures" / "proc"
#: the fixture tree's boot time (``btime`` of its ``stat``), epoch seconds
BOOT_TIME = int(next(line for line in (FIXTURES / "stat").read_text().splitlines() if line.startswith("btime ")).split()[1])
#: process-exporter's default config (every process with a command line, by comm), a
#: group expected from the start that no process of the tree belongs to (``svc``), and
#: crash loops after 3 restarts
LIFECYCLE_CONFIG = """
process_names:
  - name: "{{.Comm}}"
    cmdline: ['.+']
expected_groups:
  - {group: svc, min: 1}
lifecycle: {restart_window_s: 60, crashloop_restarts: 3, crashloop_window_s: 600, stable_after_s: 600}
"""


def ticks_now(later: float = 0.0) -> int:
    """A start time for ``add_proc`` (clock ticks since the tree's boot) of now (plus
    ``later`` seconds): a process that starts now, not one found late."""
    return int((time.time() + later - BOOT_TIME) * 100)
# git can't store empty directories; these are the fd/ dirs of processes with no fds.
_EMPTY_DIRS = ("14/fd", "1002/fd")


def make_fake_proc(root: Path) -> Path:
    """Copy the fixture tree to ``root/proc`` (symlinks kept) and return that path."""
    dst = root / "proc"
    shutil.copytree(FIXTURES, dst, symlinks=True)
    (dst / "README.md").unlink()
    for rel in _EMPTY_DIRS:
        (dst / rel).mkdir()
    return dst


def deny(path: Path) -> None:
    """``chmod 000`` ``path``; skip the calling test if that can't deny us anything
    (not root, so no child can drop privileges, and we can still read it)."""
    path.chmod(0)
    if os.geteuid() != 0:
        try:
            if path.is_dir():
                os.listdir(path)
            else:
                path.read_bytes()
        except PermissionError:
            return
        pytest.skip("chmod 000 denies nothing to this user, and it can't change uid")


def unprivileged(fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
    """``fn(*args)`` as uid 65534 (forked child) when root, else in this process.

    Returns what ``fn`` returned, or raises what it raised (both travel by pickle).
    """
    if os.geteuid() != 0:
        return fn(*args)
    return in_child(fn, *args, timeout=timeout, setup=become)


def add_proc(
    root: Path,
    pid: int,
    *,
    comm: str,
    cmdline: tuple[str, ...],
    start: int | None = None,
    ppid: int = 1,
    utime: int = 0,
    template: int = 1000,
) -> None:
    """Add (or replace) process ``pid`` in a fake tree made by ``make_fake_proc``.

    A copy of process ``template`` with a new comm, argv, parent, start (clock ticks since
    boot; by default the moment it is renamed into place: a process that starts now) and
    user CPU ticks; built beside the tree and renamed into place, so a poller never sees
    half a process.
    """
    src = root / str(template)
    tmp = root.parent / f".new-{pid}"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, symlinks=True)
    fields = (src / "stat").read_bytes().rpartition(b")")[2].split()
    fields[1] = str(ppid).encode()  # ppid (field 4)
    fields[11] = str(utime).encode()  # utime (field 14)
    fields[19] = str(ticks_now() if start is None else start).encode()  # starttime (field 22)
    (tmp / "stat").write_bytes(f"{pid} ({comm}) ".encode() + b" ".join(fields) + b"\n")
    (tmp / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in cmdline))
    task = tmp / "task"
    if task.exists():
        shutil.rmtree(task)
    dst = root / str(pid)
    if dst.exists():
        old = root.parent / f".old-{pid}"
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old)
    else:
        tmp.rename(dst)


def remove_proc(root: Path, pid: int) -> None:
    """Make process ``pid`` vanish from a fake tree at once."""
    gone = root.parent / f".gone-{pid}"
    (root / str(pid)).rename(gone)
    shutil.rmtree(gone)


def write_proc(root: Path, pid: int, *, comm: str, cmdline: bytes, start: int, stat: bytes | None = None) -> None:
    """Add process ``pid`` to a fake tree with only the files a poll reads (``stat``,
    ``status``, ``cmdline``, ``io`` and an empty ``fd/``): cheaper than ``add_proc`` when
    a test churns many processes. ``cmdline`` is the file's raw bytes; ``stat`` replaces
    the generated one. Renamed into place, so a poller never sees half a process."""
    tmp = root.parent / f".new-{pid}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "fd").mkdir(parents=True)
    fields = f"S 1 {pid} {pid} 0 -1 4194304 10 0 0 0 1 0 0 0 20 0 1 0 {start} 2990080 423"
    (tmp / "stat").write_bytes(stat if stat is not None else f"{pid} ({comm}) {fields}\n".encode())
    (tmp / "status").write_bytes(f"Name:\t{comm}\nUid:\t0\t0\t0\t0\nVmSwap:\t0 kB\n".encode())
    (tmp / "cmdline").write_bytes(cmdline)
    (tmp / "io").write_bytes(b"rchar: 0\nread_bytes: 0\nwrite_bytes: 0\n")
    dst = root / str(pid)
    if dst.exists():
        remove_proc(root, pid)
    tmp.rename(dst)


# Fields of a stat line after the comm, by name (field N of proc(5) at index N - 3).
_STAT_FIELDS = {"state": 0, "ppid": 1, "minflt": 7, "utime": 11, "stime": 12, "num_threads": 17, "rss": 21}


def set_stat(root: Path, pid: int, **fields: int | str) -> None:
    """Change fields of process ``pid``'s ``stat`` in a fake tree (``state``, ``utime``,
    ``rss`` in pages, ...), atomically: a poller reads the old line or the new one."""
    path = root / str(pid) / "stat"
    head, _, rest = path.read_bytes().rpartition(b")")
    parts = rest.split()
    for name, value in fields.items():
        parts[_STAT_FIELDS[name]] = str(value).encode()
    tmp = path.with_name(".stat.new")
    tmp.write_bytes(head + b") " + b" ".join(parts) + b"\n")
    tmp.rename(path)
