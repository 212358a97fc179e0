"""``procstream tail nats://…``: the JetStream stream through a durable consumer, as NDJSON.

One event per line on stdout, as ``tail ws://…`` prints them, from every host (or those
of ``--hosts``), of every type (or those of ``--types``). The consumer is durable (its
name: ``--durable``), so the position survives ``tail`` itself: a restarted ``tail`` with
the same name goes on after the last event it acknowledged.

Delivery is at-least-once and in stream order. Each batch of messages is written and
flushed (and fsynced when stdout is a file) before ``tail`` acknowledges it, with one
acknowledgement for the batch (the consumer acknowledges everything up to a message,
``AckAll``). The consumer hands out one batch at a time (``max_ack_pending`` = the
batch), so what a killed ``tail`` had fetched and not acknowledged is at most one batch.
A ``tail`` that finds such a batch outstanding when it starts sets the consumer back to
just after its last acknowledged message, so that batch comes first and at once: the
server would otherwise hand the next messages to the new ``tail`` while the old batch
waits out :data:`ACK_WAIT`, and acknowledging those (``AckAll``) would acknowledge the
old batch unprinted. An acknowledgement that fails is sent again before anything newer
is fetched, for the same reason. That batch may thus be printed twice; nothing is
skipped. ``host`` + ``epoch`` + ``seq`` (the message id) identify an event, for readers
that drop repeats.

``--types`` and ``--hosts`` become the consumer's subject filters (the server does the
filtering); ``--groups`` is applied here, since subjects don't carry the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from collections.abc import Sequence
from typing import Any, Final, TextIO

import nats.errors
import orjson
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from ..stream.protocol import ProtocolError, expand_types
from .link import NatsLink, NatsRefused
from .options import NatsSettings
from .subjects import PREFIX, check_name, host_token

__all__ = ["filter_subjects", "tail_nats", "ACK_WAIT"]

_PROG: Final = "procstream tail"
#: Seconds the server waits for our acknowledgement before it delivers a batch again:
#: how long a restarted tail may wait for the batch its killed predecessor held.
ACK_WAIT: Final = 10.0
_FETCH_WAIT: Final = 1.0
_BACKOFF_MAX: Final = 10.0


def filter_subjects(types: frozenset[str] | None, hosts: Sequence[str]) -> list[str]:
    """The consumer's subject filters for these types (None: all) and hosts (empty: all)."""
    tokens = sorted({host_token(h) for h in hosts}) or ["*"]
    if types is None:
        return [f"{PREFIX}.>"] if tokens == ["*"] else [f"{PREFIX}.{t}.>" for t in tokens]
    return [f"{PREFIX}.{t}.{typ}" for t in tokens for typ in sorted(types)]


