from __future__ import annotations

import tracemalloc

import pytest

from procstream.procfs.errors import ProcfsParseError
from procstream.procfs.models import ExecMark, FixedProc, ProcId, ProcMetrics, ProcStatic, Sample
from procstream.tracker import Counts, Tracker, TrackerUpdate, info
from tests.support.fake_procs import Clock, fake


def decide_all(tracker: Tracker, report, group: str = "g") -> None:
    for new in report.new:
        tracker.track(group, new)


def test_new_processes_are_reported_once_and_tracked():
    t = Tracker(clock=Clock())
    r = t.update([fake(10), fake(11)])
    assert [n.id.pid for n in r.new] == [10, 11]
    assert r.procs_seen == 2
    decide_all(t, r)
    r = t.update([fake(10), fake(11)])
    assert r.new == [] and r.exited == []
    assert len(t) == 2


def test_exit_is_reported_once_with_last_sample_then_forgotten():
    t = Tracker(clock=Clock())
    decide_all(t, t.update([fake(10, cpu=(1.0, 0.5))]))
    t.update([fake(10, cpu=(2.0, 0.5))])
    r = t.update([])
    assert [tp.id.pid for tp in r.exited] == [10]
    assert r.exited[0].metrics.cpu_time == pytest.approx(2.5)
    assert t.update([]).exited == []
    assert t.known(10) is None


def test_reused_pid_with_new_start_time_is_a_new_process():
    t = Tracker(clock=Clock())
    decide_all(t, t.update([fake(10, start=100)]))
    r = t.update([fake(10, start=500)])
    assert [tp.id for tp in r.exited] == [ProcId(10, 100)]
    assert [n.id for n in r.new] == [ProcId(10, 500)]
    decide_all(t, r)
    assert t.known(10) == ProcId(10, 500)


def test_ignored_processes_are_not_read_and_are_forgotten_on_exit():
    t = Tracker(clock=Clock())
    r = t.update([fake(20)])
    t.ignore(r.new[0].id)
    # metrics() would raise: an ignored process must not be read beyond its stat
    r = t.update([fake(20, error=AssertionError("metrics read for an ignored process"))])
    assert r.new == [] and r.exited == []
    assert t.known(20) == ProcId(20, 1000)
    r = t.update([])
    assert r.exited == []  # ignored processes exit silently
    assert t.known(20) is None and not t.is_ignored(ProcId(20, 1000))


def test_an_ignored_process_is_new_again_once_it_execs():
    t = Tracker(clock=Clock())
    r = t.update([fake(20, "sh", stack=0x7000)])
    t.ignore(r.new[0].id, r.new[0].mark)
    assert t.update([fake(20, "sh", stack=0x7000)]).new == []
    r = t.update([fake(20, "cat", stack=0x9000)])
    assert [(n.id, n.static.name, n.mark) for n in r.new] == [(ProcId(20, 1000), "cat", ("cat", 0x9000))]
    # still ignored until judged again; without a mark, never new again
    t.ignore(r.new[0].id)
    assert t.update([fake(20, "other", stack=0xA000)]).new == []


def test_usage_of_processes_running_at_first_poll_starts_at_zero():
    t = Tracker(clock=Clock())
    r = t.update([fake(10, start=100, cpu=(5.0, 1.0))])
    tp = t.track("g", r.new[0])
    assert tp.latest == Counts()
    t.update([fake(10, start=100, cpu=(5.5, 1.0), io=(10, 0))])
    assert tp.latest.cpu == pytest.approx(0.5)
    assert tp.latest.read_bytes == 10


def test_processes_started_after_first_poll_count_everything():
    t = Tracker(clock=Clock())
    t.update([fake(10, start=100)])
    r = t.update([fake(10, start=100), fake(30, start=200, cpu=(0.3, 0.1), io=(7, 8))])
    by_pid = {n.id.pid: n for n in r.new}
    assert t.track("g", by_pid[10]).latest == Counts()
    tp = t.track("g", by_pid[30])
    assert tp.latest.cpu == pytest.approx(0.4)
    assert (tp.latest.read_bytes, tp.latest.write_bytes) == (7, 8)


def test_counter_drops_count_as_zero_not_negative():
    t = Tracker(clock=Clock())
    decide_all(t, t.update([fake(10, io=(100, 100), ctx=(50, 5))]))
    tp = t.tracked[ProcId(10, 1000)]
    t.update([fake(10, io=(0, 120), ctx=(40, 6))])  # io became unreadable, a thread left
    assert tp.latest.read_bytes == 0
    assert tp.latest.write_bytes == 20
    assert tp.latest.ctx_voluntary == 0
    assert tp.latest.ctx_nonvoluntary == 1


