"""``procstream once`` end to end: a fake /proc tree and the real one, good and bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson

from procstream.schema import GROUP_FIELDS, LIVE_FIELDS, PROC_FIELDS
from tests.support.processes import running
from tests.support.waiting import wait_for



def once(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "procstream", "once", *args], capture_output=True, timeout=60)


def test_snapshot_of_a_fake_proc_tree(fake_proc: Path) -> None:
    r = once("--procfs", str(fake_proc))
    assert r.returncode == 0, r.stderr
    doc = orjson.loads(r.stdout)
    assert set(doc) == {"host", "ts", "groups", "procs"}
    # default config: every process with a cmdline, by comm; kernel thread and zombie out
    assert set(doc["groups"]) == {"sleep", "a) (b c)", "python3"}
    for fields in doc["groups"].values():
        assert list(fields) == list(GROUP_FIELDS)
    # identity, then the process's numbers, as in serve's snapshots
    assert all(list(p) == list(PROC_FIELDS) + list(LIVE_FIELDS) for p in doc["procs"])
    pids = {p["pid"]: p for p in doc["procs"]}
    assert {14, 1002, 1003, 1004}.isdisjoint(pids)
    assert pids[1001]["name"] == "a) (b c)"
    assert doc["groups"]["python3"]["threads"] == 3
    assert doc["groups"]["python3"]["states"] == {"running": 1, "sleeping": 1, "waiting": 1, "zombie": 0, "other": 0}
    py = pids[1010]  # one process's own numbers (no --delay: no rates)
    assert (py["state"], py["threads"], py["open_fds"], py["cpu_pct"]) == ("S", 3, 6, 0.0)
    assert py["mem_resident"] == 3363 * os.sysconf("SC_PAGE_SIZE") and py["fd_ratio"] > 0


def test_command_lines_are_redacted_by_default_and_can_be_dropped(tmp_path: Path) -> None:
    marker = "psonce-redact-marker"
    with running("sh", "-c", f"sleep 60; echo {marker} --password=hunter2"):
        doc = orjson.loads(once().stdout)
        mine = [p for p in doc["procs"] if any(marker in a for a in p["cmdline"])]
        assert mine, "the test's own process was not found"
        assert all("hunter2" not in a for p in mine for a in p["cmdline"])
        assert any("--password=***" in a for p in mine for a in p["cmdline"])
        extra = orjson.loads(once("--redact", "redact-(marker)").stdout)
        mine = [p for p in extra["procs"] if any("psonce-redact-" in a for a in p["cmdline"])]
        assert mine and all(marker not in a for p in mine for a in p["cmdline"])
        dropped = orjson.loads(once("--no-cmdline").stdout)
        assert all(p["cmdline"] == [] for p in dropped["procs"])


def test_counters_are_totals_since_each_process_started(fake_proc: Path) -> None:
    doc = orjson.loads(once("--procfs", str(fake_proc)).stdout)
    py = doc["groups"]["python3"]  # pid 1010 in tests/fixtures/proc: its stat's utime and minflt
    assert py["cpu_user_s"] == 2 / os.sysconf("SC_CLK_TCK") and py["cpu_system_s"] == 0.0
    assert py["minor_faults"] == 1938 and py["cpu_pct"] == 0.0


BURN = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"
BURNER_CONFIG = b"process_names:\n  - name: burner\n    cmdline: ['psonce-burner']\n"


def cpu_and_faults(pid: int) -> tuple[float, int]:
    """A process's CPU seconds and minor faults so far, from its own /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])


def burner_group(*args: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "procstream", "once", "--config", "/dev/stdin", *args],
        input=BURNER_CONFIG, capture_output=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return orjson.loads(r.stdout)["groups"]["burner"]


def test_a_busy_process_shows_the_cpu_it_used_before_once_ran() -> None:
    with running(sys.executable, "-c", BURN, "psonce-burner") as burner:
        wait_for("the burner to use 0.5 s of CPU", lambda: cpu_and_faults(burner.pid)[0] >= 0.5, timeout=30)
        cpu_before, faults_before = cpu_and_faults(burner.pid)
        group = burner_group()
        cpu_after, faults_after = cpu_and_faults(burner.pid)
    # what the kernel counted for it up to the moment once looked, not 0
    assert cpu_before <= group["cpu_s"] <= cpu_after
    assert group["cpu_s"] == round(group["cpu_user_s"] + group["cpu_system_s"], 6)
    assert faults_before <= group["minor_faults"] <= faults_after
    assert group["cpu_pct"] == 0.0  # a rate needs two polls


def test_delay_fills_in_rates_and_keeps_totals() -> None:
    with running(sys.executable, "-c", BURN, "psonce-burner") as burner:
        # more than the delay can account for: the totals must include the time before
        wait_for("the burner to use 1 s of CPU", lambda: cpu_and_faults(burner.pid)[0] >= 1.0, timeout=30)
        cpu_before, _ = cpu_and_faults(burner.pid)
        group = burner_group("--delay", "0.5")
        cpu_after, _ = cpu_and_faults(burner.pid)
    # the rate is the two polls' difference over their interval (at least the 0.5 s
    # delay), not the process's lifetime over 0.5 s: at most what the burner used while
    # `once` ran (plus a tick for each end), and something (it burns all along)
    used = cpu_after - cpu_before
    assert 0.0 < group["cpu_pct"] <= (used + 0.02) / 0.5 * 100.0
    assert group["cpu_pct"] <= 100.0 * 1.2
    assert cpu_before <= group["cpu_s"] <= cpu_after


def test_bad_config_exits_2_naming_file_and_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("process_names:\n  - comm: [a]\n  - name: '{{.Nope}}'\n    comm: [b]\n")
    r = once("--config", str(bad))
    assert r.returncode == 2
    err = r.stderr.decode()
    assert str(bad) in err and "process_names[1]" in err and ".Nope" in err
    assert r.stdout == b""


def test_unreadable_procfs_exits_2(tmp_path: Path) -> None:
    r = once("--procfs", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert str(tmp_path / "missing") in r.stderr.decode()


def test_bad_redact_pattern_exits_2() -> None:
    r = once("--redact", "(")
    assert r.returncode == 2 and "--redact" in r.stderr.decode()


def test_python_dash_m_and_console_script_are_the_same_program() -> None:
    script = shutil.which("procstream")
    assert script is not None, "the procstream console script is not installed (pip install -e .)"
    via_m = subprocess.run([sys.executable, "-m", "procstream", "--version"], capture_output=True)
    via_script = subprocess.run([script, "--version"], capture_output=True)
    assert via_m.returncode == via_script.returncode == 0
    assert via_m.stdout == via_script.stdout and via_m.stdout.startswith(b"procstream ")
