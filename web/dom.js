// DOM writes that happen only when something changes. The views bring the page up to
// date every animation frame; writing an unchanged attribute still counts as a mutation
// (observers, accessibility tree, style invalidation), so each write is checked first.

/** Set `el`'s text content to `text` unless it already shows it. */
export function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

/** Show or hide `el` (the hidden attribute). */
export function setHidden(el, hidden) {
  if (el.hidden !== hidden) el.hidden = hidden;
}

/** Set attribute `name` to `value` (a string), or remove it when `value` is null. */
export function setAttr(el, name, value) {
  if (value === null) {
    if (el.hasAttribute(name)) el.removeAttribute(name);
  } else if (el.getAttribute(name) !== value) {
    el.setAttribute(name, value);
  }
}

/**
 * A table cell holding one badge: `st` is {text, tone, title?}; the badge (a <span>
 * kept on the row as `tr[slot + 'Badge']`) gets class `prefix + tone` (none when it
 * says nothing) and the cell the title. Written only when `st` differs from the last.
 */
export function paintBadge(td, tr, slot, st, prefix) {
  const title = st.title ?? '';
  const key = `${st.tone}|${st.text}|${title}`;
  if (tr[slot] === key) return;
  tr[slot] = key;
  const badgeSlot = `${slot}Badge`;
  if (!tr[badgeSlot]) {
    tr[badgeSlot] = document.createElement('span');
    td.append(tr[badgeSlot]);
  }
  const badge = tr[badgeSlot];
  badge.textContent = st.text;
  badge.className = st.text ? `${prefix}${st.tone}` : '';
  td.title = title;
}

/**
 * Fill `dl` with one <dt>label</dt><dd></dd> pair per [id, label, ...] of `facts`, each
 * pair in a <div> (a grid cell); returns the <dd>s by id, for the caller to keep filled.
 */
export function factList(dl, facts) {
  const cells = new Map();
  for (const [id, label] of facts) {
    const div = document.createElement('div');
    const dt = document.createElement('dt');
    dt.textContent = label;
    const dd = document.createElement('dd');
    dd.dataset.fact = id;
    div.append(dt, dd);
    dl.append(div);
    cells.set(id, dd);
  }
  return cells;
}
