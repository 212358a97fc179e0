"""``/metrics``' lifecycle families: per group, as of the latest poll."""

from __future__ import annotations

from procstream.collect.oom import OomStats
from procstream.config import ExpectedGroup
from procstream.grouper import GroupCounts, GrouperUpdate
from procstream.lifecycle import GroupLife
from procstream.serve.metrics import MetricsCollector, make_registry, render
from procstream.tracker import ZERO_COUNTS
from tests.serve.test_metrics import Exposition

CLASSES = ("ok", "error", "signal", "oom_kill", "unknown")


def scrape(lives: dict[str, GroupLife], groups: dict[str, GroupCounts], oom: OomStats | None = None) -> Exposition:
    collector = MetricsCollector(lifecycle=lambda: lives, oom_stats=oom)
    collector.on_poll(GrouperUpdate(time=1.0), groups, 0.01)
    return Exposition(render(make_registry(collector, process=False)).decode())


def test_every_group_reported_has_its_counters_from_zero() -> None:
    groups = {
        "db": GroupCounts(procs=0, counts=ZERO_COUNTS),
        "web": GroupCounts(procs=3, counts=ZERO_COUNTS),
        "cron": GroupCounts(procs=1, counts=ZERO_COUNTS),
    }
    lives = {
        "db": GroupLife(4, {"error": 2, "oom_kill": 1, "unknown": 1}, 1, True, True, ExpectedGroup("db", 1)),
        "web": GroupLife(0, {"ok": 5}, 0, False, False, ExpectedGroup("web", 2, 8)),
        "gone": GroupLife(9, {"ok": 9}, 0, False, False, None),  # the grouper no longer reports it
    }
    m = scrape(lives, groups, OomStats(source="kmsg"))
    assert m.types["procstream_group_restarts_total"] == "counter" and m.types["procstream_group_missing"] == "gauge"
    assert m.by_group("procstream_group_restarts_total") == {"db": 4, "web": 0, "cron": 0}
    assert {c: m.value("procstream_group_exits_total", groupname="db", **{"class": c}) for c in CLASSES} == {
        "ok": 0, "error": 2, "signal": 0, "oom_kill": 1, "unknown": 1,
    }  # fmt: skip
    # a group the lifecycle knows nothing of yet: every class at 0, so increase() sees its first exit
    assert {m.value("procstream_group_exits_total", groupname="cron", **{"class": c}) for c in CLASSES} == {0}
    assert m.by_group("procstream_group_oom_kills_total") == {"db": 1, "web": 0, "cron": 0}
    assert m.by_group("procstream_group_crashloop") == {"db": 1, "web": 0, "cron": 0}
    # expectations only for expected groups; max only when set
    assert m.by_group("procstream_group_expected_min") == {"db": 1, "web": 2}
    assert m.by_group("procstream_group_expected_max") == {"web": 8}
    assert m.by_group("procstream_group_missing") == {"db": 1, "web": 0}
    assert m.value("procstream_oom_source", source="kmsg") == 1
    assert all(labels == {frozenset({"groupname"})} for labels in map(m.label_names, (
        "procstream_group_restarts_total", "procstream_group_oom_kills_total", "procstream_group_crashloop",
        "procstream_group_expected_min", "procstream_group_missing",
    )))  # fmt: skip
    assert m.label_names("procstream_group_exits_total") == {frozenset({"groupname", "class"})}


def test_without_a_lifecycle_there_are_no_lifecycle_families() -> None:
    collector = MetricsCollector()
    collector.on_poll(GrouperUpdate(time=1.0), {"a": GroupCounts(procs=1, counts=ZERO_COUNTS)}, 0.01)
    m = Exposition(render(make_registry(collector, process=False)).decode())
    assert m.families("procstream_group_") == set() and m.families("procstream_oom") == set()
    assert m.by_group("namedprocess_namegroup_num_procs") == {"a": 1}
