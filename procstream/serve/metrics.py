"""``GET /metrics``: process-exporter's families from the latest poll, plus self-metrics.

Rules:
- A scrape never reads /proc for the host's processes. The core hands every good poll's
  groups to :meth:`MetricsCollector.on_poll` (on its thread), which swaps in one
  immutable :class:`PollView`; a scrape reads whatever view is current. No lock: replacing
  a reference is atomic, and nothing in a view is mutated after it is published.
- The ``namedprocess_*`` families, their label names and HELP texts are
  process-exporter's (``collector/process_collector.go``), so existing dashboards and
  alerts keep working. Its optional families cost /proc reads at every poll, so they are
  exported only when the service reads what they need (``serve --threads``,
  ``--gather-smaps``, ``--threads-wchan``; see :class:`Families`): the six
  ``namedprocess_namegroup_thread_*`` families, ``memory_bytes`` of memtypes
  ``proportionalResident``/``proportionalSwapped``, and ``threads_wchan``.
- ``oldest_start_time_seconds`` is whole seconds, as process-exporter's: the start time
  truncated, the same instant as the group's ``oldest_start_time`` in events (truncated
  to the millisecond there). Start times come from a boot time to the microsecond, where
  process-exporter's comes from ``btime``, whole seconds: ours can be 1 s later (and
  closer to the truth). For a group that is empty it is 0 (process-exporter reports Go's
  zero time, -62135596800).
- A group the grouper dropped (``--remove-empty-groups``, or a group of short-lived
  processes past ``--group-expiry``) is no longer in the view, so no longer exported.
- The three ``namedprocess_scrape_*`` counters have no ``_total`` suffix in
  process-exporter. prometheus_client always appends ``_total`` to a counter family, so
  the collector yields them untyped under their exact names and :func:`render` turns their
  ``TYPE`` lines back into ``counter`` — the exposition itself is prometheus_client's.
- Self-metrics are ``procstream_*``: subscribers, events by type, overflows, resets,
  slow-consumer closes, poll duration histogram and poll counts, kernel event counts,
  event log counters, authorization refusals, NATS publishing (with ``--nats``), build
  info; the ``--max-memory`` budget and what each of its parts holds, sockets and the
  client limit in force.
- Lifecycle families are ``procstream_group_*``, labelled ``groupname`` like
  process-exporter's, for every group the latest poll reported: counters (restarts, exits
  by ``class``, OOM kills; every class from 0, so ``increase()`` sees the first one) and
  the crash-loop gauge; for expected groups also their ``expected_min``/``expected_max``
  and the ``missing`` gauge. They are the lifecycle's view as of that poll.
- Only the classic text format (0.0.4) is served, as process-exporter does.

Usage::

    collector = MetricsCollector(hub_stats=hub.stats, poll_status=poller.status, server_stats=srv.stats)
    core.watch(collector.on_poll)
    server.add_route("/metrics", metrics_route(make_registry(collector)))
"""

from __future__ import annotations

import asyncio
import bisect
import math
import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from websockets.http11 import Request, Response

from .. import __version__
from ..stream.eventlog import EventLogStats
from ..grouper import GroupCounts, GrouperUpdate
from ..stream.hub import HubStats
from ..collect.kernel import KernelStats
from ..collect.oom import OomStats
from ..collect.poll import PollStatus
from ..lifecycle import UNKNOWN_CLASS, GroupLife
from ..schema import EXIT_CLASSES
from .connections import SocketStats
from .resources import MemoryBudget, MemoryGuard
from .server import RouteHandler, ServerStats, http_response

__all__ = [
    "CONTENT_TYPE",
    "Families",
    "POLL_DURATION_BUCKETS",
    "PollView",
    "MetricsCollector",
    "make_registry",
    "render",
    "metrics_route",
]

#: process-exporter serves the classic text format; so do we.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: Upper bounds (seconds) of the poll duration histogram's buckets.
POLL_DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

_NG: Final = "namedprocess_namegroup_"
_GROUP: Final = ["groupname"]

#: Counters process-exporter names without ``_total`` (see the module notes).
_COUNTERS_WITHOUT_TOTAL: Final = (
    "namedprocess_scrape_errors",
    "namedprocess_scrape_procread_errors",
    "namedprocess_scrape_partial_errors",
)