def _say(err: TextIO, message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        err.write(f"{_PROG}: {message}\n")
        err.flush()


class _Writer:
    """Lines to ``out``, flushed, and fsynced when ``out`` is a regular file: what is
    acknowledged must have reached whoever reads ``out``."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        try:
            self.sync = stat.S_ISREG(os.fstat(out.fileno()).st_mode)
        except (OSError, ValueError, AttributeError):  # io.StringIO & co have no fd
            self.sync = False

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
        if self.sync:
            os.fsync(self.out.fileno())


async def _consumer(js: Any, stream: str, durable: str, subjects: list[str], deliver: str, batch: int) -> str | None:
    """Create the durable consumer, or check the existing one; a problem as text."""
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        info = None
    if info is not None:
        have = list(info.config.filter_subjects or ([info.config.filter_subject] if info.config.filter_subject else []))
        if sorted(have or [f"{PREFIX}.>"]) != sorted(subjects):
            return (f"consumer {durable} exists with filters {have}, not {subjects}: use another --durable "
                    f"(or delete it: nats consumer rm {stream} {durable})")
        if getattr(info.config.ack_policy, "value", info.config.ack_policy) != "all":
            return f"consumer {durable} exists and is not one of ours (ack policy {info.config.ack_policy})"
        config = info.config
        if info.num_ack_pending:
            # A tail that died holding a batch: deliver again from the first message it
            # did not acknowledge, now and before anything newer.
            await js.delete_consumer(stream, durable)
            config = config.evolve(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=info.ack_floor.stream_seq + 1,
                opt_start_time=None,
                max_ack_pending=batch,
            )
            await js.add_consumer(stream, config)
        elif config.max_ack_pending != batch:  # --batch changed: one batch out at a time
            await js.add_consumer(stream, config.evolve(max_ack_pending=batch))
        return None
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.ALL,
        deliver_policy=DeliverPolicy.NEW if deliver == "new" else DeliverPolicy.ALL,
        ack_wait=ACK_WAIT,
        max_ack_pending=batch,
        description="procstream tail",
    )
    if len(subjects) == 1:
        config.filter_subject = subjects[0]
    else:
        config.filter_subjects = subjects
    await js.add_consumer(stream, config)
    return None


async def tail_nats(
    settings: NatsSettings,
    *,
    stream: str,
    durable: str,
    types: Sequence[str] = (),
    hosts: Sequence[str] = (),
    groups: Sequence[str] = (),
    deliver: str = "new",
    batch: int = 100,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    stop: asyncio.Event | None = None,
) -> int:
    """Print the stream's events until ``stop`` is set; the exit code: 0 when stopped,
    2 for bad arguments, refused credentials, or a stream or consumer that won't do."""
    try:
        wanted = expand_types(list(types), where="--types") if types else None
        check_name("--durable", durable)
    except (ProtocolError, ValueError) as exc:
        _say(err, str(exc))
        return 2
    if batch < 1:
        _say(err, "--batch must be at least 1")
        return 2
    subjects = filter_subjects(wanted, hosts)
    group_set = frozenset(groups) or None
    stop = stop or asyncio.Event()
    link = NatsLink(settings, name=f"procstream tail {durable}")
    try:
        try:
            if not await link.wait_connected(settings.connect_timeout):
                _say(err, f"NATS {settings.where} not reachable yet ({link.stats.last_error}); waiting")
                await _until(link.connected.wait(), stop)
                if stop.is_set():
                    return 0
        except NatsRefused as exc:
            _say(err, f"NATS {settings.where} refused us: {exc}")
            return 2
        js = link.nc.jetstream()
        try:
            problem = await _consumer(js, stream, durable, subjects, deliver, batch)
        except NotFoundError:
            problem = f"no stream {stream} on NATS {settings.where} (does any serve --nats publish there?)"
        except APIError as exc:
            problem = f"consumer {durable}: {exc.description or exc}"
        if problem is not None:
            _say(err, problem)
            return 2
        psub = await js.pull_subscribe_bind(durable, stream=stream)
        _say(err, f"reading {stream} as durable consumer {durable} ({', '.join(subjects)})")
        return await _loop(psub, _Writer(out), err, batch, group_set, stop)
    finally:
        await link.close()


async def _acknowledge(last: Any, err: TextIO, stop: asyncio.Event) -> None:
    """Acknowledge a batch by its last message (``AckAll``), trying again until it
    works or ``tail`` stops: fetching more first could get a later message whose
    acknowledgement covers the batch while the server is about to deliver it again."""
    backoff = 0.5
    said = False
    while True:
        try:
            await last.ack_sync(timeout=5.0)
            return
        except (nats.errors.Error, APIError, TimeoutError) as exc:
            if not said:
                _say(err, f"acknowledgement failed ({exc or type(exc).__name__}); trying again "
                          "(the batch may be printed again if tail stops first)")
                said = True
        await _until(asyncio.sleep(backoff), stop)
        if stop.is_set():
            return
        backoff = min(backoff * 2, _BACKOFF_MAX)


async def _until(awaitable: Any, stop: asyncio.Event) -> None:
    """Await ``awaitable`` unless ``stop`` is set first."""
    work = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, stopper):
            task.cancel()
        await asyncio.gather(work, stopper, return_exceptions=True)


async def _loop(psub: Any, writer: _Writer, err: TextIO, batch: int, groups: frozenset[str] | None,
                stop: asyncio.Event) -> int:
    backoff = 0.5
    failing: str | None = None
    bad = 0
    while not stop.is_set():
        try:
            msgs = await psub.fetch(batch, timeout=_FETCH_WAIT)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        except (nats.errors.Error, APIError, OSError) as exc:
            why = str(exc) or type(exc).__name__
            if why != failing:
                _say(err, f"cannot fetch ({why}); retrying")
                failing = why
            await _until(asyncio.sleep(backoff), stop)
            backoff = min(backoff * 2, _BACKOFF_MAX)
            continue
        lines: list[bytes] = []
        for msg in msgs:
            try:
                obj = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                bad += 1
                if bad == 1 or bad % 1000 == 0:
                    _say(err, f"skipped {bad} message(s) that are not a JSON object (subject {msg.subject})")
                continue
            if groups is not None and obj.get("group") not in groups:
                continue
            lines.append(orjson.dumps(obj))
        if lines:
            try:
                writer.write(b"".join(line + b"\n" for line in lines).decode())
            except BrokenPipeError:
                raise
            except OSError as exc:
                _say(err, f"cannot write to stdout ({exc.strerror or exc}); stopping")
                return 1
        if msgs:
            await _acknowledge(msgs[-1], err, stop)
        if failing is not None:
            _say(err, "fetching again")
            failing = None
        backoff = 0.5
    return 0

