// A real <table> that only builds the rows in view (plus a margin): 2,000 groups or a
// 2,000-entry log cost a few dozen <tr>s. Two spacer rows stand in for the rest, so the
// scrollbar is true. Rows are recycled, and each cell remembers the text it shows, so a
// render writes to the DOM only the cells whose text changed.
//
// Every row has the same height: the CSS's --row-h to begin with, then what the rows
// really measure, measured again whenever the table body changes size (a reader's style
// sheet with more line spacing, a font or zoom setting that changes a line's height):
// the spacers and the scroll arithmetic depend on it.
//
// Screen readers learn a row's place in the whole table from aria-rowcount on the table
// and aria-rowindex on the rows. While the rows in the DOM start at the first row, the
// browser counts them itself, so the rows carry no aria-rowindex: a log that grows at the
// top (newest first) then costs no attribute write per row and per new entry. Scrolled
// further down, every row says where it is.
//
// Columns: {id, label, title?, cls?, firstDir?, sortable?, text(item, ctx) -> string,
// tone?(item, ctx) -> extra class, tip?: true | (item) -> string (cell tooltip),
// paint?(td, item, tr, ctx) for cells drawn by hand}. The view owns sorting and
// filtering; this class shows whatever sequence it is given, in order.

import { setAttr } from './dom.js';
import { onFrame } from './frame.js';

const NO_ROWS = { length: 0, at: () => undefined };
let tables = 0;

/** A sequence view of an array, for setSource. */
export function arraySource(items) {
  return { length: items.length, at: (i) => items[i] };
}

export class VirtualTable {
  /**
   * @param {object} o
   * @param {HTMLElement} o.scroller  the element that scrolls (contains the table)
   * @param {HTMLTableElement} o.table an empty table; thead and tbody are built here
   * @param {object[]} o.columns
   * @param {(item) => string} o.keyOf unique key of an item
   * @param {(item, ctx) => string} [o.rowClass]
   * @param {(item, how: string) => void} [o.onActivate] click, Enter or Space on a row
   * @param {boolean} [o.navigable] arrow keys move an active row (single tab stop)
   * @param {{col: string, dir: 'asc'|'desc'}} [o.sort]
   * @param {(sort) => void} [o.onSort] a header was clicked
   */
  constructor(o) {
    tables += 1;
    this.id = `vt${tables}`;
    this.scroller = o.scroller;
    this.table = o.table;
    this.columns = o.columns;
    this.keyOf = o.keyOf;
    this.rowClass = o.rowClass ?? (() => '');
    this.onActivate = o.onActivate ?? null;
    this.onSort = o.onSort ?? null;
    this.navigable = Boolean(o.navigable);
    this.sort = o.sort ?? null;
    this.overscan = o.overscan ?? 8;
    const css = getComputedStyle(document.documentElement);
    this.rowHeight = parseFloat(css.getPropertyValue('--row-h')) || 24;

    this.source = NO_ROWS;
    this.live = new Map(); // key -> tr currently in the tbody
    this.pool = []; // detached rows ready for reuse
    this.activeKey = null;
    this.first = 0;
    this.last = 0;
    this.scrollTop = 0;
    this.viewH = 0;
    this.headH = 0;
    this.ctx = {};

    this.build();
    this.rerender = () => this.render(this.ctx);
    this.scroller.addEventListener('scroll', () => {
      this.scrollTop = this.scroller.scrollTop;
      onFrame(this.rerender);
    }, { passive: true });
    const sizes = new ResizeObserver((entries) => {
      if (entries.some((e) => e.target === this.scroller)) {
        this.viewH = this.scroller.clientHeight;
        this.headH = this.thead.offsetHeight;
        onFrame(this.rerender);
      }
      this.measureRows();
    });
    sizes.observe(this.scroller);
    sizes.observe(this.tbody);
    this.sizes = sizes;
    this.clicked = (e) => this.onClick(e);
    this.tbody.addEventListener('click', this.clicked);
    if (this.navigable) {
      this.scroller.addEventListener('keydown', (e) => this.onKey(e));
      this.scroller.addEventListener('focus', () => {
        if (this.activeKey === null && this.source.length) {
          this.setActiveIndex(Math.min(this.source.length - 1, Math.ceil(this.scrollTop / this.rowHeight)));
        }
      });
    }
  }

