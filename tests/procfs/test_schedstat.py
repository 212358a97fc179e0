from __future__ import annotations

import os
import time

import pytest

from procstream.procfs import FS, ProcfsParseError
from procstream.procfs.schedstat import parse_schedstat


def test_parse_schedstat() -> None:
    assert parse_schedstat(b"130047904 80149 22\n") == 130_047_904


@pytest.mark.parametrize("data", [b"", b"1 2\n", b"x 2 3\n", b"1 2 3 4\n"])
def test_garbage_is_a_parse_error(data: bytes) -> None:
    with pytest.raises(ProcfsParseError):
        parse_schedstat(data)


def test_runtime_of_this_process_is_exact() -> None:
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    before = time.thread_time_ns()
    runtime = FS("/proc").proc(os.getpid()).runtime_ns()
    after = time.thread_time_ns()
    # the main thread's own CPU clock brackets what the kernel reports for it
    assert before - 5_000_000 <= runtime <= after + 5_000_000
