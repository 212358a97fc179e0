// The store's side for a fleet aggregator: its hosts, each with its own groups, and the
// totals over the hosts that are up (what the groups table shows for "all hosts").
//
// A group.update is one host's: it lands in that host's groups, and the group's total
// is summed again (once per frame, for the groups that changed) the way the server sums
// its snapshot's: numbers add up, the worst fd ratio is the largest, the oldest start
// time the earliest, a flag is set when any host's is.
//
// host.up says a host's state starts over (a new run, back after being down, whole
// again after a loss): the page fetches that host's snapshot (onHostResync) and, while
// it is on its way, keeps the host's events aside; the snapshot replaces the host's
// groups and processes and the events after it are applied on top. Nothing else of the
// page waits for it.

import { RateMeter, lifeFields, newGroup, newGroupWithLife, procKey } from './store.js';

/** Seconds between two samples of the CPU history in a fleet. */
const SAMPLE_EVERY = 1;
/** Events of one host kept aside while its snapshot is fetched; past it, fetch again. */
const HOLD_LIMIT = 20000;
const SKIP = new Set(['group', 'type', 'seq', 'ts', 'host', 'source']);
const LARGEST = new Set(['worst_fd_ratio']);
const EARLIEST = new Set(['oldest_start_time']);

function newHost(name) {
  return {
    name,
    up: false,
    epoch: null,
    lastPoll: null,
    synced: true,
    groups: new Map(), // name -> group (as the store's, with its own history)
    pendingLife: new Map(), // name -> lifecycle fields of a group not described yet
    rate: new RateMeter(),
    held: null, // events kept aside while the host's snapshot is fetched
  };
}

/** Add one host's group fields into a total (see the module comment). */
function addInto(total, f) {
  for (const [key, value] of Object.entries(f)) {
    if (SKIP.has(key)) continue;
    const have = total[key];
    if (typeof value === 'boolean') {
      total[key] = Boolean(have) || value;
    } else if (typeof value === 'number') {
      if (typeof have !== 'number') total[key] = value;
      else if (LARGEST.has(key)) total[key] = Math.max(have, value);
      else if (EARLIEST.has(key)) {
        if (value > 0 && (have <= 0 || value < have)) total[key] = value;
      } else total[key] = have + value;
    } else if (value && typeof value === 'object' && !Array.isArray(value)) {
      if ('ts' in value) {
        if (!have || (value.ts ?? 0) > (have.ts ?? 0)) total[key] = value;
      } else {
        const into = have && typeof have === 'object' ? { ...have } : {};
        for (const [k, v] of Object.entries(value)) if (typeof v === 'number') into[k] = (into[k] ?? 0) + v;
        total[key] = into;
      }
    }
  }
}

export class Fleet {
  /**
   * @param {import('./store.js').Store} store
   * @param {{stream?: string}} info  hello's `fleet`
   */
  constructor(store, info) {
    this.store = store;
    this.stream = String(info && info.stream ? info.stream : '');
    this.hosts = new Map(); // name -> host
    this.dirty = new Set(); // group names whose total must be summed again
    this.lastSample = 0;
    this.sampleEvery = SAMPLE_EVERY;
  }

  host(name) {
    let host = this.hosts.get(name);
    if (!host) {
      host = newHost(name);
      this.hosts.set(name, host);
      this.store.changes.hosts = true;
    }
    return host;
  }

  /** A host's entry of a snapshot's `hosts`. */
  describe(host, h) {
    host.up = Boolean(h.up);
    host.epoch = h.epoch ?? null;
    host.lastPoll = typeof h.last_poll === 'number' ? h.last_poll : null;
    host.synced = h.synced !== false;
    const groups = new Map();
    for (const [name, fields] of Object.entries(h.groups ?? {})) {
      const g = host.groups.get(name) ?? newGroup(name, this.store.histPoints);
      g.f = { group: name, ...fields };
      groups.set(name, g);
      this.dirty.add(name);
    }
    for (const name of host.groups.keys()) if (!groups.has(name)) this.dirty.add(name);
    host.groups = groups;
    host.pendingLife = new Map();
  }

  onSnapshot(o) {
    const seen = new Set();
    for (const [name, h] of Object.entries(o.hosts ?? {})) {
      const host = this.host(name);
      host.held = null;
      this.describe(host, h);
      seen.add(name);
    }
    for (const name of [...this.hosts.keys()]) if (!seen.has(name)) this.hosts.delete(name);
    for (const name of this.store.groups.keys()) this.dirty.add(name);
    this.store.changes.hosts = true;
  }

  /** Keep `o` aside when its host's snapshot is being fetched; true when kept. */
  hold(o) {
    const host = typeof o.host === 'string' ? this.hosts.get(o.host) : undefined;
    if (host) host.rate.add(1, performance.now());
    if (!host || !host.held || o.type === 'host.up' || o.type === 'host.down') return false;
    if (host.held.length >= HOLD_LIMIT) {
      host.held = null; // too much to keep: the snapshot asked for next says it all
      this.resync(host);
    } else {
      host.held.push(o);
    }
    return true;
  }

