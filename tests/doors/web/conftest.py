"""What the dashboard tests share: one server per module with a key, a slow loopback upstream behind a
route (so a stream lasts long enough to watch it and stop it), and the loopback hub to pull from."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llmhost.config import Settings
from llmhost.service import Service
from tests.conftest import LiveServer, make_service, make_settings, start_server
from tests.hub_server import LOOPBACK_ALLOW_HOSTS, HubServer, running_hub
from tests.tiny_gguf import write_tiny_llama_gguf

SLOW_ROUTE = "slow"
SLOW_WORDS = 60  # words the slow upstream streams, one per DELAY
SLOW_DELAY = 0.1
HUB_REPO = "Org/Tiny-GGUF"
PULLED = "tiny-gguf:q4_k_m"


def slow_upstream() -> Starlette:
    """An OpenAI-compatible upstream whose chat stream sends ``word0 word1 ...`` one word per 0.1 s; given
    tools, it calls the first one instead."""

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        words = [f"word{i} " for i in range(SLOW_WORDS)]
        base = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": int(time.time())}
        base["model"] = body["model"]
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(words)}
            usage = {"prompt_tokens": 3, "completion_tokens": SLOW_WORDS, "total_tokens": SLOW_WORDS + 3}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return JSONResponse({**base, "object": "chat.completion", "choices": [choice], "usage": usage})

        async def events() -> AsyncIterator[bytes]:
            def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                return b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n"

            yield chunk({"role": "assistant", "content": ""})
            if body.get("tools"):  # call the first tool, its arguments in two pieces
                name = body["tools"][0]["function"]["name"]
                head = {"index": 0, "id": "call_1", "type": "function"}
                yield chunk({"tool_calls": [{**head, "function": {"name": name, "arguments": '{"city": '}}]})
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]})
                yield chunk({}, "tool_calls")
                yield b"data: [DONE]\n\n"
                return
            for word in words:
                yield chunk({"content": word})
                await asyncio.sleep(SLOW_DELAY)
            yield chunk({}, "stop")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        card = {"id": "slow-1", "object": "model", "owned_by": "test"}
        return JSONResponse({"object": "list", "data": [card]})

    routes = [Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)]
    return Starlette(routes=routes)


@dataclass
class Dashboard:
    """A running server with a ``*`` key (``secret``), the slow route and the hub's repo to pull."""

    live: LiveServer
    settings: Settings
    service: Service
    secret: str
    hub: HubServer

    @property
    def url(self) -> str:
        return f"{self.live.base_url}/ui"

    def key(self, name: str, scopes: list[str]) -> str:
        """A new key's secret."""
        return self.service.keys.create(name, scopes=scopes)[1]

    def get(self, path: str, secret: str | None = None) -> httpx.Response:
        """``GET path`` with a key (the ``*`` one unless ``secret``)."""
        headers = {"authorization": f"Bearer {secret or self.secret}"}
        return httpx.get(f"{self.live.base_url}{path}", headers=headers, timeout=30)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """``POST path`` with the ``*`` key; raises unless it answers 2xx."""
        headers = {"authorization": f"Bearer {self.secret}"}
        r = httpx.post(f"{self.live.base_url}{path}", json=body, headers=headers, timeout=120)
        return r.raise_for_status()

    def chat(self, secret: str | None = None, model: str = "tiny", max_tokens: int = 4) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
        headers = {"authorization": f"Bearer {secret or self.secret}"}
        return httpx.post(f"{self.live.base_url}/v1/chat/completions", json=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Iterator[Dashboard]:
    root = tmp_path_factory.mktemp("web")
    with pytest.MonkeyPatch.context() as patch:
        # What the per-test isolation does, for the whole module: no developer config or data dir.
        for var in ("LLMHOST_CONFIG", "LLMHOST_API_KEY", "LLMHOST_DATA_DIR", "LLMHOST_MODELS_DIR"):
            patch.delenv(var, raising=False)
        patch.setenv("XDG_CONFIG_HOME", str(root / "xdg-config"))
        patch.setenv("XDG_DATA_HOME", str(root / "xdg-data"))
        repos = {HUB_REPO: {"tiny-Q4_K_M.gguf": write_tiny_llama_gguf(root / "q4.gguf", seed=11)}}
        upstream = LiveServer(slow_upstream()).start(wait_ready=False)
        with running_hub(root / "hub", patch, repos=repos) as hub:
            patch.setenv("HF_ENDPOINT", hub.url)  # the server under test runs in this process
            settings = make_settings(
                root / "data",
                # Room in each slot for an agent's retrieved chunks (the tiny model's 2048-token context).
                engine={"n_ctx": 2048, "n_parallel": 2},
                pull_allow_hosts=LOOPBACK_ALLOW_HOSTS,
                providers={
                    "up": {"type": "openai", "base_url": f"{upstream.base_url}/v1", "health_interval": 0}
                },
                routes={SLOW_ROUTE: {"targets": [{"provider": "up", "model": "slow-1"}], "retries": 0}},
            )
            service = make_service(settings, tiny_model_path)
            _, secret = service.keys.create("root", scopes=["*"])
            live = start_server(settings, service)
            try:
                yield Dashboard(live, settings, service, secret, hub)
            finally:
                live.stop()
                service.close()
                upstream.stop()
