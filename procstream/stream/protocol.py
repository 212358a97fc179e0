"""The wire protocol of ``/ws``, without any I/O.

This module turns what a client sends — the query string of the ``/ws`` URL and text
frames like ``{"op": "subscribe", ...}`` — into a validated :class:`Subscription`, and
builds the control objects the server sends (``hello``, ``snapshot``, ``reset``,
``overflow``, ``bookmark``, ``subscribed``, ``error``). Every frame on the wire is a JSON
array; :func:`frame` wraps objects accordingly.

Everything here is pure: the hub and the server call it; tests call it directly.
Validation errors raise :class:`ProtocolError`, whose message is meant for the client:
it says which field was wrong and what was expected.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import orjson

from ..schema import EVENT_TYPES, GroupFields, ProcFields

__all__ = [
    "PROTOCOL_VERSION",
    "EVENT_TYPES",
    "CONTROL_TYPES",
    "NO_GROUP",
    "Filter",
    "Subscription",
    "ProtocolError",
    "AbuseGuard",
    "expand_types",
    "parse_query",
    "parse_frame",
    "hello",
    "snapshot",
    "reset",
    "overflow",
    "bookmark",
    "subscribed",
    "error",
    "frame",
    "encode",
]

PROTOCOL_VERSION: Final = 1

#: Types of the control objects; they carry no ``seq`` of their own.
CONTROL_TYPES: Final[frozenset[str]] = frozenset(
    {"hello", "snapshot", "reset", "overflow", "bookmark", "subscribed", "error"}
)

#: Marker for "this event has no group" (``cycle``): such events pass any groups filter.
NO_GROUP: Final[object] = object()

# Limits on what a client may ask for; inbound frames are small anyway (server max_size),
# these keep one request from building a silly filter.
_MAX_NAMES: Final = 1024
_MAX_NAME_LEN: Final = 256
_MAX_SEQ: Final = 2**63 - 1
_MAX_EPOCH_LEN: Final = 128

_SUBSCRIBE_FIELDS: Final = frozenset({"op", "types", "groups", "since", "epoch", "snapshot"})
_QUERY_FIELDS: Final = frozenset({"types", "groups", "since", "epoch", "snapshot", "token"})
# A fleet aggregator also filters by host; a single host's server does not know the word.
_HOSTS: Final = frozenset({"hosts"})
_KNOWN_OPS: Final = ("subscribe",)


class ProtocolError(ValueError):
    """A client request that can't be honoured; ``str(exc)`` is the message for the client.

    ``op`` is the operation the bad request was for (``"subscribe"``), or ``None`` when
    it could not be told (malformed JSON, missing ``op``) or came from the URL's query.
    """

    def __init__(self, message: str, op: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.op = op


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events a subscriber wants: event types, group names and (from a fleet
    aggregator) host names, ``None`` = all.

    Filters are canonical (wildcards expanded, "every type" folded to ``None``) and
    hashable, so the hub can group subscribers by filter and encode each batch once per
    distinct filter.
    """

    types: frozenset[str] | None = None
    groups: frozenset[str] | None = None
    hosts: frozenset[str] | None = None

    @property
    def everything(self) -> bool:
        """True when the filter lets every event through."""
        return self.types is None and self.groups is None and self.hosts is None

    def matches(self, type_: object, group: object, host: object = None) -> bool:
        """Whether an event of this type, group and host passes; ``group`` is
        :data:`NO_GROUP` for events without a group (``cycle``), which pass any groups
        filter."""
        if self.types is not None and type_ not in self.types:
            return False
        if self.groups is not None and group is not NO_GROUP and group not in self.groups:
            return False
        if self.hosts is not None and host not in self.hosts:
            return False
        return True

    def matches_event(self, event: Mapping[str, Any]) -> bool:
        """:meth:`matches` for an event dict."""
        return self.matches(event.get("type"), event.get("group", NO_GROUP), event.get("host"))

    def to_json(self) -> dict[str, list[str] | None]:
        """The filter as sent in ``hello``/``subscribed``: sorted lists, ``null`` = all
        (``hosts`` only when the filter names hosts)."""
        out = {
            "types": None if self.types is None else [t for t in EVENT_TYPES if t in self.types]
            + sorted(self.types.difference(EVENT_TYPES)),
            "groups": None if self.groups is None else sorted(self.groups),
        }
        if self.hosts is not None:
            out["hosts"] = sorted(self.hosts)
        return out


