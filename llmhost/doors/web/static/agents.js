// Agents (/v1/agents): the list; a step-by-step create flow (model → system prompt → policy → tools →
// datasets → test chat); and each agent's scorecard (/v1/agents/{name}/scorecard) with its recent runs.

import { api, call, optional } from "./api.js";
import { clear, errorText, field, fmtCost, fmtNumber, fmtPercent, fmtTime, h, notice, table, toast, uid } from "./dom.js";

const path = (name) => `/v1/agents/${encodeURIComponent(name)}`;
const OWN_GROUPS = [
  ["inference", "inference (chat, complete, embed)"],
  ["models", "models (list, show, load …)"],
  ["monitoring", "monitoring (status, usage)"],
  ["audit", "audit (audit log, config checks)"],
];

export function render(view, ctx) {
  const [first] = ctx.params;
  if (first === "new") return createFlow(view);
  if (first) return detail(view, first);
  return list(view);
}

// ----- the list ----------------------------------------------------------------------------------------
function list(view) {
  const errors = h("div");
  const listEl = h("div", {}, h("p", { class: "muted" }, "Loading the agents…"));
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Agents"), h("div", { class: "actions" }, h("a", { class: "button", href: "#/agents/new" }, "Create an agent"))),
    errors,
    h("section", { class: "card", "aria-labelledby": "agents-list" }, h("h2", { id: "agents-list" }, "Agents"), listEl),
  );
  api("/v1/agents")
    .then((answer) => {
      clear(listEl).append(
        answer.data.length
          ? table(
              ["Name", "Model", "Description", "Datasets", "Tools", "Updated"],
              answer.data.map((a) => [
                h("a", { href: `#/agents/${encodeURIComponent(a.name)}` }, a.name),
                h("span", { class: "mono" }, a.model),
                a.description || "–",
                a.datasets.join(", ") || "–",
                [...a.tool_groups, ...a.tools.map((t) => t.function.name), ...a.mcp_servers.map((s) => `mcp:${s.name}`)].join(", ") || "–",
                fmtTime(a.updated),
              ]),
              { caption: "Agents" },
            )
          : h("p", { class: "muted" }, "No agents yet."),
      );
    })
    .catch((error) => {
      clear(listEl);
      errors.append(notice("error", errorText(error)));
    });
}

// ----- step by step ------------------------------------------------------------------------------------
const STEPS = ["Model", "System prompt", "Policy", "Tools", "Datasets", "Test chat"];

