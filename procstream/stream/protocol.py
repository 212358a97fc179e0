"""The wire protocol of ``/ws``, without any I/O.

This module turns what a client sends — the query string of the ``/ws`` URL and text
frames like ``{"op": "subscribe", ...}`` — into a validated :class:`Subscription`, and
builds the control objects the server sends (``hello``, ``snapshot``, ``reset``,
``overflow``, ``bookmark``, ``subscribed``, ``error``). Every frame on the wire is a JSON
array; :func:`frame` wraps objects accordingly.

Everything here is pure: the hub and the server call it; tests call it directly.
Validation errors raise :class:`ProtocolError`, whose message is meant for the client:
it says which field was wrong and what was expected; nothing a client sends raises
anything else. Encoding never raises either (:func:`encode`): what one producer put in
an event must not stop the stream for everyone.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import orjson

from ..schema import (
    DEFAULT_TYPES,
    EVENT_TYPES,
    EXPLICIT_TYPES,
    PROC_UPDATE,
    STRING_MAX_BYTES,
    GroupFields,
    ProcFields,
    cap_cmdline,
    cut_text,
)

__all__ = [
    "PROTOCOL_VERSION",
    "EVENT_TYPES",
    "CONTROL_TYPES",
    "NO_GROUP",
    "update_key",
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
    "plain",
    "snapshot_parts",
    "shrink",
]

PROTOCOL_VERSION: Final = 1

#: Types of the control objects; they carry no ``seq`` of their own.
CONTROL_TYPES: Final[frozenset[str]] = frozenset(
    {"hello", "snapshot", "reset", "overflow", "bookmark", "subscribed", "error"}
)

#: Marker for "this event has no group" (``cycle``): such events pass any groups filter.
NO_GROUP: Final[object] = object()


def update_key(group: object, pid: object) -> tuple[object, object]:
    """What :meth:`Filter.matches` takes as the "group" of a ``proc.update`` event: its
    group and its pid, as ``pids`` select among those events."""
    return (group, pid)

# Limits on what a client may ask for; inbound frames are small anyway (server max_size),
# these keep one request from building a silly filter.
_MAX_NAMES: Final = 1024
_MAX_NAME_LEN: Final = 256
_MAX_SEQ: Final = 2**63 - 1
_MAX_EPOCH_LEN: Final = 128

_MAX_PID: Final = 2**22  # the kernel's PID_MAX_LIMIT
_SUBSCRIBE_FIELDS: Final = frozenset({"op", "types", "groups", "pids", "since", "epoch", "snapshot"})
_QUERY_FIELDS: Final = frozenset({"types", "groups", "pids", "since", "epoch", "snapshot", "token"})
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
    """Which events a subscriber wants: event types and group names (and, from a fleet
    aggregator, host names), ``None`` = all; and ``pids``, which (like ``groups``) select
    the processes whose ``proc.update`` events are sent.

    ``types`` ``None`` means every type but those sent only when named
    (:data:`~procstream.schema.EXPLICIT_TYPES`: ``proc.update``). A ``proc.update``
    passes when its group is in ``groups`` or its pid in ``pids`` (every process when both
    are ``None``); ``pids`` narrows no other type. ``hosts`` narrows every type.

    Filters are canonical (wildcards expanded, "every type" folded to ``None``) and
    hashable, so the hub can group subscribers by filter and encode each batch once per
    distinct filter.
    """

    types: frozenset[str] | None = None
    groups: frozenset[str] | None = None
    pids: frozenset[int] | None = None
    hosts: frozenset[str] | None = None

    @property
    def everything(self) -> bool:
        """True when the filter lets every event through but ``proc.update`` (which it
        never does unless named)."""
        return self.types is None and self.groups is None and self.hosts is None

    @property
    def wants_updates(self) -> bool:
        """Whether ``proc.update`` events are named in :attr:`types`."""
        return self.types is not None and PROC_UPDATE in self.types

    def matches(self, type_: object, group: object, host: object = None) -> bool:
        """Whether an event of this type, group and host passes; ``group`` is
        :data:`NO_GROUP` for events without a group (``cycle``), which pass any groups
        filter, and :func:`update_key` for a ``proc.update``."""
        if self.hosts is not None and host not in self.hosts:
            return False
        types = self.types
        if type_ == PROC_UPDATE:
            if types is None or type_ not in types:
                return False
            groups, pids = self.groups, self.pids
            if groups is None and pids is None:
                return True
            name, pid = group  # type: ignore[misc]
            return (groups is not None and name in groups) or (pids is not None and pid in pids)
        if types is not None and type_ not in types:
            return False
        if self.groups is not None and group is not NO_GROUP and group not in self.groups:
            return False
        return True

    def matches_event(self, event: Mapping[str, Any]) -> bool:
        """:meth:`matches` for an event dict."""
        type_ = event.get("type")
        host = event.get("host")
        if type_ == PROC_UPDATE:
            return self.matches(type_, update_key(event.get("group"), event.get("pid")), host)
        return self.matches(type_, event.get("group", NO_GROUP), host)

    def to_json(self) -> dict[str, list[Any] | None]:
        """The filter as sent in ``hello``/``subscribed``: sorted lists, ``null`` = all;
        ``pids`` only when the filter has some, ``hosts`` only when it names hosts."""
        obj: dict[str, list[Any] | None] = {
            "types": None if self.types is None else [t for t in EVENT_TYPES if t in self.types]
            + sorted(self.types.difference(EVENT_TYPES)),
            "groups": None if self.groups is None else sorted(self.groups),
        }
        if self.pids is not None:
            obj["pids"] = sorted(self.pids)
        if self.hosts is not None:
            obj["hosts"] = sorted(self.hosts)
        return obj


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

    @property
    def pids(self) -> frozenset[int] | None:
        """Processes whose ``proc.update`` is wanted (besides those of :attr:`groups`)."""
        return self.filter.pids


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
    equivalent filters compare equal. An empty input also means "every type". Wildcards
    and "every type" leave out the types sent only when named (``proc.update``): naming
    one gives an explicit set of types.
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
            wanted.update(DEFAULT_TYPES)
        elif name.endswith(".*"):
            prefix = name[:-1]  # keep the dot: "proc." matches "proc.start", not "process"
            matched = [t for t in DEFAULT_TYPES if t.startswith(prefix)]
            if not matched:
                raise ProtocolError(
                    f"{where}: wildcard {name!r} matches no event type "
                    f"(known: {', '.join(EVENT_TYPES)}; {', '.join(sorted(EXPLICIT_TYPES))} only by name)",
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
    if not seen_any or (wanted.issuperset(DEFAULT_TYPES) and wanted.isdisjoint(EXPLICIT_TYPES)):
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


def _pids(values: Iterable[object], *, where: str, text: bool = False) -> frozenset[int] | None:
    """Process ids: integers (JSON), or strings of digits with ``text`` (a URL)."""
    result: set[int] = set()
    for value in values:
        if text and isinstance(value, str):
            value = value.strip()
            value = int(value) if value.isdigit() and len(value) <= 8 else None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_PID:
            raise ProtocolError(f"{where} must be process ids (integers from 1 to {_MAX_PID})", _op_of(where))
        result.add(value)
        if len(result) > _MAX_NAMES:
            raise ProtocolError(f"{where}: more than {_MAX_NAMES} pids", _op_of(where))
    return frozenset(result) if result else None


def _check_pids(filt: Filter, *, op: str | None) -> None:
    # pids select proc.update events only: without that type they would silently select
    # nothing, which a typo should not do
    if filt.pids is not None and not filt.wants_updates:
        raise ProtocolError('"pids" selects proc.update events: add proc.update to "types"', op)


def _check_resume(since: int | None, epoch: str | None, *, op: str | None) -> None:
    if since is not None and epoch is None:
        raise ProtocolError('"since" needs "epoch" (a resume point is a seq within an epoch)', op)
    if epoch is not None and since is None:
        raise ProtocolError('"epoch" needs "since" (the last seq you have)', op)
    if epoch is not None and (not epoch or len(epoch) > _MAX_EPOCH_LEN):
        raise ProtocolError(f'"epoch" must be 1 to {_MAX_EPOCH_LEN} characters', op)


def parse_query(query: str | Mapping[str, str | Sequence[str]], *, hosts: bool = False) -> Subscription:
    """Parse the query of a ``/ws`` URL (a full path like ``/ws?types=cycle`` also works).

    ``types``, ``groups`` and ``pids`` (and with ``hosts=True``, a fleet aggregator's,
    ``hosts``) are comma lists and may be repeated (the values add up); ``since``,
    ``epoch``, ``snapshot`` and ``token`` may appear once. An unknown parameter is an
    error rather than silently ignored: a typo (``type=``) would otherwise turn a
    filtered subscription into "everything".
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
    lists: dict[str, list[str]] = {"types": [], "groups": [], "pids": [], "hosts": []}
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
    pids = _pids(lists["pids"], where="query parameter 'pids'", text=True)
    filt = Filter(types, groups, pids, host_names)
    _check_pids(filt, op=None)

    since: int | None = None
    if "since" in scalars:
        raw = scalars["since"].strip()
        # isascii(): str.isdigit() also accepts digits int() refuses, like '²'
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > _MAX_SEQ:
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
        filter=filt,
        since=since,
        epoch=epoch,
        snapshot=snapshot,
        token=scalars.get("token"),
    )


