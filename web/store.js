// The viewer's state: groups, processes and the event log, kept in plain objects and
// Maps, fed with the objects of the wire protocol (docs/protocol.md) in order.
//
// It applies events strictly in sequence: duplicates (seq already seen, e.g. a replay
// overlapping what arrived live) are skipped, a gap asks the server to resume from the
// last applied seq, and a reset or overflow waits for the snapshot that follows and
// rebuilds from it: exactly the snapshot's groups and processes (after a server restart,
// groups the new run doesn't report are gone from the page too). It never touches the
// DOM; views read it and consume `changes` once per animation frame (takeChanges).
//
// Processes carry their numbers (CPU %, memory, state, ...: LIVE_FIELDS) as of the
// snapshot; those of the processes being watched are kept current by applyLive, fed by
// a second connection that asks for proc.update (live.js). That stream is not in
// sequence with this one, so numbers of a process whose start has not arrived yet wait
// (a few, briefly) until it does.

import { RingBuffer } from './ring.js';
import { fmtAge } from './format.js';
import { Fleet } from './fleetstore.js';

/** The event log keeps this many entries (starts, exits, notes); older ones fall out. */
export const LOG_LIMIT = 2000;
/** The CPU history (sparklines) spans about this many seconds of polls. */
export const HISTORY_SECONDS = 180;
const MIN_HISTORY_POINTS = 30;
const MAX_HISTORY_POINTS = 600;
// After a resync, list at most this many of the processes that started or exited while
// the viewer was not listening; the note says how many more there were.
const MAX_SYNTHETIC = 400;
// Lifecycle fields of groups no group.update has described yet (the server keeps them the
// same way): merged into the group when it comes; the oldest go first past this many.
const MAX_PENDING_LIFE = 1024;

/** The lifecycle events, and what each sets in its group's fields. */
export const LIFE_EVENTS = {
  'group.missing': ['missing', true],
  'group.recovered': ['missing', false],
  'group.crashloop': ['crashloop', true],
  'group.stable': ['crashloop', false],
};

// Numbers of processes not known yet (their proc.start is still on its way) kept at most.
const MAX_PENDING_LIVE = 500;

/** A process's numbers, as proc.update and a snapshot's procs carry them. */
export const LIVE_FIELDS = [
  'cpu_pct', 'cpu_s', 'mem_resident', 'mem_virtual', 'mem_swap', 'threads', 'open_fds',
  'fd_ratio', 'state', 'read_bps', 'write_bps',
];

const RESET_TEXT = {
  epoch: 'Server restarted',
  expired: 'Away longer than the server remembers',
  future: 'Server is behind this viewer',
  resync: 'Server re-read its state',
};

// From a fleet aggregator, processes of many hosts: a pid is a host's.
let keyByHost = false;

/** The identity of a process: a pid is reused, a (pid, start time) pair is not. */
export function procKey(p) {
  return keyByHost ? `${p.host}/${p.pid}@${p.start_time}` : `${p.pid}@${p.start_time}`;
}

export function historyPoints(interval) {
  const n = Math.round(HISTORY_SECONDS / (interval > 0 ? interval : 1));
  return Math.min(MAX_HISTORY_POINTS, Math.max(MIN_HISTORY_POINTS, n));
}

/** Events received per second over a sliding window of a few seconds. */
export class RateMeter {
  constructor(windowMs = 5000, bucketMs = 250) {
    this.windowMs = windowMs;
    this.bucketMs = bucketMs;
    this.buckets = []; // [bucket number, count]
    this.since = 0;
  }

  add(n, now) {
    const b = Math.floor(now / this.bucketMs);
    const last = this.buckets[this.buckets.length - 1];
    if (last && last[0] === b) last[1] += n;
    else this.buckets.push([b, n]);
    if (!this.since) this.since = now;
    this.trim(now);
  }

  trim(now) {
    const oldest = Math.floor((now - this.windowMs) / this.bucketMs);
    let i = 0;
    while (i < this.buckets.length && this.buckets[i][0] <= oldest) i += 1;
    if (i) this.buckets.splice(0, i);
  }

  rate(now) {
    this.trim(now);
    let sum = 0;
    for (const [, n] of this.buckets) sum += n;
    // Young meters divide by the time they have actually been counting.
    const span = Math.min(this.windowMs, Math.max(1000, now - this.since));
    return this.since ? (sum * 1000) / span : 0;
  }
}

