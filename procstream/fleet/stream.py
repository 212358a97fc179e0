"""The JetStream stream every host publishes to, and the bucket of their latest states.

``serve`` creates the stream when it is missing, from its flags; when it exists, ``serve``
checks that it can work with it and otherwise refuses to start. What makes a stream
unusable: its subjects don't take this host's, its retention removes events once some
consumer read them (``interest``, ``workqueue``), its duplicate window is shorter than
:data:`~.subjects.MIN_DUPLICATE_WINDOW` (a resend could be stored twice), it doesn't
acknowledge (``no_ack``), it is sealed, or it is a mirror. Its size, age and replica
limits are the operator's to choose: when they differ from the flags they are logged and
left alone (a hundred hosts with different flags must not fight over the stream).
"""

from __future__ import annotations

import logging
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError

from ..schema import EVENT_TYPES
from .options import StreamSpec
from .subjects import MIN_DUPLICATE_WINDOW, PREFIX, event_subject, subject_matches

__all__ = [
    "StreamProblem",
    "stream_config",
    "incompatibilities",
    "ensure_stream",
    "ensure_state_bucket",
    "api_problem",
    "jetstream_missing",
]

log = logging.getLogger("procstream.nats")

# JetStream's error codes for "a stream of that name exists already" (a race with
# another host creating it) and "JetStream is not enabled for this account".
_ERR_NAME_IN_USE = 10058
_ERR_NOT_ENABLED = (10039, 10076)


class StreamProblem(Exception):
    """The stream (or JetStream itself) can't be used as it is: exit 2 at start."""


def stream_config(spec: StreamSpec) -> StreamConfig:
    """The stream ``serve`` creates."""
    return StreamConfig(
        name=spec.name,
        description="procstream events of every host: procstream.<host>.<type>",
        subjects=[f"{PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        max_age=spec.max_age or None,
        max_bytes=spec.max_bytes,
        num_replicas=spec.replicas,
        duplicate_window=spec.duplicate_window,
        storage=StorageType.FILE,
    )


def incompatibilities(config: StreamConfig, token: str) -> list[str]:
    """Why host ``token`` can't publish to a stream of ``config`` (empty when it can)."""
    problems: list[str] = []
    subjects = list(config.subjects or [])
    uncovered = [t for t in EVENT_TYPES if not any(subject_matches(s, event_subject(token, t)) for s in subjects)]
    if uncovered:
        problems.append(
            f"its subjects {subjects} don't take {event_subject(token, uncovered[0])} "
            f"(it needs {PREFIX}.> or {PREFIX}.{token}.>)"
        )
    retention = getattr(config.retention, "value", config.retention)
    if retention not in (None, "limits"):
        problems.append(f"its retention is {retention!r}: events would go once one consumer read them (needs 'limits')")
    window = config.duplicate_window or 0.0
    if window < MIN_DUPLICATE_WINDOW:
        problems.append(f"its duplicate window is {window:g}s: a resent event could be stored twice "
                        f"(needs at least {MIN_DUPLICATE_WINDOW:g}s)")
    if config.no_ack:
        problems.append("it does not acknowledge publishes (no_ack)")
    if config.sealed:
        problems.append("it is sealed")
    if config.mirror is not None:
        problems.append("it is a mirror of another stream (it takes no publishes)")
    return problems


def _differences(config: StreamConfig, spec: StreamSpec) -> list[str]:
    out: list[str] = []
    pairs: list[tuple[str, Any, Any]] = [
        ("max age", config.max_age or 0.0, spec.max_age),
        ("max bytes", config.max_bytes, spec.max_bytes),
        ("replicas", config.num_replicas, spec.replicas),
        ("duplicate window", config.duplicate_window, spec.duplicate_window),
    ]
    for what, have, want in pairs:
        if have != want:
            out.append(f"{what} {have} (flags: {want})")
    return out


def jetstream_missing(exc: Exception) -> bool:
    """Whether ``exc`` says there is no JetStream to talk to (not enabled, or nothing
    answers its API): no retry will change that."""
    return (isinstance(exc, APIError) and exc.err_code in _ERR_NOT_ENABLED) or isinstance(
        exc, nats.errors.NoRespondersError | nats.js.errors.ServiceUnavailableError)


def api_problem(exc: Exception, what: str) -> StreamProblem:
    """What a JetStream API error means for ``what`` (a stream, a bucket)."""
    if isinstance(exc, APIError) and exc.err_code in _ERR_NOT_ENABLED:
        return StreamProblem("JetStream is not enabled on this NATS server or account (nats-server -js)")
    if isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.ServiceUnavailableError):
        return StreamProblem("no JetStream answered (is JetStream enabled? nats-server -js)")
    detail = exc.description if isinstance(exc, APIError) and exc.description else (str(exc) or type(exc).__name__)
    return StreamProblem(f"{what}: {detail}")


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, token: str) -> StreamInfo:
    """The stream's info, after creating it when missing; raises :class:`StreamProblem`
    when it exists but won't do, or can't be created. Timeouts and lost connections
    pass through (the caller retries)."""
    for _ in range(2):
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            try:
                info = await js.add_stream(stream_config(spec))
            except APIError as exc:
                if exc.err_code == _ERR_NAME_IN_USE:
                    continue  # another host created it first: check that one
                raise api_problem(exc, f"cannot create stream {spec.name}") from None
            log.info("NATS: created stream %s (subjects %s.>, replicas %d)", spec.name, PREFIX, spec.replicas)
            return info
        except (APIError, nats.errors.NoRespondersError) as exc:
            raise api_problem(exc, f"stream {spec.name}") from None
        problems = incompatibilities(info.config, token)
        if problems:
            raise StreamProblem(f"stream {spec.name} exists but won't do: " + "; ".join(problems))
        diffs = _differences(info.config, spec)
        if diffs:
            log.info("NATS: stream %s kept as it is: %s", spec.name, ", ".join(diffs))
        return info
    raise StreamProblem(f"stream {spec.name}: created and deleted again while we looked")


async def ensure_state_bucket(js: JetStreamContext, bucket: str, replicas: int) -> None:
    """Create the host-state bucket when it is missing (one value per key)."""
    try:
        await js.key_value(bucket)
        return
    except BucketNotFoundError:
        pass
    except (APIError, nats.errors.NoRespondersError) as exc:
        raise api_problem(exc, f"bucket {bucket}") from None
    try:
        await js.create_key_value(KeyValueConfig(
            bucket=bucket,
            description="procstream: each host's latest state (head + chunks)",
            history=1,
            replicas=replicas,
            storage=StorageType.FILE,
        ))
    except APIError as exc:
        if exc.err_code != _ERR_NAME_IN_USE:
            raise api_problem(exc, f"cannot create bucket {bucket}") from None
    log.info("NATS: state bucket %s ready", bucket)
