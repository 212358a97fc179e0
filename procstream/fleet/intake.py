"""One message of the stream as a fleet aggregator takes it (pure).

Every message becomes exactly one event for the aggregator's clients, numbered with the
message's stream sequence: that keeps the fleet's ``seq`` gap-free and the same in every
aggregator of the stream. What a host published comes out as it is, but for its
``seq`` (the host's own ``seq`` names the event within the host's run, in the message
id). A message that is not a procstream event keeps its place as a ``host.lost`` with
``reason`` ``invalid`` (and a message missing from the stream, deleted, as one with
``reason`` ``deleted``), so a client's count never jumps.

Hosts are not trusted further than their subjects: an event must name the host its
subject belongs to, carry the message id of that host, be of a type the subject names
(never a control object's), and have the fields the state is keyed by of the right
kind. Anything else is ``invalid``; it is counted and never reaches a host's state.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ..schema import EVENT_TYPES, HOST_DOWN, HOST_LOST, HOST_UP, Event
from .subjects import MSG_ID, PREFIX, host_token, parse_status_msg_id

__all__ = ["Incoming", "decode", "filler", "MAX_EVENT_BYTES", "DELETED", "INVALID"]

#: A bigger message is not an event of ours (serve caps what processes supply).
MAX_EVENT_BYTES: Final = 256 * 1024
DELETED: Final = "deleted"
INVALID: Final = "invalid"

# A type of the future has a dot, like every event type but cycle; control objects have none.
_TYPE: Final = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
_EPOCH: Final = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_STATUS_TYPES: Final = frozenset({HOST_UP, HOST_DOWN})


@dataclass(slots=True)
class Incoming:
    """One stream message, decoded. ``event`` is what clients get; ``epoch`` and
    ``host_seq`` place it in its host's run (``epoch`` None: not a host's message)."""

    seq: int
    ts: float
    event: Event
    epoch: str | None = None
    host_seq: int = 0
    reason: str | None = None  # why the message could not be used

    @property
    def usable(self) -> bool:
        return self.reason is None


def filler(seq: int, ts: float, reason: str, host: str = "") -> Incoming:
    """The ``host.lost`` that keeps the place of a message that can't be used."""
    event: Any = {"type": HOST_LOST, "ts": ts, "host": host, "epoch": None, "from_seq": None,
                  "to_seq": None, "count": 1, "reason": reason, "seq": seq}
    return Incoming(seq, ts, event, reason=reason)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode(subject: str, headers: Mapping[str, str] | None, data: bytes, seq: int, ts: float) -> Incoming:
    """The event for stream message ``seq`` (stored at ``ts``, epoch seconds)."""
    parts = subject.split(".", 2)
    token = parts[1] if len(parts) == 3 and parts[0] == PREFIX else ""
    if not token or len(data) > MAX_EVENT_BYTES:
        return filler(seq, ts, INVALID, token)
    try:
        ev = orjson.loads(data)
    except orjson.JSONDecodeError:
        return filler(seq, ts, INVALID, token)
    if not isinstance(ev, dict):
        return filler(seq, ts, INVALID, token)
    typ = ev.get("type")
    host = ev.get("host")
    if (typ != parts[2] or not isinstance(typ, str) or not (typ in EVENT_TYPES or _TYPE.match(typ))
            or not isinstance(host, str)
            or host_token(host) != token or not _number(ev.get("ts"))):
        return filler(seq, ts, INVALID, token)
    ident = (headers or {}).get(MSG_ID, "")
    if typ in _STATUS_TYPES:
        found = parse_status_msg_id(ident, host)
        if (found is None or found[1] != typ[5:] or ev.get("epoch") != found[0]
                or not _number(ev.get("last_seen"))):
            return filler(seq, ts, INVALID, token)
        ev["seq"] = seq
        return Incoming(seq, ts, ev, found[0], found[2])
    epoch, _, rest = ident[len(host) + 1:].partition(":") if ident.startswith(host + ":") else ("", "", "")
    if not _EPOCH.match(epoch):
        return filler(seq, ts, INVALID, token)
    if typ == HOST_LOST:
        first, last = ev.get("from_seq"), ev.get("to_seq")
        if (rest != f"lost:{first}" or ev.get("epoch") != epoch or not _int(first) or not _int(last)
                or not 0 < first <= last):  # type: ignore[operator]
            return filler(seq, ts, INVALID, token)
        ev["seq"] = seq
        return Incoming(seq, ts, ev, epoch, last)  # type: ignore[arg-type]
    host_seq = ev.get("seq")
    if not _int(host_seq) or host_seq < 1 or rest != str(host_seq) or not _fields_ok(typ, ev):  # type: ignore[operator]
        return filler(seq, ts, INVALID, token)
    ev["seq"] = seq
    return Incoming(seq, ts, ev, epoch, host_seq)  # type: ignore[arg-type]


def _fields_ok(typ: str, ev: Mapping[str, Any]) -> bool:
    """The fields a host's state is keyed by have the right kind (so that no message
    can break the state)."""
    if typ.startswith("proc."):
        return _int(ev.get("pid")) and _number(ev.get("start_time")) and isinstance(ev.get("group"), str)
    if typ.startswith("group."):
        return isinstance(ev.get("group"), str)
    return typ not in (HOST_LOST, HOST_UP, HOST_DOWN)