/**
 * A group as the views see it: `f` holds the latest group.update fields, `hist` the
 * cpu_pct of the last polls (a ring shared by all groups: index store.histPos is the
 * oldest sample), `sum`/`n` its running average.
 */
export function newGroup(name, points) {
  return {
    name,
    f: { group: name },
    hist: new Float32Array(points).fill(NaN),
    sum: 0,
    n: 0,
  };
}

/** Group `name`'s fields in `groups`, or (no group.update described it yet) the
 * lifecycle fields waiting for it in `pending`, at most MAX_PENDING_LIFE groups'. */
export function lifeFields(groups, pending, name) {
  const g = groups.get(name);
  if (g) return g.f;
  let f = pending.get(name);
  if (!f) {
    if (pending.size >= MAX_PENDING_LIFE) pending.delete(pending.keys().next().value);
    f = {};
    pending.set(name, f);
  }
  return f;
}

/** A new group for its first group.update, with the lifecycle fields that waited for it. */
export function newGroupWithLife(name, points, pending) {
  const g = newGroup(name, points);
  Object.assign(g.f, pending.get(name));
  pending.delete(name);
  return g;
}

export class Store {
  constructor() {
    this.host = '';
    this.server = '';
    this.interval = 1;
    this.epoch = null;
    this.seq = null; // last applied seq
    this.synced = false; // a snapshot was applied: the state is complete as of seq
    this.awaiting = true; // a snapshot is due (first connect, after reset/overflow)
    this.pendingResync = null; // why the coming snapshot replaces the state
    this.snapParts = null; // the parts of a snapshot received so far
    this.resumeAsked = null; // {since, epoch} the current connection asked for
    this.lostAt = 0; // performance.now() when the connection was lost
    this.gapRequested = false;
    /** Called with {since, epoch} when events are missing; the app re-subscribes. */
    this.onGap = null;
    this.lastError = null;
    /** From a fleet aggregator: its hosts (see fleetstore.js); null from one host's server. */
    this.fleet = null;
    /** Called with a host's name when its state must be fetched again (fleet only). */
    this.onHostResync = null;
    /** Show this host only (fleet only; null: every host). */
    this.hostFilter = null;

    this.groups = new Map(); // name -> group
    this.pendingLife = new Map(); // name -> lifecycle fields of a group not described yet
    this.procs = new Map(); // procKey -> proc fields
    this.members = new Map(); // group name -> Map(procKey -> proc)
    this.pendingLive = new Map(); // procKey -> numbers of a process not known yet
    this.log = new RingBuffer(LOG_LIMIT);
    this.logIds = 0;

    this.histPoints = historyPoints(this.interval);
    this.histPos = 0;
    this.histVersion = 0;
    this.lastCycle = null; // the last cycle event
    this.skews = []; // server clock minus ours, from recent cycles
    this.rate = new RateMeter();
    this.changes = this.freshChanges();
  }

  freshChanges() {
    return {
      groups: new Set(), // groups whose fields changed
      structure: false, // groups appeared or disappeared
      members: new Set(), // groups whose process list changed
      live: new Set(), // groups some of whose processes' numbers changed
      log: 0, // entries added to the log
      cycle: false, // a poll finished (new sparkline sample)
      rebuilt: false, // state replaced from a snapshot
      conn: false, // hello, reset, error: the header should look again
      hosts: false, // a fleet's hosts changed (state, groups, set)
    };
  }

  /** The groups the views show: the fleet's totals, or one host's (hostFilter). */
  shownGroups() {
    if (this.fleet && this.hostFilter !== null) {
      const host = this.fleet.hosts.get(this.hostFilter);
      return host ? host.groups : new Map();
    }
    return this.groups;
  }

  /** What changed since the last call; views call this once per frame. */
  takeChanges() {
    if (this.fleet) this.fleet.flush();
    const c = this.changes;
    this.changes = this.freshChanges();
    return c;
  }

  /** Where to resume from after a disconnect, or null when a fresh snapshot is needed. */
  resumePoint() {
    if (!this.synced || this.awaiting || this.epoch === null || this.seq === null) return null;
    return { since: this.seq, epoch: this.epoch };
  }

  /** Our best guess of the server's clock now (epoch seconds). */
  serverNow() {
    let skew = 0;
    if (this.skews.length) skew = Math.max(...this.skews);
    return Date.now() / 1000 + skew;
  }

  /** The connection closed: note it once in the log. */
  connectionLost(info) {
    if (this.lostAt) return;
    this.lostAt = performance.now();
    this.resumeAsked = null;
    if (this.synced) {
      const why = info && info.code && info.code !== 1006 ? ` (close code ${info.code}${info.reason ? `: ${info.reason}` : ''})` : '';
      this.addNote(`Connection lost${why}; reconnecting`, 'warn');
    }
    this.changes.conn = true;
  }

