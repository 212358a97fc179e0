"""Tests for procstream.netlink.connector: pure decoding on constructed bytes, then the live kernel.

Live tests need the proc connector (root or CAP_NET_ADMIN, initial namespaces); when
``probe()`` says it is unavailable they are skipped with its reason, nothing else is.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procstream.netlink import EventsLost
from procstream.netlink import connector as nl
from procstream.netlink.connector import (
    CommEvent,
    ConnectorError,
    ConnectorStats,
    Decoder,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    ProcConnector,
    parse_datagram,
    probe,
)
from tests.support.children import CLONE_NEWNET, CLONE_NEWPID, become, in_child, unshare
from tests.support.kernel_events import assert_closed, collect, fork_exits, open_outcome, py
from tests.support.netlink_datagrams import NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, nlmsg
from tests.support.waiting import wait_for

# --- building datagrams the way the kernel does (independently of the module's structs) ------

FORK, EXEC, UID, GID, SID, PTRACE, COMM, COREDUMP, EXIT = (
    0x1, 0x2, 0x4, 0x40, 0x80, 0x100, 0x200, 0x40000000, 0x80000000,
)


def cn(data: bytes, *, idx: int = 1, val: int = 1, seq: int = 0, ack: int = 0) -> bytes:
    return struct.pack("=IIIIHH", idx, val, seq, ack, len(data), 0) + data


def proc_event(what: int, body: bytes, *, ts: int = 1_000, cpu: int = 0, pad: bool = True) -> bytes:
    """A proc_event; padded to the kernel's 40-byte union size unless ``pad`` is False."""
    ev = struct.pack("=IIQ", what, cpu, ts) + body
    return ev + b"\0" * (40 - len(ev)) if pad and len(ev) < 40 else ev


def event_msg(what: int, body: bytes, *, ts: int = 1_000, cpu: int = 0, seq: int = 0,
              pad: bool = True) -> bytes:
    return nlmsg(cn(proc_event(what, body, ts=ts, cpu=cpu, pad=pad), seq=seq), seq=seq)


def fork_msg(ppid: int, ptgid: int, cpid: int, ctgid: int, **kw: int) -> bytes:
    return event_msg(FORK, struct.pack("=iiii", ppid, ptgid, cpid, ctgid), **kw)


def exec_msg(pid: int, tgid: int, **kw: int) -> bytes:
    return event_msg(EXEC, struct.pack("=ii", pid, tgid), **kw)


def exit_msg(pid: int, tgid: int, status: int, sig: int = 17, ppid: int = 1, ptgid: int = 1,
             **kw: int) -> bytes:
    return event_msg(EXIT, struct.pack("=iiIiii", pid, tgid, status, sig, ppid, ptgid), **kw)


def comm_msg(pid: int, tgid: int, comm: bytes, **kw: int) -> bytes:
    return event_msg(COMM, struct.pack("=ii16s", pid, tgid, comm), **kw)


# --- pure decoding -----------------------------------------------------------------------------


def test_fork_event_decoded() -> None:
    stats = ConnectorStats()
    [ev] = parse_datagram(fork_msg(10, 11, 20, 20, ts=555), stats)
    assert ev == ForkEvent(555, 10, 11, 20, 20)
    assert not ev.is_thread
    assert (stats.datagrams, stats.messages, stats.events, stats.malformed) == (1, 1, 1, 0)


def test_fork_of_a_thread_is_flagged() -> None:
    [ev] = parse_datagram(fork_msg(10, 10, 21, 20))
    assert isinstance(ev, ForkEvent) and ev.is_thread


def test_exec_event_decoded() -> None:
    [ev] = parse_datagram(exec_msg(42, 42, ts=9))
    assert ev == ExecEvent(9, 42, 42) and not ev.is_thread


