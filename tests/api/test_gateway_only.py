"""A server with ``default_model = ""`` loads no local model and serves routes to remote providers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from llmhost.config import load_settings
from tests.conftest import LiveServer, start_server
from tests.providers.conftest import OPENAI_KEY
from tests.providers.wire_servers import openai_app


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[LiveServer]:
    upstream = LiveServer(openai_app(OPENAI_KEY)).start(wait_ready=False)
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        default_model="",
        providers={"up": {"type": "openai", "base_url": f"{upstream.base_url}/v1", "api_key": OPENAI_KEY}},
        routes={"remote": {"targets": [{"provider": "up", "model": "echo-1"}]}},
    )
    live = start_server(settings)
    yield live
    live.stop()
    upstream.stop()


def test_gateway_only_server_is_ready_with_no_local_model_and_routes_to_the_provider(
    gateway: LiveServer, openai_client: Callable[..., openai.OpenAI]
) -> None:
    ready = httpx.get(f"{gateway.base_url}/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "models": []}

    client = openai_client(gateway)
    answer = client.chat.completions.create(model="remote", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    streamed = client.chat.completions.create(
        model="remote", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gemma3:270m", messages=[{"role": "user", "content": "hi"}])
