// The processes of the selected group, kept live: the list from proc.start / proc.exit,
// each process's numbers (CPU, memory, state, fds, I/O) from the live connection
// (live.js). The group's less common counters (states, fds, swap, faults, ...) are above
// the list. Sortable by any column; Enter or a click on a process shows it in detail.
//
// Like the groups table, the order is recomputed once per poll, and not while the
// pointer is over the rows.

import { factList, setHidden, setText } from './dom.js';
import {
  NONE, fmtAge, fmtBytes, fmtCmdline, fmtInt, fmtLifetime, fmtPct, fmtRate, stateName,
} from './format.js';
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

/** A number field of a process, or null when the process has none (yet). */
function num(p, field) {
  const v = p[field];
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function zeroTone(v) {
  return v > 0 ? '' : 'zero';
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
   * @param {(p: object) => void} onOpen  show a process in detail
   */
  constructor(store, els, onClose, onOpen) {
    this.store = store;
    this.els = els;
    this.group = null;
    this.items = [];
    this.needList = true;
    this.needSort = false;
    this.hovering = false;
    const saved = loadPref('procs.sort');
    this.sort = saved && typeof saved.col === 'string' ? saved : { col: 'pid', dir: 'asc' };

    this.fleet = false; // a fleet's page: a host column too
    this.columns = this.makeColumns();
    if (!this.columns.some((c) => c.id === this.sort.col)) this.sort = { col: 'pid', dir: 'asc' };

    this.vt = new VirtualTable({
      scroller: els.scroller,
      table: els.table,
      columns: this.columns,
      keyOf: procKey,
      rowClass: (p, ctx) => (p.seenAt && ctx.perf - p.seenAt < FRESH_MS ? 'fresh' : ''),
      navigable: true,
      sort: this.sort,
      onSort: (sort) => {
        this.sort = sort;
        savePref('procs.sort', sort);
        this.needList = true;
        this.update(null);
      },
      onActivate: (p) => onOpen(p),
    });
    els.close.addEventListener('click', () => onClose());
    this.vt.tbody.addEventListener('pointerenter', () => {
      this.hovering = true;
    });
    this.vt.tbody.addEventListener('pointerleave', () => {
      this.hovering = false;
      if (this.needSort) this.update(null);
    });

    this.factCells = factList(els.facts, FACTS);
  }

  /** A fleet's page (or a single host's again): with a host column, or without. */
  setFleet(fleet) {
    if (fleet === this.fleet) return;
    this.fleet = fleet;
    this.columns = this.makeColumns();
    if (!this.columns.some((c) => c.id === this.sort.col)) this.sort = { col: 'pid', dir: 'asc' };
    this.vt.sort = this.sort;
    this.vt.setColumns(this.columns);
    this.needList = true;
  }

  makeColumns() {
    const columns = [
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
        id: 'state', label: 'State', cls: 'state', firstDir: 'asc',
        title: 'R running, S sleeping, D waiting (uninterruptible), Z zombie, T stopped, I idle',
        value: (p) => (typeof p.state === 'string' && p.state ? p.state : null),
        text: (p) => (typeof p.state === 'string' && p.state ? p.state : NONE),
        tip: (p) => stateName(p.state),
        tone: (p) => (p.state === 'D' || p.state === 'Z' ? 'warn' : p.state === 'R' ? '' : 'zero'),
      },
      {
        id: 'cpu', label: 'CPU %', cls: 'num', firstDir: 'desc',
        title: 'CPU over the last poll interval; 100 % is one core',
        value: (p) => num(p, 'cpu_pct'),
        text: (p) => fmtPct(num(p, 'cpu_pct') ?? NaN),
        tone: (p) => {
          const v = num(p, 'cpu_pct');
          if (!(v >= 0.05)) return 'zero';
          return v >= 100 ? 'hot' : v >= 50 ? 'warm' : '';
        },
      },
      {
        id: 'cputime', label: 'CPU time', cls: 'num', firstDir: 'desc', title: 'CPU used since it started (user + system)',
        value: (p) => num(p, 'cpu_s'),
        text: (p) => seconds(num(p, 'cpu_s') ?? NaN),
      },
      {
        id: 'mem', label: 'Memory', cls: 'num', firstDir: 'desc', title: 'Resident memory',
        value: (p) => num(p, 'mem_resident'),
        text: (p) => fmtBytes(num(p, 'mem_resident') ?? NaN),
      },
      {
        id: 'virt', label: 'Virtual', cls: 'num', firstDir: 'desc', title: 'Virtual memory',
        value: (p) => num(p, 'mem_virtual'),
        text: (p) => fmtBytes(num(p, 'mem_virtual') ?? NaN),
      },
      {
        id: 'swap', label: 'Swap', cls: 'num', firstDir: 'desc', title: 'Swapped out',
        value: (p) => num(p, 'mem_swap'),
        text: (p) => fmtBytes(num(p, 'mem_swap') ?? NaN),
        tone: (p) => zeroTone(num(p, 'mem_swap')),
      },
      {
        id: 'threads', label: 'Threads', cls: 'num', firstDir: 'desc',
        value: (p) => num(p, 'threads'),
        text: (p) => fmtInt(num(p, 'threads') ?? NaN),
      },
      {
        id: 'fds', label: 'FDs', cls: 'num', firstDir: 'desc', title: 'Open file descriptors',
        value: (p) => num(p, 'open_fds'),
        text: (p) => {
          const v = num(p, 'open_fds');
          return v === null || v < 0 ? NONE : fmtInt(v);
        },
      },
      {
        id: 'fdpct', label: 'FD use', cls: 'num', firstDir: 'desc',
        title: 'Open file descriptors over the limit on them',
        value: (p) => num(p, 'fd_ratio'),
        text: (p) => {
          const v = num(p, 'fd_ratio');
          return v === null || !(v > 0) ? NONE : `${fmtPct(v * 100)} %`;
        },
        tone: (p) => {
          const v = num(p, 'fd_ratio');
          return v >= 0.8 ? 'bad' : v >= 0.5 ? 'warn' : v > 0 ? '' : 'zero';
        },
      },
      {
        id: 'read', label: 'Read/s', cls: 'num', firstDir: 'desc', title: 'Bytes read per second (storage I/O)',
        value: (p) => num(p, 'read_bps'),
        text: (p) => fmtRate(num(p, 'read_bps') ?? NaN),
        tone: (p) => zeroTone(num(p, 'read_bps')),
      },
      {
        id: 'write', label: 'Write/s', cls: 'num', firstDir: 'desc', title: 'Bytes written per second (storage I/O)',
        value: (p) => num(p, 'write_bps'),
        text: (p) => fmtRate(num(p, 'write_bps') ?? NaN),
        tone: (p) => zeroTone(num(p, 'write_bps')),
      },
      {
        id: 'age', label: 'Age', cls: 'num', firstDir: 'desc', title: 'Time since the process started',
        value: (p) => -p.start_time, text: (p, ctx) => fmtAge(ctx.now - p.start_time),
      },
      {
        id: 'cmd', label: 'Command line', cls: 'cmd', firstDir: 'asc', tip: true,
        value: (p) => fmtCmdline(p.cmdline, p.name), text: (p) => fmtCmdline(p.cmdline, p.name),
      },
    ];
    if (this.fleet) {
      // last, so the other columns keep their places
      columns.push({
        id: 'host', label: 'Host', cls: 'name', firstDir: 'asc', tip: true,
        value: (p) => String(p.host ?? ''), text: (p) => String(p.host ?? ''),
      });
    }
    return columns;
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
    this.vt.activeKey = null;
  }

  comparator() {
    const col = this.columns.find((c) => c.id === this.sort.col);
    const sign = this.sort.dir === 'asc' ? 1 : -1;
    const value = col.value;
    return (a, b) => {
      const va = value(a);
      const vb = value(b);
      // Missing values (a process no poll has read yet) go last in either direction.
      if (va === null || vb === null) {
        if ((va === null) !== (vb === null)) return va === null ? 1 : -1;
      } else {
        const d = typeof va === 'string' ? collator.compare(va, vb) : va - vb;
        if (d) return d * sign;
      }
      return a.pid - b.pid || collator.compare(String(a.host ?? ''), String(b.host ?? ''));
    };
  }

  /**
   * Bring the list up to date. `liveCycle`: a poll's numbers are all in (the order may
   * change now); otherwise a change of numbers only repaints the cells.
   */
  update(changes, now = this.store.serverNow(), liveCycle = false) {
    const name = this.group;
    const store = this.store;
    if (changes && name !== null && (changes.rebuilt || changes.members.has(name))) this.needList = true;
    if (liveCycle && name !== null) this.needSort = true;
    if (this.needList) {
      this.needList = false;
      this.needSort = false;
      const members = name === null ? null : store.members.get(name);
      const host = store.hostFilter;
      const all = members ? [...members.values()] : [];
      this.items = (host === null ? all : all.filter((p) => p.host === host)).sort(this.comparator());
      this.vt.setSource(arraySource(this.items));
    } else if (this.needSort && !this.hovering) {
      this.needSort = false;
      this.items.sort(this.comparator());
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
