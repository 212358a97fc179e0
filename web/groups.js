// The groups table: one row per group with its current usage and a CPU sparkline, its
// lifecycle (expected, missing, crash loop, restarts, how its last process ended).
// Sortable by any column (header buttons), filterable by name, keyboard navigable; empty
// groups can be hidden (a choice remembered in this browser). Whatever the sort, missing
// expected groups come first, then crash-looping ones: they are what someone opening the
// page must see.
//
// Order is recomputed once per poll (on `cycle`), not per event, and not at all while
// the pointer is over the rows: rows never move under the cursor that is about to
// click them. New groups then join at the end until the order is recomputed.

import { paintBadge, setHidden, setText } from './dom.js';
import { NONE, exitStatus, fmtAge, fmtBytes, fmtClock, fmtInt, fmtPct, fmtRate } from './format.js';
import { createSparkCanvas, drawSparkline, theme } from './sparkline.js';
import { VirtualTable, arraySource } from './vtable.js';
import { loadPref, savePref } from './prefs.js';

const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });

function isEmpty(g) {
  return !g.f.procs;
}

/** 0: missing, 1: crash-looping, 2: the rest (the order the table starts with). */
function rank(g) {
  if (g.f.missing) return 0;
  return g.f.crashloop ? 1 : 2;
}

function expectation(f) {
  if (f.expected_min === null || f.expected_min === undefined) return '';
  return f.expected_max === null || f.expected_max === undefined
    ? `at least ${f.expected_min}` : `${f.expected_min} to ${f.expected_max}`;
}

/** The Status cell: {text, title, tone}. Words, not only colour. */
function status(g) {
  const f = g.f;
  const parts = [];
  if (f.missing) parts.push('missing');
  if (f.crashloop) parts.push('crash loop');
  const expected = expectation(f);
  if (!parts.length) {
    return expected
      ? { text: 'expected', title: `Expected: ${expected} processes`, tone: 'expected' }
      : { text: '', title: '', tone: '' };
  }
  let title = parts.map((p) => (p === 'missing'
    ? `Missing: ${fmtInt(f.procs ?? 0)} processes, ${expected} expected`
    : 'Crash loop: its processes keep failing and being restarted')).join('; ');
  if (f.crashloop && !f.missing && expected) title += ` (expected: ${expected})`;
  return { text: parts.join(', '), title, tone: 'alert' };
}

function lastExit(g) {
  const e = g.f.last_exit;
  if (!e) return { text: NONE, title: 'No process of this group has exited since the server started', tone: 'unknown' };
  const st = exitStatus(e);
  const [hms] = fmtClock(e.ts);
  return { text: st.text, title: `pid ${e.pid} at ${hms}: ${st.title}`, tone: st.tone };
}

function cpuTone(g) {
  const p = g.f.cpu_pct;
  if (!(p >= 0.05)) return 'zero';
  if (p >= 100) return 'hot';
  if (p >= 50) return 'warm';
  return '';
}

function fdTone(g) {
  const r = g.f.worst_fd_ratio;
  if (r >= 0.8) return 'bad';
  if (r >= 0.5) return 'warn';
  return isEmpty(g) || !(r > 0) ? 'zero' : '';
}

function zeroTone(v) {
  return v > 0 ? '' : 'zero';
}

export class GroupsView {
  /**
   * @param {import('./store.js').Store} store
   * @param {{scroller: HTMLElement, table: HTMLTableElement, filter: HTMLInputElement,
   *          hideEmpty: HTMLInputElement, count: HTMLElement, held: HTMLElement,
   *          empty: HTMLElement}} els
   * @param {(name: string|null) => void} onSelect
   */
  constructor(store, els, onSelect) {
    this.store = store;
    this.els = els;
    this.onSelect = onSelect;
    this.selected = null;
    this.filter = '';
    this.hideEmpty = loadPref('groups.hideEmpty') === true;
    this.items = [];
    this.needSort = true;
    this.hovering = false;
    const saved = loadPref('groups.sort');
    this.sort = saved && typeof saved.col === 'string' ? saved : { col: 'cpu', dir: 'desc' };

    this.columns = this.makeColumns();
    if (!this.columns.some((c) => c.id === this.sort.col)) this.sort = { col: 'cpu', dir: 'desc' };
    this.vt = new VirtualTable({
      scroller: els.scroller,
      table: els.table,
      columns: this.columns,
      keyOf: (g) => g.name,
      rowClass: (g) => {
        let cls = '';
        if (g.f.missing) cls = 'missing';
        else if (isEmpty(g)) cls = 'empty';
        if (g.f.crashloop) cls += ' crashloop';
        if (g.name === this.selected) cls += ' selected';
        return cls.trim();
      },
      navigable: true,
      sort: this.sort,
      onSort: (sort) => {
        this.sort = sort;
        savePref('groups.sort', sort);
        this.needSort = true;
        this.update(null, true);
      },
      onActivate: (g) => this.onSelect(g.name === this.selected ? null : g.name),
    });

    els.filter.addEventListener('input', () => {
      this.filter = els.filter.value.trim().toLowerCase();
      this.needSort = true;
      this.update(null, true);
    });
    els.hideEmpty.checked = this.hideEmpty;
    els.hideEmpty.addEventListener('change', () => {
      this.hideEmpty = els.hideEmpty.checked;
      savePref('groups.hideEmpty', this.hideEmpty);
      this.needSort = true;
      this.update(null, true);
    });
    // Hold the order while the pointer is over the rows (see the module comment).
    this.vt.tbody.addEventListener('pointerenter', () => {
      this.hovering = true;
    });
    this.vt.tbody.addEventListener('pointerleave', () => {
      this.hovering = false;
      if (this.needSort) this.update(null, true);
    });
  }

