"""``procstream tail URL``: subscribe to a procstream server and print events as NDJSON.

For log shippers: one event per line on stdout, flushed after every frame; control
objects are not printed. It reconnects by itself (backoff 0.5 s doubling to 10 s) and
resumes from the last seq it printed (``since`` + ``epoch``), so a plain reconnect loses
nothing. When the server can't resume (it restarted, or we were away longer than its
buffer) it says so on stderr — with what was lost when that is known — and carries on
with live events. Ctrl-C / SIGTERM end it quietly with exit code 0.

The CLI wiring calls :func:`add_arguments` on its ``tail`` subparser and :func:`run`
with the parsed arguments; ``python -m procstream.tail`` works on its own too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from .stream.protocol import ProtocolError, expand_types

__all__ = ["tail", "run", "add_arguments", "build_url", "TailState", "main"]

_PROG = "procstream tail"
# Refusals that retrying won't fix.
_FATAL_STATUS = {400: "bad request", 401: "unauthorized (check --token)",
                 403: "forbidden (token or Origin refused)", 404: "not found (check the URL)"}


class TailState:
    """What ``tail`` knows between frames: the resume point and the current epoch.

    Sans-I/O: :meth:`feed` takes the objects of one frame and returns the NDJSON text to
    print and the messages for stderr.
    """

    def __init__(self, since: int | None = None, epoch: str | None = None) -> None:
        #: last seq printed (or bookmarked) and the epoch it belongs to: the resume point
        self.since = since
        self.epoch = epoch
        #: epoch of the current connection (from its hello)
        self.conn_epoch: str | None = None
        #: False when the server refused our subscription (hello with filter null)
        self.subscribed = True
        self.fatal: str | None = None
        self.printed = 0

    def resume_params(self) -> dict[str, str]:
        """``since``/``epoch`` query parameters for the next connection, if any."""
        if self.since is None or self.epoch is None:
            return {}
        return {"since": str(self.since), "epoch": self.epoch}

    def feed(self, objs: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
        """Handle one frame; returns (NDJSON lines to print, messages for stderr)."""
        lines: list[bytes] = []
        messages: list[str] = []
        for obj in objs:
            t = obj.get("type")
            if t == "hello":
                self.conn_epoch = obj.get("epoch")
                self.subscribed = obj.get("filter") is not None
            elif t == "reset":
                messages.append(self._describe_reset(obj))
                self._advance(obj.get("seq"))
            elif t == "overflow":
                messages.append(
                    f"fell behind: {obj.get('dropped')} events (seq {obj.get('from_seq')}.."
                    f"{obj.get('to_seq')}) were dropped by the server"
                )
                self._advance(obj.get("to_seq"))
            elif t in ("snapshot", "bookmark"):
                self._advance(obj.get("seq"))
            elif t == "error":
                messages.append(f"server error: {obj.get('error')}")
                if not self.subscribed:
                    self.fatal = f"subscription refused: {obj.get('error')}"
            elif t == "subscribed":
                self.subscribed = True
            elif isinstance(obj.get("seq"), int):
                lines.append(orjson.dumps(obj))
                self._advance(obj["seq"])
                self.printed += 1
        text = b"".join(line + b"\n" for line in lines).decode() if lines else ""
        return text, messages

    def _advance(self, seq: Any) -> None:
        if isinstance(seq, int):
            self.since = seq
            self.epoch = self.conn_epoch

    def _describe_reset(self, obj: dict[str, Any]) -> str:
        reason = obj.get("reason")
        seq = obj.get("seq")
        since = obj.get("since", self.since)
        cont = f"continuing with live events after seq {seq}"
        if reason == "epoch":
            return (
                f"reset: the server restarted (epoch {self.epoch} -> {obj.get('epoch')}); "
                f"events of the old run after seq {since} that we had not received are "
                f"lost; {cont}"
            )
        if reason == "expired" and isinstance(since, int) and isinstance(seq, int):
            return (
                f"reset: our resume point is older than the server's buffer; events "
                f"{since + 1}..{seq} (up to {seq - since}) were not replayed; {cont}"
            )
        if reason == "future":
            return (
                f"reset: the server is behind our resume point (seq {since} > {seq}); {cont}"
            )
        if reason == "resync" and isinstance(since, int) and isinstance(seq, int):
            return (
                f"reset: the server re-read its state; events {since + 1}..{seq} may be "
                f"missing; {cont}"
            )
        return f"reset ({reason}): {cont}"


def build_url(
    url: str,
    *,
    types: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    resume: dict[str, str] | None = None,
) -> str:
    """The ``/ws`` URL to connect to: accepts ``ws://host:port``, ``http(s)://…`` or
    bare ``host:port``; adds the subscription as query parameters (live only,
    ``snapshot=0``: a log shipper wants events, not state)."""
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} (use ws:// or http://)")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    query: dict[str, str] = {"snapshot": "0"}
    if types:
        query["types"] = ",".join(types)
    if groups:
        query["groups"] = ",".join(groups)
    query.update(resume or {})
    extra = parts.query
    q = urlencode(query, safe=",*")
    return urlunsplit((scheme, parts.netloc, path, f"{extra}&{q}" if extra else q, ""))


def _split(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    return [p.strip() for v in value for p in v.split(",") if p.strip()]


async def tail(
    url: str,
    *,
    types: str | Sequence[str] | None = None,
    groups: str | Sequence[str] | None = None,
    since: int | None = None,
    epoch: str | None = None,
    token: str | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    backoff_initial: float = 0.5,
    backoff_max: float = 10.0,
    open_timeout: float = 10.0,
    stop: asyncio.Event | None = None,
) -> int:
    """Print the server's events to ``out`` until ``stop`` is set (or the task is
    cancelled); returns the exit code: 0 when stopped, 1 when the server refuses us
    for good (401/403/404, rejected subscription), 2 for bad arguments."""
    type_list, group_list = _split(types), _split(groups)
    try:
        if type_list:
            expand_types(type_list, where="--types")
        build_url(url)
    except (ProtocolError, ValueError) as exc:
        _say(err, str(exc))
        return 2
    if (since is None) != (epoch is None):
        _say(err, "--since and --epoch go together (a resume point is a seq within an epoch)")
        return 2

    state = TailState(since, epoch)
    runner = asyncio.ensure_future(
        _loop(url, type_list, group_list, token, state, out, err,
              backoff_initial, backoff_max, open_timeout)
    )
    if stop is None:
        return await runner
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if runner in done:
        return runner.result()
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    return 0


async def _loop(
    url: str,
    types: list[str],
    groups: list[str],
    token: str | None,
    state: TailState,
    out: TextIO,
    err: TextIO,
    backoff_initial: float,
    backoff_max: float,
    open_timeout: float,
) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    backoff = backoff_initial
    while True:
        target = build_url(url, types=types, groups=groups, resume=state.resume_params())
        why: str
        try:
            async with connect(
                target,
                additional_headers=headers,
                open_timeout=open_timeout,
                close_timeout=1.0,
                compression=None,
                max_size=None,  # replays and snapshots can be large; the server is trusted
            ) as ws:
                async for message in ws:
                    objs = orjson.loads(message)
                    if isinstance(objs, dict):
                        objs = [objs]
                    text, messages = state.feed(objs)
                    if text:
                        out.write(text)
                        out.flush()
                    for m in messages:
                        _say(err, m)
                    if state.fatal is not None:
                        return 1
                    backoff = backoff_initial  # a working connection resets the backoff
            why = _describe_close(ws.close_code, ws.close_reason)
        except BrokenPipeError:
            raise  # our stdout is gone (an OSError, but not a network one): stop
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in _FATAL_STATUS:
                _say(err, f"{target.split('?')[0]}: HTTP {status} {_FATAL_STATUS[status]}")
                return 1
            why = f"HTTP {status}"
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            why = _describe_close(code, exc.rcvd.reason if exc.rcvd is not None else "")
        except InvalidURI as exc:
            _say(err, str(exc))
            return 2
        except (OSError, TimeoutError, InvalidHandshake, orjson.JSONDecodeError) as exc:
            why = str(exc) or type(exc).__name__
        _say(err, f"disconnected ({why}); reconnecting in {backoff:g} s")
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, backoff_max)


def _describe_close(code: int | None, reason: str | None) -> str:
    if code is None:
        return "connection lost"
    return f"closed with {code}" + (f" {reason}" if reason else "")


def _say(err: TextIO, message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        err.write(f"{_PROG}: {message}\n")
        err.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``tail``'s arguments to a (sub)parser: URL, --types, --groups, --since,
    --epoch, --token (default: $PROCSTREAM_TOKEN)."""
    parser.add_argument("url", metavar="URL",
                        help="server address: ws://HOST:PORT[/ws], http://HOST:PORT or HOST:PORT")
    parser.add_argument("--types", action="append", metavar="LIST",
                        help="event types, comma separated (proc.start, proc.exit, "
                             "group.update, cycle; proc.* wildcard); default all")
    parser.add_argument("--groups", action="append", metavar="LIST",
                        help="group names, comma separated; default all")
    parser.add_argument("--since", type=int, metavar="N",
                        help="resume after seq N (needs --epoch)")
    parser.add_argument("--epoch", metavar="E", help="epoch of --since (from a previous run)")
    parser.add_argument("--token", metavar="TOKEN",
                        help="bearer token (default: $PROCSTREAM_TOKEN)")


def run(args: argparse.Namespace) -> int:
    """Run ``tail`` from parsed arguments (see :func:`add_arguments`); returns the exit
    code. SIGINT/SIGTERM stop it quietly with 0."""
    token = args.token if args.token is not None else os.environ.get("PROCSTREAM_TOKEN")

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await tail(args.url, types=args.types, groups=args.groups, since=args.since,
                          epoch=args.epoch, token=token, stop=stop)

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 0
    except BrokenPipeError:
        # The reader went away (`procstream tail … | head`): stop quietly, and keep
        # Python from complaining when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m procstream.tail URL …``."""
    parser = argparse.ArgumentParser(prog=_PROG, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
