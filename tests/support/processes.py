"""Child processes that are always stopped and reaped."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["running", "stop"]


def stop(proc: subprocess.Popen, timeout: float = 5.0, *, group: bool = False) -> None:
    """Terminate, then kill, a child (its whole process group with ``group``); reap it."""

    def send(sig: int) -> None:
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass

    if proc.poll() is None or group:
        send(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait(timeout)


@contextmanager
def running(*args: str, group: bool = False, **kw) -> Iterator[subprocess.Popen]:
    """A child process that is stopped (and reaped) when the block ends; with ``group``
    it leads a new session and everything it started is stopped with it."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    if group:
        kw["start_new_session"] = True
    proc = subprocess.Popen(list(args), **kw)
    try:
        yield proc
    finally:
        stop(proc, group=group)