  makeColumns() {
    return [
      {
        id: 'name', label: 'Group', cls: 'name', firstDir: 'asc', tip: true,
        value: (g) => g.name,
        text: (g) => g.name,
      },
      {
        id: 'status', label: 'Status', cls: 'status-cell', firstDir: 'asc',
        title: 'Expected groups, and groups missing or in a crash loop (always listed first)',
        value: (g) => rank(g) * 2 + (status(g).tone === 'expected' ? 0 : 1),
        paint: (td, g, tr) => paintBadge(td, tr, 'statusKey', status(g), 'flag f-'),
      },
      {
        id: 'procs', label: 'Procs', cls: 'num', firstDir: 'desc', title: 'Processes in the group now',
        value: (g) => g.f.procs ?? null,
        text: (g) => fmtInt(g.f.procs ?? NaN),
        tone: (g) => zeroTone(g.f.procs),
      },
      {
        id: 'threads', label: 'Threads', cls: 'num', firstDir: 'desc',
        value: (g) => g.f.threads ?? null,
        text: (g) => fmtInt(g.f.threads ?? NaN),
        tone: (g) => zeroTone(g.f.threads),
      },
      {
        id: 'cpu', label: 'CPU %', cls: 'num', firstDir: 'desc',
        title: 'CPU over the last poll interval; 100 % is one core',
        value: (g) => g.f.cpu_pct ?? null,
        text: (g) => fmtPct(g.f.cpu_pct ?? NaN),
        tone: cpuTone,
      },
      {
        id: 'spark', label: 'CPU history', cls: 'sparkcell', firstDir: 'desc',
        title: 'CPU % over the last few minutes (scaled to its peak, at least 10 %); sorts by the average',
        value: (g) => (g.n ? g.sum / g.n : null),
        paint: (td, g, tr) => this.paintSpark(td, g, tr),
      },
      {
        id: 'mem', label: 'Memory', cls: 'num', firstDir: 'desc', title: 'Resident memory',
        value: (g) => g.f.mem_resident ?? null,
        text: (g) => (isEmpty(g) ? NONE : fmtBytes(g.f.mem_resident)),
        tone: (g) => (isEmpty(g) ? 'zero' : ''),
      },
      {
        id: 'read', label: 'Read/s', cls: 'num', firstDir: 'desc', title: 'Bytes read per second (storage I/O)',
        value: (g) => g.f.read_bps ?? null,
        text: (g) => fmtRate(g.f.read_bps ?? NaN),
        tone: (g) => zeroTone(g.f.read_bps),
      },
      {
        id: 'write', label: 'Write/s', cls: 'num', firstDir: 'desc', title: 'Bytes written per second (storage I/O)',
        value: (g) => g.f.write_bps ?? null,
        text: (g) => fmtRate(g.f.write_bps ?? NaN),
        tone: (g) => zeroTone(g.f.write_bps),
      },
      {
        id: 'fd', label: 'FD use', cls: 'num', firstDir: 'desc',
        title: 'Highest ratio of open file descriptors to the limit, over the group\'s processes',
        value: (g) => g.f.worst_fd_ratio ?? null,
        text: (g) => (isEmpty(g) ? NONE : `${fmtPct((g.f.worst_fd_ratio ?? NaN) * 100)} %`),
        tone: fdTone,
      },
      {
        id: 'age', label: 'Oldest', cls: 'num', firstDir: 'desc', title: 'Age of the oldest process',
        // Sorting by start time, negated: "descending" lists the oldest first.
        value: (g) => (!isEmpty(g) && g.f.oldest_start_time > 0 ? -g.f.oldest_start_time : null),
        text: (g, ctx) => (!isEmpty(g) && g.f.oldest_start_time > 0
          ? fmtAge(ctx.now - g.f.oldest_start_time) : NONE),
        tone: (g) => (isEmpty(g) ? 'zero' : ''),
      },
      {
        id: 'restarts', label: 'Restarts', cls: 'num', firstDir: 'desc',
        title: 'Processes started in place of one of the group that had just exited, since the server started',
        value: (g) => g.f.restarts ?? 0,
        text: (g) => fmtInt(g.f.restarts ?? 0),
        tone: (g) => zeroTone(g.f.restarts),
      },
      {
        id: 'exit', label: 'Last exit', cls: 'exit', firstDir: 'desc',
        title: 'How the group\'s latest process to end ended (sorts by when)',
        value: (g) => (g.f.last_exit ? g.f.last_exit.ts : null),
        paint: (td, g, tr) => paintBadge(td, tr, 'exitKey', lastExit(g), 'status s-'),
      },
    ];
  }

