"""Every set of counters has one shape: a slotted dataclass of ``Stats``."""

from __future__ import annotations

import dataclasses

import pytest

from procstream.collect.kernel import KernelStats
from procstream.collect.poll import PollStatus
from procstream.serve.security import GuardStats
from procstream.serve.server import ServerStats
from procstream.stats import Stats
from procstream.stream.eventlog import EventLogStats
from procstream.stream.hub import HubStats

ALL = [HubStats(), ServerStats(), GuardStats(), KernelStats(), EventLogStats(), PollStatus(interval=1.0, started_at=0.0)]


@pytest.mark.parametrize("stats", ALL, ids=lambda s: type(s).__name__)
def test_counters_are_slotted_dataclasses(stats: Stats) -> None:
    assert isinstance(stats, Stats) and dataclasses.is_dataclass(stats)
    assert not hasattr(stats, "__dict__")
    # a misspelt counter is an error, not a new attribute nobody reads
    with pytest.raises(AttributeError):
        stats.frames_sendt = 1  # type: ignore[attr-defined]
    assert list(stats.as_dict()) == [f.name for f in dataclasses.fields(stats)]


def test_as_dict_is_a_copy_that_stays_as_it_was() -> None:
    stats = KernelStats()
    stats.events = 3
    stats.by_kind["exec"] = 3
    snapshot = stats.as_dict()
    stats.events += 1
    stats.by_kind["exec"] += 1
    assert (snapshot["events"], snapshot["by_kind"]) == (3, {"exec": 3})


def test_totals_of_counters_kept_per_thread() -> None:
    k = KernelStats(events_lost=2, dropped_backlog=3)
    assert k.lost == 5
    e = EventLogStats(write_dropped=1, queue_dropped=2, encode_errors=4)
    assert e.dropped == 7
