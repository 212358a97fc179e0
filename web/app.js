// Entry point: wires the connections, the store and the views, and owns what is global
// to the page: the selected group, the process shown in detail and, from a fleet
// aggregator, the host shown (all kept in the URL's #fragment), what the live connection
// watches, keyboard shortcuts (which the user can turn off), the help dialog and the
// once-a-frame flush of every change to the DOM.

import { Connection, socketUrl } from './connection.js';
import { DetailView } from './detail.js';
import { LogView } from './eventlog.js';
import { onFrame } from './frame.js';
import { GroupsView } from './groups.js';
import { Header } from './header.js';
import { BreakdownView, HostsView } from './hosts.js';
import { LiveFeed } from './live.js';
import { loadPref, savePref } from './prefs.js';
import { ProcsView } from './procs.js';
import { theme } from './sparkline.js';
import { Store, procKey } from './store.js';

const $ = (id) => document.getElementById(id);

const store = new Store();
// A ?token= in the page's URL is passed on to the socket (docs/protocol.md, "Token and Origin").
const token = new URLSearchParams(window.location.search).get('token');

const conn = new Connection({
  url: () => {
    const resume = store.resumePoint();
    store.resumeAsked = resume;
    return socketUrl({ since: resume?.since, epoch: resume?.epoch, token });
  },
  onObjects: (objs) => {
    store.handleAll(objs);
    schedule();
  },
  onClose: (info) => {
    store.connectionLost(info);
    schedule();
  },
  onState: () => schedule(),
});
// Missing events: ask for a resume on the same connection (replay, or reset + snapshot).
store.onGap = ({ since, epoch }) => conn.send({ op: 'subscribe', since, epoch });

// A fleet's host starts over (host.up): fetch its state alone; its events wait meanwhile.
store.onHostResync = (host) => {
  const url = new URL('api/snapshot', window.location.href);
  url.search = '';
  url.hash = '';
  url.searchParams.set('hosts', host);
  if (token) url.searchParams.set('token', token);
  fetch(url, { cache: 'no-store', headers: { Accept: 'application/json' } })
    .then((r) => (r.ok ? r.json() : null))
    .catch(() => null)
    .then((snap) => {
      if (store.fleet) store.fleet.applyHostSnapshot(host, snap);
      schedule();
    });
};

theme.read();
window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
  theme.read();
  detail.repaint();
  schedule();
});

const header = new Header(store, conn, {
  host: $('host'),
  conn: $('conn'),
  connText: $('conn-text'),
  connWait: $('conn-wait'),
  retry: $('retry'),
  pollAge: $('poll-age'),
  pollDur: $('poll-dur'),
  rate: $('ev-rate'),
  hostsBox: $('n-hosts').parentElement,
  hosts: $('n-hosts'),
  groups: $('n-groups'),
  procs: $('n-procs'),
  cpu: $('cpu-total'),
  mem: $('mem-total'),
});

let selected = null;
let watchedPid = null; // the process shown in detail
let liveCycle = false; // the live connection finished a poll since the last frame

const live = new LiveFeed(store, {
  token,
  onChange: () => schedule(),
  onCycle: () => {
    liveCycle = true;
    if (detail.isOpen) detail.sample();
  },
});

function watch() {
  live.watch(selected, watchedPid);
}

const detail = new DetailView(store, {
  token,
  onWatch: (pid) => {
    watchedPid = pid;
    watch();
    writeHash();
  },
  onClosed: () => {
    procs.vt.scroller.focus({ preventScroll: true });
    schedule();
  },
});

const hosts = new HostsView(store, {
  panel: $('hosts-panel'),
  scroller: $('hosts-scroll'),
  table: $('hosts-table'),
  count: $('hosts-count'),
  filter: $('host-filter'),
  empty: $('hosts-empty'),
}, (name) => showHost(name));

const breakdown = new BreakdownView(store, {
  box: $('procs-hosts'),
  body: $('procs-hosts-body'),
  note: $('procs-hosts-more'),
});

