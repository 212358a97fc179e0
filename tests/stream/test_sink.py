"""The server's event sink: the hub numbers each batch, then the event log gets it."""

from __future__ import annotations

import copy
from typing import Any

from procstream.stream.hub import Hub
from procstream.stream.sink import HubAndLog


class Log:
    """Records what the event log is given, as it is at that moment."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []

    def write(self, events) -> None:
        self.batches.append(copy.deepcopy(list(events)))


def test_the_hub_numbers_the_events_before_the_log_writes_them() -> None:
    hub = Hub(host="h1", interval=1.0)
    log = Log()
    sink = HubAndLog(hub, log)  # type: ignore[arg-type]
    sink.load_state({"g": {"group": "g", "procs": 1}}, [{"pid": 1, "start_time": 5.0, "group": "g"}])  # type: ignore[typeddict-item]
    assert log.batches == []  # the state is the hub's alone
    assert hub.snapshot()["procs"] == [{"pid": 1, "start_time": 5.0, "group": "g"}]
    sink.publish([{"type": "cycle", "ts": 1.0}, {"type": "cycle", "ts": 2.0}])  # type: ignore[list-item]
    sink.publish([{"type": "cycle", "ts": 3.0}])  # type: ignore[list-item]
    assert [[(e["seq"], e["host"], e["ts"]) for e in b] for b in log.batches] == [
        [(1, "h1", 1.0), (2, "h1", 2.0)],
        [(3, "h1", 3.0)],
    ]
    assert hub.head_seq == 3


def test_without_an_event_log_only_the_hub_gets_the_events() -> None:
    hub = Hub(host="h1", interval=1.0)
    sink = HubAndLog(hub)
    sink.load_state({}, [])
    sink.publish([{"type": "cycle", "ts": 1.0}])  # type: ignore[list-item]
    assert hub.head_seq == 1


class Broken:
    def write(self, events) -> None:
        raise OSError("the log is broken")


def test_a_failing_part_is_counted_and_logged_once_and_the_other_still_gets_the_batch(caplog) -> None:
    hub = Hub(host="h1", interval=1.0)
    sink = HubAndLog(hub, Broken())  # type: ignore[arg-type]
    sink.load_state({}, [])
    for ts in (1.0, 2.0, 3.0):
        sink.publish([{"type": "cycle", "ts": ts}])  # type: ignore[list-item]
    assert hub.head_seq == 3 and hub.stats.publish_errors == 3
    assert len([r for r in caplog.records if "event log failed" in r.getMessage()]) == 1

    def boom(events) -> None:
        raise RuntimeError("hub bug")

    hub.publish = boom  # type: ignore[method-assign]
    log = Log()
    sink = HubAndLog(hub, log)  # type: ignore[arg-type]
    sink.publish([{"type": "cycle", "ts": 4.0}])  # type: ignore[list-item]
    assert len(log.batches) == 1 and hub.stats.publish_errors == 4
