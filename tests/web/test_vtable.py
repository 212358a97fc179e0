"""The virtual table (``web/vtable.js``) on its own, in the viewer's page: where screen
readers are told each row is, and rows whose height changes after the first render.

Each test builds a table of 500 numbers over the page (the viewer's own tables stay
where they are) and drives it from the page's JavaScript.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.served import Served
from tests.web.page import Viewer

N = 500

# Defines window.vt: a VirtualTable of the numbers 0..N-1 in a 600x300 box, and
# window.frames(n): a promise of n animation frames later.
SETUP_JS = """async (n) => {
    const { VirtualTable, arraySource } = await import('/vtable.js');
    const box = document.createElement('div');
    box.className = 'scroll';
    box.id = 'vt-test';
    Object.assign(box.style, { position: 'fixed', left: '0', top: '0', width: '600px', height: '300px',
                               zIndex: '10', background: 'Canvas' });
    const table = document.createElement('table');
    table.className = 'data';
    box.append(table);
    document.body.append(box);
    window.items = Array.from({ length: n }, (_, i) => i);
    window.vt = new VirtualTable({
        scroller: box, table, keyOf: (x) => x,
        columns: [{ id: 'n', label: 'N', sortable: false, text: (x) => String(x) }],
    });
    window.show = () => { vt.setSource(arraySource(items)); vt.render({}); };
    window.frames = (k) => new Promise((done) => {
        const step = () => (k-- > 0 ? requestAnimationFrame(step) : done());
        step();
    });
    show();
    await frames(2);
}"""

# The rows in the DOM: the number each shows and its aria-rowindex (null: none).
ROWS_JS = """() => [...vt.tbody.querySelectorAll('tr:not(.pad)')].map((tr) => [
    Number(tr.cells[0].textContent), tr.getAttribute('aria-rowindex')])"""


@pytest.fixture
def table(viewer: Viewer, fake_proc: Path) -> Any:
    """The page, with ``window.vt`` set up."""
    with Served("--procfs", str(fake_proc), "--interval", "0.5") as srv:
        viewer.open(srv.url + "/")
        viewer.page.evaluate(SETUP_JS, N)
        yield viewer.page


def scroll_to_row(page: Any, i: int) -> None:
    page.evaluate("async (i) => { vt.scroller.scrollTop = i * vt.rowHeight; await frames(2); }", i)


def test_rows_say_their_place_when_rows_before_them_are_missing(table: Any) -> None:
    page = table
    assert page.get_attribute("#vt-test table", "aria-rowcount") == str(N + 1)  # + the header
    # From the first row on, the browser counts the rows in the DOM itself: no attribute.
    rows = page.evaluate(ROWS_JS)
    assert 0 < len(rows) < N and [n for n, _ in rows] == list(range(len(rows)))
    assert {index for _, index in rows} == {None}

    # New items on top (a log, newest first) cost no aria-rowindex write at all there.
    writes = page.evaluate(
        """async () => {
        let writes = 0;
        const seen = new MutationObserver((records) => { writes += records.length; });
        seen.observe(vt.table, { subtree: true, attributes: true, attributeFilter: ['aria-rowindex'] });
        for (let k = 0; k < 20; k += 1) {
            items.unshift(-1 - k);
            show();
            await frames(1);
        }
        await frames(1);
        seen.disconnect();
        return writes + seen.takeRecords().length;
    }"""
    )
    assert writes == 0
    assert page.evaluate(ROWS_JS)[0] == [-20, None]

    # Scrolled down, each row carries its index in the whole table (header = 1).
    scroll_to_row(page, 200)
    rows = page.evaluate(ROWS_JS)
    items = page.evaluate("items")
    assert rows and {index for _, index in rows} != {None}
    assert [int(index) for _, index in rows] == [items.index(n) + 2 for n, _ in rows]
    assert rows[0][1] != "2"
    # ... and says so again when items arrive on top and every row moves down one.
    page.evaluate("async () => { items.unshift(-100); show(); await frames(1); }")
    items = page.evaluate("items")
    rows = page.evaluate(ROWS_JS)
    assert [int(index) for _, index in rows] == [items.index(n) + 2 for n, _ in rows]

    # Back at the top, the attributes go again.
    scroll_to_row(page, 0)
    assert {index for _, index in page.evaluate(ROWS_JS)} == {None}


# The number in the row under the top edge of the scroller, below the header.
TOP_ROW_JS = """() => {
    const box = vt.scroller.getBoundingClientRect();
    const at = document.elementFromPoint(box.left + 20, box.top + vt.thead.offsetHeight + 2);
    return Number(at.closest('tr').cells[0].textContent);
}"""


def test_rows_are_measured_again_when_their_height_changes(table: Any) -> None:
    page = table
    first = page.evaluate("vt.rowHeight")
    assert first == page.evaluate("vt.tbody.querySelector('tr:not(.pad)').getBoundingClientRect().height")
    scroll_to_row(page, 300)
    assert page.evaluate(TOP_ROW_JS) == 300

    # More line spacing, as a reader's style sheet would set (WCAG 1.4.12), after the
    # table was drawn: the spacers follow the rows' new height, so the view stays on
    # the same row and the scrollbar still spans every row.
    page.evaluate(
        """async () => {
        const sheet = [...document.styleSheets].find((s) => s.href && s.href.endsWith('/style.css'));
        window.spacing = sheet.insertRule('#vt-test td { line-height: 40px !important; }', sheet.cssRules.length);
        await frames(3);
    }"""
    )
    taller = page.evaluate("vt.tbody.querySelector('tr:not(.pad)').getBoundingClientRect().height")
    assert taller > first + 10
    assert page.evaluate("vt.rowHeight") == pytest.approx(taller, abs=0.01)
    assert page.evaluate(TOP_ROW_JS) == 300
    assert page.evaluate("vt.tbody.getBoundingClientRect().height") == pytest.approx(N * taller, abs=1)
    scroll_to_row(page, 450)
    assert page.evaluate(TOP_ROW_JS) == 450

    # And back.
    page.evaluate(
        """async () => {
        const sheet = [...document.styleSheets].find((s) => s.href && s.href.endsWith('/style.css'));
        sheet.deleteRule(window.spacing);
        await frames(3);
    }"""
    )
    assert page.evaluate("vt.rowHeight") == pytest.approx(first, abs=0.01)
    assert page.evaluate(TOP_ROW_JS) == 450
