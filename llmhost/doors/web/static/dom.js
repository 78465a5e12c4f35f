// Building the page: elements from data, never from HTML strings (text from the server or a model is
// always a text node, so it cannot become markup), plus the formatting every page shares.

let counter = 0;

/** A unique id for label/control pairs. */
export function uid(prefix = "id") {
  counter += 1;
  return `${prefix}-${counter}`;
}

/**
 * h("button", {class: "ghost", onclick: fn, "aria-label": "Close"}, "×")
 * Attributes: `class`, `for`, `on<event>` handlers, `dataset` (an object), booleans (true sets, false or
 * null leaves out); children: nodes, strings (text), arrays, null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element, with the same attribute rules as h(). */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (name === "value" && "value" in el && el.namespaceURI !== SVG_NS) {
      el.value = value;
    } else if (name === "checked" || name === "selected" || name === "disabled" || name === "multiple") {
      el[name] = Boolean(value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** A labelled control: the label, the control (given an id), an optional hint tied by aria-describedby. */
export function field(label, control, hint) {
  control.id = control.id || uid("f");
  const parts = [h("label", { for: control.id }, label), control];
  if (hint) {
    const hintId = uid("hint");
    control.setAttribute("aria-describedby", hintId);
    parts.push(h("span", { class: "hint", id: hintId }, hint));
  }
  return h("div", { class: "field" }, parts);
}

/** A notice box (role=alert for errors, so a screen reader announces them). */
export function notice(kind, ...content) {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, content);
}

/** Show an error (its server message) in `slot`, replacing what was there. */
export function showError(slot, error) {
  clear(slot).append(notice("error", errorText(error)));
}

export function errorText(error) {
  if (!error) return "";
  return error.message || String(error);
}

export function table(headers, rows, { caption, numeric = [] } = {}) {
  const head = h("tr", {}, headers.map((t, i) => h("th", { scope: "col", class: numeric.includes(i) ? "num" : null }, t)));
  const body = rows.map((cells) =>
    h("tr", {}, cells.map((c, i) => h("td", { class: numeric.includes(i) ? "num" : null }, c))),
  );
  return h(
    "div",
    { class: "table-wrap" },
    h("table", {}, caption ? h("caption", { class: "visually-hidden" }, caption) : null, h("thead", {}, head), h("tbody", {}, body)),
  );
}

// ----- formatting -------------------------------------------------------------------------------------
export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(n);
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 || value >= 100 ? 0 : 1)} ${units[unit]}`;
}

export function fmtNumber(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function fmtPercent(ratio) {
  if (ratio === null || ratio === undefined) return "–";
  return `${(ratio * 100).toFixed(ratio < 0.1 && ratio > 0 ? 1 : 0)}%`;
}

export function fmtCost(usd) {
  if (usd === null || usd === undefined) return "–";
  const value = Number(usd);
  if (value > 0 && value < 0.01) return `$${Number(value.toPrecision(2))}`; // $0.00081, not $0.00
  return `$${value.toFixed(2)}`;
}

export function fmtTime(unixSeconds) {
  if (!unixSeconds) return "–";
  return new Date(unixSeconds * 1000).toLocaleString();
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${hh} h`;
  if (hh) return `${hh} h ${mm} min`;
  if (mm) return `${mm} min ${s % 60} s`;
  return `${s} s`;
}

/** Announce something to screen readers and show it briefly in the corner. */
export function toast(kind, text) {
  const box = document.getElementById("notices");
  const item = notice(kind, text);
  item.setAttribute("role", "status");
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}
