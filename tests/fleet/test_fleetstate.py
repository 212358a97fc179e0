"""The fleet's state, message by message (no NATS): runs, snapshots from the bucket,
losses, up and down, and what a snapshot of it says."""

from __future__ import annotations

from typing import Any

from procstream.fleet.fleetstate import FleetState, Outcome, merge_groups
from procstream.stream.protocol import Filter


def start(host: str, pid: int, group: str = "g", seq: int = 0) -> dict[str, Any]:
    return {"type": "proc.start", "ts": 1.0, "pid": pid, "ppid": 1, "start_time": float(pid), "name": group,
            "cmdline": [group], "group": group, "user": "u", "uid": 0, "source": "poll", "seq": seq, "host": host}


def exit_(host: str, pid: int, group: str = "g", seq: int = 0) -> dict[str, Any]:
    return {**start(host, pid, group, seq), "type": "proc.exit", "exit_code": 0, "signal": None}


def update(host: str, group: str, **fields: Any) -> dict[str, Any]:
    return {"type": "group.update", "ts": 1.0, "group": group, "host": host, "seq": 0, **fields}


class Feeder:
    """Applies events as the aggregator does, numbering stream positions."""

    def __init__(self, state: FleetState) -> None:
        self.state = state
        self.pos = 0

    def __call__(self, ev: dict[str, Any], epoch: str, host_seq: int, ts: float = 100.0) -> Outcome:
        self.pos += 1
        return self.state.apply_message(ev, epoch, host_seq, self.pos, ts)


def head(epoch: str, seq: int, stream_seq: int = 0, interval: float = 1.0) -> dict[str, Any]:
    return {"host": "h", "epoch": epoch, "seq": seq, "stream_seq": stream_seq, "interval": interval}


def snap(*procs: dict[str, Any], groups: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"groups": groups or {}, "procs": list(procs)}


def pids(state: FleetState, host: str = "h") -> set[int]:
    return {pid for pid, _ in state.hosts[host].state.procs}


def test_a_new_run_waits_for_its_snapshot_then_applies_what_came_after_it() -> None:
    state = FleetState()
    feed = Feeder(state)
    assert feed(start("h", 1), "e1", 1) is Outcome.NEW_RUN
    assert feed(start("h", 2), "e1", 2) is Outcome.PENDING
    assert feed(start("h", 3), "e1", 3) is Outcome.PENDING
    assert pids(state) == set() and not state.hosts["h"].synced
    # the run's snapshot as of its seq 2 has pids 1, 2 and 9 (there before the first poll)
    assert state.install("h", head("e1", 2), snap(start("h", 1), start("h", 2), start("h", 9)))
    assert pids(state) == {1, 2, 3, 9} and state.hosts["h"].seq == 3
    assert feed(exit_("h", 9), "e1", 4) is Outcome.APPLIED and pids(state) == {1, 2, 3}
    assert feed(exit_("h", 1), "e1", 4) is Outcome.SKIPPED  # a resend of seq 4
    assert not state.install("h", head("e1", 3), snap())  # older than the state


def test_a_restart_replaces_the_state_and_late_messages_of_the_old_run_change_nothing() -> None:
    state = FleetState()
    feed = Feeder(state)
    feed(start("h", 1), "e1", 1)
    state.install("h", head("e1", 1), snap(start("h", 1), start("h", 5)))
    assert feed(start("h", 20), "e2", 1) is Outcome.NEW_RUN
    assert pids(state) == set()  # nothing of the old run
    assert state.install("h", head("e2", 1), snap(start("h", 20), start("h", 21)))
    assert pids(state) == {20, 21}
    assert feed(start("h", 6), "e1", 2) is Outcome.SKIPPED and pids(state) == {20, 21}
    assert state.hosts["h"].epoch == "e2"
    assert not state.install("h", head("e1", 9), snap(start("h", 6)))  # the old run's state, late


def test_at_start_a_run_older_than_the_stored_state_is_an_earlier_run() -> None:
    state = FleetState()
    # the bucket's state is of run e2, written at stream position 10
    assert state.install("h", head("e2", 4, stream_seq=10), snap(start("h", 20)))
    feed = Feeder(state)
    feed.pos = 5
    assert feed(start("h", 7), "e1", 8) is Outcome.SKIPPED  # position 6: before e2's state
    assert feed(start("h", 21), "e2", 5) is Outcome.APPLIED and pids(state) == {20, 21}
    feed.pos = 20
    assert feed(start("h", 30), "e3", 1) is Outcome.NEW_RUN  # after it: a newer run


