"""procstream.procfs.limits: soft open-files limit from captured bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from procstream.procfs.errors import ProcfsParseError
from procstream.procfs.limits import Limit, parse_limits, parse_max_open_files

PROC = Path(__file__).parents[1] / "fixtures" / "proc"


def test_number() -> None:
    assert parse_max_open_files((PROC / "1000" / "limits").read_bytes()) == 20000


def test_unlimited_is_zero() -> None:
    assert parse_max_open_files((PROC / "1006" / "limits").read_bytes()) == 0


def test_soft_not_hard() -> None:
    data = (PROC / "1000" / "limits").read_bytes().replace(
        b"Max open files            20000                20000",
        b"Max open files            1024                 524288",
    )
    assert parse_max_open_files(data) == 1024


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Limit    Soft Limit    Hard Limit    Units\n"
        b"Max cpu time   unlimited   unlimited   seconds\n",
        b"Max open files\n",
        b"Max open files    many    many    files\n",
    ],
)
def test_garbage_raises(data: bytes) -> None:
    with pytest.raises(ProcfsParseError):
        parse_max_open_files(data)


def test_every_limit() -> None:
    limits = parse_limits((PROC / "1000" / "limits").read_bytes())
    by_name = {limit.name: limit for limit in limits}
    assert len(limits) == 16 and limits[0].name == "Max cpu time"
    assert by_name["Max open files"] == Limit("Max open files", 20000, 20000, "files")
    assert by_name["Max stack size"] == Limit("Max stack size", 8388608, None, "bytes")
    assert by_name["Max cpu time"] == Limit("Max cpu time", None, None, "seconds")
    assert by_name["Max nice priority"].unit == ""  # the priorities have no unit


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Max open files            1024                 524288               files\n",  # no header
        b"Limit                     Soft Limit           Hard Limit           Units\n"
        b"Max open files            lots                 524288               files\n",
        b"Limit                     Soft Limit           Hard Limit           Units\n"
        b"Max open files\n",
    ],
)
def test_every_limit_garbage_raises(data: bytes) -> None:
    with pytest.raises(ProcfsParseError):
        parse_limits(data)


def test_a_huge_file_is_read_only_so_far() -> None:
    header = b"Limit                     Soft Limit           Hard Limit           Units\n"
    line = b"Max open files            1024                 524288               files\n"
    assert len(parse_limits(header + line * 10_000)) == 64