@dataclass(frozen=True, slots=True)
class Families:
    """process-exporter's optional families to export, as its flags name them; export
    one only when the poll reads what it needs (``FS(threads=, smaps=, wchan=)``)."""

    #: ``-threads``: the ``namedprocess_namegroup_thread_*`` families, by thread name
    threads: bool = False
    #: ``-gather-smaps``: ``memory_bytes{memtype="proportionalResident"|"proportionalSwapped"}``
    smaps: bool = False
    #: ``namedprocess_namegroup_threads_wchan``: threads by kernel wait channel
    wchan: bool = False


@dataclass(frozen=True, slots=True)
class PollView:
    """What the latest good poll left for scrapes. Immutable: replaced, never changed."""

    time: float
    groups: Mapping[str, GroupCounts]
    #: totals since start: processes unreadable or unparsable / partly unreadable /
    #: not permitted (process-exporter's procread and partial errors, and ours)
    read_errors: int
    partial_errors: int
    permission_errors: int
    tracked: int
    #: groups dropped since start (empty under --remove-empty-groups, or expired)
    groups_removed: int
    #: poll duration histogram: count per bucket (not cumulative; last = +Inf), sum
    buckets: tuple[int, ...]
    duration_sum: float

    @property
    def duration_count(self) -> int:
        return sum(self.buckets)


_EMPTY_VIEW: Final = PollView(
    time=0.0,
    groups={},
    read_errors=0,
    partial_errors=0,
    permission_errors=0,
    tracked=0,
    groups_removed=0,
    buckets=(0,) * (len(POLL_DURATION_BUCKETS) + 1),
    duration_sum=0.0,
)


