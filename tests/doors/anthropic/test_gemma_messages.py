"""Claude Code's request shape against the embedded Gemma model, whose chat template takes a system
message only at the start and strictly alternating turns after it: the door's translation must render."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import pytest

from llmhost.config import load_settings
from llmhost.models.default import DEFAULT_MODEL_NAME
from llmhost.service import Service
from tests.conftest import LiveServer
from tests.doors.anthropic.claude_code import HEADERS, PATH, claude_code_body
from tests.doors.anthropic.conftest import messages_app

pytestmark = pytest.mark.gemma
MODEL = DEFAULT_MODEL_NAME


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = load_settings(
        None,
        data_dir=tmp_path_factory.mktemp("gemma-anthropic"),
        default_model=MODEL,
        engine={"n_ctx": 2048, "n_parallel": 2, "n_batch": 256, "n_threads": 2},
    )
    service = Service(settings)
    live = LiveServer(messages_app(settings, service)).start()
    yield live
    live.stop()
    service.close()


def test_a_claude_code_request_streams_from_gemma(gemma_server: LiveServer) -> None:
    url = f"{gemma_server.base_url}{PATH}"
    with httpx.stream("POST", url, json=claude_code_body(MODEL), headers=HEADERS, timeout=120) as response:
        assert response.status_code == 200, response.read()
        kinds = []
        for line in response.iter_lines():
            if line.startswith("event: "):
                kinds.append(line.removeprefix("event: "))
            if "content_block_delta" in kinds:
                break  # the answer has begun; leaving frees the slot
    assert kinds[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]


def test_greedy_gemma_answers_are_repeatable(gemma_server: LiveServer) -> None:
    client = anthropic.Anthropic(base_url=gemma_server.base_url, api_key="unused", max_retries=0)
    args: dict[str, object] = {
        "model": MODEL,
        "max_tokens": 12,
        "system": "You answer briefly.",
        "messages": [{"role": "user", "content": "Name a colour."}],
        "extra_body": {"temperature": 0},
    }
    first, second = client.messages.create(**args), client.messages.create(**args)  # type: ignore[call-overload]
    assert first.content[0].text == second.content[0].text
    assert first.usage.output_tokens == second.usage.output_tokens <= 12
