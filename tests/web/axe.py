"""axe-core in a page, for the browser tests (not a test module).

axe-core comes inside the axe-playwright-python package (its ``axe.min.js``): nothing is
downloaded when the tests run. ``violations`` injects it into the page as it is and
reports what fails WCAG 2.1 level A and AA.
"""

from __future__ import annotations

from typing import Any

from axe_playwright_python.sync_playwright import Axe

__all__ = ["WCAG21_AA", "violations"]

#: axe's tags for the success criteria of WCAG 2.0 and 2.1, levels A and AA
WCAG21_AA = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa")

_OPTIONS = {
    "runOnly": {"type": "tag", "values": list(WCAG21_AA)},
    "resultTypes": ["violations"],
    # WCAG 2.5.3 (level A), which axe still files as experimental and leaves out unless
    # asked: a control's accessible name contains the text it shows.
    "rules": {"label-content-name-mismatch": {"enabled": True}},
}

_axe = Axe()


def violations(page: Any) -> list[str]:
    """Every violation on the page now, one line per rule and element, with axe's
    explanation (empty: none)."""
    result = _axe.run(page, options=_OPTIONS)
    found: list[str] = []
    for rule in result.response["violations"]:
        for node in rule["nodes"]:
            checks = node.get("any", []) + node.get("all", []) + node.get("none", [])
            why = "; ".join(c["message"] for c in checks if c.get("message"))
            found.append(f"{rule['id']} ({rule['impact']}) at {' '.join(map(str, node['target']))}: {why}")
    return found