def test_a_loss_waits_for_a_snapshot_taken_after_it() -> None:
    state = FleetState()
    feed = Feeder(state)
    feed(start("h", 1), "e1", 1)
    state.install("h", head("e1", 1), snap(start("h", 1)))
    lost = {"type": "host.lost", "ts": 1.0, "host": "h", "epoch": "e1", "from_seq": 2, "to_seq": 5, "count": 4}
    assert feed(lost, "e1", 5) is Outcome.LOST
    assert feed(start("h", 7), "e1", 6) is Outcome.PENDING
    assert not state.install("h", head("e1", 4), snap(start("h", 1)))  # from before the loss ended
    assert state.install("h", head("e1", 5), snap(start("h", 1), start("h", 3)))
    assert pids(state) == {1, 3, 7}
    entry = state.hosts["h"]
    assert entry.up_after == 5


def test_up_and_down_and_when_a_host_up_is_due() -> None:
    state = FleetState()
    feed = Feeder(state)
    feed(start("h", 1), "e1", 1)
    entry = state.hosts["h"]
    assert not entry.due_up()  # not whole yet
    state.install("h", head("e1", 1), snap(start("h", 1)))
    assert entry.due_up()
    up = {"type": "host.up", "ts": 1.0, "host": "h", "epoch": "e1", "last_seen": 1.0}
    assert feed(up, "e1", 0) is Outcome.STATUS and entry.up and not entry.due_up()
    feed({**up, "type": "host.down"}, "e1", 1)
    assert not entry.up and entry.due_up() and entry.up_after == 1
    feed(up, "e1", 1)
    assert entry.up and not entry.due_up()
    # a host.down about an earlier run says nothing about this one
    feed(start("h", 2), "e2", 1)
    feed({**up, "type": "host.down", "epoch": "e1"}, "e1", 9)
    assert entry.up
    state.install("h", head("e2", 1), snap(start("h", 2)))
    assert entry.due_up()  # a new run is announced
    assert pids(state) == {2} and entry.last_seen == 100.0


def test_a_snapshot_totals_the_hosts_that_are_up_and_lists_each_host() -> None:
    state = FleetState()
    feed = Feeder(state)
    for host, n, ratio, oldest in (("a", 2, 0.5, 100.0), ("b", 3, 0.25, 50.0), ("c", 7, 0.9, 10.0)):
        feed(start(host, 1, "web"), host, 1)
        groups = {"web": {"group": "web", "procs": n, "cpu_pct": 1.5, "worst_fd_ratio": ratio,
                          "oldest_start_time": oldest, "states": {"running": 1, "sleeping": n - 1}, "missing": False}}
        state.install(host, {**head(host, 1), "host": host}, snap(start(host, 1, "web"), groups=groups))
        state.hosts[host].up = host != "c"  # c is down: listed, not counted
    groups, procs, extra = state.snapshot_view(Filter())
    web = groups["web"]
    assert (web["procs"], web["cpu_pct"], web["worst_fd_ratio"], web["oldest_start_time"]) == (5, 3.0, 0.5, 50.0)
    assert web["states"] == {"running": 2, "sleeping": 3} and web["missing"] is False
    assert sorted(extra["hosts"]) == ["a", "b", "c"] and extra["hosts"]["c"]["up"] is False
    assert extra["hosts"]["b"]["groups"]["web"]["procs"] == 3
    assert sorted(p["host"] for p in procs) == ["a", "b", "c"]
    groups, procs, extra = state.snapshot_view(Filter(hosts=frozenset({"b"}), groups=frozenset({"db"})))
    assert groups == {} and procs == [] and list(extra["hosts"]) == ["b"] and extra["hosts"]["b"]["groups"] == {}


def test_merge_groups_keeps_the_latest_dict_with_a_time() -> None:
    totals: dict[str, dict[str, Any]] = {}
    merge_groups(totals, {"g": {"last_exit": {"ts": 5.0, "pid": 1}, "crashloop": True, "name": "x"}})
    merge_groups(totals, {"g": {"last_exit": {"ts": 3.0, "pid": 2}, "crashloop": False, "oldest_start_time": 0}})
    assert totals["g"]["last_exit"]["pid"] == 1 and totals["g"]["crashloop"] is True
    assert "name" not in totals["g"] and totals["g"]["oldest_start_time"] == 0


def test_a_new_run_keeps_a_bounded_number_of_events() -> None:
    state = FleetState(pending_limit=3)
    feed = Feeder(state)
    for i in range(1, 6):
        feed(start("h", i), "e1", i)
    entry = state.hosts["h"]
    assert len(entry.pending) == 3 and entry.dropped_to == 5
    assert not state.install("h", head("e1", 3), snap())  # it would miss events 4 and 5
    assert state.install("h", head("e1", 5), snap(start("h", 4), start("h", 5)))
    assert pids(state) == {4, 5}
