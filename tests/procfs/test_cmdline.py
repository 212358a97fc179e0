"""procstream.procfs.cmdline: argv from captured bytes."""

from __future__ import annotations

import json
from pathlib import Path

from procstream.procfs.cmdline import parse_cmdline

PROC = Path(__file__).parents[1] / "fixtures" / "proc"


def test_normal_process() -> None:
    assert parse_cmdline((PROC / "1000" / "cmdline").read_bytes()) == ("sleep", "1000")


def test_empty_for_zombie_and_kernel_thread() -> None:
    assert parse_cmdline((PROC / "1002" / "cmdline").read_bytes()) == ()
    assert parse_cmdline((PROC / "14" / "cmdline").read_bytes()) == ()


def test_non_utf8_and_empty_argument() -> None:
    args = parse_cmdline((PROC / "1001" / "cmdline").read_bytes())
    assert args[1] == "-c"
    # argv ended with "café", b"\xff\xferaw" and an empty argument
    assert args[-3:] == ("café", "\ufffd\ufffdraw", "")
    assert len(args) == 6
    json.dumps(args)  # stays JSON-encodable


def test_rewritten_argv_without_terminator() -> None:
    # setproctitle-style: one string, spaces, no trailing NUL
    assert parse_cmdline(b"nginx: worker process") == ("nginx: worker process",)
    assert parse_cmdline(b"a\0b") == ("a", "b")
    assert parse_cmdline(b"\0") == ("",)