def test_exit_event_decoded_with_status() -> None:
    [ev] = parse_datagram(exit_msg(42, 42, 7 << 8, 17, 5, 6, ts=77))
    assert ev == ExitEvent(77, 42, 42, 7 << 8, 17, 5, 6)
    assert (ev.exit_code, ev.signal, ev.core_dumped) == (7, None, False)
    assert not ev.is_thread


def test_exit_of_thread_has_signed_exit_signal() -> None:
    # threads exit with exit_signal -1, stored by the kernel in a __u32
    [ev] = parse_datagram(
        event_msg(EXIT, struct.pack("=iiIIii", 43, 42, 0, 0xFFFFFFFF, 1, 1))
    )
    assert isinstance(ev, ExitEvent)
    assert ev.is_thread and ev.exit_signal == -1


def test_exit_event_of_old_kernel_without_parent_fields() -> None:
    # before Linux 4.19 the exit event ended after exit_signal; cn_msg.len says so
    stats = ConnectorStats()
    short = nlmsg(cn(proc_event(EXIT, struct.pack("=iiIi", 8, 8, 9, 17), pad=False)))
    [ev] = parse_datagram(short, stats)
    assert ev == ExitEvent(1_000, 8, 8, 9, 17, 0, 0)
    assert (ev.exit_code, ev.signal) == (None, 9)
    assert stats.malformed == 0


def test_comm_event_decoded() -> None:
    [ev] = parse_datagram(comm_msg(5, 5, b"worker\0\0garbage"))
    assert ev == CommEvent(1_000, 5, 5, "worker")


def test_comm_event_full_length_and_invalid_utf8() -> None:
    [full] = parse_datagram(comm_msg(5, 6, b"0123456789abcdef"))
    assert isinstance(full, CommEvent) and full.comm == "0123456789abcdef" and full.is_thread
    [bad] = parse_datagram(comm_msg(5, 5, b"caf\xe9\0"))
    assert isinstance(bad, CommEvent) and bad.comm == "caf\ufffd"


@pytest.mark.parametrize(
    ("what", "kind", "body"),
    [
        (UID, "uid", struct.pack("=iiII", 1, 1, 0, 0)),
        (GID, "gid", struct.pack("=iiII", 1, 1, 0, 0)),
        (SID, "sid", struct.pack("=ii", 1, 1)),
        (PTRACE, "ptrace", struct.pack("=iiii", 1, 1, 2, 2)),
        (COREDUMP, "coredump", struct.pack("=iiii", 1, 1, 2, 2)),
        (0x400, "0x400", b""),
    ],
)
def test_other_event_kinds_are_ignored_but_counted(what: int, kind: str, body: bytes) -> None:
    stats = ConnectorStats()
    assert parse_datagram(event_msg(what, body), stats) == []
    assert stats.ignored == 1 and stats.ignored_kinds == {kind: 1}
    assert stats.events == 0 and stats.malformed == 0


def test_ack_is_counted_not_returned() -> None:
    stats = ConnectorStats()
    assert parse_datagram(event_msg(0, struct.pack("=I", 0)), stats) == []
    assert stats.acks == 1 and stats.events == 0


def test_several_messages_in_one_datagram() -> None:
    stats = ConnectorStats()
    data = (
        fork_msg(1, 1, 2, 2, ts=1)
        + nlmsg(b"", NLMSG_NOOP)
        + exec_msg(2, 2, ts=2)
        + comm_msg(2, 2, b"x", ts=3)
        + exit_msg(2, 2, 0, ts=4)
        + nlmsg(b"", NLMSG_DONE)  # a bare end-of-multipart marker
    )
    events = parse_datagram(data, stats)
    assert [type(e) for e in events] == [ForkEvent, ExecEvent, CommEvent, ExitEvent]
    assert [e.ts_ns for e in events] == [1, 2, 3, 4]
    assert stats.messages == 6 and stats.events == 4 and stats.malformed == 0


