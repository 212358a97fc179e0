"""The viewer for everyone: WCAG 2.1 AA by axe-core in every state of the page, in both
colour schemes, and everything done with the keyboard alone.

The page runs against a real ``procstream serve`` over a fake /proc (tests/support), with
a config that expects a group nobody runs at first. Its WebSocket passes through a proxy
in the test (Playwright's route) that gives a few exits a status, which polling /proc
can't know, so rows of failed and OOM-killed processes are on the page too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_proc_tree import LIFECYCLE_CONFIG, add_proc, remove_proc
from tests.support.served import Served
from tests.web import axe
from tests.web.page import Viewer, checked

# pid -> (exit_code, signal, exit_class) the proxy writes into that process's proc.exit
EXIT_STATUS = {2401: (3, None, "error"), 2402: (None, 15, "signal"), 2406: (None, 9, "oom_kill")}
REFUSED = r"^WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws\?.*' failed"


def _with_exit_status(message: str | bytes) -> str | bytes:
    if not isinstance(message, str) or '"proc.exit"' not in message:
        return message
    objs = json.loads(message)
    for o in objs:
        if o.get("type") == "proc.exit" and o.get("pid") in EXIT_STATUS:
            o["exit_code"], o["signal"], o["exit_class"] = EXIT_STATUS[o["pid"]]
            o["oom_killed"] = o["exit_class"] == "oom_kill"
    return json.dumps(objs)


class Tour:
    """One viewer page over a fake /proc, led from state to state; each step leaves the
    page in the state it is named after."""

    def __init__(self, viewer: Viewer, fake_proc: Path, tmp_path: Path) -> None:
        self.viewer = viewer
        self.page = viewer.page
        self.fake_proc = fake_proc
        self.tmp_path = tmp_path
        config = tmp_path / "config.yml"
        config.write_text(LIFECYCLE_CONFIG)
        self.args = ("--procfs", str(fake_proc), "--interval", "0.2", "--config", str(config))
        self.server: Served | None = None
        self.runs = 0

    def serve(self, port: int | None = None) -> Served:
        self.runs += 1
        self.server = Served(*self.args, log=self.tmp_path / f"log{self.runs}", port=port).start()
        return self.server

    def __enter__(self) -> Tour:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.__exit__()

    # -- the states ------------------------------------------------------------------------

    def load(self) -> None:
        def route(ws: Any) -> None:
            server = ws.connect_to_server()
            server.on_message(lambda m: ws.send(_with_exit_status(m)))

        self.page.route_web_socket(re.compile(r"/ws(\?|$)"), route)
        self.viewer.open(self.serve().url + "/")
        self.viewer.wait("() => document.getElementById('n-groups').textContent === '4'")
        self.viewer.wait("() => document.querySelector('#groups-table tbody tr.missing td.c-status').textContent === 'missing'")

    def select_group(self) -> None:
        self.viewer.group_row("sleep").click()
        self.viewer.wait("() => document.querySelector('#groups-table tr.selected') !== null")
        self.viewer.wait("() => document.querySelectorAll('#procs-table tbody tr:not(.pad)').length === 2")
        self.viewer.group_row("python3").hover()  # a row under the pointer

    def open_detail(self) -> None:
        self.page.locator("#procs-table tbody tr:not(.pad)").first.click()
        self.viewer.wait("() => document.getElementById('detail').open")
        self.viewer.wait("() => document.querySelector('#detail-limits tbody tr') !== null")
        self.viewer.wait("() => /over [2-9]\\d* polls/.test(document.getElementById('detail-cpu-text').textContent)")

    def run_processes(self) -> None:
        self.page.keyboard.press("Escape")  # the detail closes
        self.viewer.wait("() => !document.getElementById('detail').open")
        for pid in (2401, 2402, 2403):
            add_proc(self.fake_proc, pid, comm="sleep", cmdline=("sleep", str(pid)), start=90_000 + pid)
        self.viewer.wait_log(2403, "start")
        for pid in (2401, 2402, 2403):
            remove_proc(self.fake_proc, pid)
        assert self.viewer.wait_log(2401, "exit")["cells"][6] == "exit 3"
        assert self.viewer.wait_log(2402, "exit")["cells"][6] == "SIGTERM"
        self.viewer.wait_log(2403, "exit")
        self.page.locator("#log-table tbody tr.bad").first.hover()

    def restarts_crash_loop_and_oom_kill(self) -> None:
        def start(pid: int, comm: str) -> None:
            add_proc(self.fake_proc, pid, comm=comm, cmdline=(comm,))

        start(2601, "svc")
        start(2611, "svc")  # the group never goes below its minimum while 2601 is replaced
        self.viewer.wait_log(2611, "start")
        for old, new in ((2601, 2602), (2602, 2603), (2603, 2604)):
            remove_proc(self.fake_proc, old)
            start(new, "svc")
            self.viewer.wait_log(new, "restart")
        self.viewer.wait("() => document.querySelector('#groups-table tbody tr.crashloop td.c-status')"
                         "?.textContent === 'crash loop'")
        start(2406, "hog")
        self.viewer.wait_log(2406, "start")
        remove_proc(self.fake_proc, 2406)
        assert self.viewer.wait_log(2406, "exit")["cells"][6] == "OOM kill"
        self.viewer.wait("() => [...document.querySelectorAll('#groups-table td.c-exit')].some(td => td.textContent === 'OOM kill')")
        self.page.locator("#log-table tbody tr.life").first.hover()

    def open_help(self) -> None:
        self.page.click("#help-open")
        self.viewer.wait("() => document.getElementById('help').open")

    def filter_log(self) -> None:
        self.page.click("#help-close")
        self.page.select_option("#log-type", "problem")
        self.page.fill("#log-group", "sle")
        self.page.click("#log-pause")
        add_proc(self.fake_proc, 2404, comm="sleep", cmdline=("sleep", "2404"), start=99_000)
        self.viewer.wait("() => document.getElementById('log-new').textContent === '1 new'")
        # 6 entries of sleep processes, 12 of the lifecycle step (a recovery, 2 starts, 3
        # restarts and the exits they replace, a crash loop, hog's start and its OOM kill)
        assert self.page.text_content("#log-count") == "2 of 18"

    def stop_server(self) -> None:
        self.page.click("#log-pause")
        self.page.select_option("#log-type", "all")
        self.page.fill("#log-group", "")
        assert self.server is not None and self.server.stop() == 0
        self.viewer.allow(REFUSED)
        self.viewer.wait_state("reconnecting")
        self.viewer.wait("() => [...document.querySelectorAll('#log-table tr.note')]"
                         ".some(tr => tr.textContent.includes('Connection lost'))")

    def restart_server(self) -> None:
        assert self.server is not None
        add_proc(self.fake_proc, 2405, comm="newcomer", cmdline=("newcomer",), start=99_500)
        remove_proc(self.fake_proc, 1001)  # the only process of "a) (b c)": the new run never sees it
        self.serve(port=self.server.port)
        self.page.evaluate("document.getElementById('retry').click()")  # skip the backoff wait
        self.viewer.wait_state("live", timeout=20_000)
        self.viewer.wait_log(2405, "found")
        self.viewer.wait_log(1001, "gone")

    def hide_empty(self) -> None:
        groups = int(self.page.text_content("#n-groups") or "0")
        add_proc(self.fake_proc, 2407, comm="brief", cmdline=("brief",))
        self.viewer.wait("(n) => document.getElementById('n-groups').textContent === String(n)", groups + 1)
        remove_proc(self.fake_proc, 2407)
        self.viewer.wait("() => [...document.querySelectorAll('#groups-table tbody tr.empty td.c-name')]"
                         ".some(td => td.textContent === 'brief')")
        self.page.check("#hide-empty")
        self.viewer.wait("() => document.querySelector('#groups-table tbody tr.empty') === null")


# Each state the page is checked in, in the order a tour reaches them: a step builds on
# the ones before it. A new state of the page is one more line here.
STATES: list[tuple[str, Callable[[Tour], None]]] = [
    ("initial load", Tour.load),
    ("a group selected, the pointer on another", Tour.select_group),
    ("a process in detail", Tour.open_detail),
    ("starts, exits and failures in the log", Tour.run_processes),
    ("restarts, a crash loop and an OOM kill", Tour.restarts_crash_loop_and_oom_kill),
    ("help open", Tour.open_help),
    ("the log filtered and paused", Tour.filter_log),
    ("server down: reconnecting", Tour.stop_server),
    ("server restarted: resynchronised", Tour.restart_server),
    ("empty groups hidden", Tour.hide_empty),
]


@pytest.fixture(params=["light", "dark"])
def any_viewer(request: Any, browser: Any) -> Iterator[Viewer]:
    """A page in light, then in dark mode."""
    yield from checked(browser, request.param)


def test_every_state_passes_axe_at_wcag_2_1_aa(any_viewer: Viewer, fake_proc: Path, tmp_path: Path) -> None:
    found: dict[str, list[str]] = {}
    with Tour(any_viewer, fake_proc, tmp_path) as tour:
        for name, step in STATES:
            step(tour)
            found[name] = axe.violations(tour.page)
    assert found == {name: [] for name, _ in STATES}


def test_axe_finds_what_it_is_here_to_find(viewer: Viewer, fake_proc: Path) -> None:
    """The check above can fail: the page with its greys as they were, and the help
    button named for something it doesn't show, has violations."""
    with Served("--procfs", str(fake_proc), "--interval", "0.2") as srv:
        viewer.open(srv.url + "/")
        viewer.wait("() => document.querySelectorAll('#groups-table td.zero').length > 0")
        fetched: list[str] = []
        viewer.page.on("request", lambda r: fetched.append(r.url))
        assert axe.violations(viewer.page) == []
        assert fetched == []  # axe-core came with the package, not from the network
        viewer.page.evaluate(
            """() => {
            const sheet = [...document.styleSheets].find((s) => s.href && s.href.endsWith('/style.css'));
            sheet.insertRule(':root { --faint: #9aa4b1 !important; }', sheet.cssRules.length);
            document.getElementById('help-open').setAttribute('aria-label', 'Shortcuts');
        }"""
        )
        found = axe.violations(viewer.page)
    assert any(v.startswith("color-contrast (serious) at ") and ".zero" in v for v in found), found
    assert any(v.startswith("label-content-name-mismatch ") for v in found), found


