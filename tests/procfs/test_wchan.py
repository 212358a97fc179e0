"""procstream.procfs.wchan: a thread's wait channel from captured ``wchan`` bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from procstream.procfs.errors import ProcfsParseError
from procstream.procfs.wchan import MAX_WCHAN, parse_wchan

PROC = Path(__file__).parents[1] / "fixtures" / "proc"


def test_waiting_thread() -> None:
    assert parse_wchan((PROC / "1000" / "wchan").read_bytes()) == "hrtimer_nanosleep"


def test_running_thread_has_none() -> None:
    assert parse_wchan((PROC / "1010" / "task" / "1011" / "wchan").read_bytes()) == ""


@pytest.mark.parametrize("data", [b"", b"0", b"0\n", b"  "])
def test_nothing_to_tell(data: bytes) -> None:
    assert parse_wchan(data) == ""


def test_compiler_suffixes_are_part_of_the_symbol() -> None:
    assert parse_wchan(b"poll_schedule_timeout.constprop.0") == "poll_schedule_timeout.constprop.0"


@pytest.mark.parametrize(
    "data",
    [
        b'do_wait"} 1\nfake_metric{x="',  # would break a label value
        b"do wait",
        b"\xff\xfe",
        b"a" * (MAX_WCHAN + 1),
    ],
)
def test_anything_but_a_symbol_raises(data: bytes) -> None:
    with pytest.raises(ProcfsParseError):
        parse_wchan(data)
