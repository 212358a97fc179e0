// The event log: process starts and exits and the groups' lifecycle (missing, recovered,
// crash loop, stable), newest first, with the viewer's own notes (connection lost,
// resynchronised). Bounded by the store (LOG_LIMIT entries), pausable, filterable by
// type and group. A non-zero exit or a signal stands out, an OOM kill most; a start that
// replaces a process that had just exited is a restart.
// Arrow keys move in it and Enter (or a click) on an event shows the event's group.
//
// Pause is a toggle button whose name stays "Pause" (aria-pressed says whether it is
// on); the count of events held back is shown beside it and describes it.
//
// While the user has scrolled down to read, new entries arriving on top do not push
// the rows they are reading: the scroll position moves with them.

import { paintBadge, setAttr, setHidden, setText } from './dom.js';
import { NONE, exitStatus, fmtClock, fmtCmdline, fmtInt, fmtLifetime, fmtRestart, lifeText } from './format.js';
import { LOG_LIMIT } from './store.js';
import { VirtualTable, arraySource } from './vtable.js';

const NOTE_SPAN = 5; // a note's text spans group, pid, name, lifetime and exit
const LIFE_SPAN = 4; // a lifecycle event's detail spans pid, name, lifetime and exit

// A lifecycle event's badge, and whether it is bad news.
const LIFE = {
  'group.missing': ['missing', 'bad'],
  'group.recovered': ['recovered', 'ok'],
  'group.crashloop': ['crash loop', 'bad'],
  'group.stable': ['stable', 'ok'],
};

function kindText(e) {
  if (e.kind === 'note') return 'note';
  if (e.kind === 'life') return LIFE[e.ev.type][0];
  if (e.synthetic) return e.kind === 'start' ? 'found' : 'gone';
  if (e.kind === 'start' && e.ev.restart_of) return 'restart';
  return e.kind;
}

function kindTitle(e) {
  if (e.kind === 'note') return 'A note from the viewer';
  if (e.kind === 'life') return `The group ${lifeText(e.ev)}`;
  if (e.kind === 'start' && !e.synthetic && e.ev.restart_of) {
    return `Process restarted, in place of ${fmtRestart(e.ev.restart_of)}`;
  }
  if (!e.synthetic) return e.kind === 'start' ? 'Process started' : 'Process exited';
  return e.kind === 'start'
    ? 'Started while the viewer was not listening: found in the snapshot after resynchronising'
    : 'Ended while the viewer was not listening: missing from the snapshot after resynchronising';
}

/** "problem": a non-zero exit status, a signal, an OOM kill, a group missing or crash-looping. */
function isProblem(e) {
  if (e.kind === 'life') return LIFE[e.ev.type][1] === 'bad';
  if (e.kind !== 'exit' || e.synthetic) return false;
  const tone = exitStatus(e.ev).tone;
  return tone === 'bad' || tone === 'warn' || tone === 'oom';
}