  onGroupUpdate(o) {
    const host = this.host(String(o.host ?? ''));
    const name = o.group;
    if (o.removed) {
      host.groups.delete(name);
      host.pendingLife.delete(name);
    } else {
      let g = host.groups.get(name);
      if (!g) {
        g = newGroupWithLife(name, this.store.histPoints, host.pendingLife);
        host.groups.set(name, g);
      }
      Object.assign(g.f, o);
      g.gone = false;
    }
    this.dirty.add(name);
    this.store.changes.hosts = true;
  }

  /** Where a lifecycle event of `hostName` about group `name` lands (see Store.lifeOf):
   * that host's group, the group's total summed again from it. */
  lifeOf(hostName, name) {
    const host = this.host(hostName);
    this.dirty.add(name);
    return lifeFields(host.groups, host.pendingLife, name);
  }

  /** True when the CPU history takes a sample now (once a second, whichever host polled). */
  onCycle(o) {
    const host = this.host(String(o.host ?? ''));
    host.lastPoll = o.ts;
    this.store.changes.hosts = true;
    const now = performance.now();
    if (now - this.lastSample < this.sampleEvery * 1000) return false;
    this.lastSample = now;
    this.flush();
    return true;
  }

  onStatus(o) {
    const host = this.host(String(o.host ?? ''));
    const name = host.name;
    if (o.type === 'host.lost') {
      if (!o.reason) {
        this.store.addNote(`${o.count} events of ${name} never reached the stream (its buffer lost them)`, 'warn');
      }
      return;
    }
    const wasUp = host.up;
    host.up = o.type === 'host.up';
    for (const g of host.groups.keys()) this.dirty.add(g);
    this.store.changes.hosts = true;
    if (host.up) {
      const restarted = host.epoch !== null && o.epoch !== host.epoch;
      host.epoch = o.epoch ?? host.epoch;
      this.store.addNote(restarted ? `Host ${name} restarted: its state starts over` : `Host ${name} is up`,
        'info');
      this.resync(host);
    } else if (wasUp) {
      this.store.addNote(`Host ${name} is down: nothing from it for a while`, 'warn');
    }
  }

  /** Fetch the host's state again (its events wait aside until it is in). */
  resync(host) {
    if (host.held) return;
    host.held = [];
    if (this.store.onHostResync) this.store.onHostResync(host.name);
    else this.release(host, null);
  }

  /** The host's snapshot fetched for a resync (`null` when it could not be fetched). */
  applyHostSnapshot(name, snap) {
    const host = this.hosts.get(name);
    if (!host || !host.held) return;
    const store = this.store;
    if (snap && snap.hosts && snap.hosts[name]) {
      for (const [key, p] of [...store.procs]) {
        if (p.host !== name) continue;
        store.procs.delete(key);
        const m = store.members.get(p.group);
        if (m) m.delete(key);
        store.changes.members.add(p.group);
      }
      for (const p of snap.procs ?? []) {
        if (p.host !== name) continue;
        const key = procKey(p);
        store.procs.set(key, p);
        store.memberMap(p.group).set(key, p);
        store.changes.members.add(p.group);
      }
      const up = host.up;
      this.describe(host, snap.hosts[name]);
      host.up = up || host.up; // the host.up that asked for this may be newer than the snapshot
    }
    this.release(host, snap ? snap.seq : null);
  }

  release(host, seq) {
    const held = host.held ?? [];
    host.held = null;
    for (const o of held) if (seq === null || o.seq > seq) this.store.apply(o);
    this.store.changes.hosts = true;
  }

  /** Sum the totals of the groups that changed (once per frame). */
  flush() {
    if (!this.dirty.size) return;
    const store = this.store;
    for (const name of this.dirty) {
      let total = null;
      let any = false;
      for (const host of this.hosts.values()) {
        const g = host.groups.get(name);
        if (!g) continue;
        any = true;
        if (!host.up) continue;
        if (!total) total = { group: name };
        addInto(total, g.f);
      }
      const have = store.groups.get(name);
      if (!any) {
        if (have) {
          store.groups.delete(name);
          store.changes.structure = true;
        }
        continue;
      }
      // A group only hosts that are down have: kept, with nothing in it now.
      const fields = total ?? { group: name, procs: 0, threads: 0, cpu_pct: 0, mem_resident: 0 };
      if (have) {
        have.f = fields;
        have.gone = total === null;
        store.changes.groups.add(name);
      } else {
        const g = newGroup(name, store.histPoints);
        g.f = fields;
        g.gone = total === null;
        store.groups.set(name, g);
        store.changes.structure = true;
      }
    }
    this.dirty.clear();
  }

  /** `[hosts up, hosts down]`. */
  counts() {
    let up = 0;
    for (const host of this.hosts.values()) if (host.up) up += 1;
    return [up, this.hosts.size - up];
  }
}
