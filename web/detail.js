// One process in detail, in a dialog: its numbers now and, since the dialog opened, its
// CPU and memory as sparklines; its parent and children as a small tree whose entries
// open them in turn; its cgroup and the container, pod or systemd unit that tells; its
// resource limits.
//
// The numbers come from the store (kept current by the live connection, which watches
// this process by pid while the dialog is open); the rest is read once, from
// /api/proc, when a process is opened. Everything a process supplied (names, command
// lines, cgroup paths) goes into the page as text.

import { factList, setHidden, setText } from './dom.js';
import {
  NONE, fmtAge, fmtBytes, fmtCmdline, fmtInt, fmtLifetime, fmtPct, fmtRate, stateName,
} from './format.js';
import { drawSparkline, sizeSparkCanvas, theme } from './sparkline.js';
import { procKey } from './store.js';

// Samples kept since the dialog opened (then the oldest fall out): 20 min at 1 s.
const MAX_SAMPLES = 1200;
// The sparklines show at most this many of the latest samples, one per pixel column.
const SHOWN_SAMPLES = 300;

const FACTS = [
  ['state', 'State', (p) => stateName(p.state)],
  ['cpu', 'CPU', (p) => (Number.isFinite(p.cpu_pct) ? `${fmtPct(p.cpu_pct)} %` : NONE)],
  ['cputime', 'CPU time', (p) => (Number.isFinite(p.cpu_s) ? fmtLifetime(p.cpu_s) : NONE)],
  ['mem', 'Resident memory', (p) => fmtBytes(p.mem_resident ?? NaN)],
  ['virt', 'Virtual memory', (p) => fmtBytes(p.mem_virtual ?? NaN)],
  ['swap', 'Swap', (p) => fmtBytes(p.mem_swap ?? NaN)],
  ['threads', 'Threads', (p) => fmtInt(p.threads ?? NaN)],
  ['fds', 'Open files', (p, d) => {
    if (!(p.open_fds >= 0)) return NONE;
    const limit = d?.limits?.find((l) => l.name === 'Max open files');
    return limit && limit.soft !== null ? `${fmtInt(p.open_fds)} of ${fmtInt(limit.soft)}` : fmtInt(p.open_fds);
  }],
  ['read', 'Read / s', (p) => fmtRate(p.read_bps ?? NaN)],
  ['write', 'Written / s', (p) => fmtRate(p.write_bps ?? NaN)],
  ['user', 'User', (p) => String(p.user ?? p.uid ?? NONE)],
  ['age', 'Started', (p, d, now) => `${fmtAge(now - p.start_time)} ago`],
  ['group', 'Group', (p) => String(p.group ?? NONE)],
];

const CONTAINER = [
  ['runtime', 'Runtime'],
  ['container_id', 'Container'],
  ['pod_uid', 'Kubernetes pod'],
  ['qos_class', 'QoS class'],
  ['systemd_unit', 'systemd unit'],
  ['systemd_slice', 'Slice'],
];

/** A growing series of samples, oldest first; the last SHOWN_SAMPLES are drawn. */
class Series {
  constructor() {
    this.values = [];
  }

  push(v) {
    this.values.push(Number.isFinite(v) ? v : NaN);
    if (this.values.length > MAX_SAMPLES) this.values.shift();
  }

  /** The latest samples as drawSparkline wants them (a ring whose oldest is at 0). */
  shown() {
    const tail = this.values.slice(-SHOWN_SAMPLES);
    const out = new Float32Array(Math.max(2, tail.length)).fill(NaN);
    out.set(tail, out.length - tail.length);
    return out;
  }
}

function limitValue(v, unit) {
  if (v === null || v === undefined) return 'unlimited';
  if (unit === 'bytes') return fmtBytes(v);
  return fmtInt(v);
}

