"""procstream.procfs.fs: ``Proc.follow`` — reading a process knowing its last sample —
over a fake /proc tree: what is read again, what is carried over, and when everything is
read regardless."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from procstream.procfs import FS, ProcId, Sample, States
from procstream.procfs import fs as fs_module

PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The /proc files ``Proc`` reads, in order, as paths below the process's directory."""
    seen: list[str] = []
    real = fs_module.read_file

    def recording(path: str, **kw: object) -> bytes:
        below = re.search(r"/proc/\d+/(.*)$", path)
        if below is not None:
            seen.append(below[1])
        return real(path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fs_module, "read_file", recording)
    yield seen


def edit(path: Path, field: int, value: int) -> None:
    """Set field ``field`` (1-based, as proc(5) numbers them) of a ``stat`` file."""
    data = path.read_bytes()
    head, _, rest = data.rpartition(b")")
    fields = rest.split()
    fields[field - 3] = str(value).encode()
    path.write_bytes(head + b") " + b" ".join(fields) + b"\n")


def write_io(proc_dir: Path, read: int, write: int) -> None:
    (proc_dir / "io").write_text(
        f"rchar: 1\nwchar: 1\nsyscr: 1\nsyscw: 1\nread_bytes: {read}\nwrite_bytes: {write}\ncancelled_write_bytes: 0\n"
    )


def replace_line(path: Path, key: str, line: str) -> None:
    text = path.read_text().splitlines()
    path.write_text("\n".join(line if t.startswith(key) else t for t in text) + "\n")


def sample(fs: FS, pid: int, prev: Sample | None = None, *, full: bool = False, restat: bool = False) -> Sample:
    proc = fs.proc(pid)
    if prev is not None:
        proc.follow(prev)
    proc.proc_id()
    return proc.sample(full=full, restat=restat)


def ran(proc_dir: Path) -> None:
    """The process ran: its schedstat moved on."""
    runtime, wait, count = (proc_dir / "schedstat").read_text().split()
    (proc_dir / "schedstat").write_text(f"{int(runtime) + 12345} {wait} {int(count) + 1}\n")


def test_a_process_that_has_not_run_costs_one_read_and_keeps_its_sample(fake_proc: Path, reads: list[str]) -> None:
    fs = FS(fake_proc)
    first = sample(fs, 1000)
    assert first.metrics is not None and first.metrics.read_bytes == 20480
    # everything but schedstat changes: a poll that skipped by schedstat can't see it
    edit(fake_proc / "1000" / "stat", 14, 900)  # utime
    write_io(fake_proc / "1000", 1, 2)
    reads.clear()
    again = sample(fs, 1000, first)
    assert again is first
    assert reads == ["schedstat"]


def test_a_process_that_ran_is_read_whole_schedstat_first(fake_proc: Path, reads: list[str]) -> None:
    fs = FS(fake_proc)
    first = sample(fs, 1000)
    edit(fake_proc / "1000" / "stat", 14, 900)
    write_io(fake_proc / "1000", 30000, 4096)
    replace_line(fake_proc / "1000" / "status", "voluntary_ctxt_switches", "voluntary_ctxt_switches:\t9")
    os.symlink("/dev/null", fake_proc / "1000" / "fd" / "7")
    ran(fake_proc / "1000")
    reads.clear()
    again = sample(fs, 1000, first)
    m = again.metrics
    assert m is not None and not again.reused
    assert (m.cpu_user, m.read_bytes, m.ctx_voluntary, m.open_fds) == (9.0, 30000, 9, 4)
    # a run after schedstat was read shows at the next poll; one before, in these files
    assert reads[0] == "schedstat" and set(reads[1:]) == {"stat", "status", "io"}
    assert again.id == first.id and again.sched != first.sched