@dataclass(frozen=True, slots=True)
class Subscription:
    """A validated subscription request, from the URL or from a ``subscribe`` frame.

    ``since``/``epoch`` ask for a resume ("I have every event up to ``since`` of
    ``epoch``"); they come together or not at all. ``snapshot=False`` asks for live
    events only: no state is ever sent (not on connect, reset or overflow).
    """

    filter: Filter = Filter()
    since: int | None = None
    epoch: str | None = None
    snapshot: bool = True
    token: str | None = None

    @property
    def types(self) -> frozenset[str] | None:
        """Event types wanted (wildcards expanded), ``None`` = all."""
        return self.filter.types

    @property
    def groups(self) -> frozenset[str] | None:
        """Group names wanted, ``None`` = all."""
        return self.filter.groups


class AbuseGuard:
    """Counts bad requests in a sliding window; call :meth:`record` for each one.

    ``record`` returns True once more than ``limit`` bad requests arrived within
    ``window`` seconds — the caller then closes the connection with 1008.
    """

    __slots__ = ("limit", "window", "_times")

    def __init__(self, limit: int = 20, window: float = 10.0) -> None:
        self.limit = limit
        self.window = window
        # Only the last limit+1 timestamps matter for "more than limit within window".
        self._times: collections.deque[float] = collections.deque(maxlen=limit + 1)

    def record(self, now: float) -> bool:
        """Note one bad request at time ``now``; True if the client is now abusive."""
        self._times.append(now)
        return len(self._times) > self.limit and now - self._times[0] <= self.window


# -- parsing ----------------------------------------------------------------------------


def expand_types(names: Iterable[str], *, where: str = "types") -> frozenset[str] | None:
    """Validate event type names and expand wildcards (``proc.*``, ``*``).

    Returns ``None`` when the names cover every event type (no type filter), so that
    equivalent filters compare equal. An empty input also means "every type".
    """
    wanted: set[str] = set()
    seen_any = False
    for name in names:
        seen_any = True
        if not isinstance(name, str):
            raise ProtocolError(f"{where} must be a list of strings", _op_of(where))
        name = name.strip()
        if not name:
            raise ProtocolError(f"{where} contains an empty type name", _op_of(where))
        if name == "*":
            return None
        if name.endswith(".*"):
            prefix = name[:-1]  # keep the dot: "proc." matches "proc.start", not "process"
            matched = [t for t in EVENT_TYPES if t.startswith(prefix)]
            if not matched:
                raise ProtocolError(
                    f"{where}: wildcard {name!r} matches no event type "
                    f"(known: {', '.join(EVENT_TYPES)})",
                    _op_of(where),
                )
            wanted.update(matched)
        elif name in EVENT_TYPES:
            wanted.add(name)
        else:
            raise ProtocolError(
                f"{where}: unknown event type {name!r} "
                f"(known: {', '.join(EVENT_TYPES)}; wildcards like proc.*)",
                _op_of(where),
            )
    if not seen_any or wanted.issuperset(EVENT_TYPES):
        return None
    return frozenset(wanted)


def _op_of(where: str) -> str | None:
    # Messages about frame fields are for op "subscribe"; about the URL, for no op.
    return None if where.startswith("query") else "subscribe"


def _groups(names: Iterable[object], *, where: str, what: str = "group") -> frozenset[str] | None:
    result: set[str] = set()
    for name in names:
        if not isinstance(name, str):
            raise ProtocolError(f"{where} must be a list of strings", _op_of(where))
        if not name or len(name) > _MAX_NAME_LEN:
            raise ProtocolError(
                f"{where}: {what} names must be 1 to {_MAX_NAME_LEN} characters", _op_of(where)
            )
        result.add(name)
        if len(result) > _MAX_NAMES:
            raise ProtocolError(f"{where}: more than {_MAX_NAMES} {what}s", _op_of(where))
    return frozenset(result) if result else None


def _check_resume(since: int | None, epoch: str | None, *, op: str | None) -> None:
    if since is not None and epoch is None:
        raise ProtocolError('"since" needs "epoch" (a resume point is a seq within an epoch)', op)
    if epoch is not None and since is None:
        raise ProtocolError('"epoch" needs "since" (the last seq you have)', op)
    if epoch is not None and (not epoch or len(epoch) > _MAX_EPOCH_LEN):
        raise ProtocolError(f'"epoch" must be 1 to {_MAX_EPOCH_LEN} characters', op)


