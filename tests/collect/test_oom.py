"""The OOM record: victims named by the kernel's log, the /proc/vmstat fallback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from procstream.collect.oom import OomWatch, parse_victim
from tests.support.fake_procs import Clock

SUMMARY = (
    b"6,448,1074273293,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
    b"oom_memcg=/x,task_memcg=/x,task=python3,pid=19429,uid=0"
)
KILLED = (
    b"3,449,1074273326,-;Memory cgroup out of memory: Killed process 19430 (python3) total-vm:221372kB, "
    b"anon-rss:65152kB, file-rss:6596kB, shmem-rss:0kB, UID:0 pgtables:200kB oom_score_adj:0"
)


def test_the_two_lines_that_name_a_victim() -> None:
    assert parse_victim(SUMMARY) == (19429, 1074.273293)
    assert parse_victim(KILLED) == (19430, 1074.273326)
    # a task name may hold "pid=": the victim's is the last one of the summary
    assert parse_victim(b"6,1,5,-;oom-kill:constraint=CONSTRAINT_NONE,task=a,pid=1,pid=77,uid=0") == (77, 5e-6)


@pytest.mark.parametrize(
    "record",
    [
        b"14,449,1074273326,-;Killed process 19430 (python3)",  # written from user space (facility 1)
        b"6,449,1074273326,-;python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0",
        b" SUBSYSTEM=memory",  # a record's continuation line
        b"garbage",
        b"6,x,1,-;Killed process 5 (a)",
    ],
)
def test_nothing_else_names_a_victim(record: bytes) -> None:
    assert parse_victim(record) is None


def log_line(pid: int, at: float, comm: str = "victim") -> bytes:
    return f"3,10,{int(at * 1e6)},-;Out of memory: Killed process {pid} ({comm}) total-vm:1kB\n SUBSYSTEM=x\n".encode()


def test_victims_come_from_records_written_after_it_opened_and_count_once(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    clock = Clock(5000.0)
    log.write_bytes(log_line(1, clock.t))  # before it opened: not ours
    watch = OomWatch(str(log), str(tmp_path / "vmstat"), monotonic=clock)
    watch.open()
    assert watch.stats.source == "kmsg"
    with log.open("ab") as f:
        f.write(log_line(2, clock.t - 1) + log_line(3, clock.t - OomWatch.KEEP_S - 1))
    assert watch.oom_killed(1) is False
    assert watch.oom_killed(2) is True
    assert watch.oom_killed(2) is False  # matched to one exit only
    assert watch.oom_killed(3) is False  # too old to be this exit's
    assert (watch.stats.records, watch.stats.victims) == (2, 2)
    watch.close()


def test_victims_kept_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "kmsg"
    log.write_bytes(b"")
    clock = Clock(5000.0)
    watch = OomWatch(str(log), monotonic=clock)
    monkeypatch.setattr(OomWatch, "MAX_VICTIMS", 10)
    watch.open()
    with log.open("ab") as f:
        f.write(b"".join(log_line(pid, clock.t) for pid in range(100, 130)))
    assert watch.oom_killed(1) is False
    assert len(watch._victims) == 10 and watch.oom_killed(129) is True and watch.oom_killed(100) is False
    watch.close()


def test_without_the_log_the_vmstat_counter_tells_what_it_can(tmp_path: Path) -> None:
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("pgfault 100\noom_kill 4\nnr_foo 1\n")
    watch = OomWatch(str(tmp_path / "no-kmsg"), str(vmstat))
    watch.open()
    assert watch.stats.source == "vmstat" and "no-kmsg" in watch.reason
    assert watch.oom_killed(10) is False  # the counter did not move: nobody was OOM-killed
    vmstat.write_text("pgfault 100\noom_kill 5\n")
    assert watch.oom_killed(11) is None  # someone was: this one, or another
    assert watch.oom_killed(12) is False


def test_without_either_nothing_is_told(tmp_path: Path) -> None:
    watch = OomWatch(str(tmp_path / "no-kmsg"), str(tmp_path / "no-vmstat"))
    watch.open()
    assert watch.stats.source == "none" and watch.oom_killed(10) is None


@pytest.mark.skipif(not os.access("/dev/kmsg", os.R_OK), reason="/dev/kmsg is not readable here")
def test_the_real_log_opens_at_its_end() -> None:
    watch = OomWatch()
    watch.open()
    try:
        assert watch.stats.source == "kmsg"
        assert watch.oom_killed(os.getpid()) is False
    finally:
        watch.close()
