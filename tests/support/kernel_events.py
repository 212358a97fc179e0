"""Using the kernel sockets in tests (not a test module): how opening one ends, that a
closed one is closed for good, reading one until a condition holds, and making exits for
the kernel to report."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

import pytest

from procstream.netlink import NetlinkError
from tests.support.waiting import wait_for

__all__ = ["Listener", "assert_closed", "collect", "fork_exits", "open_outcome", "py"]

E = TypeVar("E")


class Listener(Protocol[E]):
    """What these helpers use of a ProcConnector, a TaskstatsListener, any NetlinkListener."""

    @property
    def closed(self) -> bool: ...

    def fileno(self) -> int: ...

    def wait_readable(self, timeout: float | None) -> bool | None: ...

    def read_events(self, max_datagrams: int = 1024) -> list[E]: ...


def assert_closed(listener: Listener[E]) -> None:
    """``listener`` says it is closed, and every use that needs the socket refuses."""
    assert listener.closed and listener.wait_readable(0) is None
    for use in (listener.fileno, listener.read_events):
        with pytest.raises(ValueError, match=f"{type(listener).__name__} is not open"):
            use()


def open_outcome(open_and_close: Callable[[], object], refusal: type[NetlinkError]) -> str:
    """``"opened"``, or the errno's name of the ``refusal`` it raised (anything else
    goes through)."""
    try:
        open_and_close()
    except refusal as exc:
        return errno.errorcode.get(exc.errno or 0, "?")
    return "opened"


def collect(
    listener: Listener[E],
    done: Callable[[list[E]], bool],
    timeout: float = 5.0,
    into: list[E] | None = None,
) -> list[E]:
    """Read ``listener`` until ``done(what was read)``; fail at the deadline.

    ``into``: append there (and return it), to keep what a failed attempt read."""
    events: list[E] = [] if into is None else into

    def read() -> bool:
        if not done(events) and listener.wait_readable(0.2):
            events.extend(listener.read_events())
        return done(events)

    # no pause between reads: wait_readable() is the wait
    wait_for("the records looked for", read, timeout, step=0, explain=lambda: f"{len(events)} read")
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