def parse_query(query: str | Mapping[str, str | Sequence[str]], *, hosts: bool = False) -> Subscription:
    """Parse the query of a ``/ws`` URL (a full path like ``/ws?types=cycle`` also works).

    ``types`` and ``groups`` (and with ``hosts=True``, a fleet aggregator's, ``hosts``)
    are comma lists and may be repeated (the values add up); ``since``, ``epoch``,
    ``snapshot`` and ``token`` may appear once. An unknown parameter is an error rather
    than silently ignored: a typo (``type=``) would otherwise turn a filtered
    subscription into "everything".
    """
    pairs: list[tuple[str, str]]
    if isinstance(query, str):
        if "?" in query or query.startswith("/"):
            query = urlsplit(query).query
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
        except ValueError as exc:  # e.g. too many fields
            raise ProtocolError(f"malformed query string: {exc}") from None
    else:
        pairs = []
        for key, value in query.items():
            if isinstance(value, str):
                pairs.append((key, value))
            else:
                pairs.extend((key, v) for v in value)

    known = _QUERY_FIELDS | _HOSTS if hosts else _QUERY_FIELDS
    lists: dict[str, list[str]] = {"types": [], "groups": [], "hosts": []}
    scalars: dict[str, str] = {}
    for key, value in pairs:
        if key not in known:
            raise ProtocolError(
                f"unknown query parameter {key!r} (known: {', '.join(sorted(known))})"
            )
        if key in lists:
            lists[key].extend(part for part in value.split(",") if part.strip())
        elif key in scalars:
            raise ProtocolError(f"query parameter {key!r} given more than once")
        else:
            scalars[key] = value

    types = expand_types(lists["types"], where="query parameter 'types'")
    groups = _groups(
        (g.strip() for g in lists["groups"]), where="query parameter 'groups'"
    )
    host_names = _groups(
        (h.strip() for h in lists["hosts"]), where="query parameter 'hosts'", what="host"
    )

    since: int | None = None
    if "since" in scalars:
        raw = scalars["since"].strip()
        if not raw.isdigit() or int(raw) > _MAX_SEQ:
            raise ProtocolError("query parameter 'since' must be a non-negative integer")
        since = int(raw)
    epoch = scalars.get("epoch")
    _check_resume(since, epoch, op=None)

    snapshot = True
    if "snapshot" in scalars:
        raw = scalars["snapshot"].strip().lower()
        if raw in ("1", "true", "yes"):
            snapshot = True
        elif raw in ("0", "false", "no"):
            snapshot = False
        else:
            raise ProtocolError("query parameter 'snapshot' must be 0 or 1")

    return Subscription(
        filter=Filter(types, groups, host_names),
        since=since,
        epoch=epoch,
        snapshot=snapshot,
        token=scalars.get("token"),
    )


