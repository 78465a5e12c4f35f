// Usage and cost: /api/usage grouped by model (the name asked for: a model or a route), key, day, door,
// provider or target, over the last N days, as a chart and a table.

import { api } from "./api.js";
import { barChart, lineChart, widthOf } from "./charts.js";
import { clear, errorText, field, fmtCost, fmtNumber, h, notice, table } from "./dom.js";

const GROUPS = [
  ["model", "Model or route"],
  ["key", "API key"],
  ["day", "Day"],
  ["door", "Door (dialect)"],
  ["provider", "Provider"],
  ["target", "Target"],
];
const METRICS = {
  requests: { label: "Requests", value: (r) => r.requests, format: (v) => fmtNumber(v) },
  tokens: { label: "Tokens (prompt + completion)", value: (r) => r.prompt_tokens + r.completion_tokens, format: (v) => fmtNumber(v) },
  cost: { label: "Cost (USD)", value: (r) => r.cost, format: fmtCost },
  latency: { label: "Mean latency (ms)", value: (r) => r.avg_latency_ms, format: (v) => fmtNumber(v, 1) },
};

export function render(view) {
  const by = h("select", { name: "by" }, GROUPS.map(([v, l]) => h("option", { value: v }, l)));
  const days = h(
    "select",
    { name: "days" },
    [["1", "Last day"], ["7", "Last 7 days"], ["30", "Last 30 days"], ["90", "Last 90 days"], ["", "All time"]].map(([v, l]) => h("option", { value: v, selected: v === "30" }, l)),
  );
  const metric = h("select", { name: "metric" }, Object.entries(METRICS).map(([v, m]) => h("option", { value: v }, m.label)));
  const errors = h("div");
  const totals = h("div", { class: "stats" });
  const chartEl = h("div", { class: "card" });
  const tableEl = h("div");
  let rows = [];
  let shownBy = "model";

  function draw() {
    const m = METRICS[metric.value];
    const label = (r) => (r[shownBy] === null || r[shownBy] === undefined || r[shownBy] === "" ? "(none)" : String(r[shownBy]));
    const sum = (f) => rows.reduce((a, r) => a + f(r), 0);
    clear(totals).append(
      ...[
        ["Requests", fmtNumber(sum((r) => r.requests))],
        ["Answered", fmtNumber(sum((r) => r.ok))],
        ["Tokens", fmtNumber(sum((r) => r.prompt_tokens + r.completion_tokens))],
        ["Cost", fmtCost(sum((r) => r.cost))],
      ].map(([l, v]) => h("div", { class: "stat card" }, h("span", { class: "value" }, v), h("span", { class: "label" }, l))),
    );
    const width = widthOf(chartEl);
    clear(chartEl);
    if (!rows.length) {
      chartEl.append(h("p", { class: "muted" }, "No requests in this period."));
    } else if (shownBy === "day") {
      const sorted = [...rows].sort((a, b) => String(a.day).localeCompare(String(b.day)));
      chartEl.append(lineChart({ title: `${m.label} per day`, series: [{ name: m.label, values: sorted.map(m.value) }], labels: sorted.map(label), width, height: 200, format: m.format }));
    } else {
      const sorted = [...rows].sort((a, b) => m.value(b) - m.value(a)).slice(0, 20);
      chartEl.append(barChart({ title: `${m.label} by ${shownBy}`, items: sorted.map((r) => ({ label: label(r), value: m.value(r) })), width, format: m.format }));
    }
    clear(tableEl).append(
      table(
        [GROUPS.find(([v]) => v === shownBy)[1], "Requests", "Answered", "Prompt tokens", "Completion tokens", "Cached tokens", "Cost", "Mean latency"],
        rows.map((r) => [label(r), fmtNumber(r.requests), fmtNumber(r.ok), fmtNumber(r.prompt_tokens), fmtNumber(r.completion_tokens), fmtNumber(r.cached_tokens), fmtCost(r.cost), `${fmtNumber(r.avg_latency_ms, 1)} ms`]),
        { caption: "Usage", numeric: [1, 2, 3, 4, 5, 6, 7] },
      ),
    );
  }

  async function load() {
    clear(errors);
    const params = new URLSearchParams({ by: by.value });
    if (days.value) params.set("days", days.value);
    try {
      const answer = await api(`/api/usage?${params}`);
      rows = answer.rows;
      shownBy = answer.by;
      draw();
    } catch (error) {
      errors.append(notice("error", errorText(error)));
    }
  }

  by.addEventListener("change", load);
  days.addEventListener("change", load);
  metric.addEventListener("change", draw);
  let resizeTimer = null;
  const onResize = () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(draw, 200);
  };
  window.addEventListener("resize", onResize);

  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Usage and cost"), h("div", { class: "actions" }, h("button", { type: "button", class: "ghost", onclick: load }, "Refresh"))),
    h("form", { class: "card row", "aria-label": "What to show", onsubmit: (e) => e.preventDefault() }, field("Group by", by), field("Period", days), field("Chart", metric)),
    errors,
    totals,
    chartEl,
    h("section", { class: "card", "aria-labelledby": "usage-table" }, h("h2", { id: "usage-table" }, "Table"), tableEl),
  );
  load();
  return () => window.removeEventListener("resize", onResize);
}
