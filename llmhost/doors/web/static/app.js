// The dashboard's shell: theme, session (log in with an API key), navigation between the pages
// (hash routes: #/chat, #/models ...). Each page is a module with render(view, ctx) that may return a
// function to call when the page is left (to stop its polling or its stream).

import { api, call } from "./api.js";
import { clear, errorText, field, h, notice } from "./dom.js";
import * as agents from "./agents.js";
import * as audit from "./audit.js";
import * as chat from "./chat.js";
import * as datasets from "./datasets.js";
import * as keys from "./keys.js";
import * as live from "./live.js";
import * as models from "./models.js";
import * as usage from "./usage.js";

const PAGES = {
  chat: { module: chat, title: "Chat" },
  models: { module: models, title: "Models" },
  live: { module: live, title: "Live" },
  usage: { module: usage, title: "Usage and cost" },
  audit: { module: audit, title: "Audit log" },
  keys: { module: keys, title: "API keys" },
  agents: { module: agents, title: "Agents" },
  datasets: { module: datasets, title: "Datasets" },
};
const THEME_KEY = "llmhost.theme";

const state = { session: null, cleanup: null, loginShown: false, routed: false };
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const navToggle = document.getElementById("nav-toggle");
const logoutButton = document.getElementById("logout");
const who = document.getElementById("who");

// ----- theme ------------------------------------------------------------------------------------------
function effectiveTheme() {
  const fixed = document.documentElement.dataset.theme;
  if (fixed) return fixed;
  return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function showTheme() {
  const button = document.getElementById("theme-toggle");
  const dark = effectiveTheme() === "dark";
  button.setAttribute("aria-pressed", String(dark));
}

function initTheme() {
  const stored = localStorage.getItem(THEME_KEY);
  if (stored === "light" || stored === "dark") document.documentElement.dataset.theme = stored;
  showTheme();
  document.getElementById("theme-toggle").addEventListener("click", () => {
    const next = effectiveTheme() === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    localStorage.setItem(THEME_KEY, next);
    showTheme();
  });
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", showTheme);
}

// ----- navigation -------------------------------------------------------------------------------------
function initNav() {
  nav.classList.add("collapsed");
  navToggle.addEventListener("click", () => {
    const open = nav.classList.toggle("collapsed") === false;
    navToggle.setAttribute("aria-expanded", String(open));
  });
  nav.addEventListener("click", (e) => {
    if (e.target.closest("a")) {
      nav.classList.add("collapsed");
      navToggle.setAttribute("aria-expanded", "false");
    }
  });
  document.getElementById("skip-link").addEventListener("click", (e) => {
    e.preventDefault();
    main.focus();
  });
}

function currentRoute() {
  const hash = location.hash.startsWith("#/") ? location.hash.slice(2) : "";
  const [name, ...rest] = hash.split("/");
  return { name: PAGES[name] ? name : "chat", params: rest.map(decodeURIComponent) };
}

function route() {
  if (!state.session || state.loginShown) return;
  if (state.cleanup) {
    try {
      state.cleanup();
    } catch (error) {
      console.error(error);
    }
    state.cleanup = null;
  }
  const { name, params } = currentRoute();
  const page = PAGES[name];
  for (const link of nav.querySelectorAll("a[data-page]")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${page.title} · llmhost`;
  const view = h("div", { class: `page page-${name}` });
  clear(main).append(view);
  const ctx = { session: state.session, params, refreshSession };
  try {
    const cleanup = page.module.render(view, ctx);
    state.cleanup = typeof cleanup === "function" ? cleanup : null;
  } catch (error) {
    view.append(notice("error", errorText(error)));
  }
  if (state.routed) main.focus({ preventScroll: true });
  state.routed = true;
}

// ----- session ----------------------------------------------------------------------------------------
function renderChrome() {
  const session = state.session;
  const inside = !session.keys_required || session.logged_in;
  nav.hidden = !inside;
  navToggle.hidden = !inside;
  logoutButton.hidden = !session.logged_in;
  if (!session.keys_required) {
    who.textContent = "No API keys yet: open to this machine";
  } else if (session.logged_in) {
    who.textContent = `Logged in as ${session.principal}`;
  } else {
    who.textContent = "";
  }
}

async function refreshSession() {
  try {
    state.session = await api("/ui/session");
  } catch (error) {
    clear(main).append(notice("error", `Cannot read the session: ${errorText(error)}`));
    return;
  }
  renderChrome();
  if (state.session.keys_required && !state.session.logged_in) {
    showLogin();
  } else {
    state.loginShown = false;
    route();
  }
}

function showLogin() {
  if (state.cleanup) {
    state.cleanup();
    state.cleanup = null;
  }
  state.loginShown = true;
  document.title = "Log in · llmhost";
  const input = h("input", { type: "password", name: "api_key", autocomplete: "off", required: true, spellcheck: "false" });
  const errors = h("div", { "aria-live": "assertive" });
  const submit = h("button", { type: "submit" }, "Log in");
  const form = h(
    "form",
    { class: "card login stack", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Log in to llmhost"),
    h("p", { class: "muted" }, "This server needs an API key. Paste one made with ", h("code", {}, "llmhost keys create NAME"), " or on the Keys page. The key stays on the server; this browser keeps only a session cookie."),
    field("API key", input),
    errors,
    h("div", { class: "row" }, submit),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    submit.disabled = true;
    clear(errors);
    try {
      await call("/ui/login", { method: "POST", json: { api_key: input.value } });
      input.value = "";
      await refreshSession();
    } catch (error) {
      errors.append(notice("error", errorText(error)));
      input.focus();
    } finally {
      submit.disabled = false;
    }
  });
  clear(main).append(h("section", { "aria-label": "Log in" }, form));
  input.focus();
}

logoutButton.addEventListener("click", async () => {
  try {
    await call("/ui/logout", { method: "POST" });
  } finally {
    await refreshSession();
  }
});

window.addEventListener("llmhost:unauthorized", () => {
  if (!state.loginShown) refreshSession();
});
window.addEventListener("hashchange", route);

initTheme();
initNav();
refreshSession();
