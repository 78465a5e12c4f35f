"""OllamaProvider: OpenAI requests <-> Ollama's native API against a loopback server speaking it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmhost.providers.base import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    Provider,
    ProviderHTTPError,
    ProviderStreamError,
)
from llmhost.providers.ollama import OllamaProvider
from tests.conftest import LiveServer
from tests.providers.wire_servers import recorded

pytestmark = pytest.mark.anyio

MODEL = "llama3.2:1b"
HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture
async def ollama(ollama_upstream: LiveServer) -> AsyncIterator[OllamaProvider]:
    p = OllamaProvider("ollama", ollama_upstream.base_url)
    yield p
    await p.aclose()


async def test_it_implements_the_provider_protocol(ollama: OllamaProvider) -> None:
    assert isinstance(ollama, Provider)


async def test_chat_maps_sampling_fields_into_options(
    ollama: OllamaProvider, ollama_upstream: LiveServer
) -> None:
    params = {"temperature": 0.1, "top_p": 0.8, "top_k": 20, "seed": 3, "max_tokens": 64, "stop": "zzz"}
    resp = await ollama.chat(ChatRequest(MODEL, HELLO, params))
    body = recorded(ollama_upstream)[-1]["body"]
    assert body["stream"] is False
    assert body["messages"] == HELLO
    assert body["options"] == {
        "temperature": 0.1,
        "top_p": 0.8,
        "top_k": 20,
        "seed": 3,
        "num_predict": 64,
        "stop": ["zzz"],
    }
    assert resp["object"] == "chat.completion" and resp["id"].startswith("chatcmpl-")
    assert resp["choices"][0]["message"] == {"role": "assistant", "content": "echo: hello there"}
    assert resp["choices"][0]["finish_reason"] == "stop"
    assert resp["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


async def test_done_reason_length_and_stop_strings(ollama: OllamaProvider) -> None:
    resp = await ollama.chat(ChatRequest(MODEL, HELLO, {"max_tokens": 2}))
    assert resp["choices"][0]["message"]["content"] == "echo: hello"
    assert resp["choices"][0]["finish_reason"] == "length"
    resp = await ollama.chat(ChatRequest(MODEL, HELLO, {"stop": ["there"]}))
    assert resp["choices"][0]["message"]["content"] == "echo: hello"  # cut before the stop string
    assert resp["choices"][0]["finish_reason"] == "stop"


async def test_response_format_becomes_format(ollama: OllamaProvider, ollama_upstream: LiveServer) -> None:
    await ollama.chat(ChatRequest(MODEL, HELLO, {"response_format": {"type": "json_object"}}))
    assert recorded(ollama_upstream)[-1]["body"]["format"] == "json"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    await ollama.chat(
        ChatRequest(
            MODEL, HELLO, {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
        )
    )
    assert recorded(ollama_upstream)[-1]["body"]["format"] == schema


async def test_ndjson_stream_becomes_openai_chunks_with_usage_last(
    ollama: OllamaProvider, ollama_upstream: LiveServer
) -> None:
    chunks = [c async for c in ollama.chat_stream(ChatRequest(MODEL, HELLO, {"max_tokens": 2}))]
    assert recorded(ollama_upstream)[-1]["body"]["stream"] is True
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: hello"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert len({c["id"] for c in chunks}) == 1


async def test_completions_use_generate_in_raw_mode(
    ollama: OllamaProvider, ollama_upstream: LiveServer
) -> None:
    resp = await ollama.complete(CompletionRequest(MODEL, "The sky is", {"max_tokens": 8}))
    body = recorded(ollama_upstream)[-1]["body"]
    assert recorded(ollama_upstream)[-1]["path"] == "/api/generate"
    assert body["raw"] is True and body["prompt"] == "The sky is" and body["options"] == {"num_predict": 8}
    assert resp["object"] == "text_completion" and resp["choices"][0]["text"] == "echo: The sky is"
    assert resp["usage"]["prompt_tokens"] == 3
    chunks = [c async for c in ollama.complete_stream(CompletionRequest(MODEL, "The sky is"))]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "echo: The sky is"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 4


async def test_embeddings_come_back_in_openai_shape(
    ollama: OllamaProvider, ollama_upstream: LiveServer
) -> None:
    resp = await ollama.embed(EmbeddingRequest(MODEL, ["hello world", "x"]))
    assert recorded(ollama_upstream)[-1]["body"] == {"model": MODEL, "input": ["hello world", "x"]}
    assert resp["object"] == "list" and [d["index"] for d in resp["data"]] == [0, 1]
    assert len(resp["data"][0]["embedding"]) == 4
    assert resp["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


async def test_list_models_and_health(ollama: OllamaProvider) -> None:
    assert await ollama.list_models() == ["llama3.2:1b", "qwen2.5:0.5b"]
    assert await ollama.health() is True


async def test_an_unknown_model_is_a_non_retryable_404_with_ollamas_message(ollama: OllamaProvider) -> None:
    with pytest.raises(ProviderHTTPError) as info:
        await ollama.chat(ChatRequest("nope:1b", HELLO))
    assert info.value.status == 404 and not info.value.retryable
    assert 'model "nope:1b" not found' in str(info.value)


async def test_an_error_line_mid_stream_is_a_stream_error_after_the_text_so_far(
    ollama: OllamaProvider,
) -> None:
    got: list[dict[str, Any]] = []
    with pytest.raises(ProviderStreamError, match="error was encountered"):
        async for chunk in ollama.chat_stream(ChatRequest("error-midstream", HELLO)):
            got.append(chunk)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in got) == "echo: hello"


async def test_tool_use_is_refused_up_front(ollama: OllamaProvider) -> None:
    with pytest.raises(ProviderHTTPError) as info:
        await ollama.chat(ChatRequest(MODEL, HELLO, {"tools": [{"type": "function"}]}))
    assert info.value.status == 400 and not info.value.retryable
