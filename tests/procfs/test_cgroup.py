"""procstream.procfs.cgroup: cgroup paths from captured bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from procstream.procfs.cgroup import parse_cgroup
from procstream.procfs.errors import ProcfsParseError

PROC = Path(__file__).parents[1] / "fixtures" / "proc"


def test_hybrid_hierarchy() -> None:
    paths = parse_cgroup((PROC / "1000" / "cgroup").read_bytes())
    assert len(paths) == 10
    assert paths[0] == "/user.slice/user-0.slice/session-1.scope"  # 9:name=systemd:...
    assert paths[2] == "/"  # 7:blkio:/
    assert paths[-1] == "/user.slice/user-0.slice/session-1.scope"  # 0::... (v2)


def test_path_with_colons() -> None:
    assert parse_cgroup((PROC / "1001" / "cgroup").read_bytes()) == (
        "/system.slice/app:blue.service:v2",
    )


def test_empty() -> None:
    assert parse_cgroup(b"") == ()


def test_garbage_raises() -> None:
    with pytest.raises(ProcfsParseError):
        parse_cgroup(b"0::/ok\nnot a cgroup line\n")
