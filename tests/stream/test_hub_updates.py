"""The hub and ``proc.update``: who gets them (only who names the type; ``groups`` or
``pids`` select the processes), that they take no seq and no room in the resume buffer,
what the producer is told to build (the interest), and the live numbers a snapshot's
processes carry."""

from __future__ import annotations

from typing import Any

from procstream.schema import LIVE_FIELDS
from procstream.stream.protocol import Filter, Subscription, expand_types
from procstream.stream.hub import _EVENT_OVERHEAD, Hub, Interest, Subscriber
from tests.stream.test_hub import FakeTransport, cycle, exit_, gupd, make_hub, start
from tests.stream.test_hub import subscribe as _subscribe


def subscribe(hub: Hub, transport: FakeTransport | None = None, **kw: Any) -> tuple[Subscriber, FakeTransport]:
    """Subscribed and its snapshot taken, as a reading client's connection does at once:
    readings only go to a subscriber that is live."""
    sub, transport = _subscribe(hub, transport, **kw)
    transport.pump(sub)
    return sub, transport


def upd(pid: int, group: str = "web", st: float = 5.0, cpu: float = 1.0) -> dict[str, Any]:
    return {"type": "proc.update", "ts": 10.0, "pid": pid, "start_time": st, "group": group,
            "cpu_pct": cpu, "cpu_s": 2.0, "mem_resident": 4096, "mem_virtual": 8192, "mem_swap": 0,
            "threads": 1, "open_fds": 3, "fd_ratio": 0.003, "state": "S", "read_bps": 0.0,
            "write_bps": 0.0}


def updates_filter(groups: tuple[str, ...] | None = None, pids: tuple[int, ...] | None = None,
                   *others: str) -> Filter:
    return Filter(expand_types(["proc.update", *others]), frozenset(groups) if groups else None,
                  frozenset(pids) if pids else None)


def poll(pids_groups: list[tuple[int, str]]) -> list[dict[str, Any]]:
    return [gupd("web", 2), *(upd(pid, group) for pid, group in pids_groups), cycle()]


def received(t: FakeTransport) -> list[dict[str, Any]]:
    """Events (numbered or not) in the order they came, without the control objects."""
    return [o for o in t.objects() if o["type"] in ("proc.start", "proc.exit", "group.update", "cycle", "proc.update")]


def test_only_who_names_proc_update_gets_it() -> None:
    hub, _ = make_hub()
    _, everything = subscribe(hub)
    _, wildcard = subscribe(hub, filter=Filter(expand_types(["proc.*", "*"])))
    _, named = subscribe(hub, filter=updates_filter())
    hub.publish(poll([(10, "web"), (11, "db")]))
    hub.publish(poll([(10, "web")]))
    for t in (everything, wildcard):
        assert [e["type"] for e in received(t)] == ["group.update", "cycle"] * 2
    assert [(e["type"], e.get("pid")) for e in received(named)] == [
        ("proc.update", 10), ("proc.update", 11), ("proc.update", 10)]
    # readings take no seq: the others see a gap-free sequence, as if nobody watched
    assert [e["seq"] for e in everything.events()] == [1, 2, 3, 4]
    assert hub.head_seq == 4 and all("seq" not in e and e["host"] == "h1" for e in received(named))


def test_groups_or_pids_select_the_processes() -> None:
    hub, _ = make_hub()
    _, by_group = subscribe(hub, filter=updates_filter(groups=("db",)))
    _, by_pid = subscribe(hub, filter=updates_filter(None, (10,), "group.update", "cycle"))
    _, either = subscribe(hub, filter=updates_filter(("db",), (10,), "group.update"))
    hub.publish(poll([(10, "web"), (11, "db"), (12, "web")]))
    assert [e["pid"] for e in by_group.of_type("proc.update")] == [11]
    assert [e["pid"] for e in by_pid.of_type("proc.update")] == [10]
    assert [e["pid"] for e in either.of_type("proc.update")] == [10, 11]
    # groups still narrow the other types; pids never do; a poll's readings come before its cycle
    assert either.of_type("group.update") == []
    assert [e["type"] for e in received(by_pid)] == ["group.update", "proc.update", "cycle"]


def test_replay_after_a_stall_keeps_the_filters() -> None:
    hub, _ = make_hub()
    slow_all, t_all = subscribe(hub, transport=FakeTransport(ok=False))
    slow_upd, t_upd = subscribe(hub, transport=FakeTransport(ok=False), filter=updates_filter(pids=(11,)))
    hub.publish(poll([(10, "web"), (11, "web")]))
    hub.publish([start("web", pid=12), *poll([(12, "web")])])
    for sub, t in ((slow_all, t_all), (slow_upd, t_upd)):
        t.ok = True
        t.pump(sub)
    assert [e["type"] for e in received(t_all)] == ["group.update", "cycle", "proc.start", "group.update", "cycle"]
    # a short lag is caught up from the frames built at publish time, readings included
    assert [e["pid"] for e in t_upd.of_type("proc.update")] == [11]


