from __future__ import annotations

import tracemalloc

import pytest

from procstream.grouper import Grouper
from procstream.procfs.models import States
from tests.support.fake_procs import BOOT, HZ, ByName, Clock, fake


def grouper(*names: str, **kw) -> Grouper:
    return Grouper(ByName(set(names)), clock=Clock(), usernames=str, **kw)


def test_groups_aggregate_gauges_of_their_processes():
    g = grouper("web", "db")
    g.update(
        [
            fake(10, "web", start=100, rss=1000, vsize=5000, swap=1, threads=2, fds=10, limit=100, state="R"),
            fake(11, "web", start=50, rss=2000, vsize=6000, swap=2, threads=3, fds=40, limit=100),
            fake(12, "db", rss=7, fds=-1, state="D"),
            fake(13, "other"),
        ]
    )
    groups = g.groups()
    assert set(groups) == {"web", "db"}
    web = groups["web"]
    assert web.procs == 2
    assert web.memory.resident_bytes == 3000
    assert web.memory.virtual_bytes == 11000
    assert web.memory.swapped_bytes == 3
    assert web.num_threads == 5
    assert web.open_fds == 50
    assert web.worst_fd_ratio == pytest.approx(0.4)
    assert web.states == States(running=1, sleeping=1)
    assert web.oldest_start_time == pytest.approx(BOOT + 50 / HZ)
    db = groups["db"]
    assert db.open_fds == 0 and db.worst_fd_ratio == 0.0
    assert db.states == States(waiting=1)


def test_counters_accumulate_never_decrease_and_keep_exited_usage():
    g = grouper("w")
    g.update([fake(10, "w", start=1)])  # first poll: baseline, pid 10 starts from zero
    g.update([fake(10, "w", start=1, cpu=(1.0, 0.0)), fake(11, "w", start=10, cpu=(0.5, 0.5), io=(100, 10))])
    c = g.groups()["w"].counts
    assert c.cpu == pytest.approx(2.0)  # 1.0 from pid 10 + everything of new pid 11
    assert (c.read_bytes, c.write_bytes) == (100, 10)
    # pid 11 exits; pid 10's counters drop (can't happen for real, but must not subtract)
    r = g.update([fake(10, "w", start=1, cpu=(0.5, 0.0))])
    assert [tp.pid for tp in r.exited] == [11]
    c2 = g.groups()["w"].counts
    assert c2.cpu == pytest.approx(2.0)
    assert c2.read_bytes == 100
    g.update([fake(10, "w", start=1, cpu=(3.0, 0.0))])
    assert g.groups()["w"].counts.cpu == pytest.approx(4.5)


def test_empty_groups_are_kept_with_their_totals():
    g = grouper("w")
    g.update([])
    g.update([fake(10, "w", start=10, cpu=(1.0, 1.0), rss=5)])
    g.update([])
    w = g.groups()["w"]
    assert w.procs == 0
    assert w.memory.resident_bytes == 0
    assert w.oldest_start_time == 0.0
    assert w.counts.cpu == pytest.approx(2.0)


def test_empty_groups_are_removed_when_asked():
    g = grouper("w", remove_empty_groups=True)
    g.update([fake(10, "w")])
    r = g.update([])
    assert r.removed_groups == ["w"]
    assert g.groups() == {}
    assert g.update([]).removed_groups == []


def test_unmatched_child_joins_its_tracked_parent_group():
    g = grouper("sshd")
    g.update([fake(100, "sshd")])
    r = g.update([fake(100, "sshd"), fake(101, "bash", ppid=100, start=2000)])
    assert [(tp.pid, tp.group) for tp in r.started] == [(101, "sshd")]
    assert g.groups()["sshd"].procs == 2


