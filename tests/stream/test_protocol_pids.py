"""The protocol's ``pids`` filter and ``proc.update``, which only its name selects."""

from __future__ import annotations

import pytest

from procstream.schema import DEFAULT_TYPES
from procstream.stream.protocol import (
    Filter,
    ProtocolError,
    expand_types,
    parse_frame,
    parse_query,
    update_key,
)


def test_wildcards_and_all_leave_proc_update_out() -> None:
    assert expand_types(["*"]) is None
    assert expand_types(["proc.*"]) == frozenset({"proc.start", "proc.exit"})
    assert expand_types(list(DEFAULT_TYPES)) is None  # every type but proc.update: "all"
    assert expand_types(["proc.update"]) == frozenset({"proc.update"})
    every = expand_types(["*", "proc.update"])
    assert every is not None and every == {*DEFAULT_TYPES, "proc.update"}


def test_no_wildcard_reaches_proc_update() -> None:
    with pytest.raises(ProtocolError, match="only by name"):
        expand_types(["proc.update.*"])
    with pytest.raises(ProtocolError, match="unknown event type"):
        expand_types(["proc.upd*"])


def test_pids_in_the_url() -> None:
    sub = parse_query("/ws?types=proc.update,cycle&pids=12,%2034&pids=7")
    assert sub.pids == frozenset({12, 34, 7})
    assert sub.filter.to_json() == {"types": ["cycle", "proc.update"], "groups": None, "pids": [7, 12, 34]}


def test_pids_in_a_frame() -> None:
    sub = parse_frame('{"op": "subscribe", "types": ["proc.update"], "groups": ["db"], "pids": [5]}')
    assert sub.filter == Filter(frozenset({"proc.update"}), frozenset({"db"}), frozenset({5}))
    assert parse_frame('{"op": "subscribe", "types": ["proc.update"], "pids": []}').pids is None


@pytest.mark.parametrize(
    "query",
    [
        "pids=5",  # without proc.update it would select nothing
        "types=proc.*&pids=5",
        "types=proc.update&pids=0",
        "types=proc.update&pids=-3",
        "types=proc.update&pids=x",
        "types=proc.update&pids=4194305",
        "types=proc.update&pids=" + "9" * 30,
        "types=proc.update&pids=" + ",".join(str(i) for i in range(1, 1030)),
    ],
)
def test_bad_pids_in_the_url(query: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_query(query)
    assert info.value.op is None


@pytest.mark.parametrize(
    "pids",
    ['[5]', '["5"]', '[true]', '[1.5]', '[0]', '5', '{"a": 1}'],
)
def test_bad_pids_in_a_frame(pids: str) -> None:
    types = '["cycle"]' if pids == "[5]" else '["proc.update"]'
    with pytest.raises(ProtocolError) as info:
        parse_frame(f'{{"op": "subscribe", "types": {types}, "pids": {pids}}}')
    assert info.value.op == "subscribe"


def test_matching_proc_update() -> None:
    every = Filter(frozenset({"proc.update"}))
    assert every.matches("proc.update", update_key("web", 10))
    assert not Filter().matches("proc.update", update_key("web", 10))
    assert not Filter(frozenset({"proc.start"})).matches("proc.update", update_key("web", 10))
    narrowed = Filter(frozenset({"proc.update", "group.update"}), frozenset({"db"}), frozenset({10}))
    assert narrowed.matches("proc.update", update_key("web", 10))
    assert narrowed.matches("proc.update", update_key("db", 11))
    assert not narrowed.matches("proc.update", update_key("web", 11))
    assert not narrowed.matches("group.update", "web")  # groups still narrow the rest
    assert narrowed.matches_event({"type": "proc.update", "group": "web", "pid": 10})
    assert Filter().everything and not narrowed.everything
    assert narrowed.wants_updates and not Filter().wants_updates
