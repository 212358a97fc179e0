"""``procstream once`` end to end: a fake /proc tree and the real one, good and bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import orjson

from procstream.schema import GROUP_FIELDS, PROC_FIELDS
from tests.support.processes import running



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
    assert all(list(p) == list(PROC_FIELDS) for p in doc["procs"])
    pids = {p["pid"]: p for p in doc["procs"]}
    assert {14, 1002, 1003, 1004}.isdisjoint(pids)
    assert pids[1001]["name"] == "a) (b c)"
    assert doc["groups"]["python3"]["threads"] == 3
    assert doc["groups"]["python3"]["states"] == {"running": 1, "sleeping": 1, "waiting": 1, "zombie": 0, "other": 0}


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


def test_delay_fills_in_rates() -> None:
    burn = "import time\nend = time.time() + 30\nwhile time.time() < end: pass\n"
    with running(sys.executable, "-c", burn, "psonce-burner"):
        config_text = "process_names:\n  - name: burner\n    cmdline: ['psonce-burner']\n"
        r = subprocess.run(
            [sys.executable, "-m", "procstream", "once", "--config", "/dev/stdin", "--delay", "0.5"],
            input=config_text.encode(),
            capture_output=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        burner = orjson.loads(r.stdout)["groups"]["burner"]
        assert burner["cpu_pct"] > 30.0


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
