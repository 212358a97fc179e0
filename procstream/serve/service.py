"""``procstream serve``: the service, wired from its parts (its composition root).

How the parts connect: the :class:`Poller` (every interval) and the
:class:`KernelSource` (as the kernel reports) hand their input to the :class:`Core`,
which builds the events on its thread and gives them to one sink, :class:`HubAndLog`:
the hub numbers them and fans them out to the WebSocket clients, then the event log
writes them. The :class:`MetricsCollector` watches every poll of the core.

Start-up order: check the security settings (token, origins, listening address, TLS
files: a problem is exit 2 before anything listens), with ``--nats`` connect and check
the stream (refused credentials or an unusable stream: exit 2; a server that isn't
there yet: a warning, and events wait in the buffer), read the config and /proc once (so
the first subscriber already gets a full snapshot), then listen, then poll on the
interval. Signals: SIGTERM/SIGINT close every client with 1001 and exit 0 within 5 s;
SIGHUP re-reads ``--config`` (a bad file is logged and the old rules stay), reopens the
event log and re-reads the TLS certificate and key.

Limits: ``--max-memory`` is split into the parts that grow with clients and local users
(:class:`~procstream.serve.resources.MemoryBudget`), each handed to the part that holds
it, and a :class:`~procstream.serve.resources.MemoryGuard` watches the whole; the
descriptor limit is fitted to ``--max-clients`` before anything listens.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from ..collect.core import SWITCH_INTERVAL, Core
from ..collect.detail import process_detail
from ..collect.kernel import KernelSource, choose_source
from ..collect.oom import OomWatch
from ..config import Config
from ..collect.poll import Poller
from ..fleet.agent import NatsAgent, NatsStartError
from ..fleet.options import NatsConfigError
from ..fleet.subjects import check_host_name
from ..lifecycle import Lifecycle
from ..live import UpdateInterest
from ..netlink.connector import ConnectorError
from ..stream.eventlog import EventLog, parse_types
from ..stream.hub import Hub
from ..stream.sink import HubAndLog
from ..wiring import UsageError, build_core, load_namer
from .detail import detail_route
from .front import Front, event_loop_factory, memory_budget, parse_listen, setup_logging, token_from, watch_memory
from .metrics import Families, MetricsCollector, make_registry, metrics_route
from .resources import MemoryGuard
from .security import SecurityError
from .server import ProcstreamServer

__all__ = ["parse_listen", "token_from", "memory_budget", "Service", "run"]

log = logging.getLogger("procstream")

SHUTDOWN_DEADLINE = 5.0


class Service:
    """Everything ``serve`` runs, so tests and other front ends can start it in-process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        # Security first: a refusal must come before any work or listening socket.
        front = Front.from_args(args)
        self.exposure_warning = front.exposure_warning
        self.tls = front.tls
        self.guard = front.guard
        self.budget = front.budget
        self.fs, self.grouper, self.builder = build_core(args)
        host_name = args.host_name if args.host_name is not None else socket.gethostname()
        problem = check_host_name(host_name)
        if problem is not None:
            raise UsageError(f"--host-name {host_name!r}: {problem}")
        self.hub = Hub(
            host=host_name,
            interval=args.interval,
            buffer_size=args.buffer,
            buffer_bytes=self.budget.buffer,
            output_bytes=self.budget.clients,
            cache_bytes=self.budget.caches,
            overflow_grace=args.slow_client_grace,
        )
        # Publishing to NATS JetStream: checked here (a bad URL or file is exit 2),
        # connected in run() before the first poll.
        self.nats: NatsAgent | None = None
        if args.nats:
            try:
                self.nats = NatsAgent.from_args(self.hub, args)
            except NatsConfigError as exc:
                raise UsageError(f"--nats: {exc}") from None
        self.eventlog: EventLog | None = None
        if args.event_log:
            try:
                types = parse_types(args.event_log_types)
            except ValueError as exc:
                raise UsageError(f"--event-log-types: {exc}") from exc
            self.eventlog = EventLog(
                args.event_log,
                types=types,
                max_bytes=args.event_log_max_bytes,
                backups=args.event_log_backups,
                max_queue_bytes=self.budget.event_log,
            )
        # Restarts, crash loops, expected groups and exit classes, for both sources.
        config = self.grouper.namer
        assert isinstance(config, Config)  # build_core names processes with the config
        self.oom = OomWatch()
        self.oom.open()
        self.lifecycle = Lifecycle(config.lifecycle, config.expected, oom=self.oom)
        self.core = Core(
            self.fs.all_procs, self.grouper, self.builder, HubAndLog(self.hub, self.eventlog), self.lifecycle
        )
        # Per-process numbers: every snapshot carries the latest poll's; proc.update events
        # are built only for the processes that subscribers select.
        self.core.on_live(self.hub.set_live)
        self.hub.watch_interest(lambda i: self.core.want_updates(None if i is None else UpdateInterest(*i)))
        self.poller = Poller(self.core, interval=args.interval)
        try:
            self.use_kernel, self.source_reason = choose_source(args.source, args.procfs)
        except ConnectorError as exc:
            raise UsageError(f"--source netlink: {exc}") from exc
        self.kernel: KernelSource | None = None
        # Before anything listens: the descriptor limit fitted to the clients.
        server_config, self.descriptors = front.server_config(args.max_clients)
        self.server = ProcstreamServer(
            self.hub,
            server_config,
            health=self._health,
            authorize=self.guard,
        )
        # /metrics: the core hands each good poll to the collector; scrapes read it.
        self.metrics = MetricsCollector(
            hub_stats=self.hub.stats,
            server_stats=self.server.stats,
            poll_status=self.poller.status,
            kernel=lambda: self.kernel.stats if self.kernel is not None else None,
            eventlog_stats=self.eventlog.stats if self.eventlog is not None else None,
            refusals=self.guard.stats.as_dict,
            source=lambda: "netlink" if self.kernel is not None else "poll",
            nats=self.nats.metrics if self.nats is not None else None,
            lifecycle=lambda: self.lifecycle.view,
            oom_stats=self.oom.stats,
            budget=self.budget,
            memory_guard=lambda: self.memory,
            sockets=self.server.sockets.stats,
            max_clients=server_config.max_clients,
            families=Families(threads=args.threads, smaps=args.gather_smaps, wchan=args.threads_wchan),
        )
        self.core.watch(self.metrics.on_poll)
        self.server.add_route("/metrics", metrics_route(make_registry(self.metrics)))
        self.server.add_route(
            "/api/proc",
            detail_route(lambda pid, st: self.core.call(process_detail, self.fs, self.grouper, self.builder, pid, st)),
        )
        self.memory = MemoryGuard(self.budget.total, self.hub.shed, held=self._memory_held,
                                  ended=lambda: self.server.sockets.stats.closed)
        self._stop = asyncio.Event()

    def _health(self) -> tuple[bool, dict[str, Any]]:
        """Polling decides the status; NATS is reported beside it (publishing waits in
        the buffer while NATS is away, the host itself is fine)."""
        ok, details = self.poller.health()
        if self.nats is not None:
            details = {**details, "nats": self.nats.health()}
        return ok, details

    def stop(self) -> None:
        """Ask the service to shut down (safe from a signal handler)."""
        self._stop.set()

    async def reload(self) -> None:
        """Reopen the event log, re-read the TLS files and ``--config``; keep the old
        certificate or rules when a new file is bad.

        Processes already grouped keep their group; the new rules name processes seen
        from now on (and, with --recheck, those that matched nothing so far).
        """
        if self.eventlog is not None:
            self.eventlog.reopen()
        if self.tls is not None:
            try:
                await asyncio.to_thread(self.tls.reload)
            except SecurityError as exc:
                log.error("SIGHUP: %s; keeping the previous certificate", exc)
            else:
                log.info("SIGHUP: reloaded the TLS certificate %s", self.tls.cert)
        if not self.args.config:
            log.info("SIGHUP: no --config to reload")
            return
        try:
            namer = await asyncio.to_thread(load_namer, self.args.config)
        except UsageError as exc:
            log.error("SIGHUP: %s; keeping the previous config", exc)
            return

        await self.core.call(self.grouper.set_namer, namer)
        await self.core.expect(namer.expected, namer.lifecycle)
        log.info(
            "SIGHUP: reloaded %s (%d rules, %d expected groups)",
            self.args.config, len(namer.rules), len(namer.expected),
        )

    async def run(self, *, ready: Callable[[ProcstreamServer], Any] | None = None) -> int:
        loop = asyncio.get_running_loop()
        handlers: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
            handlers.append(sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        handlers.append(signal.SIGHUP)
        poll_task: asyncio.Task[None] | None = None
        guard_task: asyncio.Task[None] | None = None
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, SWITCH_INTERVAL))
        if self.descriptors.message:
            (log.warning if self.descriptors.lowered else log.info)("%s", self.descriptors.message)
        try:
            if self.nats is not None:
                try:
                    await self.nats.start()
                except NatsStartError as exc:
                    raise UsageError(str(exc)) from None
            guard_task = asyncio.create_task(watch_memory(self.memory), name="procstream-memory")
            if not await self.poller.poll_now():
                log.warning("first poll failed; serving anyway and retrying every %.3gs", self.args.interval)
            await self._start_kernel_source()
            await self.server.start()
            # What exists now lives as long as the service: modules, the config, the
            # first poll's state. Frozen, it is left out of every later collection of
            # the oldest generation, whose pause (the loop's too: it holds the GIL)
            # then grows with what came since, such as connections, not with all of it.
            gc.collect()
            gc.freeze()
            log.info(
                "procstream serving %s://%s:%d/ (interval %.3gs, %d groups, %s)",
                "https" if self.tls is not None else "http",
                self.server.config.host,
                self.server.port,
                self.args.interval,
                len(self.grouper.groups()),
                "token required" if self.guard.config.token else "no token",
            )
            if self.exposure_warning:
                log.warning("%s", self.exposure_warning)
            log.info("OOM kills: %s", self.oom.reason)
            if ready is not None:
                ready(self.server)
            poll_task = asyncio.create_task(self.poller.run(), name="procstream-poller")
            stop_task = asyncio.create_task(self._stop.wait())
            await asyncio.wait({poll_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            if poll_task.done():
                poll_task.result()  # the poller never ends on its own: surface why
            return 0
        finally:
            sys.setswitchinterval(switch_interval)
            gc.unfreeze()
            if guard_task is not None:
                guard_task.cancel()
                await asyncio.gather(guard_task, return_exceptions=True)
            await self._shutdown(poll_task)
            for sig in handlers:
                loop.remove_signal_handler(sig)

    def _memory_held(self) -> int:
        hs = self.hub.stats
        queued = self.eventlog.stats.queued_bytes if self.eventlog is not None else 0
        return hs.buffer_bytes + hs.output_bytes + hs.cache_bytes + queued

    async def _start_kernel_source(self) -> None:
        """Kernel process events next to the poller, when permitted (``--source``)."""
        if self.use_kernel:
            kernel = KernelSource(
                self.fs,
                self.grouper,
                self.builder,
                self.core,
                interval=self.args.interval,
                request_poll=self.poller.request_poll,
            )
            try:
                kernel.open()
            except ConnectorError as exc:
                if self.args.source == "netlink":
                    raise UsageError(f"--source netlink: {exc}") from exc
                self.source_reason = str(exc)
            else:
                kernel.start()
                self.kernel = kernel
                log.info(
                    "event source: kernel process events (netlink%s) + a poll every %.3gs",
                    ", TASKSTATS" if kernel.stats.taskstats else "",
                    self.args.interval,
                )
                return
        log.info("event source: poll every %.3gs only (%s)", self.args.interval, self.source_reason)

    async def _shutdown(self, poll_task: asyncio.Task[None] | None) -> None:
        async def close_all() -> None:
            await self.server.close(1001, "server shutting down")
            if self.kernel is not None:
                await self.kernel.close()
            if poll_task is not None:
                poll_task.cancel()
                await asyncio.gather(poll_task, return_exceptions=True)
            self.core.close()
            if self.nats is not None:
                await self.nats.close()
            self.oom.close()
            if self.eventlog is not None:
                await asyncio.to_thread(self.eventlog.close, 2.0)

        try:
            await asyncio.wait_for(close_all(), SHUTDOWN_DEADLINE - 0.5)
        except TimeoutError:
            log.warning("shutdown took too long; exiting anyway")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``procstream serve``."""
    setup_logging(args)
    if args.interval <= 0:
        raise UsageError("--interval must be > 0")
    factory = event_loop_factory(args.loop)

    async def main() -> int:
        service = Service(args)
        return await service.run()

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())
