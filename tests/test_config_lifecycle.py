"""The config's own keys, ``expected_groups`` and ``lifecycle``: parsed strictly, and the
same file still loads in Debian's ``prometheus-process-exporter``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
import pytest

from procstream.config import ConfigError, ExpectedGroup, LifecycleConfig, MAX_CRASHLOOP_RESTARTS, parse_config
from tests.support.network import free_port
from tests.support.processes import running
from tests.support.waiting import wait_for

RULES = "process_names:\n  - comm: [a]\n"
FULL = f"""
process_names:
  - name: "lc-{os.getpid()}"
    cmdline: ['procstream-lifecycle-config-{os.getpid()}']
expected_groups:
  - {{group: postgres, min: 1}}
  - {{group: nginx, min: 2, max: 8}}
  - group: cron
lifecycle:
  restart_window_s: 2.5
  crashloop_restarts: 3
  crashloop_window_s: 60
  stable_after_s: 120
"""


def test_the_keys_as_documented() -> None:
    config = parse_config(FULL, "f.yml")
    assert config.expected == (
        ExpectedGroup("postgres", 1, None),
        ExpectedGroup("nginx", 2, 8),
        ExpectedGroup("cron", 1, None),
    )
    assert config.lifecycle == LifecycleConfig(2.5, 3, 60.0, 120.0)


def test_the_defaults() -> None:
    config = parse_config(RULES)
    assert config.expected == () and config.lifecycle == LifecycleConfig(10.0, 5, 300.0, 600.0)
    # present but empty is the same
    empty = parse_config(RULES + "expected_groups:\nlifecycle:\n")
    assert empty.expected == () and empty.lifecycle == LifecycleConfig()
    assert parse_config(RULES + "lifecycle: {stable_after_s: 5}").lifecycle == LifecycleConfig(stable_after_s=5.0)


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        ("expected_groups: {group: a}", "f.yml: expected_groups must be a list of {group: NAME, min: N}, got dict"),
        ("expected_groups: [a]", "f.yml: expected_groups[0]: must be a mapping like {group: NAME, min: 1}, got str 'a'"),
        ("expected_groups: [{min: 1}]", "f.yml: expected_groups[0]: no group: name it, e.g. {group: postgres, min: 1}"),
        ("expected_groups: [{group: ''}]", "f.yml: expected_groups[0]: group must be a group name, got str ''"),
        ("expected_groups: [{group: [x]}]", "f.yml: expected_groups[0]: group must be a group name, got list ['x']"),
        ("expected_groups: [{group: a, mn: 1}]", """f.yml: expected_groups[0] (group "a"): unknown key 'mn' (did you mean min?)"""),
        ("expected_groups: [{group: a, min: 0}]", """f.yml: expected_groups[0] (group "a"): min must be between 1 and 1000000, got 0"""),
        ("expected_groups: [{group: a, min: two}]", """f.yml: expected_groups[0] (group "a"): min must be a whole number, got str 'two'"""),
        ("expected_groups: [{group: a, min: 1.5}]", """f.yml: expected_groups[0] (group "a"): min must be a whole number, got str '1.5'"""),
        ("expected_groups: [{group: a, min: \u0663}]", """f.yml: expected_groups[0] (group "a"): min must be a whole number, got str '\u0663'"""),
        ("expected_groups: [{group: a, min: 3, max: 2}]", """f.yml: expected_groups[0] (group "a"): max (2) is below min (3)"""),
        ("expected_groups: [{group: a}, {group: b}, {group: a}]", """f.yml: expected_groups[2] (group "a"): the group is listed twice"""),
        ("lifecycle: 5", "f.yml: lifecycle must be a mapping of settings, got str '5'"),
        ("lifecycle: {restart_window: 3}", "f.yml: lifecycle: unknown key 'restart_window' (did you mean restart_window_s?)"),
        ("lifecycle: {restart_window_s: -1}", "f.yml: lifecycle: restart_window_s must be a number of seconds, got str '-1'"),
        ("lifecycle: {stable_after_s: 0}", "f.yml: lifecycle: stable_after_s must be more than 0 seconds"),
        ("lifecycle: {crashloop_window_s: 1e3}", "f.yml: lifecycle: crashloop_window_s must be a number of seconds, got str '1e3'"),
        ("lifecycle: {crashloop_restarts: 2.5}", "f.yml: lifecycle: crashloop_restarts must be a whole number, got str '2.5'"),
        ("lifecycle: {crashloop_restarts: 0}", f"f.yml: lifecycle: crashloop_restarts must be between 1 and {MAX_CRASHLOOP_RESTARTS}, got 0"),
        ("lifecycle: {crashloop_restarts: 5000}", f"f.yml: lifecycle: crashloop_restarts must be between 1 and {MAX_CRASHLOOP_RESTARTS}, got 5000"),
    ],
)  # fmt: skip
def test_mistakes_name_the_file_and_the_entry(tail: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(RULES + tail + "\n", "f.yml")
    assert str(info.value).startswith(message), str(info.value)


def test_a_bad_key_stops_serve_with_exit_2_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.yml"
    config.write_text(RULES + "expected_groups: [{group: a, min: 0}]\n")
    r = subprocess.run(
        [sys.executable, "-m", "procstream", "serve", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert f'{config}: expected_groups[0] (group "a"): min must be between 1' in r.stderr


EXPORTER = shutil.which("prometheus-process-exporter")


@pytest.mark.skipif(
    EXPORTER is None and os.environ.get("PROCSTREAM_SKIP_PEER") == "1",
    reason="prometheus-process-exporter not installed (PROCSTREAM_SKIP_PEER=1)",
)
def test_process_exporter_loads_the_same_file(tmp_path: Path) -> None:
    assert EXPORTER is not None, "prometheus-process-exporter is not installed (apt install prometheus-process-exporter)"
    config = tmp_path / "config.yml"
    config.write_text(FULL)
    port = free_port()
    marker = f"procstream-lifecycle-config-{os.getpid()}"
    with (
        running(sys.executable, "-c", "import time; time.sleep(60)", marker),
        running(
            EXPORTER, f"-config.path={config}", f"-web.listen-address=127.0.0.1:{port}", "-threads=false",
            "-gather-smaps=false", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        ) as exporter,
    ):  # fmt: skip

        def scrape() -> str | None:
            if exporter.poll() is not None:
                raise AssertionError(f"process-exporter refused the file: {exporter.stderr.read().decode()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
            except OSError:
                return None
            return body if f'namedprocess_namegroup_num_procs{{groupname="lc-{os.getpid()}"}} 1' in body else None

        wait_for("process-exporter to report the config's group", scrape, timeout=20)


def test_once_lists_expected_groups_with_their_expectation(fake_proc: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(RULES + "expected_groups: [{group: never, min: 2, max: 3}, {group: a, min: 1}]\n")
    r = subprocess.run(
        [sys.executable, "-m", "procstream", "once", "--procfs", str(fake_proc), "--config", str(config)],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    groups = orjson.loads(r.stdout)["groups"]
    assert {name: (g["procs"], g["expected_min"], g["expected_max"]) for name, g in groups.items()} == {
        "never": (0, 2, 3),
        "a": (0, 1, None),
    }