  build() {
    const colgroup = document.createElement('colgroup');
    const tr = document.createElement('tr');
    for (const c of this.columns) {
      c.base = `c-${c.id}${c.cls ? ` ${c.cls}` : ''}`;
      const col = document.createElement('col');
      col.className = `c-${c.id}`;
      colgroup.append(col);
      const th = document.createElement('th');
      th.scope = 'col';
      th.className = c.base;
      if (c.title) th.title = c.title;
      if (c.sortable === false) {
        th.textContent = c.label;
      } else {
        const button = document.createElement('button');
        button.type = 'button';
        button.className = 'sort';
        const label = document.createElement('span');
        label.textContent = c.label;
        const arrow = document.createElement('span');
        arrow.className = 'arrow';
        arrow.setAttribute('aria-hidden', 'true');
        button.append(label, arrow);
        button.addEventListener('click', () => this.sortBy(c.id));
        th.append(button);
      }
      c.th = th;
      tr.append(th);
    }
    tr.setAttribute('aria-rowindex', '1');
    this.thead = document.createElement('thead');
    this.thead.append(tr);
    this.tbody = document.createElement('tbody');
    this.topPad = this.spacer();
    this.bottomPad = this.spacer();
    this.tbody.append(this.topPad, this.bottomPad);
    this.table.append(colgroup, this.thead, this.tbody);
    this.showSort();
  }

  /** Replace the columns (a fleet's page has more than one host's): every row is built anew. */
  setColumns(columns) {
    this.sizes.unobserve(this.tbody);
    this.columns = columns;
    this.live.clear();
    this.pool = [];
    this.first = 0;
    this.last = 0;
    this.table.replaceChildren();
    this.build();
    this.sizes.observe(this.tbody);
    this.tbody.addEventListener('click', this.clicked);
    this.headH = this.thead.offsetHeight;
    onFrame(this.rerender);
  }

  spacer() {
    const tr = document.createElement('tr');
    tr.className = 'pad';
    tr.setAttribute('aria-hidden', 'true');
    const td = document.createElement('td');
    td.colSpan = this.columns.length;
    tr.append(td);
    tr.padCell = td;
    tr.padHeight = -1;
    return tr;
  }

  /** Show a new sequence of items ({length, at(i)}); takes effect at the next render. */
  setSource(source) {
    this.source = source;
  }

  /** Click on a header: sort by it, or flip the direction if it already sorts. */
  sortBy(id) {
    const c = this.columns.find((x) => x.id === id);
    const dir = this.sort && this.sort.col === id
      ? (this.sort.dir === 'asc' ? 'desc' : 'asc')
      : (c.firstDir ?? 'asc');
    this.sort = { col: id, dir };
    this.showSort();
    if (this.onSort) this.onSort(this.sort);
  }

  showSort() {
    for (const c of this.columns) {
      const on = this.sort && this.sort.col === c.id;
      if (on) c.th.setAttribute('aria-sort', this.sort.dir === 'asc' ? 'ascending' : 'descending');
      else c.th.removeAttribute('aria-sort');
      c.th.classList.toggle('sorted', Boolean(on));
    }
  }

