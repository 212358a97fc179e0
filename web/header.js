// The top bar: host (or the fleet's stream), connection state, last poll (age and
// duration), events per second, a fleet's hosts up and down, and totals summed over the
// groups shown (a fleet's, or the one host picked).

import { setAttr, setHidden, setText } from './dom.js';
import { NONE, fmtAge, fmtBytes, fmtInt, fmtMs, fmtPct, fmtPerSecond } from './format.js';

// The state's name is a live region (screen readers announce it when it changes); what
// follows it, the countdown to the next try, is not: it would be announced every second.
const STATE_TEXT = {
  connecting: 'Connecting',
  live: 'Live',
  reconnecting: 'Reconnecting',
  resyncing: 'Resyncing',
};

export class Header {
  /**
   * @param {import('./store.js').Store} store
   * @param {import('./connection.js').Connection} conn
   * @param {Record<string, HTMLElement>} els  host, conn, connText (the live region's
   *   text), connWait (the countdown), retry, pollAge, pollDur, rate, hostsBox, hosts, groups,
   *   procs, cpu, mem
   */
  constructor(store, conn, els) {
    this.store = store;
    this.conn = conn;
    this.els = els;
    this.everLive = false;
    this.totals = null;
    this.dot = els.conn.querySelector('.dot');
    this.reduceMotion = window.matchMedia('(prefers-reduced-motion: reduce)');
    els.retry.addEventListener('click', () => conn.retryNow());
  }

  /** Which of connecting / live / reconnecting / resyncing the page is in. */
  state() {
    const { conn, store } = this;
    if (conn.state === 'open') {
      if (!store.awaiting) return 'live';
      return store.synced ? 'resyncing' : 'connecting';
    }
    return this.everLive || conn.attempt > 0 ? 'reconnecting' : 'connecting';
  }

  update(changes, now) {
    const { store, conn, els } = this;
    const state = this.state();
    if (state === 'live') this.everLive = true;
    let wait = state === 'live' ? '' : '\u2026';
    if (state === 'reconnecting' && conn.state === 'waiting') {
      const s = Math.max(0, Math.ceil((conn.retryAt - performance.now()) / 1000));
      if (s > 0) wait = ` in ${s} s`;
    }
    if (els.conn.dataset.state !== state) els.conn.dataset.state = state;
    setText(els.connText, STATE_TEXT[state]);
    setText(els.connWait, wait);
    let tip = `WebSocket: ${conn.state}`;
    if (conn.lastClose && state !== 'live') {
      tip += `; last close code ${conn.lastClose.code}${conn.lastClose.reason ? ` (${conn.lastClose.reason})` : ''}`;
    }
    if (store.lastError) tip += `; server said: ${store.lastError}`;
    if (store.server) tip += `; ${store.server}`;
    setAttr(els.conn, 'title', tip);
    setHidden(els.retry, conn.state !== 'waiting');

    const fleet = store.fleet;
    const name = fleet ? `${fleet.stream || 'fleet'} (fleet)` : store.host;
    setText(els.host, name || NONE);
    setAttr(els.host, 'title', fleet ? `Fleet aggregator ${store.host}, stream ${fleet.stream}` : 'Host');
    const title = name ? `${name} \u00b7 procstream` : 'procstream';
    if (document.title !== title) document.title = title;
    setHidden(els.hostsBox, !fleet);
    if (fleet) {
      const [up, down] = fleet.counts();
      setText(els.hosts, down ? `${fmtInt(up)} up, ${fmtInt(down)} down` : `${fmtInt(up)} up`);
      els.hosts.classList.toggle('stale', down > 0);
    }

    const cyc = store.lastCycle;
    if (changes && changes.cycle && state === 'live' && !this.reduceMotion.matches) {
      // A heartbeat per poll: opacity only, so the compositor animates it without a repaint.
      this.dot.animate([{ opacity: 0.25 }, { opacity: 1 }], { duration: 600, easing: 'ease-out' });
    }
    if (cyc) {
      const age = Math.max(0, now - cyc.ts);
      setText(els.pollAge, age < 1 ? 'just now' : `${age < 60 ? Math.floor(age) + ' s' : fmtAge(age)} ago`);
      // Three missed polls: the server (or the path to it) is not keeping up.
      els.pollAge.classList.toggle('stale', age > Math.max(3 * store.interval, 5));
      setText(els.pollDur, fmtMs(cyc.duration_ms));
      setAttr(els.pollDur, 'title', `${fmtInt(cyc.procs_seen)} processes read, ${fmtInt(cyc.tracked)} tracked`
        + `${cyc.permission_errors ? `, ${fmtInt(cyc.permission_errors)} permission errors` : ''}`
        + `${cyc.read_errors ? `, ${fmtInt(cyc.read_errors)} read errors` : ''}`
        + ` (interval ${store.interval} s)`);
    }
    setText(els.rate, fmtPerSecond(store.rate.rate(performance.now())));

    if (!this.totals || (changes && (changes.cycle || changes.structure || changes.rebuilt || changes.hosts))) {
      let procs = 0;
      let cpu = 0;
      let mem = 0;
      for (const g of store.shownGroups().values()) {
        procs += g.f.procs || 0;
        cpu += g.f.cpu_pct || 0;
        mem += g.f.mem_resident || 0;
      }
      this.totals = { groups: store.shownGroups().size, procs, cpu, mem };
    }
    const t = this.totals;
    const synced = store.synced;
    setText(els.groups, synced ? fmtInt(t.groups) : NONE);
    setText(els.procs, synced ? fmtInt(t.procs) : NONE);
    setText(els.cpu, synced ? `${fmtPct(t.cpu)} %` : NONE);
    setText(els.mem, synced ? fmtBytes(t.mem) : NONE);
  }
}