function createFlow(view) {
  let step = 0;
  let created = null;
  const steps = h("ol", { class: "steps", "aria-label": "Steps" }, STEPS.map((s) => h("li", {}, s)));
  const body = h("div", { class: "card stack" });
  const errors = h("div", { "aria-live": "assertive" });
  const back = h("button", { type: "button", class: "ghost" }, "Back");
  const next = h("button", { type: "submit" }, "Next");

  // The definition's fields, kept across steps.
  const name = h("input", { type: "text", name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._:\\-]{0,63}", autocomplete: "off" });
  const description = h("input", { type: "text", name: "description", autocomplete: "off" });
  const model = h("select", { name: "model" }, h("option", { value: "" }, "Loading…"));
  const system = h("textarea", { name: "system", rows: 6, placeholder: "You answer questions about our product from the documents you are given. Cite them." });
  const temperature = h("input", { type: "number", name: "temperature", min: "0", max: "2", step: "0.1", placeholder: "model default" });
  const maxTokens = h("input", { type: "number", name: "max_tokens", min: "1", step: "1", placeholder: "model default" });
  const policy = h("input", { type: "text", name: "policy", placeholder: "the default [policy]", autocomplete: "off" });
  const scope = h("input", { type: "text", name: "scope", placeholder: "any key with inference", autocomplete: "off" });
  const groupBoxes = OWN_GROUPS.map(([value, label]) => {
    const id = uid("group");
    return { value, box: h("input", { type: "checkbox", id, value }), label: h("label", { for: id }, label) };
  });
  const tools = h("textarea", { name: "tools", rows: 4, placeholder: '[{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}]' });
  const maxSteps = h("input", { type: "number", name: "max_steps", min: "1", max: "16", value: "4" });
  const datasetBox = h("div", { class: "checks" }, h("span", { class: "muted" }, "Loading the datasets…"));
  const retrievalK = h("input", { type: "number", name: "retrieval_k", min: "1", max: "50", value: "4" });

  Promise.all([api("/v1/models"), optional("/v1/datasets")])
    .then(([models, datasets]) => {
      clear(model).append(...models.data.map((m) => h("option", { value: m.id }, m.id)));
      clear(datasetBox);
      const names = (datasets?.data || []).map((d) => d.name);
      if (!names.length) datasetBox.append(h("span", { class: "muted" }, datasets ? "No datasets yet (create them on the Datasets page)." : "Datasets are not available to this key."));
      for (const n of names) {
        const id = uid("ds");
        datasetBox.append(h("label", { for: id }, h("input", { type: "checkbox", id, value: n, name: "datasets" }), n));
      }
    })
    .catch((error) => errors.append(notice("error", errorText(error))));

  function spec() {
    const out = { name: name.value.trim(), model: model.value, description: description.value, system: system.value, sampling: {} };
    if (temperature.value.trim()) out.sampling.temperature = Number.parseFloat(temperature.value);
    if (maxTokens.value.trim()) out.sampling.max_tokens = Number.parseInt(maxTokens.value, 10);
    if (policy.value.trim()) out.policy = policy.value.trim();
    if (scope.value.trim()) out.scope = scope.value.trim();
    out.tool_groups = groupBoxes.filter((g) => g.box.checked).map((g) => g.value);
    if (tools.value.trim()) {
      let parsed;
      try {
        parsed = JSON.parse(tools.value);
      } catch (error) {
        throw new Error(`function tools are not valid JSON: ${error.message}`);
      }
      if (!Array.isArray(parsed)) throw new Error("function tools must be a JSON array");
      out.tools = parsed;
    }
    out.max_steps = Number.parseInt(maxSteps.value, 10) || 4;
    out.datasets = [...datasetBox.querySelectorAll("input:checked")].map((x) => x.value);
    out.retrieval_k = Number.parseInt(retrievalK.value, 10) || 4;
    return out;
  }

  const pages = [
    () => [h("h2", {}, "1. Model"), h("p", { class: "muted" }, "Name the agent and pick the model or route that answers for it. Callers use the agent's name as the model name, in any dialect."), h("div", { class: "row" }, field("Agent name", name, "Letters, digits, . _ : -"), field("Model or route", model)), field("Description", description)],
    () => [h("h2", {}, "2. System prompt"), field("System prompt", system), h("div", { class: "row" }, field("Temperature", temperature), field("Max tokens", maxTokens))],
    () => [h("h2", {}, "3. Policy"), h("p", { class: "muted" }, "A governance policy from the server's config ([policies.NAME]) applies to every request to the agent; a scope limits who may use it."), h("div", { class: "row" }, field("Policy", policy), field("Key scope needed", scope))],
    () => [
      h("h2", {}, "4. Tools"),
      h("fieldset", {}, h("legend", {}, "llmhost's own tools (the server runs them, audited)"), h("div", { class: "checks" }, groupBoxes.map((g) => h("span", {}, g.box, " ", g.label)))),
      field("Function tools (JSON array)", tools, "The caller runs these: the answer carries the calls"),
      field("Most tool steps", maxSteps),
    ],
    () => [h("h2", {}, "5. Datasets"), h("p", { class: "muted" }, "Answers draw on these documents and cite them."), h("fieldset", {}, h("legend", {}, "Datasets"), datasetBox), field("Chunks retrieved", retrievalK)],
    () => testChat(created),
  ];

  function draw() {
    [...steps.children].forEach((li, i) => {
      if (i === step) li.setAttribute("aria-current", "step");
      else li.removeAttribute("aria-current");
      li.classList.toggle("done", i < step);
    });
    // Steps 1-5 are a form (Enter goes on); the test chat is a form of its own.
    const content = pages[step]();
    const nav = h("div", { class: "wizard-nav" }, back, next);
    if (step < STEPS.length - 1) {
      const form = h("form", { class: "stack" }, content, errors, nav);
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        forward();
      });
      clear(body).append(form);
    } else {
      clear(body).append(...content, errors, nav);
    }
    back.disabled = step === 0 || step === STEPS.length - 1;
    next.hidden = step === STEPS.length - 1;
    next.textContent = step === STEPS.length - 2 ? "Create the agent" : "Next";
    const focusable = body.querySelector("input, select, textarea, button");
    if (focusable) focusable.focus();
  }

  async function forward() {
    clear(errors);
    if (step === 0 && (!name.value.trim() || !model.value)) {
      errors.append(notice("error", "the agent needs a name and a model"));
      return;
    }
    if (step === STEPS.length - 2) {
      try {
        created = await api("/v1/agents", { method: "POST", json: spec() });
        toast("ok", `Agent ${created.name} created`);
      } catch (error) {
        errors.append(notice("error", errorText(error)));
        return;
      }
    }
    step += 1;
    draw();
  }

  back.addEventListener("click", () => {
    step = Math.max(0, step - 1);
    clear(errors);
    draw();
  });
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Create an agent"), h("div", { class: "actions" }, h("a", { href: "#/agents" }, "All agents"))),
    steps,
    h("section", { "aria-label": "Agent definition" }, body),
  );
  draw();
}