export class DetailView {
  /**
   * @param {import('./store.js').Store} store
   * @param {object} o
   * @param {string|null} o.token    the page's ?token=, for /api/proc
   * @param {(pid: number|null) => void} o.onWatch  the process to watch live (null: none)
   * @param {() => void} o.onClosed  the dialog closed (put the focus back)
   */
  constructor(store, { token, onWatch, onClosed }) {
    this.store = store;
    this.token = token;
    this.onWatch = onWatch;
    this.onClosed = onClosed;
    this.dialog = document.getElementById('detail');
    this.els = {};
    for (const id of ['title', 'state', 'close', 'cmd', 'note', 'facts', 'cpu', 'mem', 'cpu-now', 'mem-now',
      'cpu-text', 'mem-text', 'tree', 'container', 'cgroups', 'limits']) {
      this.els[id] = document.getElementById(`detail-${id}`);
    }
    sizeSparkCanvas(this.els.cpu, 320, 44);
    sizeSparkCanvas(this.els.mem, 320, 44);
    this.key = null; // procKey of the process shown
    this.proc = null; // its record (the store's, or the last one seen once it exited)
    this.detail = null; // what /api/proc said
    this.request = 0;
    this.cpu = new Series();
    this.mem = new Series();
    this.drawn = -1;

    this.factCells = factList(this.els.facts, FACTS);
    this.els.close.addEventListener('click', () => this.dialog.close());
    this.dialog.addEventListener('close', () => {
      this.key = null;
      this.proc = null;
      this.request += 1; // an answer still on its way is for nobody now
      this.onWatch(null);
      this.onClosed();
    });
    // Links of the tree open another process here (a link, so it also works as one).
    this.els.tree.addEventListener('click', (e) => {
      const a = e.target.closest('a[data-pid]');
      if (!a) return;
      e.preventDefault();
      const p = this.findTracked(Number(a.dataset.pid));
      if (p) this.open(p);
    });
  }

  get isOpen() {
    return this.dialog.open;
  }

  /** The tracked process with this pid, if the store knows one. */
  findTracked(pid) {
    for (const p of this.store.procs.values()) if (p.pid === pid) return p;
    return null;
  }

  /** Show process `p` (a record of the store); the sparklines start from now. */
  open(p) {
    this.key = procKey(p);
    this.proc = p;
    this.detail = null;
    this.cpu = new Series();
    this.mem = new Series();
    this.sample();
    this.onWatch(p.pid);
    if (!this.dialog.open) this.dialog.showModal();
    this.els.close.focus();
    this.fetchDetail(p);
    this.render(this.store.serverNow(), true);
  }

  async fetchDetail(p) {
    const ticket = ++this.request;
    if (this.store.fleet) {
      // A fleet aggregator reads no host's /proc: the process's host answers for it.
      this.detail = { fleet: true, missing: 0 };
      return;
    }
    const url = new URL('api/proc', window.location.href);
    url.search = '';
    url.hash = '';
    url.searchParams.set('pid', String(p.pid));
    url.searchParams.set('start_time', String(p.start_time));
    if (this.token) url.searchParams.set('token', this.token);
    let detail;
    try {
      const r = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
      detail = r.ok ? await r.json() : { missing: r.status };
    } catch {
      detail = { missing: 0 };
    }
    if (ticket !== this.request) return; // another process was opened meanwhile
    this.detail = detail;
    this.render(this.store.serverNow(), true);
  }

  /** One sample per poll of the process's CPU and memory (the live connection's cycle). */
  sample() {
    const p = this.current();
    this.cpu.push(p && this.store.procs.has(this.key) ? p.cpu_pct : NaN);
    this.mem.push(p && this.store.procs.has(this.key) ? p.mem_resident : NaN);
    this.drawn = -1;
  }

  /** The store's record of the process, or the last one seen once it has exited. */
  current() {
    if (this.key === null) return null;
    const p = this.store.procs.get(this.key);
    if (p) this.proc = p;
    return this.proc;
  }

  render(now, full = false) {
    if (!this.dialog.open || this.key === null) return;
    const p = this.current();
    const d = this.detail;
    const gone = !this.store.procs.has(this.key);
    setText(this.els.title, `${p.name ?? '?'} (pid ${p.pid}${this.store.fleet ? ` on ${p.host}` : ''})`);
    setText(this.els.cmd, fmtCmdline(p.cmdline, p.name));
    setText(this.els.state, gone ? 'exited' : stateName(p.state));
    this.els.state.classList.toggle('gone', gone);
    setHidden(this.els.state, false);
    let note = '';
    if (gone) note = 'This process has exited; these are its last numbers.';
    else if (d && d.fleet) note = `Limits, cgroups and family are read on the host: open this process in ${p.host ?? 'its host'}'s own viewer.`;
    else if (d && d.missing !== undefined) note = d.missing === 404 ? 'The server no longer tracks this process.' : 'Its details could not be read from the server.';
    else if (d && d.errors && d.errors.length) note = `Not readable: ${d.errors.join(', ')}.`;
    setText(this.els.note, note);
    setHidden(this.els.note, !note);
    for (const [id, , fn] of FACTS) setText(this.factCells.get(id), fn(p, d, now));

    if (this.drawn !== this.cpu.values.length || full) {
      this.drawn = this.cpu.values.length;
      this.drawSeries(this.els.cpu, this.els['cpu-text'], this.els['cpu-now'], this.cpu,
        (v) => `${fmtPct(v)} %`, 'CPU', false);
      this.drawSeries(this.els.mem, this.els['mem-text'], this.els['mem-now'], this.mem, fmtBytes, 'Memory', true);
    }
    if (full) {
      this.renderTree(p, d);
      this.renderContainer(d, p);
      this.renderLimits(d);
    }
  }

