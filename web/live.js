// Live numbers of the processes being looked at: a second WebSocket that asks the server
// for proc.update, only for the selected group's processes and the process shown in
// detail. The server builds those events only while someone asks, so this connection
// exists only while there is something to watch.
//
// It is separate from the main connection on purpose: proc.update events are numbered in
// the same sequence as every other event, so a subscription that takes some of them sees
// gaps, which the main store (store.js) would take for lost events. Here order and gaps
// don't matter: each update holds all of a process's numbers.
//
// On each connection the server's hello is answered with a subscribe frame; its snapshot
// (cut to the selected group) brings every watched process's numbers as of now, then
// proc.update brings their changes, and the cycle ending each poll tells the detail view
// to take a sample.

import { Connection, socketUrl } from './connection.js';

export class LiveFeed {
  /**
   * @param {import('./store.js').Store} store
   * @param {object} o
   * @param {string|null} o.token      the page's ?token=, passed on like the main socket's
   * @param {() => void} o.onChange    numbers changed (schedule a redraw)
   * @param {(ts: number) => void} o.onCycle  a poll ended: its numbers are all in
   */
  constructor(store, { token, onChange, onCycle }) {
    this.store = store;
    this.onChange = onChange;
    this.onCycle = onCycle;
    this.group = null;
    this.pid = null;
    // Until our subscribe frame is read, the connection asks for as little as it can.
    this.conn = new Connection({
      url: () => socketUrl({ types: 'cycle', snapshot: 0, token }),
      onObjects: (objs) => this.handle(objs),
      onState: () => {},
    });
  }

  /** Watch the processes of `group` and process `pid` (either may be null; both null: stop). */
  watch(group, pid) {
    if (group === this.group && pid === this.pid) return;
    this.group = group;
    this.pid = pid;
    if (group === null && pid === null) {
      this.conn.stop();
      return;
    }
    if (this.conn.state === 'idle') this.conn.start();
    else this.subscribe();
  }

  subscribe() {
    // The snapshot is cut to the group; without one it would be the whole state.
    const request = { op: 'subscribe', types: ['proc.update', 'cycle'], snapshot: this.group !== null };
    // An empty list would mean "every group": give only what there is.
    if (this.group !== null) request.groups = [this.group];
    if (this.pid !== null) request.pids = [this.pid];
    this.conn.send(request);
  }

  handle(objs) {
    const store = this.store;
    let changed = false;
    for (const o of objs) {
      if (!o || typeof o !== 'object') continue;
      switch (o.type) {
        case 'hello':
          this.subscribe();
          break;
        case 'snapshot':
          for (const p of o.procs ?? []) store.applyLive(p);
          changed = true;
          break;
        case 'proc.update':
          store.applyLive(o);
          changed = true;
          break;
        case 'cycle':
          this.onCycle(o.ts);
          changed = true;
          break;
        default:
          break;
      }
    }
    if (changed) this.onChange();
  }
}
