"""Same config, same processes: ``procstream once`` and the real process-exporter agree.

Debian's ``prometheus-process-exporter`` is installed by .ci/run; without it this module
fails (it is part of what we promise), unless PROCSTREAM_SKIP_PEER=1 is set by hand.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.support.network import free_port
from tests.support.processes import running, stop
from tests.support.waiting import wait_for

EXPORTER = shutil.which("prometheus-process-exporter")
if EXPORTER is None and os.environ.get("PROCSTREAM_SKIP_PEER") == "1":
    pytest.skip("prometheus-process-exporter not installed (PROCSTREAM_SKIP_PEER=1)", allow_module_level=True)

THREADS = """
import sys, threading
ev = threading.Event()
for _ in range(4):
    threading.Thread(target=ev.wait, daemon=True).start()
buf = bytearray(8 * 1024 * 1024)  # some resident memory of its own
print("ready", flush=True)
sys.stdin.read()
"""

CONFIG = """
process_names:
  - comm: [psagree_a]
  - name: "sleepers-{{.Comm}}"
    comm: [psagree_b]
  - name: "threads:{{.Matches.Tag}}"
    cmdline: ['psagree-(?P<Tag>marker)']
"""


def metric_values(text: str, family: str, extra: str = "") -> dict[str, float]:
    """groupname -> value for one family (optionally one extra label, e.g. memtype)."""
    out: dict[str, float] = {}
    pattern = re.compile(
        rf'^namedprocess_namegroup_{family}\{{groupname="([^"]*)"{re.escape(extra)}\}} (\S+)$', re.M
    )
    for name, value in pattern.findall(text):
        out[name] = float(value)
    return out


@pytest.fixture
def workload(tmp_path: Path) -> Iterator[None]:
    """3 processes named psagree_a, 2 named psagree_b, one python with 5 threads."""
    procs: list[subprocess.Popen] = []
    try:
        for name, count in (("psagree_a", 3), ("psagree_b", 2)):
            exe = tmp_path / name
            shutil.copy("/bin/sleep", exe)
            for _ in range(count):
                procs.append(subprocess.Popen([str(exe), "600"]))
        py = subprocess.Popen(
            [sys.executable, "-c", THREADS, "psagree-marker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        procs.append(py)
        assert py.stdout is not None and py.stdout.readline() == b"ready\n"
        yield
    finally:
        for p in procs:
            stop(p)


def test_group_names_procs_threads_and_memory_agree(tmp_path: Path, workload: None) -> None:
    assert EXPORTER is not None, "prometheus-process-exporter is not installed (apt install prometheus-process-exporter)"
    config = tmp_path / "config.yml"
    config.write_text(CONFIG)
    port = free_port()
    with running(
        EXPORTER,
        f"-config.path={config}",
        f"-web.listen-address=127.0.0.1:{port}",
        "-threads=false",
        "-gather-smaps=false",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ):

        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return r.read().decode()
            except OSError:
                return None

        theirs = wait_for("process-exporter to answer", scrape)
        ours = orjson.loads(
            subprocess.run(
                [sys.executable, "-m", "procstream", "once", "--config", str(config)],
                check=True,
                capture_output=True,
            ).stdout
        )["groups"]

    their_procs = metric_values(theirs, "num_procs")
    assert set(their_procs) == {"psagree_a", "sleepers-psagree_b", "threads:marker"}
    assert set(ours) == set(their_procs)
    for name, count in their_procs.items():
        assert ours[name]["procs"] == count, name
    their_threads = metric_values(theirs, "num_threads")
    for name, count in their_threads.items():
        assert ours[name]["threads"] == count, name
    assert ours["threads:marker"]["threads"] == 5
    their_rss = metric_values(theirs, "memory_bytes", ',memtype="resident"')
    for name, rss in their_rss.items():
        assert ours[name]["mem_resident"] == pytest.approx(rss, rel=0.05), name
    their_vsz = metric_values(theirs, "memory_bytes", ',memtype="virtual"')
    for name, vsz in their_vsz.items():
        assert ours[name]["mem_virtual"] == pytest.approx(vsz, rel=0.05), name