def test_overrun_message_becomes_a_loss_marker_in_place() -> None:
    stats = ConnectorStats()
    events = parse_datagram(exec_msg(1, 1) + nlmsg(b"", NLMSG_OVERRUN) + exec_msg(2, 2), stats)
    assert [type(e) for e in events] == [ExecEvent, EventsLost, ExecEvent]
    lost = events[1]
    assert isinstance(lost, EventsLost) and lost.reason == "overrun" and lost.count is None
    assert stats.lost_markers == 1


def test_netlink_error_messages_are_counted() -> None:
    stats = ConnectorStats()
    err = struct.pack("=i", -errno.EPERM) + b"\0" * 16
    ok = struct.pack("=i", 0) + b"\0" * 16
    assert parse_datagram(nlmsg(err, NLMSG_ERROR) + nlmsg(ok, NLMSG_ERROR), stats) == []
    assert stats.errors == 1 and stats.acks == 1 and stats.malformed == 0


def test_messages_of_other_connector_users_are_counted_as_foreign() -> None:
    stats = ConnectorStats()
    other = nlmsg(cn(proc_event(FORK, struct.pack("=iiii", 1, 1, 2, 2)), idx=3, val=1))
    short_other = nlmsg(cn(b"\0\0\0\0", idx=4, val=1))
    assert parse_datagram(other + short_other, stats) == []
    assert stats.foreign == 2 and stats.events == 0


def test_every_truncation_is_survived_and_counted() -> None:
    full = fork_msg(1, 1, 2, 2) + exec_msg(2, 2) + exit_msg(2, 2, 3 << 8)
    boundaries = {0, len(fork_msg(1, 1, 2, 2)), len(fork_msg(1, 1, 2, 2) + exec_msg(2, 2)),
                  len(full)}
    expected = parse_datagram(full)
    assert len(expected) == 3
    for cut in range(len(full) + 1):
        stats = ConnectorStats()
        events = parse_datagram(full[:cut], stats)
        # what is decoded is always a correct prefix of the whole
        assert events == expected[: len(events)], cut
        if cut in boundaries:
            assert stats.malformed == 0, cut
        else:
            assert stats.malformed == 1, cut
            assert len(events) < 3


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("=IHHII", 8, NLMSG_DONE, 0, 0, 0),  # nlmsg_len below the header
        struct.pack("=IHHII", 500, NLMSG_DONE, 0, 0, 0) + b"\0" * 60,  # beyond the data
        nlmsg(cn(b"\1\0\0\0" * 2)),  # cn_msg too short for a proc_event head
        nlmsg(struct.pack("=IIIIHH", 1, 1, 0, 0, 200, 0) + b"\0" * 40),  # cn len > data
        nlmsg(cn(struct.pack("=IIQ", FORK, 0, 1) + b"\0" * 8)),  # fork body too short
        nlmsg(cn(struct.pack("=IIQ", EXEC, 0, 1) + b"\0" * 4)),  # exec body too short
        nlmsg(cn(struct.pack("=IIQ", EXIT, 0, 1) + b"\0" * 12)),  # exit body too short
        nlmsg(cn(struct.pack("=IIQ", COMM, 0, 1) + b"\0" * 20)),  # comm body too short
        nlmsg(cn(b"\0" * 12)),  # message too short for a proc_event head
        nlmsg(struct.pack("=IIIIHH", 1, 1, 0, 0, 8, 0) + b"\0" * 40),  # cn len < event head
        nlmsg(b"\0\0", NLMSG_ERROR),  # error message without its error code
        exec_msg(1, 1) + b"\1\2\3\4\5\6\7\x08",  # trailing bytes too short for a header
    ],
)
def test_inconsistent_lengths_are_counted_not_raised(data: bytes) -> None:
    stats = ConnectorStats()
    events = parse_datagram(data, stats)
    assert stats.malformed >= 1
    assert all(isinstance(e, ExecEvent) for e in events)