  /** Build, recycle and update the rows in view. `ctx` is passed to the columns. */
  render(ctx) {
    this.ctx = ctx ?? this.ctx;
    const n = this.source.length;
    const rh = this.rowHeight;
    const view = Math.max(this.viewH - this.headH, rh);
    let first = Math.max(0, Math.floor(this.scrollTop / rh) - this.overscan);
    const last = Math.min(n, Math.ceil((this.scrollTop + view) / rh) + this.overscan);
    if (first > last) first = last;
    this.first = first;
    this.last = last;
    this.setPad(this.topPad, first * rh);
    this.setPad(this.bottomPad, (n - last) * rh);

    const used = new Map();
    let cursor = this.topPad.nextSibling;
    let activeRow = null;
    for (let i = first; i < last; i += 1) {
      const item = this.source.at(i);
      const key = this.keyOf(item);
      let tr = this.live.get(key);
      if (tr) {
        this.live.delete(key);
      } else {
        tr = this.pool.pop() ?? this.createRow();
        tr.key = key;
        tr.texts.fill(undefined);
        tr.tones.fill(undefined);
        tr.cls = undefined;
      }
      tr.item = item;
      const rowIndex = first > 0 ? i + 2 : 0; // the header row is row 1; 0: none needed
      if (tr.rowIndex1 !== rowIndex) {
        tr.rowIndex1 = rowIndex;
        if (rowIndex) tr.setAttribute('aria-rowindex', String(rowIndex));
        else tr.removeAttribute('aria-rowindex');
      }
      this.updateRow(tr, item);
      if (key === this.activeKey) activeRow = tr;
      used.set(key, tr);
      if (tr !== cursor) this.tbody.insertBefore(tr, cursor);
      else cursor = cursor.nextSibling;
    }
    for (const tr of this.live.values()) {
      tr.remove();
      if (tr.id) tr.removeAttribute('id');
      this.pool.push(tr);
    }
    this.live = used;
    setAttr(this.table, 'aria-rowcount', String(n + 1));
    this.showActive(activeRow);
  }

  /**
   * Measure the rows in the DOM (their mean height, so that a row rounded a fraction of
   * a pixel up or down does not skew it). When it differs from the height the spacers
   * assume, adopt it and render again, keeping the row at the top of the view in place.
   */
  measureRows() {
    const n = this.live.size;
    if (!n) return;
    const top = this.topPad.nextSibling.getBoundingClientRect().top;
    const bottom = this.bottomPad.previousSibling.getBoundingClientRect().bottom;
    const h = (bottom - top) / n;
    if (!(h > 0) || Math.abs(h - this.rowHeight) < 0.01) return;
    this.scrollTop = (this.scrollTop / this.rowHeight) * h;
    this.rowHeight = h;
    // Spacers first: the content must be tall enough for the new scroll position.
    this.render(this.ctx);
    this.scroller.scrollTop = this.scrollTop;
    this.scrollTop = this.scroller.scrollTop;
  }

  setPad(tr, px) {
    if (tr.padHeight === px) return;
    tr.padHeight = px;
    tr.padCell.style.height = `${px}px`;
    tr.hidden = px === 0;
  }

  createRow() {
    const tr = document.createElement('tr');
    for (const c of this.columns) {
      const td = document.createElement('td');
      td.className = c.base;
      tr.append(td);
    }
    tr.texts = new Array(this.columns.length);
    tr.tones = new Array(this.columns.length);
    tr.cls = undefined;
    tr.key = undefined;
    tr.rowIndex1 = 0;
    return tr;
  }

  updateRow(tr, item) {
    const ctx = this.ctx;
    const cols = this.columns;
    const cells = tr.cells;
    for (let i = 0; i < cols.length; i += 1) {
      const c = cols[i];
      const td = cells[i];
      if (c.paint) {
        c.paint(td, item, tr, ctx);
      } else {
        const text = c.text(item, ctx);
        if (tr.texts[i] !== text) {
          tr.texts[i] = text;
          td.textContent = text;
          if (c.tip) td.title = c.tip === true ? text : c.tip(item);
        }
      }
      if (c.tone) {
        const tone = c.tone(item, ctx);
        if (tr.tones[i] !== tone) {
          tr.tones[i] = tone;
          td.className = tone ? `${c.base} ${tone}` : c.base;
        }
      }
    }
    let cls = this.rowClass(item, ctx);
    if (tr.key === this.activeKey) cls = cls ? `${cls} active` : 'active';
    if (tr.cls !== cls) {
      tr.cls = cls;
      tr.className = cls;
    }
  }