export class LogView {
  /**
   * @param {import('./store.js').Store} store
   * @param {{scroller: HTMLElement, table: HTMLTableElement, type: HTMLSelectElement,
   *          group: HTMLInputElement, pause: HTMLButtonElement, fresh: HTMLElement,
   *          count: HTMLElement, empty: HTMLElement}} els
   * @param {(group: string) => void} onPick  a row was clicked or Entered: show its group
   */
  constructor(store, els, onPick) {
    this.store = store;
    this.els = els;
    this.type = els.type.value || 'all';
    this.groupFilter = '';
    this.paused = false;
    this.frozen = null; // entries newest first, at the moment of pausing
    this.newWhilePaused = 0;
    this.needList = true;
    const ring = store.log;
    this.ringSource = {
      get length() {
        return ring.length;
      },
      at: (i) => ring.newest(i),
    };

    const columns = [
      {
        id: 'time', label: 'Time', sortable: false,
        paint: (td, e, tr) => {
          const [hms, ms] = fmtClock(e.ts);
          if (!tr.clock) {
            const a = document.createElement('span');
            const b = document.createElement('span');
            b.className = 'ms';
            td.append(a, b);
            tr.clock = [a, b];
          }
          if (tr.clock[0].textContent !== hms) tr.clock[0].textContent = hms;
          if (tr.clock[1].textContent !== ms) tr.clock[1].textContent = ms;
        },
      },
      {
        id: 'kind', label: 'Event', sortable: false,
        paint: (td, e, tr) => {
          const text = kindText(e);
          if (tr.kindText === text) return;
          tr.kindText = text;
          if (!tr.badge) {
            tr.badge = document.createElement('span');
            td.append(tr.badge);
          }
          tr.badge.textContent = text;
          tr.badge.className = `badge b-${text.replaceAll(' ', '-')}`;
          td.title = kindTitle(e);
        },
      },
      {
        id: 'group', label: 'Group', sortable: false, cls: 'name',
        paint: (td, e, tr) => {
          const note = e.kind === 'note';
          const text = note ? e.text : String(e.ev.group ?? '');
          const span = note ? NOTE_SPAN : 1;
          if (tr.groupSpan !== span) {
            tr.groupSpan = span;
            td.colSpan = span;
          }
          if (tr.groupText !== text) {
            tr.groupText = text;
            td.textContent = text;
            td.title = text;
          }
        },
      },
      {
        id: 'pid', label: 'PID', sortable: false, cls: 'num',
        paint: (td, e, tr) => {
          const life = e.kind === 'life';
          const text = e.kind === 'note' ? '' : life ? lifeText(e.ev) : String(e.ev.pid);
          const span = life ? LIFE_SPAN : 1;
          if (tr.pidSpan !== span) {
            tr.pidSpan = span;
            td.colSpan = span;
          }
          if (tr.pidText !== text) {
            tr.pidText = text;
            td.textContent = text;
            td.title = life ? text : '';
          }
        },
      },
      {
        id: 'name', label: 'Name', sortable: false, cls: 'name',
        text: (e) => (e.kind === 'note' || e.kind === 'life' ? '' : String(e.ev.name ?? '')),
        tip: (e) => (e.kind === 'note' || e.kind === 'life' ? '' : fmtCmdline(e.ev.cmdline, e.ev.name)),
      },
      {
        id: 'life', label: 'Lifetime', sortable: false, cls: 'num',
        title: 'How long the process ran',
        text: (e) => (e.kind === 'exit' ? fmtLifetime(e.ev.lifetime_s ?? NaN) : ''),
      },
      {
        id: 'exit', label: 'Exit', sortable: false, cls: 'exit',
        title: 'Exit status, the signal that ended the process, or the OOM killer',
        paint: (td, e, tr) => paintBadge(td, tr, 'exit', e.kind === 'exit' && !e.synthetic ? exitStatus(e.ev)
          : { text: e.kind === 'exit' ? NONE : '', title: '', tone: 'unknown' }, 'status s-'),
      },
    ];
    this.columns = columns;
    this.fleet = false;

    this.vt = new VirtualTable({
      scroller: els.scroller,
      table: els.table,
      columns,
      keyOf: (e) => e.id,
      navigable: true,
      rowClass: (e) => {
        if (e.kind === 'note') return `note ${e.tone ?? ''}`;
        if (e.kind === 'life') return `life ${LIFE[e.ev.type][1]}`;
        let cls = e.kind;
        if (e.synthetic) cls += ' synthetic';
        else if (e.kind === 'exit') {
          const tone = exitStatus(e.ev).tone;
          if (tone === 'bad' || tone === 'warn') cls += ` ${tone}`;
          else if (tone === 'oom') cls += ' bad oom';
        } else if (e.ev.restart_of) cls += ' restart';
        return cls;
      },
      onActivate: (e) => {
        if (e.kind !== 'note' && e.ev.group !== undefined) onPick(String(e.ev.group));
      },
    });

    // Whatever changes the <select> (pointer, keys, a script's input or change event),
    // the log shows what it says.
    const onType = () => {
      if (this.type === els.type.value) return;
      this.type = els.type.value;
      this.needList = true;
      this.update(null);
    };
    els.type.addEventListener('change', onType);
    els.type.addEventListener('input', onType);
    els.group.addEventListener('input', () => {
      this.groupFilter = els.group.value.trim().toLowerCase();
      this.needList = true;
      this.update(null);
    });
    els.pause.addEventListener('click', () => this.setPaused(!this.paused));
    els.count.title = `The log keeps the newest ${fmtInt(LOG_LIMIT)} entries`;
  }

