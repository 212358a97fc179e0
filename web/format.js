// Formatting of numbers, sizes, durations, clock times and exit statuses for display.
// Pure functions: no DOM, no state. Every function returns a plain string (or a small
// object of strings) that the views put into the page with textContent.

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
const INT = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

/** "—": shown where a value is unknown or meaningless (an empty group's memory). */
export const NONE = '\u2014';

/** An integer with thousands separators: 12,345. */
export function fmtInt(n) {
  return Number.isFinite(n) ? INT.format(n) : NONE;
}

/** Bytes in IEC units with three significant digits: 512 B, 1.50 KiB, 23.4 MiB. */
export function fmtBytes(n) {
  if (!Number.isFinite(n) || n < 0) return NONE;
  if (n < 1024) return `${Math.round(n)} B`;
  let v = n;
  let i = 0;
  while (v >= 1024 && i < BYTE_UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  // 1023.96 KiB would round to "1024 KiB"; keep three significant digits honest.
  const text = v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  return `${text} ${BYTE_UNITS[i]}`;
}

/** A rate in bytes per second for a column already labelled "/s": "0" or "1.2 MiB". */
export function fmtRate(bps) {
  if (!Number.isFinite(bps)) return NONE;
  return bps < 0.5 ? '0' : fmtBytes(bps);
}

/** CPU percent (100 = one core): 0.0, 12.3, 153. */
export function fmtPct(p) {
  if (!Number.isFinite(p)) return NONE;
  return p >= 100 ? p.toFixed(0) : p.toFixed(1);
}

function pad2(n) {
  return n < 10 ? `0${n}` : String(n);
}

/** An age or uptime, coarse like `ps`: 45s, 12m 03s, 3h 12m, 5d 3h. */
export function fmtAge(sec) {
  if (!Number.isFinite(sec)) return NONE;
  const s = Math.max(0, Math.floor(sec));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad2(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${pad2(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** A process lifetime, precise for short ones: 35 ms, 1.25 s, 42.0 s, 2m 03s. */
export function fmtLifetime(sec) {
  if (!Number.isFinite(sec) || sec < 0) return NONE;
  if (sec < 1) return `${Math.round(sec * 1000)} ms`;
  if (sec < 10) return `${sec.toFixed(2)} s`;
  if (sec < 60) return `${sec.toFixed(1)} s`;
  return fmtAge(sec);
}

/** A duration in milliseconds: 0.8 ms, 12 ms, 1.3 s. */
export function fmtMs(ms) {
  if (!Number.isFinite(ms)) return NONE;
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

/** Local wall-clock time of an epoch-seconds timestamp: ["14:03:22", ".123"]. */
export function fmtClock(ts) {
  if (!Number.isFinite(ts)) return [NONE, ''];
  const d = new Date(ts * 1000);
  const hms = `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  const ms = String(d.getMilliseconds()).padStart(3, '0');
  return [hms, `.${ms}`];
}

/** A rate of events per second: 0, 3.4, 187. */
export function fmtPerSecond(r) {
  if (!Number.isFinite(r)) return NONE;
  if (r === 0) return '0';
  return r < 10 ? r.toFixed(1) : INT.format(Math.round(r));
}

// Linux signal numbers (x86, arm, most others; the kernel sends these names).
const SIGNALS = [
  null, 'HUP', 'INT', 'QUIT', 'ILL', 'TRAP', 'ABRT', 'BUS', 'FPE', 'KILL', 'USR1', 'SEGV',
  'USR2', 'PIPE', 'ALRM', 'TERM', 'STKFLT', 'CHLD', 'CONT', 'STOP', 'TSTP', 'TTIN', 'TTOU',
  'URG', 'XCPU', 'XFSZ', 'VTALRM', 'PROF', 'WINCH', 'IO', 'PWR', 'SYS',
];

/** SIGTERM for 15; SIGRTMIN+2 for 36; "signal 99" for anything else. */
export function signalName(n) {
  if (Number.isInteger(n) && n > 0 && n < SIGNALS.length) return `SIG${SIGNALS[n]}`;
  if (Number.isInteger(n) && n >= 34 && n <= 64) return n === 34 ? 'SIGRTMIN' : `SIGRTMIN+${n - 34}`;
  return `signal ${n}`;
}

// Signals a service manager or a user sends on purpose: worth noticing, not alarming.
const POLITE_SIGNALS = new Set([1, 2, 13, 15]);

/**
 * How a process ended, for the event log: {text, title, tone}. tone is "ok" (exit 0),
 * "warn" (a polite signal: TERM, INT, HUP, PIPE), "bad" (non-zero exit, any other
 * signal), "oom" (the kernel's OOM killer) or "unknown" (the source could not see the
 * exit status).
 */
export function exitStatus(ev) {
  if (ev.exit_class === 'oom_kill') {
    return {
      text: 'OOM kill',
      title: 'killed by the kernel\'s OOM killer (out of memory: SIGKILL)',
      tone: 'oom',
    };
  }
  const sig = ev.signal;
  if (sig !== null && sig !== undefined) {
    const name = signalName(sig);
    const core = ev.core_dumped ? ' (core dumped)' : '';
    return {
      text: ev.core_dumped ? `${name} core` : name,
      title: `killed by signal ${sig} (${name})${core}`,
      tone: POLITE_SIGNALS.has(sig) && !ev.core_dumped ? 'warn' : 'bad',
    };
  }
  const code = ev.exit_code;
  if (code !== null && code !== undefined) {
    return code === 0
      ? { text: '0', title: 'exited with status 0', tone: 'ok' }
      : { text: `exit ${code}`, title: `exited with status ${code}`, tone: 'bad' };
  }
  return {
    text: NONE,
    title: 'exit status unknown: this exit was seen by polling /proc, which cannot tell',
    tone: 'unknown',
  };
}

/** What a restart replaced: "pid 4199, exit 1, down 0.31 s". */
export function fmtRestart(r) {
  const how = exitStatus(r);
  const ended = how.tone === 'unknown' ? 'exit status unknown' : how.text === '0' ? 'exit 0' : how.text;
  return `pid ${r.pid}, ${ended}, down ${fmtLifetime(r.down_s)}`;
}

/** What a lifecycle event says, in words (the log's detail for group.* events). */
export function lifeText(ev) {
  const procs = `${fmtInt(ev.procs)} process${ev.procs === 1 ? '' : 'es'}`;
  switch (ev.type) {
    case 'group.missing':
      return `missing: ${procs}, at least ${fmtInt(ev.expected_min)} expected`;
    case 'group.recovered':
      return ev.expected_min === null || ev.expected_min === undefined
        ? `no longer expected: ${procs}` : `back: ${procs}, at least ${fmtInt(ev.expected_min)} expected`;
    case 'group.crashloop':
      return `crash loop: ${fmtInt(ev.restarts)} restarts after failures within ${fmtAge(ev.window_s)}`;
    case 'group.stable':
      return `stable: up ${fmtAge(ev.window_s)} without a restart, after ${fmtInt(ev.restarts)} restarts`;
    default:
      return '';
  }
}

/** argv joined for display; empty argv (kernel threads) shows the name in brackets. */
export function fmtCmdline(cmdline, name) {
  if (Array.isArray(cmdline) && cmdline.length) return cmdline.join(' ');
  return `[${name ?? '?'}]`;
}

const STATES = {
  R: 'running', S: 'sleeping', D: 'waiting (uninterruptible)', Z: 'zombie', T: 'stopped',
  t: 'stopped by a debugger', X: 'dead', I: 'idle', P: 'parked', W: 'waking', K: 'wakekill',
};

/** The scheduler state a letter of /proc/PID/stat stands for: "S sleeping". */
export function stateName(letter) {
  if (typeof letter !== 'string' || !letter) return 'not read yet';
  return `${letter} ${STATES[letter] ?? 'other'}`;
}
