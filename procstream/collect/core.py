"""The core: the tracker, the grouper and the event builder, on one worker thread.

Rules:
- Everything that touches tracker, grouper or builder state runs on ONE worker thread,
  so that state needs no locks; the event loop only awaits the thread and hands what
  comes back to the sink. Inputs run one at a time, each to completion, in the order
  they were handed over.
- Two sources hand their input to the core: polls (:meth:`Core.poll` scans /proc,
  updates the grouper and builds the events; :class:`~procstream.collect.poll.Poller`
  says when) and kernel process events (:meth:`Core.submit` runs the kernel source's
  batch; :class:`~procstream.collect.kernel.KernelSource` says when).
- The first good poll gives the sink the baseline state (:meth:`EventSink.load_state`),
  then the lifecycle's events about it (expected groups missing from the start); every
  later poll, and every submitted batch, its events (:meth:`EventSink.publish`). The
  sink is called on the event loop thread.
- With a :class:`~procstream.lifecycle.Lifecycle`, every batch passes through it on the
  core's thread before it is handed over, whichever source it came from: it fills in
  restarts and exit classes and adds the ``group.*`` lifecycle events.
- Whoever must see every poll registers with a method: :meth:`Core.join` for a second
  source of exits (it may hold back the poll's exits, and adds to each ``cycle``),
  :meth:`Core.watch` for readers of each poll's result (``/metrics``), :meth:`Core.on_live`
  for each poll's :class:`~procstream.live.LiveTable` (a snapshot's per-process numbers).
- ``proc.update`` events are built only while :meth:`Core.want_updates` says someone
  subscribes to them, and only for the processes they select.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from ..config import ExpectedGroup, LifecycleConfig
from ..events import EventBuilder
from ..grouper import GroupCounts, Grouper, GrouperUpdate
from ..lifecycle import Lifecycle
from ..live import LiveTable, UpdateInterest
from ..procfs.models import ProcLike
from ..schema import CycleExtras, Event, GroupFields, ProcFields

__all__ = ["EventSink", "PollPartner", "PollWatcher", "LiveListener", "Polled", "Core", "SWITCH_INTERVAL"]

T = TypeVar("T")


class EventSink(Protocol):
    """Where the core's output goes (in a server: the hub, then the event log)."""

    def load_state(self, groups: dict[str, GroupFields], procs: list[ProcFields]) -> None:
        """The baseline state; once, after the first good poll, before any event."""

    def publish(self, events: list[Event]) -> None:
        """One poll's or one kernel batch's events, in order."""


class PollPartner(Protocol):
    """A second source of starts and exits that takes part in every poll (the kernel
    source). Both methods run on the core's thread and must not block."""

    def take_exits(self, update: GrouperUpdate) -> None:
        """Called once the grouper took the poll, before its events are built: may take
        exits out of ``update.exited`` (to report them itself, better informed) and put
        back earlier ones it gives up on."""

    def cycle_fields(self) -> CycleExtras:
        """Fields for this poll's ``cycle`` event (not asked for the first poll, which
        has no ``cycle``)."""


#: Sees every good poll: ``(its report, the groups after it, its duration in seconds)``.
PollWatcher = Callable[[GrouperUpdate, dict[str, GroupCounts], float], None]

#: Gets each good poll's live table, on the event loop thread, just before the sink gets
#: that poll's events (or its baseline state).
LiveListener = Callable[[LiveTable], None]


@dataclass(frozen=True, slots=True)
class Polled:
    """What one :meth:`Core.poll` did."""

    #: the first good poll: it loaded the baseline state and built no ``cycle``
    baseline: bool
    #: seconds it took on the core's thread
    duration: float


@dataclass(slots=True)
class _PollResult:
    baseline: bool
    duration: float
    events: list[Event]
    groups: dict[str, GroupFields] | None = None
    procs: list[ProcFields] | None = None
    live: LiveTable | None = None


#: The interpreter's GIL switch interval while a core polls next to an event loop
#: (``sys.setswitchinterval``). The poll's thread and the loop's share the GIL: at
#: Python's default of 5 ms, a client's request that comes in during a poll waits up
#: to 5 ms for the loop to get the GIL back, every time; at 1 ms, a fifth of that.
#: A thread that waits for nothing is never switched away from, so an idle loop costs
#: the poll nothing.
SWITCH_INTERVAL: Final = 0.001