def test_children_and_grandchildren_of_a_parent_new_in_the_same_poll():
    g = grouper("sshd")
    g.update([])
    r = g.update(
        [
            fake(303, "vim", ppid=302, start=3),  # listed before its ancestors on purpose
            fake(302, "bash", ppid=301, start=2),
            fake(301, "sshd", ppid=1, start=1),
            fake(400, "cron", ppid=1, start=4),
        ]
    )
    assert [(tp.pid, tp.group) for tp in r.started] == [(301, "sshd"), (302, "sshd"), (303, "sshd")]
    assert g.tracker.is_ignored(g.tracker.known(400))


def test_child_of_an_ignored_process_is_ignored():
    g = grouper("sshd")
    g.update([fake(200, "cron")])
    r = g.update([fake(200, "cron"), fake(201, "sh", ppid=200, start=5000)])
    assert r.started == []
    assert g.tracker.is_ignored(g.tracker.known(201))


def test_without_track_children_unmatched_children_are_ignored():
    g = grouper("sshd", track_children=False)
    g.update([fake(100, "sshd")])
    r = g.update([fake(100, "sshd"), fake(101, "bash", ppid=100, start=2000)])
    assert r.started == []


def test_a_child_matching_its_own_rule_keeps_its_own_group():
    g = grouper("sshd", "bash")
    g.update([fake(100, "sshd")])
    r = g.update([fake(100, "sshd"), fake(101, "bash", ppid=100, start=2000)])
    assert [(tp.pid, tp.group) for tp in r.started] == [(101, "bash")]


def test_recheck_matches_a_process_after_it_renames_itself():
    g = grouper("worker", recheck=True)
    g.update([fake(50, "python")])
    assert g.groups() == {}
    r = g.update([fake(50, "worker")])
    assert [(tp.pid, tp.group) for tp in r.started] == [(50, "worker")]


def test_without_recheck_an_ignored_process_that_renames_itself_stays_ignored():
    g = grouper("worker")
    g.update([fake(50, "python", stack=0x7FFD0000)])
    r = g.update([fake(50, "worker", stack=0x7FFD0000)])  # prctl(PR_SET_NAME): same stack
    assert r.started == []


def test_an_ignored_process_that_execs_is_judged_anew():
    # A poll between the parent's fork and the child's exec sees a copy of the parent.
    g = grouper("worker")
    g.update([fake(50, "python", stack=0x7FFD0000)])
    assert g.tracker.is_ignored(g.tracker.known(50))
    r = g.update([fake(50, "python", stack=0x7FFE1000, cmdline=("python", "worker.py"))])
    assert r.started == []  # exec'd into something that matches nothing: ignored again
    r = g.update([fake(50, "worker", stack=0x7FFC2000)])
    assert [(tp.pid, tp.group) for tp in r.started] == [(50, "worker")]
    assert r.started[0].static.name == "worker"
    r = g.update([fake(50, "worker", stack=0x7FFC2000)])
    assert r.started == [] and r.exited == []


def test_exec_without_a_known_stack_is_told_by_the_name():
    g = grouper("worker")
    g.update([fake(50, "python")])  # stack 0: not permitted to see it
    r = g.update([fake(50, "worker")])
    assert [(tp.pid, tp.group) for tp in r.started] == [(50, "worker")]


def test_an_ignored_process_exiting_is_not_judged_anew():
    # a zombie has no memory map: its stack reads 0, which is no exec
    g = grouper("python")
    g.update([fake(62, "cat", stack=0x7FFD0000)])
    r = g.update([fake(62, "cat", state="Z", cmdline=())])
    assert r.started == [] and g.tracker.is_ignored(g.tracker.known(62))


def test_pid_reuse_reports_exit_and_start():
    g = grouper("a", "b")
    g.update([fake(10, "a", start=100)])
    r = g.update([fake(10, "b", start=900)])
    assert [(tp.pid, tp.group) for tp in r.exited] == [(10, "a")]
    assert [(tp.pid, tp.group) for tp in r.started] == [(10, "b")]


def test_report_counts_seen_and_tracked():
    g = grouper("a")
    r = g.update([fake(1, "a", ppid=0), fake(2, "b", ppid=0), fake(3, "a", ppid=0)])
    assert (r.procs_seen, r.tracked) == (3, 2)


