"""procstream.procfs.fs: FS and Proc over a fake /proc tree (tests/fixtures/proc)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from procstream.procfs import (
    FS,
    Proc,
    ProcfsError,
    ProcfsParseError,
    ProcId,
    ProcLike,
    ProcExtras,
    ProcMetrics,
    ProcStatic,
    States,
    ThreadSample,
)
from procstream.procfs import fs as fs_module
from tests.support.fake_proc_tree import add_proc, deny, unprivileged

BTIME = 1795677232
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _metrics(mount: str, pid: int) -> ProcMetrics:
    return FS(mount).proc(pid).metrics()


# -- FS ---------------------------------------------------------------------------


def test_fs_attributes(fake_proc: Path) -> None:
    fs = FS(fake_proc)  # a PathLike is fine
    assert fs.mount_point == str(fake_proc)
    assert fs.boot_time == BTIME
    assert (fs.clock_ticks, fs.page_size) == (TICKS, PAGE)
    assert fs.is_procfs is False
    assert fs.thread_detail is True


def test_missing_mount_point_names_the_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-proc")
    with pytest.raises(ProcfsError) as info:
        FS(missing)
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOENT
    assert missing in str(info.value)


def test_mount_point_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"")
    with pytest.raises(ProcfsError) as info:
        FS(path)
    assert info.value.errno == errno.ENOTDIR
    assert str(path) in str(info.value)


def test_mount_point_without_stat(tmp_path: Path) -> None:
    with pytest.raises(ProcfsError) as info:
        FS(tmp_path)
    assert str(tmp_path / "stat") in str(info.value)


def test_stat_without_btime(tmp_path: Path) -> None:
    (tmp_path / "stat").write_bytes(b"cpu 1 2 3\nctxt 5\n")
    with pytest.raises(ProcfsError) as info:
        FS(tmp_path)
    assert str(tmp_path / "stat") in str(info.value)
    assert "btime" in str(info.value)


def test_all_procs_lists_numeric_entries_in_pid_order(fake_proc: Path) -> None:
    (fake_proc / "self").symlink_to("1000")
    (fake_proc / "sys").mkdir()
    fs = FS(fake_proc)
    procs = list(fs.all_procs())
    assert all(isinstance(p, Proc) for p in procs)
    assert [p.pid for p in procs] == [14, 1000, 1001, 1002, 1003, 1004, 1006, 1010]


def test_all_procs_skips_names_that_are_not_pids_as_the_kernel_writes_them(fake_proc: Path) -> None:
    # str.isdigit() accepts all of these; int() refuses the first three
    for name in ("\u00b2", "\u0663", "1\u2082", "0", "007", "99999999999"):
        shutil.copytree(fake_proc / "1000", fake_proc / name, symlinks=True)
    assert [p.pid for p in FS(fake_proc).all_procs()] == [14, 1000, 1001, 1002, 1003, 1004, 1006, 1010]


def test_all_procs_listing_failure_raises_at_call(fake_proc: Path) -> None:
    fs = FS(fake_proc)
    shutil.rmtree(fake_proc)
    with pytest.raises(ProcfsError) as info:
        fs.all_procs()  # not at the first next()
    assert str(fake_proc) in str(info.value)


# -- one process ------------------------------------------------------------------


def test_normal_process(fake_proc: Path) -> None:
    proc: ProcLike = FS(fake_proc).proc(1000)
    assert proc.pid == 1000
    assert proc.proc_id() == ProcId(1000, 67176)
    assert proc.static() == ProcStatic(
        name="sleep",
        cmdline=("sleep", "1000"),
        parent_pid=900,
        start_time=BTIME + 67176 / TICKS,
        uid=0,
        cgroups=(),
    )
    assert proc.metrics() == ProcMetrics(
        cpu_user=0.0,
        cpu_system=0.0,
        read_bytes=20480,
        write_bytes=4096,
        resident_bytes=423 * PAGE,
        virtual_bytes=2990080,
        swapped_bytes=12 * 1024,
        major_faults=1,
        minor_faults=74,
        ctx_voluntary=2,
        ctx_nonvoluntary=0,
        num_threads=1,
        open_fds=3,
        states=States(sleeping=1),
        partial_errors=0,
        state="S",
    )
    assert proc.fd_limit() == 20000


def test_cgroups_only_when_asked(fake_proc: Path) -> None:
    proc = FS(fake_proc).proc(1000)
    assert proc.static().cgroups == ()
    with_cgroups = proc.static(cgroups=True)
    assert len(with_cgroups.cgroups) == 10
    assert with_cgroups.cgroups[-1] == "/user.slice/user-0.slice/session-1.scope"
    assert with_cgroups.name == "sleep" and with_cgroups.cmdline == ("sleep", "1000")


def test_comm_with_spaces_and_parens(fake_proc: Path) -> None:
    proc = FS(fake_proc).proc(1001)
    static = proc.static(cgroups=True)
    assert static.name == "a) (b c)"
    assert static.parent_pid == 900
    assert static.cmdline[-3:] == ("café", "\ufffd\ufffdraw", "")
    assert static.cgroups == ("/system.slice/app:blue.service:v2",)
    metrics = proc.metrics()
    assert metrics.cpu_user == 1 / TICKS
    assert (metrics.resident_bytes, metrics.virtual_bytes) == (3350 * PAGE, 16973824)


def test_zombie(fake_proc: Path) -> None:
    proc = FS(fake_proc).proc(1002)
    static = proc.static()
    assert (static.name, static.cmdline, static.parent_pid) == ("python3", (), 900)
    # its argv left with its memory: the empty cmdline is not its own (flags: PF_EXITING)
    assert static.cmdline_known is False
    metrics = proc.metrics()
    assert metrics.states == States(zombie=1)
    assert (metrics.resident_bytes, metrics.virtual_bytes, metrics.swapped_bytes) == (0, 0, 0)
    # no io file: bytes 0 and counted; its (empty) fd directory still counts 0 fds
    assert (metrics.read_bytes, metrics.write_bytes, metrics.partial_errors) == (0, 0, 1)
    assert metrics.open_fds == 0


def test_kernel_thread(fake_proc: Path) -> None:
    proc = FS(fake_proc).proc(14)
    static = proc.static()
    assert (static.name, static.cmdline, static.parent_pid) == ("ksoftirqd/0", (), 2)
    assert static.cmdline_known is True  # a kernel thread has no argv (flags: PF_KTHREAD)
    assert static.start_time == BTIME + 24 / TICKS
    metrics = proc.metrics()
    assert (metrics.open_fds, metrics.swapped_bytes, metrics.partial_errors) == (0, 0, 0)
    assert (metrics.ctx_voluntary, metrics.ctx_nonvoluntary) == (883, 128)
    assert metrics.cpu_user == 2 / TICKS


def test_garbage_stat(fake_proc: Path) -> None:
    proc = FS(fake_proc).proc(1003)
    with pytest.raises(ProcfsParseError):
        proc.proc_id()
    with pytest.raises(ProcfsParseError):
        proc.metrics()


def test_a_stat_field_beyond_64_bits_is_garbage(fake_proc: Path) -> None:
    stat = fake_proc / "1000" / "stat"
    stat.write_bytes(stat.read_bytes().replace(b" 2990080 ", b" 1180591620717411303424 "))
    with pytest.raises(ProcfsParseError):
        FS(fake_proc).proc(1000).proc_id()


def test_a_long_cmdline_is_read_up_to_the_limit_and_says_so(fake_proc: Path) -> None:
    from procstream.procfs.cmdline import READ_LIMIT

    argv = [b"/usr/bin/hostile"] + [b"a" * 100_000] * 30  # 3 MB, as a local user may
    (fake_proc / "1000" / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
    static = FS(fake_proc).proc(1000).static()
    assert static.cmdline_truncated is True
    assert static.cmdline[0] == "/usr/bin/hostile"
    assert sum(len(a) + 1 for a in static.cmdline) - 1 == READ_LIMIT
    # exactly at the limit is whole
    exact = b"b" * (READ_LIMIT - 1) + b"\0"
    (fake_proc / "1006" / "cmdline").write_bytes(exact)
    static = FS(fake_proc).proc(1006).static()
    assert static.cmdline == ("b" * (READ_LIMIT - 1),) and static.cmdline_truncated is False
    with_cgroups = FS(fake_proc).proc(1000).static(cgroups=True)
    assert with_cgroups.cmdline_truncated is True and with_cgroups.cgroups


def test_stat_without_status_is_a_vanished_process(fake_proc: Path) -> None:
    proc = FS(fake_proc).proc(1004)
    assert proc.proc_id() == ProcId(1004, 67176)
    with pytest.raises(ProcessLookupError):
        proc.metrics()
    with pytest.raises(ProcessLookupError):
        proc.static()


def test_nonexistent_pid(fake_proc: Path) -> None:
    proc = FS(fake_proc).proc(4242)  # nothing read yet
    with pytest.raises(ProcessLookupError):
        proc.proc_id()


def test_unlimited_fd_limit_is_zero(fake_proc: Path) -> None:
    assert FS(fake_proc).proc(1006).fd_limit() == 0


def test_multithreaded_counts_every_thread(fake_proc: Path) -> None:
    metrics = FS(fake_proc).proc(1010).metrics()
    assert metrics.num_threads == 3
    assert metrics.states == States(running=1, sleeping=1, waiting=1)
    # summed over task/*/status (the leader's own status says 4 and 3)
    assert (metrics.ctx_voluntary, metrics.ctx_nonvoluntary) == (4 + 25 + 3, 3 + 7 + 1)
    assert metrics.open_fds == 6
    assert metrics.partial_errors == 0


def test_without_thread_detail_uses_the_leader(fake_proc: Path) -> None:
    metrics = FS(fake_proc, thread_detail=False).proc(1010).metrics()
    assert metrics.num_threads == 3
    assert metrics.states == States(sleeping=1)
    assert (metrics.ctx_voluntary, metrics.ctx_nonvoluntary) == (4, 3)


def test_thread_vanishing_mid_listing_is_skipped(fake_proc: Path) -> None:
    # listed in task/, gone by the time we read it
    (fake_proc / "1010" / "task" / "1012" / "stat").unlink()
    (fake_proc / "1010" / "task" / "1011" / "status").unlink()
    metrics = FS(fake_proc).proc(1010).metrics()
    assert metrics.states == States(sleeping=1)  # only the leader was fully read
    assert (metrics.ctx_voluntary, metrics.ctx_nonvoluntary) == (4, 3)
    assert metrics.partial_errors == 0


def test_missing_task_dir_falls_back_to_the_leader(fake_proc: Path) -> None:
    shutil.rmtree(fake_proc / "1010" / "task")
    metrics = FS(fake_proc).proc(1010).metrics()
    assert metrics.states == States(sleeping=1)
    assert (metrics.ctx_voluntary, metrics.ctx_nonvoluntary) == (4, 3)


# -- caching ----------------------------------------------------------------------


def test_each_file_is_read_once(fake_proc: Path) -> None:
    proc = FS(fake_proc).proc(1000)
    static = proc.static()  # reads stat, cmdline, status
    for name in ("stat", "status", "cmdline"):
        (fake_proc / "1000" / name).unlink()
    # metrics() shares stat and status: only schedstat, io and fd are read now
    metrics = proc.metrics()
    assert metrics.ctx_voluntary == 2 and metrics.resident_bytes == 423 * PAGE
    shutil.rmtree(fake_proc / "1000")
    assert proc.static() is static
    assert proc.metrics() is metrics
    assert proc.proc_id() == ProcId(1000, 67176)


# -- partial and vanished reads -----------------------------------------------------


def test_unreadable_io_and_fd_keep_the_other_metrics(fake_proc: Path) -> None:
    full = FS(fake_proc).proc(1000).metrics()
    deny(fake_proc / "1000" / "io")
    deny(fake_proc / "1000" / "fd")
    partial = unprivileged(_metrics, str(fake_proc), 1000)
    assert (partial.read_bytes, partial.write_bytes, partial.open_fds) == (0, 0, -1)
    assert partial.partial_errors == 2
    survivors = [
        "cpu_user",
        "cpu_system",
        "resident_bytes",
        "virtual_bytes",
        "swapped_bytes",
        "major_faults",
        "minor_faults",
        "ctx_voluntary",
        "ctx_nonvoluntary",
        "num_threads",
        "states",
    ]
    for name in survivors:
        assert getattr(partial, name) == getattr(full, name), name


def test_unreadable_io_only(fake_proc: Path) -> None:
    deny(fake_proc / "1000" / "io")
    partial = unprivileged(_metrics, str(fake_proc), 1000)
    assert (partial.read_bytes, partial.write_bytes, partial.open_fds) == (0, 0, 3)
    assert partial.partial_errors == 1


def test_missing_io_of_a_live_process_is_partial(fake_proc: Path) -> None:
    (fake_proc / "1000" / "io").unlink()
    metrics = FS(fake_proc).proc(1000).metrics()
    assert (metrics.read_bytes, metrics.write_bytes, metrics.open_fds) == (0, 0, 3)
    assert metrics.partial_errors == 1


def test_status_deleted_between_proc_id_and_metrics(fake_proc: Path) -> None:
    proc = FS(fake_proc).proc(1000)
    proc.proc_id()
    (fake_proc / "1000" / "status").unlink()
    with pytest.raises(ProcessLookupError):
        proc.metrics()


def test_process_gone_between_static_and_metrics(fake_proc: Path) -> None:
    proc = FS(fake_proc).proc(1000)
    proc.static()  # stat and status are cached now
    shutil.rmtree(fake_proc / "1000")
    # io is missing too, but because the process is gone: not a partial read
    with pytest.raises(ProcessLookupError):
        proc.metrics()
    with pytest.raises(ProcessLookupError):
        proc.fd_limit()
    with pytest.raises(ProcessLookupError):
        proc.static(cgroups=True)


def test_missing_optional_static_files(fake_proc: Path) -> None:
    (fake_proc / "1000" / "cgroup").unlink()
    (fake_proc / "1000" / "limits").unlink()
    proc = FS(fake_proc).proc(1000)
    assert proc.static(cgroups=True).cgroups == ()
    assert proc.fd_limit() == 0


def test_unreadable_limits_is_unknown(fake_proc: Path) -> None:
    deny(fake_proc / "1000" / "limits")
    assert unprivileged(_fd_limit, str(fake_proc), 1000) == 0


def _fd_limit(mount: str, pid: int) -> int:
    return FS(mount).proc(pid).fd_limit()


# -- a process that execs while it is read ------------------------------------------

STARTSTACK = 25  # field 28 of stat, counted after "(comm)"
FLAGS = 6  # field 9


def _become(root: Path, pid: int, comm: str, argv: tuple[str, ...], *, stack: int = 0, flags: int | None = None) -> None:
    """Turn process ``pid`` of a fake tree into another program in place (an exec keeps
    its pid and start time): its name, its argv and its stack (0: not set up yet)."""
    d = root / str(pid)
    fields = (d / "stat").read_bytes().rpartition(b")")[2].split()
    fields[STARTSTACK] = str(stack).encode()
    if flags is not None:
        fields[FLAGS] = str(flags).encode()
    (d / "stat").write_bytes(f"{pid} ({comm}) ".encode() + b" ".join(fields) + b"\n")
    (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))


NOHUP = ("nohup", "sleep", "60")
SLEEP = ("sleep", "60")


def _nohup(fake_proc: Path) -> Proc:
    add_proc(fake_proc, 4000, comm="nohup", cmdline=NOHUP)
    _become(fake_proc, 4000, "nohup", NOHUP, stack=0x7000)
    return FS(fake_proc).proc(4000)


def test_an_exec_between_stat_and_cmdline_names_the_new_program_with_its_own_argv(fake_proc: Path) -> None:
    proc = _nohup(fake_proc)
    proc.proc_id()  # stat read: still nohup
    _become(fake_proc, 4000, "sleep", SLEEP, stack=0x8000)
    static = proc.static()
    assert (static.name, static.cmdline, static.cmdline_known) == ("sleep", SLEEP, True)
    assert proc.exec_mark() == ("sleep", 0x8000)  # the mark of the program it names


def test_an_exec_between_an_argv_read_first_and_stat_names_the_new_program_with_its_own_argv(fake_proc: Path) -> None:
    proc = _nohup(fake_proc)
    proc.read_argv_first()  # nohup's argv
    _become(fake_proc, 4000, "sleep", SLEEP, stack=0x8000)
    proc.proc_id()
    static = proc.static()
    assert (static.name, static.cmdline) == ("sleep", SLEEP)


def test_a_process_read_mid_exec_gets_its_argv_once_the_kernel_has_set_it_up(
    fake_proc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = _nohup(fake_proc)
    _become(fake_proc, 4000, "sleep", (), stack=0)  # new name, no argv yet
    proc.proc_id()
    real_read = fs_module.read_file

    def read_file(path: str, **kw: Any) -> bytes:
        data = real_read(path, **kw)
        if path.endswith("/cmdline"):
            _become(fake_proc, 4000, "sleep", SLEEP, stack=0x8000)  # the exec goes on
        return data

    monkeypatch.setattr(fs_module, "read_file", read_file)
    static = proc.static()
    assert (static.name, static.cmdline, static.cmdline_known) == ("sleep", SLEEP, True)


def test_an_argv_read_first_stands_for_a_process_that_exits_before_the_rest_is_read(fake_proc: Path) -> None:
    proc = _nohup(fake_proc)
    proc.read_argv_first()
    _become(fake_proc, 4000, "nohup", (), flags=0x400104)  # PF_EXITING: its memory is gone
    proc.proc_id()
    static = proc.static()
    assert (static.name, static.cmdline, static.cmdline_known) == ("nohup", NOHUP, True)


def test_a_live_program_with_an_empty_argv_keeps_it_as_its_own(fake_proc: Path) -> None:
    proc = _nohup(fake_proc)
    _become(fake_proc, 4000, "noargs", (), stack=0x8000)
    static = proc.static()
    assert (static.name, static.cmdline, static.cmdline_known) == ("noargs", (), True)


# -- what process-exporter reads with -threads and -gather-smaps, and wait channels ---


def test_extras_are_not_read_unless_asked(fake_proc: Path) -> None:
    metrics = FS(fake_proc).proc(1010).metrics()
    assert metrics.extras is None
    # not even opened: unreadable, they would count as partial errors
    for name in ("smaps_rollup", "wchan", "task/1011/io", "task/1011/wchan"):
        (fake_proc / "1010" / name).unlink()
    assert FS(fake_proc).proc(1010).metrics().partial_errors == 0


def test_threads_of_a_multithreaded_process(fake_proc: Path) -> None:
    fs = FS(fake_proc, threads=True, thread_detail=False)
    assert fs.thread_detail is True  # per-thread samples are thread detail
    metrics = fs.proc(1010).metrics()
    assert metrics.extras is not None
    assert sorted(metrics.extras.threads) == [
        ThreadSample(1010, 67176, "python3", 2 / TICKS, 0.0, 4096, 0, 0, 1932, 4, 3),
        # the comm of a thread is its own (pthread_setname_np), ')' and ' ' included
        ThreadSample(1011, 67179, "pool) worker", 0.0, 0.0, 0, 8192, 0, 3, 25, 7),
        ThreadSample(1012, 67179, "pool) worker", 0.0, 0.0, 12288, 4096, 0, 3, 3, 1),
    ]
    # the same walk still gives the process's states and context switches
    assert metrics.states == States(running=1, sleeping=1, waiting=1)
    assert (metrics.ctx_voluntary, metrics.ctx_nonvoluntary) == (32, 11)
    assert metrics.partial_errors == 0


def test_single_threaded_process_has_no_thread_samples(fake_proc: Path) -> None:
    # as in process-exporter, per-thread data is about processes with 2 threads or more
    assert FS(fake_proc, threads=True).proc(1000).metrics().extras == ProcExtras()


def test_thread_io_unreadable_is_partial(fake_proc: Path) -> None:
    deny(fake_proc / "1010" / "task" / "1012" / "io")
    metrics = unprivileged(lambda: FS(fake_proc, threads=True).proc(1010).metrics())
    by_tid = {t.tid: t for t in metrics.extras.threads}
    assert (by_tid[1012].read_bytes, by_tid[1012].write_bytes) == (0, 0)
    assert by_tid[1011].write_bytes == 8192
    assert metrics.partial_errors >= 1


def test_wait_channels_one_per_waiting_thread(fake_proc: Path) -> None:
    fs = FS(fake_proc, wchan=True)
    # three threads: two wait, one runs (0); the process's own wchan is not counted again
    assert sorted(fs.proc(1010).metrics().extras.wchans) == ["do_select", "io_schedule"]
    assert fs.proc(1000).metrics().extras == ProcExtras(wchans=("hrtimer_nanosleep",))


def test_wchan_missing_while_the_process_lives_is_partial(fake_proc: Path) -> None:
    (fake_proc / "1000" / "wchan").unlink()
    metrics = FS(fake_proc, wchan=True).proc(1000).metrics()
    assert (metrics.extras, metrics.partial_errors) == (ProcExtras(), 1)


def test_proportional_memory(fake_proc: Path) -> None:
    fs = FS(fake_proc, smaps=True)
    m = fs.proc(1010).metrics()
    assert m.extras == ProcExtras(pss_bytes=9261 * 1024, swap_pss_bytes=16 * 1024)
    assert m.partial_errors == 0
    assert fs.proc(14).metrics().extras == ProcExtras()


def test_proportional_memory_missing_is_partial(fake_proc: Path) -> None:
    # the zombie's fixture has no smaps_rollup (a kernel before 4.14 has none at all)
    m = FS(fake_proc, smaps=True).proc(1002).metrics()
    assert (m.extras, m.partial_errors) == (ProcExtras(), 2)  # and no io


def test_proportional_memory_of_a_vanished_process(fake_proc: Path) -> None:
    proc = FS(fake_proc, smaps=True).proc(1000)
    proc.static()  # stat and status read; io and fd still there
    # smaps_rollup missing and stat too: the process is gone, not just the file
    (fake_proc / "1000" / "smaps_rollup").unlink()
    (fake_proc / "1000" / "stat").unlink()
    with pytest.raises(ProcessLookupError):
        proc.metrics()


def test_state_letter(fake_proc: Path) -> None:
    fs = FS(fake_proc)
    assert [fs.proc(pid).metrics().state for pid in (1000, 1002, 1010)] == ["S", "Z", "S"]


def test_an_argv_read_first_and_again_the_same_needs_no_second_stat(
    fake_proc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exec-event path reads the argv before ``stat`` and again after it: the same
    bytes twice bracket ``stat``, so it is not read a second time."""
    proc = _nohup(fake_proc)
    proc.read_argv_first()
    proc.proc_id()
    real_read = fs_module.read_file
    reads: list[str] = []

    def read_file(path: str, **kw: Any) -> bytes:
        reads.append(path.rsplit("/", 1)[1])
        return real_read(path, **kw)

    monkeypatch.setattr(fs_module, "read_file", read_file)
    static = proc.static()
    assert (static.name, static.cmdline) == ("nohup", NOHUP)
    assert reads.count("stat") == 0 and reads.count("cmdline") == 1
