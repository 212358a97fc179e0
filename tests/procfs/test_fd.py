"""procstream.procfs.fd: open fd counts, from a fake tree and from live processes."""

from __future__ import annotations

import errno
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from procstream.procfs.fd import count_open_fds
from tests.support.fake_proc_tree import deny, unprivileged


def _kernel() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def test_fake_tree_lists(fake_proc: Path) -> None:
    assert count_open_fds(str(fake_proc / "1000" / "fd"), size_counts=False) == 3
    assert count_open_fds(str(fake_proc / "1010" / "fd"), size_counts=False) == 6
    assert count_open_fds(str(fake_proc / "14" / "fd"), size_counts=False) == 0


def test_missing_is_process_lookup_error(fake_proc: Path) -> None:
    for size_counts in (True, False):
        with pytest.raises(ProcessLookupError) as info:
            count_open_fds(str(fake_proc / "1003" / "fd"), size_counts=size_counts)
        assert info.value.errno == errno.ENOENT


def test_unreadable_is_permission_error(fake_proc: Path) -> None:
    path = fake_proc / "1000" / "fd"
    deny(path)
    with pytest.raises(PermissionError):
        unprivileged(_count_listing, str(path))


def _count_listing(path: str) -> int:
    return count_open_fds(path, size_counts=False)


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[bytes]]:
    """A live python holding 40 extra open files, idle until we kill it."""
    code = (
        "import sys\n"
        "files = [open('/dev/null') for _ in range(40)]\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_live_count_equals_listing(holder: subprocess.Popen[bytes]) -> None:
    path = f"/proc/{holder.pid}/fd"
    listed = len(os.listdir(path))
    assert listed >= 43  # stdin, stdout, stderr and 40 files
    assert count_open_fds(path) == listed
    assert count_open_fds(path, size_counts=False) == listed
    if _kernel() >= (6, 2):
        # the one-syscall path is the one taken on this kernel
        assert os.stat(path).st_size == listed


def test_live_process_without_fds_is_zero() -> None:
    # kernel threads have no files: st_size is 0, the listing fallback says 0
    assert count_open_fds("/proc/2/fd") == 0


def test_live_vanished(holder: subprocess.Popen[bytes]) -> None:
    path = f"/proc/{holder.pid}/fd"
    holder.kill()
    holder.wait()
    with pytest.raises(ProcessLookupError):
        count_open_fds(path)
