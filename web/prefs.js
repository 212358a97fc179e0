// Small user preferences (sort orders, filters) remembered across visits in
// localStorage. Storage can be absent or full (private windows, quotas): then the
// viewer simply forgets.

const PREFIX = 'procstream.';

/** The stored value of `name`, or undefined. */
export function loadPref(name) {
  try {
    const raw = window.localStorage.getItem(PREFIX + name);
    return raw === null ? undefined : JSON.parse(raw);
  } catch {
    return undefined;
  }
}

/** Remember `value` (JSON-serialisable) as `name`. */
export function savePref(name, value) {
  try {
    window.localStorage.setItem(PREFIX + name, JSON.stringify(value));
  } catch {
    /* storage unavailable: not worth bothering the user */
  }
}
