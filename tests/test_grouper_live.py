"""Grouper over the real /proc: processes the test starts land in the right group, with
the right parent, and their CPU shows up in the group's counters."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from procstream.config import parse_config
from procstream.grouper import Grouper
from procstream.procfs import FS
from tests.support.processes import running
from tests.support.waiting import wait_for

BURN = """
import sys, time
print("ready", flush=True)
sys.stdin.readline()
end = time.process_time() + 0.4
while time.process_time() < end:
    pass
print("done", flush=True)
sys.stdin.readline()
"""


def test_parent_group_children_and_cpu(tmp_path: Path) -> None:
    parent_exe = tmp_path / "pslive_parent"
    shutil.copy("/bin/sh", parent_exe)
    config = parse_config(
        """
process_names:
  - comm: [pslive_parent]
  - name: "burner"
    cmdline: ['pslive-burn-marker']
"""
    )
    fs = FS("/proc")
    g = Grouper(config)
    g.update(fs.all_procs())  # baseline before anything starts
    script = "sleep 300 & sleep 300 & wait"
    with running(str(parent_exe), "-c", script, group=True) as parent, running(
        sys.executable, "-c", BURN, "pslive-burn-marker", stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as burner:
        assert burner.stdout is not None and burner.stdin is not None
        assert burner.stdout.readline() == b"ready\n"

        def two_children() -> bool:
            g.update(fs.all_procs())
            return g.groups().get("pslive_parent", None) is not None and g.groups()["pslive_parent"].procs == 3

        wait_for("the parent and its two sleeping children", two_children)
        members = [tp for tp in g.tracker.tracked.values() if tp.group == "pslive_parent"]
        by_pid = {tp.pid: tp for tp in members}
        assert parent.pid in by_pid
        children = [tp for tp in members if tp.pid != parent.pid]
        assert {tp.static.name for tp in children} == {"sleep"}
        assert {tp.static.parent_pid for tp in children} == {parent.pid}
        assert by_pid[parent.pid].static.cmdline == (str(parent_exe), "-c", script)

        before = g.groups()["burner"].counts.cpu
        burner.stdin.write(b"go\n")
        burner.stdin.flush()
        assert burner.stdout.readline() == b"done\n"
        g.update(fs.all_procs())
        after = g.groups()["burner"].counts.cpu
        assert after - before == pytest.approx(0.4, abs=0.1)
        assert g.groups()["burner"].procs == 1

    # both gone: the group keeps its totals, with no processes left
    def all_gone() -> bool:
        g.update(fs.all_procs())
        groups = g.groups()
        return groups["pslive_parent"].procs == 0 and groups["burner"].procs == 0

    wait_for("every process to be seen exiting", all_gone)
    assert g.groups()["burner"].counts.cpu >= after  # exits take nothing away


# Waits for a line, then becomes another Python program (same comm: only the stack tells)
# whose command line carries the marker; its own command line does not.
EXEC_LATER = """
import os, sys
sys.stdin.readline()
os.execv(sys.executable, [sys.executable, "-c", "import sys; sys.stdin.read()", "pslive-exec-" + sys.argv[1]])
"""


def test_a_process_first_seen_before_its_exec_is_grouped_by_what_it_execs() -> None:
    # What a poll sees between a fork and its exec: a process that is not yet the program
    # it will be. Ignored then, it must be judged again once it has exec'd.
    config = parse_config("process_names:\n  - name: late\n    cmdline: ['pslive-exec-m4rk']\n")
    fs = FS("/proc")
    g = Grouper(config)
    g.update(fs.all_procs())
    with running(sys.executable, "-c", EXEC_LATER, "m4rk", stdin=subprocess.PIPE) as child:
        assert child.stdin is not None
        g.update(fs.all_procs())
        pid_id = g.tracker.known(child.pid)
        assert pid_id is not None and g.tracker.is_ignored(pid_id)
        before = fs.proc(child.pid).exec_mark()
        assert before.stack != 0  # our own child: the kernel shows us its stack

        child.stdin.write(b"go\n")
        child.stdin.flush()
        after = wait_for(
            "the exec", lambda: (m := fs.proc(child.pid).exec_mark()).execed_since(before) and m
        )
        assert after.comm == before.comm  # python became python: the name cannot tell

        def grouped() -> bool:
            g.update(fs.all_procs())
            return "late" in g.groups() and g.groups()["late"].procs == 1

        wait_for("the exec'd process in its group", grouped)
        tp = g.tracker.tracked[pid_id]
        assert tp.static.cmdline[-1] == "pslive-exec-m4rk" and tp.group == "late"
