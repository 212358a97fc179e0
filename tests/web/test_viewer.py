"""The live viewer (``web/``) in a real browser against a real ``procstream serve``.

Chromium (``browser`` fixture, tests/conftest.py) loads the page from a server over a fake
/proc the test changes between polls, or over the live host. Every test fails on a
console error or an uncaught exception in the page (``tests/web/page.py``). Screenshots
go to ``artifacts/``. Accessibility has its own module, test_accessibility.py.
"""

from __future__ import annotations

import html.parser
import json
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.fake_proc_tree import add_proc, remove_proc
from tests.support.served import Served, http_get
from tests.support.processes import running
from tests.web.page import Viewer

WEB = Path(__file__).resolve().parents[2] / "web"

XSS = "<img src=x onerror=window.__pwned=1>"


def csp_directives(value: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = words[1:]
    return out


class _MarkupCheck(html.parser.HTMLParser):
    """Collects what a strict CSP would refuse in a page: inline scripts, style elements
    and attributes, event handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        if tag == "script":
            self._in_script = True
            if "src" not in names:
                self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("<style> element")
        if "style" in names:
            self.problems.append(f"style attribute on <{tag}>")
        self.problems.extend(f"{k} attribute on <{tag}>" for k in names if k.startswith("on"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script body")


# -- without a browser -----------------------------------------------------------------------


def test_static_files_carry_a_strict_csp_and_the_viewer_needs_no_exception(fake_proc: Path) -> None:
    with Served("--procfs", str(fake_proc), "--interval", "0.5") as srv:
        for path, ctype in [("/", "text/html"), ("/app.js", "text/javascript"), ("/style.css", "text/css"),
                            ("/favicon.svg", "image/svg+xml")]:
            status, _, headers = http_get(srv.url + path)
            assert status == 200 and headers["Content-Type"].startswith(ctype), path
            csp = csp_directives(headers["Content-Security-Policy"])
            assert csp["default-src"] == ["'self'"]
            assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
            assert csp["connect-src"] == ["'self'"]
            assert csp["frame-ancestors"] == ["'none'"]
            assert csp["base-uri"] == ["'none'"] and csp["object-src"] == ["'none'"]
            assert not any("unsafe" in v for vs in csp.values() for v in vs)
        # the API is not a page: no CSP needed there, and the route stays as it was
        assert "Content-Security-Policy" not in http_get(srv.url + "/api/snapshot")[2]

    # The page itself has nothing the CSP would block ...
    check = _MarkupCheck()
    check.feed((WEB / "index.html").read_text())
    assert check.problems == []
    # ... and no module builds HTML from strings: data reaches the page as text.
    for js in sorted(WEB.glob("*.js")):
        source = js.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, f"{js.name} uses {sink}"


# -- in the browser ----------------------------------------------------------------------------


def test_groups_sort_filter_and_list_processes_live(viewer: Viewer, fake_proc: Path, tmp_path: Path) -> None:
    with Served("--procfs", str(fake_proc), "--interval", "0.2", log=tmp_path / "log") as srv:
        viewer.open(srv.url + "/")
        page = viewer.page
        viewer.wait("() => document.getElementById('n-groups').textContent === '3'")
        assert page.text_content("#host") == socket.gethostname()
        assert sorted(viewer.names()) == sorted(["sleep", "a) (b c)", "python3"])
        assert page.get_attribute("#groups-table", "aria-rowcount") == "4"  # 3 rows + header

        # Sort by a header click: threads descending, then ascending.
        threads = page.locator("#groups-table th.c-threads")
        threads.locator("button").click()
        assert threads.get_attribute("aria-sort") == "descending"
        viewer.wait_names(["python3", "sleep", "a) (b c)"])  # 3, 2, 1
        threads.locator("button").click()
        assert threads.get_attribute("aria-sort") == "ascending"
        viewer.wait_names(["a) (b c)", "sleep", "python3"])
        # ... and by keyboard: Enter on the "Procs" header.
        page.locator("#groups-table th.c-procs button").focus()
        page.keyboard.press("Enter")
        assert page.get_attribute("#groups-table th.c-procs", "aria-sort") == "descending"
        assert threads.get_attribute("aria-sort") is None
        viewer.wait_names(["sleep", "a) (b c)", "python3"])  # 2, 1, 1

        # Filter by name; Escape clears it and goes back to the table it filters.
        # (Shortcuts don't fire from a button: first into the table.)
        page.focus("#groups-scroll")
        page.keyboard.press("/")
        page.keyboard.type("PY")
        viewer.wait_names(["python3"])
        assert page.text_content("#groups-count") == "1 of 3"
        page.keyboard.press("Escape")
        viewer.wait_names(["sleep", "a) (b c)", "python3"])
        assert page.evaluate("document.activeElement.id") == "groups-scroll"

        # Keyboard: in the table, to the first row, Enter lists its processes.
        page.keyboard.press("Home")
        page.keyboard.press("Enter")
        viewer.wait("() => document.getElementById('procs-group').textContent === 'sleep'")
        # the list shows at once; the row's highlight comes with the next frame
        viewer.wait("() => [...document.querySelectorAll('#groups-table tbody tr.selected td.c-name')]"
                    ".some(td => td.textContent === 'sleep')")
        viewer.wait("() => document.querySelectorAll('#procs-table tbody tr:not(.pad)').length === 2")
        pids = [r["cells"][0] for r in viewer.rows("procs-table")]
        assert pids == ["1000", "1006"]
        assert "#group=sleep" in page.url

        # A process starting in the group appears in the list and in the log, live.
        add_proc(fake_proc, 2001, comm="sleep", cmdline=("sleep", "5"), start=90_000)
        viewer.wait("() => [...document.querySelectorAll('#procs-table tbody tr:not(.pad)')]"
                    ".some(tr => tr.cells[0].textContent === '2001')")
        started = viewer.wait_log(2001, "start")
        assert started["cells"][2] == "sleep" and started["cells"][4] == "sleep"
        remove_proc(fake_proc, 2001)
        ended = viewer.wait_log(2001, "exit")
        assert ended["cells"][6] == "\u2014"  # polling cannot know the exit status
        viewer.wait("() => ![...document.querySelectorAll('#procs-table tbody tr:not(.pad)')]"
                    ".some(tr => tr.cells[0].textContent === '2001')")

        # Pausing the log holds it still and counts what it holds back; resuming shows it.
        page.keyboard.press("p")
        assert page.get_attribute("#log-pause", "aria-pressed") == "true"
        add_proc(fake_proc, 2002, comm="sleep", cmdline=("sleep", "6"), start=91_000)
        viewer.wait("() => document.getElementById('log-new').textContent === '1 new'")
        assert page.is_visible("#log-new")
        assert viewer.log_rows(2002) == []
        page.click("#log-pause")
        viewer.wait_log(2002, "start")
        assert page.get_attribute("#log-pause", "aria-pressed") == "false"
        assert page.is_hidden("#log-new")

        # A group that goes empty is dimmed, not dropped.
        remove_proc(fake_proc, 1001)
        viewer.wait("() => [...document.querySelectorAll('#groups-table tbody tr.empty td.c-name')]"
                    ".some(td => td.textContent === 'a) (b c)')")
        assert sorted(viewer.names()) == sorted(["sleep", "a) (b c)", "python3"])

        # Clicking a row selects it; clicking it again closes the list.
        viewer.group_row("python3").click()
        viewer.wait("() => document.getElementById('procs-group').textContent === 'python3'")
        viewer.wait("() => document.querySelector('#procs-facts dd[data-fact=states]').textContent.includes('S 1')")
        viewer.screenshot("viewer-fake-proc.png")
        viewer.group_row("python3").click()
        viewer.wait("() => !document.getElementById('procs-panel').classList.contains('has-group')")


def test_a_started_process_and_its_exit_code_over_live_processes(dark_viewer: Viewer, tmp_path: Path) -> None:
    viewer = dark_viewer
    job = tmp_path / "psvw_job"  # the comm, hence the group, is the executable's name
    shutil.copy("/bin/dash", job)
    with Served("--interval", "0.5", "--source", "auto", log=tmp_path / "log") as srv:
        # Exit codes come from the kernel's process events (root, netlink); polling can't know them.
        assert "event source: kernel process events" in srv.output(), srv.output()
        viewer.open(srv.url + "/")
        page = viewer.page
        page.fill("#group-filter", "psvw")
        page.fill("#log-group", "psvw")
        # `read` is a dash builtin: the process waits, alone, until the test writes a line.
        with running(str(job), "-c", "read line; exit 3", stdin=subprocess.PIPE) as failing, \
                running(str(job), "-c", "read line", stdin=subprocess.PIPE) as killed, \
                running(str(job), "-c", "read line", stdin=subprocess.PIPE) as fine:
            viewer.wait_names(["psvw_job"])
            viewer.group_row("psvw_job").click()
            viewer.wait("(n) => document.querySelectorAll('#procs-table tbody tr:not(.pad)').length === n", 3)
            assert {r["cells"][0] for r in viewer.rows("procs-table")} == {str(failing.pid), str(killed.pid), str(fine.pid)}
            row = viewer.rows("procs-table")[0]
            assert row["cells"][2] == "root" and row["cells"][-1].startswith(str(job))  # the command line

            assert failing.stdin is not None and fine.stdin is not None
            failing.stdin.write(b"go\n")
            failing.stdin.close()
            failing.wait(10)
            killed.send_signal(signal.SIGKILL)
            killed.wait(10)
            fine.stdin.write(b"go\n")
            fine.stdin.close()
            fine.wait(10)

            exit3 = viewer.wait_log(failing.pid, "exit")
            assert exit3["cells"][6] == "exit 3"
            assert "bad" in exit3["cls"].split()  # the row stands out ...
            assert page.locator("#log-table tbody tr.bad .status.s-bad", has_text="exit 3").count() == 1
            assert float(exit3["cells"][5].split()[0]) > 0  # a lifetime
            sigkill = viewer.wait_log(killed.pid, "exit")
            assert sigkill["cells"][6] == "SIGKILL" and "bad" in sigkill["cls"].split()
            ok = viewer.wait_log(fine.pid, "exit")
            assert ok["cells"][6] == "0" and "bad" not in ok["cls"].split()
            # ... and so does the failure filter: only the failures remain.
            page.select_option("#log-type", "problem")
            viewer.wait("(pid) => ![...document.querySelectorAll('#log-table tbody tr:not(.pad)')]"
                        ".some(tr => tr.cells[3].textContent === String(pid))", fine.pid)
            assert {failing.pid, killed.pid} <= {int(r["cells"][3]) for r in viewer.rows("log-table") if r["cells"][3]}
            viewer.wait("() => document.querySelectorAll('#procs-table tbody tr:not(.pad)').length === 0")
            viewer.screenshot("viewer-live-dark.png")


def test_process_supplied_strings_are_shown_as_text(viewer: Viewer, fake_proc: Path, tmp_path: Path) -> None:
    cmd_xss = "<script>window.__pwned=2</script>"
    add_proc(fake_proc, 2100, comm=XSS, cmdline=(XSS, cmd_xss, "--x=\"'&amp;"), start=90_000)
    with Served("--procfs", str(fake_proc), "--interval", "0.2", log=tmp_path / "log") as srv:
        viewer.open(srv.url + "/")
        page = viewer.page
        viewer.wait("(name) => [...document.querySelectorAll('#groups-table td.c-name')].some(td => td.textContent === name)", XSS)
        viewer.group_row(XSS).click()
        viewer.wait("() => document.querySelectorAll('#procs-table tbody tr:not(.pad)').length === 1")
        (proc,) = viewer.rows("procs-table")
        assert proc["cells"][1] == XSS
        assert proc["cells"][-1] == f"{XSS} {cmd_xss} --x=\"'&amp;"  # the command line
        assert page.text_content("#procs-group") == XSS
        # One more arriving live (an event, not the snapshot).
        add_proc(fake_proc, 2101, comm=XSS, cmdline=(XSS,), start=91_000)
        started = viewer.wait_log(2101, "start")
        assert started["cells"][2] == XSS and started["cells"][4] == XSS and started["title"] == XSS
        viewer.wait("() => document.querySelectorAll('#procs-table tbody tr:not(.pad)').length === 2")

        assert page.evaluate("window.__pwned") is None
        assert page.evaluate("document.querySelectorAll('img').length") == 1  # the logo
        assert page.evaluate("document.querySelectorAll('script').length") == 1  # app.js
        viewer.screenshot("viewer-xss.png")


def test_a_server_restart_rebuilds_from_the_new_snapshot_and_shows_what_changed(
    viewer: Viewer, fake_proc: Path, tmp_path: Path
) -> None:
    args = ("--procfs", str(fake_proc), "--interval", "0.2")
    first = Served(*args, log=tmp_path / "log1").start()
    try:
        viewer.open(first.url + "/")
        viewer.wait("() => document.getElementById('n-groups').textContent === '3'")
        assert first.stop() == 0
    finally:
        first.stop()
    # While the server is down the browser's reconnect attempts fail; it says so.
    viewer.allow(r"^WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws\?.*' failed")
    viewer.wait_state("reconnecting")
    viewer.wait("() => [...document.querySelectorAll('#log-table tr.note')].some(tr => tr.textContent.includes('Connection lost'))")

    add_proc(fake_proc, 2200, comm="newcomer", cmdline=("newcomer",), start=95_000)
    remove_proc(fake_proc, 1001)  # the only process of "a) (b c)"
    with Served(*args, log=tmp_path / "log2", port=first.port) as second:
        assert second.port == first.port
        viewer.page.evaluate("document.getElementById('retry').click()")  # skip the backoff wait
        viewer.wait_state("live", timeout=20_000)
        # Exactly the new run's groups: "a) (b c)", which it never saw, is gone from the
        # page, as from /api/snapshot; no stale group stays behind.
        viewer.wait("() => document.getElementById('n-groups').textContent === '3'")
        assert sorted(viewer.names()) == sorted(["sleep", "python3", "newcomer"])
        served = sorted(json.loads(http_get(second.url + "/api/snapshot")[1])["groups"])
        assert sorted(viewer.names()) == served
        assert viewer.page.text_content("#groups-count") == "3"
        found = viewer.wait_log(2200, "found")
        assert found["cells"][2] == "newcomer"
        ended = viewer.wait_log(1001, "gone")
        assert ended["cells"][2] == "a) (b c)"
        notes = [r["cells"][2] for r in viewer.rows("log-table") if "note" in r["cls"].split()]
        assert "Server restarted \u2014 rebuilt from a snapshot: 1 started, 1 ended while away" in notes, notes
        # and it keeps following the new server
        add_proc(fake_proc, 2201, comm="newcomer", cmdline=("newcomer", "2"), start=96_000)
        viewer.wait_log(2201, "start")
        viewer.screenshot("viewer-after-restart.png")
    assert len(viewer.sockets) >= 2
    resumed = parse_qs(urlsplit(viewer.sockets[-1]).query)
    assert "since" in resumed and "epoch" in resumed  # it asked to resume; the server said reset


def test_reconnect_resumes_and_a_gap_is_refilled_by_a_replay(viewer: Viewer, fake_proc: Path) -> None:
    """Same server run: a cut connection resumes with since+epoch (a replay, no snapshot),
    and frames lost on a live connection are asked for again (subscribe with since)."""
    page = viewer.page
    routes: dict[str, Any] = {"online": True, "drop": False, "dropped": [], "links": [], "sent": []}

    def route(ws: Any) -> None:
        if not routes["online"]:
            ws.close(code=4002, reason="test: offline")
            return
        server = ws.connect_to_server()

        def forward(message: str | bytes) -> None:
            if routes["drop"]:
                routes["dropped"].append(message)
            else:
                ws.send(message)

        def upstream(message: str | bytes) -> None:
            routes["sent"].append(message)
            server.send(message)

        server.on_message(forward)
        ws.on_message(upstream)
        routes["links"].append((ws, server))

    page.route_web_socket(re.compile(r"/ws(\?|$)"), route)
    with Served("--procfs", str(fake_proc), "--interval", "0.2") as srv:
        viewer.open(srv.url + "/")
        viewer.wait("() => document.getElementById('n-groups').textContent === '3'")
        # Cut it, keep it offline while a process starts, then let it back.
        routes["online"] = False
        ws, server = routes["links"][-1]
        ws.close(code=4001, reason="test: cut")
        server.close()
        viewer.wait_state("reconnecting")
        add_proc(fake_proc, 2300, comm="missed", cmdline=("missed",), start=97_000)
        viewer.poll("the server to see it", lambda: b'"pid":2300' in http_get(srv.url + "/api/snapshot")[1])
        routes["online"] = True
        page.evaluate("document.getElementById('retry').click()")
        viewer.wait_state("live")
        started = viewer.wait_log(2300, "start")  # replayed as it happened, not "found"
        assert started["cells"][2] == "missed"
        query = parse_qs(urlsplit(viewer.sockets[-1]).query)
        assert set(query) == {"since", "epoch"}
        notes = [r["cells"][2] for r in viewer.rows("log-table") if "note" in r["cls"].split()]
        assert any(n.startswith("Reconnected after") for n in notes), notes
        assert not any("rebuilt" in n for n in notes)

        # Lose the frames carrying a start; the next frame shows a gap and the page asks again.
        routes["drop"] = True
        add_proc(fake_proc, 2301, comm="missed", cmdline=("missed", "2"), start=98_000)
        viewer.poll("the start to be dropped", lambda: any(b'"pid":2301' in (m if isinstance(m, bytes) else m.encode())
                                                       for m in routes["dropped"]))
        routes["drop"] = False
        viewer.wait_log(2301, "start")
        (ask,) = [json.loads(m) for m in routes["sent"]]
        assert ask["op"] == "subscribe" and set(ask) == {"op", "since", "epoch"}
        assert ask["epoch"] == query["epoch"][0] and ask["since"] >= int(query["since"][0])
        assert viewer.page.evaluate("document.getElementById('conn').dataset.state") == "live"
        notes = [r["cells"][2] for r in viewer.rows("log-table") if "note" in r["cls"].split()]
        assert not any("rebuilt" in n for n in notes)
        assert len(viewer.sockets) == 2  # the gap was filled on the same connection


def test_token_reaches_the_socket_and_the_csp_allows_only_the_page_itself(viewer: Viewer, fake_proc: Path) -> None:
    with Served("--procfs", str(fake_proc), "--interval", "0.2") as srv:
        viewer.open(srv.url + "/?token=s3cr%20t%26x")
        (url,) = viewer.sockets
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc, parts.path) == ("ws", f"127.0.0.1:{srv.port}", "/ws")
        assert parse_qs(parts.query) == {"token": ["s3cr t&x"]}
        # The WebSocket to the page's own origin passed `connect-src 'self'` (it is live and
        # window.__csp is empty, checked by the fixture). Inline script is refused:
        viewer.allow(r"inline script violates the following Content Security Policy directive 'script-src 'self''")
        injected = viewer.page.evaluate(
            "() => { const s = document.createElement('script'); s.textContent = 'window.__inline = 1';"
            " document.body.append(s); return window.__inline === undefined; }"
        )
        assert injected
        viewer.wait("() => window.__csp.length === 1")
        assert viewer.page.evaluate("window.__csp")[0].startswith("script-src")
        viewer.page.evaluate("window.__csp = []")


def test_store_resumes_dedupes_and_rebuilds_from_snapshots(viewer: Viewer, fake_proc: Path) -> None:
    """The protocol state machine (store.js), fed objects directly in the page."""
    with Served("--procfs", str(fake_proc), "--interval", "0.5") as srv:
        viewer.open(srv.url + "/")
        result = viewer.page.evaluate(
            """async () => {
            const { Store } = await import('/store.js');
            const s = new Store();
            const gaps = [];
            s.onGap = (at) => gaps.push(at);
            const proc = (pid, group) => ({ pid, start_time: 100 + pid, name: group, cmdline: [group], group, user: 'root', uid: 0 });
            const g = (name, procs, cpu) => ({ group: name, procs, threads: procs, cpu_pct: cpu });
            const out = {};
            s.handleAll([
              { type: 'hello', v: 1, host: 'h', epoch: 'E1', head_seq: 10, oldest_seq: 1, interval: 1, filter: null },
              { type: 'snapshot', seq: 10, epoch: 'E1', groups: { web: g('web', 1, 5) }, procs: [proc(1, 'web')] },
              { type: 'proc.start', seq: 11, ts: 1, ...proc(2, 'web') },
              { type: 'proc.start', seq: 11, ts: 1, ...proc(2, 'web') },        // duplicate: skipped
              { type: 'group.update', seq: 12, ts: 1, ...g('web', 2, 7) },
              { type: 'cycle', seq: 13, ts: 1, duration_ms: 3 },
            ]);
            out.afterLive = { seq: s.seq, procs: s.procs.size, log: s.log.length, web: s.groups.get('web').f.procs,
                              hist: s.groups.get('web').n, resume: s.resumePoint() };
            s.handleAll([{ type: 'proc.exit', seq: 15, ts: 2, ...proc(2, 'web'), exit_code: 1, signal: null }]);
            out.gap = { gaps, seq: s.seq, procs: s.procs.size };
            s.handleAll([{ type: 'subscribed', seq: 13 },
                         { type: 'proc.exit', seq: 14, ts: 2, ...proc(1, 'web'), exit_code: 0, signal: null },
                         { type: 'proc.exit', seq: 15, ts: 2, ...proc(2, 'web'), exit_code: 1, signal: null }]);
            out.replayed = { seq: s.seq, procs: s.procs.size };
            // reconnect within the same run: resume, no snapshot expected
            s.connectionLost({ code: 1006 });
            s.resumeAsked = s.resumePoint();
            s.handleAll([{ type: 'hello', v: 1, host: 'h', epoch: 'E1', head_seq: 15, oldest_seq: 1, interval: 1, filter: null }]);
            out.resumed = { awaiting: s.awaiting, seq: s.seq };
            // overflow: events until the snapshot are ignored, then the state is rebuilt
            s.handleAll([
              { type: 'overflow', dropped: 40, from_seq: 16, to_seq: 55 },
              { type: 'snapshot', seq: 55, epoch: 'E1', groups: { web: g('web', 1, 1), db: g('db', 1, 2) },
                procs: [proc(3, 'web'), proc(4, 'db')] },
              { type: 'proc.start', seq: 56, ts: 3, ...proc(5, 'db') },
            ]);
            const notes = s.log.toNewestFirst().filter(e => e.kind === 'note').map(e => e.text);
            const found = s.log.toNewestFirst().filter(e => e.synthetic).map(e => e.kind + ' ' + e.ev.pid);
            out.overflow = { seq: s.seq, procs: [...s.procs.values()].map(p => p.pid).sort(), groups: [...s.groups.keys()].sort(),
                             webHistKept: s.groups.get('web').n, note: notes[0], found };
            return out;
        }"""
        )
    assert result["afterLive"] == {"seq": 13, "procs": 2, "log": 1, "web": 2, "hist": 1,
                                   "resume": {"since": 13, "epoch": "E1"}}
    # a gap (14 missing) asks to resume from 13 and applies nothing past it ...
    assert result["gap"] == {"gaps": [{"since": 13, "epoch": "E1"}], "seq": 13, "procs": 2}
    # ... the replay after `subscribed` fills it in order
    assert result["replayed"] == {"seq": 15, "procs": 0}
    assert result["resumed"] == {"awaiting": False, "seq": 15}
    ov = result["overflow"]
    assert ov["seq"] == 56 and ov["procs"] == [3, 4, 5] and ov["groups"] == ["db", "web"]
    assert ov["webHistKept"] == 1  # the sparkline history survives a rebuild
    assert ov["note"] == "Viewer fell behind (40 events skipped) \u2014 rebuilt from a snapshot: 2 started, 0 ended while away"
    assert sorted(ov["found"]) == ["start 3", "start 4"]


def test_store_moves_a_process_that_runs_a_new_program_to_its_new_group(viewer: Viewer, fake_proc: Path) -> None:
    """A second proc.start for a known process (it exec'd: ``previous``) replaces it, in
    its new group's list and no longer in its old one's."""
    with Served("--procfs", str(fake_proc), "--interval", "0.5") as srv:
        viewer.open(srv.url + "/")
        result = viewer.page.evaluate(
            """async () => {
            const { Store } = await import('/store.js');
            const s = new Store();
            const p = { pid: 7, start_time: 107, user: 'root', uid: 0, cmdline_known: true };
            s.handleAll([
              { type: 'hello', v: 1, host: 'h', epoch: 'E1', head_seq: 1, oldest_seq: 1, interval: 1, filter: null },
              { type: 'snapshot', seq: 1, epoch: 'E1', groups: {}, procs: [] },
              { type: 'proc.start', seq: 2, ts: 1, ...p, name: 'setsid', cmdline: ['setsid', 'sleep', '9'], group: 'setsid' },
              { type: 'proc.start', seq: 3, ts: 1, ...p, name: 'sleep', cmdline: ['sleep', '9'], group: 'sleep',
                previous: { name: 'setsid', group: 'setsid' } },
            ]);
            const members = (g) => [...(s.members.get(g) ?? new Map()).values()].map((q) => q.name);
            return { procs: s.procs.size, setsid: members('setsid'), sleep: members('sleep') };
        }"""
        )
    assert result == {"procs": 1, "setsid": [], "sleep": ["sleep"]}


def test_store_joins_a_snapshot_sent_in_parts(viewer: Viewer, fake_proc: Path) -> None:
    """A big host's snapshot comes in parts (each frame stays small): the store applies
    it once whole, and a part 1 starts over."""
    with Served("--procfs", str(fake_proc), "--interval", "0.5") as srv:
        viewer.open(srv.url + "/")
        result = viewer.page.evaluate(
            """async () => {
            const { Store } = await import('/store.js');
            const s = new Store();
            const proc = (pid, group) => ({ pid, start_time: 100 + pid, name: group, cmdline: [group], group, user: 'root', uid: 0 });
            const part = (n, of, seq, groups, procs) => ({ type: 'snapshot', seq, epoch: 'E', part: n, parts: of, groups, procs });
            s.handleAll([{ type: 'hello', v: 1, host: 'h', epoch: 'E', head_seq: 9, oldest_seq: 1, interval: 1, filter: null },
                         part(1, 3, 9, { web: { procs: 2 } }, [proc(1, 'web')])]);
            const out = { afterFirst: { synced: s.synced, procs: s.procs.size } };
            s.handleAll([part(2, 3, 9, { db: { procs: 1 } }, [proc(2, 'web')]),
                         part(3, 3, 9, {}, [proc(3, 'db')]),
                         { type: 'cycle', seq: 10, ts: 1 }]);
            out.whole = { synced: s.synced, seq: s.seq, procs: [...s.procs.keys()].length, groups: [...s.groups.keys()].sort() };
            // a new snapshot while one is incomplete: only the new one counts
            s.handleAll([{ type: 'overflow', dropped: 5, from_seq: 11, to_seq: 20 },
                         part(1, 2, 20, { web: { procs: 1 } }, [proc(1, 'web')]),
                         { type: 'reset', reason: 'resync', seq: 21, epoch: 'E' },
                         part(1, 2, 21, { db: { procs: 1 } }, [proc(3, 'db')]),
                         part(2, 2, 21, {}, [proc(4, 'db')])]);
            out.restarted = { seq: s.seq, procs: [...s.procs.values()].map(p => p.pid).sort(), groups: [...s.groups.keys()].sort() };
            return out;
        }"""
        )
    assert result["afterFirst"] == {"synced": False, "procs": 0}
    assert result["whole"] == {"synced": True, "seq": 10, "procs": 3, "groups": ["db", "web"]}
    assert result["restarted"]["seq"] == 21 and result["restarted"]["procs"] == [3, 4]


def test_format_helpers(viewer: Viewer, fake_proc: Path) -> None:
    with Served("--procfs", str(fake_proc), "--interval", "0.5") as srv:
        viewer.open(srv.url + "/")
        got = viewer.page.evaluate(
            """async () => {
            const f = await import('/format.js');
            return {
              bytes: [0, 1023, 1024, 1536, 10 * 1048576, 1.5 * 2 ** 30].map(f.fmtBytes),
              age: [5, 65, 3725, 90061].map(f.fmtAge),
              life: [0.0349, 1.234, 42.04, 125].map(f.fmtLifetime),
              exits: [{ exit_code: 0, signal: null }, { exit_code: 2, signal: null },
                      { exit_code: null, signal: 15 }, { exit_code: null, signal: 11, core_dumped: true },
                      { exit_code: null, signal: null }].map(e => { const s = f.exitStatus(e); return `${s.text}|${s.tone}`; }),
              sig: [9, 35, 99].map(f.signalName),
              cmd: [f.fmtCmdline(['a', 'b c'], 'x'), f.fmtCmdline([], 'kthreadd')],
            };
        }"""
        )
    assert got["bytes"] == ["0 B", "1023 B", "1.00 KiB", "1.50 KiB", "10.0 MiB", "1.50 GiB"]
    assert got["age"] == ["5s", "1m 05s", "1h 02m", "1d 1h"]
    assert got["life"] == ["35 ms", "1.23 s", "42.0 s", "2m 05s"]
    assert got["exits"] == ["0|ok", "exit 2|bad", "SIGTERM|warn", "SIGSEGV core|bad", "\u2014|unknown"]
    assert got["sig"] == ["SIGKILL", "SIGRTMIN+1", "signal 99"]
    assert got["cmd"] == ["a b c", "[kthreadd]"]
