"""One tracked process in detail (procstream.collect.detail) over a fake /proc tree."""

from __future__ import annotations

from pathlib import Path

from procstream.collect.detail import process_detail
from procstream.config import default_config
from procstream.events import EventBuilder
from procstream.grouper import Grouper
from procstream.procfs import FS
from tests.support.fake_proc_tree import add_proc, deny, unprivileged

CID = "ab12" * 16


def setup(fake_proc: Path) -> tuple[FS, Grouper, EventBuilder]:
    fs = FS(fake_proc)
    grouper = Grouper(default_config(), usernames=str)
    builder = EventBuilder(username=str, redact=lambda argv: tuple("***" if "secret" in a else a for a in argv))
    grouper.update(fs.all_procs())
    return fs, grouper, builder


def test_identity_limits_cgroup_container_parent_children(fake_proc: Path) -> None:
    add_proc(fake_proc, 2000, comm="worker", cmdline=("worker", "--secret"), start=70000, ppid=1010)
    add_proc(fake_proc, 2001, comm="worker", cmdline=("worker",), start=70001, ppid=1010)
    (fake_proc / "2000" / "cgroup").write_text(f"0::/system.slice/docker-{CID}.scope\n")
    fs, grouper, builder = setup(fake_proc)
    d = process_detail(fs, grouper, builder, 2000)
    assert d is not None
    assert (d["pid"], d["ppid"], d["name"], d["group"]) == (2000, 1010, "worker", "worker")
    assert d["cmdline"] == ["worker", "***"]  # the stream's redacted command line
    assert {"name": "Max open files", "soft": 20000, "hard": 20000, "unit": "files"} in d["limits"]
    assert d["cgroups"] == [f"/system.slice/docker-{CID}.scope"]
    assert d["container"]["runtime"] == "docker" and d["container"]["container_id"] == CID
    assert d["parent"] == {"pid": 1010, "name": "python3", "group": "python3"}
    assert d["children"] == [] and d["errors"] == []

    parent = process_detail(fs, grouper, builder, 1010)
    assert parent is not None
    assert [c["pid"] for c in parent["children"]] == [2000, 2001]
    assert parent["children_total"] == 2
    assert parent["parent"] == {"pid": 900, "name": None, "group": None}  # not in this tree
    # a v1 host's many hierarchies name few distinct paths; a session, no container
    assert parent["cgroups"] == ["/user.slice/user-0.slice/session-1.scope", "/", "/user.slice"]
    assert parent["container"]["systemd_unit"] == "session-1.scope"
    assert parent["container"]["container_id"] is None


def test_only_tracked_processes(fake_proc: Path) -> None:
    fs, grouper, builder = setup(fake_proc)
    assert process_detail(fs, grouper, builder, 14) is None  # a kernel thread: not tracked
    assert process_detail(fs, grouper, builder, 4242) is None
    d = process_detail(fs, grouper, builder, 1000)
    assert d is not None
    assert process_detail(fs, grouper, builder, 1000, d["start_time"]) is not None
    assert process_detail(fs, grouper, builder, 1000, d["start_time"] + 1) is None  # a reused pid


def test_unreadable_files_are_reported_not_raised(fake_proc: Path) -> None:
    deny(fake_proc / "1000" / "limits")
    deny(fake_proc / "1000" / "cgroup")

    def read() -> dict:
        fs, grouper, builder = setup(fake_proc)
        d = process_detail(fs, grouper, builder, 1000)
        assert d is not None
        return d

    d = unprivileged(read)
    assert d["limits"] == [] and d["cgroups"] == []
    assert d["errors"] == ["limits: PermissionError", "cgroup: PermissionError"]
    assert d["container"]["container_id"] is None