def test_resume_replays_history_not_readings() -> None:
    hub, _ = make_hub()
    hub.publish(poll([(10, "web")]))
    for _ in range(20):  # past the recent frames: the buffer is all there is
        hub.publish([cycle()])
    assert len(hub._ring) == hub.head_seq == 22  # the reading took no room
    _, t = subscribe(hub, since=0, epoch=hub.epoch, filter=updates_filter(None, None, "group.update"))
    t.pump(next(iter(hub.subscribers)))
    assert [e["type"] for e in received(t)] == ["group.update"]


def test_interest_follows_the_subscriptions() -> None:
    hub, _ = make_hub()
    seen: list[Interest] = []
    hub.watch_interest(seen.append)
    assert seen == [None]  # told at once: nobody yet
    subscribe(hub)  # no proc.update: still nobody
    a, _ = subscribe(hub, filter=updates_filter(groups=("db",)))
    b, _ = subscribe(hub, filter=updates_filter(pids=(7, 8)))
    assert hub.interest == (frozenset({"db"}), frozenset({7, 8}))
    c, _ = subscribe(hub, filter=updates_filter())
    assert hub.interest == (None, None)  # one wants every process
    hub.detach(c)
    assert hub.interest == (frozenset({"db"}), frozenset({7, 8}))
    hub.subscribe(b, Subscription(filter=Filter()))  # b no longer names proc.update
    assert hub.interest == (frozenset({"db"}), None)
    hub.detach(a)
    assert hub.interest is None
    assert seen == [None, (frozenset({"db"}), None), (frozenset({"db"}), frozenset({7, 8})),
                    (None, None), (frozenset({"db"}), frozenset({7, 8})), (frozenset({"db"}), None), None]


def test_a_second_subscriber_with_the_same_filter_changes_nothing() -> None:
    hub, _ = make_hub()
    seen: list[Interest] = []
    hub.watch_interest(seen.append)
    subscribe(hub, filter=updates_filter(groups=("db",)))
    d, _ = subscribe(hub, filter=updates_filter(groups=("db",)))
    hub.detach(d)
    assert seen == [None, (frozenset({"db"}), None)]


class Live:
    """A poll's numbers; each process's numbers dict is its version (the same object
    while they stay the same), and every ``fields`` call is counted."""

    def __init__(self, numbers: dict[tuple[int, float], dict[str, Any]]) -> None:
        self.numbers = numbers
        self.asked: list[int] = []

    def fields(self, pid: int, start_time: float | None = None) -> dict[str, Any] | None:
        self.asked.append(pid)
        return self.numbers.get((pid, start_time))

    def version(self, pid: int) -> object:
        return next((v for (p, _), v in self.numbers.items() if p == pid), None)


def test_snapshot_processes_carry_the_latest_numbers() -> None:
    hub, _ = make_hub()
    hub.publish([start("web", pid=10), start("web", pid=11), cycle()])
    numbers = {k: v for k, v in upd(10).items() if k in LIVE_FIELDS}
    hub.set_live(Live({(10, 5.0): numbers}))
    procs = {p["pid"]: p for p in hub.snapshot()["procs"]}
    assert {k: procs[10][k] for k in LIVE_FIELDS} == numbers
    assert procs[10]["name"] == "web"  # identity kept
    assert all(procs[11][k] is None for k in LIVE_FIELDS)  # not read by a poll yet
    # a new table means a new snapshot (the encoded one is not reused)
    before = hub.snapshot_json()
    hub.set_live(Live({(10, 5.0): {**numbers, "cpu_pct": 50.0}}))
    assert hub.snapshot_json() != before
    assert {p["pid"]: p["cpu_pct"] for p in hub.snapshot()["procs"]}[10] == 50.0


def ws_snapshot(hub: Hub, **kw: Any) -> dict[str, Any]:
    """The snapshot a new WebSocket subscriber gets (parts joined)."""
    _, t = subscribe(hub, **kw)
    snaps = [o for o in t.objects() if o["type"] == "snapshot"]
    return {**snaps[0], "procs": [p for s in snaps for p in s["procs"]]}


