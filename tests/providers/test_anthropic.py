"""AnthropicProvider: OpenAI chat <-> Messages API round trips against a loopback Messages API server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmhost.providers.anthropic import AnthropicProvider, to_messages_request
from llmhost.providers.base import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    Provider,
    ProviderHTTPError,
    ProviderStreamError,
)
from tests.conftest import LiveServer
from tests.providers.conftest import ANTHROPIC_KEY
from tests.providers.wire_servers import recorded

pytestmark = pytest.mark.anyio

MODEL = "claude-echo-1"


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


@pytest.fixture
async def claude(anthropic_upstream: LiveServer) -> AsyncIterator[AnthropicProvider]:
    p = AnthropicProvider("claude", anthropic_upstream.base_url, api_key=ANTHROPIC_KEY)
    yield p
    await p.aclose()


async def test_it_implements_the_provider_protocol(claude: AnthropicProvider) -> None:
    assert isinstance(claude, Provider)


async def test_chat_round_trip_sends_the_documented_headers_and_translates_the_answer(
    claude: AnthropicProvider, anthropic_upstream: LiveServer
) -> None:
    resp = await claude.chat(ChatRequest(MODEL, [{"role": "user", "content": "hi there"}]))
    sent = recorded(anthropic_upstream)[-1]
    assert sent["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent["headers"]
    assert sent["body"]["max_tokens"] == 4096  # Anthropic requires it; OpenAI callers may leave it out
    assert resp["object"] == "chat.completion" and resp["id"].startswith("msg_") and resp["model"] == MODEL
    assert resp["choices"][0]["message"] == {"role": "assistant", "content": "echo: hi there"}
    assert resp["choices"][0]["finish_reason"] == "stop"  # end_turn
    assert resp["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


async def test_system_messages_move_to_the_top_level_system_field(
    claude: AnthropicProvider, anthropic_upstream: LiveServer
) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first"},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": "second"},
    ]
    resp = await claude.chat(ChatRequest(MODEL, messages))
    body = recorded(anthropic_upstream)[-1]["body"]
    assert body["system"] == "You are terse.\n\nAnswer in English."
    assert all(m["role"] != "system" for m in body["messages"])
    # the two user turns, now adjacent, are merged into one (the API wants roles to alternate)
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]}
    ]
    assert resp["choices"][0]["message"]["content"] == "echo: first second"


async def test_sampling_fields_map_and_stop_becomes_stop_sequences(
    claude: AnthropicProvider, anthropic_upstream: LiveServer
) -> None:
    params = {"max_tokens": 50, "temperature": 0.3, "top_p": 0.9, "top_k": 5, "stop": "there", "seed": 1}
    resp = await claude.chat(ChatRequest(MODEL, [{"role": "user", "content": "hi there"}], params))
    body = recorded(anthropic_upstream)[-1]["body"]
    assert body["stop_sequences"] == ["there"]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["top_k"]) == (50, 0.3, 0.9, 5)
    assert "seed" not in body and "stop" not in body
    assert resp["choices"][0]["message"]["content"] == "echo: hi"  # cut before the stop sequence
    assert resp["choices"][0]["finish_reason"] == "stop"  # stop_sequence


async def test_max_tokens_stop_reason_becomes_length(claude: AnthropicProvider) -> None:
    resp = await claude.chat(ChatRequest(MODEL, [{"role": "user", "content": "a b c d"}], {"max_tokens": 2}))
    assert resp["choices"][0]["message"]["content"] == "echo: a"
    assert resp["choices"][0]["finish_reason"] == "length"
    assert resp["usage"]["completion_tokens"] == 2


async def test_stream_translates_the_event_sequence_into_openai_chunks(claude: AnthropicProvider) -> None:
    request = ChatRequest(MODEL, [{"role": "system", "content": "s"}, {"role": "user", "content": "one two"}])
    chunks = [c async for c in claude.chat_stream(request)]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text_of(chunks) == "echo: one two"
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("msg_")
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


async def test_streamed_length_finish_and_usage(claude: AnthropicProvider) -> None:
    request = ChatRequest(MODEL, [{"role": "user", "content": "a b c d"}], {"max_tokens": 3})
    chunks = [c async for c in claude.chat_stream(request)]
    assert text_of(chunks) == "echo: a b"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_an_error_event_mid_stream_is_a_stream_error_after_the_text_so_far(
    anthropic_upstream: LiveServer,
) -> None:
    p = AnthropicProvider("claude", anthropic_upstream.base_url, api_key=ANTHROPIC_KEY)
    got: list[dict[str, Any]] = []
    try:
        with pytest.raises(ProviderStreamError, match="Overloaded"):
            async for chunk in p.chat_stream(
                ChatRequest("claude-error-midstream", [{"role": "user", "content": "a b"}])
            ):
                got.append(chunk)
    finally:
        await p.aclose()
    assert text_of(got) == "echo: a"


async def test_overloaded_529_is_retryable(claude: AnthropicProvider) -> None:
    with pytest.raises(ProviderHTTPError) as info:
        await claude.chat(ChatRequest("claude-overloaded", [{"role": "user", "content": "x"}]))
    assert info.value.status == 529 and info.value.retryable
    assert "Overloaded" in str(info.value)
    assert info.value.body is not None and info.value.body["error"]["type"] == "overloaded_error"


async def test_a_wrong_key_is_a_non_retryable_401(anthropic_upstream: LiveServer) -> None:
    p = AnthropicProvider("claude", anthropic_upstream.base_url, api_key="sk-ant-wrong-000000")
    try:
        with pytest.raises(ProviderHTTPError) as info:
            await p.chat(ChatRequest(MODEL, [{"role": "user", "content": "x"}]))
        assert info.value.status == 401 and not info.value.retryable
        assert "invalid x-api-key" in str(info.value)
        assert await p.health() is False
    finally:
        await p.aclose()


@pytest.mark.parametrize(
    "params",
    [
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"n": 2},
        {"response_format": {"type": "json_object"}},
    ],
)
async def test_what_the_messages_api_cannot_do_is_refused_before_any_request(
    claude: AnthropicProvider, anthropic_upstream: LiveServer, params: dict[str, Any]
) -> None:
    before = len(recorded(anthropic_upstream))
    with pytest.raises(ProviderHTTPError) as info:
        await claude.chat(ChatRequest(MODEL, [{"role": "user", "content": "x"}], params))
    assert info.value.status == 400 and not info.value.retryable
    with pytest.raises(ProviderHTTPError):
        async for _ in claude.chat_stream(ChatRequest(MODEL, [{"role": "user", "content": "x"}], params)):
            pass
    assert len(recorded(anthropic_upstream)) == before


async def test_embeddings_are_refused_as_unsupported(claude: AnthropicProvider) -> None:
    with pytest.raises(ProviderHTTPError, match="no embeddings API") as info:
        await claude.embed(EmbeddingRequest(MODEL, ["x"]))
    assert info.value.status == 400 and not info.value.retryable


async def test_completions_become_a_single_user_message(
    claude: AnthropicProvider, anthropic_upstream: LiveServer
) -> None:
    resp = await claude.complete(CompletionRequest(MODEL, "tell me", {"max_tokens": 10}))
    assert recorded(anthropic_upstream)[-1]["body"]["messages"] == [{"role": "user", "content": "tell me"}]
    assert resp["object"] == "text_completion"
    assert resp["choices"][0]["text"] == "echo: tell me" and resp["choices"][0]["finish_reason"] == "stop"
    chunks = [c async for c in claude.complete_stream(CompletionRequest(MODEL, "tell me"))]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "echo: tell me"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_list_models_follows_pages_and_health_is_true(claude: AnthropicProvider) -> None:
    assert await claude.list_models() == ["claude-echo-1", "claude-echo-2", "claude-echo-3"]
    assert await claude.health() is True


def test_images_become_image_blocks_and_single_texts_stay_strings() -> None:
    request = ChatRequest(
        MODEL,
        [
            {"role": "user", "content": "plain"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            },
        ],
        {"user": "u-42"},
    )
    body = to_messages_request("claude", request)
    assert body["messages"][0] == {"role": "user", "content": "plain"}
    assert body["messages"][2]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    assert body["metadata"] == {"user_id": "u-42"}