function citationList(citations) {
  if (!citations || !citations.length) return null;
  return h(
    "ol",
    { class: "citations", "aria-label": "Sources" },
    citations.map((c, n) => h("li", { class: "citation" }, h("strong", {}, `[${c.index ?? n + 1}] ${c.document}`), ` — dataset ${c.dataset}, chunk ${c.chunk}, characters ${c.start}–${c.end}`)),
  );
}

/** Ask the agent something (a whole answer, so the citations and the run id arrive together). */
function testChat(agent) {
  const question = h("textarea", { name: "question", rows: 2 });
  const answers = h("div", { class: "messages", role: "log", "aria-live": "polite", "aria-label": "Test answers" });
  const ask = h("button", { type: "submit" }, "Ask");
  const form = h("form", { class: "stack composer" }, field(`Ask ${agent.name}`, question), h("div", { class: "row" }, ask));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = question.value.trim();
    if (!text) return;
    ask.disabled = true;
    answers.append(h("article", { class: "msg user", "aria-label": "You" }, h("div", { class: "role" }, "You"), h("div", { class: "content" }, text)));
    try {
      const response = await call("/v1/chat/completions", { method: "POST", json: { model: agent.name, messages: [{ role: "user", content: text }] } });
      const runId = response.headers.get("x-llmhost-run-id");
      const result = await response.json();
      const message = result.choices[0]?.message || {};
      const calls = (message.tool_calls || []).map((c) => h("div", { class: "tool-call" }, h("strong", {}, "Tool call: "), h("code", {}, c.function.name), h("pre", {}, c.function.arguments)));
      const thanks = h("span", { class: "small muted", role: "status" });
      const rate = (thumbs) => async () => {
        try {
          await api("/v1/feedback", { method: "POST", json: { run_id: runId, thumbs } });
          thanks.textContent = "Thanks: recorded.";
        } catch (error) {
          thanks.textContent = errorText(error);
        }
      };
      answers.append(
        h(
          "article",
          { class: "msg assistant", "aria-label": "Answer" },
          h("div", { class: "role" }, `${agent.name}`),
          h("div", { class: "content" }, message.content || ""),
          calls,
          citationList(result.citations),
          h(
            "div",
            { class: "meta row" },
            runId ? h("span", {}, `run ${runId}`) : null,
            runId ? h("button", { type: "button", class: "ghost small", onclick: rate("up") }, "Good answer") : null,
            runId ? h("button", { type: "button", class: "ghost small", onclick: rate("down") }, "Bad answer") : null,
            thanks,
          ),
        ),
      );
      question.value = "";
    } catch (error) {
      answers.append(notice("error", errorText(error)));
    } finally {
      ask.disabled = false;
    }
  });
  return [
    h("h2", {}, "6. Test chat"),
    notice("ok", `Agent ${agent.name} is saved. Ask it something; answers that used datasets list their sources.`),
    answers,
    form,
    h("p", {}, h("a", { href: `#/agents/${encodeURIComponent(agent.name)}` }, `See ${agent.name}'s scorecard`)),
  ];
}

