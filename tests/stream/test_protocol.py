"""Tests of procstream.stream.protocol: request parsing, validation messages, control objects."""

from __future__ import annotations

import orjson
import pytest

from procstream.stream import protocol as P
from procstream.stream.protocol import (
    NO_GROUP,
    AbuseGuard,
    Filter,
    ProtocolError,
    Subscription,
    expand_types,
    parse_frame,
    parse_query,
)


# -- filters -------------------------------------------------------------------------------


def test_expand_types_wildcards_and_canonical_forms() -> None:
    assert expand_types(["proc.*"]) == frozenset({"proc.start", "proc.exit"})
    assert expand_types(["proc.start", "cycle"]) == frozenset({"proc.start", "cycle"})
    # every type, however spelled, is "no filter" so equal filters share one encoding
    assert expand_types(["*"]) is None
    assert expand_types([]) is None
    assert expand_types(["proc.*", "group.*", "cycle", "host.lost", "host.up", "host.down"]) is None
    assert expand_types(["group.*"]) == frozenset(
        {"group.update", "group.missing", "group.recovered", "group.crashloop", "group.stable"}
    )
    assert expand_types(["host.*"]) == frozenset({"host.lost", "host.up", "host.down"})
    assert expand_types(["group.*", "cycle", "proc.start", "proc.exit", "host.*"]) is None