def test_matching_uses_username_and_attributes():
    seen = []

    class Spy:
        needs_cgroups = False

        def match_and_name(self, attrs):
            seen.append(attrs)
            return True, f"{attrs.username}:{attrs.pid}"

    g = Grouper(Spy(), clock=Clock(), usernames=lambda uid: f"user{uid}")
    r = g.update([fake(7, "x", uid=42, cmdline=("x", "--flag"))])
    assert r.started[0].group == "user42:7"
    assert seen[0].cmdline == ("x", "--flag")
    assert seen[0].start_time == pytest.approx(BOOT + 1000 / HZ)


def test_no_growth_under_churn_of_10000_short_processes():
    g = grouper("short")
    init = fake(1, "init", start=1)
    g.update([init])
    tracemalloc.start()
    try:
        baseline = None
        for i in range(10_000):
            pid = 2 + (i % 32_000)
            procs = [init, fake(pid, "short" if i % 2 else "other", start=10 + i, cpu=(0.01, 0.0))]
            g.update(procs)
            if i == 1000:
                baseline = tracemalloc.get_traced_memory()[0]
        current = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    g.update([init])
    assert len(g.tracker.tracked) == 0
    assert len(g.tracker._ignored) <= 1
    assert baseline is not None and current - baseline < 64 * 1024
    assert g.groups()["short"].counts.cpu == pytest.approx(0.01 * 5000)


def test_admit_tracks_a_process_between_polls_by_rule_or_ancestry():
    g = grouper("sshd", "ls")
    g.update([fake(100, "sshd")])
    tp = g.admit(fake(101, "ls", ppid=100, start=5000))
    assert tp is not None and (tp.group, tp.source) == ("ls", "netlink")
    child = g.admit(fake(102, "cat", ppid=100, start=5001))
    assert child is not None and child.group == "sshd"
    assert g.admit(fake(101, "ls", ppid=100, start=5000)) is None  # already tracked
    assert g.admit(fake(103, "cron", ppid=1, start=5002)) is None
    assert g.tracker.is_ignored(g.tracker.known(103))
    # the next poll sees them as known: no second start
    r = g.update([fake(100, "sshd"), fake(101, "ls", ppid=100, start=5000), fake(102, "cat", ppid=100, start=5001)])
    assert r.started == [] and r.exited == []


def test_admit_judges_an_ignored_process_anew_after_exec():
    g = grouper("worker")
    g.update([fake(50, "python", ppid=0)])
    assert g.tracker.is_ignored(g.tracker.known(50))
    tp = g.admit(fake(50, "worker", ppid=0))
    assert tp is not None and tp.group == "worker"


def test_admit_of_a_vanished_process_is_none():
    class Gone:
        pid = 9

        def proc_id(self):
            raise ProcessLookupError

    g = grouper("x")
    assert g.admit(Gone()) is None


def test_retire_counts_final_usage_and_keeps_a_zombie_from_coming_back():
    g = grouper("w")
    g.update([])
    g.update([fake(10, "w", start=50, cpu=(1.0, 0.0))])
    assert g.groups()["w"].counts.cpu == pytest.approx(1.0)
    final = fake(10, "w", start=50, cpu=(1.7, 0.1), io=(5, 6)).metrics()
    tp = g.retire(g.tracker.known(10), final)
    assert tp is not None and tp.metrics.cpu_time == pytest.approx(1.8)
    assert g.retire(tp.id, final) is None  # only once
    # the zombie is still listed at the next poll: no new start, no second exit
    r = g.update([fake(10, "w", start=50, cpu=(1.7, 0.1), state="Z")])
    assert r.started == [] and r.exited == []
    w = g.groups()["w"]
    assert w.procs == 0
    assert w.counts.cpu == pytest.approx(1.8)
    assert (w.counts.read_bytes, w.counts.write_bytes) == (5, 6)
    g.update([])
    assert g.tracker.known(10) is None