# Records what a screen reader would be told: each change to the live region's text,
# and (for comparison) each text the countdown beside it showed.
RECORD_JS = """() => {
    const state = document.getElementById('conn-state');
    const wait = document.getElementById('conn-wait');
    window.__said = [];
    window.__countdown = [];
    new MutationObserver((records) => {
        for (const r of records) window.__said.push(state.textContent);
    }).observe(state, { subtree: true, childList: true, characterData: true });
    new MutationObserver(() => window.__countdown.push(wait.textContent))
        .observe(wait, { subtree: true, childList: true, characterData: true });
}"""


def test_the_connection_state_is_announced_when_it_changes_not_its_countdown(
    viewer: Viewer, fake_proc: Path, tmp_path: Path
) -> None:
    page = viewer.page
    args = ("--procfs", str(fake_proc), "--interval", "0.2")
    first = Served(*args, log=tmp_path / "log1").start()
    try:
        viewer.open(first.url + "/")
        assert page.get_attribute("#conn-state", "role") == "status"
        # Nothing else on the page talks by itself, and the countdown is outside the region.
        assert page.evaluate("document.querySelectorAll('[role=status], [role=log], [role=alert], [aria-live]').length") == 1
        assert page.evaluate("document.getElementById('conn-wait').closest('[role=status]')") is None
        page.evaluate(RECORD_JS)
        assert first.stop() == 0
    finally:
        first.stop()
    viewer.allow(REFUSED)
    viewer.wait_state("reconnecting")
    # The backoff grows: wait until the countdown has counted down a few seconds.
    viewer.wait("() => new Set(window.__countdown.filter((t) => /\\d/.test(t))).size >= 3", timeout=30_000)
    with Served(*args, log=tmp_path / "log2", port=first.port):
        page.evaluate("document.getElementById('retry').click()")
        viewer.wait_state("live", timeout=20_000)
        said = page.evaluate("window.__said")
    assert said[0] == "Connection: Reconnecting" and said[-1] == "Connection: Live", said
    assert set(said) <= {"Connection: Reconnecting", "Connection: Resyncing", "Connection: Live"}, said
    assert all(a != b for a, b in zip(said, said[1:])), said  # each one a change
    assert len(said) <= 3, said