  /** A fleet's page (or a single host's again): with a host column (last, so the
   * other columns keep their places), or without. */
  setFleet(fleet) {
    if (fleet === this.fleet) return;
    this.fleet = fleet;
    const host = {
      id: 'host', label: 'Host', sortable: false, cls: 'name',
      text: (e) => (e.kind === 'note' ? '' : String(e.ev.host ?? '')),
      tip: (e) => (e.kind === 'note' ? '' : String(e.ev.host ?? '')),
    };
    this.vt.setColumns(fleet ? [...this.columns, host] : this.columns);
    this.needList = true;
  }

  filtering() {
    return this.type !== 'all' || this.groupFilter !== '' || this.store.hostFilter !== null;
  }

  matches(e) {
    if (e.kind === 'note') return true; // context for whatever is shown around it
    if (this.store.hostFilter !== null && e.ev.host !== this.store.hostFilter) return false;
    if (this.type === 'problem') {
      if (!isProblem(e)) return false;
    } else if (this.type === 'restart') {
      if (e.kind !== 'start' || e.synthetic || !e.ev.restart_of) return false;
    } else if (this.type !== 'all' && e.kind !== this.type) {
      return false;
    }
    return !this.groupFilter || String(e.ev.group ?? '').toLowerCase().includes(this.groupFilter);
  }

  setPaused(paused) {
    if (paused === this.paused) return;
    this.paused = paused;
    this.frozen = paused ? this.store.log.toNewestFirst() : null;
    this.newWhilePaused = 0;
    this.needList = true;
    this.update(null);
  }

  update(changes) {
    const added = changes ? changes.log : 0;
    const ring = this.store.log;
    const rh = this.vt.rowHeight;
    if (this.paused) {
      this.newWhilePaused += added;
      if (this.needList) {
        this.needList = false;
        this.vt.setSource(arraySource(this.frozen.filter((e) => this.matches(e))));
      }
    } else {
      let shift = 0;
      if (added && this.vt.scrollTop > 0) {
        // Entries land on top: move the scroll position with the rows being read.
        const n = Math.min(added, ring.length);
        if (!this.filtering()) shift = n;
        else for (let i = 0; i < n; i += 1) if (this.matches(ring.newest(i))) shift += 1;
      }
      if (this.filtering()) {
        if (added || this.needList) {
          const out = [];
          for (let i = 0; i < ring.length; i += 1) {
            const e = ring.newest(i);
            if (this.matches(e)) out.push(e);
          }
          this.vt.setSource(arraySource(out));
        }
      } else if (this.needList) {
        this.vt.setSource(this.ringSource);
      }
      this.needList = false;
      if (shift) {
        this.vt.scrollTop += shift * rh;
        this.vt.scroller.scrollTop = this.vt.scrollTop;
      }
    }

    setAttr(this.els.pause, 'aria-pressed', String(this.paused));
    const fresh = this.paused && this.newWhilePaused ? `${fmtInt(this.newWhilePaused)} new` : '';
    setText(this.els.fresh, fresh);
    setHidden(this.els.fresh, !fresh);

    const shown = this.vt.source.length;
    const held = this.paused ? this.frozen.length : ring.length;
    setText(this.els.count, this.filtering() ? `${fmtInt(shown)} of ${fmtInt(held)}` : fmtInt(held));
    let note = '';
    if (!shown) note = held ? 'No entry matches the filter.' : 'No process has started or exited yet.';
    setText(this.els.empty, note);
    setHidden(this.els.empty, !note);
    this.vt.render({});
  }
}
