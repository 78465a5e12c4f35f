// Live server view: /api/status every 2 s while this page is shown and the tab is visible (polling stops
// when it is hidden or left), with charts of the last two minutes. Throughput is the change in generated
// tokens between two polls over the time between them.

import { api } from "./api.js";
import { lineChart, widthOf } from "./charts.js";
import { clear, errorText, fmtBytes, fmtDuration, fmtNumber, fmtPercent, h, notice, table } from "./dom.js";

const PERIOD_MS = 2000;
const KEEP = 60; // samples: two minutes

// Kept across visits to the page, so coming back shows the recent past.
const history = [];

function sample(status, previous) {
  const now = Date.now();
  let throughput = null;
  if (previous) {
    const tokens = status.generation_tokens - previous.generated;
    const seconds = (now - previous.at) / 1000;
    throughput = tokens >= 0 && seconds > 0 ? tokens / seconds : null; // < 0: a model was reloaded
  }
  return {
    at: now,
    label: new Date(now).toLocaleTimeString(),
    generated: status.generation_tokens,
    throughput,
    busy: status.slots_busy,
    waiting: status.requests_waiting,
    ram: status.memory.ram_used_bytes,
  };
}

function breakerBadge(state) {
  const kind = state === "closed" ? "ok" : state === "open" ? "bad" : "warn";
  return h("span", { class: `badge ${kind}` }, state.replace("_", "-"));
}

export function render(view) {
  let timer = null;
  let stopped = false;
  let inFlight = false; // one poll at a time, even when the tab is hidden and shown again mid-poll
  const errors = h("div");
  const stats = h("div", { class: "stats" });
  const charts = h("div", { class: "grid" });
  const modelsEl = h("div");
  const breakersEl = h("div");
  const updated = h("span", { class: "small muted" });
  const liveState = h("span", { class: "small muted", role: "status" }, "Updating every 2 s.");

  function stat(label, value) {
    return h("div", { class: "stat card" }, h("span", { class: "value" }, value), h("span", { class: "label" }, label));
  }

  function draw(status) {
    const last = history.at(-1);
    clear(stats).append(
      stat("Uptime", fmtDuration(status.uptime_seconds)),
      stat("Models loaded", String(status.models.length)),
      stat("Slots busy", `${status.slots_busy} of ${status.slots}`),
      stat("Queued requests", String(status.requests_waiting)),
      stat("Tokens per second", last && last.throughput !== null ? fmtNumber(last.throughput, 1) : "–"),
      stat("CPU", `${fmtNumber(status.system.cpu_percent)}%`),
    );
    const labels = history.map((x) => x.label);
    const rate = (v) => fmtNumber(v, v < 1 ? 2 : v < 10 ? 1 : 0);
    const specs = [
      { title: "Throughput (tokens per second, all requests)", series: [{ name: "tokens/s", values: history.map((x) => x.throughput) }], format: rate },
      { title: "Slots busy and queued requests", series: [{ name: "slots busy", values: history.map((x) => x.busy) }, { name: "queued", values: history.map((x) => x.waiting) }], format: (v) => fmtNumber(v), integer: true },
      { title: `Model memory (RAM budget ${fmtBytes(status.memory.ram_budget_bytes)})`, series: [{ name: "RAM in use", values: history.map((x) => x.ram) }], format: fmtBytes, binary: true },
    ];
    // Every card first, then the charts: each is drawn at its card's final width.
    const cards = specs.map(() => h("div", { class: "card" }));
    clear(charts).append(...cards);
    specs.forEach((spec, i) => cards[i].append(lineChart({ ...spec, labels, width: widthOf(cards[i]) })));
    clear(modelsEl).append(
      status.models.length
        ? table(
            ["Model", "Device", "Memory", "Slots busy", "Queue", "Decode tok/s", "TTFT mean", "TTFT p50", "Prefix-cache hits", "Requests"],
            status.models.map((m) => [
              h("span", { class: "mono" }, m.name),
              m.device.toUpperCase(),
              fmtBytes(m.memory_bytes),
              m.embedding_only ? "–" : `${m.slots_busy} / ${m.slots}`,
              String(m.waiting),
              m.decode_tokens_per_second === null ? "–" : fmtNumber(m.decode_tokens_per_second, 1),
              m.ttft_mean_ms === null ? "–" : `${fmtNumber(m.ttft_mean_ms, 1)} ms`,
              m.ttft_p50_ms === null ? "–" : `${fmtNumber(m.ttft_p50_ms, 1)} ms`,
              m.prefix_hit_ratio === null ? "–" : `${fmtPercent(m.prefix_hit_ratio)} (${fmtNumber(m.prefix_hit_tokens)} tokens)`,
              fmtNumber(m.requests),
            ]),
            { caption: "Loaded models", numeric: [2, 4, 5, 6, 7, 9] },
          )
        : h("p", { class: "muted" }, "No model is loaded."),
    );
    clear(breakersEl).append(
      status.breakers.length
        ? table(
            ["Route", "Target", "Breaker", "Probe in", "p50 latency"],
            status.breakers.map((b) => [b.route, h("span", { class: "mono" }, b.target), breakerBadge(b.breaker), b.retry_in_s ? `${fmtNumber(b.retry_in_s, 1)} s` : "–", b.p50_latency_ms === null ? "–" : `${fmtNumber(b.p50_latency_ms, 1)} ms`]),
            { caption: "Circuit breakers", numeric: [4] },
          )
        : h("p", { class: "muted" }, "No routes are configured."),
    );
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }

  async function poll() {
    timer = null;
    if (stopped || inFlight || document.visibilityState !== "visible") return;
    inFlight = true;
    try {
      const status = await api("/api/status");
      if (stopped) return;
      history.push(sample(status, history.at(-1)));
      while (history.length > KEEP) history.shift();
      clear(errors);
      draw(status);
    } catch (error) {
      if (stopped) return;
      clear(errors).append(notice("error", errorText(error)));
    } finally {
      inFlight = false;
    }
    if (!stopped && document.visibilityState === "visible") timer = setTimeout(poll, PERIOD_MS);
  }

  function onVisibility() {
    if (document.visibilityState === "visible") {
      liveState.textContent = "Updating every 2 s.";
      if (!timer) poll();
    } else {
      liveState.textContent = "Paused while this tab is hidden.";
      if (timer) clearTimeout(timer);
      timer = null;
    }
  }
  document.addEventListener("visibilitychange", onVisibility);

  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Live"), h("div", { class: "actions" }, liveState, updated)),
    errors,
    stats,
    h("h2", { class: "visually-hidden" }, "Charts"),
    charts,
    h("section", { class: "card", "aria-labelledby": "live-models" }, h("h2", { id: "live-models" }, "Loaded models"), modelsEl),
    h("section", { class: "card", "aria-labelledby": "live-breakers" }, h("h2", { id: "live-breakers" }, "Route targets"), breakersEl),
  );
  poll();
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisibility);
  };
}
