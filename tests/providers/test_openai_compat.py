"""OpenAICompatProvider against a loopback OpenAI-compatible upstream and against a real llmhost server."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmhost.providers.base import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    Provider,
    ProviderHTTPError,
)
from llmhost.providers.openai_compat import OpenAICompatProvider
from tests.conftest import TINY, LiveServer
from tests.providers.conftest import OPENAI_KEY
from tests.providers.wire_servers import recorded

pytestmark = pytest.mark.anyio

HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


async def collect(chunks: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in chunks]


@pytest.fixture
async def provider(openai_upstream: LiveServer) -> AsyncIterator[OpenAICompatProvider]:
    p = OpenAICompatProvider("remote", f"{openai_upstream.base_url}/v1", api_key=OPENAI_KEY)
    yield p
    await p.aclose()


async def test_it_implements_the_provider_protocol(provider: OpenAICompatProvider) -> None:
    assert isinstance(provider, Provider)
    assert provider.name == "remote"


async def test_chat_forwards_the_request_and_returns_the_upstream_answer(
    provider: OpenAICompatProvider, openai_upstream: LiveServer
) -> None:
    resp = await provider.chat(ChatRequest("echo-1", HELLO, {"temperature": 0.2, "stop": ["zzz"], "seed": 7}))
    assert resp["object"] == "chat.completion"
    assert resp["choices"][0]["message"] == {"role": "assistant", "content": "echo: hello there"}
    assert resp["choices"][0]["finish_reason"] == "stop"
    assert resp["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    sent = recorded(openai_upstream)[-1]
    assert sent["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent["body"] == {
        "model": "echo-1",
        "messages": HELLO,
        "temperature": 0.2,
        "stop": ["zzz"],
        "seed": 7,
    }


async def test_chat_drops_stream_fields_from_a_plain_call(
    provider: OpenAICompatProvider, openai_upstream: LiveServer
) -> None:
    await provider.chat(
        ChatRequest("echo-1", HELLO, {"stream": True, "stream_options": {"include_usage": True}})
    )
    assert "stream" not in recorded(openai_upstream)[-1]["body"]


async def test_chat_stream_asks_for_usage_and_yields_chunks_ending_with_it(
    provider: OpenAICompatProvider, openai_upstream: LiveServer
) -> None:
    chunks = await collect(provider.chat_stream(ChatRequest("echo-1", HELLO, {"max_tokens": 2})))
    body = recorded(openai_upstream)[-1]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: hello"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2


async def test_completions_plain_and_streamed(provider: OpenAICompatProvider) -> None:
    resp = await provider.complete(CompletionRequest("echo-1", "once upon", {"max_tokens": 16}))
    assert resp["choices"][0]["text"] == "echo: once upon"
    chunks = await collect(provider.complete_stream(CompletionRequest("echo-1", "once upon", {})))
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "echo: once upon"
    assert chunks[-1]["usage"]["total_tokens"] == 5


async def test_embeddings_always_ask_for_float_vectors(
    provider: OpenAICompatProvider, openai_upstream: LiveServer
) -> None:
    resp = await provider.embed(EmbeddingRequest("echo-1", ["a b", "c"], {"encoding_format": "base64"}))
    assert recorded(openai_upstream)[-1]["body"]["encoding_format"] == "float"
    assert [d["index"] for d in resp["data"]] == [0, 1]
    assert all(isinstance(x, float) for x in resp["data"][0]["embedding"])


async def test_list_models_and_health(provider: OpenAICompatProvider) -> None:
    assert await provider.list_models() == ["echo-1"]
    assert await provider.health() is True


async def test_a_wrong_key_is_a_non_retryable_401_with_the_upstream_message(
    openai_upstream: LiveServer,
) -> None:
    p = OpenAICompatProvider("remote", f"{openai_upstream.base_url}/v1", api_key="sk-wrong-key-000000")
    try:
        with pytest.raises(ProviderHTTPError) as info:
            await p.chat(ChatRequest("echo-1", HELLO))
        assert info.value.status == 401 and info.value.retryable is False
        assert "Incorrect API key provided" in str(info.value)
        assert await p.health() is False
    finally:
        await p.aclose()


async def test_extra_headers_reach_the_upstream(openai_upstream: LiveServer) -> None:
    p = OpenAICompatProvider(
        "remote", f"{openai_upstream.base_url}/v1", api_key=OPENAI_KEY, extra_headers={"x-tenant": "blue"}
    )
    try:
        await p.chat(ChatRequest("echo-1", HELLO))
        assert recorded(openai_upstream)[-1]["headers"]["x-tenant"] == "blue"
    finally:
        await p.aclose()


async def test_added_latency_over_a_direct_call_is_small(
    provider: OpenAICompatProvider, openai_upstream: LiveServer
) -> None:
    """Interleaved pairs on one pooled client; the median pairwise difference is the provider's cost."""
    request = ChatRequest("echo-1", HELLO, {"max_tokens": 4})
    client = provider._http.client  # the same pool, so only the provider's work differs
    body = json.dumps({"model": "echo-1", "messages": HELLO, "max_tokens": 4}).encode()
    diffs = []
    for _ in range(150):
        t0 = time.perf_counter()
        json.loads((await client.request("POST", "/chat/completions", body))[1])
        t1 = time.perf_counter()
        await provider.chat(request)
        diffs.append(time.perf_counter() - t1 - (t1 - t0))
    diffs.sort()
    assert diffs[len(diffs) // 2] < 0.002


# -- a real llmhost server as the upstream ------------------------------------------------------------


async def test_another_llmhost_serves_chat_and_streams_through_the_provider(server: LiveServer) -> None:
    p = OpenAICompatProvider("peer", f"{server.base_url}/v1", health_path=f"{server.base_url}/health")
    try:
        request = ChatRequest(
            TINY, [{"role": "user", "content": "Say hello"}], {"max_tokens": 6, "temperature": 0}
        )
        resp = await p.chat(request)
        assert resp["object"] == "chat.completion" and resp["model"] == TINY
        assert resp["usage"]["completion_tokens"] <= 6
        chunks = await collect(p.chat_stream(request))
        assert chunks[-1]["usage"]["completion_tokens"] == resp["usage"]["completion_tokens"]
        streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert streamed == resp["choices"][0]["message"]["content"]
        assert TINY in await p.list_models()
        assert await p.health() is True
    finally:
        await p.aclose()