class Core:
    """The tracker, grouper and event builder, fed by the sources, feeding one sink.

    Call its coroutines on the event loop; ``close()`` at shutdown.
    """

    THREAD_NAME = "procstream-core"

    def __init__(
        self,
        scan: Callable[[], Iterable[ProcLike]],
        grouper: Grouper,
        builder: EventBuilder,
        sink: EventSink,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self._scan = scan
        self._grouper = grouper
        self._builder = builder
        self._sink = sink
        self._lifecycle = lifecycle
        # Replaced whole, never changed in place: the core's thread reads them lock-free.
        self._partners: tuple[PollPartner, ...] = ()
        self._watchers: tuple[PollWatcher, ...] = ()
        self._live_listeners: tuple[LiveListener, ...] = ()
        #: which processes' proc.update someone wants; None: nobody (set from the loop)
        self._interest: UpdateInterest | None = None
        self._live: LiveTable | None = None  # the core's thread only
        self._baselined = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.THREAD_NAME)

    # -- registration (event loop thread) ---------------------------------------------

    def join(self, partner: PollPartner) -> None:
        """Let ``partner`` take part in every poll that starts from now on. Call on the
        event loop thread, once the partner reports the exits it will take."""
        self._partners = (*self._partners, partner)

    def watch(self, watcher: PollWatcher) -> None:
        """Call ``watcher`` on the core's thread after every good poll, once its events
        are built. Register before the first poll it should see; it must not block."""
        self._watchers = (*self._watchers, watcher)

    def on_live(self, listener: LiveListener) -> None:
        """Hand ``listener`` each good poll's :class:`LiveTable` from now on (event loop
        thread, before the poll's events go to the sink). Registering one makes every poll
        build its table: one entry per tracked process, no computation."""
        self._live_listeners = (*self._live_listeners, listener)

    def want_updates(self, interest: UpdateInterest | None) -> None:
        """Build ``proc.update`` events for the processes ``interest`` selects from the
        next poll on; None: build none (nobody subscribes). Call on the event loop thread
        whenever the subscriptions change."""
        self._interest = interest

    # -- input (event loop thread) ----------------------------------------------------

    async def poll(self, *, skipped: int = 0, interval_s: float | None = None) -> Polled:
        """Scan /proc, update the groups and hand the sink the baseline state (first good
        poll) or this poll's events. Raises what the scan raised; nothing is delivered
        then. ``skipped``: poll ticks missed since the last poll, and ``interval_s``:
        seconds since it began, for its ``cycle``."""
        r = await self._run(self._poll, skipped, interval_s)
        if r.live is not None:
            for listener in self._live_listeners:
                listener(r.live)
        if r.baseline:
            assert r.groups is not None and r.procs is not None
            self._sink.load_state(r.groups, r.procs)
            if r.events:
                self._sink.publish(r.events)
        else:
            self._sink.publish(r.events)
        return Polled(r.baseline, r.duration)

    async def submit(self, fn: Callable[..., list[Event]], *args: Any) -> None:
        """Run ``fn(*args)`` on the core's thread, between polls, and publish the events
        it returns (and the lifecycle's). Raises what ``fn`` raised. The kernel source
        hands over each batch of kernel events this way."""
        events = await self._run(self._submitted, fn, *args)
        if events:
            self._sink.publish(events)

    async def expect(self, expected: tuple[ExpectedGroup, ...], settings: LifecycleConfig) -> None:
        """Use a reloaded config's expected groups and lifecycle settings from now on:
        pin the groups, let the next ``group.update`` of a group whose entry changed say
        so, and publish the ``group.missing``/``group.recovered`` events the change causes."""
        events = await self._run(self._expect, expected, settings)
        if events:
            self._sink.publish(events)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the core's thread, between polls, and return its result;
        publishes nothing (a config reload changes the grouper this way)."""
        return await self._run(fn, *args)

    def close(self) -> None:
        """Stop the core's thread; inputs not started yet are dropped. Call once, at
        shutdown, after the sources stopped."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- the core's thread ------------------------------------------------------------

    def _submitted(self, fn: Callable[..., list[Event]], *args: Any) -> list[Event]:
        events = fn(*args)
        if self._lifecycle is not None and events:
            events = self._lifecycle.observe(events)
        return events

    def _expect(self, expected: tuple[ExpectedGroup, ...], settings: LifecycleConfig) -> list[Event]:
        self._grouper.pin(e.group for e in expected)
        self._builder.set_expected(expected)
        if self._lifecycle is None:
            return []
        return self._lifecycle.configure(settings, expected)

    def _poll(self, skipped: int, interval_s: float | None = None) -> _PollResult:
        t0 = time.perf_counter()
        grouper, builder = self._grouper, self._builder
        update = grouper.update(self._scan())
        partners = self._partners
        for partner in partners:
            partner.take_exits(update)
        groups = grouper.groups()
        lifecycle = self._lifecycle
        interest = self._interest  # one read: the loop may replace it meanwhile
        live: LiveTable | None = None
        if self._live_listeners or interest is not None:
            live = self._live = self._next_table(update.time)
        else:
            grouper.tracker.drop_changes()  # nobody would take them
        if not self._baselined:
            group_state, procs = builder.state(grouper.tracker.tracked.values(), groups, update.time)
            events: list[Event] = lifecycle.baseline(procs, update.time) if lifecycle is not None else []
            result = _PollResult(True, time.perf_counter() - t0, events, group_state, procs, live)
        else:
            extra: CycleExtras = {"skipped": skipped}
            if interval_s is not None:
                extra["interval_s"] = interval_s
            for partner in partners:
                extra.update(partner.cycle_fields())
            duration_ms = (time.perf_counter() - t0) * 1000.0
            events = builder.batch(
                update, groups, duration_ms=duration_ms, extra_cycle=extra, live=live, interest=interest
            )
            if lifecycle is not None:
                if update.removed_groups:
                    lifecycle.forget(update.removed_groups)
                events = lifecycle.observe(events, tick=True, reported=groups, now=update.time)
            result = _PollResult(False, time.perf_counter() - t0, events, live=live)
        for watcher in self._watchers:
            watcher(update, groups, result.duration)
        self._baselined = True
        return result

    def _next_table(self, now: float) -> LiveTable:
        """This poll's live table: made again from the last one where the tracker knows
        what changed since, whole otherwise."""
        tracker = self._grouper.tracker
        changes = tracker.take_changes()
        before = self._live
        if before is None or changes is None:
            return LiveTable.of(now, tracker.tracked.values(), before)
        return before.then(now, changes, tracker.current)
