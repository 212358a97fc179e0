"""procstream.procfs.boot: btime from the system-wide stat file."""

from __future__ import annotations

from pathlib import Path

import pytest

from procstream.procfs.boot import parse_btime
from procstream.procfs.errors import ProcfsParseError

PROC = Path(__file__).parents[1] / "fixtures" / "proc"


def test_captured_stat() -> None:
    assert parse_btime((PROC / "stat").read_bytes()) == 1795677232


def test_first_and_last_line() -> None:
    assert parse_btime(b"btime 12\ncpu 1 2 3\n") == 12
    assert parse_btime(b"cpu 1 2 3\nbtime 13") == 13


@pytest.mark.parametrize(
    "data", [b"", b"cpu 1 2 3\nctxt 5\n", b"cpu 1\nbtime soon\n", b"cpu 1\nxbtime 5\n"]
)
def test_garbage_raises(data: bytes) -> None:
    with pytest.raises(ProcfsParseError):
        parse_btime(data)
