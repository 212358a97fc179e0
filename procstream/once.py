"""``procstream once``: one JSON snapshot of the host's groups and processes, then exit.

A group's counters (``cpu_s``, ``read_bytes``, ``major_faults``, …) are what its
processes used since each of them started, as the kernel counts it — what a one-shot
look at a host is for. ``serve`` counts differently on purpose: its counters start when
it first sees a process (as process-exporter's do), so a restart of the service does not
replay hours of usage into a rate. With ``delay``, the rates (``cpu_pct``, ``read_bps``,
``write_bps``) are measured between two polls; without it they are 0. Each process has
its numbers too (``cpu_pct``, ``mem_resident``, ``state``…, as in ``serve``'s snapshots),
its rates likewise measured over ``delay``.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

import orjson

from .events import EventBuilder, group_fields
from .grouper import GroupCounts, Grouper
from .live import LiveTable
from .procfs import FS
from .tracker import ZERO_COUNTS, Counts, TrackedProc
from .wiring import build_core

__all__ = ["snapshot", "print_snapshot", "run"]


def snapshot(fs: FS, grouper: Grouper, builder: EventBuilder, *, delay: float = 0.0) -> dict[str, Any]:
    """Poll once (twice, ``delay`` seconds apart, when ``delay`` > 0, so rates are real).

    Returns ``{"host", "ts", "groups": {name: group fields}, "procs": [proc fields]}``;
    group counters are totals since each process started (see the module notes).
    """
    update = grouper.update(fs.all_procs())
    before = _usage_before_first_seen(grouper, update.started, {})
    first = grouper.groups()
    prev_time = update.time
    live = LiveTable.of(update.time, grouper.tracker.tracked.values())
    if delay > 0:
        time.sleep(delay)
        update = grouper.update(fs.all_procs())
        _usage_before_first_seen(grouper, update.started, before)
        live = LiveTable.of(update.time, grouper.tracker.tracked.values(), live)
    groups = grouper.groups()
    dt = update.time - prev_time
    fields: dict[str, Any] = {}
    for name, g in sorted(groups.items()):
        extra = before.get(name, ZERO_COUNTS)
        prev = first.get(name) if delay > 0 else None
        # The same amount added on both sides keeps the rates those of the two polls.
        fields[name] = group_fields(
            name, _plus(g, extra), None if prev is None else _plus(prev, extra), dt, builder.expected.get(name)
        )
    return {
        "host": socket.gethostname(),
        "ts": round(update.time, 6),
        "groups": fields,
        "procs": [{**p, **(live.fields(p["pid"]) or {})} for p in builder.procs(grouper.tracker.tracked.values())],
    }


def _plus(g: GroupCounts, extra: Counts) -> GroupCounts:
    return g if extra == ZERO_COUNTS else dataclasses.replace(g, counts=g.counts + extra)


def _usage_before_first_seen(
    grouper: Grouper, started: Iterable[TrackedProc], into: dict[str, Counts]
) -> dict[str, Counts]:
    """Add to ``into`` (per group) what newly tracked processes used before the grouper
    saw them: the grouper leaves that out of its counters, and ``once`` wants it in."""
    for tp in started:
        if grouper.tracker.started_after_first_poll(tp.id):
            continue  # the grouper already counts all of its usage
        usage = Counts.of(tp.metrics)
        if usage != ZERO_COUNTS:
            into[tp.group] = into.get(tp.group, ZERO_COUNTS) + usage
    return into


def print_snapshot(
    fs: FS,
    grouper: Grouper,
    builder: EventBuilder,
    *,
    delay: float = 0.0,
    pretty: bool = False,
    out: IO[bytes] | None = None,
) -> int:
    """Print the snapshot as one JSON document on stdout."""
    doc = snapshot(fs, grouper, builder, delay=delay)
    stream = out if out is not None else sys.stdout.buffer
    stream.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 if pretty else 0) + b"\n")
    stream.flush()
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``procstream once``: the same /proc reader, grouper and event
    builder as ``serve`` (:func:`~procstream.wiring.build_core`), polled once or twice."""
    fs, grouper, builder = build_core(args)
    return print_snapshot(fs, grouper, builder, delay=args.delay, pretty=args.pretty)