def parse_frame(data: str | bytes, *, hosts: bool = False) -> Subscription:
    """Parse one inbound text frame; the only op is ``subscribe``.

    ``{"op": "subscribe", "types": [...], "groups": [...], "since": N, "epoch": "...",
    "snapshot": true}`` (and with ``hosts=True``, ``"hosts": [...]``) — every field but
    ``op`` is optional; ``null`` or an empty list means "all". Raises
    :class:`ProtocolError` for malformed JSON, a non-object, an unknown or missing op,
    unknown fields and wrongly typed values.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError('expected a JSON object like {"op": "subscribe", ...}')
    op = obj.get("op")
    if op is None:
        raise ProtocolError('missing "op" (known ops: subscribe)')
    if not isinstance(op, str):
        raise ProtocolError('"op" must be a string')
    if op not in _KNOWN_OPS:
        raise ProtocolError(f"unknown op {op!r} (known ops: {', '.join(_KNOWN_OPS)})", op)

    fields = _SUBSCRIBE_FIELDS | _HOSTS if hosts else _SUBSCRIBE_FIELDS
    unknown = sorted(set(obj) - fields)
    if unknown:
        raise ProtocolError(
            f"unknown field {unknown[0]!r} for op 'subscribe' "
            f"(known: {', '.join(sorted(fields - {'op'}))})",
            op,
        )

    types = _list_field(obj, "types")
    groups = _list_field(obj, "groups")
    host_names = _list_field(obj, "hosts")
    filt = Filter(
        expand_types(types, where='"types"') if types else None,
        _groups(groups, where='"groups"') if groups else None,
        _groups(host_names, where='"hosts"', what="host") if host_names else None,
    )

    since = obj.get("since")
    if since is not None and (
        isinstance(since, bool) or not isinstance(since, int) or not 0 <= since <= _MAX_SEQ
    ):
        raise ProtocolError('"since" must be a non-negative integer', op)
    epoch = obj.get("epoch")
    if epoch is not None and not isinstance(epoch, str):
        raise ProtocolError('"epoch" must be a string', op)
    _check_resume(since, epoch, op=op)

    snapshot = obj.get("snapshot", True)
    if snapshot is None:
        snapshot = True
    if not isinstance(snapshot, bool):
        raise ProtocolError('"snapshot" must be true or false', op)

    return Subscription(filter=filt, since=since, epoch=epoch, snapshot=snapshot)


def _list_field(obj: Mapping[str, Any], name: str) -> list[Any]:
    value = obj.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProtocolError(f'"{name}" must be a list of strings or null', "subscribe")
    if len(value) > _MAX_NAMES:
        raise ProtocolError(f'"{name}": more than {_MAX_NAMES} entries', "subscribe")
    return value


# -- control objects ------------------------------------------------------------------------


def hello(
    *,
    server: str,
    host: str,
    epoch: str,
    head_seq: int,
    oldest_seq: int,
    interval: float,
    filter: Filter | None,
) -> dict[str, Any]:
    """The first object on every connection. ``filter`` is ``None`` when the URL's
    subscription was rejected (an ``error`` follows; the client may send ``subscribe``)."""
    return {
        "type": "hello",
        "v": PROTOCOL_VERSION,
        "server": server,
        "host": host,
        "epoch": epoch,
        "head_seq": head_seq,
        "oldest_seq": oldest_seq,
        "interval": interval,
        "filter": None if filter is None else filter.to_json(),
    }


def snapshot(
    *, seq: int, host: str, epoch: str, groups: dict[str, GroupFields], procs: list[ProcFields]
) -> dict[str, Any]:
    """The state as of ``seq``: each group's fields by name, and every process's identity.
    Sent after ``hello`` (unless ``snapshot=0``), and after a ``reset`` or ``overflow``."""
    return {"type": "snapshot", "seq": seq, "host": host, "epoch": epoch, "groups": groups, "procs": procs}


def reset(reason: str, *, seq: int, epoch: str, since: int | None = None) -> dict[str, Any]:
    """``since`` could not be honoured. ``reason``: ``epoch`` (another server run),
    ``expired`` (older than the resume buffer), ``future`` (beyond the head), ``resync``
    (the server re-read its state). The stream continues after ``seq`` (a snapshot as
    of ``seq`` follows unless the subscriber asked for ``snapshot=0``)."""
    obj: dict[str, Any] = {"type": "reset", "reason": reason, "seq": seq, "epoch": epoch}
    if since is not None:
        obj["since"] = since
    return obj


def overflow(dropped: int, from_seq: int, to_seq: int) -> dict[str, Any]:
    """This subscriber fell behind: ``dropped`` events of ``from_seq..to_seq`` (those its
    filter selects) were skipped; a snapshot as of ``to_seq`` follows."""
    return {"type": "overflow", "dropped": dropped, "from_seq": from_seq, "to_seq": to_seq}


def bookmark(seq: int) -> dict[str, Any]:
    """Keepalive after silence: the subscriber has everything (its filter selects) up to ``seq``."""
    return {"type": "bookmark", "seq": seq}


def subscribed(filter: Filter, seq: int) -> dict[str, Any]:
    """Acknowledges a ``subscribe`` frame: the new filter applies to events after ``seq``
    (or to the replay/snapshot that follows)."""
    return {"type": "subscribed", "filter": filter.to_json(), "seq": seq}


def error(message: str, op: str | None = None) -> dict[str, Any]:
    """A bad request; the connection stays open."""
    return {"type": "error", "error": message, "op": op}


def encode(obj: Any) -> bytes:
    """One object as JSON bytes (orjson)."""
    return orjson.dumps(obj)


def frame(*objs: Mapping[str, Any]) -> bytes:
    """One wire frame: a JSON array of the given objects, in order."""
    return orjson.dumps(objs)