@pytest.mark.parametrize(
    ("names", "fragment"),
    [
        (["proc.stop"], "unknown event type 'proc.stop'"),
        (["foo.*"], "wildcard 'foo.*' matches no event type"),
        ([""], "empty type name"),
        ([3], "must be a list of strings"),
    ],
)
def test_expand_types_rejects(names: list[object], fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        expand_types(names)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_filter_matching() -> None:
    f = Filter(frozenset({"proc.start", "cycle"}), frozenset({"web"}))
    assert f.matches("proc.start", "web")
    assert not f.matches("proc.start", "db")
    assert not f.matches("proc.exit", "web")
    # cycle has no group: it passes any groups filter
    assert f.matches("cycle", NO_GROUP)
    assert f.matches_event({"type": "cycle", "seq": 1})
    assert not f.matches_event({"type": "proc.start", "group": "db"})
    assert Filter().everything and not f.everything
    assert Filter(None, frozenset({"web"})).matches("group.update", "web")
    assert not Filter(None, frozenset({"web"})).matches("group.update", "db")


def test_filter_to_json_is_sorted_and_stable() -> None:
    f = Filter(frozenset({"cycle", "proc.start"}), frozenset({"b", "a"}))
    assert f.to_json() == {"types": ["proc.start", "cycle"], "groups": ["a", "b"]}
    assert Filter().to_json() == {"types": None, "groups": None}
    assert hash(Filter(frozenset({"cycle"}))) == hash(Filter(frozenset({"cycle"})))


# -- query parameters -----------------------------------------------------------------------


def test_parse_query_defaults() -> None:
    assert parse_query("") == Subscription()
    assert parse_query("/ws") == Subscription()
    assert parse_query({}) == Subscription()


def test_parse_query_full() -> None:
    sub = parse_query("/ws?types=proc.*,cycle&groups=web,db&groups=cache&since=42&epoch=abc"
                      "&snapshot=0&token=t0k")
    assert sub.filter == Filter(
        frozenset({"proc.start", "proc.exit", "cycle"}), frozenset({"web", "db", "cache"})
    )
    assert (sub.since, sub.epoch, sub.snapshot, sub.token) == (42, "abc", False, "t0k")
    assert sub.types == frozenset({"proc.start", "proc.exit", "cycle"})
    assert sub.groups == frozenset({"web", "db", "cache"})


def test_parse_query_mapping_and_blank_lists() -> None:
    sub = parse_query({"types": ["proc.start", "proc.exit"], "groups": "", "snapshot": "true"})
    assert sub.filter == Filter(frozenset({"proc.start", "proc.exit"}), None)
    # empty values mean "all" (what a form with nothing ticked produces)
    assert parse_query("types=&groups=") == Subscription()
    assert parse_query("groups=%20web%20").filter.groups == frozenset({"web"})


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("type=proc.start", "unknown query parameter 'type'"),
        ("types=proc.begin", "unknown event type 'proc.begin'"),
        ("since=-1&epoch=e", "'since' must be a non-negative integer"),
        ("since=abc&epoch=e", "'since' must be a non-negative integer"),
        ("since=99999999999999999999&epoch=e", "'since' must be a non-negative integer"),
        # str.isdigit() says yes to these; int() says no
        ("since=%C2%B2&epoch=e", "'since' must be a non-negative integer"),
        ("since=%D9%A3&epoch=e", "'since' must be a non-negative integer"),
        ("since=1%E2%82%82&epoch=e", "'since' must be a non-negative integer"),
        ("since=5", '"since" needs "epoch"'),
        ("epoch=e", '"epoch" needs "since"'),
        ("since=1&epoch=e&since=2", "'since' given more than once"),
        ("snapshot=maybe", "'snapshot' must be 0 or 1"),
    ],
)
def test_parse_query_errors(query: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_query(query)
    assert fragment in info.value.message
    assert info.value.op is None


# -- inbound frames -----------------------------------------------------------------------


def test_parse_frame_subscribe() -> None:
    sub = parse_frame(
        '{"op":"subscribe","types":["group.update"],"groups":["web"],"since":7,'
        '"epoch":"e1","snapshot":false}'
    )
    assert sub == Subscription(
        filter=Filter(frozenset({"group.update"}), frozenset({"web"})),
        since=7,
        epoch="e1",
        snapshot=False,
    )
    # bytes work too; nulls and empty lists mean "all"
    assert parse_frame(b'{"op":"subscribe","types":null,"groups":[],"snapshot":null}') == (
        Subscription()
    )


@pytest.mark.parametrize(
    ("data", "fragment", "op"),
    [
        ("{not json", "malformed JSON", None),
        ("", "malformed JSON", None),
        ("[1,2]", "expected a JSON object", None),
        ('"subscribe"', "expected a JSON object", None),
        ("{}", 'missing "op"', None),
        ('{"op": 5}', '"op" must be a string', None),
        ('{"op": "unsubscribe"}', "unknown op 'unsubscribe'", "unsubscribe"),
        ('{"op": "subscribe", "typez": []}', "unknown field 'typez'", "subscribe"),
        ('{"op": "subscribe", "types": "proc.start"}', '"types" must be a list', "subscribe"),
        ('{"op": "subscribe", "types": [1]}', "must be a list of strings", "subscribe"),
        ('{"op": "subscribe", "types": ["nope"]}', "unknown event type 'nope'", "subscribe"),
        ('{"op": "subscribe", "groups": [""]}', "group names must be 1 to", "subscribe"),
        ('{"op": "subscribe", "groups": {"a": 1}}', '"groups" must be a list', "subscribe"),
        ('{"op": "subscribe", "since": "5", "epoch": "e"}', '"since" must be a non-negative',
         "subscribe"),
        ('{"op": "subscribe", "since": true, "epoch": "e"}', '"since" must be a non-negative',
         "subscribe"),
        ('{"op": "subscribe", "since": 1.5, "epoch": "e"}', '"since" must be a non-negative',
         "subscribe"),
        ('{"op": "subscribe", "since": -2, "epoch": "e"}', '"since" must be a non-negative',
         "subscribe"),
        ('{"op": "subscribe", "since": 3}', '"since" needs "epoch"', "subscribe"),
        ('{"op": "subscribe", "since": 3, "epoch": 9}', '"epoch" must be a string', "subscribe"),
        ('{"op": "subscribe", "since": 3, "epoch": ""}', '"epoch" must be 1 to', "subscribe"),
        ('{"op": "subscribe", "snapshot": 1}', '"snapshot" must be true or false', "subscribe"),
    ],
)
def test_parse_frame_errors(data: str, fragment: str, op: str | None) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame(data)
    assert fragment in info.value.message
    assert info.value.op == op


# -- control objects ------------------------------------------------------------------------


def test_control_objects_and_frames() -> None:
    h = P.hello(server="procstream/x", host="h1", epoch="e", head_seq=10, oldest_seq=3,
                interval=1.0, filter=Filter(frozenset({"cycle"})))
    assert h == {
        "type": "hello", "v": 1, "server": "procstream/x", "host": "h1", "epoch": "e",
        "head_seq": 10, "oldest_seq": 3, "interval": 1.0,
        "filter": {"types": ["cycle"], "groups": None},
    }
    assert P.hello(server="s", host="h", epoch="e", head_seq=0, oldest_seq=1, interval=2.0,
                   filter=None)["filter"] is None
    assert P.reset("expired", seq=9, epoch="e", since=2) == {
        "type": "reset", "reason": "expired", "seq": 9, "epoch": "e", "since": 2}
    assert P.overflow(5, 3, 12) == {"type": "overflow", "dropped": 5, "from_seq": 3, "to_seq": 12}
    assert P.bookmark(4) == {"type": "bookmark", "seq": 4}
    assert P.error("bad", "subscribe") == {"type": "error", "error": "bad", "op": "subscribe"}
    assert P.subscribed(Filter(), 3) == {
        "type": "subscribed", "filter": {"types": None, "groups": None}, "seq": 3}
    # every frame is a JSON array, even of one object; control objects have no seq
    raw = P.frame(P.bookmark(4), P.error("x"))
    assert orjson.loads(raw) == [{"type": "bookmark", "seq": 4},
                                 {"type": "error", "error": "x", "op": None}]
    assert {o["type"] for o in orjson.loads(raw)} <= P.CONTROL_TYPES


def test_abuse_guard_sliding_window() -> None:
    guard = AbuseGuard(limit=20, window=10.0)
    # 20 bad frames are tolerated, the 21st within 10 s is abuse
    assert not any(guard.record(i * 0.1) for i in range(20))
    assert guard.record(2.5)
    # spread out over time, the same count is fine
    slow = AbuseGuard(limit=20, window=10.0)
    assert not any(slow.record(i * 0.6) for i in range(100))


# -- encoding -------------------------------------------------------------------------------


def test_encode_never_raises_and_keeps_what_it_can() -> None:
    odd = {
        "big": 2**70,
        "small": -(2**70),
        "set": {"b"},
        "keys": {1: "x", (2, 3): "y"},
        "lone_surrogate": "a\ud800b",
        "nested": [[[[["deep"]]]]],
        "obj": object.__new__(type("Broken", (), {"__str__": lambda self: 1 / 0})),
    }
    got = orjson.loads(P.encode(odd))
    assert got["big"] == 2**64 - 1 and got["small"] == -(2**63)
    assert got["set"] == "{'b'}" and got["keys"] == {"1": "x", "(2, 3)": "y"}
    assert got["lone_surrogate"] == "a?b" and got["nested"] == [[[[["deep"]]]]]
    assert got["obj"] == "<Broken>"
    deep: list = []
    for _ in range(300):  # deeper than orjson itself goes
        deep = [deep]
    assert orjson.loads(P.encode({"deep": deep}))
    assert orjson.loads(P.frame({"type": "error", "error": "\udcff"}))[0]["error"] == "?"
