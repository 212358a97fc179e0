"""procstream.procfs.stat: parse /proc/PID/stat from captured bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from procstream.procfs.errors import ProcfsParseError
from procstream.procfs.stat import Stat, parse_stat, parse_state

PROC = Path(__file__).parents[1] / "fixtures" / "proc"


def test_normal_process() -> None:
    st = parse_stat((PROC / "1000" / "stat").read_bytes())
    assert st == Stat(
        comm="sleep",
        state="S",
        ppid=900,
        minflt=74,
        majflt=1,
        utime=0,
        stime=0,
        num_threads=1,
        starttime=67176,
        vsize=2990080,
        rss=423,
        startstack=140733506333952,
    )


def test_comm_with_spaces_and_parens() -> None:
    st = parse_stat((PROC / "1001" / "stat").read_bytes())
    assert st.comm == "a) (b c)"
    assert (st.state, st.ppid, st.utime, st.num_threads, st.starttime) == ("S", 900, 1, 1, 67176)
    assert (st.vsize, st.rss) == (16973824, 3350)


def test_comm_with_newline_and_non_utf8() -> None:
    data = b"7 (x\n) S\xff) R 1 7 7 0 -1 0 5 0 6 0 11 12 0 0 20 0 2 0 99 4096 3 1 2 3\n"
    st = parse_stat(data)
    assert st.comm == "x\n) S\ufffd"
    assert (st.state, st.ppid, st.minflt, st.majflt) == ("R", 1, 5, 6)
    assert (st.utime, st.stime, st.num_threads, st.starttime, st.vsize, st.rss) == (
        11,
        12,
        2,
        99,
        4096,
        3,
    )


def test_zombie_and_kernel_thread() -> None:
    zombie = parse_stat((PROC / "1002" / "stat").read_bytes())
    assert (zombie.state, zombie.vsize, zombie.rss, zombie.startstack) == ("Z", 0, 0, 0)
    kthread = parse_stat((PROC / "14" / "stat").read_bytes())
    assert (kthread.comm, kthread.ppid, kthread.utime, kthread.starttime) == (
        "ksoftirqd/0",
        2,
        2,
        24,
    )


def test_startstack_is_optional_and_ends_a_field() -> None:
    head = b"7 (x) S 1 7 7 0 -1 0 5 0 6 0 11 12 0 0 20 0 2 0 99 4096 3"
    assert parse_stat(head + b"\n").startstack == 0  # an old or cut-down format: unknown
    assert parse_stat(head + b" 1 2 3 140000\n").startstack == 140000  # the 28th field, last
    assert parse_stat(head + b" 1 2 3 140000 0 0 0\n").startstack == 140000
    with pytest.raises(ProcfsParseError):
        parse_stat(head + b" 1 2 3 0x4000 0\n")


def test_multithreaded() -> None:
    assert parse_stat((PROC / "1010" / "stat").read_bytes()).num_threads == 3


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"1003 (sleep) S 900 1003 1003 0 -1 4194304 74 0",  # truncated (fixture 1003)
        b"1003 sleep S 900 1 1 0 -1 0 1 0 1 0 1 1 0 0 20 0 1 0 9 9 9",  # no parentheses
        b"1003 )sleep( S 900 1 1 0 -1 0 1 0 1 0 1 1 0 0 20 0 1 0 9 9 9",  # ')' before '('
        b"1003 (sleep) S 900 1 1 0 -1 0 x 0 1 0 1 1 0 0 20 0 1 0 9 9 9",  # non-numeric
        b"1003 (sleep) 42 900 1 1 0 -1 0 1 0 1 0 1 1 0 0 20 0 1 0 9 9 9",  # bad state
        b"\x00\x01\x02 garbage",
        # beyond 64 bits: no kernel wrote that (a crafted tree); it would break encoders
        b"1003 (sleep) S 900 1 1 0 -1 0 1 0 1 0 1 1 0 0 20 0 1 0 9 1180591620717411303424 9",
        b"1003 (sleep) S 900 1 1 0 -1 0 1 0 1 0 1 1 0 0 20 0 1 0 9 9 -9223372036854775809",
        b"1003 (sleep) S 900 1 1 0 -1 0 1 0 1 0 1 1 0 0 20 0 1 0 9 9 9 0 0 0 18446744073709551615",
        # digits int() of bytes refuses (non-ASCII), and far too many of them
        "1003 (sleep) S 900 1 1 0 -1 0 \u00b2 0 1 0 1 1 0 0 20 0 1 0 9 9 9".encode(),
        b"1003 (sleep) S 900 1 1 0 -1 0 1 0 1 0 1 1 0 0 20 0 1 0 9 9 " + b"9" * 5000,
    ],
)
def test_garbage_raises(data: bytes) -> None:
    with pytest.raises(ProcfsParseError):
        parse_stat(data)


def test_fixture_garbage_file_raises() -> None:
    with pytest.raises(ProcfsParseError):
        parse_stat((PROC / "1003" / "stat").read_bytes())


def test_parse_state() -> None:
    assert parse_state((PROC / "1010" / "task" / "1010" / "stat").read_bytes()) == "S"
    assert parse_state((PROC / "1010" / "task" / "1011" / "stat").read_bytes()) == "R"
    assert parse_state((PROC / "1010" / "task" / "1012" / "stat").read_bytes()) == "D"
    assert parse_state(b"5 (a) (b c)) Z 1 2") == "Z"
    for bad in (b"", b"5 (x", b"5 (x) ", b"5 (x) 7 1"):
        with pytest.raises(ProcfsParseError):
            parse_state(bad)
