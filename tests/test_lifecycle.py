"""The lifecycle's rules, one by one, on made-up events and a settable clock."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from procstream.config import ExpectedGroup, LifecycleConfig
from procstream.lifecycle import RECENT_EXITS, Lifecycle, exit_class
from tests.support.fake_procs import Clock

T0 = 1_700_000_000.0
SETTINGS = LifecycleConfig(restart_window_s=10, crashloop_restarts=3, crashloop_window_s=60, stable_after_s=30)


class Oom:
    """An OOM record that names the pids it is given."""

    def __init__(self, victims: set[int] | None = None, answer: bool | None = False) -> None:
        self.victims = victims or set()
        self.answer = answer
        self.asked: list[int] = []

    def oom_killed(self, pid: int) -> bool | None:
        self.asked.append(pid)
        return True if pid in self.victims else self.answer


def proc(pid: int, group: str, start: float, name: str | None = None) -> dict[str, Any]:
    return {"pid": pid, "ppid": 1, "start_time": start, "name": name or group, "cmdline": [name or group],
            "group": group, "user": "root", "uid": 0}  # fmt: skip


def start(pid: int, group: str, at: float, name: str | None = None, source: str = "netlink") -> dict[str, Any]:
    return {"type": "proc.start", "ts": at, **proc(pid, group, at, name), "restart_of": None, "source": source}


def exit_(
    pid: int,
    group: str,
    at: float,
    *,
    code: int | None = None,
    sig: int | None = None,
    started: float | None = None,
    name: str | None = None,
    source: str = "netlink",
) -> dict[str, Any]:
    st = at - 1.0 if started is None else started
    return {"type": "proc.exit", "ts": at, **proc(pid, group, st, name), "lifetime_s": at - st, "cpu_s": 0.0,
            "read_bytes": 0, "write_bytes": 0, "exit_code": code, "signal": sig, "exit_class": None,
            "oom_killed": None, "source": source}  # fmt: skip


def gupd(group: str) -> dict[str, Any]:
    return {"type": "group.update", "ts": T0, "group": group, "procs": 0}


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e.get("group", "")) for e in events]


def lifecycle_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] in ("group.missing", "group.recovered", "group.crashloop", "group.stable")]


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


def make(clock: Clock, *expected: ExpectedGroup, oom: Oom | None = None, settings: LifecycleConfig = SETTINGS) -> Lifecycle:
    return Lifecycle(settings, expected, oom=oom, clock=clock)


# -- expected groups ---------------------------------------------------------------------


def test_an_expected_group_never_seen_is_missing_from_the_baseline(clock: Clock) -> None:
    lc = make(clock, ExpectedGroup("db", 1), ExpectedGroup("web", 2, 4), ExpectedGroup("cache", 1))
    events = lc.baseline([proc(1, "web", T0 - 100), proc(2, "web", T0 - 50), proc(3, "cache", T0 - 9)])
    assert events == [{"type": "group.missing", "ts": T0, "group": "db", "expected_min": 1, "procs": 0}]
    assert lc.view["db"].missing and not lc.view["web"].missing and lc.view["web"].expected == ExpectedGroup("web", 2, 4)


def test_missing_and_recovered_once_per_change(clock: Clock) -> None:
    lc = make(clock, ExpectedGroup("web", 2))
    assert lifecycle_events(lc.baseline([proc(1, "web", T0 - 10)])) == [
        {"type": "group.missing", "ts": T0, "group": "web", "expected_min": 2, "procs": 1}
    ]
    out = lc.observe([start(5, "web", T0 + 1)])
    assert out[1] == {"type": "group.recovered", "ts": T0 + 1, "group": "web", "expected_min": 2, "procs": 2}
    # a third process, then one leaving: still at the minimum, nothing to say
    assert lifecycle_events(lc.observe([start(6, "web", T0 + 2), exit_(6, "web", T0 + 3, code=0)])) == []
    out = lc.observe([exit_(5, "web", T0 + 4, code=1), exit_(1, "web", T0 + 5, code=1)])
    # after the batch's proc events: where the group stands at the end of it
    assert kinds(out) == [("proc.exit", "web"), ("proc.exit", "web"), ("group.missing", "web")]
    assert out[2]["procs"] == 0 and out[2]["ts"] == T0 + 5
    assert lifecycle_events(lc.observe([exit_(9, "web", T0 + 6, code=0)])) == []  # still missing: nothing new


def test_a_restart_within_one_batch_is_no_missing_and_recovered_pair(clock: Clock) -> None:
    lc = make(clock, ExpectedGroup("web", 1))
    lc.baseline([proc(1, "web", T0 - 10)])
    out = lc.observe([exit_(1, "web", T0 + 1, code=1, started=T0 - 10), start(2, "web", T0 + 1.2), gupd("web")])
    assert kinds(out) == [("proc.exit", "web"), ("proc.start", "web"), ("group.update", "web")]
    assert out[1]["restart_of"]["pid"] == 1
    # in two batches, the group was missing in between, and says so
    out = lc.observe([exit_(2, "web", T0 + 2, code=1, started=T0 + 1.2)]) + lc.observe([start(3, "web", T0 + 2.1)])
    assert kinds(out) == [("proc.exit", "web"), ("group.missing", "web"), ("proc.start", "web"), ("group.recovered", "web")]


def test_a_group_not_expected_is_never_missing(clock: Clock) -> None:
    lc = make(clock)
    assert lc.baseline([]) == []
    assert lifecycle_events(lc.observe([start(1, "x", T0), exit_(1, "x", T0 + 1, code=0)], tick=True)) == []
    assert not lc.view["x"].missing and lc.view["x"].expected is None


def test_a_reload_changes_expectations(clock: Clock) -> None:
    lc = make(clock, ExpectedGroup("a", 1), ExpectedGroup("b", 1))
    lc.baseline([proc(1, "a", T0 - 5), proc(2, "c", T0 - 5)])  # b missing
    clock.advance(5)
    events = lc.configure(SETTINGS, [ExpectedGroup("a", 2), ExpectedGroup("c", 1), ExpectedGroup("d", 3)])
    assert kinds(events) == [("group.missing", "a"), ("group.recovered", "b"), ("group.missing", "d")]
    assert events[1]["expected_min"] is None  # b is no longer expected: no longer missing
    assert events[0] == {"type": "group.missing", "ts": T0 + 5, "group": "a", "expected_min": 2, "procs": 1}
    assert {n for n, life in lc.view.items() if life.missing} == {"a", "d"}
    assert lc.view["b"].expected is None and lc.view["c"].expected == ExpectedGroup("c", 1)
    # the same config again: no event
    assert lc.configure(SETTINGS, [ExpectedGroup("a", 2), ExpectedGroup("c", 1), ExpectedGroup("d", 3)]) == []


def test_a_reload_before_the_baseline_leaves_the_check_to_it(clock: Clock) -> None:
    lc = make(clock)
    assert lc.configure(SETTINGS, [ExpectedGroup("a", 1)]) == []
    assert kinds(lc.baseline([])) == [("group.missing", "a")]


# -- why a process ended -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "sig", "oom", "cls", "killed"),
    [
        (0, None, None, "ok", False),
        (3, None, None, "error", False),
        (None, signal.SIGTERM, None, "signal", False),
        (None, signal.SIGSEGV, None, "signal", False),
        (None, signal.SIGKILL, False, "signal", False),
        (None, signal.SIGKILL, True, "oom_kill", True),
        (None, signal.SIGKILL, None, "signal", None),  # the record can't tell
        (None, None, True, "oom_kill", True),  # a poll's exit the record names
        (None, None, None, None, None),  # a poll's exit: nothing known
    ],
)
def test_exit_classes(clock: Clock, code: int | None, sig: int | None, oom: bool | None, cls: str | None, killed: bool | None) -> None:
    record = Oom({7} if oom else set(), answer=None if oom is None else False)
    lc = make(clock, oom=record)
    ev = exit_(7, "g", T0, code=code, sig=sig)
    lc.observe([ev])
    assert (ev["exit_class"], ev["oom_killed"]) == (cls, killed)
    # the record is only asked about exits the OOM killer could have caused
    assert record.asked == ([] if code is not None or sig not in (None, signal.SIGKILL) else [7])
    assert exit_class(code, sig, oom) == cls


def test_without_an_oom_record_a_sigkill_is_a_signal_of_unknown_origin(clock: Clock) -> None:
    lc = make(clock)
    ev = exit_(7, "g", T0, sig=signal.SIGKILL)
    lc.observe([ev], tick=True)
    assert (ev["exit_class"], ev["oom_killed"]) == ("signal", None)


def test_exits_are_counted_by_class_for_the_metrics(clock: Clock) -> None:
    lc = make(clock, oom=Oom({4}))
    lc.observe([exit_(1, "g", T0, code=0), exit_(2, "g", T0, code=2), exit_(3, "g", T0, code=2),
                exit_(4, "g", T0, sig=9), exit_(5, "g", T0), exit_(6, "h", T0, sig=15)], tick=True)  # fmt: skip
    assert dict(lc.view["g"].exits) == {"ok": 1, "error": 2, "oom_kill": 1, "unknown": 1}
    assert lc.view["g"].oom_kills == 1 and dict(lc.view["h"].exits) == {"signal": 1}


# -- restarts ----------------------------------------------------------------------------


def test_a_start_soon_after_an_exit_of_the_same_group_and_executable_is_a_restart(clock: Clock) -> None:
    lc = make(clock)
    lc.baseline([proc(10, "svc", T0 - 100)])
    lc.observe([exit_(10, "svc", T0, code=1, started=T0 - 100)])
    new = start(11, "svc", T0 + 2.5)
    lc.observe([new])
    assert new["restart_of"] == {"pid": 10, "exit_code": 1, "signal": None, "down_s": 2.5}
    # an exit is replaced once: a second start is no restart
    other = start(12, "svc", T0 + 3)
    lc.observe([other], tick=True)
    assert other["restart_of"] is None
    assert lc.view["svc"].restarts == 1


@pytest.mark.parametrize(
    ("new", "why"),
    [
        (start(11, "svc", T0 + 10.5), "too late"),
        (start(11, "other", T0 + 1), "another group"),
        (start(11, "svc", T0 + 1, name="helper"), "another executable"),
        (start(10, "svc", T0 - 1), "the same process (an exec)"),
        (start(11, "svc", T0 - 3), "already running before the exit"),
    ],
)
def test_not_a_restart(clock: Clock, new: dict[str, Any], why: str) -> None:
    lc = make(clock)
    lc.observe([exit_(10, "svc", T0, sig=15, started=T0 - 1)])
    lc.observe([new])
    assert new["restart_of"] is None, why


def renamed(pid: int, group: str, at: float, *, was: str, started: float, name: str | None = None) -> dict[str, Any]:
    """The ``proc.start`` of a process already reported, now running another program."""
    ev = start(pid, group, at, name)
    ev["start_time"] = started
    ev["previous"] = {"name": was, "group": was}
    return ev


def test_a_process_running_another_program_moves_between_groups_and_is_no_new_process(clock: Clock) -> None:
    lc = make(clock, ExpectedGroup("svc", 1), ExpectedGroup("sh", 1))
    lc.baseline([proc(10, "sh", T0 - 5)])
    out = lc.observe([renamed(10, "svc", T0 + 1, was="sh", started=T0 - 5)])
    moved = lifecycle_events(out)
    assert [(e["type"], e["group"], e["procs"]) for e in moved] == [("group.missing", "sh", 0), ("group.recovered", "svc", 1)]
    # named anew within the same group: nothing moves
    again = renamed(10, "svc", T0 + 2, was="svc", started=T0 - 5)
    assert lifecycle_events(lc.observe([again])) == []
    assert again["restart_of"] is None and lc.view["svc"].restarts == 0
    # it is counted once in svc: its exit leaves svc empty
    out = lc.observe([exit_(10, "svc", T0 + 3, code=0, started=T0 - 5)])
    assert [(e["type"], e["group"], e["procs"]) for e in lifecycle_events(out)] == [("group.missing", "svc", 0)]


def test_an_exec_into_a_group_soon_after_its_exit_is_a_restart(clock: Clock) -> None:
    lc = make(clock, ExpectedGroup("svc", 1))
    lc.baseline([proc(10, "svc", T0 - 100), proc(20, "sh", T0 - 100)])
    lc.observe([exit_(10, "svc", T0, code=1, started=T0 - 100)])
    # a supervisor's shell (first seen as sh) execs the service again
    new = renamed(21, "svc", T0 + 1.5, was="sh", started=T0 + 1)
    out = lc.observe([start(21, "sh", T0 + 1), new], tick=True)
    assert new["restart_of"] == {"pid": 10, "exit_code": 1, "signal": None, "down_s": 1.0}
    assert [(e["type"], e["procs"]) for e in lifecycle_events(out)] == [("group.recovered", 1)]
    assert lc.view["svc"].restarts == 1


def test_a_reused_pid_within_the_window_is_a_restart_of_the_old_process(clock: Clock) -> None:
    lc = make(clock)
    lc.observe([exit_(10, "svc", T0, code=2, started=T0 - 50)])
    new = start(10, "svc", T0 + 0.5)  # same pid, new start time: a new process
    lc.observe([new])
    assert new["restart_of"] == {"pid": 10, "exit_code": 2, "signal": None, "down_s": 0.5}


def test_a_polls_exit_is_only_known_to_be_since_the_poll_before(clock: Clock) -> None:
    lc = make(clock)
    lc.baseline([proc(10, "svc", T0 - 100)])  # a poll at T0
    clock.advance(5)
    # the next poll (T0+5) finds 10 gone and 11 new: 11 started after the poll before
    gone = exit_(10, "svc", T0 + 5, started=T0 - 100, source="poll")
    new = start(11, "svc", T0 + 2, source="poll")
    lc.observe([gone, new], tick=True)
    assert new["restart_of"] == {"pid": 10, "exit_code": None, "signal": None, "down_s": 2.0}
    # one that was already there at the poll before is no replacement
    clock.advance(5)
    lc.observe([exit_(11, "svc", T0 + 10, started=T0 + 2, source="poll"),
                old := start(12, "svc", T0 + 4, source="poll")], tick=True)  # fmt: skip
    assert old["restart_of"] is None


def test_two_groups_restarting_at_once(clock: Clock) -> None:
    lc = make(clock)
    lc.observe([exit_(1, "a", T0, code=1), exit_(2, "b", T0, sig=9), exit_(3, "a", T0 + 0.1, code=4)])
    a1, b1, a2 = start(11, "a", T0 + 1), start(12, "b", T0 + 1), start(13, "a", T0 + 1)
    lc.observe([a1, b1, a2], tick=True)
    # the latest exit of each group goes first
    assert (a1["restart_of"]["pid"], a2["restart_of"]["pid"], b1["restart_of"]["pid"]) == (3, 1, 2)
    assert b1["restart_of"]["signal"] == 9
    assert (lc.view["a"].restarts, lc.view["b"].restarts) == (2, 1)


def test_exits_kept_for_restarts_are_bounded(clock: Clock) -> None:
    lc = make(clock)
    lc.observe([exit_(i, "g", T0 + i / 1000, code=0) for i in range(RECENT_EXITS + 20)])
    news = [start(1000 + i, "g", T0 + 1) for i in range(RECENT_EXITS + 20)]
    lc.observe(news)
    assert sum(1 for n in news if n["restart_of"]) == RECENT_EXITS


def test_exits_out_of_reach_are_dropped_at_a_poll(clock: Clock) -> None:
    lc = make(clock)
    lc.baseline([])
    lc.observe([exit_(1, "g", T0, code=1)])
    clock.advance(11)
    lc.observe([], tick=True)
    clock.advance(1)
    lc.observe([], tick=True)  # the poll before is now more than the window after the exit
    assert not lc._groups["g"].exits


# -- crash loops -------------------------------------------------------------------------


def supervise(lc: Lifecycle, group: str, first: float, n: int, *, code: int = 1, every: float = 2.0) -> list[dict]:
    """``n`` crashes of a supervised process, each restarted 0.5 s later."""
    out: list[dict] = []
    pid = 100
    for i in range(n):
        t = first + i * every
        out += lc.observe([exit_(pid, group, t, code=code, started=t - 1.5)])
        pid += 1
        out += lc.observe([start(pid, group, t + 0.5)])
    return out


def test_a_crash_loop_is_one_event_and_stable_is_one_more(clock: Clock) -> None:
    lc = make(clock)
    lc.baseline([proc(100, "svc", T0 - 1.5)])
    out = supervise(lc, "svc", T0, 6)
    loops = lifecycle_events(out)
    assert loops == [{"type": "group.crashloop", "ts": T0 + 4.5, "group": "svc", "restarts": 3, "window_s": 60.0}]
    # it follows the start that made it a loop
    assert out[out.index(loops[0]) - 1]["restart_of"] is not None
    clock.t = T0 + 10.5 + 29  # the last restart was at T0+10.5
    assert lifecycle_events(lc.observe([gupd("svc")], tick=True)) == []
    assert lc.view["svc"].crashloop
    clock.t = T0 + 10.5 + 30
    out = lc.observe([gupd("svc"), {"type": "cycle", "ts": clock.t}], tick=True)
    assert kinds(out)[0] == ("group.stable", "svc")  # before the poll's group.update
    assert out[0] == {"type": "group.stable", "ts": clock.t, "group": "svc", "restarts": 6, "window_s": 30.0}
    assert not lc.view["svc"].crashloop
    # and it can loop again
    assert len(lifecycle_events(supervise(lc, "svc", clock.t + 1, 3))) == 1


def test_restarts_spread_wider_than_the_window_are_no_crash_loop(clock: Clock) -> None:
    lc = make(clock)
    assert lifecycle_events(supervise(lc, "svc", T0, 10, every=31.0)) == []
    lc.observe([], tick=True)
    assert lc.view["svc"].restarts == 10 and not lc.view["svc"].crashloop


def test_restarts_after_clean_exits_are_no_crash_loop(clock: Clock) -> None:
    lc = make(clock)
    assert lifecycle_events(supervise(lc, "pool", T0, 10, code=0)) == []


def test_a_group_whose_supervisor_gave_up_stays_in_its_crash_loop(clock: Clock) -> None:
    lc = make(clock)
    out = supervise(lc, "svc", T0, 3)
    out += lc.observe([exit_(103, "svc", T0 + 5, code=1, started=T0 + 4.5)])
    assert kinds(lifecycle_events(out)) == [("group.crashloop", "svc")]
    clock.advance(1000)
    assert lifecycle_events(lc.observe([], tick=True)) == []
    assert lc.view["svc"].crashloop


def test_a_reload_can_change_the_crash_loop_settings(clock: Clock) -> None:
    lc = make(clock)
    lc.configure(LifecycleConfig(crashloop_restarts=2, crashloop_window_s=60), [])
    assert kinds(lifecycle_events(supervise(lc, "svc", T0, 2))) == [("group.crashloop", "svc")]


# -- bounds and the view -----------------------------------------------------------------


def test_groups_the_grouper_drops_are_forgotten_unless_expected(clock: Clock) -> None:
    lc = make(clock, ExpectedGroup("keep", 1))
    lc.baseline([proc(1, "keep", T0), proc(2, "gone", T0)])
    lc.forget(["keep", "gone"])
    lc.observe([], tick=True)
    assert set(lc.view) == {"keep"}


def test_groups_no_poll_reports_are_forgotten_once_idle(clock: Clock) -> None:
    lc = make(clock)
    lc.baseline([])
    lc.observe([start(1, "brief", T0), exit_(1, "brief", T0 + 0.01, code=0, started=T0)])
    lc.observe([], tick=True, reported={"other"})
    assert "brief" in lc.view  # its exit may still be replaced
    clock.advance(30)
    lc.observe([], tick=True, reported={"other"})
    lc.observe([], tick=True, reported={"other"})
    assert "brief" not in lc.view and "brief" not in lc._groups


def test_the_view_is_replaced_at_polls_not_changed(clock: Clock) -> None:
    lc = make(clock)
    lc.baseline([proc(1, "g", T0)])
    before = lc.view
    lc.observe([exit_(1, "g", T0 + 1, code=1)])
    assert lc.view is before  # kernel batches don't publish
    lc.observe([], tick=True)
    assert lc.view is not before and before["g"].exits == {} and lc.view["g"].exits == {"error": 1}
