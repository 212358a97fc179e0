"""procstream.procfs.status: effective uid, context switches and swap from captured bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from procstream.procfs.errors import ProcfsParseError
from procstream.procfs.status import Status, parse_ctx_switches, parse_status

PROC = Path(__file__).parents[1] / "fixtures" / "proc"


def test_normal_process() -> None:
    assert parse_status((PROC / "1000" / "status").read_bytes()) == Status(
        uid=0, ctx_voluntary=2, ctx_nonvoluntary=0, swapped_bytes=12 * 1024
    )


def test_zombie_and_kernel_thread_lack_vmswap() -> None:
    zombie = (PROC / "1002" / "status").read_bytes()
    assert b"VmSwap" not in zombie
    assert parse_status(zombie) == Status(0, 1, 0, 0)
    kthread = (PROC / "14" / "status").read_bytes()
    assert b"VmSwap" not in kthread
    assert parse_status(kthread) == Status(0, 883, 128, 0)


def test_effective_uid_is_the_second_field() -> None:
    data = (PROC / "1000" / "status").read_bytes().replace(
        b"Uid:\t0\t0\t0\t0", b"Uid:\t1000\t33\t1000\t33"
    )
    assert parse_status(data).uid == 33


def test_keys_do_not_match_inside_other_keys() -> None:
    # nonvoluntary_... contains "voluntary_ctxt_switches:"; order must not matter
    data = (
        b"Name:\tx\nUid:\t1\t2\t3\t4\n"
        b"nonvoluntary_ctxt_switches:\t9\nvoluntary_ctxt_switches:\t5\n"
    )
    assert parse_status(data) == Status(2, 5, 9, 0)
    assert parse_ctx_switches(data) == (5, 9)


def test_forged_name_cannot_inject_a_line() -> None:
    # the kernel escapes a newline in the task name as "\n" (two characters)
    data = b"Name:\tx\\nUid:\t7\t7\t7\t7\nUid:\t1\t2\t3\t4\nVmSwap:\t       3 kB\n"
    assert parse_status(data).uid == 2


def test_thread_status_ctx_switches() -> None:
    assert parse_ctx_switches((PROC / "1010" / "task" / "1011" / "status").read_bytes()) == (25, 7)
    assert parse_ctx_switches(b"Name:\tx\n") == (0, 0)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Name:\tx\nState:\tS\n",  # no Uid
        b"Name:\tx\nUid:\t0\n",  # Uid with one field
        b"Name:\tx\nUid:\tzero\tzero\n",
        b"Name:\tx\nUid:\t0\t0\t0\t0\nVmSwap:\t  lots kB\n",
        b"Name:\tx\nUid:\t0\t0\t0\t0\nvoluntary_ctxt_switches:\tmany\n",
    ],
)
def test_garbage_raises(data: bytes) -> None:
    with pytest.raises(ProcfsParseError):
        parse_status(data)


@pytest.mark.parametrize(
    "line",
    [b"Uid:\t0\t18446744073709551616\t0\t0", b"voluntary_ctxt_switches:\t99999999999999999999",
     b"VmSwap:\t9223372036854775807 kB"],
)
def test_values_beyond_64_bits_are_garbage(line: bytes) -> None:
    base = (PROC / "1000" / "status").read_bytes()
    key = line.split(b":")[0] + b":"
    start = base.index(b"\n" + key) + 1
    end = base.index(b"\n", start)
    with pytest.raises(ProcfsParseError):
        parse_status(base[:start] + line + base[end:])
