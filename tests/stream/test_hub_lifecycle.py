"""The hub keeps each group's lifecycle (missing, crash loop, restarts, last exit) from the
events, so a snapshot says it; a client applying docs/protocol.md's rules gets the same."""

from __future__ import annotations

from typing import Any

from procstream.stream import state as state_module
from procstream.stream.hub import Hub
from procstream.stream.protocol import Subscription
from tests.stream.test_hub import FakeTransport, exit_, gupd, last_exit, start


def make_hub() -> Hub:
    hub = Hub(host="h1", interval=1.0, buffer_size=1000)
    hub.load_state({"db": {"procs": 0, "expected_min": 1}, "web": {"procs": 1}}, [])
    return hub


def life(ev_type: str, group: str, **fields: Any) -> dict[str, Any]:
    return {"type": ev_type, "ts": 12.0, "group": group, **fields}


def restart(group: str, old: int) -> dict[str, Any]:
    ev = start(group)
    ev["restart_of"] = {"pid": old, "exit_code": 1, "signal": None, "down_s": 0.5}
    return ev


def test_lifecycle_events_set_the_groups_state() -> None:
    hub = make_hub()
    hub.publish([life("group.missing", "db", expected_min=1, procs=0)])
    assert hub.snapshot()["groups"]["db"] == {"group": "db", "procs": 0, "expected_min": 1, "missing": True}
    first = start("web")
    crash = exit_(first) | {"exit_code": 1, "exit_class": "error", "oom_killed": False}
    again = restart("web", first["pid"])
    hub.publish([first, crash, again, life("group.crashloop", "web", restarts=5, window_s=300.0)])
    web = hub.snapshot()["groups"]["web"]
    assert (web["restarts"], web["crashloop"], web["last_exit"]) == (1, True, last_exit(crash))
    assert web["last_exit"]["exit_class"] == "error"
    # restart_of is about the start, not the process: the snapshot's processes leave it out
    assert all("restart_of" not in p for p in hub.snapshot()["procs"])
    hub.publish([life("group.recovered", "db", expected_min=1, procs=1), life("group.stable", "web", restarts=5, window_s=600.0)])
    groups = hub.snapshot()["groups"]
    assert groups["db"]["missing"] is False and groups["web"]["crashloop"] is False
    # a group.update keeps them: it sets the fields it carries
    hub.publish([gupd("web", 2)])
    assert hub.snapshot()["groups"]["web"]["restarts"] == 1


def test_a_group_no_update_described_yet_gets_its_lifecycle_with_its_first_update() -> None:
    hub = make_hub()
    first = start("brief")
    hub.publish([first, exit_(first), restart("brief", first["pid"])])
    assert "brief" not in hub.snapshot()["groups"]
    hub.publish([gupd("brief", 1)])
    brief = hub.snapshot()["groups"]["brief"]
    assert (brief["procs"], brief["restarts"], brief["last_exit"]["pid"]) == (1, 1, first["pid"])
    # a removed group takes its lifecycle with it
    hub.publish([gupd("brief", 0, removed=True), gupd("brief", 0)])
    assert "restarts" not in hub.snapshot()["groups"]["brief"]


def test_pending_lifecycles_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(state_module, "_PENDING_LIFE_LIMIT", 3)  # the hub's state keeps them
    hub = make_hub()
    for i in range(5):
        hub.publish([life("group.crashloop", f"g{i}", restarts=5, window_s=1.0)])
    assert list(hub._state._pending_life) == ["g2", "g3", "g4"]  # type: ignore[attr-defined]
    hub.load_state({}, [])
    assert hub._state._pending_life == {}  # type: ignore[attr-defined]


def test_a_snapshot_plus_the_events_after_it_as_docs_protocol_md_applies_them() -> None:
    hub = make_hub()
    t = FakeTransport()
    sub = hub.attach(t)
    hub.subscribe(sub, Subscription())
    t.pump(sub)
    live = [start("web") for _ in range(3)]
    batches: list[list[dict[str, Any]]] = [
        [life("group.missing", "db", expected_min=1, procs=0)],
        live[:],
        [exit_(live[0]) | {"exit_code": 3, "exit_class": "error"}, restart("web", live[0]["pid"])],
        [exit_(live[1]) | {"signal": 9, "exit_class": "oom_kill", "oom_killed": True}, gupd("web", 3, cpu_s=2.0)],
        [life("group.crashloop", "web", restarts=2, window_s=60.0), start("db"), life("group.recovered", "db", expected_min=1, procs=1)],
        [gupd("db", 1), life("group.stable", "web", restarts=2, window_s=10.0), gupd("gone", 0, removed=True)],
    ]  # fmt: skip
    for batch in batches:
        hub.publish(batch)
        t.pump(sub)
    (snap,) = t.of_type("snapshot")
    groups = {name: dict(fields) for name, fields in snap["groups"].items()}
    procs = {(p["pid"], p["start_time"]) for p in snap["procs"]}
    for ev in t.events():
        name, kind = ev.get("group"), ev["type"]
        if kind == "proc.start":
            procs.add((ev["pid"], ev["start_time"]))
            if ev["restart_of"]:
                g = groups.setdefault(name, {})
                g["restarts"] = g.get("restarts", 0) + 1
        elif kind == "proc.exit":
            procs.discard((ev["pid"], ev["start_time"]))
            groups.setdefault(name, {})["last_exit"] = {k: ev[k] for k in ("pid", "ts", "exit_class", "exit_code", "signal", "oom_killed")}
        elif kind == "group.update":
            if ev.get("removed"):
                groups.pop(name, None)
            else:
                groups.setdefault(name, {}).update({k: v for k, v in ev.items() if k not in ("type", "ts", "seq", "host")})
        elif kind in ("group.missing", "group.recovered"):
            groups.setdefault(name, {})["missing"] = kind == "group.missing"
        elif kind in ("group.crashloop", "group.stable"):
            groups.setdefault(name, {})["crashloop"] = kind == "group.crashloop"
    final = hub.snapshot()
    assert groups == final["groups"]
    assert procs == {(p["pid"], p["start_time"]) for p in final["procs"]}
