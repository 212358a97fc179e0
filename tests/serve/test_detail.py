"""``GET /api/proc``: one tracked process in detail, from a real ``procstream serve``."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.support.processes import stop
from tests.support.served import Served, http_get
from tests.support.waiting import wait_for

PARENT = """
import subprocess, sys
child = subprocess.Popen(["sleep", "600"])
print(child.pid, flush=True)
sys.stdin.read()
child.kill()
child.wait()
"""


def get(srv: Served, query: str, **headers: str) -> tuple[int, dict]:
    status, body, hdrs = http_get(f"{srv.url}/api/proc?{query}", headers)
    return status, orjson.loads(body) if hdrs.get("Content-Type") == "application/json" else {}


def stat_field(pid: int, index: int) -> str:
    """Field ``index`` after the comm of /proc/PID/stat (0: state, 1: ppid)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[index]


def test_a_tracked_process_in_detail(tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    config = tmp_path / "config.yml"
    config.write_text(f"process_names:\n  - name: family\n    cmdline: ['pd-{tag}']\n")
    token = secrets.token_urlsafe(16)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, f"pd-{tag}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        with Served("--config", str(config), "--interval", "0.2", "--source", "poll",
                    env={"PROCSTREAM_TOKEN": token}, log=tmp_path / "log") as srv:
            auth = {"Authorization": f"Bearer {token}"}
            assert get(srv, f"pid={parent.pid}")[0] == 401  # behind the token like every route
            status, d = wait_for("the detail", lambda: (r := get(srv, f"pid={parent.pid}", **auth))[0] == 200 and r)
            assert (d["pid"], d["group"], d["name"]) == (parent.pid, "family", Path(sys.executable).name[:15])
            assert f"pd-{tag}" in d["cmdline"]
            assert d["children"] == [{"pid": child, "name": "sleep", "group": "family"}]
            assert d["parent"]["pid"] == int(stat_field(parent.pid, 1))  # pytest, untracked
            assert d["parent"]["group"] is None and d["parent"]["name"]
            files = next(lim for lim in d["limits"] if lim["name"] == "Max open files")
            assert files["soft"] == int(Path(f"/proc/{parent.pid}/limits").read_text().split("Max open files")[1].split()[0])
            ours = [line.split(":", 2)[2] for line in Path(f"/proc/{parent.pid}/cgroup").read_text().splitlines()]
            assert d["cgroups"] == list(dict.fromkeys(ours))
            assert set(d["container"]) >= {"runtime", "container_id", "pod_uid", "qos_class", "systemd_unit"}
            status, kid = get(srv, f"pid={child}&start_time={0}", **auth)
            assert status == 404  # the right pid, another start: not that process
            status, kid = get(srv, f"pid={child}", **auth)
            assert status == 200 and kid["parent"] == {"pid": parent.pid, "name": d["name"], "group": "family"}
            assert get(srv, f"pid={kid['pid']}&start_time={kid['start_time']}", **auth)[0] == 200
    finally:
        stop(parent)


@pytest.mark.parametrize("query", ["", "pid=", "pid=abc", "pid=0", "pid=99999999", "pid=1&pid=2",
                                   "pid=1&color=red", "pid=1&start_time=soon"])
def test_bad_queries(tmp_path: Path, query: str) -> None:
    with Served("--interval", "5", "--source", "poll", log=tmp_path / "log") as srv:
        status, body = get(srv, query)
        assert status == 400 and body["type"] == "error"


def test_an_unknown_process(tmp_path: Path) -> None:
    with Served("--interval", "5", "--source", "poll", log=tmp_path / "log") as srv:
        status, body = get(srv, "pid=4194304")
        assert status == 404 and body["error"] == "no such tracked process"
