// API keys: list, create (the secret is shown once, with a copy button), rotate (a new secret, shown
// once; the old one works for a grace period), revoke.

import { api, call } from "./api.js";
import { clear, errorText, field, fmtCost, fmtTime, h, notice, table, toast, uid } from "./dom.js";

function splitList(text) {
  return text
    .split(",")
    .map((x) => x.trim())
    .filter(Boolean);
}

function optionalNumber(input, parse) {
  const raw = input.value.trim();
  if (!raw) return null;
  const value = parse(raw);
  if (Number.isNaN(value)) throw new Error(`${input.name} must be a number`);
  return value;
}

export function render(view, ctx) {
  const errors = h("div");
  const secretSlot = h("div", { "aria-live": "polite" });
  const listEl = h("div", {}, h("p", { class: "muted" }, "Loading the keys…"));
  const showRevoked = h("input", { type: "checkbox", name: "all" });
  const scopesBox = h("div", { class: "checks" });
  const name = h("input", { type: "text", name: "name", required: true, maxlength: "64", autocomplete: "off" });
  const models = h("input", { type: "text", name: "models", placeholder: "all models (e.g. gemma*, smart)", autocomplete: "off" });
  const rpm = h("input", { type: "number", name: "rpm", min: "1", step: "1", placeholder: "no limit" });
  const tpm = h("input", { type: "number", name: "tpm", min: "1", step: "1", placeholder: "no limit" });
  const budget = h("input", { type: "number", name: "budget", min: "0", step: "0.01", placeholder: "no limit" });
  const expires = h("input", { type: "text", name: "expires", placeholder: "never (e.g. 30d, 12h)", autocomplete: "off" });
  const policy = h("input", { type: "text", name: "policy", placeholder: "the default [policy]", autocomplete: "off" });
  const createErrors = h("div");
  let scopesDrawn = false;

  function drawScopes(known) {
    if (scopesDrawn) return;
    scopesDrawn = true;
    clear(scopesBox);
    for (const scope of known) {
      const id = uid("scope");
      const box = h("input", { type: "checkbox", id, name: "scopes", value: scope, checked: scope === "inference" || scope === "models:read" });
      scopesBox.append(h("label", { for: id }, box, scope === "*" ? "* (every scope)" : scope));
    }
  }

  function showSecret(title, key, secret) {
    const code = h("code", { class: "mono", "aria-label": "The new secret" }, secret);
    const copyButton = h("button", { type: "button", class: "ghost", onclick: () => copy(secret) }, "Copy");
    const firstKey = !ctx.session.keys_required;
    const loginButton = firstKey
      ? h("button", { type: "button", onclick: () => loginWith(secret) }, "Log in with this key")
      : null;
    clear(secretSlot).append(
      h(
        "section",
        { class: "card stack", "aria-labelledby": "secret-title" },
        h("h2", { id: "secret-title" }, title),
        notice("warn", `This is the only time the secret of “${key.name}” is shown: copy it now. Only its hash is kept.`),
        firstKey ? notice("info", "This was the first key: the server now asks every client for a key, this dashboard too.") : null,
        h("div", { class: "secret-box" }, code, copyButton, loginButton),
        h("div", { class: "row" }, h("button", { type: "button", class: "ghost", onclick: () => clear(secretSlot) }, "Done")),
      ),
    );
    copyButton.focus();
  }

  async function loginWith(secret) {
    try {
      await call("/ui/login", { method: "POST", json: { api_key: secret } });
      await ctx.refreshSession();
    } catch (error) {
      toast("error", errorText(error));
    }
  }

  async function copy(text) {
    try {
      await navigator.clipboard.writeText(text);
      toast("ok", "Secret copied");
    } catch (error) {
      toast("error", `Could not copy (${error.message}): select the text instead`);
    }
  }

  async function load() {
    clear(errors);
    try {
      const answer = await api(`/api/keys${showRevoked.checked ? "?all=true" : ""}`);
      drawScopes(answer.scopes);
      drawList(answer.data);
    } catch (error) {
      errors.append(notice("error", errorText(error)));
    }
  }

  function drawList(keys) {
    clear(listEl);
    if (!keys.length) {
      listEl.append(h("p", { class: "muted" }, "No keys yet. Without keys the server is open to this machine only."));
      return;
    }
    const rows = keys.map((k) => {
      const limits = [k.rpm ? `${k.rpm} rpm` : null, k.tpm ? `${k.tpm} tpm` : null, k.budget !== null ? fmtCost(k.budget) : null].filter(Boolean).join(", ") || "–";
      const actions = h("div", { class: "actions" });
      if (k.state === "active") {
        actions.append(
          h("button", { type: "button", class: "ghost small", onclick: () => rotateForm(k), "aria-label": `Rotate ${k.name}` }, "Rotate"),
          h("button", { type: "button", class: "danger small", onclick: () => revoke(k), "aria-label": `Revoke ${k.name}` }, "Revoke"),
        );
      }
      const badge = k.state === "active" ? "ok" : k.state === "revoked" ? "bad" : "warn";
      return [
        k.name,
        h("span", { class: "mono" }, k.id),
        k.scopes.join(", "),
        k.models.join(", ") || "all",
        limits,
        k.policy || "–",
        k.expires ? fmtTime(k.expires) : "never",
        h("span", { class: `badge ${badge}` }, k.state),
        h("span", { class: "mono" }, k.secrets.join(" ") || "–"),
        actions,
      ];
    });
    listEl.append(table(["Name", "Id", "Scopes", "Models", "Limits", "Policy", "Expires", "State", "Secrets", "Actions"], rows, { caption: "API keys" }));
  }

  async function revoke(k) {
    const own = ctx.session.key_id === k.id;
    const warning = own ? " This is the key this dashboard is logged in with: you will be logged out." : "";
    if (!window.confirm(`Revoke “${k.name}”? Its secrets stop working at once.${warning}`)) return;
    try {
      await api(`/api/keys/${encodeURIComponent(k.id)}/revoke`, { method: "POST" });
      toast("ok", `${k.name} revoked`);
    } catch (error) {
      errors.append(notice("error", errorText(error)));
    }
    if (own) await ctx.refreshSession();
    else await load();
  }

  function rotateForm(k) {
    const grace = h("select", { name: "grace" }, [["0s", "none: the old secret stops now"], ["1h", "1 hour"], ["1d", "1 day"], ["7d", "7 days"]].map(([v, l]) => h("option", { value: v, selected: v === "1d" }, l)));
    const formErrors = h("div");
    const form = h(
      "form",
      { class: "card stack", "aria-labelledby": "rotate-title" },
      h("h2", { id: "rotate-title" }, `Rotate ${k.name}`),
      field("The old secret keeps working for", grace),
      formErrors,
      h("div", { class: "row" }, h("button", { type: "button", class: "ghost", onclick: () => clear(secretSlot) }, "Cancel"), h("button", { type: "submit" }, "Rotate")),
    );
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        const rotated = await api(`/api/keys/${encodeURIComponent(k.id)}/rotate`, { method: "POST", json: { grace: grace.value } });
        showSecret(`New secret for ${k.name}`, rotated, rotated.secret);
        await load();
      } catch (error) {
        clear(formErrors).append(notice("error", errorText(error)));
      }
    });
    clear(secretSlot).append(form);
    grace.focus();
  }

  const createForm = h(
    "form",
    { class: "card stack", "aria-labelledby": "create-title" },
    h("h2", { id: "create-title" }, "Create a key"),
    h("div", { class: "row" }, field("Name", name, "Who or what uses the key"), field("Models", models, "Comma-separated globs")),
    h("fieldset", {}, h("legend", {}, "Scopes"), scopesBox),
    h("div", { class: "row" }, field("Requests per minute", rpm), field("Tokens per minute", tpm), field("Budget (USD)", budget), field("Expires after", expires), field("Policy", policy)),
    createErrors,
    h("div", { class: "row" }, h("button", { type: "submit" }, "Create key")),
  );
  createForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(createErrors);
    let body;
    try {
      body = {
        name: name.value.trim(),
        scopes: [...scopesBox.querySelectorAll("input:checked")].map((x) => x.value),
        models: splitList(models.value),
        rpm: optionalNumber(rpm, (v) => Number.parseInt(v, 10)),
        tpm: optionalNumber(tpm, (v) => Number.parseInt(v, 10)),
        budget: optionalNumber(budget, Number.parseFloat),
        expires: expires.value.trim() || null,
        policy: policy.value.trim() || null,
      };
    } catch (error) {
      createErrors.append(notice("error", errorText(error)));
      return;
    }
    try {
      const created = await api("/api/keys", { method: "POST", json: body });
      showSecret(`Key “${created.name}” created`, created, created.secret);
      createForm.reset();
      scopesDrawn = false;
      await load();
    } catch (error) {
      createErrors.append(notice("error", errorText(error)));
    }
  });
  showRevoked.addEventListener("change", load);
  const revokedId = uid("revoked");
  showRevoked.id = revokedId;

  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "API keys"), h("div", { class: "actions" }, h("label", { for: revokedId, class: "small" }, showRevoked, " Show revoked"))),
    errors,
    secretSlot,
    h("section", { class: "card", "aria-labelledby": "keys-list" }, h("h2", { id: "keys-list" }, "Keys"), listEl),
    createForm,
  );
  load();
}
