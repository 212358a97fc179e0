"""A page of the viewer in Chromium, for the browser tests (not a test module).

``Viewer`` opens the page in its own browser context and collects console errors,
uncaught exceptions and Content-Security-Policy violations; ``checked`` yields one and
fails the test if the page reported any of those.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["ARTIFACTS", "ROWS_JS", "TIMEOUT_MS", "Viewer", "checked"]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
TIMEOUT_MS = 15_000

# Rendered rows of a table (the viewer renders only the rows in view; the tests keep
# their tables short enough to be entirely in view).
ROWS_JS = """(table) => [...document.querySelectorAll(`#${table} tbody tr:not(.pad)`)].map(tr => ({
    cls: tr.className,
    cells: [...tr.cells].map(td => td.textContent),
    title: tr.cells[4] ? tr.cells[4].title : '',
}))"""


class Viewer:
    """A page in its own browser context, collecting console errors and uncaught
    exceptions; ``allow`` adds a pattern of console errors a test expects."""

    def __init__(self, browser: Any, color_scheme: str = "light") -> None:
        self.context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme=color_scheme)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.allowed: list[re.Pattern[str]] = []
        self.sockets: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        self.page.on("websocket", lambda ws: self.sockets.append(ws.url))
        # Count CSP violations from the start (an init script is not subject to the CSP).
        self.page.add_init_script(
            "window.__csp = []; document.addEventListener('securitypolicyviolation',"
            " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
        )

    def _console(self, msg: Any) -> None:
        if msg.type == "error":
            self.errors.append(msg.text)

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.wait_state("live")

    def wait_state(self, state: str, timeout: int = TIMEOUT_MS) -> None:
        self.page.wait_for_selector(f"#conn[data-state={state}]", timeout=timeout)

    def wait(self, js: str, arg: Any = None, timeout: int = TIMEOUT_MS) -> Any:
        """Wait (with a deadline) until ``js`` (a function of ``arg``) is truthy in the page."""
        return self.page.wait_for_function(js, arg=arg, timeout=timeout).json_value()

    def poll(self, what: str, fn: Any, timeout: float = TIMEOUT_MS / 1000) -> Any:
        """``wait_for`` that keeps Playwright's event dispatch going (route handlers run
        only while the test is inside a Playwright call; time.sleep would starve them)."""
        deadline = time.monotonic() + timeout
        while not (value := fn()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            self.page.wait_for_timeout(20)
        return value

    def rows(self, table: str) -> list[dict[str, Any]]:
        return self.page.evaluate(ROWS_JS, table)

    def names(self) -> list[str]:
        return [r["cells"][0] for r in self.rows("groups-table")]

    def wait_names(self, expected: list[str]) -> None:
        self.wait(
            "(names) => JSON.stringify([...document.querySelectorAll('#groups-table tbody tr:not(.pad) td.c-name')]"
            ".map(td => td.textContent)) === JSON.stringify(names)",
            expected,
        )

    def group_row(self, name: str) -> Any:
        return self.page.locator("#groups-table tbody tr:not(.pad)").filter(
            has=self.page.locator("td.c-name").get_by_text(name, exact=True)
        )

    def log_rows(self, pid: int) -> list[dict[str, Any]]:
        return [r for r in self.rows("log-table") if r["cells"][3] == str(pid)]

    def wait_log(self, pid: int, kind: str) -> dict[str, Any]:
        self.wait(
            "([pid, kind]) => [...document.querySelectorAll('#log-table tbody tr:not(.pad)')]"
            ".some(tr => tr.cells[3].textContent === String(pid) && tr.cells[1].textContent === kind)",
            [pid, kind],
        )
        return next(r for r in self.log_rows(pid) if r["cells"][1] == kind)

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name))

    def close(self) -> None:
        self.context.close()


def checked(browser: Any, color_scheme: str) -> Iterator[Viewer]:
    v = Viewer(browser, color_scheme)
    try:
        yield v
        assert v.unexpected_errors() == [], "console errors or uncaught exceptions in the page"
        assert v.page.evaluate("window.__csp") == [], "Content-Security-Policy violations"
    finally:
        v.close()