def test_vanishing_mid_read_is_an_exit_not_an_error():
    t = Tracker(clock=Clock())
    decide_all(t, t.update([fake(10)]))
    r = t.update([fake(10, error=ProcessLookupError())])
    assert [tp.pid for tp in r.exited] == [10]
    assert (r.errors.read, r.errors.permission) == (0, 0)


def test_unreadable_and_garbage_processes_are_counted():
    class Broken:
        def __init__(self, pid: int, exc: BaseException) -> None:
            self.pid = pid
            self.exc = exc

        def proc_id(self) -> ProcId:
            raise self.exc

    t = Tracker(clock=Clock())
    r = t.update([Broken(1, PermissionError()), Broken(2, ProcfsParseError("bad")), fake(3)])
    assert r.errors.permission == 1
    assert r.errors.read == 1
    assert [n.id.pid for n in r.new] == [3]


class BadStat:
    """A process whose ``stat`` can't be read or parsed in this poll."""

    def __init__(self, pid: int, exc: BaseException) -> None:
        self.pid = pid
        self.exc = exc

    def follow(self, prev: Sample) -> None:
        """Its ``stat`` fails before anything is compared."""

    def proc_id(self) -> ProcId:
        raise self.exc


@pytest.mark.parametrize("exc", [ProcfsParseError("garbage"), PermissionError(), OSError(5, "EIO")])
def test_an_unreadable_or_garbage_stat_keeps_the_process_no_exit_and_no_new_start(exc: BaseException):
    t = Tracker(clock=Clock())
    first = t.update([fake(10, cpu=(1.0, 0.0)), fake(11)])
    t.track("g", first.new[0])
    t.ignore(first.new[1].id, first.new[1].mark)  # ignored ones stay too
    r = t.update([BadStat(10, exc), BadStat(11, exc)])
    assert r.exited == [] and r.new == []
    assert (r.errors.read, r.errors.permission) == ((0, 2) if isinstance(exc, PermissionError) else (2, 0))
    assert t.tracked[ProcId(10, 1000)].latest == Counts()  # nothing used while unknown
    r = t.update([fake(10, cpu=(3.0, 0.0)), fake(11)])
    assert r.exited == [] and r.new == []  # the same processes, not new ones
    assert t.tracked[ProcId(10, 1000)].latest.cpu_user == pytest.approx(2.0)
    # gone for real: its stat vanished
    r = t.update([BadStat(10, ProcessLookupError())])
    assert [tp.pid for tp in r.exited] == [10]


def test_permission_error_on_a_tracked_process_keeps_it_alive():
    t = Tracker(clock=Clock())
    decide_all(t, t.update([fake(10, cpu=(1.0, 0.0))]))
    r = t.update([fake(10, error=PermissionError())])
    assert r.exited == [] and r.errors.permission == 1
    assert t.tracked[ProcId(10, 1000)].latest == Counts()


def test_partial_errors_are_counted_per_process():
    t = Tracker(clock=Clock())
    decide_all(t, t.update([fake(10), fake(11)]))
    r = t.update([fake(10, partial=2), fake(11)])
    assert r.errors.partial == 1


def test_track_survives_a_process_that_vanishes_before_its_metrics():
    t = Tracker(clock=Clock())
    t.update([])
    r = t.update([fake(40, start=5000, error=ProcessLookupError())])
    tp = t.track("g", r.new[0])
    assert tp.metrics.cpu_time == 0.0
    assert [x.pid for x in t.update([]).exited] == [40]


def test_info_reads_identity_static_and_metrics():
    p = fake(7, "seven", cpu=(1.0, 2.0))
    i = info(p)
    assert i.id == ProcId(7, 1000)
    assert i.static.name == "seven"
    assert i.metrics.cpu_time == pytest.approx(3.0)


def test_no_growth_under_churn_of_10000_short_processes():
    t = Tracker(clock=Clock())
    t.update([fake(1, start=1)])
    tracemalloc.start()
    try:
        baseline = None
        for i in range(10_000):
            pid = 1000 + (i % 30_000)
            start = 10 + i
            r = t.update([fake(1, start=1), fake(pid, start=start)])
            for new in r.new:
                if i % 2:
                    t.track("g", new)
                else:
                    t.ignore(new.id)
            if i == 1000:
                baseline = tracemalloc.get_traced_memory()[0]
        current = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(t.tracked) <= 2
    assert len(t._ignored) <= 1
    assert len(t._by_pid) <= 2
    assert baseline is not None
    assert current - baseline < 64 * 1024


