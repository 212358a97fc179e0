// A fleet's hosts: the hosts table (up or down, processes, CPU, memory, last poll,
// events per second), the host filter, and the per-host breakdown of the selected
// group. Shown only when the server is a fleet aggregator.
//
// Picking a host (a row, or the filter) shows that host alone in the groups table, the
// process list and the event log; picking it again, or "All hosts", shows the fleet.

import { paintBadge, setAttr, setHidden, setText } from './dom.js';
import { NONE, fmtAge, fmtBytes, fmtInt, fmtPct, fmtPerSecond } from './format.js';
import { loadPref, savePref } from './prefs.js';
import { VirtualTable, arraySource } from './vtable.js';

const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });
// The breakdown lists the busiest hosts of a group; a fleet has more.
const BREAKDOWN_ROWS = 12;

/** A host's totals over its groups: processes, CPU % and resident memory. */
export function hostTotals(host) {
  let procs = 0;
  let cpu = 0;
  let mem = 0;
  for (const g of host.groups.values()) {
    procs += g.f.procs || 0;
    cpu += g.f.cpu_pct || 0;
    mem += g.f.mem_resident || 0;
  }
  return { procs, cpu, mem };
}

function stateOf(host) {
  if (!host.up) return { text: 'down', tone: 'bad' };
  if (host.held || !host.synced) return { text: 'syncing', tone: 'warn' };
  return { text: 'up', tone: 'ok' };
}

export class HostsView {
  /**
   * @param {import('./store.js').Store} store
   * @param {{panel: HTMLElement, scroller: HTMLElement, table: HTMLTableElement,
   *          count: HTMLElement, filter: HTMLSelectElement, empty: HTMLElement}} els
   * @param {(name: string|null) => void} onPick  show this host alone (null: all)
   */
  constructor(store, els, onPick) {
    this.store = store;
    this.els = els;
    this.onPick = onPick;
    this.items = [];
    this.totals = new Map();
    this.hostNames = '';
    this.sortedAt = -Infinity;
    const saved = loadPref('hosts.sort');
    this.sort = saved && typeof saved.col === 'string' ? saved : { col: 'name', dir: 'asc' };
    const total = (h, key) => this.totals.get(h.name)?.[key] ?? 0;
    this.columns = [
      {
        id: 'name', label: 'Host', cls: 'name', firstDir: 'asc', tip: (h) => h.name,
        value: (h) => h.name, text: (h) => h.name,
      },
      {
        id: 'state', label: 'State', firstDir: 'asc', title: 'Up, down (silent past its timeout), or syncing its state',
        value: (h) => stateOf(h).text,
        paint: (td, h, tr) => paintBadge(td, tr, 'state', stateOf(h), 'status h-'),
      },
      {
        id: 'procs', label: 'Procs', cls: 'num', firstDir: 'desc', title: 'Processes in its groups now',
        value: (h) => total(h, 'procs'), text: (h) => fmtInt(total(h, 'procs')),
      },
      {
        id: 'cpu', label: 'CPU %', cls: 'num', firstDir: 'desc', title: 'CPU of its groups; 100 % is one core',
        value: (h) => total(h, 'cpu'), text: (h) => fmtPct(total(h, 'cpu')),
      },
      {
        id: 'mem', label: 'Memory', cls: 'num', firstDir: 'desc', title: 'Resident memory of its groups',
        value: (h) => total(h, 'mem'), text: (h) => fmtBytes(total(h, 'mem')),
      },
      {
        id: 'poll', label: 'Last poll', cls: 'num', firstDir: 'asc', title: 'Time since its last poll',
        value: (h) => -(h.lastPoll ?? 0),
        text: (h, ctx) => (h.lastPoll ? fmtAge(Math.max(0, ctx.now - h.lastPoll)) : NONE),
      },
      {
        id: 'rate', label: 'Events/s', cls: 'num', firstDir: 'desc', title: 'Its events per second, over the last 5 s',
        value: (h) => h.rate.rate(performance.now()), text: (h) => fmtPerSecond(h.rate.rate(performance.now())),
      },
    ];
    if (!this.columns.some((c) => c.id === this.sort.col)) this.sort = { col: 'name', dir: 'asc' };
    this.vt = new VirtualTable({
      scroller: els.scroller,
      table: els.table,
      columns: this.columns,
      keyOf: (h) => h.name,
      navigable: true,
      sort: this.sort,
      rowClass: (h) => {
        let cls = h.up ? '' : 'gone';
        if (h.name === store.hostFilter) cls += ' selected';
        return cls.trim();
      },
      onSort: (sort) => {
        this.sort = sort;
        savePref('hosts.sort', sort);
        this.update(null, store.serverNow());
      },
      onActivate: (h) => onPick(h.name === store.hostFilter ? null : h.name),
    });
    els.filter.addEventListener('change', () => onPick(els.filter.value || null));
  }

