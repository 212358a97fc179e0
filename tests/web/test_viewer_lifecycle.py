"""The viewer shows the lifecycle: a missing expected group first and in red, a crash loop
flagged, restarts counted, each group's last exit, restarts and OOM kills in the log.

A real ``procstream serve`` over a fake /proc (the poll source). Its WebSocket passes
through a proxy in the test that turns one exit into an OOM kill, which polling can't
know (the kernel-source test of that is tests/test_lifecycle_live.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.support.fake_proc_tree import LIFECYCLE_CONFIG, add_proc, remove_proc
from tests.support.served import Served
from tests.web.page import Viewer

OOM_PID = 2606


def oom_proxy(message: str | bytes) -> str | bytes:
    if not isinstance(message, str) or '"proc.exit"' not in message:
        return message
    objs = json.loads(message)
    for o in objs:
        if o.get("type") == "proc.exit" and o.get("pid") == OOM_PID:
            o.update(signal=9, exit_class="oom_kill", oom_killed=True)
    return json.dumps(objs)


def serve(fake_proc: Path, tmp_path: Path) -> Served:
    config = tmp_path / "config.yml"
    config.write_text(LIFECYCLE_CONFIG)
    return Served("--procfs", str(fake_proc), "--interval", "0.2", "--source", "poll", "--config", str(config),
                  log=tmp_path / "log")  # fmt: skip


def group_cells(viewer: Viewer, name: str) -> dict[str, Any]:
    """The row of group ``name``: its class and its cells by column id."""
    return viewer.page.evaluate(
        """(name) => {
            const tr = [...document.querySelectorAll('#groups-table tbody tr:not(.pad)')]
                .find(tr => tr.querySelector('td.c-name').textContent === name);
            if (!tr) return null;
            const cells = {};
            for (const td of tr.cells) cells[[...td.classList].find(c => c.startsWith('c-')).slice(2)] = td.textContent;
            return {cls: tr.className, cells, exitClass: tr.querySelector('td.c-exit span')?.className ?? ''};
        }""",
        name,
    )


def start_svc(fake_proc: Path, pid: int) -> None:
    add_proc(fake_proc, pid, comm="svc", cmdline=("svc", "--serve"))


def test_missing_first_in_red_crash_loop_restarts_last_exit_and_oom(viewer: Viewer, fake_proc: Path, tmp_path: Path) -> None:
    page = viewer.page
    page.route_web_socket(re.compile(r"/ws(\?|$)"), lambda ws: ws.connect_to_server().on_message(lambda m: ws.send(oom_proxy(m))))
    with serve(fake_proc, tmp_path) as srv:
        viewer.open(srv.url + "/")
        viewer.wait("() => document.getElementById('n-groups').textContent === '4'")
        # never started: first, whatever the sort, in red, and said in words
        for column in ("name", "threads", "procs"):
            page.locator(f"#groups-table th.c-{column} button").click()
            viewer.wait("() => document.querySelector('#groups-table tbody tr:not(.pad) td.c-name').textContent === 'svc'")
        svc = group_cells(viewer, "svc")
        assert "missing" in svc["cls"].split() and svc["cells"]["status"] == "missing"
        assert (svc["cells"]["procs"], svc["cells"]["restarts"], svc["cells"]["exit"]) == ("0", "0", "\u2014")
        title = page.locator("#groups-table tbody tr.missing td.c-status").get_attribute("title")
        assert title == "Missing: 0 processes, at least 1 expected"
        viewer.screenshot("viewer-missing.png")

        # it starts: back among the others, expected
        start_svc(fake_proc, 2601)
        viewer.wait_log(2601, "start")
        viewer.wait("() => !document.querySelector('#groups-table tbody tr.missing')")
        assert group_cells(viewer, "svc")["cells"]["status"] == "expected"
        (recovered,) = [r for r in viewer.rows("log-table") if r["cells"][1] == "recovered"]
        assert recovered["cells"][2:4] == ["svc", "back: 1 process, at least 1 expected"]

        # a second one, so that a restart spread over two polls never leaves it missing
        start_svc(fake_proc, 2611)
        viewer.wait_log(2611, "start")
        # it keeps dying and being restarted (polling can't tell how: unknown counts as failed)
        for old, new in ((2601, 2602), (2602, 2603), (2603, 2604)):
            remove_proc(fake_proc, old)
            start_svc(fake_proc, new)
            restart = viewer.wait_log(new, "restart")
        assert "restart" in restart["cls"].split()
        hint = page.locator("#log-table tbody tr.restart td.c-kind").first.get_attribute("title")
        assert hint.startswith("Process restarted, in place of pid 2603, exit status unknown, down ")
        viewer.wait("() => document.querySelector('#groups-table tbody tr.crashloop') !== null")
        svc = group_cells(viewer, "svc")
        assert (svc["cells"]["status"], svc["cells"]["restarts"]) == ("crash loop", "3")
        (loop,) = [r for r in viewer.rows("log-table") if r["cells"][1] == "crash loop"]
        assert loop["cells"][2] == "svc" and "bad" in loop["cls"].split()
        assert loop["cells"][3] == "crash loop: 3 restarts after failures within 10m 00s"

        # an OOM kill stands out in the log and in the group's last exit
        add_proc(fake_proc, OOM_PID, comm="hog", cmdline=("hog",))
        viewer.wait_log(OOM_PID, "start")
        remove_proc(fake_proc, OOM_PID)
        oom = viewer.wait_log(OOM_PID, "exit")
        assert oom["cells"][6] == "OOM kill" and {"bad", "oom"} <= set(oom["cls"].split())
        assert page.locator("#log-table tbody tr.oom .status.s-oom").count() == 1
        viewer.wait("() => [...document.querySelectorAll('#groups-table td.c-exit')].some(td => td.textContent === 'OOM kill')")
        assert group_cells(viewer, "hog")["exitClass"] == "status s-oom"
        # the failure filter keeps the alerts and the OOM kill, not the starts
        page.select_option("#log-type", "problem")
        viewer.wait("() => [...document.querySelectorAll('#log-table tbody tr:not(.pad) td.c-kind')]"
                    ".every(td => ['crash loop', 'exit', 'note'].includes(td.textContent))")  # fmt: skip
        page.select_option("#log-type", "life")
        viewer.wait("() => [...document.querySelectorAll('#log-table tbody tr:not(.pad) td.c-kind')]"
                    ".map(td => td.textContent).join() === 'crash loop,recovered'")  # fmt: skip
        viewer.screenshot("viewer-lifecycle.png")

        # a new page rebuilds it all from the snapshot (the OOM kill was only the proxy's:
        # the server knows hog's last exit, but not how it ended)
        page.reload()
        viewer.wait_state("live")
        svc = group_cells(viewer, "svc")
        assert (svc["cells"]["status"], svc["cells"]["restarts"]) == ("crash loop", "3")
        assert svc["cells"]["exit"] == "\u2014"
        hog = page.locator("#groups-table tbody tr:not(.pad)", has=page.locator("td.c-name", has_text="hog"))
        assert hog.locator("td.c-exit").get_attribute("title").startswith(f"pid {OOM_PID} at ")
