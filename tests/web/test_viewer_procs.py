"""The processes panel and a process in detail, in a real browser against a real
``procstream serve`` over a fake /proc that the tests change between polls: the
per-process columns, sorted and kept live by proc.update over a second connection that
only the watched processes' updates travel on; the detail view with its sparklines,
limits, cgroup and container, and its parent/children links, by mouse and keyboard; the
empty-groups toggle; the layout of a phone's width.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.fake_proc_tree import add_proc, remove_proc, set_stat
from tests.support.served import Served
from tests.web.page import Viewer

PAGE = os.sysconf("SC_PAGE_SIZE")
CID = "3f4e9a1c2b7d8e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f"
COLUMNS = ["PID", "Name", "User", "State", "CPU %", "CPU time", "Memory", "Virtual", "Swap", "Threads",
           "FDs", "FD use", "Read/s", "Write/s", "Age", "Command line"]


class Sockets:
    """Every frame each WebSocket of the page receives and sends, by URL, and how many
    sockets of each URL are open (make it before the page opens)."""

    def __init__(self, viewer: Viewer) -> None:
        self.frames: dict[str, list[Any]] = {}
        self.open: dict[str, int] = {}
        viewer.page.on("websocket", self._socket)

    def _socket(self, ws: Any) -> None:
        log = self.frames.setdefault(ws.url, [])
        self.open[ws.url] = self.open.get(ws.url, 0) + 1
        ws.on("framereceived", lambda payload: log.append(("in", payload)))
        ws.on("framesent", lambda payload: log.append(("out", payload)))
        ws.on("close", lambda _: self.open.__setitem__(ws.url, self.open[ws.url] - 1))

    def url(self, live: bool) -> str:
        """The main connection's URL, or the live one's (it asks for cycles first)."""
        return next(u for u in self.frames if ("types=cycle" in u) == live)


def objects(frames: list[Any], way: str = "in") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for direction, payload in frames:
        if direction != way:
            continue
        value = json.loads(payload)
        out.extend(value if isinstance(value, list) else [value])
    return out


def proc_rows(viewer: Viewer) -> dict[str, list[str]]:
    """pid -> the cells of its row in the processes table."""
    return {r["cells"][0]: r["cells"] for r in viewer.rows("procs-table")}


def cell(viewer: Viewer, pid: int, column: str) -> str:
    return proc_rows(viewer)[str(pid)][COLUMNS.index(column)]


def wait_cell(viewer: Viewer, pid: int, column: str, want: str) -> None:
    viewer.wait(
        "([pid, i, want]) => [...document.querySelectorAll('#procs-table tbody tr:not(.pad)')]"
        ".some(tr => tr.cells[0].textContent === String(pid) && tr.cells[i].textContent === want)",
        [pid, COLUMNS.index(column), want],
    )


def fmt_mib(pages: int) -> str:
    mib = pages * PAGE / 1048576
    return f"{mib:.2f} MiB" if mib < 10 else f"{mib:.1f} MiB" if mib < 100 else f"{mib:.0f} MiB"


def test_process_columns_are_sortable_and_live(viewer: Viewer, fake_proc: Path, tmp_path: Path) -> None:
    add_proc(fake_proc, 2600, comm="work", cmdline=("work", "a"), start=90_000)
    add_proc(fake_proc, 2601, comm="work", cmdline=("work", "b"), start=90_001)
    set_stat(fake_proc, 2600, rss=1000)
    set_stat(fake_proc, 2601, rss=3000, state="R")
    sockets = Sockets(viewer)
    with Served("--procfs", str(fake_proc), "--interval", "0.2", log=tmp_path / "log") as srv:
        viewer.open(srv.url + "/")
        page = viewer.page
        assert len(sockets.frames) == 1  # nothing to watch yet: no second connection
        viewer.group_row("work").click()
        viewer.wait("() => document.querySelectorAll('#procs-table tbody tr:not(.pad)').length === 2")
        assert page.eval_on_selector_all("#procs-table thead th", "ths => ths.map(th => th.textContent)") == COLUMNS
        wait_cell(viewer, 2601, "Memory", fmt_mib(3000))  # from the snapshot
        assert cell(viewer, 2600, "Memory") == fmt_mib(1000)
        assert (cell(viewer, 2601, "State"), cell(viewer, 2600, "State")) == ("R", "S")
        assert cell(viewer, 2600, "Threads") == "1" and cell(viewer, 2600, "FDs") == "3"
        assert cell(viewer, 2600, "FD use") == "0.0 %"  # 3 of 20,000
        assert cell(viewer, 2600, "CPU %") == "0.0"

        # Sort by memory (a click: largest first), then by PID again by keyboard.
        page.locator("#procs-table th.c-mem button").click()
        assert page.get_attribute("#procs-table th.c-mem", "aria-sort") == "descending"
        viewer.wait("() => document.querySelector('#procs-table tbody tr:not(.pad)').cells[0].textContent === '2601'")

        # Live: the numbers change at the next poll, and the order with them.
        set_stat(fake_proc, 2600, rss=5000, state="D")
        wait_cell(viewer, 2600, "Memory", fmt_mib(5000))
        wait_cell(viewer, 2600, "State", "D")
        viewer.wait("() => document.querySelector('#procs-table tbody tr:not(.pad)').cells[0].textContent === '2600'")
        # CPU: the process uses a tick more at every poll until the page shows it busy.
        ticks = [0]

        def busy() -> bool:
            ticks[0] += 10
            set_stat(fake_proc, 2600, utime=ticks[0])
            page.wait_for_timeout(100)
            return cell(viewer, 2600, "CPU %") not in ("0.0", "\u2014")

        viewer.poll("a CPU % for the busy process", busy)
        assert float(cell(viewer, 2600, "CPU time").split()[0]) > 0

        # Another group's processes are not watched, and proc.update never comes on the
        # main connection: only on the second one, for the selected group.
        main, live = sockets.url(False), sockets.url(True)
        assert parse_qs(urlsplit(live).query)["snapshot"] == ["0"]
        assert not [o for o in objects(sockets.frames[main]) if o.get("type") == "proc.update"]
        updates = [o for o in objects(sockets.frames[live]) if o.get("type") == "proc.update"]
        assert updates and {o["pid"] for o in updates} <= {2600, 2601}
        asked = objects(sockets.frames[live], "out")
        assert asked[-1] == {"op": "subscribe", "types": ["proc.update", "cycle"], "snapshot": True, "groups": ["work"]}

        viewer.screenshot("viewer-procs-live.png")
        # A process that exits leaves the list; closing the list stops the watching.
        remove_proc(fake_proc, 2601)
        viewer.wait("() => document.querySelectorAll('#procs-table tbody tr:not(.pad)').length === 1")
        page.click("#procs-close")
        viewer.wait("() => !document.getElementById('procs-panel').classList.contains('has-group')")
        viewer.poll("the live connection to close", lambda: sockets.open[live] == 0)
        assert sockets.open[main] == 1


def test_a_process_in_detail_with_its_tree_by_keyboard(viewer: Viewer, fake_proc: Path, tmp_path: Path) -> None:
    # its parent: a kernel thread, which no group takes
    add_proc(fake_proc, 2700, comm="family", cmdline=("family", "--parent"), start=90_000, ppid=14)
    add_proc(fake_proc, 2701, comm="family", cmdline=("family", "--child", "one"), start=90_010, ppid=2700)
    add_proc(fake_proc, 2702, comm="kid", cmdline=("kid",), start=90_020, ppid=2700)
    (fake_proc / "2701" / "cgroup").write_text(f"0::/system.slice/docker-{CID}.scope\n")
    sockets = Sockets(viewer)
    page = viewer.page
    keys = page.keyboard
    with Served("--procfs", str(fake_proc), "--interval", "0.2", log=tmp_path / "log") as srv:
        viewer.open(srv.url + "/")
        viewer.group_row("family").click()
        viewer.wait("() => document.querySelectorAll('#procs-table tbody tr:not(.pad)').length === 2")

        # The keyboard: into the list, to its first process, Enter.
        page.focus("#procs-scroll")
        keys.press("Home")
        keys.press("Enter")
        viewer.wait("() => document.getElementById('detail').open")
        viewer.wait("() => document.getElementById('detail-title').textContent === 'family (pid 2700)'")
        assert page.evaluate("document.getElementById('detail').contains(document.activeElement)")
        assert page.text_content("#detail-cmd") == "family --parent"
        # The tree: the parent isn't tracked; both children are, one in a group of its own.
        viewer.wait("() => document.querySelectorAll('#detail-tree a').length === 2")
        links = page.eval_on_selector_all("#detail-tree a", "as => as.map(a => [a.textContent, a.getAttribute('href')])")
        assert links == [["family (2701)", "#group=family&pid=2701"], ["kid (2702)", "#group=kid&pid=2702"]]
        assert page.text_content("#detail-tree li.parent") == "ksoftirqd/0 (14) not tracked"
        limit = page.eval_on_selector_all("#detail-limits tbody tr", "trs => trs.map(tr => [...tr.cells].map(c => c.textContent))")
        assert ["Max open files (files)", "20,000", "20,000"] in limit
        # The sparklines sample at every poll since the dialog opened.
        viewer.wait("() => /over [3-9]\\d* polls/.test(document.getElementById('detail-cpu-text').textContent)")
        assert page.evaluate("location.hash") == "#group=family&pid=2700"

        # Tab to the first child's link, Enter: the dialog shows the child.
        for _ in range(10):
            if page.evaluate("document.activeElement.dataset.pid") == "2701":
                break
            keys.press("Tab")
        keys.press("Enter")
        viewer.wait("() => document.getElementById('detail-title').textContent === 'family (pid 2701)'")
        viewer.wait("() => document.getElementById('detail-container').textContent.includes('docker')")
        container = page.eval_on_selector_all("#detail-container dd", "dds => dds.map(d => [d.textContent, d.title])")
        assert [CID[:12], CID] in container and ["docker", ""] in container
        assert page.text_content("#detail-cgroups") == f"/system.slice/docker-{CID}.scope"
        viewer.wait("() => document.querySelectorAll('#detail-tree a').length === 1")
        assert page.text_content("#detail-tree a") == "family (2700)"  # the parent, a link now
        # The live connection watches this process by pid while the dialog is open.
        live = sockets.url(True)
        viewer.poll("the subscription to name the pid", lambda: any(
            o.get("pids") == [2701] for o in objects(sockets.frames[live], "out")))
        viewer.screenshot("viewer-detail.png")

        # Its state as it changes, and its exit.
        set_stat(fake_proc, 2701, state="D")
        viewer.wait("() => document.getElementById('detail-state').textContent === 'D waiting (uninterruptible)'")
        remove_proc(fake_proc, 2701)
        viewer.wait("() => document.getElementById('detail-state').textContent === 'exited'")
        assert "has exited" in page.text_content("#detail-note")

        # Escape closes it; the keyboard is back on the list; the watching stops.
        keys.press("Escape")
        viewer.wait("() => !document.getElementById('detail').open")
        assert page.evaluate("document.activeElement.id") == "procs-scroll"
        assert page.evaluate("location.hash") == "#group=family"  # the page's own URL, now
        viewer.poll("the subscription to drop the pid", lambda: "pids" not in objects(sockets.frames[live], "out")[-1])

        # A link to a process in the URL opens it, followed or loaded.
        page.goto(srv.url + "/#group=kid&pid=2702")
        viewer.wait("() => document.getElementById('detail-title').textContent === 'kid (pid 2702)'")
        assert page.text_content("#procs-group") == "kid"
        page.reload()
        viewer.wait_state("live")
        viewer.wait("() => document.getElementById('detail').open")
        viewer.wait("() => document.getElementById('detail-title').textContent === 'kid (pid 2702)'")


def test_empty_groups_can_be_hidden_and_the_choice_is_remembered(viewer: Viewer, fake_proc: Path, tmp_path: Path) -> None:
    with Served("--procfs", str(fake_proc), "--interval", "0.2", log=tmp_path / "log") as srv:
        viewer.open(srv.url + "/")
        page = viewer.page
        viewer.wait("() => document.getElementById('n-groups').textContent === '3'")
        remove_proc(fake_proc, 1001)  # the only process of "a) (b c)"
        viewer.wait("() => document.querySelector('#groups-table tbody tr.empty') !== null")
        assert sorted(viewer.names()) == sorted(["sleep", "a) (b c)", "python3"])
        page.check("#hide-empty")
        viewer.wait("() => !document.querySelector('#groups-table tbody tr.empty')")
        assert sorted(viewer.names()) == ["python3", "sleep"]
        assert page.text_content("#groups-count") == "2 of 3"
        # a group that gets a process again comes back at once
        add_proc(fake_proc, 1001, comm="a) (b c)", cmdline=("again",), start=95_000)
        viewer.wait("() => document.querySelectorAll('#groups-table tbody tr:not(.pad)').length === 3")
        remove_proc(fake_proc, 1001)
        viewer.wait("() => document.querySelectorAll('#groups-table tbody tr:not(.pad)').length === 2")
        page.reload()
        viewer.wait_state("live")
        viewer.wait("() => document.getElementById('groups-count').textContent === '2 of 3'")
        assert page.is_checked("#hide-empty")
        assert sorted(viewer.names()) == ["python3", "sleep"]
        page.uncheck("#hide-empty")
        viewer.wait("() => document.querySelectorAll('#groups-table tbody tr:not(.pad)').length === 3")


def test_a_phones_width_keeps_headings_and_buttons_in_their_panels(browser: Any, fake_proc: Path, tmp_path: Path) -> None:
    viewer = Viewer(browser)
    try:
        viewer.page.set_viewport_size({"width": 390, "height": 844})
        with Served("--procfs", str(fake_proc), "--interval", "0.2", log=tmp_path / "log") as srv:
            viewer.open(srv.url + "/")
            viewer.wait("() => document.getElementById('n-groups').textContent === '3'")
            boxes = viewer.page.evaluate("""() => {
                const box = (id) => { const r = document.getElementById(id).getBoundingClientRect();
                                      return { left: r.left, right: r.right, width: r.width }; };
                const heading = (id) => { const h = document.getElementById(id);
                                          return { shown: h.clientWidth, needs: h.scrollWidth }; };
                return { log: box('log-panel'), pause: box('log-pause'), logType: box('log-type'),
                         groups: box('groups-panel'), filter: box('group-filter'), toggle: box('hide-empty'),
                         events: heading('log-title'), groupsTitle: heading('groups-title') };
            }""")
            for control in ("pause", "logType"):
                assert boxes["log"]["left"] <= boxes[control]["left"] and boxes[control]["right"] <= boxes["log"]["right"], boxes
            for control in ("filter", "toggle"):
                assert boxes["groups"]["left"] <= boxes[control]["left"] and boxes[control]["right"] <= boxes["groups"]["right"], boxes
            for heading in ("events", "groupsTitle"):
                assert boxes[heading]["shown"] >= boxes[heading]["needs"] > 0, boxes
            viewer.screenshot("viewer-390px.png")
        assert viewer.unexpected_errors() == []
    finally:
        viewer.close()
