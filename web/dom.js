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
