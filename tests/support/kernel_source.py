"""The kernel event source in this process, for tests (not a test module).

``kernel_env(config)`` runs what ``procstream serve`` runs with kernel events, minus the
server: the core (tracker, grouper, event builder) on its thread, a poller, the
``KernelSource`` reading the real proc connector, a ``/metrics`` collector, and a sink
that keeps every event. Its poller polls once at start, then only when asked
(``Env.poll``): a test decides when a poll happens, so a poll can't land in the middle
of what it measures.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from procstream.collect.core import Core
from procstream.collect.kernel import KernelSource
from procstream.collect.poll import Poller
from procstream.config import parse_config
from procstream.events import EventBuilder
from procstream.grouper import Grouper
from procstream.procfs import FS
from procstream.serve.metrics import MetricsCollector, make_registry, render
from tests.support.waiting import async_wait_for

__all__ = ["Sink", "Env", "kernel_env"]

#: so long that no poll happens unless a test asks for one
NO_POLLS = 3600.0


@dataclass
class Sink:
    states: list[Any] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def load_state(self, groups: Any, procs: Any) -> None:
        self.states.append((groups, procs))

    def publish(self, events: Any) -> None:
        self.events.extend(events)

    def of(self, type_: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_ and all(e.get(k) == v for k, v in match.items())]


@dataclass
class Env:
    poller: Poller
    source: KernelSource
    sink: Sink
    grouper: Grouper
    metrics: MetricsCollector
    core: Core

    async def poll(self) -> None:
        """One poll, now, and wait until it is done."""
        polls = self.poller.status.polls
        self.poller.request_poll()
        await async_wait_for("a poll", lambda: self.poller.status.polls > polls)

    def metrics_text(self) -> str:
        return render(make_registry(self.metrics, process=False)).decode()


@asynccontextmanager
async def kernel_env(config: str, *, interval: float = NO_POLLS) -> AsyncIterator[Env]:
    """The kernel source and its core on ``config``; one poll done, the source reading."""
    fs = FS("/proc")
    grouper = Grouper(parse_config(config))
    builder = EventBuilder(username=grouper.username)
    sink = Sink()
    core = Core(fs.all_procs, grouper, builder, sink)
    poller = Poller(core, interval=interval)
    source = KernelSource(fs, grouper, builder, core, interval=poller.interval, request_poll=poller.request_poll)
    metrics = MetricsCollector(poll_status=poller.status, kernel=lambda: source.stats)
    core.watch(metrics.on_poll)
    assert await poller.poll_now()
    source.open()
    source.start()
    task = asyncio.create_task(poller.run())
    try:
        yield Env(poller, source, sink, grouper, metrics, core)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await source.close()
        core.close()
