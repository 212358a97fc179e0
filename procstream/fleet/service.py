"""``procstream fleet``: the aggregator, wired from its parts (its composition root).

The :class:`~.aggregator.Aggregator` reads the JetStream stream into a hub; the same
:class:`~procstream.serve.server.ProcstreamServer` as ``serve``'s serves that hub — the
WebSocket protocol, the viewer, ``/api/snapshot``, ``/healthz`` — behind the same guard
(token, Origin, TLS: :class:`~procstream.serve.front.Front`), within the same
``--max-memory`` budget (the resume buffer, clients' pending output and caches each get
serve's share of it; a :class:`~procstream.serve.resources.MemoryGuard` watches the
whole) and descriptor limit. ``/metrics`` has the aggregator's own health and the
server's self-metrics; each host's process metrics stay on that host's ``/metrics``.

Start-up order: check the listening and security options and the NATS options (exit 2
for what can't work), connect to NATS (refused credentials: exit 2; a server not there
yet: wait for it), build the fleet's state and catch up with the stream, then listen.
SIGTERM/SIGINT close every client with 1001 and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..serve.front import Front, event_loop_factory, setup_logging, watch_memory
from ..serve.metrics import MetricsCollector, make_registry, metrics_route
from ..serve.resources import MemoryGuard
from ..serve.server import ProcstreamServer
from ..wiring import UsageError
from .aggregator import Aggregator, FleetStartError
from .options import NatsConfigError, fleet_settings_from, settings_from
from .subjects import check_host_name

__all__ = ["FleetService", "FleetCollector", "run"]

log = logging.getLogger("procstream.fleet")

SHUTDOWN_DEADLINE: Final = 5.0
# Families of serve's collector that describe a host's own processes and polls: a
# fleet has none of its own (each host's /metrics has them).
_HOST_ONLY: Final = ("namedprocess_", "procstream_poll_")
_HOST_ONLY_NAMES: Final = frozenset({"procstream_groups", "procstream_groups_removed", "procstream_tracked_procs",
                                     "procstream_last_poll_timestamp_seconds"})
_RATE_WINDOW: Final = 10  # seconds the events/s gauge averages over


class FleetCollector(Collector):
    """``/metrics`` of the aggregator: its health, and the server's self-metrics.

    A scrape renders on a worker thread while the aggregator's state moves on the
    event loop: :meth:`sample`, called on the loop every second, takes what the
    scrape shows, and :meth:`collect` only reads that."""

    def __init__(self, server: MetricsCollector, aggregator: Aggregator,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.server = server
        self.aggregator = aggregator
        self._clock = clock
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)
        self._view: dict[str, Any] = {}
        self.sample()

    def _events_per_second(self) -> float:
        """Events handed to clients per second over the last few seconds."""
        samples = self._samples
        now, count = samples[-1]
        for t, n in samples:
            if now - t <= _RATE_WINDOW:
                return (count - n) / (now - t) if now > t else 0.0
        return 0.0

    def sample(self) -> None:
        """Take what the next scrapes show (call on the event loop, every second)."""
        now = self._clock()
        if not self._samples or now - self._samples[-1][0] >= 0.5:
            self._samples.append((now, self.aggregator.stats.events))
        view = self.aggregator.metrics()
        view.update(events_per_second=self._events_per_second(), ready=self.aggregator.ready)
        self._view = view  # replaced whole: a scrape reads one or the other

    def collect(self) -> Iterator[Metric]:
        for family in self.server.collect():
            if family.name.startswith(_HOST_ONLY) or family.name in _HOST_ONLY_NAMES:
                continue
            yield family
        m = self._view
        hosts = GaugeMetricFamily("procstream_fleet_hosts", "Hosts known to the fleet, by state", labels=["state"])
        hosts.add_metric(["up"], m["hosts_up"])
        hosts.add_metric(["down"], m["hosts_down"])
        yield hosts
        published = CounterMetricFamily("procstream_fleet_status_published", "host.up / host.down published by this aggregator", labels=["type"])
        for kind in ("up", "down"):
            published.add_metric([f"host.{kind}"], m["published"].get(kind, 0))
        yield published
        gauges = (
            ("ready", "1 once the fleet's state is built and the stream caught up", 1 if m["ready"] else 0),
            ("nats_connected", "1 while connected to a NATS server", 1 if m["connected"] else 0),
            ("consumer_lag", "Messages of the stream not handled yet", m["lag"]),
            ("stream_seq", "Stream sequence of the latest event handed to clients", m["seq"]),
            ("events_per_second", f"Events handed to clients per second, over the last {_RATE_WINDOW} s", m["events_per_second"]),
            ("start_seconds", "Seconds from connected to ready at start", m["start_seconds"]),
            ("hosts_waiting_for_state", "Hosts whose new run waits for its state from the bucket", m["waiting_for_state"]),
        )
        for name, help_text, value in gauges:
            yield GaugeMetricFamily(f"procstream_fleet_{name}", help_text, value=value)
        counters = (
            ("messages", "Stream messages handled", "messages"),
            ("events", "Events handed to clients (a message, or the place of a missing one)", "events"),
            ("invalid_messages", "Stream messages that were not procstream events", "invalid"),
            ("deleted_messages", "Stream sequences whose message was deleted from the stream", "deleted"),
            ("skipped_events", "Events already in their host's state, or of an earlier run", "skipped"),
            ("host_runs", "New runs of hosts (a restarted serve)", "new_runs"),
            ("states_read", "Host states read from the state bucket", "states_read"),
            ("state_waits_given_up", "New runs whose state never came from the bucket", "state_waits_given_up"),
            ("consumers", "Stream consumers created (the first, and replacements after trouble)", "consumers"),
            ("publish_failures", "host.up / host.down that could not be published", "publish_failures"),
            ("epoch_changes", "Times the stream was created again (a new epoch)", "epoch_changes"),
        )
        for name, help_text, key in counters:
            yield CounterMetricFamily(f"procstream_fleet_{name}", help_text, value=m[key])


class FleetService:
    """Everything ``fleet`` runs, so tests can start it in-process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        front = Front.from_args(args)
        self.front = front
        try:
            settings = settings_from(args, args.nats)
            fleet = fleet_settings_from(args)
        except NatsConfigError as exc:
            raise UsageError(f"--nats: {exc}") from None
        host_name = args.host_name if args.host_name is not None else socket.gethostname()
        problem = check_host_name(host_name)
        if problem is not None:
            raise UsageError(f"--host-name {host_name!r}: {problem}")
        self.aggregator = Aggregator(
            settings,
            stream=fleet.stream,
            bucket=fleet.state_bucket,
            host_name=host_name,
            buffer_size=args.buffer,
            buffer_bytes=front.budget.buffer,
            output_bytes=front.budget.clients,
            cache_bytes=front.budget.caches,
            overflow_grace=args.slow_client_grace,
            host_timeout=fleet.host_timeout,
        )
        hub = self.aggregator.hub
        server_config, self.descriptors = front.server_config(args.max_clients)
        self.server = ProcstreamServer(hub, server_config, health=self.aggregator.health, authorize=front.guard)
        self.memory = MemoryGuard(front.budget.total, hub.shed, held=self._memory_held,
                                  ended=lambda: self.server.sockets.stats.closed)
        base = MetricsCollector(
            hub_stats=hub.stats,
            server_stats=self.server.stats,
            refusals=front.guard.stats.as_dict,
            budget=front.budget,
            memory_guard=lambda: self.memory,
            sockets=self.server.sockets.stats,
            max_clients=server_config.max_clients,
        )
        self.metrics = FleetCollector(base, self.aggregator)
        self.server.add_route("/metrics", metrics_route(make_registry(self.metrics)))
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask the service to shut down (safe from a signal handler)."""
        self._stop.set()

    def _memory_held(self) -> int:
        hs = self.aggregator.hub.stats
        return hs.buffer_bytes + hs.output_bytes + hs.cache_bytes

    async def run(self, *, ready: Callable[[ProcstreamServer], Any] | None = None) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        if self.descriptors.message:
            (log.warning if self.descriptors.lowered else log.info)("%s", self.descriptors.message)
        guard_task = asyncio.create_task(watch_memory(self.memory), name="procstream-memory")
        try:
            starting = asyncio.create_task(self.aggregator.start())
            stopping = asyncio.create_task(self._stop.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return 0
            stopping.cancel()
            try:
                starting.result()
            except FleetStartError as exc:
                raise UsageError(str(exc)) from None
            await self.server.start()
            log.info("procstream fleet serving %s://%s:%d/ (stream %s, %s)", self.front.scheme,
                     self.server.config.host, self.server.port, self.aggregator.stream,
                     "token required" if self.front.guard.config.token else "no token")
            if self.front.exposure_warning:
                log.warning("%s", self.front.exposure_warning)
            if ready is not None:
                ready(self.server)
            while not self._stop.is_set():
                self.metrics.sample()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1.0)
            return 0
        finally:
            guard_task.cancel()
            await asyncio.gather(guard_task, return_exceptions=True)
            try:
                await asyncio.wait_for(self._shutdown(), SHUTDOWN_DEADLINE - 0.5)
            except TimeoutError:
                log.warning("shutdown took too long; exiting anyway")
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _shutdown(self) -> None:
        await self.server.close(1001, "server shutting down")
        await self.aggregator.close()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``procstream fleet``."""
    setup_logging(args)
    factory = event_loop_factory(args.loop)

    async def main() -> int:
        return await FleetService(args).run()

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())
