"""A stream message as the aggregator takes it: a host's event renumbered with the
stream's sequence, and anything else kept in its place as host.lost (no NATS)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from procstream.fleet.intake import MAX_EVENT_BYTES, Intake, filler
from procstream.fleet.subjects import lost_msg_id, msg_id, status_msg_id


def event(**over: Any) -> dict[str, Any]:
    ev = {"type": "proc.start", "ts": 1.5, "pid": 10, "ppid": 1, "start_time": 3.0, "name": "x", "cmdline": ["x"],
          "group": "g", "user": "u", "uid": 0, "source": "poll", "seq": 7, "host": "web.example"}
    ev.update(over)
    return ev


def take(ev: Any, *, subject: str | None = None, ident: str | None = None, seq: int = 1000) -> Any:
    typ = ev.get("type") if isinstance(ev, dict) else "proc.start"
    subject = subject if subject is not None else f"procstream.web_example.{typ}"
    if ident is None:
        ident = msg_id("web.example", "e1", ev.get("seq", 0)) if isinstance(ev, dict) else "web.example:e1:7"
    data = ev if isinstance(ev, bytes) else orjson.dumps(ev)
    return Intake().decode(subject, {"Nats-Msg-Id": ident}, data, seq, 99.0)


def test_a_hosts_event_keeps_everything_but_its_seq() -> None:
    inc = take(event())
    assert inc.usable and (inc.epoch, inc.host_seq, inc.seq, inc.ts) == ("e1", 7, 1000, 99.0)
    assert inc.event == {**event(), "seq": 1000}
    assert list(inc.event) == list(event())  # same fields, same order
    cyc = take({"type": "cycle", "ts": 2.0, "duration_ms": 1.0, "seq": 8, "host": "web.example"})
    assert cyc.usable and cyc.host_seq == 8
    # a newer host's types pass (a process's with what a process is keyed by)
    assert take({"type": "net.flow", "ts": 2.0, "seq": 9, "host": "web.example"}).usable
    assert take(event(type="proc.oom_score")).usable


def test_loss_records_and_the_aggregators_own_records() -> None:
    lost = {"type": "host.lost", "ts": 1.0, "host": "web.example", "epoch": "e1", "from_seq": 3, "to_seq": 9, "count": 7}
    inc = take(lost, ident=lost_msg_id("web.example", "e1", 3))
    assert inc.usable and (inc.epoch, inc.host_seq, inc.event["seq"]) == ("e1", 9, 1000)
    down = {"type": "host.down", "ts": 1.0, "host": "web.example", "epoch": "e1", "last_seen": 0.5}
    inc = take(down, ident=status_msg_id("down", "web.example", "e1", 41))
    assert inc.usable and (inc.epoch, inc.host_seq) == ("e1", 41)
    assert not take(down, ident=status_msg_id("up", "web.example", "e1", 41)).usable  # the id says up
    assert not take(down, ident=status_msg_id("down", "web.example", "e2", 41)).usable  # another run


@pytest.mark.parametrize("case", [
    "not json", "a list", "other host", "subject of another type", "control object", "no id", "another seq",
    "bad epoch", "pid not int", "group not str", "too big", "not our subject", "ts missing", "lost without range",
    "lifecycle without a group",
])
def test_what_is_not_an_event_keeps_its_place_as_invalid(case: str) -> None:
    ev = event()
    kw: dict[str, Any] = {}
    if case == "not json":
        ev = b"{nope"
    elif case == "a list":
        ev = b"[1, 2]"
    elif case == "other host":
        ev["host"] = "db-01"
    elif case == "subject of another type":
        kw["subject"] = "procstream.web_example.proc.exit"
    elif case == "control object":
        ev["type"] = "snapshot"
        kw["subject"] = "procstream.web_example.snapshot"
    elif case == "no id":
        kw["ident"] = ""
    elif case == "another seq":
        kw["ident"] = msg_id("web.example", "e1", 8)
    elif case == "bad epoch":
        kw["ident"] = "web.example:e 1:7"
    elif case == "pid not int":
        ev["pid"] = [1]
    elif case == "group not str":
        ev["group"] = {"a": 1}
    elif case == "too big":
        ev["cmdline"] = ["x" * MAX_EVENT_BYTES]
    elif case == "not our subject":
        kw["subject"] = "other.web_example.proc.start"
    elif case == "ts missing":
        del ev["ts"]
    elif case == "lifecycle without a group":
        ev = {"type": "group.missing", "ts": 1.0, "group": ["g"], "seq": 7, "host": "web.example"}
    elif case == "lost without range":
        ev = {"type": "host.lost", "ts": 1.0, "host": "web.example", "epoch": "e1", "from_seq": None, "to_seq": 2}
        kw["ident"] = "web.example:e1:lost:None"
    inc = take(ev, **kw)
    assert not inc.usable and inc.reason == "invalid"
    assert inc.event["type"] == "host.lost" and inc.event["seq"] == 1000 and inc.event["count"] == 1
    assert inc.event["epoch"] is None and inc.event["from_seq"] is None


def test_a_deleted_message_keeps_its_place() -> None:
    inc = filler(42, 5.0, "deleted")
    assert inc.event == {"type": "host.lost", "ts": 5.0, "host": "", "epoch": None, "from_seq": None,
                         "to_seq": None, "count": 1, "reason": "deleted", "seq": 42}
