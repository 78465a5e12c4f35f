// The audit log: the newest records (/api/audit/recent), optionally one key's, and a button that walks
// the hash chain (/api/audit/verify) and says whether it holds, and where not.

import { api } from "./api.js";
import { clear, errorText, field, fmtCost, fmtNumber, fmtTime, h, notice, table, toast } from "./dom.js";

export function render(view) {
  const keyFilter = h("input", { type: "text", name: "key", placeholder: "all keys (or a key id: key_…)", autocomplete: "off", spellcheck: "false" });
  const limit = h("select", { name: "limit" }, ["50", "100", "500", "1000"].map((v) => h("option", { value: v, selected: v === "100" }, v)));
  const verifyButton = h("button", { type: "button" }, "Verify the chain");
  const verdict = h("div", { "aria-live": "polite" });
  const errors = h("div");
  const listEl = h("div", {}, h("p", { class: "muted" }, "Loading…"));

  async function load() {
    clear(errors);
    const params = new URLSearchParams({ limit: limit.value });
    if (keyFilter.value.trim()) params.set("key", keyFilter.value.trim());
    try {
      const answer = await api(`/api/audit/recent?${params}`);
      const records = [...answer.data].reverse(); // newest first on screen
      clear(listEl).append(
        records.length
          ? table(
              ["#", "Time", "Key", "Door", "Kind", "Model", "Target", "Status", "Tokens", "Cost", "Latency"],
              records.map((r) => [
                String(r.seq),
                fmtTime(r.ts),
                r.principal + (r.key_id ? ` (${r.key_id})` : ""),
                r.door,
                r.kind,
                h("span", { class: "mono" }, r.model || "–"),
                h("span", { class: "mono" }, r.target || "–"),
                h("span", { class: `badge ${r.status < 400 ? "ok" : "bad"}` }, String(r.status)),
                `${fmtNumber(r.prompt_tokens)} + ${fmtNumber(r.completion_tokens)}`,
                fmtCost(r.cost),
                `${fmtNumber(r.latency_ms, 1)} ms`,
              ]),
              { caption: "Audit records, newest first", numeric: [0, 8, 9, 10] },
            )
          : h("p", { class: "muted" }, "No records."),
      );
    } catch (error) {
      errors.append(notice("error", errorText(error)));
    }
  }

  async function verify() {
    verifyButton.disabled = true;
    clear(verdict).append(h("p", { class: "muted" }, "Walking the chain…"));
    try {
      const result = await api("/api/audit/verify");
      clear(verdict);
      if (result.ok) {
        const head = result.head;
        verdict.append(
          notice(
            "ok",
            h("strong", {}, "The chain holds. "),
            result.rows ? `${fmtNumber(result.rows)} rows, none edited, deleted or reordered. Keep the head elsewhere to detect rows cut off the end later: ` : "The audit log is empty.",
            head ? h("code", { class: "mono" }, head) : null,
            head ? h("button", { type: "button", class: "ghost small", onclick: () => copy(head) }, "Copy head") : null,
          ),
        );
      } else {
        verdict.append(
          notice("error", h("strong", {}, `The chain is broken: ${result.breaks.length} problem(s) in ${fmtNumber(result.rows)} rows.`), h("ul", {}, result.breaks.map((b) => h("li", {}, `row ${b.seq}: ${b.reason}`)))),
        );
      }
    } catch (error) {
      clear(verdict).append(notice("error", errorText(error)));
    } finally {
      verifyButton.disabled = false;
    }
  }

  async function copy(text) {
    try {
      await navigator.clipboard.writeText(text);
      toast("ok", "Copied");
    } catch (error) {
      toast("error", `Could not copy: ${error.message}`);
    }
  }

  verifyButton.addEventListener("click", verify);
  const filters = h("form", { class: "card row end", "aria-label": "Filter the records" }, field("Key", keyFilter), field("Records", limit), h("button", { type: "submit", class: "ghost" }, "Show"));
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    load();
  });
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Audit log"), h("div", { class: "actions" }, verifyButton)),
    verdict,
    filters,
    errors,
    h("section", { class: "card", "aria-labelledby": "audit-list" }, h("h2", { id: "audit-list" }, "Newest records"), listEl),
  );
  load();
}
