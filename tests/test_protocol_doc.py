"""docs/protocol.md, the reference clients code against, names the fields the code sends.

Its field tables are compared with objects built by the code that sends them (the
protocol's control objects, the event builder's events), and its JSON examples must parse.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, get_type_hints

from procstream.events import EventBuilder
from procstream.grouper import Grouper
from procstream.live import LiveTable, UpdateInterest
from procstream.stream import protocol as P
from procstream.stream.hub import RESET_REASONS
from procstream import schema
from procstream.config import ExpectedGroup, LifecycleConfig
from procstream.lifecycle import Lifecycle
from tests.support.fake_procs import BOOT, HZ, ByName, Clock, fake

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
ENVELOPE_ADDED_BY_THE_BUILDER = {"type", "ts"}


def section(heading: str) -> str:
    """From ``heading`` to the next heading of the same or a higher level."""
    start = DOC.index(f"\n{heading}\n")
    level = heading.split(" ", 1)[0]
    ends = [m.start() for m in re.finditer(r"\n(#+) ", DOC[start + 1 :]) if len(m.group(1)) <= len(level)]
    return DOC[start : start + 1 + ends[0]] if ends else DOC[start:]


def table_fields(text: str, nth: int = 0) -> set[str]:
    """The backquoted names in the first column of the ``nth`` table in ``text``."""
    tables: list[list[str]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(line)
        previous = line
    rows = tables[nth][2:]  # after the header and the |---| line
    assert rows
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row.split(" | ")[0])}


def json_values(block: str) -> list[Any]:
    decoder = json.JSONDecoder()
    values, i = [], 0
    while True:
        while i < len(block) and block[i].isspace():
            i += 1
        if i == len(block):
            return values
        value, i = decoder.raw_decode(block, i)
        values.append(value)


def test_the_json_examples_parse() -> None:
    blocks = re.findall(r"```json\n(.*?)```", DOC, re.S)
    assert len(blocks) >= 10
    for block in blocks:
        for value in json_values(block):
            assert isinstance(value, (list, dict)), value
            for obj in value if isinstance(value, list) else [value]:
                assert isinstance(obj, dict) and ("type" in obj or "op" in obj), obj


def test_control_object_tables_name_their_fields() -> None:
    hello = P.hello(server="s", host="h", epoch="e", head_seq=0, oldest_seq=1, interval=1.0, filter=None)
    assert table_fields(section("### `hello`")) | {"type"} == set(hello)
    reset = P.reset("epoch", seq=1, epoch="e", since=0)
    assert table_fields(section("### `reset`")) | {"type"} == set(reset)


def test_every_reset_reason_is_explained() -> None:
    assert table_fields(section("### `reset`"), nth=1) == set(RESET_REASONS)


def test_every_control_type_has_a_section() -> None:
    for name in P.CONTROL_TYPES:
        section(f"### `{name}`")
    for name in P.EVENT_TYPES:
        section(f"### `{name}`")


def events_of_one_poll() -> dict[str, dict[str, Any]]:
    """Real polls' batches by type: an exit, two starts (one a restart), a group update,
    the watched processes' numbers, a cycle, and the lifecycle's events about them (an
    expected group missing from the start, then recovered; a crash loop, then stable)."""
    clock = Clock()
    grouper = Grouper(ByName({"web"}), clock=clock, usernames=lambda uid: f"u{uid}")
    builder = EventBuilder(username=grouper.username)
    lifecycle = Lifecycle(LifecycleConfig(crashloop_restarts=1, stable_after_s=1.0), [ExpectedGroup("web", 2)], clock=clock)
    grouper.update([fake(10, "web", start=100)])
    _, procs = builder.state(grouper.tracker.tracked.values(), grouper.groups(), clock())
    events = lifecycle.baseline(procs)
    clock.advance(1.0)
    now = round((clock() - BOOT) * HZ)
    running = [fake(11, "web", start=now), fake(12, "web", start=now)]
    update = grouper.update(running)
    live = LiveTable.of(update.time, grouper.tracker.tracked.values())
    batch = builder.batch(update, grouper.groups(), duration_ms=1.0, live=live, interest=UpdateInterest())
    events += lifecycle.observe(batch, tick=True)
    clock.advance(2.0)
    events += lifecycle.observe(builder.batch(grouper.update(running), grouper.groups(), duration_ms=1.0), tick=True)
    return {ev["type"]: ev for ev in events}


def test_event_tables_name_their_fields() -> None:
    events = events_of_one_poll()
    assert set(events) == set(P.EVENT_TYPES) - {"host.lost", "host.up", "host.down"}  # NATS and fleets only
    assert table_fields(section("## Events")) == {"type", "seq", "ts", "host"}
    start = table_fields(section("### `proc.start`"))
    assert start | ENVELOPE_ADDED_BY_THE_BUILDER == set(events["proc.start"])
    exit_only = table_fields(section("### `proc.exit`"))
    # core_dumped comes only from the kernel source, which a poll doesn't use
    # ... and restart_of is the start's own
    assert (start - {"restart_of"}) | exit_only | ENVELOPE_ADDED_BY_THE_BUILDER == set(events["proc.exit"]) | {"core_dumped"}
    group = table_fields(section("### `group.update`"))
    assert group | ENVELOPE_ADDED_BY_THE_BUILDER == set(events["group.update"])
    # the poller adds skipped and interval_s; the kernel source adds source and lost_events
    cycle = table_fields(section("### `cycle`"))
    assert cycle | ENVELOPE_ADDED_BY_THE_BUILDER == set(events["cycle"]) | {"skipped", "interval_s", "source", "lost_events"}
    for name in ("group.missing", "group.recovered", "group.crashloop", "group.stable"):
        assert table_fields(section(f"### `{name}`")) | ENVELOPE_ADDED_BY_THE_BUILDER == set(events[name]), name
    update = table_fields(section("### `proc.update`"))
    assert update | ENVELOPE_ADDED_BY_THE_BUILDER == set(events["proc.update"])


def loss_record_fields() -> set[str]:
    from procstream.fleet.publisher import loss_record

    return set(loss_record("h", "e", 1, 1))


def test_the_lifecycle_tables_name_their_fields() -> None:
    assert table_fields(section("### `proc.start`"), nth=1) == set(get_type_hints(schema.RestartOf))
    assert table_fields(section("### `snapshot`")) == set(get_type_hints(schema.GroupLifecycle))
    assert table_fields(section("### `snapshot`"), nth=1) == set(get_type_hints(schema.LastExit))


def test_the_nats_loss_record_table_names_its_fields() -> None:
    from procstream.fleet.publisher import loss_record

    record = loss_record("web-01", "e", 5, 9)
    assert table_fields(section("### `host.lost`")) | {"type"} == set(record)
    assert record["count"] == 5


def test_the_fleet_tables_name_their_fields() -> None:
    from procstream.fleet.aggregator import status_record
    from procstream.fleet.fleetstate import HostEntry
    from procstream.fleet.intake import filler

    for kind in ("up", "down"):
        record = status_record(kind, "web-01", "e", 1.0, 2.0)
        assert table_fields(section(f"### `host.{kind}`")) | {"type"} == set(record)
    assert table_fields(section("### A fleet's snapshot")) == set(HostEntry("h").describe(None))
    # a message the aggregator could not use, in its place: host.lost's fields and two more
    place = filler(7, 1.0, "invalid").event
    assert table_fields(section("### `host.lost`"), nth=1) == set(place) - set(loss_record_fields())


def test_the_connect_table_names_every_query_parameter() -> None:
    assert table_fields(section("## Connecting")) == set(P._QUERY_FIELDS)
