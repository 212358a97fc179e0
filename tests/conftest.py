"""Fixtures shared by test modules.

``browser``: a headless Chromium driven by Playwright, for the viewer tests. It is
Debian's ``/usr/bin/chromium`` (never a downloaded browser). When it is missing the tests
that use it are skipped — unless ``PROCSTREAM_REQUIRE_BROWSER=1`` (CI), where a missing
browser is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

import pytest

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
