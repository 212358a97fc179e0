"""Helpers shared by test modules (not a test module): waiting with deadlines, free
ports, child processes that are always stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

__all__ = ["wait_for", "async_wait_for", "free_port", "running", "stop"]


def _timed_out(what: str, timeout: float, explain: Callable[[], object] | None) -> AssertionError:
    message = f"timed out after {timeout}s waiting for {what}"
    if explain is not None:
        message += f"; instead: {explain()}"
    return AssertionError(message)


def wait_for(
    what: str,
    fn: Callable[[], T | None | bool],
    timeout: float = 10.0,
    step: float = 0.02,
    *,
    explain: Callable[[], object] | None = None,
) -> T:
    """Call ``fn`` until it returns something truthy; fail naming ``what`` at the deadline
    (and what ``explain()`` returns then: the state the test found instead)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, explain)
        time.sleep(step)


async def async_wait_for(
    what: str,
    fn: Callable[[], T | None | bool | Awaitable[T | None | bool]],
    timeout: float = 10.0,
    *,
    explain: Callable[[], object] | None = None,
) -> T:
    """``wait_for`` for coroutines: ``fn`` may be sync or async."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, explain)
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def env_without_proxy() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(key, None)
    return env