  /** Apply the objects of one frame, in order. */
  handleAll(objs) {
    for (const o of objs) {
      if (o && typeof o === 'object') this.handle(o);
    }
  }

  handle(o) {
    switch (o.type) {
      case 'hello':
        this.onHello(o);
        break;
      case 'snapshot':
        this.onSnapshotPart(o);
        break;
      case 'reset':
        this.awaiting = true;
        this.pendingResync = { kind: 'reset', reason: o.reason };
        this.changes.conn = true;
        break;
      case 'overflow':
        this.awaiting = true;
        this.pendingResync = { kind: 'overflow', dropped: o.dropped };
        this.changes.conn = true;
        break;
      case 'bookmark':
        // No filter: a bookmark ahead of us means events went missing.
        if (!this.awaiting && this.seq !== null && o.seq > this.seq) this.gap();
        break;
      case 'subscribed':
        // Our re-subscription took effect: what follows is in order again.
        this.gapRequested = false;
        break;
      case 'error':
        this.lastError = String(o.error ?? 'error');
        this.changes.conn = true;
        break;
      default:
        if (typeof o.seq === 'number') this.onEvent(o);
    }
  }

  onHello(o) {
    this.host = String(o.host ?? '');
    this.server = String(o.server ?? '');
    const modeChanged = Boolean(o.fleet) !== (this.fleet !== null);
    if (modeChanged) {
      this.fleet = o.fleet ? new Fleet(this, o.fleet) : null;
      keyByHost = this.fleet !== null;
    }
    if ((o.interval > 0 && o.interval !== this.interval) || modeChanged) {
      if (o.interval > 0) this.interval = o.interval;
      this.resizeHistory();
    }
    const asked = this.resumeAsked;
    this.resumeAsked = null;
    this.gapRequested = false;
    if (asked && this.synced && o.epoch === asked.epoch) {
      // Same server run: it replays what we missed (or sends reset + snapshot).
      this.awaiting = false;
      if (this.lostAt) {
        const away = (performance.now() - this.lostAt) / 1000;
        this.addNote(`Reconnected after ${fmtAge(away)}; resuming after event #${asked.since}`, 'info');
      }
    } else {
      this.awaiting = true;
    }
    this.lostAt = 0;
    this.lastError = null;
    this.changes.conn = true;
  }

  /** A snapshot comes in `parts` objects (one when it is small), each with some groups
   * and processes: gather them, and apply the whole once the last is in. A part 1
   * starts over (a new snapshot replaces one still incomplete). */
  onSnapshotPart(o) {
    const part = o.part ?? 1;
    if (part === 1) this.snapParts = { seq: o.seq, groups: {}, procs: [], hosts: {} };
    const acc = this.snapParts;
    if (!acc || acc.seq !== o.seq) return;
    Object.assign(acc.groups, o.groups ?? {});
    for (const p of o.procs ?? []) acc.procs.push(p);
    Object.assign(acc.hosts, o.hosts ?? {}); // a fleet's hosts are shared out too
    if (part < (o.parts ?? 1)) return;
    this.snapParts = null;
    const whole = { ...o, groups: acc.groups, procs: acc.procs };
    if (this.fleet) whole.hosts = acc.hosts;
    this.onSnapshot(whole);
  }

  onSnapshot(o) {
    const hadState = this.synced;
    const restarted = hadState && o.epoch !== this.epoch;
    this.pendingLive.clear();
    const why = this.pendingResync ?? { kind: 'reset', reason: restarted ? 'epoch' : 'resync' };
    this.pendingResync = null;

    // Exactly the snapshot's groups: a group this state no longer has (a restarted server
    // never saw it) goes; one that stays keeps its sparkline history.
    const next = new Map();
    for (const [name, fields] of Object.entries(o.groups ?? {})) {
      const g = this.groups.get(name) ?? newGroup(name, this.histPoints);
      g.f = Object.assign({ group: name }, fields);
      next.set(name, g);
    }
    this.groups = next;
    this.pendingLife = new Map();

    const before = this.procs;
    this.procs = new Map();
    this.members = new Map();
    for (const p of o.procs ?? []) {
      const key = procKey(p);
      this.procs.set(key, p);
      this.memberMap(p.group).set(key, p);
    }
    if (this.fleet) this.fleet.onSnapshot(o);
    if (hadState) this.noteDifferences(before, why);

    this.epoch = o.epoch ?? this.epoch;
    this.seq = o.seq;
    this.synced = true;
    this.awaiting = false;
    this.changes.structure = true;
    this.changes.rebuilt = true;
    this.changes.conn = true;
  }

