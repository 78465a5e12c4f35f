// Small SVG charts: a line chart for series over time and a horizontal bar chart for groups. Each comes
// as a <figure> with a text alternative (aria-label), a legend, and the numbers in a table for screen
// readers and for copying. Colours come from CSS (classes s0..s3), so they follow the theme.

import { h, s } from "./dom.js";

const PAD = { top: 10, right: 12, bottom: 22, left: 60 };

/** The width a chart drawn inside `el` has: its content box (so SVG text keeps its size). */
export function widthOf(el, fallback = 600) {
  const style = getComputedStyle(el);
  const inner = el.clientWidth - parseFloat(style.paddingLeft || "0") - parseFloat(style.paddingRight || "0");
  return inner > 0 ? inner : fallback;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

/** A round top for byte counts: a nice number of KiB, MiB or GiB. */
function niceBinary(value) {
  if (!(value > 0)) return 1024;
  let unit = 1;
  while (value / unit >= 1024) unit *= 1024;
  return niceMax(value / unit) * unit;
}

function dataTable(headers, rows) {
  return h(
    "details",
    { class: "data-table" },
    h("summary", {}, "Show the numbers"),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))),
      ),
    ),
  );
}

/**
 * lineChart({title, series: [{name, values}], labels, width, height, format})
 * `values` may hold null (a gap); `labels` name the x positions (shown first and last, and in the table).
 */
export function lineChart({ title, series, labels = [], width = 600, height = 170, format = String, integer = false, binary = false }) {
  const w = Math.max(240, Math.round(width));
  const innerW = w - PAD.left - PAD.right;
  const innerH = height - PAD.top - PAD.bottom;
  const count = Math.max(2, ...series.map((x) => x.values.length));
  const all = series.flatMap((x) => x.values).filter((v) => v !== null && v !== undefined);
  const peak = Math.max(0, ...all);
  const top = integer ? Math.max(4, Math.ceil(niceMax(peak) / 4) * 4) : binary ? niceBinary(peak) : niceMax(peak);
  const x = (i) => PAD.left + (innerW * i) / (count - 1);
  const y = (v) => PAD.top + innerH - (innerH * v) / top;
  const svg = s("svg", {
    class: "chart",
    viewBox: `0 0 ${w} ${height}`,
    width: w,
    height,
    role: "img",
    "aria-label": `${title}: ${series.map((x) => `${x.name} now ${format(x.values.at(-1) ?? 0)}`).join(", ")}`,
  });
  for (let k = 0; k <= 4; k += 1) {
    const v = (top * k) / 4;
    svg.append(
      s("line", { class: "grid-line", x1: PAD.left, x2: w - PAD.right, y1: y(v), y2: y(v) }),
      s("text", { class: "tick-label", x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)),
    );
  }
  if (labels.length) {
    svg.append(
      s("text", { class: "tick-label", x: PAD.left, y: height - 6 }, labels[0]),
      s("text", { class: "tick-label", x: w - PAD.right, y: height - 6, "text-anchor": "end" }, labels.at(-1)),
    );
  }
  series.forEach((line, n) => {
    let path = "";
    let pen = false;
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) {
        pen = false;
        return;
      }
      path += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    if (path) svg.append(s("path", { class: `line s${n % 4}`, d: path }));
    const last = line.values.length - 1;
    if (last >= 0 && line.values[last] !== null && line.values[last] !== undefined) {
      svg.append(s("circle", { class: `s${n % 4}`, cx: x(last), cy: y(line.values[last]), r: 3 }));
    }
  });
  const legend = h(
    "ul",
    { class: "legend" },
    series.map((line, n) => h("li", {}, h("span", { class: `swatch s${n % 4}`, "aria-hidden": "true" }), line.name)),
  );
  const rows = [];
  for (let i = 0; i < count; i += 1) {
    if (series.every((line) => line.values[i] === undefined)) continue;
    rows.push([labels[i] ?? String(i + 1), ...series.map((line) => (line.values[i] === null || line.values[i] === undefined ? "–" : format(line.values[i])))]);
  }
  return h("figure", { class: "chart-figure" }, h("figcaption", { class: "small muted" }, title), svg, legend, dataTable(["", ...series.map((l) => l.name)], rows));
}

/** barChart({title, items: [{label, value}], width, format}): one horizontal bar per item. */
export function barChart({ title, items, width = 600, format = String }) {
  const w = Math.max(260, Math.round(width));
  const labelW = Math.min(180, Math.round(w * 0.36));
  const valueW = 70;
  const barH = 18;
  const gap = 8;
  const height = Math.max(1, items.length) * (barH + gap) + gap;
  const top = Math.max(0, ...items.map((i) => i.value)) || 1;
  const innerW = w - labelW - valueW - 8;
  const svg = s("svg", {
    class: "chart",
    viewBox: `0 0 ${w} ${height}`,
    width: w,
    height,
    role: "img",
    "aria-label": `${title}: ${items.map((i) => `${i.label} ${format(i.value)}`).join(", ") || "no data"}`,
  });
  items.forEach((item, n) => {
    const yTop = gap + n * (barH + gap);
    const label = item.label.length > 26 ? `${item.label.slice(0, 25)}…` : item.label;
    svg.append(
      s("text", { class: "bar-label", x: labelW - 6, y: yTop + barH - 5, "text-anchor": "end" }, s("title", {}, item.label), label),
      s("rect", { class: "s0", x: labelW, y: yTop, height: barH, width: Math.max(1, (innerW * item.value) / top), rx: 3 }),
      s("text", { class: "bar-value", x: labelW + Math.max(1, (innerW * item.value) / top) + 6, y: yTop + barH - 5 }, format(item.value)),
    );
  });
  return h(
    "figure",
    { class: "chart-figure" },
    h("figcaption", { class: "small muted" }, title),
    svg,
    dataTable(["", title], items.map((i) => [i.label, format(i.value)])),
  );
}