def test_random_garbage_and_bit_flips_never_raise() -> None:
    rng = random.Random(20240611)
    valid = fork_msg(1, 1, 2, 2) + exit_msg(2, 2, 7 << 8) + comm_msg(3, 3, b"abc")
    stats = ConnectorStats()
    kinds = (ForkEvent, ExecEvent, ExitEvent, CommEvent, EventsLost)
    for i in range(3000):
        if i % 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        else:
            buf = bytearray(valid)
            for _ in range(rng.randrange(1, 6)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            data = bytes(buf[: rng.randrange(len(buf) + 1)])
        for ev in parse_datagram(data, stats):
            assert isinstance(ev, kinds)
    assert stats.datagrams == 3000
    assert stats.malformed > 0


def test_decoder_reports_gaps_in_per_cpu_sequence() -> None:
    dec = Decoder()
    out: list = []
    for seq in (10, 11, 14):  # 12 and 13 never arrived on cpu 0
        dec.feed(exec_msg(seq, seq, cpu=0, seq=seq, ts=seq), out)
    for seq in (500, 501):  # cpu 1 counts on its own
        dec.feed(exec_msg(seq, seq, cpu=1, seq=seq), out)
    kinds = [type(e).__name__ for e in out]
    assert kinds == ["ExecEvent", "ExecEvent", "EventsLost", "ExecEvent", "ExecEvent", "ExecEvent"]
    gap = out[2]
    assert isinstance(gap, EventsLost) and (gap.reason, gap.count, gap.ts_ns) == ("gap", 2, 14)
    assert dec.stats.missed == 2 and dec.stats.lost_markers == 1


def test_decoder_sequence_wraps_and_ignores_reordering_and_old_acks() -> None:
    dec = Decoder()
    out: list = []
    for seq in (0xFFFFFFFE, 0xFFFFFFFF, 0, 1):  # wraps around: no gap
        dec.feed(exec_msg(1, 1, seq=seq), out)
    dec.feed(exec_msg(1, 1, seq=0), out)  # going backwards re-baselines, no report
    # an old kernel's ack: cpu -1 and the requester's seq, outside the count
    dec.feed(nlmsg(cn(proc_event(0, b"\0" * 4, cpu=0xFFFFFFFF), seq=9999)), out)
    dec.feed(exec_msg(1, 1, seq=1), out)
    assert not any(isinstance(e, EventsLost) for e in out)
    assert dec.stats.missed == 0 and dec.stats.acks == 1
    dec.reset_sequence()
    dec.feed(exec_msg(1, 1, seq=100), out)  # new baseline after a reset
    assert dec.stats.missed == 0


def test_parse_datagram_is_stateless_about_sequences() -> None:
    stats = ConnectorStats()
    parse_datagram(exec_msg(1, 1, seq=1), stats)
    assert parse_datagram(exec_msg(1, 1, seq=50), stats) == [ExecEvent(1_000, 1, 1)]
    assert stats.missed == 0


# --- time helpers (no connector needed) --------------------------------------------------------


def _starttime_ticks(pid: int | str) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rindex(b")") + 2 :].split()[19])  # field 22