def focused(page: Any) -> str:
    """The id of the element with the keyboard focus ('' for none, i.e. the body)."""
    return page.evaluate("document.activeElement ? document.activeElement.id : ''")


def tab_to(page: Any, element_id: str, most: int = 5) -> None:
    """Press Tab until ``element_id`` has the focus (at most ``most`` times)."""
    for _ in range(most):
        if focused(page) == element_id:
            return
        page.keyboard.press("Tab")
    assert focused(page) == element_id


# What a stray key could change: focus, what the text fields hold, where tables are scrolled.
STATE_JS = """() => ({
    focus: document.activeElement.id,
    values: [...document.querySelectorAll('input, select')].map((e) => e.type === 'checkbox' ? e.checked : e.value),
    scroll: [...document.querySelectorAll('.scroll')].map((e) => e.scrollTop),
    paused: document.getElementById('log-pause').getAttribute('aria-pressed'),
    help: document.getElementById('help').open,
})"""


def test_everything_by_keyboard_alone(viewer: Viewer, fake_proc: Path, tmp_path: Path) -> None:
    page = viewer.page
    keys = page.keyboard
    with Served("--procfs", str(fake_proc), "--interval", "0.2", log=tmp_path / "log") as srv:
        viewer.open(srv.url + "/")
        viewer.wait("() => document.getElementById('n-groups').textContent === '3'")
        # Buttons are named for what they show (WCAG 2.5.3); Pause keeps its name, its
        # state is aria-pressed.
        help_open = page.locator("#help-open")
        assert page.get_by_role("button", name=help_open.inner_text(), exact=True).get_attribute("id") == "help-open"
        assert page.get_by_role("button", name="Pause", exact=True).get_attribute("aria-pressed") == "false"

        # Filter the groups: "/" goes to the filter; Escape empties it and leaves it, for
        # the table it filters.
        keys.press("/")
        assert focused(page) == "group-filter"
        keys.type("pyth")
        viewer.wait_names(["python3"])
        keys.press("Escape")
        viewer.wait_names(["a) (b c)", "python3", "sleep"])  # by CPU (all 0), then by name
        assert focused(page) == "groups-scroll"
        assert page.input_value("#group-filter") == ""

        # Pick a group: "g" into the table, arrows, Enter. The focus is visible.
        keys.press("g")
        assert focused(page) == "groups-scroll"
        keys.press("Home")
        keys.press("ArrowDown")
        keys.press("Enter")
        viewer.wait("() => document.getElementById('procs-group').textContent === 'python3'")
        assert page.evaluate(
            "getComputedStyle(document.querySelector('#groups-table tr.active')).outlineStyle") == "solid"

        # Open a log row's group: a process starts in "sleep"; "l" into the log, Home on
        # the newest entry, Enter shows its group. The keyboard stays in the log.
        add_proc(fake_proc, 2501, comm="sleep", cmdline=("sleep", "2501"), start=90_000)
        viewer.wait_log(2501, "start")
        keys.press("l")
        assert focused(page) == "log-scroll"
        keys.press("Home")
        viewer.wait("() => document.querySelector('#log-table tr.active') !== null")
        assert page.get_attribute("#log-scroll", "aria-activedescendant") == page.get_attribute(
            "#log-table tr.active", "id")
        assert page.evaluate("document.querySelector('#log-table tr.active').cells[3].textContent") == "2501"
        assert page.evaluate(
            "getComputedStyle(document.querySelector('#log-table tr.active')).outlineStyle") == "solid"
        keys.press("Enter")
        viewer.wait("() => document.getElementById('procs-group').textContent === 'sleep'")
        viewer.wait("() => [...document.querySelectorAll('#groups-table tr.selected td.c-name')]"
                    ".map((td) => td.textContent).join() === 'sleep'")
        assert focused(page) == "log-scroll"

        # Pause: "p"; the button's name stays "Pause", its state says it is on, and the
        # count of what it holds back is beside it (and describes it).
        keys.press("p")
        assert page.get_by_role("button", name="Pause", exact=True).get_attribute("aria-pressed") == "true"
        add_proc(fake_proc, 2502, comm="sleep", cmdline=("sleep", "2502"), start=91_000)
        viewer.wait("() => document.getElementById('log-new').textContent === '1 new'")
        assert viewer.log_rows(2502) == []
        keys.press("p")
        viewer.wait_log(2502, "start")
        assert page.get_attribute("#log-pause", "aria-pressed") == "false"

        # Help: "?" opens it with the focus inside; Escape closes it and the focus is back.
        keys.press("?")
        viewer.wait("() => document.getElementById('help').open")
        assert page.evaluate("document.getElementById('help').contains(document.activeElement)")
        keys.press("Escape")
        viewer.wait("() => !document.getElementById('help').open")
        assert focused(page) == "log-scroll"

        # Escape on the event-type <select> keeps its choice, and the log agrees with it.
        keys.press("Shift+Tab")  # the Pause button
        keys.press("Shift+Tab")  # the group filter of the log
        keys.press("Shift+Tab")
        assert focused(page) == "log-type"
        keys.press("ArrowDown")  # All events -> Starts
        keys.press("ArrowDown")  # -> Exits
        viewer.wait("() => document.getElementById('log-type').value === 'exit'")
        keys.press("Escape")
        assert page.input_value("#log-type") == "exit"
        assert focused(page) == "log-type"
        viewer.wait("() => document.getElementById('log-count').textContent.endsWith(' of 2')")
        assert viewer.rows("log-table") == []  # two starts, no exit yet
        remove_proc(fake_proc, 2501)
        viewer.wait_log(2501, "exit")
        assert [r["cells"][1] for r in viewer.rows("log-table")] == ["exit"]

        # Shortcuts never fire from a form control: on the select, or on the Pause
        # button, "g" and "p" move nothing and pause nothing.
        for control in ("log-type", "log-pause"):
            tab_to(page, control)
            before = page.evaluate(STATE_JS)
            keys.press("g")
            keys.press("p")
            assert page.evaluate(STATE_JS) == before, control

        # Turn the shortcuts off in the help dialog (Tab to the setting, Space).
        keys.press("Tab")  # the log
        assert focused(page) == "log-scroll"
        keys.press("?")
        viewer.wait("() => document.getElementById('help').open")
        assert focused(page) == "shortcuts"  # the dialog's first control
        keys.press("Space")
        assert not page.is_checked("#shortcuts")
        keys.press("Escape")
        assert page.get_attribute("#log-scroll", "aria-keyshortcuts") is None

        # Off: "g" (and "/", "l", "p", "?") types nothing and moves nothing.
        before = page.evaluate(STATE_JS)
        assert before["focus"] == "log-scroll"
        for key in ("g", "/", "l", "p", "?"):
            keys.press(key)
        assert page.evaluate(STATE_JS) == before
        # ... and it is remembered.
        page.reload()
        viewer.wait_state("live")
        page.focus("#log-scroll")
        before = page.evaluate(STATE_JS)
        keys.press("g")
        assert page.evaluate(STATE_JS) == before
        assert not page.is_checked("#shortcuts")