const groups = new GroupsView(store, {
  scroller: $('groups-scroll'),
  table: $('groups-table'),
  filter: $('group-filter'),
  hideEmpty: $('hide-empty'),
  count: $('groups-count'),
  held: $('order-held'),
  empty: $('groups-empty'),
}, (name) => select(name));

const procs = new ProcsView(store, {
  panel: $('procs-panel'),
  group: $('procs-group'),
  count: $('procs-count'),
  close: $('procs-close'),
  facts: $('procs-facts'),
  scroller: $('procs-scroll'),
  table: $('procs-table'),
  empty: $('procs-empty'),
}, () => select(null, { focusGroups: true }), (p) => detail.open(p));

const log = new LogView(store, {
  scroller: $('log-scroll'),
  table: $('log-table'),
  type: $('log-type'),
  group: $('log-group'),
  pause: $('log-pause'),
  fresh: $('log-new'),
  count: $('log-count'),
  empty: $('log-empty'),
}, (name) => {
  if (store.shownGroups().has(name)) select(name, { reveal: true });
});

/** Keep the selected group, the process shown and the host shown in the URL's #fragment. */
function writeHash() {
  const parts = [];
  if (selected !== null) {
    parts.push(`group=${encodeURIComponent(selected)}`);
    if (watchedPid !== null) parts.push(`pid=${watchedPid}`);
  }
  if (store.hostFilter !== null) parts.push(`host=${encodeURIComponent(store.hostFilter)}`);
  const hash = parts.length ? `#${parts.join('&')}` : '';
  if (window.location.hash !== hash) {
    window.history.replaceState(null, '', `${window.location.pathname}${window.location.search}${hash}`);
  }
}

/** Select a group (null: none): highlight it, list its processes, remember it in #. */
function select(name, { reveal = false, focusGroups = false } = {}) {
  selected = name;
  groups.setSelected(name, reveal);
  procs.show(name);
  watch();
  writeHash();
  if (focusGroups) groups.vt.scroller.focus({ preventScroll: true });
  schedule();
}

/** A fleet: show one host alone (null: every host) in the groups, processes and log. */
function showHost(name) {
  store.hostFilter = name;
  procs.needList = true;
  log.needList = true;
  header.totals = null;
  const now = store.serverNow();
  groups.needSort = true;
  groups.update(null, true, now); // other rows altogether: re-sorted even under the pointer
  hosts.update(null, now);
  hosts.reveal(name);
  writeHash();
  schedule();
}

/** The value of KEY in the URL's #k=v&k=v fragment; null when absent. */
function hashValue(key) {
  const m = new RegExp(`(?:^#|&)${key}=([^&]*)`).exec(window.location.hash);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return null;
  }
}

/** {group, pid} named by the URL's #group=NAME[&pid=PID]; nulls when absent. */
function selectionFromHash() {
  const group = hashValue('group');
  const pid = group === null ? null : hashValue('pid');
  return { group, pid: pid !== null && /^\d+$/.test(pid) ? Number(pid) : null };
}

const fromHash = selectionFromHash();
let revealPending = fromHash.group !== null;
let openPending = fromHash.pid;
let hostPending = hashValue('host');

