"""procstream.procfs.io: storage read/write bytes from captured bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from procstream.procfs.errors import ProcfsParseError
from procstream.procfs.io import IoCounters, parse_io

PROC = Path(__file__).parents[1] / "fixtures" / "proc"


def test_normal_process() -> None:
    # the fixture has cancelled_write_bytes 8192: write_bytes must not be read from it
    assert parse_io((PROC / "1000" / "io").read_bytes()) == IoCounters(20480, 4096)


def test_kernel_thread() -> None:
    assert parse_io((PROC / "14" / "io").read_bytes()) == IoCounters(0, 0)


def test_without_trailing_newline() -> None:
    assert parse_io(b"rchar: 1\nread_bytes: 7\nwrite_bytes: 9") == (7, 9)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"rchar: 1\nwchar: 2\n",
        b"rchar: 1\nread_bytes: 7\ncancelled_write_bytes: 3\n",  # no write_bytes
        b"rchar: 1\nread_bytes: x\nwrite_bytes: 9\n",
    ],
)
def test_garbage_raises(data: bytes) -> None:
    with pytest.raises(ProcfsParseError):
        parse_io(data)


def test_a_value_beyond_64_bits_is_garbage() -> None:
    with pytest.raises(ProcfsParseError):
        parse_io(b"rchar: 0\nread_bytes: 1180591620717411303424\nwrite_bytes: 0\n")
