"""procstream.threadgroups through the grouper: per-thread-name counters as
process-exporter's ``-threads`` reports them, and proportional memory and wait channels
summed per group."""

from __future__ import annotations

import pytest

from procstream.grouper import Grouper
from procstream.threadgroups import ThreadCounts, ThreadGroups
from procstream.tracker import Counts
from tests.support.fake_procs import ByName, Clock, fake, thread


def grouper(*names: str) -> Grouper:
    return Grouper(ByName(set(names)), clock=Clock(), usernames=str)


def by_name(g: Grouper, group: str) -> dict[str, ThreadCounts]:
    return {t.name: t for t in g.groups()[group].threads}


def app(cpu: float = 0.0, *, workers: int = 2, extra: tuple = (), start: int = 100) -> object:
    """pid 10 "app": a main thread and ``workers`` threads named "worker", each of which
    used ``cpu`` seconds of user time so far."""
    samples = (thread(10, "app", start=start, cpu=(cpu, 0.0)),) + tuple(
        thread(11 + i, "worker", start=start + 1, cpu=(cpu, 0.0), io=(int(cpu * 10), 0), ctx=(int(cpu), 0))
        for i in range(workers)
    ) + extra
    return fake(10, "app", start=start, threads=len(samples), thread_samples=samples)


def test_threads_are_summed_by_name_from_the_second_sample_on() -> None:
    g = grouper("app")
    g.update([app(1.0)])
    # seen for the first time: the threads exist, their past usage doesn't count
    workers = by_name(g, "app")["worker"]
    assert (workers.threads, workers.counts) == (2, Counts())
    g.update([app(3.0)])
    got = by_name(g, "app")
    assert got["worker"].threads == 2
    assert got["worker"].counts == Counts(cpu_user=4.0, read_bytes=40, ctx_voluntary=4)
    assert got["app"].counts.cpu_user == 2.0
    g.update([app(4.0)])
    assert by_name(g, "app")["worker"].counts.cpu_user == 6.0  # 4 + 2 more


def test_a_new_thread_counts_from_its_second_sample() -> None:
    g = grouper("app")
    g.update([app(1.0)])
    g.update([app(2.0, workers=3)])  # worker 13 appears having used 2 s
    assert by_name(g, "app")["worker"].counts.cpu_user == 2.0  # only 11 and 12
    g.update([app(5.0, workers=3)])
    assert by_name(g, "app")["worker"].counts.cpu_user == 2.0 + 9.0


def test_a_reused_tid_is_a_new_thread() -> None:
    g = grouper("app")
    g.update([app(1.0)])
    reborn = thread(11, "worker", start=500, cpu=(7.0, 0.0))
    samples = (thread(10, "app", start=100, cpu=(1.0, 0.0)), reborn, thread(12, "worker", start=101, cpu=(1.0, 0.0)))
    g.update([fake(10, "app", start=100, threads=3, thread_samples=samples)])
    assert by_name(g, "app")["worker"].counts.cpu_user == 0.0


def test_a_name_that_disappears_forgets_its_counters() -> None:
    g = grouper("app")
    g.update([app(1.0)])
    g.update([app(2.0)])
    assert by_name(g, "app")["worker"].counts.cpu_user == 2.0
    g.update([fake(10, "app", start=100, threads=2, thread_samples=(
        thread(10, "app", start=100, cpu=(2.0, 0.0)), thread(20, "other", start=300))
    )])
    assert set(by_name(g, "app")) == {"app", "other"}
    g.update([app(9.0)])  # "worker" is back: a new name to the group, from zero
    assert by_name(g, "app")["worker"].counts == Counts()


def test_single_threaded_and_exited_processes_leave_no_thread_counters() -> None:
    g = grouper("app", "one")
    g.update([app(1.0), fake(30, "one")])
    assert g.groups()["one"].threads == ()
    g.update([fake(30, "one")])  # app exited
    assert g.groups()["app"].threads == ()  # empty group: no thread counters
    assert g.groups()["app"].procs == 0


def test_processes_of_a_group_add_up() -> None:
    g = grouper("app")
    second = fake(
        40, "app", start=100, threads=2,
        thread_samples=(thread(40, "app", cpu=(0.0, 1.0)), thread(41, "worker", cpu=(0.0, 1.0))),
    )
    g.update([app(1.0), second])
    g.update([app(2.0), fake(
        40, "app", start=100, threads=2,
        thread_samples=(thread(40, "app", cpu=(0.0, 1.5)), thread(41, "worker", cpu=(0.0, 3.0))),
    )])
    got = by_name(g, "app")
    assert got["worker"].threads == 3
    assert (got["worker"].counts.cpu_user, got["worker"].counts.cpu_system) == (2.0, 2.0)
    assert got["app"].threads == 2
    assert [t.name for t in g.groups()["app"].threads] == ["app", "worker"]  # sorted


def test_counters_never_go_backwards() -> None:
    g = grouper("app")
    g.update([app(5.0)])
    g.update([app(3.0)])
    assert by_name(g, "app")["worker"].counts == Counts()


def test_nothing_kept_once_no_process_has_threads() -> None:
    tg = ThreadGroups()
    assert not tg.active
    g = grouper("app")
    g.update([app(1.0)])
    assert g._thread_groups.active
    g.update([])
    assert not g._thread_groups.active


def test_proportional_memory_and_wait_channels_per_group() -> None:
    g = grouper("web")
    g.update([
        fake(10, "web", pss=(1000, 10), wchans=("do_epoll_wait",)),
        fake(11, "web", pss=(500, 0), wchans=("futex_wait", "do_epoll_wait", "futex_wait")),
        fake(12, "web"),  # running: no wait channel
    ])
    web = g.groups()["web"]
    assert (web.memory.proportional_bytes, web.memory.proportional_swap_bytes) == (1500, 10)
    assert web.wchans == (("do_epoll_wait", 2), ("futex_wait", 2))


def test_without_extras_groups_have_none() -> None:
    g = grouper("web")
    g.update([fake(10, "web", threads=4)])
    web = g.groups()["web"]
    assert (web.threads, web.wchans, web.memory.proportional_bytes) == ((), (), 0)


@pytest.mark.parametrize("polls", [1, 3])
def test_thread_count_is_current(polls: int) -> None:
    g = grouper("app")
    for _ in range(polls):
        g.update([app(1.0, workers=4)])
    assert by_name(g, "app")["worker"].threads == 4