def test_monotonic_to_epoch_matches_wall_clock() -> None:
    before = time.time()
    converted = nl.monotonic_ns_to_epoch(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    after = time.time()
    assert before - 0.002 <= converted <= after + 0.002
    offset = nl.wall_offset_ns()
    assert abs(nl.monotonic_ns_to_epoch(0, offset) - offset / 1e9) < 1e-6


def test_starttime_of_a_fresh_child_lands_at_its_spawn_time() -> None:
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    proc = subprocess.Popen([sys.executable, "-S", "-c", "import time; time.sleep(5)"])
    try:
        t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        start = nl.starttime_to_monotonic_ns(_starttime_ticks(proc.pid))
        tick = 1_000_000_000 // nl.CLK_TCK
        # truncated to a tick, never later than the fork
        assert t0 - tick - 1_000_000 <= start <= t1 + 1_000_000
        epoch = nl.starttime_to_epoch(_starttime_ticks(proc.pid))
        assert abs(epoch - nl.monotonic_ns_to_epoch(start)) < 0.002
    finally:
        proc.kill()
        proc.wait()


# --- live: the kernel's proc connector --------------------------------------------------------

_PROBE = probe()
live = pytest.mark.skipif(not _PROBE[0], reason=_PROBE[1])


@pytest.fixture
def conn() -> Iterator[ProcConnector]:
    with ProcConnector() as c:
        yield c


def exit_of(pid: int) -> Callable[[list[nl.ConnectorEvent]], bool]:
    return lambda evs: any(isinstance(e, ExitEvent) and e.pid == pid for e in evs)


def the_exit(events: list[nl.ConnectorEvent], pid: int) -> ExitEvent:
    [ev] = [e for e in events if isinstance(e, ExitEvent) and e.pid == pid]
    return ev


@live
def test_probe_says_available() -> None:
    ok, reason = probe("/proc")
    assert ok, reason
    assert reason.startswith("netlink proc connector available")


@live
def test_receive_buffer_is_large(conn: ProcConnector) -> None:
    assert conn.rcvbuf >= ProcConnector.DEFAULT_RCVBUF


@live
def test_fork_exec_exit_of_a_spawned_process(conn: ProcConnector) -> None:
    proc = subprocess.Popen(py("import sys; sys.exit(0)"))
    try:
        # reap only after the exit event: a parent that reaps first makes its pid read 0
        events = collect(conn, exit_of(proc.pid))
    finally:
        proc.wait()
    me = os.getpid()
    forks = [e for e in events if isinstance(e, ForkEvent) and e.child_pid == proc.pid]
    execs = [e for e in events if isinstance(e, ExecEvent) and e.pid == proc.pid]
    assert len(forks) == 1 and len(execs) == 1
    fork, exec_ = forks[0], execs[0]
    assert (fork.parent_tgid, fork.child_tgid, fork.is_thread) == (me, proc.pid, False)
    assert exec_.tgid == proc.pid and not exec_.is_thread
    ex = the_exit(events, proc.pid)
    assert (ex.tgid, ex.parent_tgid, ex.exit_signal) == (proc.pid, me, signal.SIGCHLD)
    assert (ex.exit_code, ex.signal, ex.core_dumped) == (0, None, False)
    assert fork.ts_ns < exec_.ts_ns < ex.ts_ns
    assert conn.lost == 0 and conn.stats.malformed == 0


@live
def test_exit_code_7(conn: ProcConnector) -> None:
    proc = subprocess.Popen(py("import sys; sys.exit(7)"))
    proc.wait()
    ex = the_exit(collect(conn, exit_of(proc.pid)), proc.pid)
    assert (ex.exit_code, ex.signal, ex.core_dumped) == (7, None, False)


@live
def test_sigkill_gives_signal_9(conn: ProcConnector) -> None:
    proc = subprocess.Popen(py("import time; time.sleep(30)"))
    try:
        # kill only once it runs python, so the kill hits the exec'd process
        collect(conn, lambda evs: any(isinstance(e, ExecEvent) and e.pid == proc.pid for e in evs))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    ex = the_exit(collect(conn, exit_of(proc.pid)), proc.pid)
    assert (ex.exit_code, ex.signal, ex.core_dumped) == (None, 9, False)


def _segfault(conn: ProcConnector, cwd: Path, core_limit: int) -> ExitEvent:
    code = (
        "import resource, ctypes\n"
        f"resource.setrlimit(resource.RLIMIT_CORE, ({core_limit}, {core_limit}))\n"
        "ctypes.string_at(0)\n"
    )
    proc = subprocess.Popen(py(code), cwd=cwd)
    proc.wait()
    assert proc.returncode == -signal.SIGSEGV
    return the_exit(collect(conn, exit_of(proc.pid), timeout=15), proc.pid)


@live
def test_segfault_with_core_dump(conn: ProcConnector, tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    limit = resource.RLIM_INFINITY if hard == resource.RLIM_INFINITY else hard
    ex = _segfault(conn, tmp_path, limit)
    try:
        assert (ex.exit_code, ex.signal) == (None, signal.SIGSEGV)
        assert ex.core_dumped, Path("/proc/sys/kernel/core_pattern").read_text()
    finally:
        for core in tmp_path.glob("core*"):
            core.unlink()


@live
def test_segfault_without_core_dump(conn: ProcConnector, tmp_path: Path) -> None:
    ex = _segfault(conn, tmp_path, 0)
    assert (ex.exit_code, ex.signal, ex.core_dumped) == (None, signal.SIGSEGV, False)


@live
def test_threads_are_flagged(conn: ProcConnector) -> None:
    proc = subprocess.Popen(
        py("import threading; t = threading.Thread(target=lambda: None); t.start(); t.join()")
    )
    proc.wait()
    events = collect(conn, exit_of(proc.pid))
    thread_forks = [
        e for e in events if isinstance(e, ForkEvent) and e.child_tgid == proc.pid and e.is_thread
    ]
    assert len(thread_forks) == 1
    tid = thread_forks[0].child_pid
    # the kernel names the process's parent for a new thread, not the creating thread
    assert tid != proc.pid and thread_forks[0].parent_tgid == os.getpid()
    thread_exit = the_exit(events, tid)
    assert thread_exit.is_thread and thread_exit.tgid == proc.pid
    assert not the_exit(events, proc.pid).is_thread


@live
def test_comm_change_is_reported(conn: ProcConnector) -> None:
    proc = subprocess.Popen(py("open('/proc/self/comm', 'w').write('renamed-by-test')"))
    proc.wait()
    events = collect(conn, exit_of(proc.pid))
    comms = [e for e in events if isinstance(e, CommEvent) and e.pid == proc.pid]
    assert [c.comm for c in comms] == ["renamed-by-test"[:15]]


@live
def test_uid_change_is_counted_as_ignored(conn: ProcConnector) -> None:
    before = conn.stats.ignored_kinds.get("uid", 0)
    proc = subprocess.Popen(py("import os; os.setuid(65534)"))
    proc.wait()
    events = collect(conn, exit_of(proc.pid))
    assert the_exit(events, proc.pid).exit_code == 0
    assert conn.stats.ignored_kinds.get("uid", 0) > before


@live
def test_hundred_short_processes_all_exit_7(conn: ProcConnector) -> None:
    pids: set[int] = set()
    running: list[subprocess.Popen[bytes]] = []
    code = py("import time, sys; time.sleep(0.02); sys.exit(7)")
    try:
        for _ in range(100):
            running.append(subprocess.Popen(code))
            pids.add(running[-1].pid)
            if len(running) >= 6:  # a few at a time on 2 cores
                running.pop(0).wait()
        for p in running:
            p.wait()
    finally:
        for p in running:
            p.kill()
            p.wait()
    events = collect(
        conn,
        lambda evs: pids <= {e.pid for e in evs if isinstance(e, ExitEvent)},
        timeout=10,
    )
    exits = [e for e in events if isinstance(e, ExitEvent) and e.pid in pids]
    assert len(exits) == 100
    assert all(e.exit_code == 7 and e.signal is None for e in exits)
    assert not any(isinstance(e, EventsLost) for e in events)


@live
def test_lifetime_from_starttime_matches_a_measured_lifetime(conn: ProcConnector) -> None:
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    proc = subprocess.Popen(py("import time; time.sleep(0.3)"))
    ticks = _starttime_ticks(proc.pid)
    os.waitpid(proc.pid, 0)
    t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    proc.returncode = 0
    measured = (t1 - t0) / 1e9
    events = collect(conn, exit_of(proc.pid))
    ex = the_exit(events, proc.pid)
    [fork] = [e for e in events if isinstance(e, ForkEvent) and e.child_pid == proc.pid]
    lifetime = nl.lifetime_s(ticks, ex.ts_ns)
    # Measured by the kernel's own clock, which a busy machine can't stretch the way it
    # delays this process's fork and wait: the start is stamped just before the fork
    # event, then truncated to a tick, so the lifetime is the fork->exit span plus up to
    # one tick (and the few µs between the stamp and the event).
    span = (ex.ts_ns - fork.ts_ns) / 1e9
    tick = 1 / nl.CLK_TCK
    assert span - 0.0005 <= lifetime <= span + tick + 0.002, (lifetime, span)
    # ... and sits inside what we measured from outside
    assert lifetime <= measured + tick, (lifetime, measured)
    assert t0 <= fork.ts_ns and ex.ts_ns <= t1
    # and the exit time on the wall clock is when we saw it happen
    assert time.time() - 5 < nl.monotonic_ns_to_epoch(ex.ts_ns) <= time.time()


def spawn_until_seen(
    c: ProcConnector, args: list[str], into: list[nl.ConnectorEvent] | None = None,
    timeout: float = 10,
) -> ExitEvent:
    """Run ``args`` until one run's exit event arrives (a tiny buffer may drop some)."""
    events: list[nl.ConnectorEvent] = [] if into is None else into

    def run() -> ExitEvent | None:
        proc = subprocess.Popen(args)
        proc.wait()
        try:
            collect(c, exit_of(proc.pid), timeout=1, into=events)
        except AssertionError:
            return None
        return the_exit(events, proc.pid)

    return wait_for(f"a run of {args} seen whole", run, timeout, step=0)


@live
def test_enobufs_is_signalled_and_reading_continues() -> None:
    # ~16 KiB of buffer holds about a dozen events; a burst of 200 forks overflows it.
    # Other processes on the host share the stream, so nothing here relies on one
    # particular event surviving such a small buffer: each step retries until its deadline.
    with ProcConnector(rcvbuf=8 * 1024, force_rcvbuf=False) as c:
        assert c.rcvbuf < 64 * 1024
        # see traffic first, so the CPUs have sequence baselines
        spawn_until_seen(c, py("pass"))
        fork_exits([3] * 200)
        events = collect(c, lambda evs: any(isinstance(e, EventsLost) for e in evs))
        assert any(isinstance(e, EventsLost) and e.reason == "enobufs" for e in events)
        assert c.enobufs >= 1 and c.lost >= 1
        # still working: a later process is seen whole, and the hole was measured
        later: list[nl.ConnectorEvent] = []

        def seen_after_the_hole() -> bool:
            ex = spawn_until_seen(c, py("import sys; sys.exit(4)"), into=later)
            assert ex.exit_code == 4
            return c.stats.missed > 0

        wait_for("the hole measured by a sequence gap", seen_after_the_hole, 10, step=0, explain=lambda: c.stats)
        assert any(isinstance(e, EventsLost) and e.reason == "gap" for e in events + later)
        assert c.stats.malformed == 0


@live
async def test_usable_from_asyncio_with_add_reader() -> None:
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[nl.ConnectorEvent] = asyncio.Queue()
    with ProcConnector() as c:
        loop.add_reader(c.fileno(), lambda: [got.put_nowait(e) for e in c.read_events()])
        try:
            proc = await asyncio.create_subprocess_exec(*py("import sys; sys.exit(9)"))
            await proc.wait()
            async with asyncio.timeout(5):
                while True:
                    ev = await got.get()
                    if isinstance(ev, ExitEvent) and ev.pid == proc.pid:
                        break
            assert ev.exit_code == 9
        finally:
            loop.remove_reader(c.fileno())


@live
def test_usable_from_a_plain_thread() -> None:
    seen: list[nl.ConnectorEvent] = []
    stop = threading.Event()
    with ProcConnector() as c:

        def reader() -> None:
            while not stop.is_set():
                if c.wait_readable(0.05):
                    seen.extend(c.read_events())

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            proc = subprocess.Popen(py("import sys; sys.exit(5)"))
            proc.wait()
            wait_for("the exit, read by the thread", lambda: exit_of(proc.pid)(list(seen)), 5)
        finally:
            stop.set()
            thread.join(5)
        assert not thread.is_alive()
        assert the_exit(list(seen), proc.pid).exit_code == 5


@live
def test_close_is_idempotent_and_final() -> None:
    c = ProcConnector().open()
    assert not c.closed
    c.close()
    c.close()
    assert_closed(c)
    # it can be opened again, and what the kernel sent meanwhile is not taken for a loss
    churn = subprocess.Popen(py("pass"))
    churn.wait()
    with c:
        proc = subprocess.Popen(py("import sys; sys.exit(3)"))
        proc.wait()
        assert the_exit(collect(c, exit_of(proc.pid)), proc.pid).exit_code == 3
        assert c.stats.missed == 0 and c.lost == 0


@live
def test_forged_datagrams_from_other_processes_are_refused(conn: ProcConnector) -> None:
    our_port = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        port = our_port.getsockname()[0]
    finally:
        our_port.close()
    forger = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, nl.NETLINK_CONNECTOR)
    try:
        forger.bind((0, 0))
        with pytest.raises(ConnectionRefusedError):
            forger.sendto(exit_msg(1, 1, 7 << 8), (port, 0))
    finally:
        forger.close()


# --- probe() refusals ----------------------------------------------------------------------------


def test_probe_refuses_a_directory_that_is_not_procfs(tmp_path: Path) -> None:
    if not _PROBE[0]:
        pytest.skip(_PROBE[1])
    ok, reason = probe(str(tmp_path))
    assert not ok and "not a live procfs" in reason


def test_probe_refuses_a_missing_mount(tmp_path: Path) -> None:
    if not _PROBE[0]:
        pytest.skip(_PROBE[1])
    ok, reason = probe(str(tmp_path / "nope"))
    assert not ok and "does not exist" in reason


def test_probe_refuses_a_procfs_of_another_pid_namespace(tmp_path: Path) -> None:
    if not _PROBE[0]:
        pytest.skip(_PROBE[1])
    (tmp_path / "self").symlink_to("4000000")  # how such a procfs shows us
    ok, reason = probe(str(tmp_path))
    assert not ok and "another PID namespace" in reason and reason.startswith(
        "netlink proc connector unavailable: "
    )


@live
def test_probe_refuses_an_unprivileged_user() -> None:
    ok, reason = in_child(probe, setup=become)
    assert not ok and reason == "netlink proc connector unavailable: not root and no CAP_NET_ADMIN"


@live
def test_probe_and_open_refuse_a_child_network_namespace() -> None:
    def child() -> object:
        unshare(CLONE_NEWNET)
        return [*probe(), open_outcome(lambda: ProcConnector().open().close(), ConnectorError)]

    ok, reason, opened = in_child(child)
    assert not ok and "initial network namespace" in reason
    assert opened == "ECONNREFUSED"


@live
def test_probe_and_open_refuse_a_child_pid_namespace() -> None:
    def child() -> object:
        unshare(CLONE_NEWPID)
        # only the next child lives in the new namespace
        return in_child(grandchild)

    def grandchild() -> object:
        assert os.getpid() == 1
        # the kernel ignores us: no ack ever comes
        return [*probe(), open_outcome(lambda: ProcConnector().open(timeout=0.3).close(), ConnectorError)]

    ok, reason, opened = in_child(child)
    assert not ok and "child PID namespace" in reason
    assert opened == "ETIMEDOUT"
