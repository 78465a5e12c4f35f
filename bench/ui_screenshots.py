"""Screenshots of the web dashboard for the README: one PNG per page, into ``docs/screenshots/``.

    .venv/bin/python bench/ui_screenshots.py [--out docs/screenshots] [--chromium /usr/bin/chromium]

It starts a server on loopback with some data in a temporary directory: the tiny test model (and an
alias of it), a route to a scripted upstream that answers in plain sentences (``assistant``, priced, so
usage has a cost), three keys, an agent, a few dozen requests, and a dataset when this build has them.
Then it drives Debian's Chromium (Playwright, no browser download) through every page: desktop
1280x800 in the light theme, and the chat and live pages at 390x844 (a phone) in the dark theme. Each PNG
is the visible window, quantized to 256 colours when that makes it smaller, and kept under 200 KB.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image  # Pillow: a dependency of matplotlib (the dev and bench extras)
from playwright.sync_api import Page, expect, sync_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import LiveServer, make_service, make_settings, start_server  # noqa: E402
from tests.tiny_gguf import write_tiny_llama_gguf  # noqa: E402

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MAX_BYTES = 200_000
ANSWER = (
    "llmhost serves local GGUF models and remote providers behind one API. Every request goes through "
    "the same pipeline: your key's scopes and limits, the governance policy, routing with fallback, "
    "usage and the audit log. Ask it anything."
)
HANDBOOK = {
    "keys.md": "# API keys\n\nCreate a key with `llmhost keys create NAME`. The secret is shown once and "
    "stored only as its SHA-256. Revoking a key stops it at once, dashboard sessions included.\n",
    "limits.md": "# Limits\n\nA key's rpm and tpm hold over every 60-second window, exactly. A budget is "
    "a spending limit in USD at the routes' prices.\n",
    "audit.md": "# Audit log\n\nEvery request leaves one record, chained by SHA-256 hashes; "
    "`llmhost audit verify` walks the chain.\n",
}


def scripted_upstream() -> Starlette:
    """An OpenAI-compatible upstream that answers every chat with ``ANSWER``, streamed word by word."""

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        words = ANSWER.split(" ")
        base = {"id": "chatcmpl-shot", "created": int(time.time()), "model": body["model"]}
        usage = {"prompt_tokens": 24, "completion_tokens": len(words), "total_tokens": 24 + len(words)}
        if not body.get("stream"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": "stop",
            }
            return JSONResponse({**base, "object": "chat.completion", "choices": [choice], "usage": usage})

        async def events() -> AsyncIterator[bytes]:
            def sse(payload: dict[str, Any]) -> bytes:
                return (
                    b"data: "
                    + json.dumps({**base, "object": "chat.completion.chunk", **payload}).encode()
                    + b"\n\n"
                )

            yield sse(
                {
                    "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    ]
                }
            )
            for i, word in enumerate(words):
                piece = word if i == 0 else f" {word}"
                yield sse({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                await asyncio.sleep(0.01)
            yield sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                yield sse({"choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def save_png(png: bytes, path: Path) -> int:
    """Write the screenshot, quantized to 256 colours when that is smaller (flat UI colours survive)."""
    image = Image.open(io.BytesIO(png))
    small = io.BytesIO()
    image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
        small, "PNG", optimize=True
    )
    data = small.getvalue() if len(small.getvalue()) < len(png) else png
    path.write_bytes(data)
    if len(data) > MAX_BYTES:
        raise SystemExit(f"{path} is {len(data)} bytes, more than {MAX_BYTES}")
    return len(data)


class Shooter:
    def __init__(self, base: str, secret: str, out: Path) -> None:
        self.base, self.secret, self.out = base, secret, out

    def log_in(self, page: Page) -> None:
        page.goto(f"{self.base}/ui")
        page.get_by_label("API key").fill(self.secret)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("button", name="Log out")).to_be_visible()

    def shot(self, page: Page, name: str, ready: Callable[[Page], None] | None = None) -> None:
        if ready is not None:
            ready(page)
        page.wait_for_timeout(300)
        size = save_png(page.screenshot(), self.out / f"{name}.png")
        print(f"{name}.png: {size // 1024} KB")


def seed(base: str, secret: str, service: Any) -> bool:
    """Keys, requests, an agent, and a dataset when this build has them; True when it has datasets."""
    auth = {"authorization": f"Bearer {secret}"}
    service.keys.create("ci", scopes=["inference", "models:read"], rpm=120)
    service.keys.create("grafana", scopes=["metrics"])
    laptop = service.keys.create("laptop", scopes=["inference", "models:read", "models:write"], budget=5.0)[1]
    service.store.copy("tiny", "tiny:latest")
    for i in range(12):
        body = {"model": "assistant" if i % 3 else "tiny", "messages": [{"role": "user", "content": f"q{i}"}]}
        body["max_tokens"] = 16
        key = laptop if i % 2 else secret
        httpx.post(
            f"{base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
        )
    datasets = httpx.get(f"{base}/v1/datasets", headers=auth).status_code == 200
    agent: dict[str, Any] = {
        "name": "support",
        "model": "assistant",
        "description": "Answers questions about running llmhost",
        "system": "You answer questions about llmhost from its handbook, citing it.",
        "tool_groups": ["monitoring"],
    }
    if datasets:
        httpx.post(
            f"{base}/v1/datasets", json={"name": "handbook", "description": "Operator notes"}, headers=auth
        )
        for name, text in HANDBOOK.items():
            httpx.post(
                f"{base}/v1/datasets/handbook/documents",
                json={"name": name, "text": text},
                headers=auth,
                timeout=120,
            )
        agent["datasets"] = ["handbook"]
    made = httpx.post(f"{base}/v1/agents", json=agent, headers=auth, timeout=30)
    if made.status_code == 200:
        for question in (
            "How do I revoke a key?",
            "What does a budget limit?",
            "Is the audit log tamper-evident?",
        ):
            body = {"model": "support", "messages": [{"role": "user", "content": question}]}
            r = httpx.post(f"{base}/v1/chat/completions", json=body, headers=auth, timeout=60)
            run = r.headers.get("x-llmhost-run-id")
            if run:
                httpx.post(f"{base}/v1/feedback", json={"run_id": run, "thumbs": "up"}, headers=auth)
    return datasets


def traffic(base: str, secret: str, stop: threading.Event) -> None:
    """Requests to the local model while the live view is shown, so its charts have something to draw."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 96}
    with httpx.Client(headers={"authorization": f"Bearer {secret}"}, timeout=30) as client:
        while not stop.is_set():
            client.post(f"{base}/v1/chat/completions", json=body)
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmhost-shots-") as tmp:
        work = Path(tmp)
        upstream = LiveServer(scripted_upstream()).start(wait_ready=False)
        settings = make_settings(
            work / "data",
            engine={"n_threads": 2},
            providers={"up": {"type": "openai", "base_url": f"{upstream.base_url}/v1", "health_interval": 0}},
            routes={
                "assistant": {
                    "targets": [
                        {"provider": "up", "model": "helpful-1", "input_price": 0.5, "output_price": 1.5}
                    ]
                }
            },
        )
        service = make_service(settings, write_tiny_llama_gguf(work / "tiny.gguf", context_length=2048))
        _, secret = service.keys.create("admin", scopes=["*"])
        live = start_server(settings, service)
        try:
            datasets = seed(live.base_url, secret, service)
            shoot(Shooter(live.base_url, secret, args.out), args.chromium, datasets)
        finally:
            live.stop()
            service.close()
            upstream.stop()


