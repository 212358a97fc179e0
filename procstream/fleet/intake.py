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

__all__ = ["Incoming", "Intake", "filler", "MAX_EVENT_BYTES", "DELETED", "INVALID"]

#: A bigger message is not an event of ours (serve caps what processes supply).
MAX_EVENT_BYTES: Final = 256 * 1024
DELETED: Final = "deleted"
INVALID: Final = "invalid"

# A type of the future has a dot, like every event type but cycle; control objects have none.
_TYPE: Final = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
_EPOCH: Final = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_STATUS_TYPES: Final = frozenset({HOST_UP, HOST_DOWN})
_KNOWN_TYPES: Final = frozenset(EVENT_TYPES)
# What a host's state keys each type by: 1 a process (pid, start time, group), 2 a
# group, 0 nothing.
_KIND: Final = {t: 1 if t.startswith("proc.") else 2 if t.startswith("group.") else 0 for t in EVENT_TYPES}
# What the hosts' names and runs checked out as, so that a message of a host seen before
# costs no regular expression; forgotten all at once past this many.
_CACHE_MAX: Final = 65_536


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


class Intake:
    """Decodes stream messages (:meth:`decode`); remembers the host names and runs it
    checked, so that a host's next message costs no regular expression."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}  # host name -> its subject token
        self._epochs: set[str] = set()  # run ids that are well formed

    def _token(self, host: str) -> str:
        token = self._tokens.get(host)
        if token is None:
            if len(self._tokens) >= _CACHE_MAX:
                self._tokens.clear()
            token = self._tokens[host] = host_token(host)
        return token

    def _epoch_ok(self, epoch: str) -> bool:
        if epoch in self._epochs:
            return True
        if not _EPOCH.match(epoch):
            return False
        if len(self._epochs) >= _CACHE_MAX:
            self._epochs.clear()
        self._epochs.add(epoch)
        return True

    def decode(self, subject: str, headers: Mapping[str, str] | None, data: bytes, seq: int, ts: float) -> Incoming:
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
        when = type(ev.get("ts"))
        if (typ != parts[2] or type(typ) is not str or not (typ in _KNOWN_TYPES or _TYPE.match(typ))
                or type(host) is not str or (self._tokens.get(host) or self._token(host)) != token
                or (when is not float and when is not int)):
            return filler(seq, ts, INVALID, token)
        ident = headers.get(MSG_ID, "") if headers else ""
        if typ in _STATUS_TYPES:
            found = parse_status_msg_id(ident, host)
            if (found is None or found[1] != typ[5:] or ev.get("epoch") != found[0]
                    or not _number(ev.get("last_seen"))):
                return filler(seq, ts, INVALID, token)
            ev["seq"] = seq
            return Incoming(seq, ts, ev, found[0], found[2])
        if typ == HOST_LOST:
            # <host>:<epoch>:lost:<from_seq>
            name, epoch, lost, first_text = (ident.rsplit(":", 3) + ["", "", "", ""])[:4]
            first, last = ev.get("from_seq"), ev.get("to_seq")
            if (name != host or lost != "lost" or not self._epoch_ok(epoch) or ev.get("epoch") != epoch
                    or not _int(first) or not _int(last) or first_text != str(first)
                    or not 0 < first <= last):  # type: ignore[operator]
                return filler(seq, ts, INVALID, token)
            ev["seq"] = seq
            return Incoming(seq, ts, ev, epoch, last)  # type: ignore[arg-type]
        # <host>:<epoch>:<seq> (the host's name may hold a colon; the rest never does)
        try:
            name, epoch, number = ident.rsplit(":", 2)
        except ValueError:
            return filler(seq, ts, INVALID, token)
        host_seq = ev.get("seq")
        if (name != host or type(host_seq) is not int or number != str(host_seq) or host_seq < 1
                or (epoch not in self._epochs and not self._epoch_ok(epoch)) or not _fields_ok(typ, ev)):
            return filler(seq, ts, INVALID, token)
        ev["seq"] = seq
        return Incoming(seq, ts, ev, epoch, host_seq)


def _fields_ok(typ: str, ev: Mapping[str, Any]) -> bool:
    """The fields a host's state is keyed by have the right kind (so that no message
    can break the state)."""
    kind = _KIND.get(typ)
    if kind is None:  # a type of the future
        kind = 1 if typ.startswith("proc.") else 2 if typ.startswith("group.") else 0
    if kind == 1:
        when = type(ev.get("start_time"))
        return (type(ev.get("pid")) is int and (when is float or when is int)
                and type(ev.get("group")) is str)
    if kind == 2:
        return type(ev.get("group")) is str
    return True