  /** After a rebuild, log what changed while we were not listening. */
  noteDifferences(before, why) {
    const exited = [];
    const started = [];
    for (const [key, p] of before) if (!this.procs.has(key)) exited.push(p);
    for (const [key, p] of this.procs) if (!before.has(key)) started.push(p);
    const now = this.serverNow();
    exited.sort((a, b) => a.pid - b.pid);
    started.sort((a, b) => a.start_time - b.start_time || a.pid - b.pid);
    let listed = 0;
    for (const p of exited) {
      if (listed++ >= MAX_SYNTHETIC) break;
      this.addEntry('exit', now, { ...p, exit_code: null, signal: null, lifetime_s: null }, true);
    }
    for (const p of started) {
      if (listed++ >= MAX_SYNTHETIC) break;
      this.addEntry('start', p.start_time, p, true);
    }
    let head;
    if (why.kind === 'overflow') head = `Viewer fell behind (${why.dropped} events skipped)`;
    else head = RESET_TEXT[why.reason] ?? 'Resynchronised';
    const more = exited.length + started.length > MAX_SYNTHETIC
      ? ` (first ${MAX_SYNTHETIC} listed)` : '';
    this.addNote(
      `${head} \u2014 rebuilt from a snapshot: ${started.length} started, ${exited.length} ended while away${more}`,
      'warn',
    );
  }

  onEvent(o) {
    this.rate.add(1, performance.now());
    if (this.awaiting || this.seq === null) return; // not part of any state we hold
    if (o.seq <= this.seq) return; // already applied (a replay overlapping live events)
    if (o.seq !== this.seq + 1) {
      this.gap();
      return;
    }
    this.seq = o.seq;
    this.gapRequested = false;
    if (this.fleet && this.fleet.hold(o)) return;
    this.apply(o);
  }

  /** Apply one event that is in sequence. */
  apply(o) {
    switch (o.type) {
      case 'proc.start':
        this.onStart(o);
        break;
      case 'proc.exit':
        this.onExit(o);
        break;
      case 'group.update':
        this.onGroupUpdate(o);
        break;
      case 'cycle':
        this.onCycle(o);
        break;
      case 'host.up':
      case 'host.down':
      case 'host.lost':
        if (this.fleet) this.fleet.onStatus(o);
        break;
      default:
        if (o.type in LIFE_EVENTS) this.onLife(o);
        break; // otherwise a newer server's event type: the seq still counts
    }
  }

  /** Where a lifecycle event about its group lands: the group's fields (or, before
   * its first group.update, the ones waiting for it); in a fleet, those of the group
   * on the event's host, from which the group's total is summed. */
  lifeOf(o) {
    if (this.fleet) return this.fleet.lifeOf(String(o.host ?? ''), o.group);
    return lifeFields(this.groups, this.pendingLife, o.group);
  }

  /** group.missing / recovered / crashloop / stable: the group's state, and a log entry. */
  onLife(o) {
    const [field, value] = LIFE_EVENTS[o.type];
    this.lifeOf(o)[field] = value;
    // Missing and crash-looping groups sort first: the order must be looked at again.
    this.changes.structure = true;
    this.changes.groups.add(o.group);
    this.addEntry('life', o.ts, o, false);
  }

  gap() {
    if (this.gapRequested || !this.onGap) return;
    this.gapRequested = true;
    this.onGap({ since: this.seq, epoch: this.epoch });
  }

  onStart(o) {
    const key = procKey(o);
    o.seenAt = performance.now();
    // a known process named anew (it runs another program): it may have changed group
    const known = this.procs.get(key);
    if (known && known.group !== o.group) {
      const m = this.members.get(known.group);
      if (m) m.delete(key);
      this.changes.members.add(known.group);
    }
    if (known) this.setLive(o, known); // its numbers hold until the next reading
    const numbers = this.pendingLive.get(key);
    if (numbers) {
      this.pendingLive.delete(key);
      this.setLive(o, numbers);
    }
    this.procs.set(key, o);
    this.memberMap(o.group).set(key, o);
    this.changes.members.add(o.group);
    if (o.restart_of) {
      const f = this.lifeOf(o);
      f.restarts = (f.restarts ?? 0) + 1;
      this.changes.groups.add(o.group);
    }
    this.addEntry('start', o.ts, o, false);
  }