def shoot(s: Shooter, chromium: str, datasets: bool) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=ARGS)
        desktop = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
        page = desktop.new_page()
        page.goto(f"{s.base}/ui")
        s.shot(page, "login")
        s.log_in(page)

        # Chat: a conversation with the route, streamed.
        page.get_by_label("Model, route or agent").select_option("assistant")
        page.get_by_label("System prompt").fill("You are a concise assistant.")
        page.get_by_label("Message", exact=True).fill("What is llmhost?")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("status").filter(has_text="Done.")).to_be_visible()
        s.shot(page, "chat")

        page.goto(f"{s.base}/ui#/models")
        page.get_by_role("button", name="Details of tiny", exact=True).click()
        s.shot(
            page,
            "models",
            lambda p: expect(p.get_by_role("heading", name="tiny", exact=True)).to_be_visible(),
        )

        stop = threading.Event()
        worker = threading.Thread(target=traffic, args=(s.base, s.secret, stop), daemon=True)
        worker.start()
        page.goto(f"{s.base}/ui#/live")
        page.wait_for_timeout(14_000)  # seven polls: lines on the charts
        s.shot(page, "live")

        page.goto(f"{s.base}/ui#/usage")
        s.shot(
            page,
            "usage",
            lambda p: expect(p.get_by_role("img", name="Requests by model", exact=False)).to_be_visible(),
        )
        page.goto(f"{s.base}/ui#/audit")
        page.get_by_role("button", name="Verify the chain").click()
        s.shot(page, "audit", lambda p: expect(p.get_by_text("The chain holds.")).to_be_visible())
        page.goto(f"{s.base}/ui#/keys")
        s.shot(
            page, "keys", lambda p: expect(p.get_by_role("cell", name="laptop", exact=True)).to_be_visible()
        )
        page.goto(f"{s.base}/ui#/agents/new")
        s.shot(page, "agents-create", lambda p: expect(p.get_by_label("Agent name")).to_be_visible())
        page.goto(f"{s.base}/ui#/agents/support")
        s.shot(page, "agents", lambda p: expect(p.get_by_text("Success rate")).to_be_visible())
        if datasets:
            page.goto(f"{s.base}/ui#/datasets/handbook")
            page.get_by_label("Query").fill("how do I revoke a key")
            page.get_by_role("button", name="Search").click()
            expect(page.get_by_role("list", name="Search results")).to_be_visible()
            s.shot(
                page,
                "datasets",
                # The search card at the top (under the sticky bar), its results below it.
                lambda p: p.evaluate(
                    "document.getElementById('search-title').scrollIntoView(); window.scrollBy(0, -80)"
                ),
            )

        phone = browser.new_context(
            viewport={"width": 390, "height": 844}, color_scheme="dark", device_scale_factor=1
        )
        mobile = phone.new_page()
        s.log_in(mobile)
        mobile.get_by_label("Model, route or agent").select_option("assistant")
        mobile.get_by_label("Message", exact=True).fill("Does it work on a phone?")
        mobile.get_by_role("button", name="Send").click()
        expect(mobile.get_by_role("status").filter(has_text="Done.")).to_be_visible()
        mobile.locator("article.msg.assistant").last.scroll_into_view_if_needed()
        s.shot(mobile, "chat-phone-dark")
        mobile.goto(f"{s.base}/ui#/live")
        mobile.wait_for_timeout(8_000)
        s.shot(mobile, "live-phone-dark")
        stop.set()
        worker.join(timeout=30)
        browser.close()


if __name__ == "__main__":
    main()
