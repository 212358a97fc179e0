"""Fixtures shared by test modules.

``browser``: a headless Chromium driven by Playwright, for the viewer tests. It is
Debian's ``/usr/bin/chromium`` (never a downloaded browser). When it is missing the tests
that use it are skipped — unless ``PROCSTREAM_REQUIRE_BROWSER=1`` (CI), where a missing
browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from tests.support.fake_proc_tree import make_fake_proc

if TYPE_CHECKING:
    from playwright.sync_api import Browser

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "browser"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",  # we run as root (CI too), where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(why: str) -> NoReturn:
    if os.environ.get("PROCSTREAM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{why}, and PROCSTREAM_REQUIRE_BROWSER=1 requires it")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per test module (a launch costs about a second); tests open their
    own contexts in it, so nothing is shared between tests but the process."""
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no browser at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    pw = sync_playwright().start()
    try:
        try:
            instance = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        except Exception as exc:  # noqa: BLE001 - reported as the reason
            _unavailable(f"{CHROMIUM} did not start: {exc}")
        try:
            yield instance
        finally:
            instance.close()
    finally:
        pw.stop()


# A writable copy of tests/fixtures/proc, shared by every test that runs on a fake /proc.
@pytest.fixture
def fake_proc() -> Iterator[Path]:
    """A fresh copy of the fixture tree in a 0755 temporary directory, removed after."""
    # not tmp_path: pytest makes its base 0700, which uid 65534 can't traverse
    root = Path(tempfile.mkdtemp(prefix="procstream-procfs-"))
    try:
        root.chmod(0o755)
        yield make_fake_proc(root)
    finally:
        for dirpath, dirnames, _ in os.walk(root):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o755)  # undo chmod 000 for rmtree
        shutil.rmtree(root)
