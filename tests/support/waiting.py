"""Waiting for a condition with a deadline (tests never sleep a fixed time)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["wait_for", "async_wait_for"]

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
