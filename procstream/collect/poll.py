"""The bridge between the synchronous core and asyncio.

Rules:
- Every poll (scan /proc, update the grouper, build the events) runs on ONE dedicated
  worker thread; the event loop only awaits it and hands the result to the sink. All
  tracker/grouper/builder state is touched by that thread alone, so it needs no locks.
  Other sources (kernel events) submit their work to the same thread via ``submit()``.
- Polls are scheduled on a fixed grid of ``interval``; a poll that overruns skips the
  ticks it missed instead of piling up, and the next ``cycle`` event says how many.
- A failing poll (e.g. the /proc mount vanished) is logged and retried at the next tick;
  ``health()`` turns bad when the last good poll is older than 3 intervals.
- The first good poll yields the baseline state (``Sink.load_state``), later polls a
  batch of events (``Sink.publish``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..events import Event, EventBuilder
from ..grouper import GroupCounts, Grouper, GrouperUpdate
from ..procfs.models import ProcLike

__all__ = ["Sink", "PollStatus", "Poller"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Sink(Protocol):
    """Where poll results go (the hub). Called on the event loop thread."""

    def load_state(self, groups: dict[str, Event], procs: list[Event]) -> None: ...

    def publish(self, events: list[Event]) -> None: ...


@dataclass(slots=True)
class PollStatus:
    """What ``/healthz`` and the self-metrics report about polling."""

    interval: float
    started_at: float
    last_good: float | None = None  # wall time of the last good poll
    last_duration: float = 0.0  # seconds
    polls: int = 0
    failures: int = 0
    skipped: int = 0
    last_error: str | None = None


@dataclass(slots=True)
class _PollResult:
    first: bool
    events: list[Event]
    groups: dict[str, Event] | None
    procs: list[Event] | None
    duration: float


class Poller:
    """Polls ``scan()`` every ``interval`` seconds on a worker thread and feeds a sink."""

    def __init__(
        self,
        scan: Callable[[], Iterable[ProcLike]],
        grouper: Grouper,
        builder: EventBuilder,
        sink: Sink,
        *,
        interval: float = 1.0,
        extra_cycle: Callable[[], dict[str, Any]] | None = None,
        on_update: Callable[[GrouperUpdate], None] | None = None,
        on_poll: Callable[[GrouperUpdate, dict[str, GroupCounts], float], None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.scan = scan
        self.grouper = grouper
        self.builder = builder
        self.sink = sink
        self.interval = interval
        #: fields added to every ``cycle`` event (called on the poll thread)
        self.extra_cycle = extra_cycle
        #: sees (and may edit) each poll's report before its events are built
        self.on_update = on_update
        #: called on the poll thread after each good poll with its report, its groups and
        #: its duration in seconds (``/metrics`` keeps the latest; must not block)
        self.on_poll = on_poll
        self.status = PollStatus(interval=interval, started_at=time.time())
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="procstream-poll")
        self._first = True
        self._skipped_since_last = 0
        self._wake = asyncio.Event()

    # -- worker thread ----------------------------------------------------------------

    def _poll_once(self) -> _PollResult:
        t0 = time.perf_counter()
        update = self.grouper.update(self.scan())
        if self.on_update is not None:
            self.on_update(update)
        groups = self.grouper.groups()
        if self._first:
            group_state, procs = self.builder.state(
                self.grouper.tracker.tracked.values(), groups, update.time
            )
            duration = time.perf_counter() - t0
            result = _PollResult(True, [], group_state, procs, duration)
        else:
            extra: dict[str, Any] = {"skipped": self._skipped_since_last}
            if self.extra_cycle is not None:
                extra.update(self.extra_cycle())
            duration_so_far = (time.perf_counter() - t0) * 1000.0
            events = self.builder.batch(update, groups, duration_ms=duration_so_far, extra_cycle=extra)
            duration = time.perf_counter() - t0
            result = _PollResult(False, events, None, None, duration)
        if self.on_poll is not None:
            self.on_poll(update, groups, duration)
        return result

    # -- event loop -------------------------------------------------------------------

    async def submit(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the poll thread, between polls (never during one)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def poll_now(self) -> bool:
        """Run one poll and deliver its result; False (and logged) when it failed."""
        try:
            result = await self.submit(self._poll_once)
        except Exception as exc:  # a failed poll must never stop the service
            self.status.failures += 1
            self.status.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("poll failed (will retry): %s", self.status.last_error)
            return False
        st = self.status
        st.polls += 1
        st.last_good = time.time()
        st.last_duration = result.duration
        st.last_error = None
        if result.first:
            self._first = False
            assert result.groups is not None and result.procs is not None
            self.sink.load_state(result.groups, result.procs)
        else:
            self._skipped_since_last = 0
            self.sink.publish(result.events)
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
        try:
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
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

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
