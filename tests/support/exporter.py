"""Debian's prometheus-process-exporter, started for a test (not a test module)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.network import free_port
from tests.support.processes import running
from tests.support.waiting import wait_for

__all__ = ["EXPORTER", "running_exporter"]

EXPORTER = shutil.which("prometheus-process-exporter")


@contextmanager
def running_exporter(config: Path, *options: str) -> Iterator[str]:
    """process-exporter with ``config`` and ``options`` on a free loopback port; yields its
    /metrics URL once it answers, and stops it when the block ends."""
    assert EXPORTER is not None, "prometheus-process-exporter is not installed (apt install prometheus-process-exporter)"
    port = free_port()
    with running(
        EXPORTER,
        f"-config.path={config}",
        f"-web.listen-address=127.0.0.1:{port}",
        *options,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ):
        url = f"http://127.0.0.1:{port}/metrics"

        def answers() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return True
            except OSError:
                return False

        wait_for("process-exporter to answer", answers, timeout=15)
        yield url
