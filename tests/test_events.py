from __future__ import annotations

import dataclasses

import orjson
import pytest

from procstream.events import EventBuilder, group_fields
from procstream.grouper import Grouper
from procstream.redact import Redactor
from procstream.schema import CMDLINE_MAX_BYTES, GROUP_FIELDS, STRING_MAX_BYTES, Cycle, GroupUpdate, ProcExit, ProcStart
from tests.support.fake_procs import BOOT, HZ, ByName, Clock, fake


class Setup:
    def __init__(self, *names: str, redact=None) -> None:
        self.clock = Clock()
        self.grouper = Grouper(ByName(set(names)), clock=self.clock, usernames=lambda u: f"u{u}")
        self.builder = EventBuilder(username=self.grouper.username, redact=redact)
        self.first = True

    def poll(self, procs, dt: float = 1.0):
        self.clock.advance(dt)
        update = self.grouper.update(procs)
        groups = self.grouper.groups()
        if self.first:
            self.first = False
            return self.builder.state(self.grouper.tracker.tracked.values(), groups, update.time)
        return self.builder.batch(update, groups, duration_ms=1.5)


def test_first_poll_yields_state_not_start_events():
    s = Setup("web")
    groups, procs = s.poll([fake(10, "web", cmdline=("web", "-x"), uid=3)])
    assert set(groups) == {"web"}
    assert list(groups["web"]) == list(GROUP_FIELDS)
    assert procs == [
        {
            "pid": 10,
            "ppid": 1,
            "start_time": pytest.approx(BOOT + 1000 / HZ),
            "name": "web",
            "cmdline": ["web", "-x"],
            "cmdline_known": True,
            "cmdline_truncated": False,
            "group": "web",
            "user": "u3",
            "uid": 3,
        }
    ]


def test_batch_orders_exits_starts_groups_then_cycle():
    s = Setup("a", "b")
    s.poll([fake(10, "a", start=100)])
    batch = s.poll([fake(10, "b", start=5000)])  # pid reuse: exit of a, start of b
    assert [e["type"] for e in batch] == ["proc.exit", "proc.start", "group.update", "group.update", "cycle"]
    exit_, start = batch[0], batch[1]
    assert (exit_["pid"], exit_["group"]) == (10, "a")
    assert (start["pid"], start["group"], start["source"]) == (10, "b", "poll")
    # every field of the vocabulary but those the hub adds, and no other
    assert set(start) == ProcStart.__required_keys__
    assert set(exit_) == ProcExit.__required_keys__
    assert set(batch[2]) == GroupUpdate.__required_keys__
    assert set(batch[-1]) == Cycle.__required_keys__
    assert exit_["exit_code"] is None and exit_["signal"] is None
    cycle = batch[-1]
    assert cycle["started"] == 1 and cycle["exited"] == 1 and cycle["duration_ms"] == 1.5
    orjson.dumps(batch)  # JSON-ready as is


def test_exit_carries_final_totals_and_lifetime():
    s = Setup("a")
    s.poll([])
    s.poll([fake(10, "a", start=100, cpu=(1.0, 0.5), io=(10, 20))])
    s.poll([fake(10, "a", start=100, cpu=(2.0, 0.5), io=(30, 40))])
    batch = s.poll([])
    exit_ = batch[0]
    assert exit_["type"] == "proc.exit"
    assert exit_["cpu_s"] == pytest.approx(2.5)
    assert (exit_["read_bytes"], exit_["write_bytes"]) == (30, 40)
    assert exit_["lifetime_s"] == pytest.approx(s.clock.t - (BOOT + 1.0), abs=1e-3)


def test_group_update_only_when_changed_with_rates():
    s = Setup("a")
    s.poll([fake(10, "a", start=100, cpu=(1.0, 0.0), io=(0, 0))])
    quiet = s.poll([fake(10, "a", start=100, cpu=(1.0, 0.0))], dt=2.0)
    assert [e["type"] for e in quiet] == ["cycle"]
    busy = s.poll([fake(10, "a", start=100, cpu=(2.0, 0.0), io=(4000, 2000))], dt=2.0)
    g = busy[0]
    assert g["type"] == "group.update"
    assert g["cpu_pct"] == pytest.approx(50.0)
    assert g["read_bps"] == pytest.approx(2000.0)
    assert g["write_bps"] == pytest.approx(1000.0)
    assert g["cpu_s"] == pytest.approx(1.0)
    # usage stops: rates fall to zero, which is a change worth sending once
    calm = s.poll([fake(10, "a", start=100, cpu=(2.0, 0.0), io=(4000, 2000))], dt=2.0)
    assert calm[0]["cpu_pct"] == 0.0
    assert [e["type"] for e in s.poll([fake(10, "a", start=100, cpu=(2.0, 0.0), io=(4000, 2000))])] == ["cycle"]


