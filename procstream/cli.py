"""Command line: argument parsing, then the command's own entry point (``procstream`` and
``python -m procstream``).

Exit codes: 0 success; 2 bad usage or configuration (a bad config file, an unreadable
--procfs, a kernel event source that is not permitted), with one line on stderr saying
what and where.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .fleet.options import add_fleet_arguments, add_publish_arguments
from .schema import EVENT_TYPES
from .stream.eventlog import DEFAULT_TYPES
from .tail import add_arguments as add_tail_arguments
from .tail import run as run_tail
from .wiring import UsageError

__all__ = ["build_parser", "main"]


def _add_core_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="process-exporter YAML config (default: every process with a command line, grouped by comm)")
    p.add_argument("--procfs", metavar="DIR", default="/proc", help="where /proc is mounted (default: /proc)")
    p.add_argument(
        "--children",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a new process matching no rule joins its nearest tracked ancestor's group (default: on)",
    )
    p.add_argument("--recheck", action="store_true", help="re-match processes that matched nothing at every poll (exec/rename)")
    p.add_argument("--remove-empty-groups", action="store_true", help="forget groups whose last process exited")
    p.add_argument(
        "--redact",
        action="append",
        default=[],
        metavar="REGEX",
        help="also hide what REGEX matches in command lines (group 1 only if it has one); repeatable",
    )
    p.add_argument("--no-cmdline", action="store_true", help="send no command lines at all")


def _add_listen_options(p: argparse.ArgumentParser) -> None:
    """Where a serving command listens and what it holds for clients."""
    p.add_argument("--listen", default="127.0.0.1:8765", metavar="HOST:PORT", help="address to listen on (default: 127.0.0.1:8765)")
    p.add_argument("--max-clients", type=int, default=1024, metavar="N", help="refuse WebSocket clients past N (default: 1024)")
    p.add_argument("--buffer", type=int, default=100_000, metavar="N", help="events kept for resume (default: 100000)")
    p.add_argument(
        "--max-memory",
        default="256M",
        metavar="SIZE",
        help="memory the service may use whatever clients and local users do (256M, 1G, ...; "
        "at least 64M); split into the resume buffer, clients' pending output, caches (and "
        "serve's event log queue), each part in /metrics (default: 256M)",
    )
    p.add_argument(
        "--slow-client-grace",
        type=float,
        default=30.0,
        metavar="S",
        help="close a WebSocket client with 1013 when it has not taken what is waiting for it "
        "for S seconds, or is still behind S seconds after it overflowed (default: 30)",
    )
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto", help="event loop (default: uvloop when installed)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")


def _add_security_options(p: argparse.ArgumentParser) -> None:
    """Who may talk to a serving command: token, origins, exposure, TLS."""
    sec = p.add_argument_group("security")
    sec.add_argument(
        "--token",
        metavar="TOKEN",
        help="every route but /healthz needs it (Authorization: Bearer TOKEN or ?token=TOKEN); "
        "default: $PROCSTREAM_TOKEN. Prefer the variable: other users can read a command line",
    )
    sec.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept browser pages from ORIGIN (scheme://host[:port]); repeatable. "
        "The server's own origin is always accepted",
    )
    sec.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback address without a token",
    )
    sec.add_argument("--tls-cert", metavar="FILE", help="serve https/wss with this PEM certificate (chain)")
    sec.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert (default: in the --tls-cert file)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="procstream",
        description="Watch a Linux host's processes through /proc, group them, stream what happens.",
    )
    parser.add_argument("--version", action="version", version=f"procstream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser("serve", help="run the service: WebSocket stream, viewer, health and metrics")
    _add_core_options(serve)
    serve.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between polls (default: 1)")
    serve.add_argument(
        "--group-expiry",
        type=float,
        default=300.0,
        metavar="S",
        help="with kernel events: a group whose processes all lived and died between two polls "
        "is dropped S seconds after its last one (default: 300)",
    )
    serve.add_argument(
        "--keep-empty-groups",
        action="store_true",
        help="keep every group that ever existed, even one of short-lived processes only (process-exporter's rule)",
    )
    _add_listen_options(serve)
    serve.add_argument(
        "--source",
        choices=("auto", "poll", "netlink"),
        default="auto",
        help="process events: the kernel's (netlink, needs root or CAP_NET_ADMIN on the host's /proc) "
        "next to the poller; auto uses them when permitted (default: auto)",
    )
    serve.add_argument(
        "--event-log", metavar="FILE",
        help="append starts, exits and group lifecycle events as NDJSON to FILE ('-' = stdout) for log shippers",
    )  # fmt: skip
    serve.add_argument(
        "--event-log-types",
        default=",".join(sorted(DEFAULT_TYPES, key=EVENT_TYPES.index)),
        metavar="TYPES",
        help="event types to log, comma list, proc.* allowed (default: proc.start,proc.exit and the group "
        "lifecycle events group.missing,group.recovered,group.crashloop,group.stable)",
    )
    serve.add_argument("--event-log-max-bytes", type=int, default=0, metavar="N", help="rotate the event log past N bytes (default: 0 = never)")
    serve.add_argument("--event-log-backups", type=int, default=5, metavar="N", help="rotated files to keep (default: 5)")
    serve.add_argument(
        "--host-name",
        metavar="NAME",
        help="the host field of every event and snapshot, and the host's NATS subjects "
        "(default: the machine's host name); for several agents on one machine, containers",
    )
    add_publish_arguments(serve.add_argument_group(
        "NATS JetStream",
        "Publish every event to procstream.<host>.<type> in a JetStream stream (created "
        "when missing), in order, resent after outages, stored once (message id "
        "<host>:<epoch>:<seq>). See docs/protocol.md and docs/deploy.md.",
    ))
    fam = serve.add_argument_group(
        "process-exporter's optional families",
        "off by default: each adds /proc reads to every poll, for tracked processes only",
    )
    fam.add_argument(
        "--threads",
        action="store_true",
        help="export per-thread-name metrics (namedprocess_namegroup_thread_*), like "
        "process-exporter's -threads: reads task/*/io of every multi-threaded process",
    )
    fam.add_argument(
        "--gather-smaps",
        action="store_true",
        help="export proportional memory (memory_bytes memtypes proportionalResident, "
        "proportionalSwapped), like process-exporter's -gather-smaps: reads smaps_rollup",
    )
    fam.add_argument(
        "--threads-wchan",
        action="store_true",
        help="export threads by kernel wait channel (namedprocess_namegroup_threads_wchan): "
        "reads every thread's wchan",
    )
    _add_security_options(serve)

    fleet = sub.add_parser(
        "fleet",
        help="serve the stream, viewer and routes of serve for every host publishing to NATS JetStream",
        description="Read the JetStream stream every serve --nats publishes to and serve it as one "
        "stream: the same WebSocket protocol, HTTP routes and viewer as serve, for all hosts "
        "(events carry their host; clients may filter by hosts). Seqs are the stream's "
        "sequence numbers, so a client resumes with any aggregator of the same stream. "
        "See docs/protocol.md and docs/deploy.md.",
    )
    _add_listen_options(fleet)
    fleet.add_argument(
        "--host-name",
        metavar="NAME",
        help="the host field of hello and snapshots: this aggregator's name (default: the machine's host name)",
    )
    add_fleet_arguments(fleet.add_argument_group("NATS JetStream"))
    _add_security_options(fleet)

    tail = sub.add_parser(
        "tail",
        help="subscribe to a server and print one event per line (NDJSON); reconnects and resumes by itself",
    )
    add_tail_arguments(tail)

    once = sub.add_parser(
        "once",
        help="print one JSON snapshot of groups and processes, then exit",
        description="Print one JSON snapshot of groups and processes, then exit. A group's "
        "counters (cpu_s, read_bytes, write_bytes, page faults, context switches) are what its "
        "processes used since each of them started; the rates (cpu_pct, read_bps, write_bps) "
        "are 0 unless --delay measures them. (serve's counters start when it first sees a "
        "process, like process-exporter's.)",
    )
    _add_core_options(once)
    once.add_argument(
        "--delay",
        type=float,
        default=0.0,
        metavar="S",
        help="poll twice, S seconds apart, so the rates are filled in (the counters are then as of the second poll)",
    )
    once.add_argument("--pretty", action="store_true", help="indent the JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from .serve.service import run as run_serve

            return run_serve(args)
        if args.command == "fleet":
            from .fleet.service import run as run_fleet

            return run_fleet(args)
        if args.command == "tail":
            return run_tail(args)
        if args.command == "once":
            from .once import run as run_once

            return run_once(args)
    except UsageError as exc:
        print(f"procstream: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command!r}")