def test_the_token_page_looks_like_the_viewer_under_a_strict_csp(any_viewer: Viewer, fake_proc: Path, tmp_path: Path) -> None:
    """A browser without the token gets a form styled like the viewer, whose only
    exception to ``default-src 'none'`` is its own inline style, allowed by its hash."""
    token = "t0ken-for-the-form"
    page = any_viewer.page
    # the browser reports the page's own 401 (and its favicon's) as console errors
    any_viewer.allow(r"the server responded with a status of 401")
    with Served("--procfs", str(fake_proc), "--interval", "0.2", env={"PROCSTREAM_TOKEN": token},
                log=tmp_path / "log") as srv:
        response = page.goto(srv.url + "/")
        assert response is not None and response.status == 401
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp and "style-src 'sha256-" in csp
        assert page.title() == "procstream: token required"
        dark = any_viewer.page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
        looks = page.evaluate("""() => ({
            bg: getComputedStyle(document.body).backgroundColor,
            card: getComputedStyle(document.querySelector('main')).backgroundColor,
            font: getComputedStyle(document.body).fontFamily,
            button: getComputedStyle(document.querySelector('button')).backgroundColor,
        })""")
        # the viewer's page and panel colours (--bg, --panel) and its type
        assert looks["bg"] == ("rgb(13, 16, 21)" if dark else "rgb(238, 241, 245)"), looks
        assert looks["card"] == ("rgb(20, 25, 32)" if dark else "rgb(255, 255, 255)"), looks
        assert looks["font"].startswith("system-ui"), looks
        assert page.evaluate("window.__csp") == []  # the style applied: the hash matched
        assert axe.violations(page) == []
        any_viewer.screenshot(f"token-page-{'dark' if dark else 'light'}.png")
        # the form works: the token goes to a cookie, and the viewer opens
        page.fill("#token", token)
        page.click("button[type=submit]")
        any_viewer.wait_state("live")
        assert "token" not in page.url