def test_removed_group_event():
    s = Setup("a")
    s.grouper.remove_empty_groups = True
    s.poll([fake(10, "a")])
    batch = s.poll([])
    removed = [e for e in batch if e["type"] == "group.update"]
    assert removed == [{"type": "group.update", "ts": pytest.approx(s.clock.t), "group": "a", "removed": True}]


def test_cmdline_is_redacted_once_and_reused_for_the_exit():
    calls = []

    def redact(argv):
        calls.append(argv)
        return tuple("***" if a.startswith("--password=") else a for a in argv)

    s = Setup("db", redact=redact)
    s.poll([])
    start = s.poll([fake(5, "db", start=10, cmdline=("db", "--password=hunter2"))])[0]
    exit_ = s.poll([])[0]
    assert start["cmdline"] == exit_["cmdline"] == ["db", "***"]
    assert len(calls) == 1


def test_group_fields_without_previous_sample_has_zero_rates():
    s = Setup("a")
    s.poll([fake(1, "a", cpu=(5.0, 0.0))])
    f = group_fields("a", s.grouper.groups()["a"])
    assert f["cpu_pct"] == 0.0 and f["read_bps"] == 0.0
    assert f["states"] == {"running": 0, "sleeping": 1, "waiting": 0, "zombie": 0, "other": 0}


def test_a_process_named_anew_gets_a_second_start_with_previous_and_exits_as_what_it_is_now():
    s = Setup("sh", "sleep")
    s.grouper.kernel_events = True
    s.poll([])
    s.poll([fake(10, "sh", start=500, cmdline=("sh", "-c", "exec sleep 9"), stack=0x7000)])
    events = s.poll([fake(10, "sleep", start=500, cmdline=("sleep", "9"), stack=0x8000)])
    (start,) = [e for e in events if e["type"] == "proc.start"]
    assert (start["pid"], start["name"], start["cmdline"], start["group"]) == (10, "sleep", ["sleep", "9"], "sleep")
    assert start["previous"] == {"name": "sh", "group": "sh"}
    (cycle,) = [e for e in events if e["type"] == "cycle"]
    assert cycle["started"] == 1
    (exit_,) = [e for e in s.poll([]) if e["type"] == "proc.exit"]
    assert (exit_["name"], exit_["cmdline"], exit_["group"]) == ("sleep", ["sleep", "9"], "sleep")
    assert "previous" not in exit_


def test_start_times_are_truncated_to_the_millisecond():
    s = Setup("web")
    s.poll([])
    events = s.poll([fake(10, "web", start=123457)])  # BOOT + 1234.57 s
    (start,) = [e for e in events if e["type"] == "proc.start"]
    (update,) = [e for e in events if e["type"] == "group.update"]
    exact = s.grouper.tracker.tracked[s.grouper.tracker.known(10)].static.start_time
    assert start["start_time"] == update["oldest_start_time"] <= exact < start["start_time"] + 0.001


def test_hostile_strings_are_capped_and_a_cut_cmdline_says_so():
    s = Setup("web", redact=Redactor())
    s.poll([])
    argv = ("web", "--password=hunter2", *["a" * 100_000] * 20)  # 2 MB
    events = s.poll([fake(10, "web", cmdline=argv, uid=3)])
    (start,) = [e for e in events if e["type"] == "proc.start"]
    assert start["cmdline_truncated"] is True
    assert start["cmdline"][:2] == ["web", "--password=***"]  # redacted before it was cut
    assert sum(len(a.encode()) for a in start["cmdline"]) <= CMDLINE_MAX_BYTES
    assert len(orjson.dumps(start)) < 2 * CMDLINE_MAX_BYTES


def test_an_argv_cut_at_reading_is_marked_too():
    s = Setup("web")
    s.poll([])
    proc = fake(10, "web", cmdline=("web", "x" * 100))
    static = dataclasses.replace(proc.info.static, cmdline_truncated=True)
    proc = dataclasses.replace(proc, info=dataclasses.replace(proc.info, static=static))
    (start,) = [e for e in s.poll([proc]) if e["type"] == "proc.start"]
    assert start["cmdline_truncated"] is True and start["cmdline"] == ["web", "x" * 100]
    (plain,) = [e for e in s.poll([proc, fake(11, "web")]) if e["type"] == "proc.start"]
    assert plain["cmdline_truncated"] is False


def test_names_users_and_groups_are_capped():
    grouper_names = {"n" * 5000}
    s = Setup(*grouper_names)
    s.builder.username = lambda uid: "u" * 5000
    s.poll([])
    events = s.poll([fake(10, "n" * 5000)])
    (start,) = [e for e in events if e["type"] == "proc.start"]
    (update,) = [e for e in events if e["type"] == "group.update"]
    for value in (start["name"], start["user"], start["group"], update["group"]):
        assert len(value.encode()) == STRING_MAX_BYTES
