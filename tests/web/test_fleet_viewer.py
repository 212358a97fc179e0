"""The viewer served by ``procstream fleet``: the hosts view, the host filter, group
totals with their per-host breakdown, the event log's host column, a host going down
and coming back as a new run; axe-core finds nothing at WCAG 2.1 AA, light and dark.

Real agents (``serve --nats`` over fake /proc trees), a real nats-server and a real
aggregator; the page in Debian's Chromium.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fleet_world import FleetWorld
from tests.support.served import Served
from tests.support.nats_servers import NatsServer
from tests.web import axe
from tests.web.page import Viewer, checked

HOSTS = ("db-01", "web-01", "web-02")
SERVICES = {"web-01": ("nginx", "nginx"), "web-02": ("nginx",), "db-01": ("postgres",)}


@pytest.fixture(params=["light", "dark"])
def any_viewer(request: pytest.FixtureRequest, browser: Any) -> Iterator[Viewer]:
    yield from checked(browser, request.param)


def host_rows(viewer: Viewer) -> dict[str, list[str]]:
    return {r["cells"][0]: r["cells"] for r in viewer.rows("hosts-table")}


def no_violations(viewer: Viewer, state: str) -> None:
    found = axe.violations(viewer.page)
    assert found == [], f"{state}:\n" + "\n".join(found)


def test_the_hosts_view_and_the_host_filter(any_viewer: Viewer, tmp_path: Path) -> None:
    viewer = any_viewer
    page = viewer.page
    with NatsServer() as nats, FleetWorld(tmp_path, nats) as world:
        world.start_agents(*HOSTS, services=SERVICES)
        fleet = world.fleet("--host-timeout", "2")
        viewer.open(fleet.url + "/")
        assert page.evaluate("document.body.classList.contains('fleet')")
        viewer.wait("() => document.querySelectorAll('#hosts-table tbody tr:not(.pad)').length === 3")
        viewer.wait("() => document.getElementById('n-hosts').textContent === '3 up'")
        rows = host_rows(viewer)
        assert sorted(rows) == list(HOSTS) and {r[1] for r in rows.values()} == {"up"}
        # every host polls: a last poll, events per second
        viewer.wait("() => [...document.querySelectorAll('#hosts-table tbody tr:not(.pad)')]"
                    ".every(tr => tr.cells[5].textContent !== '\\u2014' && tr.cells[6].textContent !== '0')")
        assert page.text_content("#host") == "PROCSTREAM (fleet)"
        # the groups table totals the hosts; a group's breakdown lists them
        viewer.wait("() => document.getElementById('n-groups').textContent !== '\\u2014'")
        nginx = viewer.group_row("nginx")
        assert nginx.locator("td.c-procs").text_content() == "3"
        nginx.click()
        viewer.wait("() => !document.getElementById('procs-hosts').hidden")
        breakdown = page.evaluate("[...document.querySelectorAll('#procs-hosts-body tr')]"
                                  ".map(tr => [...tr.cells].map(c => c.textContent))")
        assert sorted((r[0], r[1]) for r in breakdown) == [("web-01", "2"), ("web-02", "1")]
        viewer.wait("() => document.querySelectorAll('#procs-table tbody tr:not(.pad)').length === 3")
        assert page.is_visible("#procs-table th.c-host") and page.is_visible("#log-table th.c-host")
        no_violations(viewer, "three hosts, a group selected")
        # a process in detail: the aggregator reads no /proc, its host does
        page.locator("#procs-table tbody tr:not(.pad)").first.click()
        viewer.wait("() => document.querySelector('dialog.detail').open")
        title = page.text_content("dialog.detail h2") or ""
        assert title.startswith("nginx (pid ") and " on web-0" in title
        viewer.wait("() => document.querySelector('dialog.detail .note').textContent.includes('read on the host')")
        no_violations(viewer, "a process in detail")
        page.keyboard.press("Escape")
        viewer.wait("() => !document.querySelector('dialog.detail').open")

        # one host alone: its groups, its processes, its events
        page.select_option("#host-filter", "web-02")
        viewer.wait("() => document.querySelectorAll('#procs-table tbody tr:not(.pad)').length === 1")
        assert nginx.locator("td.c-procs").text_content() == "1"
        assert page.is_hidden("#procs-hosts")
        assert "host=web-02" in page.evaluate("window.location.hash")
        assert "postgres" not in viewer.names()
        assert page.evaluate("document.querySelector('#hosts-table tr.selected td.c-name').textContent") == "web-02"
        hosts = page.evaluate("[...document.querySelectorAll('#log-table tbody tr:not(.pad):not(.note) td.c-host')]"
                              ".map(td => td.textContent)")
        assert set(hosts) <= {"web-02"}
        no_violations(viewer, "one host shown")
        # a row of the hosts table picks too (Enter or click); picking it again shows all
        viewer.page.locator("#hosts-table tbody tr:not(.pad)").filter(
            has=page.locator("td.c-name").get_by_text("web-02", exact=True)).click()
        viewer.wait("() => document.getElementById('host-filter').value === ''")
        assert nginx.locator("td.c-procs").text_content() == "3"

        # a host goes down, and comes back as a new run with another process
        db = world.agents["db-01"]
        db.kill()
        viewer.wait("() => document.getElementById('n-hosts').textContent === '2 up, 1 down'", timeout=20_000)
        assert host_rows(viewer)["db-01"][1] == "down"
        assert "postgres" in viewer.names()  # listed, with nothing in it while its host is down
        viewer.wait("() => [...document.querySelectorAll('#log-table tr.note td')]"
                    ".some(td => td.textContent.startsWith('Host db-01 is down'))")
        no_violations(viewer, "a host down")
        db.spawn("cron")
        db.start()
        viewer.wait("() => document.getElementById('n-hosts').textContent === '3 up'", timeout=20_000)
        viewer.wait("() => [...document.querySelectorAll('#log-table tr.note td')]"
                    ".some(td => td.textContent.startsWith('Host db-01 restarted'))")
        page.select_option("#host-filter", "db-01")
        viewer.wait_names(sorted(viewer.names()))  # settled
        viewer.wait("() => [...document.querySelectorAll('#groups-table td.c-name')].some(td => td.textContent === 'cron')")
        dark = page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
        viewer.screenshot(f"fleet-{'dark' if dark else 'light'}.png")


# A fleet's Store in the page, fed frames by hand: two hosts with group "svc".
FLEET_LIFECYCLE_JS = """async () => {
    const { Store } = await import('/store.js');
    const s = new Store();
    const up = (groups) => ({ up: true, epoch: 'e1', synced: true, groups });
    s.handleAll([
        { type: 'hello', host: 'agg', server: 'procstream', epoch: '-', interval: 1, fleet: { stream: 'S' } },
        { type: 'snapshot', seq: 0, host: 'agg', epoch: '-', groups: {}, procs: [],
          hosts: { a: up({ svc: { procs: 1 } }), b: up({ svc: { procs: 1 } }) } },
    ]);
    s.takeChanges();
    let seq = 0;
    const ev = (o) => ({ seq: ++seq, ts: 100 + seq, ...o });
    s.handleAll([
        ev({ type: 'group.crashloop', host: 'a', group: 'svc' }),
        ev({ type: 'proc.start', host: 'a', group: 'svc', pid: 7, start_time: 5, restart_of: 6 }),
        ev({ type: 'proc.exit', host: 'b', group: 'svc', pid: 9, start_time: 4, exit_class: 'crash', exit_code: 1 }),
        ev({ type: 'group.missing', host: 'b', group: 'new' }),
    ]);
    s.takeChanges();
    const before = { ...s.groups.get('svc').f };
    // each host's next poll
    s.handleAll([
        ev({ type: 'group.update', host: 'a', group: 'svc', procs: 1 }),
        ev({ type: 'group.update', host: 'b', group: 'svc', procs: 1 }),
        ev({ type: 'group.update', host: 'b', group: 'new', procs: 0 }),
    ]);
    s.takeChanges();
    return { before, after: { ...s.groups.get('svc').f }, fresh: { ...s.groups.get('new').f },
             a: { ...s.fleet.hosts.get('a').groups.get('svc').f } };
}"""


def test_a_fleets_lifecycle_flags_outlast_the_next_poll(viewer: Viewer, fake_proc: Path) -> None:
    """Lifecycle events land on their host's group, the group's total is summed from the
    hosts: the next group.update (which carries none of them) keeps them, and a flag
    that came before a group's first group.update waits for it."""
    with Served("--procfs", str(fake_proc), "--interval", "0.5") as srv:
        viewer.open(srv.url + "/")
        got = viewer.page.evaluate(FLEET_LIFECYCLE_JS)
    for total in (got["before"], got["after"]):
        assert (total["procs"], total["crashloop"], total["restarts"]) == (2, True, 1)
        assert (total["last_exit"]["pid"], total["last_exit"]["exit_class"]) == (9, "crash")
    assert got["a"]["crashloop"] is True and got["a"]["restarts"] == 1 and "last_exit" not in got["a"]
    assert got["fresh"]["missing"] is True
