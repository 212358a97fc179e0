"""procstream.procfs.smaps: proportional memory from captured ``smaps_rollup`` bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from procstream.procfs.errors import ProcfsParseError
from procstream.procfs.smaps import Proportional, parse_smaps_rollup

PROC = Path(__file__).parents[1] / "fixtures" / "proc"


def test_recent_kernel_with_pss_breakdown() -> None:
    # Pss_Dirty/Pss_Anon/... follow Pss, SwapPss follows Swap: none may be taken for them
    assert parse_smaps_rollup((PROC / "1010" / "smaps_rollup").read_bytes()) == Proportional(
        9261 * 1024, 16 * 1024
    )


def test_old_kernel_without_swap_pss() -> None:
    assert parse_smaps_rollup((PROC / "1000" / "smaps_rollup").read_bytes()) == (284 * 1024, 0)


def test_no_memory_map_is_no_memory() -> None:
    assert parse_smaps_rollup((PROC / "14" / "smaps_rollup").read_bytes()) == (0, 0)


def test_key_on_the_first_line_after_the_header_only() -> None:
    # "Pss:" matched with its newline: a header or a value can't pose as the key
    data = b"00400000-00401000 r-xp 00000000 08:01 1 /tmp/Pss: x\nRss: 8 kB\nPss: 4 kB\n"
    assert parse_smaps_rollup(data) == (4096, 0)


def test_without_trailing_newline() -> None:
    assert parse_smaps_rollup(b"[rollup]\nPss: 3 kB\nSwapPss: 1 kB") == (3072, 1024)


@pytest.mark.parametrize(
    "data",
    [
        b"[rollup]\nRss: 4 kB\n",  # no Pss
        b"[rollup]\nPss_Anon: 4 kB\n",  # only a longer key
        b"[rollup]\nPss: x kB\n",
        b"[rollup]\nPss: 4\n",  # no unit
        b"[rollup]\nPss: 4 MB\n",
        b"[rollup]\nPss: -4 kB\n",
        b"[rollup]\nPss: 4 kB\nSwapPss: 1 2 kB\n",
    ],
)
def test_garbage_raises(data: bytes) -> None:
    with pytest.raises(ProcfsParseError):
        parse_smaps_rollup(data)
