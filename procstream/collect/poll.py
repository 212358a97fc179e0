"""The poll source: when to poll, and whether polling is healthy.

Rules:
- Polls run on a fixed grid of ``interval``; a poll that overruns skips the ticks it
  missed instead of piling up, and the next ``cycle`` event says how many.
- A poll is one :meth:`Core.poll <procstream.collect.core.Core.poll>`: the scan and
  everything after it run on the core's thread, never on the event loop.
- A failing poll (e.g. the /proc mount vanished) is logged and retried at the next tick;
  ``health()`` turns bad when the last good poll is older than 3 intervals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from ..stats import Stats
from .core import Core

__all__ = ["PollStatus", "Poller"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PollStatus(Stats):
    """What ``/healthz`` and the self-metrics report about polling."""

    interval: float
    started_at: float
    last_good: float | None = None  # wall time of the last good poll
    last_duration: float = 0.0  # seconds
    polls: int = 0
    failures: int = 0
    skipped: int = 0
    last_error: str | None = None


class Poller:
    """Has ``core`` poll every ``interval`` seconds, or sooner when asked."""

    def __init__(self, core: Core, *, interval: float = 1.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self._core = core
        self.interval = interval
        self.status = PollStatus(interval=interval, started_at=time.time())
        self._skipped_since_last = 0
        self._wake = asyncio.Event()

    async def poll_now(self) -> bool:
        """Run one poll and deliver its result; False (and logged) when it failed."""
        try:
            polled = await self._core.poll(skipped=self._skipped_since_last)
        except Exception as exc:  # a failed poll must never stop the service
            self.status.failures += 1
            self.status.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("poll failed (will retry): %s", self.status.last_error)
            return False
        st = self.status
        st.polls += 1
        st.last_good = time.time()
        st.last_duration = polled.duration
        st.last_error = None
        if not polled.baseline:
            self._skipped_since_last = 0  # the cycle event said so
        return True

    def request_poll(self) -> None:
        """Ask for a poll as soon as possible (e.g. after kernel events were lost)."""
        self._wake.set()

    async def run(self) -> None:
        """Poll forever on a fixed grid of ``interval`` seconds (cancel to stop).

        If a poll already ran (``poll_now()`` before starting the server, say), the
        first tick of the grid is one interval later.
        """
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + (self.interval if self.status.polls else 0.0)
        while True:
            self._wake.clear()
            delay = next_tick - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                    next_tick = loop.time()  # an early poll restarts the grid
                except TimeoutError:
                    pass
            await self.poll_now()
            next_tick += self.interval
            now = loop.time()
            if now > next_tick:
                missed = int((now - next_tick) // self.interval) + 1
                self._skipped_since_last += missed
                self.status.skipped += missed
                log.info("poll overran its interval; skipping %d tick(s)", missed)
                next_tick += missed * self.interval

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ok, details): ok while the last good poll is younger than 3 intervals."""
        st = self.status
        now = time.time()
        age = now - st.last_good if st.last_good is not None else None
        limit = 3 * st.interval
        if age is None:
            # Still starting: give the first poll the same grace as any other.
            ok = now - st.started_at <= limit
        else:
            ok = age <= limit
        return ok, {
            "status": "ok" if ok else "stale",
            "last_poll_age_s": None if age is None else round(age, 3),
            "last_poll_duration_ms": round(st.last_duration * 1000.0, 3),
            "interval_s": st.interval,
            "polls": st.polls,
            "failures": st.failures,
            "skipped": st.skipped,
            "last_error": st.last_error,
        }
