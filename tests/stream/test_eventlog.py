"""The NDJSON event log: filtering, exact lines, rotation, reopen, failures, stuck sinks."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from procstream.stream.eventlog import DEFAULT_TYPES, EventLog, parse_types
from tests.support.waiting import wait_for

DEADLINE = 10.0


def ev(seq: int, type_: str = "proc.start", **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": type_, "seq": seq, "ts": 1_700_000_000.25 + seq, "host": "h1",
        "pid": 1000 + seq, "ppid": 1, "name": "bash", "cmdline": ["bash", "-c", f"echo {seq}"],
        "group": "bash", "source": "poll",
    }
    event.update(extra)
    return event


def read_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "a file must end with a whole line"
    return [json.loads(line) for line in data.splitlines()]


@pytest.fixture
def logs() -> Iterator[list[EventLog]]:
    """Every EventLog a test makes is closed, whatever happens."""
    made: list[EventLog] = []
    yield made
    for el in made:
        el.close(timeout=2.0)


def make(logs: list[EventLog], path: Path | str, **kw: Any) -> EventLog:
    el = EventLog(str(path), **kw)
    logs.append(el)
    return el


def flushed(el: EventLog, n: int) -> Callable[[], bool]:
    return lambda: el.stats.events_written + el.stats.dropped >= n and el.stats.queued == 0


# -- filtering and format ------------------------------------------------------------------


def test_default_types_keep_proc_start_and_exit(tmp_path: Path, logs: list[EventLog]) -> None:
    path = tmp_path / "ev.ndjson"
    el = make(logs, path)
    assert el.types == DEFAULT_TYPES
    el.write([ev(1), ev(2, "group.update"), ev(3, "cycle"), ev(4, "proc.exit", exit_code=0), {"no": "type"}])
    wait_for("two events written", flushed(el, 2))
    assert [e["seq"] for e in read_lines(path)] == [1, 4]
    assert el.stats.events_written == 2 and el.stats.dropped == 0


def test_type_families_and_all(tmp_path: Path, logs: list[EventLog]) -> None:
    fam = make(logs, tmp_path / "fam.ndjson", types=parse_types("proc.*, cycle"))
    every = make(logs, tmp_path / "all.ndjson", types=frozenset({"*"}))
    batch = [ev(1), ev(2, "group.update"), ev(3, "cycle"), ev(4, "proc.exit")]
    fam.write(batch)
    every.write(batch)
    wait_for("family log", flushed(fam, 3))
    wait_for("all log", flushed(every, 4))
    assert [e["seq"] for e in read_lines(tmp_path / "fam.ndjson")] == [1, 3, 4]
    assert [e["seq"] for e in read_lines(tmp_path / "all.ndjson")] == [1, 2, 3, 4]


@pytest.mark.parametrize("bad", ["", " , ", "proc*", "*.start", "pr*oc.start", ".*"])
def test_bad_types_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_types(bad)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        EventLog("")
    with pytest.raises(ValueError):
        EventLog(str(tmp_path / "x"), max_bytes=-1)
    with pytest.raises(ValueError):
        EventLog(str(tmp_path / "x"), max_queue=0)
    with pytest.raises(ValueError):
        EventLog(str(tmp_path / "x"), types=frozenset())


def test_lines_are_exact_ndjson(tmp_path: Path, logs: list[EventLog]) -> None:
    path = tmp_path / "ev.ndjson"
    el = make(logs, path, types=frozenset({"*"}))
    events = [
        ev(1, cmdline=["python3", "-c", 'print("hi\\n")', "ünïcödé ✓", "tab\there"]),
        ev(2, "proc.exit", exit_code=None, signal=9, lifetime_s=0.125, cpu_s=1e-06, read_bytes=2**53),
        ev(3, "group.update", states={"running": 1, "sleeping": 2}, worst_fd_ratio=0.0),
    ]
    el.write(events[:1])
    el.write(events[1:])
    wait_for("three events", flushed(el, 3))
    raw = path.read_bytes()
    assert raw.count(b"\n") == 3 and raw.endswith(b"\n")
    # parsed by the stdlib, independently of the encoder: the same objects come back
    assert read_lines(path) == events
    # one compact object per line, nothing else
    assert all(line.startswith(b"{") and line.endswith(b"}") for line in raw.splitlines())


def test_unencodable_event_is_dropped_and_counted(tmp_path: Path, logs: list[EventLog]) -> None:
    path = tmp_path / "ev.ndjson"
    el = make(logs, path)
    el.write([ev(1), ev(2, pid=object()), ev(3)])
    wait_for("batch", flushed(el, 3))
    assert [e["seq"] for e in read_lines(path)] == [1, 3]
    assert el.stats.dropped == 1 and el.stats.encode_errors == 1


# -- rotation --------------------------------------------------------------------------------


def test_rotation_at_size_bound_keeps_backups_and_whole_lines(tmp_path: Path, logs: list[EventLog]) -> None:
    path = tmp_path / "ev.ndjson"
    max_bytes, backups = 1000, 3
    el = make(logs, path, max_bytes=max_bytes, backups=backups)
    total = 200
    # lines of varying length, in batches of 7
    for start in range(0, total, 7):
        el.write([ev(s, cmdline=["x" * (s % 37)]) for s in range(start, min(start + 7, total))])
    wait_for("all events", flushed(el, total))
    assert el.stats.dropped == 0 and el.stats.write_errors == 0

    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ev.ndjson", "ev.ndjson.1", "ev.ndjson.2", "ev.ndjson.3"]
    files = [tmp_path / f"ev.ndjson.{i}" for i in (3, 2, 1)] + [path]  # oldest first
    contents = [read_lines(f) for f in files]  # every line parses: none split
    sizes = [f.stat().st_size for f in files]
    assert all(size <= max_bytes for size in sizes)
    # a file was rotated only when the next line would not fit
    for older, newer in zip(files[:-1], files[1:]):
        first_of_newer = newer.read_bytes().split(b"\n", 1)[0] + b"\n"
        assert older.stat().st_size + len(first_of_newer) > max_bytes
    # the newest events, contiguous and in order; older files beyond the backups are gone
    seqs = [e["seq"] for c in contents for e in c]
    assert seqs == list(range(seqs[0], total))
    assert seqs[0] > 0
    assert el.stats.rotations >= backups + 1


def test_line_longer_than_the_bound_gets_a_file_of_its_own(tmp_path: Path, logs: list[EventLog]) -> None:
    path = tmp_path / "ev.ndjson"
    el = make(logs, path, max_bytes=300, backups=2)
    el.write([ev(1)])
    el.write([ev(2, cmdline=["y" * 600])])
    el.write([ev(3)])
    wait_for("three events", flushed(el, 3))
    assert [e["seq"] for e in read_lines(tmp_path / "ev.ndjson.2")] == [1]
    assert [e["seq"] for e in read_lines(tmp_path / "ev.ndjson.1")] == [2]
    assert [e["seq"] for e in read_lines(path)] == [3]


def test_zero_backups_start_the_file_afresh(tmp_path: Path, logs: list[EventLog]) -> None:
    path = tmp_path / "ev.ndjson"
    el = make(logs, path, max_bytes=400, backups=0)
    for s in range(30):
        el.write([ev(s)])
    wait_for("events", flushed(el, 30))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.ndjson"]
    seqs = [e["seq"] for e in read_lines(path)]
    assert seqs[-1] == 29 and seqs == list(range(seqs[0], 30)) and seqs[0] > 0
    assert path.stat().st_size <= 400 and el.stats.rotations > 0


# -- reopen -----------------------------------------------------------------------------------


def open_fds_to(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            pass
    return count


def test_reopen_after_logrotate_move(tmp_path: Path, logs: list[EventLog]) -> None:
    path = tmp_path / "ev.ndjson"
    moved = tmp_path / "ev.ndjson-20260101"
    el = make(logs, path)
    el.write([ev(1), ev(2)])
    wait_for("first batch", flushed(el, 2))
    os.rename(path, moved)  # logrotate's move ...
    assert open_fds_to(moved) == 1  # the writer still holds the moved file
    el.reopen()  # ... then SIGHUP
    wait_for("moved file released", lambda: open_fds_to(moved) == 0)
    wait_for("fresh file created", path.exists)
    el.write([ev(3)])
    wait_for("second batch", flushed(el, 3))
    assert [e["seq"] for e in read_lines(moved)] == [1, 2]
    assert [e["seq"] for e in read_lines(path)] == [3]


def test_moved_file_is_noticed_without_sighup(tmp_path: Path, logs: list[EventLog]) -> None:
    path = tmp_path / "ev.ndjson"
    el = make(logs, path)
    el.write([ev(1)])
    wait_for("first batch", flushed(el, 1))
    os.rename(path, tmp_path / "old")
    el.write([ev(2)])
    wait_for("second batch", flushed(el, 2))
    assert [e["seq"] for e in read_lines(path)] == [2]
    assert [e["seq"] for e in read_lines(tmp_path / "old")] == [1]


def test_half_written_line_is_ended_before_appending(tmp_path: Path, logs: list[EventLog]) -> None:
    path = tmp_path / "ev.ndjson"
    path.write_bytes(b'{"type":"proc.start","seq":0}\n{"type":"proc.st')  # cut by a crash
    el = make(logs, path)
    el.write([ev(1)])
    wait_for("event", flushed(el, 1))
    lines = path.read_bytes().splitlines()
    assert lines[1] == b'{"type":"proc.st'
    assert json.loads(lines[2])["seq"] == 1 and len(lines) == 3


# -- failures ---------------------------------------------------------------------------------


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "procstream.stream.eventlog" and r.levelno >= logging.WARNING]


def test_directory_removed_counts_errors_then_resumes(
    tmp_path: Path, logs: list[EventLog], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="procstream.stream.eventlog")
    d = tmp_path / "logdir"
    d.mkdir()
    path = d / "ev.ndjson"
    el = make(logs, path)
    el.write([ev(1)])
    wait_for("first event", flushed(el, 1))
    shutil.rmtree(d)  # the directory is gone: writing to the unlinked file would lose events silently
    for s in range(2, 7):
        el.write([ev(s), ev(100 + s)])
        wait_for(f"failed batch {s}", flushed(el, 1 + 2 * (s - 1)))
    assert el.stats.write_errors == 5
    assert el.stats.dropped == 10
    assert el.stats.events_written == 1
    failures = [m for m in warnings_of(caplog) if "failed" in m]
    assert len(failures) == 1, failures  # one warning for the streak, not one per batch
    assert "No such file or directory" in failures[0]

    d.mkdir()  # the operator fixes it
    el.write([ev(7)])
    wait_for("write after the fix", lambda: el.stats.events_written == 2)
    assert [e["seq"] for e in read_lines(path)] == [7]
    assert any("writing again" in m and "10 events" in m for m in warnings_of(caplog))
    assert el.stats.write_errors == 5


def test_disk_full_counts_errors_then_resumes(
    tmp_path: Path, logs: list[EventLog], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="procstream.stream.eventlog")
    path = tmp_path / "ev.ndjson"
    path.symlink_to("/dev/full")  # every write fails with ENOSPC, even for root
    el = make(logs, path)
    for s in range(3):
        el.write([ev(s)])  # one batch at a time: batches waiting together are one write
        wait_for(f"failed batch {s}", flushed(el, s + 1))
    assert el.stats.events_written == 0 and el.stats.dropped == 3 and el.stats.write_errors == 3
    failures = [m for m in warnings_of(caplog) if "failed" in m]
    assert len(failures) == 1 and "No space left on device" in failures[0]

    path.unlink()  # space again: the path now names a regular file the writer creates
    el.write([ev(10)])
    wait_for("write after the fix", lambda: el.stats.events_written == 1)
    assert [e["seq"] for e in read_lines(path)] == [10]


def test_file_replaced_by_a_directory(tmp_path: Path, logs: list[EventLog]) -> None:
    path = tmp_path / "ev.ndjson"
    el = make(logs, path)
    el.write([ev(1)])
    wait_for("first event", flushed(el, 1))
    path.unlink()
    path.mkdir()
    el.write([ev(2)])
    wait_for("the open to fail", lambda: el.stats.write_errors == 1)
    assert el.stats.dropped == 1
    path.rmdir()
    el.write([ev(3)])
    wait_for("write after the fix", lambda: el.stats.events_written == 2)
    assert [e["seq"] for e in read_lines(path)] == [3]


def test_failing_rotation_keeps_writing_to_the_current_file(tmp_path: Path, logs: list[EventLog]) -> None:
    path = tmp_path / "ev.ndjson"
    el = make(logs, path, max_bytes=200, backups=1)
    (tmp_path / "ev.ndjson.1").mkdir()  # the rename path -> path.1 fails (a non-empty dir)
    (tmp_path / "ev.ndjson.1" / "x").write_text("")
    for s in range(10):
        el.write([ev(s)])
    wait_for("events", flushed(el, 10))
    assert el.stats.events_written == 10 and el.stats.dropped == 0
    assert el.stats.write_errors > 0 and el.stats.rotations == 0
    assert [e["seq"] for e in read_lines(path)] == list(range(10))


# -- stdout, shutdown, stuck sinks -------------------------------------------------------------


def test_stdout_mode(capfd: pytest.CaptureFixture[str], logs: list[EventLog]) -> None:
    el = make(logs, "-")
    el.write([ev(1), ev(2, "cycle"), ev(3, "proc.exit")])
    wait_for("events on stdout", flushed(el, 2))
    assert el.close()
    out = capfd.readouterr().out
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [1, 3]


def test_closed_stdout_is_a_counted_failure(monkeypatch: pytest.MonkeyPatch, logs: list[EventLog]) -> None:
    class Stdout:
        def __init__(self, buffer: io.BytesIO) -> None:
            self.buffer = buffer

    dead = io.BytesIO()
    dead.close()  # writing raises ValueError, not OSError: still a counted failure
    monkeypatch.setattr(sys, "stdout", Stdout(dead))
    el = make(logs, "-")
    el.write([ev(1)])
    wait_for("the failed write", lambda: el.stats.dropped == 1)
    assert el.stats.write_errors == 1 and el.stats.events_written == 0
    live = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", Stdout(live))
    el.write([ev(2)])  # the writer thread survived and picks up the new stdout
    wait_for("the next write", lambda: el.stats.events_written == 1)
    assert [json.loads(line)["seq"] for line in live.getvalue().splitlines()] == [2]


def test_close_drains_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "ev.ndjson"
    el = EventLog(str(path))
    try:
        for s in range(500):
            el.write([ev(s)])
    finally:
        assert el.close(timeout=DEADLINE)
    assert el.stats.events_written == 500
    assert [e["seq"] for e in read_lines(path)] == list(range(500))
    el.write([ev(999)])  # after close: counted, never raised
    assert el.stats.dropped == 1


def test_oversized_batch_is_cut_at_the_queue_bound(tmp_path: Path, logs: list[EventLog]) -> None:
    path = tmp_path / "ev.ndjson"
    el = make(logs, path, max_queue=10)
    el.write([ev(s) for s in range(25)])
    wait_for("batch", flushed(el, 25))
    assert el.stats.events_written == 10 and el.stats.dropped == 15
    assert [e["seq"] for e in read_lines(path)] == list(range(10))


def test_the_queue_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    """Few events but big ones (a command line of 10 KB each): the bytes bound holds
    where the count bound would not."""
    fifo = tmp_path / "ev.fifo"
    os.mkfifo(fifo)  # nobody reads: the writer thread blocks opening it
    el = EventLog(str(fifo), max_queue=1_000_000, max_queue_bytes=64 * 1024)
    reader_fd: int | None = None
    try:
        for s in range(200):  # 2 MB of lines
            el.write([ev(s, cmdline=["x" * 10_000])])
        assert 0 < el.stats.queued_bytes <= 64 * 1024
        assert el.stats.queued == 6 and el.stats.queue_dropped == 194
    finally:
        reader_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # unblocks the writer
        el.close(timeout=DEADLINE)
        os.close(reader_fd)


def test_stuck_sink_never_blocks_the_caller(tmp_path: Path) -> None:
    """A FIFO nobody reads: the writer thread blocks opening it. The caller keeps going,
    the queue stops at its bound and the rest is counted as dropped."""
    fifo = tmp_path / "ev.fifo"
    os.mkfifo(fifo)
    el = EventLog(str(fifo), max_queue=50)
    reader_fd: int | None = None
    received = bytearray()

    def read_all(fd: int) -> None:
        while chunk := os.read(fd, 65536):
            received.extend(chunk)

    reader: threading.Thread | None = None
    try:
        caller = threading.Thread(target=lambda: [el.write([ev(s)]) for s in range(200)])
        caller.start()
        caller.join(DEADLINE)
        assert not caller.is_alive(), "write() blocked on a stuck sink"
        assert el.stats.queued == 50
        assert el.stats.dropped == 150
        assert el.stats.events_written == 0

        # Unblock: a reader appears; everything queued is delivered, in order.
        reader_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        flags = fcntl.fcntl(reader_fd, fcntl.F_GETFL)
        fcntl.fcntl(reader_fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        reader = threading.Thread(target=read_all, args=(reader_fd,))
        reader.start()
        wait_for("queued events delivered", lambda: el.stats.events_written == 50)
    finally:
        if reader_fd is None:  # the test failed early: let the writer's open finish
            reader_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        assert el.close(timeout=DEADLINE)
        if reader is not None:
            reader.join(DEADLINE)
        os.close(reader_fd)
    assert [json.loads(line)["seq"] for line in bytes(received).splitlines()] == list(range(50))


def test_proc_update_is_logged_only_when_named(tmp_path: Path, logs: list[EventLog]) -> None:
    cases = ((frozenset({"*"}), False), (frozenset({"proc.*"}), False),
             (frozenset({"proc.update"}), True), (frozenset({"*", "proc.update"}), True))
    for i, (types, logged) in enumerate(cases):
        el = make(logs, tmp_path / f"log{i}", types=types)
        assert el.wants("proc.update") is logged, types
        assert el.wants("proc.start") is (types != {"proc.update"}), types