// ----- one agent: scorecard and runs --------------------------------------------------------------------
function detail(view, name) {
  const errors = h("div");
  const days = h("select", { name: "days" }, [["1", "Last day"], ["7", "Last 7 days"], ["30", "Last 30 days"]].map(([v, l]) => h("option", { value: v, selected: v === "7" }, l)));
  const cardEl = h("div", {}, h("p", { class: "muted" }, "Loading the scorecard…"));
  const runsEl = h("div");
  const defEl = h("div");

  function stat(label, value) {
    return h("div", { class: "stat card" }, h("span", { class: "value" }, value), h("span", { class: "label" }, label));
  }

  async function load() {
    clear(errors);
    try {
      const [agent, card, runs] = await Promise.all([api(path(name)), api(`${path(name)}/scorecard?days=${days.value}`), api(`${path(name)}/runs?limit=50`)]);
      clear(defEl).append(
        h("p", {}, h("span", { class: "mono" }, agent.model), agent.description ? ` · ${agent.description}` : ""),
        h("p", { class: "small muted" }, `datasets: ${agent.datasets.join(", ") || "none"} · tools: ${[...agent.tool_groups, ...agent.tools.map((t) => t.function.name)].join(", ") || "none"} · policy: ${agent.policy || "default"}`),
      );
      const fb = card.feedback || {};
      clear(cardEl).append(
        h(
          "div",
          { class: "stats" },
          stat("Requests", fmtNumber(card.requests)),
          stat("Success rate", fmtPercent(card.success_rate)),
          stat("Error rate", fmtPercent(card.error_rate)),
          stat("Latency p50", card.latency_ms?.p50 === null || card.latency_ms?.p50 === undefined ? "–" : `${fmtNumber(card.latency_ms.p50)} ms`),
          stat("Latency p95", card.latency_ms?.p95 === null || card.latency_ms?.p95 === undefined ? "–" : `${fmtNumber(card.latency_ms.p95)} ms`),
          stat("Tokens", `${fmtNumber(card.tokens?.prompt)} + ${fmtNumber(card.tokens?.completion)}`),
          stat("Cost", fmtCost(card.cost)),
          stat("Policy compliance", fmtPercent(card.policy_compliance)),
          stat("Tool-call success", card.tool_calls?.total ? `${fmtPercent(card.tool_calls.success_rate)} of ${fmtNumber(card.tool_calls.total)}` : "–"),
          stat("Used retrieval", fmtPercent(card.retrieval?.rate)),
          stat(fb.mean_rating ? `Feedback: up / down · mean rating ${fmtNumber(fb.mean_rating, 1)}/5` : "Feedback: up / down", `${fmtNumber(fb.up ?? 0)} / ${fmtNumber(fb.down ?? 0)}`),
        ),
      );
      clear(runsEl).append(
        runs.data.length
          ? table(
              ["Run", "Time", "Status", "Latency", "Tokens", "Cost", "Tool calls", "Retrieved", "Feedback"],
              runs.data.map((r) => {
                const feedback = Array.isArray(r.feedback) ? r.feedback : r.feedback ? [r.feedback] : [];
                return [
                  h("span", { class: "mono" }, r.id),
                  fmtTime(r.created),
                  h("span", { class: `badge ${r.status === "ok" ? "ok" : "bad"}` }, r.status),
                  `${fmtNumber(r.latency_ms)} ms`,
                  `${fmtNumber(r.prompt_tokens)} + ${fmtNumber(r.completion_tokens)}`,
                  fmtCost(r.cost),
                  (r.tool_calls || []).map((c) => `${c.name}${c.ok ? "" : " (failed)"}`).join(", ") || "–",
                  (r.retrieved || []).map((x) => `${x.document}#${x.chunk}`).join(", ") || "–",
                  feedback.map((f) => (f.thumbs ? f.thumbs : `${f.rating}/5`)).join(", ") || "–",
                ];
              }),
              { caption: "Recent runs", numeric: [3, 5] },
            )
          : h("p", { class: "muted" }, "No runs yet."),
      );
    } catch (error) {
      errors.append(notice("error", errorText(error)));
    }
  }

  async function remove() {
    if (!window.confirm(`Delete the agent “${name}”? Its runs stay in the records.`)) return;
    try {
      await call(path(name), { method: "DELETE" });
      toast("ok", `${name} deleted`);
      location.hash = "#/agents";
    } catch (error) {
      errors.append(notice("error", errorText(error)));
    }
  }

  days.addEventListener("change", load);
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, `Agent ${name}`), h("div", { class: "actions" }, h("a", { href: "#/agents" }, "All agents"), h("button", { type: "button", class: "danger small", onclick: remove }, "Delete"))),
    errors,
    defEl,
    h("section", { class: "card stack", "aria-labelledby": "scorecard-title" }, h("div", { class: "page-head" }, h("h2", { id: "scorecard-title" }, "Scorecard"), h("div", { class: "actions" }, field("Window", days))), cardEl),
    h("section", { class: "card", "aria-labelledby": "runs-title" }, h("h2", { id: "runs-title" }, "Recent runs"), runsEl),
  );
  load();
}
