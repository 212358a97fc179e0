"""``procstream tail URL``: subscribe to a procstream server and print events as NDJSON.

For log shippers: one event per line on stdout, flushed after every frame; control
objects are not printed. It reconnects by itself (backoff 0.5 s doubling to 10 s) and
resumes from the last seq it printed (``since`` + ``epoch``), so a plain reconnect loses
nothing. When the server can't resume (we were away longer than its buffer) it says so
on stderr — with what was lost when that is known — and carries on with live events.
After a server restart (a new epoch) it replays the new run from its start, as far as
the server's buffer still holds it. Ctrl-C / SIGTERM end it quietly with exit code 0.

Resume points: events carry their ``seq`` but not the epoch, so ``tail`` writes the
epoch to stderr at every connect and epoch change, as ``--since N --epoch E`` ready to
paste (N: the seq of the last line kept). With ``--state-file FILE`` it keeps the resume
point itself: FILE is replaced atomically after each frame's lines are flushed (and
fsynced when stdout is a file), and read back at start. Delivery is at-least-once:
killed between the flush and the state write, a restarted ``tail`` prints that frame's
events again; it never skips one.

With a ``nats://`` (or ``tls://``) URL it reads the fleet's JetStream stream through a
durable consumer instead (:mod:`procstream.fleet.tail`): the consumer keeps the position,
so ``--since``/``--epoch``/``--state-file`` don't apply there.

The CLI wiring calls :func:`add_arguments` on its ``tail`` subparser and :func:`run`
with the parsed arguments; ``python -m procstream.tail`` works on its own too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from .fleet.options import NatsConfigError, add_connection_arguments, settings_from
from .stream.protocol import ProtocolError, expand_types

__all__ = [
    "tail",
    "run",
    "add_arguments",
    "build_url",
    "TailState",
    "StateFile",
    "StateFileError",
    "main",
]

_PROG = "procstream tail"
# Refusals that retrying won't fix.
_FATAL_STATUS = {400: "bad request", 401: "unauthorized (check --token)",
                 403: "forbidden (token or Origin refused)", 404: "not found (check the URL)"}
# A state file is a few dozen bytes; anything much larger is not ours.
_STATE_MAX_BYTES = 4096


class TailState:
    """What ``tail`` knows between frames: the resume point and the current epoch.

    Sans-I/O: :meth:`feed` takes the objects of one frame and returns the NDJSON text to
    print and the messages for stderr; :meth:`requests` hands over the frames to send.
    """

    def __init__(self, since: int | None = None, epoch: str | None = None) -> None:
        #: last seq printed (or bookmarked) and the epoch it belongs to: the resume point
        self.since = since
        self.epoch = epoch
        #: epoch of the current connection (from its hello)
        self.conn_epoch: str | None = None
        #: the subscription the server confirmed in its hello (``filter``)
        self.filter: dict[str, Any] | None = None
        #: False when the server refused our subscription (hello with filter null)
        self.subscribed = True
        #: after an epoch reset we ask for the new run from its start; until the server
        #: acknowledges, what arrives belongs to the old request and is replayed anyway
        self.resubscribing = False
        self.fatal: str | None = None
        self.printed = 0
        self._requests: list[dict[str, Any]] = []

    def resume_params(self) -> dict[str, str]:
        """``since``/``epoch`` query parameters for the next connection, if any."""
        if self.since is None or self.epoch is None:
            return {}
        return {"since": str(self.since), "epoch": self.epoch}

    def resume_point(self) -> tuple[int, str] | None:
        """``(since, epoch)`` when both are known."""
        if self.since is None or self.epoch is None:
            return None
        return self.since, self.epoch

    def requests(self) -> list[dict[str, Any]]:
        """Frames to send to the server now (each a JSON object); empties the list."""
        out, self._requests = self._requests, []
        return out

    def connection_lost(self) -> None:
        """The connection ended: an unacknowledged request died with it (the resume
        point already says what to ask for next)."""
        self.resubscribing = False
        self._requests.clear()

    def feed(self, objs: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
        """Handle one frame; returns (NDJSON lines to print, messages for stderr)."""
        lines: list[bytes] = []
        messages: list[str] = []
        for obj in objs:
            t = obj.get("type")
            if t == "hello":
                messages.append(self._hello(obj))
            elif self.resubscribing:
                if t == "subscribed":
                    self.resubscribing = False
                elif t == "error":
                    messages.append(f"server error: {obj.get('error')}")
                    self.fatal = f"resubscription refused: {obj.get('error')}"
                # anything else answers the previous request: the replay brings it again
            elif t == "reset":
                messages.append(self._reset(obj))
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

    def _hello(self, obj: dict[str, Any]) -> str:
        epoch = obj.get("epoch")
        head = obj.get("head_seq")
        self.conn_epoch = epoch if isinstance(epoch, str) else None
        self.filter = obj.get("filter")
        self.subscribed = self.filter is not None
        where = f"connected: epoch {epoch}, head seq {head}"
        if self.since is None and self.subscribed and isinstance(head, int):
            # Live from here: what follows has seq > head, so head is a valid resume point.
            self._advance(head)
        if self.since is None or self.epoch is None:
            return where
        if self.epoch != self.conn_epoch:
            return f"{where}; the server restarted since seq {self.since} of epoch {self.epoch}"
        return f"{where}; resume point: {_paste(self.since, self.epoch)}"

    def _reset(self, obj: dict[str, Any]) -> str:
        reason = obj.get("reason")
        seq = obj.get("seq")
        since = obj.get("since", self.since)
        new_epoch = obj.get("epoch")
        if reason == "epoch" and isinstance(new_epoch, str) and self.filter is not None:
            # Another server run: its events so far are still in its buffer, numbered
            # from 1. Ask for all of them on this connection ("I have up to 0").
            message = (
                f"reset: the server restarted (epoch {self.epoch} -> {new_epoch}); events "
                f"of the old run after seq {since} that we had not received are lost; "
                f"replaying the new run from its start; resume point: {_paste(0, new_epoch)}"
            )
            self.since, self.epoch = 0, new_epoch
            self.resubscribing = True
            self._requests.append({
                "op": "subscribe",
                "types": self.filter.get("types"),
                "groups": self.filter.get("groups"),
                "since": 0,
                "epoch": new_epoch,
                "snapshot": False,
            })
            return message
        self._advance(seq)
        cont = f"continuing with live events after seq {seq}"
        if isinstance(seq, int) and self.epoch is not None:
            cont += f"; resume point: {_paste(seq, self.epoch)}"
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


def _paste(since: int, epoch: str) -> str:
    """A resume point as ``tail`` takes it back on its command line."""
    return f"--since {since} --epoch {epoch}"


class StateFileError(Exception):
    """The state file can't be used (unreadable, not ours, or its directory is missing)."""