def test_the_same_stat_bytes_are_not_parsed_again(fake_proc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = FS(fake_proc)
    first = sample(fs, 1000)
    ran(fake_proc / "1000")  # it ran, but too briefly to move stat
    write_io(fake_proc / "1000", 30000, 4096)

    def no_parse(data: bytes) -> None:
        raise AssertionError("stat parsed")

    monkeypatch.setattr(fs_module, "parse_stat", no_parse)
    again = sample(fs, 1000, first)
    assert again.metrics is not None and again.metrics.read_bytes == 30000
    assert again.id is first.id and again.mark is first.mark
    assert again.metrics.resident_bytes == first.metrics.resident_bytes  # type: ignore[union-attr]


def test_full_reads_everything_although_it_has_not_run(fake_proc: Path) -> None:
    fs = FS(fake_proc)
    first = sample(fs, 1000)
    edit(fake_proc / "1000" / "stat", 24, 1000)  # rss: pages reclaimed while it slept
    os.symlink("/dev/null", fake_proc / "1000" / "fd" / "7")  # a descriptor table it shares
    assert sample(fs, 1000, first) is first
    full = sample(fs, 1000, first, full=True)
    assert full.metrics is not None and not full.reused
    assert (full.metrics.resident_bytes, full.metrics.open_fds) == (1000 * PAGE, 4)


def test_a_full_read_that_finds_nothing_new_keeps_the_last_sample(fake_proc: Path, reads: list[str]) -> None:
    fs = FS(fake_proc)
    first = sample(fs, 1000)
    reads.clear()
    assert sample(fs, 1000, first, full=True) is first
    assert {"io", "status"} <= {Path(r).name for r in reads}  # read all the same


def test_restat_reads_stat_of_a_process_that_has_not_run(fake_proc: Path, reads: list[str]) -> None:
    fs = FS(fake_proc)
    first = sample(fs, 1000)
    proc = fs.proc(1000)
    proc.follow(first)
    proc.proc_id()
    assert proc.sample(restat=True) is first  # the same stat: nothing new
    edit(fake_proc / "1000" / "stat", 24, 1000)  # rss: pages reclaimed while it slept
    stat = fake_proc / "1000" / "stat"
    stat.write_bytes(stat.read_bytes().replace(b") S ", b") R "))  # woken, not run yet
    replace_line(fake_proc / "1000" / "status", "VmSwap", "VmSwap:\t     800 kB")
    os.symlink("/dev/null", fake_proc / "1000" / "fd" / "7")
    reads.clear()
    proc = fs.proc(1000)
    proc.follow(first)
    proc.proc_id()
    again = proc.sample(restat=True)
    m = again.metrics
    assert m is not None and again.reused and again.sched == first.sched
    assert (m.resident_bytes, m.swapped_bytes, m.states) == (1000 * PAGE, 800 * 1024, States(running=1))
    assert m.open_fds == 3  # descriptors wait for a full read
    assert reads == ["schedstat", "stat", "status"]


def test_without_schedstat_every_poll_reads_everything(fake_proc: Path, reads: list[str]) -> None:
    fs = FS(fake_proc)
    first = sample(fs, 1006)  # a kernel without schedstat: no file
    assert first.sched == b""
    write_io(fake_proc / "1006", 5, 6)
    reads.clear()
    again = sample(fs, 1006, first)
    assert again.metrics is not None and (again.metrics.read_bytes, again.metrics.write_bytes) == (5, 6)
    assert "io" in reads and "status" in reads


def test_another_process_at_the_same_pid_is_read_whole(fake_proc: Path) -> None:
    fs = FS(fake_proc)
    first = sample(fs, 1000)
    edit(fake_proc / "1000" / "stat", 22, 99999)  # a new start time: pid reused
    ran(fake_proc / "1000")
    again = sample(fs, 1000, first)
    assert again.id == ProcId(1000, 99999) and again.metrics is not None and not again.reused


def test_a_vanished_process_raises_although_it_was_followed(fake_proc: Path) -> None:
    fs = FS(fake_proc)
    first = sample(fs, 1000)
    for name in os.listdir(fake_proc / "1000"):
        path = fake_proc / "1000" / name
        if path.is_file():
            path.unlink()
    proc = fs.proc(1000)
    proc.follow(first)
    with pytest.raises(ProcessLookupError):
        proc.proc_id()


# -- multi-threaded ----------------------------------------------------------------


def test_idle_threads_are_not_read_again(fake_proc: Path, reads: list[str]) -> None:
    fs = FS(fake_proc)
    first = sample(fs, 1010)
    assert first.threads is not None and set(first.threads) == {"1010", "1011", "1012"}
    replace_line(fake_proc / "1010" / "task" / "1011" / "status", "voluntary_ctxt_switches", "voluntary_ctxt_switches:\t99")
    reads.clear()
    again = sample(fs, 1010, first)
    assert again is first
    # its own stat, then only each thread's schedstat
    assert reads == ["stat"] + [f"task/{tid}/schedstat" for tid in os.listdir(fake_proc / "1010" / "task")]


def test_a_thread_that_ran_is_read_again_and_so_is_the_process(fake_proc: Path) -> None:
    fs = FS(fake_proc)
    first = sample(fs, 1010)
    assert first.metrics is not None
    replace_line(fake_proc / "1010" / "task" / "1011" / "status", "voluntary_ctxt_switches", "voluntary_ctxt_switches:\t99")
    write_io(fake_proc / "1010", 7, 8)
    ran(fake_proc / "1010" / "task" / "1011")
    again = sample(fs, 1010, first)
    m = again.metrics
    assert m is not None and not again.reused
    assert m.ctx_voluntary == first.metrics.ctx_voluntary - 25 + 99
    assert (m.read_bytes, m.write_bytes) == (7, 8)
    assert again.threads is not None and again.threads["1010"] is first.threads["1010"]  # type: ignore[index]


def test_a_thread_that_came_or_went_counts_as_a_run(fake_proc: Path) -> None:
    fs = FS(fake_proc)
    first = sample(fs, 1010)
    write_io(fake_proc / "1010", 7, 8)
    task = fake_proc / "1010" / "task"
    shutil.rmtree(task / "1012")
    again = sample(fs, 1010, first)
    assert again.threads is not None and set(again.threads) == {"1010", "1011"}
    assert again.metrics is not None and again.metrics.read_bytes == 7
    assert again.metrics.states == States(running=1, sleeping=1)


def test_memory_that_changed_while_no_thread_ran_is_seen(fake_proc: Path) -> None:
    fs = FS(fake_proc)
    first = sample(fs, 1010)
    edit(fake_proc / "1010" / "stat", 24, 100)  # rss: reclaimed
    replace_line(fake_proc / "1010" / "status", "VmSwap", "VmSwap:\t     800 kB")
    write_io(fake_proc / "1010", 7, 8)
    again = sample(fs, 1010, first)
    m = again.metrics
    assert m is not None and again.reused
    assert (m.resident_bytes, m.swapped_bytes) == (100 * PAGE, 800 * 1024)
    assert m.read_bytes == first.metrics.read_bytes  # type: ignore[union-attr]  # it did not run: not read


# -- identity only -------------------------------------------------------------------


def test_a_glance_that_finds_the_same_stat_is_the_last_one(fake_proc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = FS(fake_proc)
    first = fs.proc(14).glance()
    assert first.metrics is None and first.id == ProcId(14, 24)

    def no_parse(data: bytes) -> None:
        raise AssertionError("stat parsed")

    monkeypatch.setattr(fs_module, "parse_stat", no_parse)
    proc = fs.proc(14)
    proc.follow(first)
    assert proc.glance() is first


def test_restat_reads_the_state_of_threads_that_have_not_run(fake_proc: Path, reads: list[str]) -> None:
    fs = FS(fake_proc)
    first = sample(fs, 1010)
    assert first.metrics is not None and first.metrics.states == States(running=1, sleeping=1, waiting=1)
    stat = fake_proc / "1010" / "task" / "1012" / "stat"
    stat.write_bytes(stat.read_bytes().replace(b") D ", b") R "))  # woken, not run yet
    assert sample(fs, 1010, first) is first
    reads.clear()
    again = sample(fs, 1010, first, restat=True)
    assert again.metrics is not None and again.metrics.states == States(running=2, sleeping=1)
    assert again.reused and "status" not in reads and "io" not in reads


@pytest.mark.parametrize("zero", [b"0 0 0\n", b"0 12 1\n"])
def test_a_zero_run_time_is_no_proof_of_idleness(fake_proc: Path, zero: bytes) -> None:
    # a kernel that does not count prints 0 0 0 for every task, as for a child not run yet
    (fake_proc / "1000" / "schedstat").write_bytes(zero)
    fs = FS(fake_proc)
    first = sample(fs, 1000)
    assert first.sched == b""
    write_io(fake_proc / "1000", 5, 6)
    again = sample(fs, 1000, first)
    assert again.metrics is not None and again.metrics.read_bytes == 5


# -- process-exporter's optional data (threads, smaps, wchan) -------------------------


def set_pss(proc_dir: Path, kib: int) -> None:
    replace_line(proc_dir / "smaps_rollup", "Pss:", f"Pss:            {kib} kB")


def test_the_optional_data_of_a_process_that_has_not_run_is_its_last(fake_proc: Path, reads: list[str]) -> None:
    fs = FS(fake_proc, threads=True, smaps=True, wchan=True)
    first = sample(fs, 1000)
    assert first.metrics is not None and first.metrics.extras is not None
    assert (first.metrics.extras.pss_bytes, first.metrics.extras.wchans) == (284 * 1024, ("hrtimer_nanosleep",))
    set_pss(fake_proc / "1000", 999)
    (fake_proc / "1000" / "wchan").write_text("do_select")
    reads.clear()
    assert sample(fs, 1000, first) is first
    assert reads == ["schedstat"]
    # it ran: every optional file is read again
    ran(fake_proc / "1000")
    again = sample(fs, 1000, first)
    assert again.metrics is not None and again.metrics.extras is not None
    assert (again.metrics.extras.pss_bytes, again.metrics.extras.wchans) == (999 * 1024, ("do_select",))


def test_memory_reclaimed_while_asleep_reads_proportional_memory_again(fake_proc: Path, reads: list[str]) -> None:
    fs = FS(fake_proc, smaps=True)
    first = sample(fs, 1000)
    edit(fake_proc / "1000" / "stat", 24, 100)  # rss: reclaimed without it running
    set_pss(fake_proc / "1000", 50)
    reads.clear()
    again = sample(fs, 1000, first, restat=True)
    m = again.metrics
    assert m is not None and m.extras is not None and again.reused
    assert (m.resident_bytes, m.extras.pss_bytes) == (100 * PAGE, 50 * 1024)
    assert "smaps_rollup" in reads and "io" not in reads
    # its stat unchanged: proportional memory is not read (its bound is full_every)
    set_pss(fake_proc / "1000", 40)
    reads.clear()
    assert sample(fs, 1000, again, restat=True) is again
    assert "smaps_rollup" not in reads


def test_a_thread_that_has_not_run_keeps_its_numbers_one_that_ran_is_read_with_its_io(
    fake_proc: Path, reads: list[str]
) -> None:
    fs = FS(fake_proc, threads=True, wchan=True)
    first = sample(fs, 1010)
    assert first.metrics is not None and first.metrics.extras is not None
    before = {t.tid: t for t in first.metrics.extras.threads}
    assert before[1011].write_bytes == 8192
    task = fake_proc / "1010" / "task"
    write_io(task / "1011", 0, 16384)
    (task / "1011" / "wchan").write_text("futex_wait_queue")
    write_io(task / "1012", 0, 99)  # did not run: not read, cannot have moved
    ran(task / "1011")
    reads.clear()
    again = sample(fs, 1010, first)
    m = again.metrics
    assert m is not None and m.extras is not None
    now = {t.tid: t for t in m.extras.threads}
    assert now[1011].write_bytes == 16384 and "futex_wait_queue" in m.extras.wchans
    assert now[1010] is before[1010] and now[1012] is before[1012]
    assert "task/1011/io" in reads and "task/1012/io" not in reads and "task/1012/wchan" not in reads


def test_an_exec_found_while_naming_a_followed_process_is_the_mark_it_gets(
    fake_proc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = FS(fake_proc)
    glance = fs.proc(1000).glance()  # an ignored process, as the tracker keeps it
    proc = fs.proc(1000)
    proc.follow(glance)
    assert proc.proc_id() is glance.id  # the same stat bytes: its mark is carried over
    real = fs_module.read_file

    def exec_meanwhile(path: str, **kw: object) -> bytes:
        data = real(path, **kw)  # type: ignore[arg-type]
        if path.endswith("/cmdline"):
            stat = fake_proc / "1000" / "stat"
            stat.write_bytes(stat.read_bytes().replace(b"(sleep)", b"(ls)"))
            edit(stat, 28, 0x9000)  # startstack: a new program
        return data

    monkeypatch.setattr(fs_module, "read_file", exec_meanwhile)
    static = proc.static()
    assert static.name == "ls"
    assert proc.exec_mark() == ("ls", 0x9000)