  comparator() {
    const col = this.columns.find((c) => c.id === this.sort.col);
    const sign = this.sort.dir === 'asc' ? 1 : -1;
    return (a, b) => {
      const va = col.value(a);
      const vb = col.value(b);
      const d = typeof va === 'string' ? collator.compare(va, vb) : va - vb;
      return d * sign || collator.compare(a.name, b.name);
    };
  }

  /**
   * Bring the table up to date. The order is worked out again at most once a second
   * (rows don't jump under the pointer with every event), and at once when `changes`
   * is null (the user sorted) or hosts came or went.
   */
  update(changes, now) {
    const { store, els } = this;
    const fleet = store.fleet;
    setHidden(els.panel, !fleet);
    if (!fleet) return;
    const perf = performance.now();
    const grown = this.items.length !== fleet.hosts.size;
    if (!changes || grown || (changes.hosts && perf - this.sortedAt >= 1000)) {
      this.sortedAt = perf;
      for (const host of fleet.hosts.values()) this.totals.set(host.name, hostTotals(host));
      this.items = [...fleet.hosts.values()].sort(this.comparator());
      this.vt.setSource(arraySource(this.items));
      this.syncFilter();
    }
    const [up, down] = fleet.counts();
    setText(els.count, down ? `${fmtInt(up)} up, ${fmtInt(down)} down` : `${fmtInt(up)} up`);
    const note = this.items.length ? '' : 'No host has published to the stream yet.';
    setText(els.empty, note);
    setHidden(els.empty, !note);
    this.vt.render({ now });
  }

  /** The filter lists every host, and says which one is shown. */
  syncFilter() {
    const sel = this.els.filter;
    const names = this.items.map((h) => h.name).sort(collator.compare);
    const key = names.join('\n');
    if (key !== this.hostNames) {
      this.hostNames = key;
      const all = document.createElement('option');
      all.value = '';
      all.textContent = 'All hosts';
      const options = [all];
      for (const name of names) {
        const o = document.createElement('option');
        o.value = name;
        o.textContent = name;
        options.push(o);
      }
      sel.replaceChildren(...options);
    }
    const value = this.store.hostFilter ?? '';
    if (sel.value !== value) sel.value = value;
  }

  reveal(name) {
    if (name !== null) this.vt.reveal(name);
  }
}

/** The selected group, host by host (fleet only): processes, CPU, memory. */
export class BreakdownView {
  /**
   * @param {import('./store.js').Store} store
   * @param {{box: HTMLElement, body: HTMLTableSectionElement, note: HTMLElement}} els
   */
  constructor(store, els) {
    this.store = store;
    this.els = els;
    this.key = '';
  }

  update(group) {
    const { store, els } = this;
    const show = Boolean(store.fleet) && group !== null && store.hostFilter === null;
    setHidden(els.box, !show);
    if (!show) return;
    const rows = [];
    for (const host of store.fleet.hosts.values()) {
      const g = host.groups.get(group);
      if (g) rows.push([host, g.f]);
    }
    rows.sort((a, b) => (b[1].cpu_pct || 0) - (a[1].cpu_pct || 0) || collator.compare(a[0].name, b[0].name));
    const shown = rows.slice(0, BREAKDOWN_ROWS);
    const key = shown.map(([h, f]) => `${h.name}|${h.up}|${f.procs}|${fmtPct(f.cpu_pct || 0)}|${f.mem_resident}`).join('\n');
    if (key === this.key) return;
    this.key = key;
    const trs = shown.map(([host, f]) => {
      const tr = document.createElement('tr');
      if (!host.up) tr.className = 'gone';
      const th = document.createElement('th');
      th.scope = 'row';
      th.textContent = host.up ? host.name : `${host.name} (down)`;
      tr.append(th);
      for (const text of [fmtInt(f.procs ?? NaN), `${fmtPct(f.cpu_pct ?? NaN)} %`, fmtBytes(f.mem_resident ?? NaN)]) {
        const td = document.createElement('td');
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    els.body.replaceChildren(...trs);
    const more = rows.length - shown.length;
    setText(els.note, more > 0 ? `and ${fmtInt(more)} more hosts` : '');
    setAttr(els.note, 'aria-hidden', more > 0 ? null : 'true');
  }
}