def test_an_idle_process_keeps_its_encoded_entry_from_one_poll_to_the_next() -> None:
    hub, _ = make_hub()
    hub.publish([start("web", pid=10), start("web", pid=11), start("db", pid=12), cycle()])
    numbers = {pid: {**{k: v for k, v in upd(pid).items() if k in LIVE_FIELDS}} for pid in (10, 11, 12)}
    live = Live({(pid, 5.0): n for pid, n in numbers.items()})
    hub.set_live(live)
    first = ws_snapshot(hub)
    assert sorted(live.asked) == [10, 11, 12]
    # the next poll: 11 changed, the others are idle (same numbers object)
    live2 = Live({**live.numbers, (11, 5.0): {**numbers[11], "cpu_pct": 75.0}})
    hub.set_live(live2)
    hub.publish([cycle()])
    second = ws_snapshot(hub)
    assert live2.asked == [11]  # only the process that changed was merged and encoded again
    by_pid = {p["pid"]: p for p in second["procs"]}
    assert by_pid[11]["cpu_pct"] == 75.0 and by_pid[10] == {p["pid"]: p for p in first["procs"]}[10]
    # the same as a hub that never cached anything says
    fresh, _ = make_hub()
    fresh.publish([start("web", pid=10), start("web", pid=11), start("db", pid=12), cycle()])
    fresh.set_live(Live(live2.numbers))
    assert second["procs"] == fresh.snapshot()["procs"] == hub.snapshot()["procs"]


def test_an_exited_process_leaves_the_entry_cache_and_a_new_one_with_its_pid_is_new() -> None:
    hub, _ = make_hub()
    begun = start("web", pid=10)
    hub.publish([begun, cycle()])
    hub.set_live(Live({(10, 5.0): {"cpu_pct": 1.0}}))
    ws_snapshot(hub)
    assert len(hub._proc_bytes) == 1
    hub.publish([exit_(begun), start("db", pid=10, st=7.0), cycle()])
    hub.set_live(Live({(10, 7.0): {"cpu_pct": 2.0}}))
    procs = ws_snapshot(hub)["procs"]
    assert [(p["pid"], p["group"], p["cpu_pct"]) for p in procs] == [(10, "db", 2.0)]
    assert len(hub._proc_bytes) == 1


def test_a_filtered_snapshot_adds_to_the_entry_cache_within_its_quarter() -> None:
    hub, _ = make_hub(cache_bytes=4 * 1024)
    hub.publish([start("web", pid=pid) for pid in range(10, 60)] + [cycle()])
    live = Live({(pid, 5.0): {"cpu_pct": 1.0, "name": "x" * 40} for pid in range(10, 60)})
    hub.set_live(live)
    procs = ws_snapshot(hub, filter=Filter(None, frozenset({"web"})))["procs"]
    assert len(procs) == 50 and 0 < hub._proc_bytes_held <= 1024
    hub.publish([cycle()])
    live.asked.clear()
    assert ws_snapshot(hub, filter=Filter(None, frozenset({"web"})))["procs"] == procs
    assert 0 < len(live.asked) < 50  # those that fitted were reused


def test_a_filtered_snapshot_counts_an_entry_it_replaces_once() -> None:
    hub, _ = make_hub()
    hub.publish([start("web", pid=10), cycle()])
    for cpu in (1.0, 2.0, 3.0, 4.0):
        hub.set_live(Live({(10, 5.0): {"cpu_pct": cpu}}))  # its numbers changed: a new version
        hub.publish([cycle()])
        procs = ws_snapshot(hub, filter=Filter(None, frozenset({"web"})))["procs"]
        assert procs[0]["cpu_pct"] == cpu
    assert len(hub._proc_bytes) == 1
    assert hub._proc_bytes_held == sum(len(e[2]) + _EVENT_OVERHEAD for e in hub._proc_bytes.values())


def test_snapshot_without_live_numbers_is_identity_only() -> None:
    hub, _ = make_hub()
    hub.publish([start("web", pid=10), cycle()])
    assert "cpu_pct" not in hub.snapshot()["procs"][0]


def test_a_batch_of_readings_only_is_delivered_and_numbers_nothing() -> None:
    hub, _ = make_hub()
    _, named = subscribe(hub, filter=updates_filter())
    full, stalled = subscribe(hub, filter=updates_filter())
    stalled.ok = False  # its buffer fills up after the snapshot
    hub.publish([upd(10)])
    assert hub.head_seq == 0 and len(hub._ring) == 0
    assert [e["pid"] for e in named.of_type("proc.update")] == [10]
    # nothing to pull from the buffer later: a full transport misses it, and isn't lagging
    assert not full.lagging and stalled.of_type("proc.update") == []
