"""Helpers shared by the kernel socket tests (test_netlink, test_taskstats, test_nlsocket;
not a test module): reading a listener until a condition holds, with a deadline; making
exits for the kernel to report."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

__all__ = ["Listener", "collect", "fork_exits", "py"]

E = TypeVar("E")


class Listener(Protocol[E]):
    """What ``collect`` needs: a ProcConnector, a TaskstatsListener, any NetlinkListener."""

    def wait_readable(self, timeout: float | None) -> bool | None: ...

    def read_events(self, max_datagrams: int = 1024) -> list[E]: ...


def collect(
    listener: Listener[E],
    done: Callable[[list[E]], bool],
    timeout: float = 5.0,
    into: list[E] | None = None,
) -> list[E]:
    """Read ``listener`` until ``done(what was read)`` or the deadline (then fail).

    ``into``: append there (and return it), to keep what a failed attempt read."""
    events: list[E] = [] if into is None else into
    deadline = time.monotonic() + timeout
    while not done(events):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"condition not met within {timeout} s; {len(events)} read")
        if listener.wait_readable(min(left, 0.2)):
            events.extend(listener.read_events())
    return events


def py(code: str) -> list[str]:
    """argv running ``code`` in a fresh interpreter without site (a quick child)."""
    return [sys.executable, "-S", "-c", code]


def fork_exits(codes: Iterable[int], *, one_by_one: bool = False) -> list[int]:
    """Fork one child per exit code, each calling ``os._exit`` with it at once, and reap them
    all; their pids, in order. ``one_by_one``: reap each before forking the next (else all
    are forked first, then reaped: a burst)."""
    pids: list[int] = []
    for code in codes:
        pid = os.fork()
        if pid == 0:  # child: nothing of pytest runs here
            os._exit(code)
        if one_by_one:
            os.waitpid(pid, 0)
        pids.append(pid)
    if not one_by_one:
        for pid in pids:
            os.waitpid(pid, 0)
    return pids
