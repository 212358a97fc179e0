"""Run a function in a forked child and get its answer back (not a test module).

For what a test can't do to pytest's own process: drop to another user (we run as root,
CI too), move to new namespaces. A fork, not an exec: the function can be a closure and
the interpreter under /root stays loaded. Used by ``_procfs_util.unprivileged`` and by
the kernel socket tests (tests/netlink/).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import select
import signal
import time
from collections.abc import Callable
from typing import Any

__all__ = ["NOBODY", "CLONE_NEWNET", "CLONE_NEWPID", "in_child", "become", "unshare"]

NOBODY = 65534
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000


def in_child(
    fn: Callable[..., Any],
    *args: Any,
    timeout: float = 10.0,
    setup: Callable[[], object] | None = None,
) -> Any:
    """``fn(*args)`` in a forked child, after ``setup()`` there when given.

    Returns what ``fn`` returned, or raises what ``setup`` or ``fn`` raised (both travel
    by pickle; an exception that can't is replaced by a RuntimeError naming it). Raises
    TimeoutError when the child gives no answer within ``timeout``, RuntimeError when it
    died without one. The child is killed and reaped in every case.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        status = 0
        try:
            os.close(rfd)
            try:
                if setup is not None:
                    setup()
                outcome: tuple[str, Any] = ("ok", fn(*args))
            except BaseException as exc:  # noqa: BLE001 - sent to the parent
                outcome = ("raised", exc)
            try:
                payload = pickle.dumps(outcome)
            except Exception as exc:  # noqa: BLE001 - an answer that can't travel
                unpicklable = RuntimeError(f"unpicklable child answer: {exc!r}: {outcome!r}")
                payload = pickle.dumps(("raised", unpicklable))
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
                raise TimeoutError(f"child {pid} gave no answer in {timeout} s")
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
        raise RuntimeError(f"child {pid} died without an answer")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "raised":
        raise value
    return value


def become(uid: int = NOBODY, gid: int | None = None) -> None:
    """Drop to ``uid``/``gid`` (``gid`` defaults to ``uid``) with no supplementary groups,
    for good: real, effective and saved ids. Call it in a child (``setup=become``)."""
    gid = uid if gid is None else gid
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def unshare(flags: int) -> None:
    """unshare(2) this process into new namespaces (``CLONE_NEWNET``, ``CLONE_NEWPID``: then
    only its next child lives in the new PID namespace). Call it in a child."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
