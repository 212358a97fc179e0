"""procstream.procfs._read: whole-file reads and the errno mapping."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from procstream.procfs._read import read_file
from tests.support.fake_proc_tree import deny, unprivileged
from tests.support.waiting import wait_for


def test_small_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "small").write_bytes(b"1 (x) S 0\n")
    (tmp_path / "empty").write_bytes(b"")
    for until_eof in (True, False):
        assert read_file(str(tmp_path / "small"), until_eof=until_eof) == b"1 (x) S 0\n"
        assert read_file(str(tmp_path / "empty"), until_eof=until_eof) == b""


@pytest.mark.parametrize("size", [8191, 8192, 8193, 3 * 8192, 100_000])
def test_files_larger_than_one_read(tmp_path: Path, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    (tmp_path / "big").write_bytes(data)
    # a full buffer means "maybe more" even when a short read would be trusted
    assert read_file(str(tmp_path / "big")) == data
    assert read_file(str(tmp_path / "big"), until_eof=False) == data


@pytest.mark.parametrize("limit", [1, 100, 8192, 8193, 20_000])
def test_a_limit_reads_no_more_than_that(tmp_path: Path, limit: int) -> None:
    data = bytes(i % 251 for i in range(100_000))
    (tmp_path / "big").write_bytes(data)
    assert read_file(str(tmp_path / "big"), limit=limit) == data[:limit]
    (tmp_path / "small").write_bytes(data[:50])
    assert read_file(str(tmp_path / "small"), limit=limit) == data[: min(50, limit)]


@pytest.fixture
def long_argv() -> Iterator[tuple[int, list[bytes]]]:
    """A live python whose cmdline is ~2 pages long."""
    args = [os.fsencode(sys.executable), b"-c", b"import time; time.sleep(300)"]
    args += [b"a" * 5000, b"b" * 5000, b"c" * 5000]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    try:
        yield proc.pid, args
    finally:
        proc.kill()
        proc.wait()


def test_live_cmdline_longer_than_one_read(long_argv: tuple[int, list[bytes]]) -> None:
    pid, args = long_argv
    expected = b"\0".join(args) + b"\0"
    path = f"/proc/{pid}/cmdline"

    def execed() -> bytes | None:
        # right after fork the child may still show the parent's argv
        data = read_file(path)
        return data if data == expected else None

    data = wait_for("its exec", execed, explain=lambda: read_file(path)[:100])
    assert len(data) > 15000  # more than one 8 KiB read


def test_live_limits_equal_python_read() -> None:
    with open("/proc/self/limits", "rb") as f:
        assert read_file("/proc/self/limits") == f.read()


def test_missing_file_is_process_lookup_error(tmp_path: Path) -> None:
    path = str(tmp_path / "gone" / "stat")
    with pytest.raises(ProcessLookupError) as info:
        read_file(path)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == path


def test_reaped_process_is_process_lookup_error() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(ProcessLookupError):
        read_file(f"/proc/{proc.pid}/stat")


def test_unreadable_file_is_permission_error(fake_proc: Path) -> None:
    path = fake_proc / "1000" / "io"
    deny(path)
    with pytest.raises(PermissionError) as info:
        unprivileged(read_file, str(path))
    assert info.value.errno == errno.EACCES


def test_other_errors_propagate_as_oserror(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError) as info:  # read() on a directory: EISDIR
        read_file(str(tmp_path))
    assert info.value.filename == str(tmp_path)


def test_no_fd_leak(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 20000)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        read_file(str(tmp_path / "f"))
        with pytest.raises(OSError):
            read_file(str(tmp_path))
        with pytest.raises(ProcessLookupError):
            read_file(str(tmp_path / "nope"))
    assert len(os.listdir("/proc/self/fd")) == before
