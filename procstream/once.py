"""``procstream once``: one JSON snapshot of the host's groups and processes, then exit."""

from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import IO, Any

import orjson

from .events import EventBuilder, group_fields
from .grouper import Grouper
from .procfs import FS
from .wiring import build_core

__all__ = ["snapshot", "print_snapshot", "run"]


def snapshot(fs: FS, grouper: Grouper, builder: EventBuilder, *, delay: float = 0.0) -> dict[str, Any]:
    """Poll once (twice, ``delay`` seconds apart, when ``delay`` > 0, so rates are real).

    Returns ``{"host", "ts", "groups": {name: group fields}, "procs": [proc fields]}``.
    """
    update = grouper.update(fs.all_procs())
    first = grouper.groups()
    prev_time = update.time
    if delay > 0:
        time.sleep(delay)
        update = grouper.update(fs.all_procs())
    groups = grouper.groups()
    dt = update.time - prev_time
    return {
        "host": socket.gethostname(),
        "ts": round(update.time, 6),
        "groups": {
            name: group_fields(name, g, first.get(name) if delay > 0 else None, dt)
            for name, g in sorted(groups.items())
        },
        "procs": builder.procs(grouper.tracker.tracked.values()),
    }


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
