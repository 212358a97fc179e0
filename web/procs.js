// The processes of the selected group, kept live from proc.start / proc.exit, with the
// group's less common counters (states, fds, swap, faults, ...) above the list.

import { setHidden, setText } from './dom.js';
import { NONE, fmtAge, fmtBytes, fmtCmdline, fmtInt, fmtLifetime } from './format.js';
import { procKey } from './store.js';
import { VirtualTable, arraySource } from './vtable.js';
import { loadPref, savePref } from './prefs.js';

const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });
// A process that started this recently is highlighted briefly.
const FRESH_MS = 2500;

const STATE_LETTERS = [
  ['running', 'R'], ['sleeping', 'S'], ['waiting', 'D'], ['zombie', 'Z'], ['other', '?'],
];

function seconds(v) {
  return Number.isFinite(v) ? fmtLifetime(v) : NONE;
}

const FACTS = [
  ['states', 'Threads by state', (f) => {
    const s = f.states;
    if (!s) return NONE;
    return STATE_LETTERS.filter(([k]) => s[k]).map(([k, l]) => `${l} ${fmtInt(s[k])}`).join('  ') || '0';
  }],
  ['fds', 'Open files', (f) => fmtInt(f.open_fds ?? NaN)],
  ['virt', 'Virtual memory', (f) => fmtBytes(f.mem_virtual ?? NaN)],
  ['swap', 'Swap', (f) => fmtBytes(f.mem_swap ?? NaN)],
  ['cpu', 'CPU time (user / system)', (f) => `${seconds(f.cpu_user_s)} / ${seconds(f.cpu_system_s)}`],
  ['io', 'Read / written', (f) => `${fmtBytes(f.read_bytes ?? NaN)} / ${fmtBytes(f.write_bytes ?? NaN)}`],
  ['faults', 'Page faults (major / minor)', (f) => `${fmtInt(f.major_faults ?? NaN)} / ${fmtInt(f.minor_faults ?? NaN)}`],
  ['ctx', 'Context switches (vol. / invol.)', (f) => `${fmtInt(f.ctx_voluntary ?? NaN)} / ${fmtInt(f.ctx_nonvoluntary ?? NaN)}`],
];

export class ProcsView {
  /**
   * @param {import('./store.js').Store} store
   * @param {{panel: HTMLElement, group: HTMLElement, count: HTMLElement, close: HTMLElement,
   *          facts: HTMLElement, scroller: HTMLElement, table: HTMLTableElement,
   *          empty: HTMLElement}} els
   * @param {() => void} onClose
   */
  constructor(store, els, onClose) {
    this.store = store;
    this.els = els;
    this.group = null;
    this.items = [];
    this.needList = true;
    const saved = loadPref('procs.sort');
    this.sort = saved && typeof saved.col === 'string' ? saved : { col: 'pid', dir: 'asc' };

    this.columns = [
      {
        id: 'pid', label: 'PID', cls: 'num', firstDir: 'asc',
        value: (p) => p.pid, text: (p) => String(p.pid),
      },
      {
        id: 'name', label: 'Name', cls: 'name', firstDir: 'asc', tip: true,
        value: (p) => String(p.name ?? ''), text: (p) => String(p.name ?? ''),
      },
      {
        id: 'user', label: 'User', firstDir: 'asc', tip: true,
        value: (p) => String(p.user ?? p.uid ?? ''), text: (p) => String(p.user ?? p.uid ?? NONE),
      },
      {
        id: 'age', label: 'Age', cls: 'num', firstDir: 'desc', title: 'Time since the process started',
        value: (p) => -p.start_time, text: (p, ctx) => fmtAge(ctx.now - p.start_time),
      },
      {
        id: 'cmd', label: 'Command line', cls: 'cmd', firstDir: 'asc', tip: true,
        value: (p) => fmtCmdline(p.cmdline, p.name), text: (p) => fmtCmdline(p.cmdline, p.name),
      },
      {
        // a fleet's only (hidden otherwise); last, so a host's columns keep their places
        id: 'host', label: 'Host', cls: 'name', firstDir: 'asc', tip: true,
        value: (p) => String(p.host ?? ''), text: (p) => String(p.host ?? ''),
      },
    ];
    if (!this.columns.some((c) => c.id === this.sort.col)) this.sort = { col: 'pid', dir: 'asc' };

    this.vt = new VirtualTable({
      scroller: els.scroller,
      table: els.table,
      columns: this.columns,
      keyOf: procKey,
      rowClass: (p, ctx) => (p.seenAt && ctx.perf - p.seenAt < FRESH_MS ? 'fresh' : ''),
      sort: this.sort,
      onSort: (sort) => {
        this.sort = sort;
        savePref('procs.sort', sort);
        this.needList = true;
        this.update(null);
      },
    });
    els.close.addEventListener('click', () => onClose());

    this.factCells = new Map();
    const dl = els.facts;
    for (const [id, label] of FACTS) {
      const div = document.createElement('div');
      const dt = document.createElement('dt');
      dt.textContent = label;
      const dd = document.createElement('dd');
      dd.dataset.fact = id;
      div.append(dt, dd);
      dl.append(div);
      this.factCells.set(id, dd);
    }
  }

  /** Show the processes of `name` (null: none selected). */
  show(name) {
    this.group = name;
    this.needList = true;
    this.els.panel.classList.toggle('has-group', name !== null);
    this.els.group.textContent = name ?? '';
    this.els.group.title = name ?? '';
    this.vt.scroller.scrollTop = 0;
    this.vt.scrollTop = 0;
  }

  comparator() {
    const col = this.columns.find((c) => c.id === this.sort.col);
    const sign = this.sort.dir === 'asc' ? 1 : -1;
    return (a, b) => {
      const va = col.value(a);
      const vb = col.value(b);
      const d = typeof va === 'string' ? collator.compare(va, vb) : va - vb;
      return d * sign || a.pid - b.pid || collator.compare(String(a.host ?? ''), String(b.host ?? ''));
    };
  }

  update(changes, now = this.store.serverNow()) {
    const name = this.group;
    const store = this.store;
    if (changes && name !== null && (changes.rebuilt || changes.members.has(name))) this.needList = true;
    if (this.needList) {
      this.needList = false;
      const members = name === null ? null : store.members.get(name);
      const host = store.hostFilter;
      const all = members ? [...members.values()] : [];
      this.items = (host === null ? all : all.filter((p) => p.host === host)).sort(this.comparator());
      this.vt.setSource(arraySource(this.items));
    }
    const g = name === null ? null : store.shownGroups().get(name);
    setText(this.els.count, name === null ? '' : fmtInt(this.items.length));
    if (g && (!changes || changes.groups.has(name) || changes.rebuilt || this.lastFacts !== g)) {
      this.lastFacts = g;
      for (const [id, , fn] of FACTS) {
        setText(this.factCells.get(id), fn(g.f));
      }
    }
    setHidden(this.els.facts, !g);

    let note = '';
    if (name === null) note = 'Select a group (click it, or Enter on it) to list its processes.';
    else if (!g && store.hostFilter !== null) note = `Host ${store.hostFilter} has no such group.`;
    else if (!g) note = 'This group is not reported by the server any more.';
    else if (!this.items.length) note = 'No processes in this group right now.';
    setText(this.els.empty, note);
    setHidden(this.els.empty, !note);
    this.vt.render({ now, perf: performance.now() });
  }
}
