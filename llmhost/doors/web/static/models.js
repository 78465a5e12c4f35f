// Models: the list (/api/tags) with what is loaded (/api/ps), details (/api/show), pull with a live
// progress bar (/api/pull's NDJSON stream), load and unload, copy (another name, a hot-swappable alias),
// delete, and memory in use against the budget (/api/status, when the key has the metrics scope).

import { ApiError, api, call, ndjson, optional } from "./api.js";
import { clear, errorText, field, fmtBytes, h, notice, table, toast } from "./dom.js";

function meter(label, used, budget) {
  const ratio = budget > 0 ? used / budget : 0;
  return h(
    "div",
    { class: "meter" },
    h("span", { class: "label" }, `${label}: ${fmtBytes(used)} of ${fmtBytes(budget)} (${Math.round(ratio * 100)}%)`),
    h("progress", { max: budget || 1, value: Math.min(used, budget || 1), "aria-label": `${label} in use against the budget` }),
  );
}

export function render(view) {
  const errors = h("div");
  const memoryEl = h("div", { class: "stack" }, h("p", { class: "muted" }, "Reading memory use…"));
  const listEl = h("div", {}, h("p", { class: "muted" }, "Loading the models…"));
  const panel = h("div", { "aria-live": "polite" });
  let pulling = null;

  const pullSpec = h("input", { type: "text", name: "model", required: true, placeholder: "hf:Org/Repo-GGUF or https://…/model.gguf", autocomplete: "off", spellcheck: "false" });
  const pullName = h("input", { type: "text", name: "name", placeholder: "optional", autocomplete: "off", spellcheck: "false" });
  const pullButton = h("button", { type: "submit" }, "Pull");
  const cancelButton = h("button", { type: "button", class: "ghost", hidden: true }, "Cancel");
  const progress = h("progress", { max: 1, value: 0, "aria-label": "Pull progress", hidden: true });
  const pullStatus = h("div", { class: "small", role: "status", "aria-live": "polite" });
  const pullErrors = h("div");

  async function refresh() {
    clear(errors);
    try {
      const [tags, ps, status, agents] = await Promise.all([api("/api/tags"), api("/api/ps"), optional("/api/status"), optional("/v1/agents")]);
      drawMemory(status);
      drawList(tags.models, ps.models, new Set((agents?.data || []).map((a) => a.name)));
    } catch (error) {
      errors.append(notice("error", errorText(error)));
    }
  }

  function drawMemory(status) {
    clear(memoryEl);
    if (!status) {
      memoryEl.append(h("p", { class: "muted" }, "Memory use against the budget needs a key with the metrics scope."));
      return;
    }
    const m = status.memory;
    memoryEl.append(meter("RAM", m.ram_used_bytes, m.ram_budget_bytes));
    if (m.vram_budget_bytes > 0) memoryEl.append(meter("GPU memory", m.vram_used_bytes, m.vram_budget_bytes));
  }

  function drawList(models, loaded, agents) {
    const resident = new Map(loaded.map((m) => [m.name, m]));
    clear(listEl);
    if (!models.length) {
      listEl.append(h("p", { class: "muted" }, "No models yet: pull one above."));
      return;
    }
    const rows = models.map((m) => {
      const isRoute = !(m.details && m.details.format);
      const inMemory = resident.get(m.name);
      const state = isRoute
        ? h("span", { class: "badge" }, agents.has(m.name) ? "agent" : "route")
        : inMemory
          ? h("span", { class: "badge ok" }, `loaded · ${fmtBytes(inMemory.size)}`)
          : h("span", { class: "badge" }, "on disk");
      const actions = h("div", { class: "actions" }, h("button", { type: "button", class: "ghost small", onclick: () => details(m.name), "aria-label": `Details of ${m.name}` }, "Details"));
      if (!isRoute) {
        actions.append(
          inMemory
            ? h("button", { type: "button", class: "ghost small", onclick: () => residency("unload", m.name), "aria-label": `Unload ${m.name}` }, "Unload")
            : h("button", { type: "button", class: "ghost small", onclick: () => residency("load", m.name), "aria-label": `Load ${m.name}` }, "Load"),
          h("button", { type: "button", class: "ghost small", onclick: () => copyForm(m.name), "aria-label": `Copy ${m.name}` }, "Copy"),
          h("button", { type: "button", class: "ghost small", onclick: () => remove(m.name), "aria-label": `Delete ${m.name}` }, "Delete"),
        );
      }
      const d = m.details || {};
      return [h("span", { class: "mono" }, m.name), isRoute ? "–" : fmtBytes(m.size), d.family || "–", d.parameter_size || "–", d.quantization_level || "–", state, actions];
    });
    listEl.append(table(["Name", "Size", "Family", "Parameters", "Quantization", "State", "Actions"], rows, { caption: "Models", numeric: [1] }));
  }

  async function residency(action, name) {
    clear(errors);
    try {
      await api(`/api/${action}`, { method: "POST", json: { model: name } });
      toast("ok", `${name} ${action === "load" ? "loaded" : "unloaded"}`);
    } catch (error) {
      errors.append(notice("error", errorText(error)));
    }
    await refresh();
  }

  async function remove(name) {
    if (!window.confirm(`Delete the model name “${name}”? The file goes once no name uses it.`)) return;
    clear(errors);
    try {
      await call("/api/delete", { method: "DELETE", json: { model: name } });
      toast("ok", `${name} deleted`);
      clear(panel);
    } catch (error) {
      errors.append(notice("error", errorText(error)));
    }
    await refresh();
  }

  function copyForm(name) {
    const destination = h("input", { type: "text", name: "destination", required: true, value: `${name.split(":")[0]}:alias`, autocomplete: "off", spellcheck: "false" });
    const result = h("div");
    const form = h(
      "form",
      { class: "card stack", "aria-labelledby": "copy-title" },
      h("h2", { id: "copy-title" }, `Copy ${name}`),
      h("p", { class: "muted small" }, "Another name for the same file. Pointing an existing name here swaps it over with no failed requests."),
      field("New name", destination),
      result,
      h("div", { class: "row" }, h("button", { type: "button", class: "ghost", onclick: () => clear(panel) }, "Cancel"), h("button", { type: "submit" }, "Copy")),
    );
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        await call("/api/copy", { method: "POST", json: { source: name, destination: destination.value.trim() } });
        toast("ok", `${name} copied to ${destination.value.trim()}`);
        clear(panel);
        await refresh();
      } catch (error) {
        clear(result).append(notice("error", errorText(error)));
      }
    });
    clear(panel).append(form);
    destination.focus();
    destination.select();
  }

  async function details(name) {
    clear(panel).append(h("p", { class: "muted" }, `Reading ${name}…`));
    try {
      const shown = await api("/api/show", { method: "POST", json: { model: name } });
      const d = shown.details || {};
      const info = shown.model_info || {};
      const arch = d.family;
      const facts = [
        ["Format", d.format || "–"],
        ["Family", d.family || "–"],
        ["Parameters", d.parameter_size || "–"],
        ["Quantization", d.quantization_level || "–"],
        ["Context length", info[`${arch}.context_length`] ?? "–"],
        ["Capabilities", (shown.capabilities || []).join(", ") || "–"],
        ["License", shown.license ? shown.license.split("\n")[0].slice(0, 80) : "–"],
      ];
      clear(panel).append(
        h(
          "section",
          { class: "card stack", "aria-labelledby": "details-title" },
          h("div", { class: "page-head" }, h("h2", { id: "details-title" }, name), h("div", { class: "actions" }, h("button", { type: "button", class: "ghost small", onclick: () => clear(panel) }, "Close"))),
          h("dl", { class: "stats" }, facts.map(([k, v]) => h("div", { class: "stat" }, h("dt", { class: "label" }, k), h("dd", { class: "mono" }, String(v))))),
          shown.parameters ? h("details", {}, h("summary", {}, "Parameters"), h("pre", {}, shown.parameters)) : null,
          shown.template ? h("details", {}, h("summary", {}, "Chat template"), h("pre", {}, shown.template)) : null,
          h("details", {}, h("summary", {}, "Model metadata"), h("pre", {}, JSON.stringify(info, null, 2))),
        ),
      );
    } catch (error) {
      clear(panel).append(notice("error", errorText(error)));
    }
  }

  async function pull(e) {
    e.preventDefault();
    if (pulling) return;
    clear(pullErrors);
    const body = { model: pullSpec.value.trim(), stream: true };
    if (pullName.value.trim()) body.register_as = pullName.value.trim();
    pulling = new AbortController();
    pullButton.disabled = true;
    cancelButton.hidden = false;
    progress.hidden = false;
    progress.removeAttribute("value"); // indeterminate until the size is known
    pullStatus.textContent = "Starting…";
    let finished = false;
    try {
      const response = await call("/api/pull", { method: "POST", json: body, signal: pulling.signal });
      for await (const event of ndjson(response)) {
        if (event.error) throw new ApiError(500, event.error);
        if (event.total) {
          progress.max = event.total;
          progress.value = event.completed || 0;
          pullStatus.textContent = `${event.status}: ${fmtBytes(event.completed || 0)} of ${fmtBytes(event.total)} (${Math.floor(((event.completed || 0) / event.total) * 100)}%)`;
        } else {
          pullStatus.textContent = event.status;
        }
        if (event.status === "success") finished = true;
      }
      if (finished) {
        progress.max = 1;
        progress.value = 1;
        pullStatus.textContent = `Pulled ${body.register_as || body.model}: success`;
        toast("ok", "pull finished");
      }
    } catch (error) {
      progress.hidden = true;
      pullStatus.textContent = "";
      pullErrors.append(notice(error.name === "AbortError" ? "warn" : "error", error.name === "AbortError" ? "Pull cancelled (a later pull of the same model resumes it)." : errorText(error)));
    } finally {
      pulling = null;
      pullButton.disabled = false;
      cancelButton.hidden = true;
      await refresh();
    }
  }
  cancelButton.addEventListener("click", () => pulling && pulling.abort());

  const pullForm = h(
    "form",
    { class: "card stack", "aria-labelledby": "pull-title" },
    h("h2", { id: "pull-title" }, "Pull a model"),
    h("div", { class: "row" }, field("Model", pullSpec, "A Hugging Face repo (hf:Org/Repo, :Q4_K_M to pick a file) or a URL"), field("Name", pullName, "Defaults to repo:quant")),
    h("div", { class: "row" }, pullButton, cancelButton),
    progress,
    pullStatus,
    pullErrors,
  );
  pullForm.addEventListener("submit", pull);

  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Models"), h("div", { class: "actions" }, h("button", { type: "button", class: "ghost", onclick: refresh }, "Refresh"))),
    errors,
    h("div", { class: "grid" }, pullForm, h("section", { class: "card", "aria-labelledby": "memory-title" }, h("h2", { id: "memory-title" }, "Memory"), memoryEl)),
    h("section", { class: "card", "aria-labelledby": "list-title" }, h("h2", { id: "list-title" }, "Models on this server"), listEl),
    panel,
  );
  refresh();
  return () => pulling && pulling.abort();
}
