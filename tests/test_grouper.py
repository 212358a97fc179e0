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


# -- a reaped child's I/O: Linux adds it to its parent's counters ----------------------------


def family(parent_io: int, child_io: int | None = None) -> list:
    procs = [fake(10, "p", start=500, io=(parent_io, 2 * parent_io))]
    if child_io is not None:
        procs.append(fake(20, "c", start=600, ppid=10, io=(child_io, 2 * child_io)))
    return procs


def io(g: Grouper, name: str) -> tuple[int, int]:
    c = g.groups()[name].counts
    return c.read_bytes, c.write_bytes


def test_a_reaped_childs_io_counts_in_its_group_not_again_in_its_parents():
    g = grouper("p", "c")
    g.update([])
    g.update(family(10, 0))
    g.update(family(15, 1000))
    # reaped between polls: the child is gone, its parent's counters jumped by its I/O
    g.update(family(15 + 1000 + 7))
    assert io(g, "c") == (1000, 2000)
    assert io(g, "p") == (22, 44)  # its own 10 + 5 + 7: every byte counted once


def test_when_the_parents_jump_shows_a_poll_later_it_is_taken_out_then():
    g = grouper("p", "c")
    g.update([])
    g.update(family(0, 400))
    g.update(family(3))  # the parent read before the reap, the child after it
    g.update(family(3 + 400 + 5))
    assert io(g, "p") == (8, 16)
    g.update(family(408 + 50))  # the parent's own increases are its own again
    assert io(g, "p") == (58, 116) and io(g, "c") == (400, 800)


def test_the_reaper_the_kernel_names_gets_the_credit_and_an_untracked_one_none():
    g = grouper("p", "c", "r")
    g.update([])
    g.update([fake(20, "c", start=600, ppid=10, io=(0, 100)), fake(30, "r", start=550, ppid=1)])
    tp = g.retire(g.tracker.known(20), fake(20, "c", start=600, ppid=10, io=(0, 100)).metrics(), reaper=30)
    assert tp is not None and tp.reaper == 30  # reparented to 30 (an ancestor), which reaps it
    g.update([fake(30, "r", start=550, ppid=1, io=(0, 100))])
    assert io(g, "r") == (0, 0) and io(g, "c") == (0, 100)
    # a child whose parent nobody tracks: its parent's counters count nowhere anyway
    g.update([fake(30, "r", start=550, ppid=1, io=(0, 100)), fake(21, "c", start=800, ppid=99, io=(0, 5))])
    g.update([fake(30, "r", start=550, ppid=1, io=(0, 100))])
    assert io(g, "c") == (0, 105)


def test_a_parents_final_counters_at_its_exit_leave_its_reaped_childrens_out():
    g = grouper("p", "c")
    g.update([])
    g.update(family(0, 300))
    g.retire(g.tracker.known(20), family(0, 300)[1].metrics())  # the kernel: exited and reaped
    g.retire(g.tracker.known(10), family(300 + 9)[0].metrics())  # then the parent exits
    g.update([])
    assert io(g, "p") == (9, 18) and io(g, "c") == (300, 600)


# -- zombies ------------------------------------------------------------------------------------


def test_a_retired_process_still_listed_counts_in_its_group_until_reaped():
    g = grouper("w")
    g.update([])
    g.update([fake(10, "w", start=50, cpu=(1.0, 0.0))])
    zombie = fake(10, "w", start=50, cpu=(1.7, 0.1), state="Z")
    tp = g.retire(g.tracker.known(10), zombie.metrics(), listed=True)
    assert tp is not None and tp.exited
    assert g.retire(tp.id, zombie.metrics(), listed=True) is None  # reported once
    r = g.update([zombie])
    assert r.started == r.exited == []
    w = g.groups()["w"]
    assert (w.procs, w.states.zombie, w.counts.cpu) == (1, 1, pytest.approx(1.8))
    r = g.update([])  # reaped
    assert r.exited == [] and g.groups()["w"].procs == 0 and g.groups()["w"].counts.cpu == pytest.approx(1.8)


# -- named again on exec (kernel events) --------------------------------------------------------


def test_rename_keeps_usage_so_far_in_the_old_group_and_refreshes_name_and_argv():
    g = grouper("sh", "sleep")
    g.kernel_events = True
    g.update([])
    g.update([fake(10, "sh", start=500, cpu=(0.5, 0.0), stack=0x7000)])
    tp = g.tracker.tracked[g.tracker.known(10)]
    renamed = g.rename(tp, fake(10, "sleep", start=500, cmdline=("sleep", "9"), cpu=(0.8, 0.0), stack=0x8000))
    assert renamed is not None and (renamed.name, renamed.group) == ("sh", "sh")
    assert (tp.group, tp.static.name, tp.static.cmdline) == ("sleep", "sleep", ("sleep", "9"))
    g.update([fake(10, "sleep", start=500, cmdline=("sleep", "9"), cpu=(1.0, 0.0), stack=0x8000)])
    groups = g.groups()
    assert groups["sh"].counts.cpu == pytest.approx(0.8) and groups["sh"].procs == 0
    assert groups["sleep"].counts.cpu == pytest.approx(0.2) and groups["sleep"].procs == 1
    # the same program read again: nothing changed, nothing to say
    assert g.rename(tp, fake(10, "sleep", start=500, cmdline=("sleep", "9"), stack=0x8000)) is None


