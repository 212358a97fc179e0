"""procstream.procfs.limits: soft open-files limit from captured bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from procstream.procfs.errors import ProcfsParseError
from procstream.procfs.limits import parse_max_open_files

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