  // -- rows: click and keyboard -------------------------------------------------------

  onClick(e) {
    const tr = e.target.closest('tr');
    if (!tr || tr.parentNode !== this.tbody || tr.key === undefined || tr.classList.contains('pad')) return;
    if (this.navigable) {
      this.activeKey = tr.key;
      // Keep the keyboard where the user is now working, without a scroll jump.
      if (document.activeElement !== this.scroller) this.scroller.focus({ preventScroll: true });
      onFrame(this.rerender);
    }
    if (this.onActivate) this.onActivate(tr.item, 'click');
  }

  indexOfKey(key) {
    if (key === null) return -1;
    for (let i = 0; i < this.source.length; i += 1) {
      if (this.keyOf(this.source.at(i)) === key) return i;
    }
    return -1;
  }

  onKey(e) {
    if (e.altKey || e.ctrlKey || e.metaKey || e.target !== this.scroller) return;
    const n = this.source.length;
    if (!n) return;
    let i = this.indexOfKey(this.activeKey);
    const page = Math.max(1, Math.floor((this.viewH - this.headH) / this.rowHeight) - 1);
    const top = Math.min(n - 1, Math.ceil(this.scrollTop / this.rowHeight));
    switch (e.key) {
      case 'ArrowDown':
        i = i < 0 ? top : i + 1;
        break;
      case 'ArrowUp':
        i = i < 0 ? top : i - 1;
        break;
      case 'PageDown':
        i = i < 0 ? top : i + page;
        break;
      case 'PageUp':
        i = i < 0 ? top : i - page;
        break;
      case 'Home':
        i = 0;
        break;
      case 'End':
        i = n - 1;
        break;
      case 'Enter':
      case ' ':
        e.preventDefault();
        if (i >= 0 && this.onActivate) this.onActivate(this.source.at(i), 'key');
        return;
      default:
        return;
    }
    e.preventDefault();
    this.setActiveIndex(Math.max(0, Math.min(n - 1, i)));
  }

  setActiveIndex(i) {
    const item = this.source.at(i);
    if (item === undefined) return;
    this.activeKey = this.keyOf(item);
    this.ensureVisible(i);
    this.render(this.ctx);
  }

  /** Make item `key` the active row and scroll it into view (selection from elsewhere). */
  reveal(key) {
    const i = this.indexOfKey(key);
    if (i < 0) return false;
    if (this.navigable) this.activeKey = key;
    this.ensureVisible(i, true);
    onFrame(this.rerender);
    return true;
  }

  ensureVisible(i, center = false) {
    const rh = this.rowHeight;
    const view = Math.max(rh, this.viewH - this.headH);
    const top = i * rh;
    let target = this.scrollTop;
    if (center && (top < this.scrollTop || top + rh > this.scrollTop + view)) target = top - (view - rh) / 2;
    else if (top < this.scrollTop) target = top;
    else if (top + rh > this.scrollTop + view) target = top + rh - view;
    target = Math.max(0, target);
    if (target !== this.scrollTop) {
      this.scroller.scrollTop = target;
      this.scrollTop = this.scroller.scrollTop;
    }
  }

  showActive(tr) {
    if (!this.navigable) return;
    const id = `${this.id}-active`;
    const old = this.activeRow;
    if (old && old !== tr && old.id === id) old.removeAttribute('id');
    this.activeRow = tr;
    if (tr && tr.id !== id) tr.id = id;
    setAttr(this.scroller, 'aria-activedescendant', tr ? id : null);
  }
}