  onExit(o) {
    const key = procKey(o);
    const known = this.procs.get(key);
    this.procs.delete(key);
    const group = known ? known.group : o.group;
    const m = this.members.get(group);
    if (m) m.delete(key);
    this.changes.members.add(group);
    this.lifeOf(o).last_exit = {
      pid: o.pid,
      ts: o.ts,
      exit_class: o.exit_class ?? null,
      exit_code: o.exit_code ?? null,
      signal: o.signal ?? null,
      oom_killed: o.oom_killed ?? null,
    };
    this.changes.groups.add(o.group);
    this.addEntry('exit', o.ts, o, false);
  }

  onGroupUpdate(o) {
    if (this.fleet) {
      this.fleet.onGroupUpdate(o); // a host's group; the totals follow
      return;
    }
    const name = o.group;
    if (o.removed) {
      if (this.groups.delete(name)) this.changes.structure = true;
      this.members.delete(name);
      this.pendingLife.delete(name);
      return;
    }
    let g = this.groups.get(name);
    if (!g) {
      g = newGroupWithLife(name, this.histPoints, this.pendingLife);
      this.groups.set(name, g);
      this.changes.structure = true;
    }
    Object.assign(g.f, o);
    this.changes.groups.add(name);
  }

  /**
   * The numbers of one process (a proc.update, or a process of a snapshot of the live
   * connection): set them on the process, or keep them until its proc.start arrives.
   */
  applyLive(o) {
    const key = procKey(o);
    const p = this.procs.get(key);
    if (p) {
      this.setLive(p, o);
      this.changes.live.add(p.group);
      return;
    }
    if (this.pendingLive.size >= MAX_PENDING_LIVE) {
      this.pendingLive.delete(this.pendingLive.keys().next().value);
    }
    this.pendingLive.set(key, o);
  }

  setLive(p, numbers) {
    for (const f of LIVE_FIELDS) {
      if (f in numbers) p[f] = numbers[f];
    }
  }

  onCycle(o) {
    // Replayed cycles are old; only fresh ones say how far the server's clock is from ours.
    if (!this.lastCycle || o.ts > this.lastCycle.ts) {
      this.skews.push(o.ts - Date.now() / 1000);
      if (this.skews.length > 20) this.skews.shift();
    }
    this.lastCycle = o;
    // A fleet's hosts poll each on its own: its history takes a sample a second.
    if (this.fleet && !this.fleet.onCycle(o)) return;
    this.pushHistory();
    this.changes.cycle = true;
  }

  /** One sparkline sample per group per poll (unchanged groups keep their last cpu_pct). */
  pushHistory() {
    const pos = this.histPos;
    for (const g of this.allGroups()) {
      const v = g.gone ? NaN : Number(g.f.cpu_pct ?? NaN);
      const old = g.hist[pos];
      if (!Number.isNaN(old)) {
        g.sum -= old;
        g.n -= 1;
      }
      g.hist[pos] = v;
      if (!Number.isNaN(v)) {
        g.sum += g.hist[pos]; // the stored (float32) value, so the later subtraction matches
        g.n += 1;
      }
    }
    this.histPos = (pos + 1) % this.histPoints;
    this.histVersion += 1;
  }

  /** Every group with a history: the groups, and in a fleet each host's too. */
  * allGroups() {
    yield* this.groups.values();
    if (this.fleet) for (const host of this.fleet.hosts.values()) yield* host.groups.values();
  }

  resizeHistory() {
    this.histPoints = historyPoints(this.fleet ? this.fleet.sampleEvery : this.interval);
    this.histPos = 0;
    for (const g of this.allGroups()) {
      g.hist = new Float32Array(this.histPoints).fill(NaN);
      g.sum = 0;
      g.n = 0;
    }
    this.histVersion += 1;
  }

  memberMap(group) {
    let m = this.members.get(group);
    if (!m) {
      m = new Map();
      this.members.set(group, m);
    }
    return m;
  }

  addEntry(kind, ts, ev, synthetic) {
    this.logIds += 1;
    this.log.push({ id: this.logIds, kind, ts, ev, synthetic });
    this.changes.log += 1;
  }

  /** A note in the event log about the viewer itself (connection, resync). */
  addNote(text, tone) {
    this.logIds += 1;
    this.log.push({ id: this.logIds, kind: 'note', ts: this.serverNow(), text, tone });
    this.changes.log += 1;
  }
}
