// Chat playground: any model, route or agent, streamed from /v1/chat/completions (SSE read with fetch
// and a ReadableStream), a stop button (AbortController), system prompt and sampling controls, tool calls
// and citations shown, conversations kept in this browser (localStorage).

import { ApiError, api, call, optional, sse } from "./api.js";
import { clear, errorText, field, h, notice, uid } from "./dom.js";

const STORE = "llmhost.conversations";
const LAST_MODEL = "llmhost.chat.model";

function loadConversations() {
  try {
    const list = JSON.parse(localStorage.getItem(STORE) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

function saveConversations(list) {
  try {
    localStorage.setItem(STORE, JSON.stringify(list));
    return null;
  } catch (error) {
    return `conversations could not be saved in this browser (${error.message})`;
  }
}

function newConversation(settings = {}) {
  return {
    id: `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 7)}`,
    title: "New conversation",
    model: settings.model || localStorage.getItem(LAST_MODEL) || "",
    system: settings.system || "",
    sampling: settings.sampling || { temperature: "", top_p: "", max_tokens: "", seed: "" },
    tools: settings.tools || "",
    messages: [],
    updated: Date.now(),
  };
}

/** The request's messages: the system prompt, then the turns that have text (a failed or empty answer is
 * left out; tool calls the playground cannot run are not replayed). */
export function wireMessages(conversation) {
  const out = [];
  if (conversation.system.trim()) out.push({ role: "system", content: conversation.system });
  for (const m of conversation.messages) {
    if (m.role === "assistant" && (m.error || !m.content)) continue;
    out.push({ role: m.role, content: m.content });
  }
  return out;
}

function samplingFields(sampling) {
  const body = {};
  for (const [name, parse] of [
    ["temperature", Number.parseFloat],
    ["top_p", Number.parseFloat],
    ["max_tokens", (v) => Number.parseInt(v, 10)],
    ["seed", (v) => Number.parseInt(v, 10)],
  ]) {
    const raw = String(sampling[name] ?? "").trim();
    if (raw === "") continue;
    const value = parse(raw);
    if (Number.isNaN(value)) throw new Error(`${name} must be a number`);
    body[name] = value;
  }
  return body;
}

function mergeToolCalls(calls, deltas) {
  for (const d of deltas) {
    const i = d.index ?? 0;
    calls[i] = calls[i] || { id: d.id || "", name: "", arguments: "" };
    if (d.id) calls[i].id = d.id;
    if (d.function?.name) calls[i].name += d.function.name;
    if (d.function?.arguments) calls[i].arguments += d.function.arguments;
  }
}

function toolCallsView(calls) {
  if (!calls || !calls.length) return null;
  return h(
    "div",
    { class: "tool-calls" },
    calls.filter(Boolean).map((c) =>
      h("div", { class: "tool-call" }, h("strong", {}, "Tool call: "), h("code", {}, c.name || "(unnamed)"), h("pre", {}, c.arguments)),
    ),
  );
}

function citationsView(citations) {
  if (!citations || !citations.length) return null;
  return h(
    "div",
    { class: "citation-block" },
    h("div", { class: "role" }, "Sources"),
    h(
      "ol",
      { class: "citations", "aria-label": "Sources" },
      citations.map((c, n) =>
        h(
          "li",
          { class: "citation" },
          h("strong", {}, `[${c.index ?? n + 1}] ${c.document}`),
          ` — dataset ${c.dataset}, chunk ${c.chunk}, characters ${c.start}–${c.end}`,
          c.text ? h("div", { class: "small muted" }, c.text.length > 280 ? `${c.text.slice(0, 279)}…` : c.text) : null,
        ),
      ),
    ),
  );
}

function metaText(m) {
  const parts = [];
  if (m.stopped) parts.push("stopped");
  if (m.finish && m.finish !== "stop") parts.push(`finished: ${m.finish}`);
  if (m.usage) parts.push(`${m.usage.prompt_tokens} prompt + ${m.usage.completion_tokens} completion tokens`);
  return parts.join(" · ");
}

function messageView(m) {
  const label = m.role === "user" ? "You" : `Assistant${m.model ? `, ${m.model}` : ""}`;
  const heading = h("div", { class: "role" }, m.role === "user" ? "You" : "Assistant", m.role !== "user" && m.model ? h("span", { class: "model" }, m.model) : null);
  const content = h("div", { class: "content" }, m.content);
  const tools = h("div", {}, toolCallsView(m.tool_calls));
  const sources = h("div", {}, citationsView(m.citations));
  const error = h("div", {}, m.error ? notice("error", m.error) : null);
  const meta = h("div", { class: "meta" }, metaText(m));
  const el = h("article", { class: `msg ${m.role}`, "aria-label": label }, heading, content, tools, sources, error, meta);
  return { el, content, tools, sources, error, meta };
}

export function render(view) {
  let conversations = loadConversations();
  let current = conversations[0] || newConversation();
  let controller = null;
  let modelNames = [];

  const listEl = h("ul", { "aria-label": "Saved conversations" });
  const modelSelect = h("select", { name: "model" });
  const systemInput = h("textarea", { name: "system", rows: 2, placeholder: "You are a helpful assistant." });
  const sampling = {
    temperature: h("input", { type: "number", name: "temperature", step: "0.1", min: "0", max: "2", inputmode: "decimal", placeholder: "model default" }),
    top_p: h("input", { type: "number", name: "top_p", step: "0.05", min: "0", max: "1", inputmode: "decimal", placeholder: "model default" }),
    max_tokens: h("input", { type: "number", name: "max_tokens", step: "1", min: "1", inputmode: "numeric", placeholder: "model default" }),
    seed: h("input", { type: "number", name: "seed", step: "1", inputmode: "numeric", placeholder: "random" }),
  };
  const toolsInput = h("textarea", { name: "tools", rows: 3, placeholder: '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]' });
  const messagesEl = h("div", { class: "messages", role: "log", "aria-live": "polite", "aria-label": "Messages" });
  const input = h("textarea", { name: "message", rows: 3, placeholder: "Write a message (Enter sends, Shift+Enter for a new line)" });
  const sendButton = h("button", { type: "submit" }, "Send");
  const stopButton = h("button", { type: "button", class: "danger", disabled: true }, "Stop");
  const status = h("span", { class: "small muted", role: "status" });
  const errors = h("div");

  const store = () => {
    current.updated = Date.now();
    const problem = saveConversations(conversations);
    if (problem) clear(errors).append(notice("warn", problem));
  };

  function drawList() {
    clear(listEl);
    for (const c of conversations) {
      const open = h("button", { type: "button", class: "open", "aria-current": c.id === current.id ? "true" : "false", title: c.title, onclick: () => switchTo(c) }, c.title);
      const del = h("button", { type: "button", class: "ghost small", "aria-label": `Delete conversation “${c.title}”`, onclick: () => remove(c) }, "Delete");
      listEl.append(h("li", {}, open, del));
    }
    if (!conversations.length) listEl.append(h("li", { class: "muted small" }, "No saved conversations yet."));
  }

  function drawMessages() {
    clear(messagesEl);
    if (!current.messages.length) {
      messagesEl.append(h("p", { class: "muted" }, "Pick a model, route or agent and send a message. Conversations are kept in this browser only."));
    }
    for (const m of current.messages) messagesEl.append(messageView(m).el);
  }

  function fillControls() {
    systemInput.value = current.system;
    for (const [name, el] of Object.entries(sampling)) el.value = current.sampling[name] ?? "";
    toolsInput.value = current.tools || "";
    if (current.model && modelNames.includes(current.model)) modelSelect.value = current.model;
  }

  function readControls() {
    current.model = modelSelect.value;
    current.system = systemInput.value;
    for (const [name, el] of Object.entries(sampling)) current.sampling[name] = el.value;
    current.tools = toolsInput.value;
  }

  function switchTo(c) {
    stop();
    readControls();
    current = c;
    fillControls();
    drawList();
    drawMessages();
  }

  function remove(c) {
    if (!window.confirm(`Delete the conversation “${c.title}”?`)) return;
    if (c.id === current.id) stop();
    conversations = conversations.filter((x) => x.id !== c.id);
    if (c.id === current.id) {
      current = conversations[0] || newConversation({ model: modelSelect.value });
      fillControls();
      drawMessages();
    }
    store();
    drawList();
  }

  function startNew() {
    stop();
    readControls();
    current = newConversation({ model: current.model, system: current.system, sampling: { ...current.sampling }, tools: current.tools });
    drawList();
    drawMessages();
    fillControls();
    input.focus();
  }

  function stop() {
    if (controller) controller.abort();
  }

  async function send() {
    const text = input.value.trim();
    if (!text || controller) return;
    readControls();
    clear(errors);
    let body;
    try {
      if (!current.model) throw new Error("pick a model first");
      body = { model: current.model, stream: true, stream_options: { include_usage: true }, ...samplingFields(current.sampling) };
      if (current.tools.trim()) {
        let tools;
        try {
          tools = JSON.parse(current.tools);
        } catch (error) {
          throw new Error(`function tools are not valid JSON: ${error.message}`);
        }
        if (!Array.isArray(tools)) throw new Error("function tools must be a JSON array");
        body.tools = tools;
      }
    } catch (error) {
      errors.append(notice("error", errorText(error)));
      return;
    }
    localStorage.setItem(LAST_MODEL, current.model);
    if (!conversations.includes(current)) conversations.unshift(current);
    if (!current.messages.length) current.title = text.length > 40 ? `${text.slice(0, 39)}…` : text;
    current.messages.push({ role: "user", content: text });
    body.messages = wireMessages(current);
    const answer = { role: "assistant", content: "", model: current.model };
    current.messages.push(answer);
    input.value = "";
    store();
    drawList();
    drawMessages();
    const parts = messagesEl.lastElementChild;
    const viewOf = messageView(answer);
    parts.replaceWith(viewOf.el);
    viewOf.el.setAttribute("aria-busy", "true");

    controller = new AbortController();
    sendButton.disabled = true;
    stopButton.disabled = false;
    status.textContent = "Generating…";
    const calls = [];
    try {
      const response = await call("/v1/chat/completions", { method: "POST", json: body, signal: controller.signal });
      for await (const chunk of sse(response)) {
        if (chunk.citations) {
          answer.citations = chunk.citations;
          clear(viewOf.sources).append(citationsView(answer.citations) || "");
        }
        if (chunk.usage) answer.usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.index !== 0) continue;
          const delta = choice.delta || {};
          if (delta.content) {
            answer.content += delta.content;
            viewOf.content.textContent = answer.content;
          }
          if (delta.tool_calls) {
            mergeToolCalls(calls, delta.tool_calls);
            answer.tool_calls = calls;
            clear(viewOf.tools).append(toolCallsView(calls) || "");
          }
          if (choice.finish_reason) answer.finish = choice.finish_reason;
        }
      }
      status.textContent = "Done.";
    } catch (error) {
      if (error.name === "AbortError") {
        answer.stopped = true;
        status.textContent = "Stopped.";
      } else {
        answer.error = error instanceof ApiError || error instanceof Error ? errorText(error) : String(error);
        clear(viewOf.error).append(notice("error", answer.error));
        status.textContent = "Failed.";
      }
    } finally {
      controller = null;
      sendButton.disabled = false;
      stopButton.disabled = true;
      viewOf.el.removeAttribute("aria-busy");
      viewOf.meta.textContent = metaText(answer);
      store();
    }
  }

  async function loadModels() {
    clear(modelSelect).append(h("option", { value: "" }, "Loading…"));
    try {
      const [models, agents] = await Promise.all([api("/v1/models"), optional("/v1/agents")]);
      const owned = (owner) => models.data.filter((m) => m.owned_by === owner).map((m) => m.id);
      const routes = owned("llmhost-route");
      const agentNames = [...new Set([...owned("llmhost-agent"), ...(agents?.data || []).map((a) => a.name)])];
      const local = models.data.map((m) => m.id).filter((id) => !routes.includes(id) && !agentNames.includes(id));
      modelNames = [...local, ...routes, ...agentNames];
      clear(modelSelect);
      if (!modelNames.length) modelSelect.append(h("option", { value: "" }, "No models: pull one on the Models page"));
      for (const [label, names] of [["Models", local], ["Routes", routes], ["Agents", agentNames]]) {
        if (names.length) modelSelect.append(h("optgroup", { label }, names.map((n) => h("option", { value: n }, n))));
      }
      if (current.model && modelNames.includes(current.model)) modelSelect.value = current.model;
      current.model = modelSelect.value;
    } catch (error) {
      clear(modelSelect).append(h("option", { value: "" }, "Models could not be listed"));
      errors.append(notice("error", errorText(error)));
    }
  }

  const form = h(
    "form",
    { class: "composer card stack", "aria-label": "Send a message" },
    field("Message", input),
    h("div", { class: "row end" }, status, stopButton, sendButton),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  view.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && controller) stop();
  });
  stopButton.addEventListener("click", stop);
  modelSelect.addEventListener("change", () => {
    current.model = modelSelect.value;
    localStorage.setItem(LAST_MODEL, current.model);
  });

  const settingsId = uid("settings");
  view.append(
    h("h1", { class: "visually-hidden" }, "Chat"),
    h(
      "div",
      { class: "chat" },
      h(
        "aside",
        { class: "conversations card", "aria-labelledby": "conv-title" },
        h("div", { class: "page-head" }, h("h2", { id: "conv-title" }, "Conversations"), h("div", { class: "actions" }, h("button", { type: "button", class: "ghost small", onclick: startNew }, "New"))),
        listEl,
      ),
      h(
        "section",
        { class: "chat-main", "aria-label": "Chat" },
        h(
          "div",
          { class: "card stack" },
          field("Model, route or agent", modelSelect),
          field("System prompt", systemInput),
          h(
            "details",
            {},
            h("summary", { id: settingsId }, "Sampling and tools"),
            h("div", { class: "settings-grid", role: "group", "aria-labelledby": settingsId }, field("Temperature", sampling.temperature), field("Top p", sampling.top_p), field("Max tokens", sampling.max_tokens), field("Seed", sampling.seed)),
            field("Function tools (JSON array, optional)", toolsInput, "The model may call these; the calls are shown, not run."),
          ),
        ),
        errors,
        messagesEl,
        form,
      ),
    ),
  );
  fillControls();
  drawList();
  drawMessages();
  loadModels();
  return () => {
    stop();
    readControls();
    if (conversations.includes(current)) store();
  };
}