class MetricsCollector(Collector):
    """A prometheus_client collector over the latest poll and the service's counters.

    :meth:`on_poll` sees every good poll (register it with ``Core.watch``). ``collect()`` (a scrape) may run on any thread: it reads the
    current :class:`PollView` and copies the live counters it reports.

    The sources are optional so the collector works in any composition; ``kernel`` is a
    callable because the kernel source is started after the server.
    """

    def __init__(
        self,
        *,
        hub_stats: HubStats | None = None,
        server_stats: ServerStats | None = None,
        poll_status: PollStatus | None = None,
        kernel: Callable[[], KernelStats | None] | None = None,
        eventlog_stats: EventLogStats | None = None,
        refusals: Callable[[], Mapping[str, int]] | None = None,
        source: Callable[[], str] | None = None,
        nats: Callable[[], Mapping[str, Any]] | None = None,
        lifecycle: Callable[[], Mapping[str, GroupLife]] | None = None,
        oom_stats: OomStats | None = None,
        budget: MemoryBudget | None = None,
        memory_guard: Callable[[], MemoryGuard | None] | None = None,
        sockets: SocketStats | None = None,
        max_clients: int | None = None,
        families: Families = Families(),
    ) -> None:
        self.families = families
        self.hub_stats = hub_stats
        self.server_stats = server_stats
        self.poll_status = poll_status
        self.kernel = kernel
        self.eventlog_stats = eventlog_stats
        self.refusals = refusals
        self.source = source
        self.nats = nats
        self.lifecycle = lifecycle
        self.oom_stats = oom_stats
        self.budget = budget
        self.memory_guard = memory_guard
        self.sockets = sockets
        self.max_clients = max_clients
        self._view: PollView = _EMPTY_VIEW

    # -- poll thread -------------------------------------------------------------------

    def on_poll(self, update: GrouperUpdate, groups: dict[str, GroupCounts], duration: float) -> None:
        """Publish one good poll (the core's thread only: it is the only writer)."""
        prev = self._view
        buckets = list(prev.buckets)
        buckets[bisect.bisect_left(POLL_DURATION_BUCKETS, duration)] += 1
        errs = update.errors
        # One reference swap: a scrape sees the previous view or this one, never a mix.
        self._view = PollView(
            time=update.time,
            groups=groups,
            read_errors=prev.read_errors + errs.read,
            partial_errors=prev.partial_errors + errs.partial,
            permission_errors=prev.permission_errors + errs.permission,
            tracked=update.tracked,
            groups_removed=prev.groups_removed + len(update.removed_groups),
            buckets=tuple(buckets),
            duration_sum=prev.duration_sum + duration,
        )

    @property
    def view(self) -> PollView:
        """The latest poll's view (for tests and other readers)."""
        return self._view

    # -- scrape ------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        view = self._view
        yield from self._namegroup(view)
        yield from self._optional(view)
        yield from self._scrape_errors(view)
        if self.lifecycle is not None:
            yield from self._lifecycle(view, self.lifecycle())
        yield from self._self_metrics(view)

    def _namegroup(self, view: PollView) -> Iterator[Metric]:
        num_procs = GaugeMetricFamily(_NG + "num_procs", "number of processes in this group", labels=_GROUP)
        cpu = CounterMetricFamily(_NG + "cpu_seconds", "Cpu user usage in seconds", labels=["groupname", "mode"])
        read = CounterMetricFamily(_NG + "read_bytes", "number of bytes read by this group", labels=_GROUP)
        write = CounterMetricFamily(_NG + "write_bytes", "number of bytes written by this group", labels=_GROUP)
        major = CounterMetricFamily(_NG + "major_page_faults", "Major page faults", labels=_GROUP)
        minor = CounterMetricFamily(_NG + "minor_page_faults", "Minor page faults", labels=_GROUP)
        ctx = CounterMetricFamily(_NG + "context_switches", "Context switches", labels=["groupname", "ctxswitchtype"])
        mem = GaugeMetricFamily(_NG + "memory_bytes", "number of bytes of memory in use", labels=["groupname", "memtype"])
        fds = GaugeMetricFamily(
            _NG + "open_filedesc", "number of open file descriptors for this group", labels=_GROUP
        )
        worst = GaugeMetricFamily(
            _NG + "worst_fd_ratio",
            "the worst (closest to 1) ratio between open fds and max fds among all procs in this group",
            labels=_GROUP,
        )
        oldest = GaugeMetricFamily(
            _NG + "oldest_start_time_seconds",
            "start time in seconds since 1970/01/01 of oldest process in group",
            labels=_GROUP,
        )
        threads = GaugeMetricFamily(_NG + "num_threads", "Number of threads", labels=_GROUP)
        states = GaugeMetricFamily(
            _NG + "states",
            "Number of processes in states Running, Sleeping, Waiting, Zombie, or Other",
            labels=["groupname", "state"],
        )
        smaps = self.families.smaps
        for name, g in view.groups.items():
            c = g.counts
            label = [name]
            num_procs.add_metric(label, g.procs)
            cpu.add_metric([name, "user"], c.cpu_user)
            cpu.add_metric([name, "system"], c.cpu_system)
            read.add_metric(label, c.read_bytes)
            write.add_metric(label, c.write_bytes)
            major.add_metric(label, c.major_faults)
            minor.add_metric(label, c.minor_faults)
            ctx.add_metric([name, "voluntary"], c.ctx_voluntary)
            ctx.add_metric([name, "nonvoluntary"], c.ctx_nonvoluntary)
            m = g.memory
            mem.add_metric([name, "resident"], m.resident_bytes)
            mem.add_metric([name, "virtual"], m.virtual_bytes)
            mem.add_metric([name, "swapped"], m.swapped_bytes)
            if smaps:
                mem.add_metric([name, "proportionalResident"], m.proportional_bytes)
                mem.add_metric([name, "proportionalSwapped"], m.proportional_swap_bytes)
            fds.add_metric(label, g.open_fds)
            worst.add_metric(label, g.worst_fd_ratio)
            # whole seconds, truncated like Go's Time.Unix() (events: to the millisecond)
            oldest.add_metric(label, math.floor(g.oldest_start_time))
            threads.add_metric(label, g.num_threads)
            s = g.states
            states.add_metric([name, "Running"], s.running)
            states.add_metric([name, "Sleeping"], s.sleeping)
            states.add_metric([name, "Waiting"], s.waiting)
            states.add_metric([name, "Zombie"], s.zombie)
            states.add_metric([name, "Other"], s.other)
        return iter((num_procs, cpu, read, write, major, minor, ctx, mem, fds, worst, oldest, threads, states))

    def _lifecycle(self, view: PollView, lives: Mapping[str, GroupLife]) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "procstream_group_restarts",
            "Processes that started in place of one of the same group and executable that had exited "
            "shortly before (proc.start with restart_of)",
            labels=_GROUP,
        )
        exits = CounterMetricFamily(
            "procstream_group_exits",
            "Processes that exited, by class: ok (code 0), error (code not 0), signal, oom_kill, "
            "unknown (the poll can't tell)",
            labels=["groupname", "class"],
        )
        ooms = CounterMetricFamily(
            "procstream_group_oom_kills", "Processes the kernel's OOM killer killed", labels=_GROUP
        )
        loop = GaugeMetricFamily(
            "procstream_group_crashloop", "1 while the group is in a crash loop (group.crashloop until group.stable)",
            labels=_GROUP,
        )
        low = GaugeMetricFamily(
            "procstream_group_expected_min", "Expected groups: the fewest processes the group should have",
            labels=_GROUP,
        )
        high = GaugeMetricFamily(
            "procstream_group_expected_max", "Expected groups with a max: the most processes the group should have",
            labels=_GROUP,
        )
        missing = GaugeMetricFamily(
            "procstream_group_missing", "Expected groups: 1 while the group has fewer processes than its minimum",
            labels=_GROUP,
        )
        classes = (*EXIT_CLASSES, UNKNOWN_CLASS)
        for name in view.groups:
            life = lives.get(name)
            label = [name]
            if life is None:
                restarts.add_metric(label, 0)
                for cls in classes:
                    exits.add_metric([name, cls], 0)
                ooms.add_metric(label, 0)
                loop.add_metric(label, 0)
                continue
            restarts.add_metric(label, life.restarts)
            by_class = life.exits
            for cls in classes:
                exits.add_metric([name, cls], by_class.get(cls, 0))
            ooms.add_metric(label, life.oom_kills)
            loop.add_metric(label, 1 if life.crashloop else 0)
            e = life.expected
            if e is not None:
                low.add_metric(label, e.min)
                if e.max is not None:
                    high.add_metric(label, e.max)
                missing.add_metric(label, 1 if life.missing else 0)
        return iter((restarts, exits, ooms, loop, low, high, missing))

    def _optional(self, view: PollView) -> Iterator[Metric]:
        """process-exporter's optional families, those :attr:`families` asks for (the
        proportional memtypes are samples of ``memory_bytes``, in :meth:`_namegroup`)."""
        fam = self.families
        if fam.threads:
            count = GaugeMetricFamily(
                _NG + "thread_count",
                "Number of threads in this group with same threadname",
                labels=["groupname", "threadname"],
            )
            cpu = CounterMetricFamily(
                _NG + "thread_cpu_seconds",
                "Cpu user/system usage in seconds",
                labels=["groupname", "threadname", "mode"],
            )
            io = CounterMetricFamily(
                _NG + "thread_io_bytes",
                "number of bytes read/written by these threads",
                labels=["groupname", "threadname", "iomode"],
            )
            major = CounterMetricFamily(
                _NG + "thread_major_page_faults",
                "Major page faults for these threads",
                labels=["groupname", "threadname"],
            )
            minor = CounterMetricFamily(
                _NG + "thread_minor_page_faults",
                "Minor page faults for these threads",
                labels=["groupname", "threadname"],
            )
            ctx = CounterMetricFamily(
                _NG + "thread_context_switches",
                "Context switches for these threads",
                labels=["groupname", "threadname", "ctxswitchtype"],
            )
            for name, g in view.groups.items():
                for t in g.threads:
                    c = t.counts
                    count.add_metric([name, t.name], t.threads)
                    cpu.add_metric([name, t.name, "user"], c.cpu_user)
                    cpu.add_metric([name, t.name, "system"], c.cpu_system)
                    io.add_metric([name, t.name, "read"], c.read_bytes)
                    io.add_metric([name, t.name, "write"], c.write_bytes)
                    major.add_metric([name, t.name], c.major_faults)
                    minor.add_metric([name, t.name], c.minor_faults)
                    ctx.add_metric([name, t.name, "voluntary"], c.ctx_voluntary)
                    ctx.add_metric([name, t.name, "nonvoluntary"], c.ctx_nonvoluntary)
            yield from (count, cpu, io, major, minor, ctx)
        if fam.wchan:
            wchan = GaugeMetricFamily(
                _NG + "threads_wchan",
                "Number of threads in this group waiting on each wchan",
                labels=["groupname", "wchan"],
            )
            for name, g in view.groups.items():
                for channel, n in g.wchans:
                    wchan.add_metric([name, channel], n)
            yield wchan

    def _scrape_errors(self, view: PollView) -> Iterator[Metric]:
        failures = self.poll_status.failures if self.poll_status is not None else 0
        helps = (
            "general scrape errors: no proc metrics collected during a cycle",
            "incremented each time a proc's metrics collection fails",
            "incremented each time a tracked proc's metrics collection fails partially, e.g. unreadable I/O stats",
        )
        for name, help_text, value in zip(
            _COUNTERS_WITHOUT_TOTAL, helps, (failures, view.read_errors, view.partial_errors)
        ):
            fam = Metric(name, help_text, "unknown")  # typed "counter" by render()
            fam.add_sample(name, {}, float(value))
            yield fam

    def _self_metrics(self, view: PollView) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "procstream_build_info",
            "procstream's version and Python's, always 1",
            labels=["version", "python_version", "implementation"],
        )
        info.add_metric([__version__, platform.python_version(), platform.python_implementation()], 1)
        yield info
        if self.source is not None:
            src = GaugeMetricFamily(
                "procstream_event_source", "Where process events come from (1 for the one in use)", labels=["source"]
            )
            src.add_metric([self.source()], 1)
            yield src

        # -- polling
        yield _counter("procstream_poll_read_errors", "Processes whose /proc files could not be read or parsed", view.read_errors)
        yield _counter("procstream_poll_partial_errors", "Tracked processes with some optional /proc file unreadable (io, fd)", view.partial_errors)
        yield _counter("procstream_poll_permission_errors", "Processes not permitted to be read at all", view.permission_errors)
        yield _gauge("procstream_groups", "Groups reported by the latest poll", len(view.groups))
        yield _counter(
            "procstream_groups_removed",
            "Groups no longer reported: empty under --remove-empty-groups, or only short-lived processes past --group-expiry",
            view.groups_removed,
        )
        yield _gauge("procstream_tracked_procs", "Processes tracked after the latest poll", view.tracked)
        yield _gauge("procstream_last_poll_timestamp_seconds", "Time of the latest good poll (0 before the first)", view.time)
        hist = HistogramMetricFamily(
            "procstream_poll_duration_seconds", "Time one poll took: scan /proc, update groups, build events"
        )
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*POLL_DURATION_BUCKETS, math.inf), view.buckets):
            cumulative += count
            buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
        hist.add_metric([], buckets, view.duration_sum)
        yield hist
        st = self.poll_status
        if st is not None:
            yield _counter("procstream_polls", "Good polls", st.polls)
            yield _counter("procstream_poll_failures", "Polls that failed as a whole (e.g. /proc unreadable)", st.failures)
            yield _counter("procstream_polls_skipped", "Poll ticks skipped because a poll overran its interval", st.skipped)
            yield _gauge("procstream_poll_interval_seconds", "Configured seconds between polls", st.interval)

        # -- the stream
        hs = self.hub_stats
        if hs is not None:
            yield _gauge("procstream_subscribers", "WebSocket subscribers attached now", hs.subscribers)
            yield _gauge("procstream_subscribers_lagging", "Subscribers behind the live stream now", hs.lagging)
            yield _counter("procstream_subscribers_attached", "Subscribers attached since start", hs.subscribers_total)
            by_type = CounterMetricFamily("procstream_events_published", "Events published, by type", labels=["type"])
            for typ, n in sorted(dict(hs.events_by_type).items()):
                by_type.add_metric([typ], n)
            yield by_type
            yield _counter("procstream_frames_sent", "WebSocket frames sent", hs.frames_sent)
            yield _counter("procstream_sent_bytes", "Bytes of WebSocket frames sent", hs.bytes_sent)
            yield _counter("procstream_snapshots_sent", "Snapshots sent to subscribers", hs.snapshots_sent)
            yield _counter("procstream_resumes", "Subscriptions resumed from the buffer", hs.resumes)
            resets = CounterMetricFamily("procstream_resets", "Resets sent instead of a resume, by reason", labels=["reason"])
            for reason, n in sorted(dict(hs.resets).items()):
                resets.add_metric([reason], n)
            yield resets
            yield _counter("procstream_overflows", "Times a subscriber fell behind its queue bound", hs.overflows)
            yield _counter("procstream_overflow_dropped_events", "Events skipped for subscribers that overflowed", hs.events_dropped)
            yield _counter("procstream_slow_consumer_closes", "Subscribers closed with 1013 for staying behind", hs.slow_consumer_closes)
            yield _counter("procstream_stalled_closes", "Of those: their output did not move for --slow-client-grace seconds", hs.stalled_closes)
            yield _counter("procstream_outbox_closes", "Of those: control frames piled up for a client that does not read", hs.outbox_closes)
            yield _counter("procstream_budget_closes", "Of those: closed to keep clients' output within its part of --max-memory", hs.budget_closes)
            yield _gauge("procstream_buffer_events", "Events in the resume buffer", hs.buffer_events)
            yield _counter("procstream_publish_errors", "Events not published or not applied to the state because of an error", hs.publish_errors)
            yield _counter("procstream_events_shrunk", "Events cut down to the largest event size", hs.events_shrunk)
            yield _counter("procstream_encode_fallbacks", "Events with values JSON can't hold as they are (encoded as strings or clamped)", hs.encode_fallbacks)

        ss = self.server_stats
        if ss is not None:
            yield _gauge("procstream_connections", "Open WebSocket connections", ss.connections)
            yield _counter("procstream_http_requests", "HTTP requests, WebSocket handshakes included", ss.http_requests)
            refused = CounterMetricFamily("procstream_refused_requests", "Requests refused, by reason", labels=["reason"])
            reasons: dict[str, int] = {"max_clients": ss.refused_max_clients}
            if self.refusals is not None:
                reasons.update(self.refusals())
            else:
                reasons["authorize"] = ss.refused_authorize
            for reason, n in sorted(reasons.items()):
                refused.add_metric([reason], n)
            yield refused
            yield _counter("procstream_bad_frames", "Malformed or unknown inbound frames", ss.bad_frames)
            yield _counter("procstream_http_internal_errors", "Requests answered 500 because a handler failed", ss.internal_errors)
        so = self.sockets
        if so is not None:
            yield _gauge("procstream_sockets", "TCP connections open now (WebSocket, HTTP and handshakes)", so.open)
            yield _counter("procstream_idle_sockets_closed", "Sockets that sent no request, closed to make room", so.idle_closed)
            yield _counter("procstream_unreadable_requests", "Requests answered 400/405/414/431 because they could not be read", so.unreadable_requests)
        if self.max_clients is not None:
            yield _gauge("procstream_max_clients", "WebSocket clients accepted at most (--max-clients, or fewer when descriptors are short)", self.max_clients)
        yield from self._memory()

        # -- kernel events
        ks = self.kernel() if self.kernel is not None else None
        if ks is not None:
            yield _counter("procstream_kernel_events", "Process events received from the kernel", ks.events)
            yield _counter("procstream_kernel_events_lost", "Kernel process events lost (socket overruns)", ks.lost)
            yield _counter("procstream_kernel_backlog_dropped", "Kernel events dropped past the backlog bound", ks.dropped_backlog)
            yield _counter(
                "procstream_kernel_argv_unknown",
                "Processes reported without their command line: gone before it could be read",
                ks.argv_unknown,
            )

        # -- OOM kills
        oom = self.oom_stats
        if oom is not None:
            src = GaugeMetricFamily(
                "procstream_oom_source",
                "Where OOM kills are told apart from other SIGKILLs (1 for the one in use): kmsg, vmstat, none",
                labels=["source"],
            )
            src.add_metric([oom.source], 1)
            yield src

        # -- event log
        s = self.eventlog_stats
        if s is not None:
            yield _counter("procstream_event_log_written", "Events written to the event log", s.events_written)
            yield _counter("procstream_event_log_write_errors", "Failed event log writes", s.write_errors)
            yield _counter("procstream_event_log_dropped", "Events not logged: queue full or not encodable", s.dropped + s.encode_errors)
            yield _counter("procstream_event_log_rotations", "Event log rotations", s.rotations)

        # -- NATS JetStream publishing
        if self.nats is not None:
            yield from _nats_metrics(self.nats())


    def _memory(self) -> Iterator[Metric]:
        if self.budget is None:
            return
        budget = GaugeMetricFamily("procstream_memory_budget_bytes", "--max-memory (total) and its parts", labels=["part"])
        budget.add_metric(["total"], self.budget.total)
        for part, size in self.budget.parts().items():
            budget.add_metric([part], size)
        yield budget
        used = GaugeMetricFamily("procstream_memory_used_bytes", "What each part of --max-memory holds now; resident: the whole process", labels=["part"])
        hs = self.hub_stats
        if hs is not None:
            used.add_metric(["buffer"], hs.buffer_bytes)
            used.add_metric(["clients"], hs.output_bytes)
            used.add_metric(["caches"], hs.cache_bytes)
        if self.eventlog_stats is not None:
            used.add_metric(["event_log"], self.eventlog_stats.queued_bytes)
        guard = self.memory_guard() if self.memory_guard is not None else None
        if guard is not None:
            used.add_metric(["resident"], guard.last_rss)
        yield used
        if guard is not None:
            yield _counter("procstream_memory_sheds", "Times the process neared --max-memory and gave memory back", guard.sheds)