class StateFile:
    """``tail``'s resume point on disk: ``{"since": N, "epoch": "E"}``.

    :meth:`save` replaces the file atomically and durably (a temporary file in the same
    directory, fsynced, renamed over the old one, then the directory fsynced), so a
    crash or power loss leaves the previous point or the new one, never a torn file.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.dir = os.path.dirname(self.path)
        self.saved: tuple[int, str] | None = None

    def load(self) -> tuple[int, str] | None:
        """The saved point, or None when there is no file yet (a first run)."""
        if not os.path.isdir(self.dir):
            raise StateFileError(f"--state-file {self.path}: directory {self.dir} does not exist")
        try:
            with open(self.path, "rb") as f:
                data = f.read(_STATE_MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateFileError(f"--state-file {self.path}: {exc.strerror or exc}") from None
        try:
            obj = orjson.loads(data) if len(data) <= _STATE_MAX_BYTES else None
        except orjson.JSONDecodeError:
            obj = None
        since = obj.get("since") if isinstance(obj, dict) else None
        epoch = obj.get("epoch") if isinstance(obj, dict) else None
        if (isinstance(since, bool) or not isinstance(since, int) or since < 0
                or not isinstance(epoch, str) or not epoch):
            raise StateFileError(
                f"--state-file {self.path}: not a tail state file (expected "
                '{"since": N, "epoch": "E"}); move it away to start from the live stream'
            )
        self.saved = (since, epoch)
        return self.saved

    def save(self, point: tuple[int, str]) -> None:
        """Write ``point`` unless it is already on disk; raises OSError on failure."""
        if point == self.saved:
            return
        since, epoch = point
        data = orjson.dumps({"since": since, "epoch": epoch}) + b"\n"
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{os.path.basename(self.path)}.", suffix=".tmp")
        try:
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)  # the rename itself must survive a power loss
        finally:
            os.close(dfd)
        self.saved = point


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
    state_file: str | None = None,
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
    for good (401/403/404, rejected subscription), 2 for bad arguments or an unusable
    ``state_file``. ``since``/``epoch`` win over the point saved in ``state_file``."""
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
    keeper: StateFile | None = None
    if state_file is not None:
        keeper = StateFile(state_file)
        try:
            saved = keeper.load()
        except StateFileError as exc:
            _say(err, str(exc))
            return 2
        if since is None and saved is not None:
            since, epoch = saved

    state = TailState(since, epoch)
    runner = asyncio.ensure_future(
        _loop(url, type_list, group_list, token, state, keeper, out, err,
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


class _StdoutError(Exception):
    """stdout refused a write (a full disk, an I/O error): nothing more can be printed."""


class _Output:
    """Where a frame goes: its lines to ``out``, then its resume point to the state file.

    The order is what makes delivery at-least-once: the state file never gets ahead of
    what the reader of ``out`` has been handed.
    """

    def __init__(self, out: TextIO, err: TextIO, keeper: StateFile | None) -> None:
        self.out = out
        self.err = err
        self.keeper = keeper
        self.failing = False
        self._sync_out: bool | None = None

    def emit(self, text: str, point: tuple[int, str] | None) -> None:
        if text:
            try:
                self.out.write(text)
                self.out.flush()
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise _StdoutError(exc.strerror or str(exc)) from None
        if self.keeper is None or point is None or point == self.keeper.saved:
            return
        # Blocking, on purpose: tail has nothing else to do until this frame is safe,
        # and the file is a few bytes.
        try:
            if text and self._out_is_file():
                os.fsync(self.out.fileno())  # a power loss must not keep the point, lose the lines
            self.keeper.save(point)
        except OSError as exc:
            if not self.failing:
                _say(self.err, f"cannot write --state-file {self.keeper.path} "
                               f"({exc.strerror or exc}); a restart would resume from an "
                               f"older point and print some events again")
            self.failing = True
        else:
            if self.failing:
                _say(self.err, f"--state-file {self.keeper.path} written again")
            self.failing = False

    def _out_is_file(self) -> bool:
        if self._sync_out is None:
            try:
                self._sync_out = stat.S_ISREG(os.fstat(self.out.fileno()).st_mode)
            except (OSError, ValueError, AttributeError):  # io.StringIO & co have no fd
                self._sync_out = False
        return self._sync_out


async def _loop(
    url: str,
    types: list[str],
    groups: list[str],
    token: str | None,
    state: TailState,
    keeper: StateFile | None,
    out: TextIO,
    err: TextIO,
    backoff_initial: float,
    backoff_max: float,
    open_timeout: float,
) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    output = _Output(out, err, keeper)
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
                    output.emit(text, state.resume_point())
                    for m in messages:
                        _say(err, m)
                    if state.fatal is not None:
                        return 1
                    for request in state.requests():
                        await ws.send(orjson.dumps(request).decode())
                    backoff = backoff_initial  # a working connection resets the backoff
            why = _describe_close(ws.close_code, ws.close_reason)
        except BrokenPipeError:
            raise  # our stdout is gone (an OSError, but not a network one): stop
        except _StdoutError as exc:
            _say(err, f"cannot write to stdout ({exc}); stopping")
            return 1
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
        state.connection_lost()
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
    --epoch, --state-file, --token (default: $PROCSTREAM_TOKEN)."""
    parser.add_argument("url", metavar="URL",
                        help="server address: ws://HOST:PORT[/ws], http://HOST:PORT or HOST:PORT; "
                             "or nats://HOST:PORT[,nats://…] (or tls://…) to read the fleet's JetStream stream")
    parser.add_argument("--types", action="append", metavar="LIST",
                        help="event types, comma separated (proc.start, proc.exit, "
                             "group.update, cycle; proc.* wildcard); default all")
    parser.add_argument("--groups", action="append", metavar="LIST",
                        help="group names, comma separated; default all")
    parser.add_argument("--since", type=int, metavar="N",
                        help="resume after seq N, the seq of the last line kept (needs --epoch)")
    parser.add_argument("--epoch", metavar="E",
                        help="epoch of --since: tail prints it on stderr as '--since N --epoch E' "
                             "at every connect and epoch change")
    parser.add_argument("--state-file", metavar="FILE",
                        help="keep the resume point in FILE (replaced atomically after each "
                             "frame is flushed) and resume from it at start; at-least-once: "
                             "after a crash the last frame may be printed again, never skipped. "
                             "--since/--epoch win over it")
    parser.add_argument("--token", metavar="TOKEN",
                        help="bearer token (default: $PROCSTREAM_TOKEN)")
    nats = parser.add_argument_group(
        "NATS (nats:// URLs)",
        "A durable JetStream consumer keeps the position: a restarted tail with the same "
        "--durable goes on after the last batch it acknowledged (at-least-once: a batch "
        "written but not yet acknowledged when tail was killed is printed again).",
    )
    nats.add_argument("--durable", metavar="NAME", default=None,
                      help="name of the durable consumer (default: procstream-tail)")
    nats.add_argument("--hosts", action="append", metavar="LIST",
                      help="host names, comma separated; default all")
    nats.add_argument("--deliver", choices=("new", "all"), default="new",
                      help="where a new consumer starts: new events only, or all the stream holds (default: new)")
    nats.add_argument("--batch", type=int, default=100, metavar="N",
                      help="events per fetch and per acknowledgement (default: 100)")
    add_connection_arguments(nats)


_NATS_SCHEMES = ("nats://", "tls://")


def _is_nats(url: str) -> bool:
    return url.startswith(_NATS_SCHEMES) or url.split(",", 1)[0].strip().startswith(_NATS_SCHEMES)


def _run_nats(args: argparse.Namespace) -> int:
    from .fleet.tail import tail_nats

    for flag, value in (("--since", args.since), ("--epoch", args.epoch), ("--state-file", args.state_file)):
        if value is not None:
            _say(sys.stderr, f"{flag} is for ws:// URLs: with nats:// the durable consumer keeps the position")
            return 2
    if args.token is not None:
        _say(sys.stderr, "--token is for ws:// URLs: NATS takes --nats-token (or --nats-user, --nats-creds)")
        return 2
    try:
        settings = settings_from(args, args.url)
    except NatsConfigError as exc:
        _say(sys.stderr, str(exc))
        return 2

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await tail_nats(
            settings,
            stream=args.nats_stream,
            durable=args.durable or "procstream-tail",
            types=_split(args.types),
            hosts=_split(args.hosts),
            groups=_split(args.groups),
            deliver=args.deliver,
            batch=args.batch,
            stop=stop,
        )

    return asyncio.run(main())


def run(args: argparse.Namespace) -> int:
    """Run ``tail`` from parsed arguments (see :func:`add_arguments`); returns the exit
    code. SIGINT/SIGTERM stop it quietly with 0."""
    if _is_nats(args.url):
        return _guard_stdout(lambda: _run_nats(args))
    if args.durable is not None or args.hosts:
        _say(sys.stderr, "--durable and --hosts are for nats:// URLs")
        return 2
    token = args.token if args.token is not None else os.environ.get("PROCSTREAM_TOKEN")

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await tail(args.url, types=args.types, groups=args.groups, since=args.since,
                          epoch=args.epoch, state_file=args.state_file, token=token,
                          stop=stop)

    return _guard_stdout(lambda: asyncio.run(main()))


def _guard_stdout(fn: Callable[[], int]) -> int:
    """``fn()``, ending quietly on a second Ctrl-C or when stdout's reader went away."""
    try:
        return fn()
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
