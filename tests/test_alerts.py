"""packaging/alerts.yml: valid rules, their promtool unit tests pass, and every procstream
metric they use is one procstream serves.

Debian's ``promtool`` (apt package ``prometheus``) is installed by .ci/run; without it
this module fails, unless PROCSTREAM_SKIP_PROMTOOL=1 is set by hand.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from procstream.collect.oom import OomStats
from procstream.config import ExpectedGroup
from procstream.grouper import GroupCounts, GrouperUpdate
from procstream.lifecycle import GroupLife
from procstream.serve.metrics import MetricsCollector, make_registry, render
from procstream.tracker import ZERO_COUNTS
from tests.serve.test_metrics import Exposition

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "packaging" / "alerts.yml"
UNIT_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and os.environ.get("PROCSTREAM_SKIP_PROMTOOL") == "1",
    reason="promtool not installed (PROCSTREAM_SKIP_PROMTOOL=1)",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is not installed (apt-get install prometheus)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


@needs_promtool
def test_the_rules_are_valid() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 6 rules found" in r.stdout


@needs_promtool
def test_the_rules_unit_tests_pass() -> None:
    r = promtool("test", "rules", str(UNIT_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_a_unit_test() -> None:
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == alerts


def test_the_rules_use_metrics_procstream_serves() -> None:
    collector = MetricsCollector(
        lifecycle=lambda: {"g": GroupLife(1, {"ok": 1}, 0, False, False, ExpectedGroup("g", 1, 2))},
        oom_stats=OomStats(),
    )
    collector.on_poll(GrouperUpdate(time=1.0), {"g": GroupCounts(procs=1, counts=ZERO_COUNTS)}, 0.01)
    served = {name for name, _ in Exposition(render(make_registry(collector, process=False)).decode()).samples}
    used = set(re.findall(r"\b((?:procstream|namedprocess)_[a-z_]+)", RULES.read_text()))
    assert used and used <= served, used - served
