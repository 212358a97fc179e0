"""The resume buffer costs about what its events weigh: 100,000 events must not cost
100,000 spare orjson buffers (1-4 KiB each, depending on the orjson version)."""

from __future__ import annotations

import tracemalloc

from procstream.stream.hub import Hub


def event(i: int) -> dict:
    return {
        "type": "proc.exit", "ts": 1795680000.5 + i, "pid": 1000 + i, "ppid": 1,
        "start_time": 1795680000.12 + i, "name": "psb_storm", "cmdline": ["/tmp/psb_storm", "--flag"],
        "group": "storm", "user": "root", "uid": 0, "lifetime_s": 0.001, "cpu_s": 0.0,
        "read_bytes": 0, "write_bytes": 0, "exit_code": 0, "signal": None, "source": "netlink",
    }  # fmt: skip


def test_buffered_events_cost_about_their_encoded_size() -> None:
    hub = Hub(host="h", interval=1.0, buffer_size=20_000)
    hub.load_state({}, [])
    encoded = len(repr(event(0)))  # ~ the JSON size of one event
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(0, 20_000, 10):
            hub.publish([event(i + k) for k in range(10)])
        per_event = (tracemalloc.get_traced_memory()[0] - before) / 20_000
    finally:
        tracemalloc.stop()
    assert per_event < encoded + 250, per_event


def test_the_buffer_stops_growing_at_its_bound() -> None:
    hub = Hub(host="h", interval=1.0, buffer_size=5_000)
    hub.load_state({}, [])
    tracemalloc.start()
    try:
        for i in range(0, 10_000, 10):
            hub.publish([event(i + k) for k in range(10)])
        full = tracemalloc.get_traced_memory()[0]
        for i in range(10_000, 30_000, 10):
            hub.publish([event(i + k) for k in range(10)])
        later = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert hub.head_seq - hub.oldest_seq + 1 <= 5_000
    assert later < full * 1.1