def test_a_program_no_rule_names_keeps_the_process_in_its_group():
    g = grouper("sh")
    g.kernel_events = True
    g.update([fake(10, "sh", start=500, stack=0x7000)])
    tp = g.tracker.tracked[g.tracker.known(10)]
    renamed = g.rename(tp, fake(10, "unnamed", start=500, stack=0x8000))
    assert renamed is not None and tp.group == "sh" and tp.static.name == "unnamed"


def test_a_poll_names_a_process_again_only_with_kernel_events():
    g = grouper("sh", "node", "node-main")
    g.update([fake(10, "node", start=500, stack=0x7000)])
    r = g.update([fake(10, "node-main", start=500, stack=0x7000)])
    assert r.renamed == [] and g.groups()["node"].procs == 1  # process-exporter: named once
    g.kernel_events = True
    r = g.update([fake(10, "node-main", start=500, stack=0x7000)])
    assert [(x.tp.group, x.name, x.group) for x in r.renamed] == [("node-main", "node", "node")]
    assert g.groups()["node-main"].procs == 1 and g.groups()["node"].procs == 0


def test_an_unknown_argv_is_named_by_comm_with_kernel_events_only():
    from procstream.config import parse_config
    from procstream.procfs.models import FixedProc, ProcIdInfo, ProcStatic

    def zombie(pid: int, name: str) -> FixedProc:
        p = fake(pid, name, start=900, ppid=10, cmdline=(), state="Z")
        s = p.info.static
        static = ProcStatic(s.name, (), s.parent_pid, s.start_time, s.uid, cmdline_known=False)
        return FixedProc(ProcIdInfo(p.info.id, static, p.info.metrics))

    config = parse_config('process_names:\n  - name: "{{.Comm}}"\n    cmdline: [".+"]\n')
    g = Grouper(config, clock=Clock(), usernames=str)
    g.update([fake(10, "bash", start=100, cmdline=("bash", "/dev/fd/3"))])
    g.update([fake(10, "bash", start=100, cmdline=("bash", "/dev/fd/3")), zombie(11, "sh")])
    assert g.tracker.tracked[g.tracker.known(11)].group == "bash"  # process-exporter's: its ancestor's
    g.kernel_events = True
    tp = g.admit(zombie(12, "sh"))
    assert tp is not None and tp.group == "sh" and tp.static.cmdline == ()  # by what is known: its comm


# -- groups of short-lived processes expire; groups a poll saw, and pinned ones, stay ------------


def test_a_group_no_poll_saw_alive_is_dropped_after_the_ttl():
    clock = Clock()
    g = Grouper(ByName({"short", "long", "pinned"}), clock=clock, usernames=str, group_ttl=60.0)
    g.pin(["pinned"])
    assert "pinned" in g.groups()  # reported from the moment it is pinned
    g.update([])
    g.update([fake(10, "long", start=500)])  # a poll finds it alive
    for pid, name in ((20, "short"), (21, "pinned")):  # between polls, as the kernel reports them
        tp = g.admit(fake(pid, name, start=600, cpu=(0.1, 0.0)))
        assert tp is not None
        g.retire(tp.id, tp.metrics)
    clock.advance(1)
    r = g.update([])
    assert set(g.groups()) == {"short", "long", "pinned"} and r.removed_groups == []
    assert g.groups()["short"].counts.cpu == pytest.approx(0.1)
    clock.advance(59.5)
    assert g.update([]).removed_groups == []
    clock.advance(0.5)
    assert g.update([]).removed_groups == ["short"]
    assert set(g.groups()) == {"long", "pinned"}
    clock.advance(3600)
    assert g.update([]).removed_groups == [] and set(g.groups()) == {"long", "pinned"}


def test_a_short_lived_group_stays_ttl_seconds_after_its_last_process():
    clock = Clock()
    g = Grouper(ByName({"short"}), clock=clock, usernames=str, group_ttl=10.0)
    g.update([])
    for pid in (20, 21):  # one process, then another 8 s later
        tp = g.admit(fake(pid, "short", start=600 + pid))
        assert tp is not None
        g.retire(tp.id, tp.metrics)
        clock.advance(8)
        assert g.update([]).removed_groups == []
    clock.advance(9)  # 17 s after the first one left, 9 after the second
    assert g.update([]).removed_groups == []
    clock.advance(1)
    assert g.update([]).removed_groups == ["short"]


def test_without_a_ttl_every_group_is_kept_and_remove_empty_groups_spares_pinned_ones():
    g = grouper("short")
    g.update([])
    tp = g.admit(fake(20, "short", start=600))
    assert tp is not None
    g.retire(tp.id)
    g.tracker.clock.advance(10**6)  # type: ignore[attr-defined]
    g.update([])
    assert "short" in g.groups()
    g = grouper("a", "b", remove_empty_groups=True)
    g.pin(["a"])
    g.update([fake(10, "a"), fake(11, "b")])
    assert g.update([]).removed_groups == ["b"] and set(g.groups()) == {"a"}


def test_no_credit_to_a_younger_process_that_took_the_dead_parents_pid():
    g = grouper("p", "c")
    g.update([])
    g.update([fake(20, "c", start=600, ppid=10, io=(0, 100))])  # its parent, 10, is gone
    g.update([fake(20, "c", start=600, ppid=10, io=(0, 100)), fake(10, "p", start=900)])  # pid 10 reused
    g.update([fake(10, "p", start=900, io=(0, 100))])  # 20 reaped by init; 10 wrote 100 of its own
    assert io(g, "p") == (0, 100) and io(g, "c") == (0, 100)
