// The WebSocket to /ws: connects, hands every received object to the caller in order,
// and reconnects by itself with exponential backoff. It knows the wire format (every
// frame is a JSON array) but nothing of what the objects mean: the caller builds the URL
// (with since/epoch for a resume) each time a connection is made.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;
// A connection that stayed up this long was a good one: the next failure starts the
// backoff from the beginning again.
const HEALTHY_MS = 10000;
// The server sends a cycle every poll and a bookmark after 15 s of silence; nothing for
// this long means a dead network path the browser has not noticed yet.
const SILENCE_MS = 45000;

/**
 * The URL of /ws next to the page (works behind a path prefix), ws: or wss: to match
 * the page, with `params` as its query.
 */
export function socketUrl(params) {
  const url = new URL('ws', window.location.href);
  url.protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  url.search = '';
  url.hash = '';
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== '') url.searchParams.set(key, String(value));
  }
  return url.href;
}

export class Connection {
  /**
   * @param {object} handlers
   * @param {() => string} handlers.url          called before each connection attempt
   * @param {(objs: object[]) => void} handlers.onObjects  the objects of one frame, in order
   * @param {(info: {code: number, reason: string, wasOpen: boolean}) => void} [handlers.onClose]
   * @param {() => void} [handlers.onState]     state, attempt or retry time changed
   */
  constructor(handlers) {
    this.h = handlers;
    /** 'idle' | 'connecting' | 'open' | 'waiting' (backing off before the next try) */
    this.state = 'idle';
    this.attempt = 0; // failures in a row
    this.retryAt = 0; // performance.now() of the next try while waiting
    this.lastClose = null;
    this.ws = null;
    this.openedAt = 0;
    this.lastMessageAt = 0;
    this.timer = 0;
    this.watchdog = 0;
    this.listening = false;
  }

  /** Connect now and keep connected until stop() or the page goes away. */
  start() {
    if (!this.listening) {
      this.listening = true;
      window.addEventListener('online', () => this.retryNow());
      document.addEventListener('visibilitychange', () => {
        if (document.visibilityState === 'visible') this.retryNow();
      });
    }
    if (this.state === 'idle') {
      this.attempt = 0;
      this.connect();
    }
  }

  /** Close the connection (if any) and stop reconnecting until start() is called again. */
  stop() {
    clearTimeout(this.timer);
    clearInterval(this.watchdog);
    const ws = this.ws;
    this.ws = null;
    this.openedAt = 0;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        /* already closing */
      }
    }
    this.setState('idle');
  }

  /** Skip the rest of the backoff wait (the "retry now" button, the network came back). */
  retryNow() {
    if (this.state !== 'waiting') return;
    clearTimeout(this.timer);
    this.connect();
  }

  /** Send one JSON request; false when not connected. */
  send(obj) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  connect() {
    this.setState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.h.url());
    } catch (err) {
      // Only a malformed URL throws here; retrying later cannot fix it, but backing
      // off keeps the page alive and the state visible.
      this.lastClose = { code: 0, reason: String(err), wasOpen: false };
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.openedAt = performance.now();
      this.lastMessageAt = this.openedAt;
      this.armWatchdog();
      this.setState('open');
    };
    ws.onmessage = (e) => {
      if (ws !== this.ws) return;
      this.lastMessageAt = performance.now();
      let objs;
      try {
        objs = JSON.parse(e.data);
      } catch {
        // Not our protocol (a proxy's error page?): start over with a clean stream.
        this.drop(ws, { code: 4000, reason: 'malformed frame', wasOpen: true });
        return;
      }
      this.h.onObjects(Array.isArray(objs) ? objs : [objs]);
    };
    ws.onerror = () => {}; // a close event always follows; handled there
    ws.onclose = (e) => {
      if (ws !== this.ws) return;
      this.drop(ws, { code: e.code, reason: e.reason, wasOpen: this.openedAt > 0 });
    };
  }

  /** Forget `ws` (closing it if needed), report the close and schedule the next try. */
  drop(ws, info) {
    const lived = this.openedAt ? performance.now() - this.openedAt : 0;
    this.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
      try {
        ws.close(info.code >= 4000 ? info.code : 1000);
      } catch {
        /* already closing */
      }
    }
    clearInterval(this.watchdog);
    if (lived >= HEALTHY_MS) this.attempt = 0;
    this.openedAt = 0;
    this.lastClose = info;
    if (this.h.onClose) this.h.onClose(info);
    this.scheduleRetry();
  }

  scheduleRetry() {
    // Exponential backoff with jitter, so a restarted server is not hit by every
    // viewer at the same instant.
    const base = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** this.attempt);
    const delay = base * (0.75 + Math.random() * 0.5);
    this.attempt += 1;
    this.retryAt = performance.now() + delay;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
    this.setState('waiting');
  }

  armWatchdog() {
    clearInterval(this.watchdog);
    const ws = this.ws;
    this.watchdog = setInterval(() => {
      if (ws === this.ws && performance.now() - this.lastMessageAt > SILENCE_MS) {
        this.drop(ws, { code: 4001, reason: 'no data from the server', wasOpen: true });
      }
    }, 5000);
  }

  setState(state) {
    this.state = state;
    if (this.h.onState) this.h.onState();
  }
}
