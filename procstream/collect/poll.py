"""The poll source: when to poll, and whether polling is healthy.

Rules:
- Polls run on a fixed grid of ``interval``; a poll that overruns skips the ticks it
  missed instead of piling up: the interval stretches to whole ticks while polls take
  longer than it. The next ``cycle`` event says how many ticks were skipped and how long
  it really was since the previous poll began (``interval_s``).
- A poll is one :meth:`Core.poll <procstream.collect.core.Core.poll>`: the scan and
  everything after it run on the core's thread, never on the event loop.
- A failing poll (e.g. the /proc mount vanished) is counted and retried at the next tick;
  it is logged when a streak of failures starts or its error changes, and the recovery
  once, not at every tick.
- ``health()`` means "alive and keeping up": bad once no poll has finished well within
  ``max(3 × interval, 3 × the recent poll duration)`` (the slowest of the last few
  polls). A host whose polls take longer than the interval is slow, not stuck; a poll
  that hangs, or polls that keep failing, turn it bad.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

from ..stats import Stats
from .core import Core

__all__ = ["PollStatus", "Poller"]

log = logging.getLogger(__name__)

# Health compares with the slowest of this many recent polls: one quick poll after a
# slow one must not make the next slow one look like a hang.
_RECENT_POLLS: Final = 5


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
    #: seconds between the starts of the last two polls (the interval in effect)
    effective_interval: float | None = None
    #: seconds the last few good polls took, oldest first
    recent_durations: tuple[float, ...] = ()

    @property
    def stale_after(self) -> float:
        """Seconds without a good poll after which the service is unhealthy."""
        slowest = max(self.recent_durations, default=0.0)
        return max(3 * self.interval, 3 * slowest)


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
        self._last_start: float | None = None
        self._streak = 0  # failed polls in a row
        self._overrunning = False  # logged once per streak of overrunning polls

    async def poll_now(self) -> bool:
        """Run one poll and deliver its result; False (and logged) when it failed."""
        start = time.monotonic()
        since = None if self._last_start is None else round(start - self._last_start, 3)
        self._last_start = start
        self.status.effective_interval = since
        try:
            polled = await self._core.poll(skipped=self._skipped_since_last, interval_s=since)
        except Exception as exc:  # a failed poll must never stop the service
            error = f"{type(exc).__name__}: {exc}"
            if error != self.status.last_error:
                log.warning("poll failed (retrying every tick; logged again only if the "
                            "error changes): %s", error)
            self.status.failures += 1
            self.status.last_error = error
            self._streak += 1
            return False
        if self._streak:
            log.warning("polling works again after %d failed polls", self._streak)
            self._streak = 0
        st = self.status
        st.polls += 1
        st.last_good = time.time()
        st.last_duration = polled.duration
        st.recent_durations = (*st.recent_durations[1 - _RECENT_POLLS :], polled.duration)
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
                if not self._overrunning:
                    self._overrunning = True
                    log.info("polls take longer than the interval (%.3gs): skipping ticks while "
                             "they do (cycle events and /healthz say how many)", self.interval)
                next_tick += missed * self.interval
            elif self._overrunning:
                self._overrunning = False
                log.info("polls fit in the interval again")

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ok, details): ok while the last good poll is younger than
        :attr:`PollStatus.stale_after`."""
        st = self.status
        now = time.time()
        age = now - st.last_good if st.last_good is not None else None
        limit = st.stale_after
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
            "effective_interval_s": st.effective_interval,
            "stale_after_s": round(limit, 3),
            "polls": st.polls,
            "failures": st.failures,
            "skipped": st.skipped,
            "last_error": st.last_error,
        }
