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