def parse_frame(data: str | bytes, *, hosts: bool = False) -> Subscription:
    """Parse one inbound text frame; the only op is ``subscribe``.

    ``{"op": "subscribe", "types": [...], "groups": [...], "pids": [...], "since": N,
    "epoch": "...", "snapshot": true}`` (and with ``hosts=True``, ``"hosts": [...]``) —
    every field but ``op`` is optional; ``null`` or an empty list means "all". Raises
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
    pids = _list_field(obj, "pids", "integers")
    host_names = _list_field(obj, "hosts")
    filt = Filter(
        expand_types(types, where='"types"') if types else None,
        _groups(groups, where='"groups"') if groups else None,
        _pids(pids, where='"pids"') if pids else None,
        _groups(host_names, where='"hosts"', what="host") if host_names else None,
    )
    _check_pids(filt, op=op)

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


def _list_field(obj: Mapping[str, Any], name: str, of: str = "strings") -> list[Any]:
    value = obj.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProtocolError(f'"{name}" must be a list of {of} or null', "subscribe")
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
    *,
    seq: int,
    host: str,
    epoch: str,
    groups: dict[str, GroupFields],
    procs: list[ProcFields],
    part: int | None = None,
    parts: int | None = None,
) -> dict[str, Any]:
    """The state as of ``seq``: each group's fields by name, and every process's identity.
    Sent after ``hello`` (unless ``snapshot=0``), and after a ``reset`` or ``overflow``.

    On a WebSocket it comes in ``parts`` objects (1 when it is small), numbered by
    ``part`` from 1, each with some of the groups and processes, so that no frame grows
    with the host; ``/api/snapshot`` sends it whole, without these two fields."""
    obj: dict[str, Any] = {"type": "snapshot", "seq": seq, "host": host, "epoch": epoch}
    if part is not None:
        obj["part"] = part
        obj["parts"] = parts
    obj["groups"] = groups
    obj["procs"] = procs
    return obj


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
    """One object as JSON bytes; never raises.

    orjson first. What it refuses is made plain and encoded again (:func:`plain`): a
    value of another type becomes its ``str()``, an integer beyond 64 bits the nearest
    bound, a key that is not a string its ``str()``. The result is an exact-size copy:
    orjson hands back bytes with spare capacity, and buffers keep many of them.
    """
    try:
        data = orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError is one
        data = orjson.dumps(plain(obj))
    return memoryview(data).tobytes()


def frame(*objs: Mapping[str, Any]) -> bytes:
    """One wire frame: a JSON array of the given objects, in order."""
    return encode(objs)


_INT_MIN: Final = -(2**63)
_UINT_MAX: Final = 2**64 - 1
# Deeper than this is no event or control object: what lies below becomes a string.
_PLAIN_DEPTH: Final = 32


def plain(obj: Any, depth: int = 0) -> Any:
    """``obj`` as values orjson always encodes: str (valid UTF-8), int within 64 bits,
    float, bool, None, and lists and string-keyed dicts of those."""
    if obj is None or isinstance(obj, (bool, float)):
        return obj
    if isinstance(obj, int):
        return min(max(int(obj), _INT_MIN), _UINT_MAX)
    if isinstance(obj, str):
        return obj.encode("utf-8", "replace").decode("utf-8")
    if depth < _PLAIN_DEPTH:
        if isinstance(obj, Mapping):
            return {plain(k if isinstance(k, str) else _text(k)): plain(v, depth + 1)
                    for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [plain(v, depth + 1) for v in obj]
    return plain(_text(obj))


def _text(obj: Any) -> str:
    try:
        return str(obj)
    except Exception:  # a __str__ that raises: the type still says something
        return f"<{type(obj).__name__}>"



# A snapshot's own fields; any other (a fleet's ``hosts``) is a map shared out in parts.
_SNAPSHOT_FIELDS: Final = frozenset({"type", "seq", "host", "epoch", "groups", "procs", "part", "parts"})


def snapshot_parts(obj: Mapping[str, Any], part_bytes: int | None,
                   procs: Iterable[bytes] | None = None) -> list[bytes]:
    """A :func:`snapshot` object encoded as parts of about ``part_bytes`` each (one
    when it is smaller), numbered by ``part`` from 1 of ``parts``: the groups, then the
    processes, then the entries of any further map (a fleet's ``hosts``), shared out in
    order; a part holds at least one of them, and every part has every map (maybe
    empty) and any further field that is not a map. ``part_bytes`` None: the whole
    object, unnumbered. ``procs``: the processes encoded already, in place of
    ``obj["procs"]``."""
    enc = encode
    extra = [key for key in obj if key not in _SNAPSHOT_FIELDS]
    maps = [key for key in extra if isinstance(obj[key], Mapping)]
    # any other further field is small: every part has it whole
    whole = b"".join(b"," + enc(key) + b":" + enc(obj[key]) for key in extra if key not in maps)
    # (where it goes: -1 procs, 0 groups, k > 0 the k-th further map; its bytes)
    items: list[tuple[int, bytes]] = [
        (0, enc(name) + b":" + enc(fields)) for name, fields in obj["groups"].items()
    ]
    if procs is None:
        procs = map(enc, obj["procs"])
    items.extend((-1, p) for p in procs)
    for k, key in enumerate(maps, 1):
        items.extend((k, enc(name) + b":" + enc(value)) for name, value in obj[key].items())
    # Greedy: a part takes items until the next would take it past the part size.
    cuts = [0]
    size = 0
    for i, (_, item) in enumerate(items):
        if part_bytes is not None and size and size + len(item) > part_bytes:
            cuts.append(i)
            size = 0
        size += len(item) + 1
    cuts.append(len(items))
    n = len(cuts) - 1
    head = b'{"type":"snapshot","seq":%d,"host":%s,"epoch":%s,' % (
        obj["seq"], enc(obj["host"]), enc(obj["epoch"]))
    parts: list[bytes] = []
    for k in range(n):
        chunk = items[cuts[k] : cuts[k + 1]]
        part = (
            head + (b'"part":%d,"parts":%d,' % (k + 1, n) if part_bytes is not None else b"")
            + b'"groups":{'
            + b",".join(item for where, item in chunk if where == 0)
            + b'},"procs":['
            + b",".join(item for where, item in chunk if where == -1)
            + b"]"
        )
        for m, key in enumerate(maps, 1):
            part += b"," + enc(key) + b":{" + b",".join(item for where, item in chunk if where == m) + b"}"
        parts.append(part + whole + b"}")
    return parts


# Text an oversized event keeps in all when it is cut down; with JSON's escapes (six
# bytes for a control character at worst) and its structure it stays within the
# event size the hub allows.
_SHRUNK_TEXT: Final = 16 * 1024


def shrink(event: dict[str, Any], max_bytes: int) -> None:
    """Cut an event whose encoding passed ``max_bytes`` down, in place, for a producer
    that did not bound its strings: the ``cmdline`` to the event builder's caps (then
    ``cmdline_truncated``), every string to ``STRING_MAX_BYTES``, and all text
    together, nested lists and objects included, to 16 KiB."""
    budget = [_SHRUNK_TEXT]
    cmdline = event.get("cmdline")
    if isinstance(cmdline, list):
        capped, cut = cap_cmdline(a if isinstance(a, str) else str(plain(a)) for a in cmdline)
        if cut:
            event["cmdline"] = capped
            event["cmdline_truncated"] = True
    for key in list(event):
        if key not in ("seq", "host"):
            before = event[key]
            event[key] = _small(before, budget, 0)
            if key == "cmdline" and event[key] != before:
                event["cmdline_truncated"] = True
    if len(encode(event)) > max_bytes:  # the structure alone: keep what names the event
        for key in [k for k in event if k not in ("type", "ts", "seq", "host", "pid", "group")]:
            del event[key]


def _small(value: Any, budget: list[int], depth: int) -> Any:
    value = plain(value) if depth == 0 else value
    if isinstance(value, str):
        text = cut_text(value, max(0, min(STRING_MAX_BYTES, budget[0])))
        budget[0] -= len(text) + 8
        return text
    if isinstance(value, list):
        out = []
        for item in value:
            if budget[0] <= 0 or depth >= 4:
                break
            budget[0] -= 8
            out.append(_small(item, budget, depth + 1))
        return out
    if isinstance(value, dict):
        small: dict[str, Any] = {}
        for k, item in value.items():
            if budget[0] <= 0 or depth >= 4:
                break
            budget[0] -= 8
            small[cut_text(k, 256)] = _small(item, budget, depth + 1)
        return small
    return value