# -- exits another source reported: zombies stay, their reap is not a second exit ---------


def test_a_process_whose_exit_was_reported_stays_while_listed_then_is_reaped_quietly():
    t = Tracker(clock=Clock())
    t.update([])
    decide_all(t, t.update([fake(10, cpu=(1.0, 0.0), rss=100)]))
    tp = t.tracked[t.known(10)]
    tp.exited = True  # as the grouper marks it when the kernel reports the exit
    r = t.update([fake(10, cpu=(1.5, 0.0), state="Z")])
    assert r.exited == [] and r.reaped == [] and len(t) == 1
    assert tp.metrics.states.zombie == 1 and tp.metrics.resident_bytes == 0  # its gauges are the zombie's
    assert tp.latest == Counts()  # its usage was final at the exit
    r = t.update([])
    assert r.exited == [] and [p.pid for p in r.reaped] == [10] and len(t) == 0


# -- execs and renames of tracked processes (only when watched) ---------------------------------


def test_a_tracked_process_running_another_program_is_reported_when_execs_are_watched():
    t = Tracker(clock=Clock())
    decide_all(t, t.update([fake(10, "sh", stack=0x7000), fake(11, "kworker", stack=0)]))
    moved = [fake(10, "sleep", stack=0x8000), fake(11, "kworker/1", stack=0)]
    assert t.update(moved).changed == []  # process-exporter's rule: named once
    t.watch_execs = True
    r = t.update([fake(10, "sleep", stack=0x9000), fake(11, "kworker/2", stack=0)])
    # a moved stack is an exec; a name without a stack (a kernel thread) tells nothing
    assert [(tp.pid, mark.comm) for tp, _, mark in r.changed] == [(10, "sleep")]
    t.tracked[t.known(10)].mark = r.changed[0][2]  # named again
    assert t.update([fake(10, "sleep", stack=0x9000)]).changed == []
    r = t.update([fake(10, "node-main", stack=0x9000)])  # renamed itself: same stack, new name
    assert [mark.comm for _, _, mark in r.changed] == ["node-main"]


# -- reading less: samples followed, every file read every ``full_every`` polls ---------


class Followed:
    """A process that remembers what the tracker asked of it: the sample it was told
    to follow, whether it had to read everything, and ``stat``. ``idle``: it has not
    run, so a followed sample comes back as it was (what ``Proc`` does)."""

    def __init__(self, proc: FixedProc, log: dict[int, list[tuple[Sample | None, bool, bool]]], *, idle: bool = True) -> None:
        self.proc = proc
        self.log = log
        self.idle = idle
        self.prev: Sample | None = None
        self.pid = proc.pid
        self.same_when_full = False  # a full read finds what the followed sample had

    def follow(self, prev: Sample) -> None:
        self.prev = prev

    def proc_id(self) -> ProcId:
        return self.proc.proc_id()

    def exec_mark(self) -> ExecMark:
        return self.proc.exec_mark()

    def static(self, *, cgroups: bool = False) -> ProcStatic:
        return self.proc.static()

    def metrics(self) -> ProcMetrics:
        return self.proc.metrics()

    def fd_limit(self) -> int:
        return 0

    def glance(self) -> Sample:
        self.log.setdefault(self.pid, []).append((self.prev, False, False))
        return self.proc.glance()

    def sample(self, *, full: bool = False, restat: bool = False) -> Sample:
        self.log.setdefault(self.pid, []).append((self.prev, full, restat))
        if self.idle and self.prev is not None and (not full or self.same_when_full):
            return self.prev
        return self.proc.sample()


def poll_followed(t: Tracker, pids: range, log: dict, **kw: object) -> TrackerUpdate:
    return t.update([Followed(fake(pid, cpu=kw.get("cpu", (0.0, 0.0))), log, idle=bool(kw.get("idle", True))) for pid in pids])  # type: ignore[arg-type]


