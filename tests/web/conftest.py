"""Fixtures of the browser tests: a viewer page in light or dark mode."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.web.page import Viewer, checked


@pytest.fixture
def viewer(browser: Any) -> Iterator[Viewer]:
    """A page in light mode; fails the test on console errors or CSP violations."""
    yield from checked(browser, "light")


@pytest.fixture
def dark_viewer(browser: Any) -> Iterator[Viewer]:
    """The same in dark mode (prefers-color-scheme: dark)."""
    yield from checked(browser, "dark")
