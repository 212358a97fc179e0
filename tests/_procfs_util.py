"""Helpers shared by the procfs test modules (not a test module itself).

- ``fake_proc``: a writable, world-readable copy of ``fixtures/proc`` (tests delete and
  chmod files in it; an unprivileged child must be able to walk it).
- ``unprivileged``: run a function where file modes are enforced. We run as root (CI
  too), where ``chmod 000`` denies nothing, so the function runs in a forked child that
  drops to uid/gid 65534 (a fork, not an exec: the interpreter under /root stays loaded).
"""

from __future__ import annotations

import os
import pickle
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["FIXTURES", "NOBODY", "fake_proc", "make_fake_proc", "unprivileged", "deny"]

FIXTURES = Path(__file__).parent / "fixtures" / "proc"
NOBODY = 65534
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


@pytest.fixture
def fake_proc() -> Iterator[Path]:
    """A fresh copy of the fixture tree in a 0755 temporary directory, removed after."""
    # not tmp_path: pytest makes its base 0700, which uid 65534 can't traverse
    root = Path(tempfile.mkdtemp(prefix="procstream-procfs-"))
    try:
        root.chmod(0o755)
        yield make_fake_proc(root)
    finally:
        for dirpath, dirnames, _ in os.walk(root):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o755)  # undo chmod 000 for rmtree
        shutil.rmtree(root)


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
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        status = 0
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                outcome: tuple[str, Any] = ("ok", fn(*args))
            except BaseException as exc:  # noqa: BLE001 - sent to the parent
                outcome = ("raised", exc)
            payload = pickle.dumps(outcome)
            while payload:
                payload = payload[os.write(wfd, payload) :]
        except BaseException:  # noqa: BLE001
            status = 1
        finally:
            os._exit(status)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"unprivileged child {pid} gave no answer in {timeout} s")
            ready, _, _ = select.select([rfd], [], [], left)
            if ready:
                chunk = os.read(rfd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(rfd)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    if not chunks:
        raise RuntimeError("unprivileged child died without an answer")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "raised":
        raise value
    return value


def add_proc(
    root: Path,
    pid: int,
    *,
    comm: str,
    cmdline: tuple[str, ...],
    start: int,
    ppid: int = 1,
    utime: int = 0,
    template: int = 1000,
) -> None:
    """Add (or replace) process ``pid`` in a fake tree made by ``make_fake_proc``.

    A copy of process ``template`` with a new comm, argv, parent, start (clock ticks since
    boot) and user CPU ticks; built beside the tree and renamed into place, so a poller
    never sees half a process.
    """
    src = root / str(template)
    tmp = root.parent / f".new-{pid}"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, symlinks=True)
    fields = (src / "stat").read_bytes().rpartition(b")")[2].split()
    fields[1] = str(ppid).encode()  # ppid (field 4)
    fields[11] = str(utime).encode()  # utime (field 14)
    fields[19] = str(start).encode()  # starttime (field 22)
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