function flush() {
  const changes = store.takeChanges();
  const now = store.serverNow();
  if (changes.conn) {
    document.body.classList.toggle('fleet', store.fleet !== null);
    procs.setFleet(store.fleet !== null);
    log.setFleet(store.fleet !== null);
  }
  if (store.fleet === null && store.hostFilter !== null) store.hostFilter = null;
  if (hostPending !== null && store.fleet && store.synced) {
    // A host named in the URL: show it once the fleet's hosts are known.
    const name = hostPending;
    hostPending = null;
    if (store.fleet.hosts.has(name)) showHost(name);
  }
  header.update(changes, now);
  hosts.update(changes, now);
  groups.update(changes, false, now);
  if (revealPending && store.synced) {
    // A group named in the URL: scroll to it once it exists.
    revealPending = false;
    if (selected !== null && store.shownGroups().has(selected)) {
      groups.setSelected(selected, true);
      groups.update(null, false, now);
    }
  }
  if (openPending !== null && store.synced) {
    // A process named in the URL: show it once the state is in (if it still runs).
    const p = detail.findTracked(openPending);
    openPending = null;
    if (p) detail.open(p);
  }
  if (detail.isOpen && changes.rebuilt) {
    // After a rebuild the record of the process shown is a new object: follow it.
    const p = detail.proc && store.procs.get(procKey(detail.proc));
    if (p) detail.proc = p;
  }
  procs.update(changes, now, liveCycle);
  liveCycle = false;
  breakdown.update(selected);
  detail.render(now);
  log.update(changes);
}

function schedule() {
  onFrame(flush);
}

// Ages, "last poll ... ago" and the retry countdown move with the clock.
setInterval(schedule, 1000);

// -- keyboard shortcuts -------------------------------------------------------------

const help = $('help');
$('help-open').addEventListener('click', () => help.showModal());
$('help-close').addEventListener('click', () => help.close());

// Single-character shortcuts get in the way of speech input and of anyone who presses a
// key by accident (WCAG 2.1.4): the help dialog turns them off, and the choice is kept.
const shortcutsBox = $('shortcuts');
let shortcuts = loadPref('shortcuts') !== false;

function applyShortcuts() {
  shortcutsBox.checked = shortcuts;
  for (const el of document.querySelectorAll('[data-key]')) {
    if (shortcuts) el.setAttribute('aria-keyshortcuts', el.dataset.key);
    else el.removeAttribute('aria-keyshortcuts');
  }
  $('group-filter').placeholder = shortcuts ? 'Filter groups  /' : 'Filter groups';
}

shortcutsBox.addEventListener('change', () => {
  shortcuts = shortcutsBox.checked;
  savePref('shortcuts', shortcuts);
  applyShortcuts();
});
applyShortcuts();

function isTextField(el) {
  return el instanceof HTMLTextAreaElement
    || (el instanceof HTMLInputElement && !['checkbox', 'radio', 'button', 'submit', 'reset'].includes(el.type));
}

/** A form control handles its own keys: no shortcut fires while one has the focus. */
function isControl(el) {
  return el instanceof HTMLElement
    && (el.isContentEditable || el.matches('input, select, textarea, button'));
}

document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing || e.defaultPrevented || help.open || detail.isOpen) return;
  const target = e.target;
  if (e.key === 'Escape') {
    if (isTextField(target)) {
      // Clear the filter and leave it, for the table it filters (or nowhere).
      if (target.value) {
        target.value = '';
        target.dispatchEvent(new Event('input', { bubbles: true }));
      }
      const to = target.dataset.escapeTo ? $(target.dataset.escapeTo) : null;
      if (to) to.focus();
      else target.blur();
      return;
    }
    // A <select> keeps its choice: Escape only closes its list, natively.
    if (target instanceof HTMLSelectElement) return;
    if (selected !== null) select(null, { focusGroups: true });
    return;
  }
  if (!shortcuts || isControl(target)) return;
  switch (e.key) {
    case '/':
      e.preventDefault();
      $('group-filter').focus();
      $('group-filter').select();
      break;
    case 'g':
      groups.vt.scroller.focus();
      break;
    case 'l':
      $('log-scroll').focus();
      break;
    case 'p':
      log.setPaused(!log.paused);
      break;
    case '?':
      help.showModal();
      break;
    default:
      break;
  }
});

// A #group=…&pid=… typed or followed by hand (the page writes its own with replaceState,
// which fires nothing): show what it names.
window.addEventListener('hashchange', () => {
  const want = selectionFromHash();
  if (detail.isOpen) detail.dialog.close();
  select(want.group, { reveal: true });
  openPending = want.pid;
});

select(fromHash.group);
conn.start();
schedule();