  paintSpark(td, g, tr) {
    let st = tr.spark;
    if (!st) {
      const canvas = createSparkCanvas();
      const label = document.createElement('span');
      label.className = 'sr-only';
      td.append(canvas, label);
      st = { canvas, label, key: null, ver: -1, theme: -1, muted: null };
      tr.spark = st;
    }
    const store = this.store;
    const muted = isEmpty(g);
    if (st.key === g.name && st.ver === store.histVersion && st.theme === theme.version && st.muted === muted) return;
    st.key = g.name;
    st.ver = store.histVersion;
    st.theme = theme.version;
    st.muted = muted;
    const { avg, peak } = drawSparkline(st.canvas, g.hist, store.histPos, muted);
    const text = Number.isNaN(avg) ? 'no samples yet' : `average ${fmtPct(avg)} %, peak ${fmtPct(peak)} %`;
    if (st.label.textContent !== text) {
      st.label.textContent = text;
      td.title = `CPU % over the last few minutes: ${text}`;
    }
  }

  matches(g) {
    // The selected group stays, even empty: its process list is open below; and a
    // missing expected group is empty by definition, and what matters most.
    if (this.hideEmpty && isEmpty(g) && !g.f.missing && g.name !== this.selected) return false;
    return !this.filter || g.name.toLowerCase().includes(this.filter);
  }

  comparator() {
    const col = this.columns.find((c) => c.id === this.sort.col);
    const sign = this.sort.dir === 'asc' ? 1 : -1;
    const value = col.value;
    return (a, b) => {
      const ra = rank(a);
      const rb = rank(b);
      if (ra !== rb) return ra - rb;
      const va = value(a);
      const vb = value(b);
      // Missing values (an empty group's age) go last in either direction.
      if (va === null || vb === null || Number.isNaN(va) || Number.isNaN(vb)) {
        const ma = va === null || Number.isNaN(va);
        const mb = vb === null || Number.isNaN(vb);
        if (ma !== mb) return ma ? 1 : -1;
      } else {
        const d = typeof va === 'string' ? collator.compare(va, vb) : va - vb;
        if (d) return d * sign;
      }
      return collator.compare(a.name, b.name);
    };
  }

  /** Recompute the order now (sort, filter, and each poll unless held). */
  resort() {
    const out = [];
    for (const g of this.store.shownGroups().values()) if (this.matches(g)) out.push(g);
    out.sort(this.comparator());
    this.setItems(out);
    this.needSort = false;
  }

  /** Keep the current order; drop what went away, append what is new. */
  patch() {
    const groups = this.store.shownGroups();
    const out = this.items.filter((g) => groups.get(g.name) === g && this.matches(g));
    const have = new Set(out.map((g) => g.name));
    for (const g of groups.values()) if (!have.has(g.name) && this.matches(g)) out.push(g);
    this.setItems(out);
  }

  setItems(items) {
    this.items = items;
    this.vt.setSource(arraySource(items));
  }

  /**
   * Bring the table up to date. `changes` is the store's (or null when only the view's
   * own settings changed); `force` re-sorts even while held (a user action).
   */
  update(changes, force = false, now = this.store.serverNow()) {
    if (changes) {
      if (changes.cycle || changes.rebuilt) this.needSort = true;
      // A group that goes empty (or gets a process again) leaves (or joins) at once.
      if (this.hideEmpty && changes.groups.size) this.needSort = true;
      if (changes.structure && !changes.rebuilt) {
        this.needSort = true;
        if (this.hovering) this.patch();
      }
    }
    if (this.needSort && (force || !this.hovering)) this.resort();
    else if (changes && changes.rebuilt) this.patch();
    setHidden(this.els.held, !(this.hovering && this.needSort));

    const total = this.store.shownGroups().size;
    const shown = this.items.length;
    setText(this.els.count, shown !== total ? `${fmtInt(shown)} of ${fmtInt(total)}` : fmtInt(total));
    let note = '';
    if (!shown) {
      if (!this.store.synced) note = 'Waiting for the first snapshot\u2026';
      else if (this.filter) note = `No group name contains \u201c${this.els.filter.value.trim()}\u201d.`;
      else if (total) note = 'Every group is empty right now (empty groups are hidden).';
      else note = 'No groups yet: no process matches the configuration.';
    }
    setText(this.els.empty, note);
    setHidden(this.els.empty, !note);
    this.vt.render({ now });
  }

  /** Highlight `name` as the selected group (null: none) and bring it into view. */
  setSelected(name, reveal = false) {
    this.selected = name;
    if (name !== null && reveal) this.vt.reveal(name);
  }
}