@pytest.mark.parametrize("which", [1, 2])  # full, restat
def test_each_tracked_process_is_read_again_on_a_staggered_schedule(which: int):
    t = Tracker(clock=Clock(), full_every=3, restat_every=2)
    every = (0, 3, 2)[which]
    log: dict[int, list[tuple[Sample | None, bool, bool]]] = {}
    decide_all(t, poll_followed(t, range(10, 16), log))
    log.clear()
    per_poll = []
    for _ in range(12):
        poll_followed(t, range(10, 16), log)
        per_poll.append(sum(1 for calls in log.values() if calls[-1][which]))
    for pid, calls in log.items():
        turns = [i for i, call in enumerate(calls) if call[which]]
        assert turns[0] < every and all(b - a == every for a, b in zip(turns, turns[1:])), (pid, turns)
        assert all(call[0] is not None for call in calls)  # each followed its last sample
    assert per_poll == [6 // every] * 12  # a share of them at each poll, never all at once


def test_a_process_that_has_not_run_keeps_its_usage_and_counts_as_skipped():
    t = Tracker(clock=Clock(), full_every=1000)
    log: dict[int, list[tuple[Sample | None, bool, bool]]] = {}
    decide_all(t, poll_followed(t, range(10, 13), log))
    before = {pid: t.tracked[ProcId(pid, 1000)].metrics for pid in range(10, 13)}
    r = poll_followed(t, range(10, 13), log, cpu=(5.0, 0.0))  # what a full read would find
    assert r.reads_skipped == 3
    for pid in range(10, 13):
        tp = t.tracked[ProcId(pid, 1000)]
        assert tp.metrics is before[pid] and tp.latest == Counts()
    r = poll_followed(t, range(10, 13), log, cpu=(5.0, 0.0), idle=False)  # they ran
    assert r.reads_skipped == 0
    assert all(t.tracked[ProcId(pid, 1000)].latest.cpu == pytest.approx(5.0) for pid in range(10, 13))


def test_a_full_read_that_found_nothing_new_is_not_a_skipped_read():
    t = Tracker(clock=Clock(), full_every=1)
    log: dict[int, list[tuple[Sample | None, bool, bool]]] = {}
    procs = [Followed(fake(pid), log) for pid in range(10, 13)]
    decide_all(t, t.update(procs))  # type: ignore[arg-type]
    for p in procs:
        p.same_when_full = True  # what Proc does when nothing moved
    before = {pid: t.tracked[ProcId(pid, 1000)].sample for pid in range(10, 13)}
    t.take_changes()
    r = t.update(procs)  # type: ignore[arg-type]
    assert r.reads_skipped == 0 and not t.take_changes()  # read whole, and nothing changed
    assert all(t.tracked[ProcId(pid, 1000)].sample is before[pid] for pid in range(10, 13))


def test_full_every_1_reads_everything_at_every_poll():
    t = Tracker(clock=Clock(), full_every=1)
    log: dict[int, list[tuple[Sample | None, bool, bool]]] = {}
    decide_all(t, poll_followed(t, range(10, 13), log))
    log.clear()
    for _ in range(3):
        assert poll_followed(t, range(10, 13), log).reads_skipped == 0
    assert all(full for calls in log.values() for _, full, _ in calls)
    with pytest.raises(ValueError):
        Tracker(full_every=0)
    with pytest.raises(ValueError):
        Tracker(restat_every=0)


def test_a_sample_is_not_followed_once_another_source_replaced_its_metrics():
    t = Tracker(clock=Clock(), full_every=1000)
    log: dict[int, list[tuple[Sample | None, bool, bool]]] = {}
    decide_all(t, poll_followed(t, range(10, 11), log))
    tp = t.tracked[ProcId(10, 1000)]
    # e.g. the kernel source's final reading at the exit of a zombie still listed
    tp.metrics = fake(10, cpu=(3.0, 0.0)).metrics()
    log.clear()
    poll_followed(t, range(10, 11), log)
    assert [call[0] for call in log[10]] == [None]
    assert tp.sample is not None and tp.sample.metrics is tp.metrics
    log.clear()
    poll_followed(t, range(10, 11), log)
    assert log[10][0][0] is not None  # its own reading again: followed


def test_ignored_processes_follow_their_last_glance():
    t = Tracker(clock=Clock())
    log: dict[int, list[tuple[Sample | None, bool, bool]]] = {}
    r = poll_followed(t, range(20, 21), log)
    t.ignore(r.new[0].id, r.new[0].mark)
    poll_followed(t, range(20, 21), log)
    poll_followed(t, range(20, 21), log)
    assert [call[0] is not None for call in log[20]] == [False, True]