def _nats_metrics(n: Mapping[str, Any]) -> Iterator[Metric]:
    yield _gauge("procstream_nats_connected", "1 while connected to a NATS server", 1 if n["connected"] else 0)
    yield _counter("procstream_nats_published", "Events sent to JetStream (first attempts)", n["published"])
    yield _counter("procstream_nats_acknowledged", "Events JetStream confirmed it holds", n["acknowledged"])
    yield _gauge("procstream_nats_pending", "Events numbered but not yet acknowledged by JetStream", n["pending"])
    yield _gauge("procstream_nats_in_flight", "Messages sent and not yet acknowledged", n["in_flight"])
    yield _gauge("procstream_nats_acknowledged_seq", "Every event up to this seq is in JetStream", n["acked_seq"])
    yield _counter("procstream_nats_retried", "Events sent again after a failure", n["retried"])
    yield _counter("procstream_nats_duplicates", "Events JetStream already had when they were sent again", n["duplicates"])
    yield _counter("procstream_nats_recovered", "Unacknowledged events found in the stream after a failure", n["recovered"])
    yield _counter("procstream_nats_lost_events", "Events that left the buffer before JetStream took them (sent as host.lost)", n["lost"])
    yield _counter("procstream_nats_lost_records", "host.lost records published", n["lost_records"])
    yield _counter("procstream_nats_failures", "Times publishing stopped and resumed from the last acknowledged event", n["failures"])
    yield _counter("procstream_nats_reconnects", "Reconnections to NATS", n["reconnects"])
    yield _counter("procstream_nats_state_writes", "Host states written to the state bucket", n["state_writes"])
    yield _counter("procstream_nats_state_failures", "Host state writes that failed", n["state_failures"])


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def make_registry(collector: Collector, *, process: bool = True) -> CollectorRegistry:
    """A registry with ``collector`` and, with ``process``, prometheus_client's
    ``process_*`` (this process's own CPU, memory, fds: a few reads of /proc/self, never
    of other processes) and ``python_info`` collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the text format, with process-exporter's TYPE for the scrape counters."""
    body = generate_latest(registry)
    for name in _COUNTERS_WITHOUT_TOTAL:
        body = body.replace(b"# TYPE %s untyped\n" % name.encode(), b"# TYPE %s counter\n" % name.encode(), 1)
    return body


def metrics_route(registry: CollectorRegistry) -> RouteHandler:
    """The ``/metrics`` handler for :meth:`ProcstreamServer.add_route`.

    Rendering runs on a worker thread, so a scrape of many groups never stalls the event
    loop's fan-out for long; it only reads published views and copies counters.
    """

    async def handle(request: Request) -> Response:
        body = await asyncio.to_thread(render, registry)
        return http_response(200, body, CONTENT_TYPE)

    return handle
