"""The fleet service's ``/metrics`` collector: a scrape (rendered on a worker thread)
reads only what :meth:`FleetCollector.sample` took on the event loop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from procstream.fleet.aggregator import AggregatorStats
from procstream.fleet.service import FleetCollector


class FakeAggregator:
    """An aggregator whose state is read only by ``metrics()``: counted."""

    def __init__(self) -> None:
        self.stats = AggregatorStats()
        self.ready = False
        self.reads = 0

    def metrics(self) -> dict[str, Any]:
        self.reads += 1
        out = self.stats.as_dict()
        out.update(hosts_up=2, hosts_down=1, lag=0, seq=self.stats.events, connected=True,
                   consumers=1, waiting_for_state=0)
        return out


class NoServerFamilies:
    def collect(self) -> Iterator[Any]:
        return iter(())


def values(collector: FleetCollector) -> dict[str, float]:
    return {s.name: s.value for family in collector.collect() for s in family.samples}


def test_a_scrape_reads_the_last_sample_not_the_aggregator() -> None:
    clock = [100.0]
    agg = FakeAggregator()
    collector = FleetCollector(NoServerFamilies(), agg, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert agg.reads == 1
    agg.stats.events = 50
    agg.ready = True
    before = values(collector)
    assert agg.reads == 1  # the scrape touched nothing the loop moves
    assert before["procstream_fleet_ready"] == 0 and before["procstream_fleet_events_total"] == 0
    clock[0] += 1.0
    collector.sample()  # the loop's once-a-second sample
    after = values(collector)
    assert after["procstream_fleet_ready"] == 1 and after["procstream_fleet_events_total"] == 50
    assert after["procstream_fleet_events_per_second"] == 50.0
    hosts = {s.labels["state"]: s.value for family in collector.collect() for s in family.samples
             if s.name == "procstream_fleet_hosts"}
    assert hosts == {"up": 2, "down": 1}