  drawSeries(canvas, label, nowEl, series, fmt, what, relative) {
    const values = series.values;
    const last = values.length ? values[values.length - 1] : NaN;
    setText(nowEl, Number.isFinite(last) ? `now ${fmt(last)}` : '');
    const { avg, peak } = drawSparkline(canvas, series.shown(), 0, false, { relative });
    const n = values.filter(Number.isFinite).length;
    setText(label, Number.isNaN(avg) ? `${what}: no samples yet`
      : `${what} over ${n} polls: average ${fmt(avg)}, peak ${fmt(peak)}`);
  }

  renderTree(p, d) {
    const ul = this.els.tree;
    ul.replaceChildren();
    const item = (pid, name, group, how, aside = '') => {
      const li = document.createElement('li');
      li.className = how;
      const tracked = how !== 'self' && group !== null && this.findTracked(pid);
      const label = `${name ?? '?'} (${pid})`;
      if (tracked) {
        const a = document.createElement('a');
        a.href = `#group=${encodeURIComponent(group)}&pid=${pid}`;
        a.dataset.pid = String(pid);
        a.textContent = label;
        li.append(a);
      } else {
        const span = document.createElement('span');
        span.textContent = label;
        if (how === 'self') span.setAttribute('aria-current', 'true');
        li.append(span);
      }
      if (aside) {
        const small = document.createElement('span');
        small.className = 'aside';
        small.textContent = ` ${aside}`;
        li.append(small);
      }
      return li;
    };
    const parent = d?.parent;
    const rel = document.createElement('li');
    rel.className = 'head';
    rel.textContent = 'Parent';
    ul.append(rel);
    if (parent) {
      const aside = parent.group !== null ? '' : parent.name === null ? 'gone' : 'not tracked';
      ul.append(item(parent.pid, parent.name, parent.group, 'parent', aside));
    } else if (d && !d.missing) {
      ul.append(item(p.ppid, null, null, 'parent', 'none'));
    } else {
      ul.append(item(p.ppid, d?.fleet ? null : '\u2026', null, 'parent', d?.fleet ? `on ${p.host}` : ''));
    }
    const me = document.createElement('li');
    me.className = 'head';
    me.textContent = 'This process';
    ul.append(me, item(p.pid, p.name, p.group, 'self'));
    const kids = document.createElement('li');
    kids.className = 'head';
    const children = d?.children ?? [];
    const total = d?.children_total ?? children.length;
    kids.textContent = children.length
      ? `Children (${fmtInt(total)}${total > children.length ? `, first ${children.length}` : ''})`
      : 'Children: none tracked';
    ul.append(kids);
    for (const c of children) ul.append(item(c.pid, c.name, c.group, 'child'));
  }

  renderContainer(d, p) {
    const dl = this.els.container;
    dl.replaceChildren();
    const c = d?.container;
    let any = false;
    for (const [key, label] of CONTAINER) {
      const v = c ? c[key] : null;
      if (v === null || v === undefined) continue;
      any = true;
      const dt = document.createElement('dt');
      dt.textContent = label;
      const dd = document.createElement('dd');
      dd.textContent = key === 'container_id' && v.length > 12 ? v.slice(0, 12) : String(v);
      if (dd.textContent !== String(v)) dd.title = String(v);
      dl.append(dt, dd);
    }
    if (!any) {
      const dt = document.createElement('dt');
      dt.textContent = 'Container';
      const dd = document.createElement('dd');
      dd.textContent = d?.fleet ? `read on ${p.host}` : d ? 'none that the cgroup tells' : '\u2026';
      dl.append(dt, dd);
    }
    const ul = this.els.cgroups;
    ul.replaceChildren();
    for (const path of d?.cgroups ?? []) {
      const li = document.createElement('li');
      li.textContent = path;
      ul.append(li);
    }
  }

  renderLimits(d) {
    const body = this.els.limits.tBodies[0];
    body.replaceChildren();
    for (const l of d?.limits ?? []) {
      const tr = document.createElement('tr');
      const name = document.createElement('th');
      name.scope = 'row';
      name.textContent = l.unit ? `${l.name} (${l.unit})` : l.name;
      const soft = document.createElement('td');
      soft.className = 'num';
      soft.textContent = limitValue(l.soft, l.unit);
      const hard = document.createElement('td');
      hard.className = 'num';
      hard.textContent = limitValue(l.hard, l.unit);
      tr.append(name, soft, hard);
      body.append(tr);
    }
  }

  /** Redraw after a theme change (the canvases use the theme's colours). */
  repaint() {
    this.drawn = -1;
    if (theme && this.dialog.open) this.render(this.store.serverNow());
  }
}
