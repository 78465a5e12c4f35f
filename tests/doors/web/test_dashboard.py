"""The dashboard end to end in a real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright; no browser is downloaded) against a real server on loopback: log in, chat with a stream and
stop it, pull from the loopback hub and watch the progress bar finish, load and unload, create a key and
see its secret once, watch the live view update, usage and audit verification.

One browser for the module; each test has its own browser context (cookies, local storage)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

import pytest

from tests.doors.web.conftest import HUB_REPO, PULLED, SLOW_ROUTE, SLOW_WORDS, Dashboard

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"{CHROMIUM} is not installed (make services, or apt-get install chromium)", allow_module_level=True
    )
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
Browser = sync_api.Browser
Page = sync_api.Page

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab in a context of its own (no cookies, empty local storage); a script error on it fails
    the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(f"script error: {e}"))
    yield tab
    context.close()
    assert not errors, errors


def log_in(page: Page, d: Dashboard, secret: str | None = None) -> None:
    page.goto(d.url)
    page.get_by_label("API key").fill(secret or d.secret)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def go(page: Page, d: Dashboard, name: str) -> None:
    page.get_by_role("navigation", name="Dashboard pages").get_by_role("link", name=name).click()


# ----- session ------------------------------------------------------------------------------------------
def test_logging_in_with_a_key_and_out(page: Page, dashboard: Dashboard) -> None:
    page.goto(dashboard.url)
    key = page.get_by_label("API key")
    key.fill("llmh_not-a-key")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Incorrect API key provided.")
    expect(page.get_by_role("navigation", name="Dashboard pages")).to_be_hidden()

    key.fill(dashboard.secret)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("Logged in as root")).to_be_visible()
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert cookie["value"] != dashboard.secret
    assert page.evaluate("document.cookie") == ""  # out of the page's reach
    page.reload()  # Chromium keeps a Secure cookie on http://127.0.0.1 (a secure context)
    expect(page.get_by_text("Logged in as root")).to_be_visible()

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    page.reload()
    expect(page.get_by_label("API key")).to_be_visible()


# ----- chat ---------------------------------------------------------------------------------------------
def test_chat_streams_text_as_it_comes_and_stop_ends_it(page: Page, dashboard: Dashboard) -> None:
    log_in(page, dashboard)
    page.get_by_label("Model, route or agent").select_option(SLOW_ROUTE)
    page.get_by_label("System prompt").fill("Be brief.")
    page.get_by_text("Sampling and tools").click()
    page.get_by_label("Temperature").fill("0.2")
    page.get_by_label("Message", exact=True).fill("Count for me")
    page.get_by_role("button", name="Send").click()

    answer = page.locator("article.msg.assistant .content")
    stop = page.get_by_role("button", name="Stop")
    expect(answer).to_contain_text("word0")  # the first words are there ...
    expect(stop).to_be_enabled()  # ... while the stream still runs
    expect(answer).to_contain_text("word3")
    stop.click()
    expect(page.get_by_role("status").filter(has_text="Stopped.")).to_be_visible()
    expect(stop).to_be_disabled()
    shown = answer.inner_text()
    page.wait_for_timeout(400)  # nothing more arrives after the stop
    assert answer.inner_text() == shown and f"word{SLOW_WORDS - 1}" not in shown
    expect(page.locator("article.msg.assistant .meta")).to_contain_text("stopped")

    # The conversation is kept in this browser: it is listed, and there after a reload.
    expect(page.get_by_role("button", name="Count for me", exact=True)).to_be_visible()
    page.reload()
    expect(page.locator("article.msg.user")).to_have_text(re.compile("Count for me"))
    expect(page.locator("article.msg.assistant .content")).to_have_text(shown)

    # A new conversation, a local model, a whole answer; then the first one is deleted.
    page.get_by_role("button", name="New", exact=True).click()
    page.get_by_label("Model, route or agent").select_option("tiny")
    page.get_by_text("Sampling and tools").click()
    expect(page.get_by_label("Temperature")).to_have_value("0.2")  # the new one starts from the settings
    page.get_by_label("Max tokens").fill("8")
    page.get_by_label("Message", exact=True).fill("Hello tiny")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status").filter(has_text="Done.")).to_be_visible()
    expect(page.locator("article.msg.assistant .meta")).to_contain_text("completion tokens")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete conversation “Count for me”").click()
    expect(page.get_by_role("button", name="Count for me", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Hello tiny", exact=True)).to_be_visible()


def test_a_tool_call_is_shown(page: Page, dashboard: Dashboard) -> None:
    log_in(page, dashboard)
    page.get_by_label("Model, route or agent").select_option(SLOW_ROUTE)
    page.get_by_text("Sampling and tools").click()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    page.get_by_label("Function tools (JSON array, optional)").fill(json.dumps(tools))
    page.get_by_label("Message", exact=True).fill("Weather in Paris?")
    page.get_by_role("button", name="Send").click()
    call = page.locator("article.msg.assistant .tool-call")
    expect(call).to_contain_text("get_weather")
    expect(call).to_contain_text('{"city": "Paris"}')
    expect(page.locator("article.msg.assistant .meta")).to_contain_text("finished: tool_calls")


def test_a_chat_error_shows_the_servers_message(page: Page, dashboard: Dashboard) -> None:
    log_in(page, dashboard, dashboard.key("chat-only", ["inference", "models:read"]))
    page.get_by_label("Model, route or agent").select_option("tiny")
    page.get_by_text("Sampling and tools").click()
    page.get_by_label("Top p").fill("7")
    page.get_by_label("Message", exact=True).fill("hi")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("article.msg.assistant").get_by_role("alert")).to_contain_text("top_p")


# ----- models -------------------------------------------------------------------------------------------
def test_pulling_a_model_shows_its_progress_to_the_end(page: Page, dashboard: Dashboard) -> None:
    log_in(page, dashboard)
    go(page, dashboard, "Models")
    bar = page.get_by_role("progressbar", name="Pull progress")
    page.get_by_label("Model", exact=True).fill(f"hf:{HUB_REPO}")
    # Every value the bar takes, recorded by the page itself as it changes.
    page.evaluate(
        """() => {
            window.seen = [];
            const bar = document.querySelector('progress[aria-label="Pull progress"]');
            const note = () => window.seen.push([bar.value, bar.max]);
            new MutationObserver(note).observe(bar, {attributes: true});
        }"""
    )
    page.get_by_role("button", name="Pull").click()
    expect(page.get_by_role("status").filter(has_text="success")).to_be_visible()
    assert bar.evaluate("b => b.value === b.max && b.max > 0")
    seen = page.evaluate("window.seen")
    assert any(value > 0 and max_ > 1 for value, max_ in seen), seen  # the download's bytes, shown
    expect(page.get_by_role("cell", name=PULLED, exact=True)).to_be_visible()
    assert PULLED in {m.name for m in dashboard.service.registry.list()}


def test_loading_and_unloading_a_model(page: Page, dashboard: Dashboard) -> None:
    log_in(page, dashboard)
    go(page, dashboard, "Models")
    page.get_by_role("button", name="Unload tiny", exact=True).click()
    expect(page.get_by_role("button", name="Load tiny", exact=True)).to_be_visible()
    assert dashboard.service.models.get_loaded("tiny") is None
    page.get_by_role("button", name="Load tiny", exact=True).click()
    expect(page.get_by_role("button", name="Unload tiny", exact=True)).to_be_visible()
    expect(page.get_by_text(re.compile(r"loaded · "))).to_be_visible()
    assert dashboard.service.models.get_loaded("tiny") is not None
    expect(page.get_by_text(re.compile(r"RAM: .* of .*"))).to_be_visible()

    page.get_by_role("button", name="Details of tiny", exact=True).click()
    expect(page.get_by_role("heading", name="tiny", exact=True)).to_be_visible()
    expect(page.get_by_text("llama").first).to_be_visible()


# ----- keys ---------------------------------------------------------------------------------------------
def test_creating_a_key_shows_its_secret_once(page: Page, dashboard: Dashboard) -> None:
    log_in(page, dashboard)
    go(page, dashboard, "Keys")
    page.get_by_label("Name", exact=True).fill("from-the-browser")
    page.get_by_label("metrics").check()
    page.get_by_role("button", name="Create key").click()
    secret_el = page.get_by_label("The new secret")
    expect(secret_el).to_have_text(re.compile(r"^llmh_\S{43}$"))
    secret = secret_el.inner_text()
    assert dashboard.get("/api/status", secret).status_code == 200  # the scope that was ticked
    expect(page.get_by_role("cell", name="from-the-browser", exact=True)).to_be_visible()
    page.get_by_role("button", name="Done").click()
    expect(page.get_by_label("The new secret")).to_have_count(0)
    page.reload()
    expect(page.get_by_role("cell", name="from-the-browser", exact=True)).to_be_visible()
    assert secret not in page.content()

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke from-the-browser").click()
    expect(page.get_by_role("cell", name="from-the-browser", exact=True)).to_have_count(0)
    assert dashboard.get("/api/status", secret).status_code == 401


# ----- live view ----------------------------------------------------------------------------------------
def test_the_live_view_updates_without_reloading_and_pauses_when_hidden(
    page: Page, dashboard: Dashboard
) -> None:
    log_in(page, dashboard)
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if r.url.endswith("/api/status") else None)
    go(page, dashboard, "Live")
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="tiny", exact=True))
    expect(row).to_be_visible()
    before = int(row.get_by_role("cell").last.inner_text().replace(",", ""))
    for _ in range(3):
        assert dashboard.chat().status_code == 200
    expect(row.get_by_role("cell").last).to_have_text(str(before + 3), timeout=10_000)
    expect(page.get_by_role("img", name=re.compile("^Throughput"))).to_be_visible()
    expect(page.get_by_role("cell", name="up/slow-1", exact=True)).to_be_visible()

    # Hidden tab: polling stops; visible again: it resumes.
    page.evaluate(
        """() => {
            Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});
            document.dispatchEvent(new Event('visibilitychange'));
        }"""
    )
    page.wait_for_timeout(300)  # a poll already under way may still land
    counted = len(polls)
    page.wait_for_timeout(2500)  # past one polling period
    assert len(polls) == counted
    expect(page.get_by_text("Paused while this tab is hidden.")).to_be_visible()
    page.evaluate(
        """() => {
            Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'visible'});
            document.dispatchEvent(new Event('visibilitychange'));
        }"""
    )
    expect(page.get_by_text("Updating every 2 s.")).to_be_visible()
    page.wait_for_timeout(300)  # the first poll goes out at once
    assert len(polls) > counted
    go(page, dashboard, "Chat")  # leaving the page stops the polling too
    page.wait_for_timeout(300)
    left = len(polls)
    page.wait_for_timeout(2200)  # past one polling period
    assert len(polls) == left


# ----- usage and audit ----------------------------------------------------------------------------------
def test_usage_charts_and_audit_verification(page: Page, dashboard: Dashboard) -> None:
    assert dashboard.chat().status_code == 200
    log_in(page, dashboard)
    go(page, dashboard, "Usage")
    expect(page.get_by_role("img", name=re.compile(r"^Requests by model: .*tiny"))).to_be_visible()
    page.get_by_label("Group by").select_option("day")
    expect(page.get_by_role("img", name=re.compile(r"^Requests per day"))).to_be_visible()
    page.get_by_label("Group by").select_option("key")
    page.get_by_label("Chart").select_option("tokens")
    expect(page.get_by_role("img", name=re.compile(r"^Tokens .* by key"))).to_be_visible()

    go(page, dashboard, "Audit")
    expect(page.get_by_role("cell", name="chat", exact=True).first).to_be_visible()
    page.get_by_role("button", name="Verify the chain").click()
    expect(page.get_by_text("The chain holds.")).to_be_visible()
    expect(page.get_by_text(re.compile(r"\d+:[0-9a-f]{64}"))).to_be_visible()


# ----- phone width and dark theme ----------------------------------------------------------------------
def test_the_pages_fit_a_phone_and_switch_to_dark(browser: Browser, dashboard: Dashboard) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="light")
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        log_in(page, dashboard)
        menu = page.get_by_role("button", name="Menu")
        expect(menu).to_be_visible()
        expect(menu).to_have_attribute("aria-expanded", "false")
        for name in ("Chat", "Models", "Live", "Usage", "Audit", "Keys", "Agents", "Datasets"):
            menu.click()
            page.get_by_role("link", name=name, exact=True).click()
            page.wait_for_timeout(150)
            overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
            assert overflow <= 0, f"{name} is wider than the screen by {overflow} px"
        background = "getComputedStyle(document.body).backgroundColor"
        light = page.evaluate(background)
        dark = page.get_by_role("button", name="Dark theme")
        dark.click()
        expect(dark).to_have_attribute("aria-pressed", "true")
        assert page.evaluate(background) != light
        page.reload()  # the choice is kept
        expect(dark).to_have_attribute("aria-pressed", "true")
    finally:
        context.close()


# ----- agents -------------------------------------------------------------------------------------------
def test_creating_an_agent_step_by_step_then_its_scorecard(page: Page, dashboard: Dashboard) -> None:
    log_in(page, dashboard)
    go(page, dashboard, "Agents")
    page.get_by_role("link", name="Create an agent").click()
    steps = page.get_by_role("list", name="Steps")
    expect(steps.locator('[aria-current="step"]')).to_have_text("Model")
    page.get_by_label("Agent name").fill("helper")
    page.get_by_label("Model or route").select_option("tiny")
    page.get_by_label("Description").fill("Says hello")
    page.get_by_label("Description").press("Enter")  # the keyboard goes on too
    expect(steps.locator('[aria-current="step"]')).to_have_text("System prompt")
    page.get_by_label("System prompt").fill("You greet people.")
    page.get_by_label("Max tokens").fill("6")
    page.get_by_role("button", name="Next").click()
    page.get_by_label("Policy").fill("no-such-policy")
    page.get_by_role("button", name="Next").click()
    # No tool group: the tiny model's 512-token context has no room for the tools' definitions.
    expect(page.get_by_label("monitoring")).not_to_be_checked()
    page.get_by_role("button", name="Next").click()
    expect(steps.locator('[aria-current="step"]')).to_have_text("Datasets")
    page.get_by_role("button", name="Create the agent").click()
    # The server's own refusal, shown; one step back, the policy is fixed.
    expect(page.get_by_role("alert")).to_contain_text("no-such-policy")
    for _ in range(2):
        page.get_by_role("button", name="Back").click()
    page.get_by_label("Policy").fill("")
    for _ in range(2):
        page.get_by_role("button", name="Next").click()
    page.get_by_role("button", name="Create the agent").click()
    expect(steps.locator('[aria-current="step"]')).to_have_text("Test chat")
    agent = dashboard.get("/v1/agents/helper").json()
    assert agent["model"] == "tiny" and agent["system"] == "You greet people." and agent["tool_groups"] == []
    assert agent["sampling"]["max_tokens"] == 6

    page.get_by_label("Ask helper").fill("Hello?")
    page.get_by_role("button", name="Ask").click()
    answer = page.get_by_role("article", name="Answer")
    expect(answer).to_contain_text(re.compile(r"run req-"))
    answer.get_by_role("button", name="Good answer").click()
    expect(answer.get_by_text("Thanks: recorded.")).to_be_visible()

    page.get_by_role("link", name="See helper's scorecard").click()
    expect(page.get_by_role("heading", name="Agent helper")).to_be_visible()
    requests = page.locator(".stat").filter(has_text="Requests")
    expect(requests.locator(".value")).to_have_text("1")
    expect(page.locator(".stat").filter(has_text="Feedback").locator(".value")).to_have_text("1 / 0")
    expect(page.get_by_role("table").get_by_role("cell", name="up", exact=True)).to_be_visible()


# ----- datasets, and an agent that cites one --------------------------------------------------------------
MANUAL = "To reset the router, hold the reset button for ten seconds until the light blinks.\n" * 40


def test_a_dataset_upload_shows_progress_then_search_cites_the_chunks(
    page: Page, dashboard: Dashboard
) -> None:
    log_in(page, dashboard)
    go(page, dashboard, "Datasets")
    page.get_by_label("Name", exact=True).fill("manuals")
    page.get_by_label("Description").fill("Device manuals")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name="Dataset manuals")).to_be_visible()
    page.evaluate(
        """() => {
            window.seen = [];
            const bar = document.querySelector('progress[aria-label="Upload progress"]');
            const note = () => window.seen.push([bar.value, bar.max]);
            new MutationObserver(note).observe(bar, {attributes: true});
        }"""
    )
    upload = {"name": "router.md", "mimeType": "text/markdown", "buffer": MANUAL.encode()}
    page.get_by_label("File", exact=True).set_input_files(upload)
    page.get_by_role("button", name="Upload").click()
    expect(
        page.get_by_role("status").filter(has_text=re.compile(r"Added router.md: \d+ chunks"))
    ).to_be_visible(timeout=60_000)
    bar = page.get_by_role("progressbar", name="Upload progress")
    assert bar.evaluate("b => b.value === b.max && b.max > 0")
    assert any(value > 0 for value, _ in page.evaluate("window.seen"))  # the upload's bytes, shown
    expect(page.get_by_role("cell", name="router.md", exact=True)).to_be_visible()

    page.get_by_label("Text", exact=True).fill("Sourdough rises with a starter of wild yeast.")
    page.get_by_label("Document name").last.fill("bread.md")
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.get_by_role("cell", name="bread.md", exact=True)).to_be_visible(timeout=60_000)

    page.get_by_label("Query").fill("how do I reset the router")
    page.get_by_role("button", name="Search").click()
    results = page.get_by_role("list", name="Search results")
    expect(results.get_by_role("listitem").first).to_contain_text("router.md")
    expect(results.get_by_role("listitem").first).to_contain_text(
        re.compile(r"chunk \d+, characters \d+\u2013\d+")
    )


def test_an_agent_with_a_dataset_gives_a_cited_answer_and_a_scorecard(
    page: Page, dashboard: Dashboard
) -> None:
    if dashboard.get("/v1/datasets/manuals").status_code == 404:  # this test alone
        dashboard.post("/v1/datasets", {"name": "manuals"})
        dashboard.post("/v1/datasets/manuals/documents", {"name": "router.md", "text": MANUAL})
    log_in(page, dashboard)
    page.goto(f"{dashboard.url}#/agents/new")
    page.get_by_label("Agent name").fill("manual-bot")
    page.get_by_label("Model or route").select_option("tiny")
    for _ in range(4):
        page.get_by_role("button", name="Next").click()
    page.get_by_label("manuals").check()
    page.get_by_label("Chunks retrieved").fill("1")
    page.get_by_role("button", name="Create the agent").click()
    page.get_by_label("Ask manual-bot").fill("How do I reset my router?")
    page.get_by_role("button", name="Ask").click()
    sources = page.get_by_role("article", name="Answer").get_by_role("list", name="Sources")
    expect(sources).to_contain_text("router.md")
    expect(sources).to_contain_text("dataset manuals")

    # The chat page streams the same agent, citations included.
    go(page, dashboard, "Chat")
    page.get_by_label("Model, route or agent").select_option("manual-bot")
    page.get_by_label("Message", exact=True).fill("Reset?")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status").filter(has_text="Done.")).to_be_visible()
    expect(page.locator("article.msg.assistant").get_by_role("list", name="Sources")).to_contain_text(
        "router.md"
    )

    page.goto(f"{dashboard.url}#/agents/manual-bot")
    expect(page.locator(".stat").filter(has_text="Requests").locator(".value")).to_have_text("2")
    expect(page.locator(".stat").filter(has_text="Used retrieval").locator(".value")).to_have_text("100%")
    expect(page.get_by_role("table").get_by_role("cell", name=re.compile("router.md#")).first).to_be_visible()
