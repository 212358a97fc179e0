"""Where each event goes in NATS: subjects, message ids, the stream's name (pure).

- Subject ``procstream.<host>.<type>``, e.g. ``procstream.web-01.proc.exit``: a consumer
  filters one type of every host (``procstream.*.proc.exit``) or everything of one host
  (``procstream.web-01.>``). In ``<host>`` the characters NATS gives a meaning to
  (``.``, ``*``, ``>``) and whitespace become ``_``; the event's own ``host`` is unchanged.
- ``Nats-Msg-Id`` ``<host>:<epoch>:<seq>``: a run's event has one id however often it is
  sent, so JetStream stores a retry once (within the stream's duplicate window). A
  ``host.lost`` record stands for events ``from_seq``..``to_seq`` and has the id
  ``<host>:<epoch>:lost:<from_seq>``.
- ``host.up`` and ``host.down`` are decided by fleet aggregators and published to the
  host's subjects with the id ``fleet:<host>:<epoch>:up:<n>`` (``down``), ``n`` the
  host's seq the decision follows: every aggregator of the stream takes the same
  decision under the same id, so the stream holds it once and every aggregator sees it
  at the same place.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "PREFIX",
    "DEFAULT_STREAM",
    "DEFAULT_STATE_BUCKET",
    "MIN_DUPLICATE_WINDOW",
    "MSG_ID",
    "host_token",
    "check_host_name",
    "event_subject",
    "host_subjects",
    "msg_id",
    "lost_msg_id",
    "status_msg_id",
    "parse_msg_id",
    "parse_status_msg_id",
    "subject_matches",
    "check_name",
]

PREFIX: Final = "procstream"
DEFAULT_STREAM: Final = "PROCSTREAM"
DEFAULT_STATE_BUCKET: Final = "PROCSTREAM_STATE"
#: Seconds. A retry after an outage goes out sooner than this after the first attempt
#: in the common case; the publisher also checks the stream itself before resending.
MIN_DUPLICATE_WINDOW: Final = 120.0
MSG_ID: Final = "Nats-Msg-Id"

_SPECIAL = re.compile(r"[.*>\s]")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_host_name(host: str) -> str | None:
    """Why ``host`` can't name a host in NATS (None when it can): it goes into subjects
    and message ids, so no control characters, not empty, not huge."""
    if not host:
        return "empty"
    if len(host.encode()) > 255:
        return "longer than 255 bytes"
    if any(ord(c) < 32 or ord(c) == 127 for c in host):
        return "contains control characters"
    return None


def host_token(host: str) -> str:
    """``host`` as one subject token."""
    return _SPECIAL.sub("_", host)


def event_subject(token: str, event_type: str) -> str:
    return f"{PREFIX}.{token}.{event_type}"


def host_subjects(token: str) -> str:
    """Every subject one host publishes to."""
    return f"{PREFIX}.{token}.>"


def msg_id(host: str, epoch: str, seq: int) -> str:
    return f"{host}:{epoch}:{seq}"


def lost_msg_id(host: str, epoch: str, from_seq: int) -> str:
    return f"{host}:{epoch}:lost:{from_seq}"


def status_msg_id(kind: str, host: str, epoch: str, after: int) -> str:
    """The id of a fleet aggregator's ``host.up`` (``kind`` "up") or ``host.down``."""
    return f"fleet:{host}:{epoch}:{kind}:{after}"


def parse_status_msg_id(value: str, host: str) -> tuple[str, str, int] | None:
    """``(epoch, kind, after)`` of a :func:`status_msg_id` about ``host``, or None."""
    prefix = f"fleet:{host}:"
    if not value.startswith(prefix):
        return None
    parts = value[len(prefix):].split(":")
    if len(parts) != 3 or parts[1] not in ("up", "down") or not parts[2].isdigit() or not parts[0]:
        return None
    return parts[0], parts[1], int(parts[2])


def parse_msg_id(value: str, host: str, epoch: str) -> tuple[bool, int] | None:
    """``(is a host.lost record, seq or from_seq)`` when ``value`` is the id of one of
    ``host``'s messages of run ``epoch``; None otherwise."""
    prefix = f"{host}:{epoch}:"
    if not value.startswith(prefix):
        return None
    rest = value[len(prefix):]
    lost = rest.startswith("lost:")
    if lost:
        rest = rest[5:]
    if not rest.isdigit():
        return None
    return lost, int(rest)


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a NATS subject filter (``*`` one token, ``>`` the rest) takes ``subject``."""
    pat = pattern.split(".")
    sub = subject.split(".")
    for i, p in enumerate(pat):
        if p == ">":
            return len(sub) > i
        if i >= len(sub) or (p != "*" and p != sub[i]):
            return False
    return len(pat) == len(sub)


def check_name(kind: str, name: str) -> str:
    """A stream, bucket or consumer name as NATS accepts it, or ValueError."""
    if not _NAME.match(name):
        raise ValueError(f"{kind} {name!r}: use 1-64 letters, digits, '-' or '_'")
    return name
