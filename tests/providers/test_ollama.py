"""OllamaProvider: core requests <-> Ollama's native API against a loopback server speaking it."""

from __future__ import annotations

from typing import Any

import pytest

from llmhost.core.types import ChatMessage, ContentPart, EmbedRequest, ResponseFormat, TokenLogprob
from llmhost.errors import RequestError
from llmhost.providers.base import Provider, ProviderHTTPError, ProviderStreamError
from llmhost.providers.ollama import OllamaProvider
from tests.conftest import LiveServer
from tests.providers.conftest import (
    MakeProvider,
    chat,
    check_provider,
    check_stream_shape,
    collect,
    completion,
    system,
    text_of,
    user,
)
from tests.providers.wire_servers import recorded

pytestmark = pytest.mark.anyio

MODEL = "llama3.2:1b"
HELLO = (system("be brief"), user("hello there"))
WIRE_HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture
def ollama(ollama_upstream: LiveServer, make_provider: MakeProvider) -> OllamaProvider:
    return make_provider(OllamaProvider, "ollama", ollama_upstream.base_url)


def sent(upstream: LiveServer) -> dict[str, Any]:
    body: dict[str, Any] = recorded(upstream)[-1]["body"]
    return body


async def test_it_keeps_the_provider_protocol(ollama: OllamaProvider) -> None:
    """Its methods have the protocol's shape and work when called through a ``Provider``."""
    provider: Provider = ollama
    await check_provider(provider, chat(MODEL, *HELLO))


async def test_sampling_fields_go_into_options(ollama: OllamaProvider, ollama_upstream: LiveServer) -> None:
    request = chat(
        MODEL,
        *HELLO,
        temperature=0.1,
        top_p=0.8,
        top_k=20,
        min_p=0.05,
        seed=3,
        repeat_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        max_tokens=64,
        stop=("zzz",),
        logit_bias={1: 1.0},
    )
    result = await ollama.answer(request)
    assert sent(ollama_upstream) == {
        "model": MODEL,
        "messages": WIRE_HELLO,
        "stream": False,
        "options": {
            "temperature": 0.1,
            "top_p": 0.8,
            "top_k": 20,
            "min_p": 0.05,
            "seed": 3,
            "repeat_penalty": 1.1,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
            "num_predict": 64,
            "stop": ["zzz"],
        },  # logit_bias has no Ollama option: dropped
    }
    assert result.model == MODEL and result.text == "echo: hello there"
    assert result.choices[0].finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (4, 3)


async def test_an_unset_request_sends_no_options(ollama: OllamaProvider, ollama_upstream: LiveServer) -> None:
    await ollama.answer(chat(MODEL, *HELLO))
    assert sent(ollama_upstream) == {"model": MODEL, "messages": WIRE_HELLO, "stream": False}


async def test_done_reason_length_and_stop_strings(ollama: OllamaProvider) -> None:
    result = await ollama.answer(chat(MODEL, *HELLO, max_tokens=2))
    assert result.text == "echo: hello" and result.choices[0].finish_reason == "length"
    result = await ollama.answer(chat(MODEL, *HELLO, stop=("there",)))
    assert result.text == "echo: hello"  # cut before the stop string
    assert result.choices[0].finish_reason == "stop"


async def test_response_format_becomes_format(ollama: OllamaProvider, ollama_upstream: LiveServer) -> None:
    await ollama.answer(chat(MODEL, *HELLO, response_format=ResponseFormat("json")))
    assert sent(ollama_upstream)["format"] == "json"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    await ollama.answer(chat(MODEL, *HELLO, response_format=ResponseFormat("json_schema", schema)))
    assert sent(ollama_upstream)["format"] == schema


async def test_logprobs_are_asked_for_and_come_back_per_token(
    ollama: OllamaProvider, ollama_upstream: LiveServer
) -> None:
    result = await ollama.answer(chat(MODEL, user("hi"), logprobs=2))
    assert (sent(ollama_upstream)["logprobs"], sent(ollama_upstream)["top_logprobs"]) == (True, 2)
    assert result.choices[0].logprobs == [
        TokenLogprob(b"echo:", -0.5, ((b"echo:", -0.5), (b" x", -2.0))),
        TokenLogprob(b" hi", -0.5, ((b" hi", -0.5), (b" x", -2.0))),
    ]
    deltas = await collect(ollama.stream(chat(MODEL, user("hi"), logprobs=0)))
    assert "top_logprobs" not in sent(ollama_upstream)
    assert [lp.token for d in deltas for lp in d.logprobs] == [b"echo:", b" hi"]


async def test_an_ndjson_stream_becomes_deltas_with_usage_last(
    ollama: OllamaProvider, ollama_upstream: LiveServer
) -> None:
    deltas = await collect(ollama.stream(chat(MODEL, *HELLO, max_tokens=2)))
    assert sent(ollama_upstream)["stream"] is True
    check_stream_shape(deltas)
    assert text_of(deltas) == "echo: hello"
    assert deltas[-2].finish_reason == "length"
    assert deltas[-1].usage is not None
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (4, 2)


async def test_completions_use_generate_in_raw_mode(
    ollama: OllamaProvider, ollama_upstream: LiveServer
) -> None:
    result = await ollama.answer(completion(MODEL, "The sky is", max_tokens=8))
    assert recorded(ollama_upstream)[-1]["path"] == "/api/generate"
    assert sent(ollama_upstream) == {
        "model": MODEL,
        "prompt": "The sky is",
        "stream": False,
        "raw": True,
        "options": {"num_predict": 8},
    }
    assert result.text == "echo: The sky is" and result.usage.prompt_tokens == 3
    deltas = await collect(ollama.stream(completion(MODEL, "The sky is")))
    check_stream_shape(deltas)
    assert text_of(deltas) == "echo: The sky is"
    assert deltas[-2].finish_reason == "stop"
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 4


async def test_an_echoed_completion_starts_with_its_prompt(ollama: OllamaProvider) -> None:
    assert (await ollama.answer(completion(MODEL, "sky", echo=True))).text == "skyecho: sky"
    deltas = await collect(ollama.stream(completion(MODEL, "sky", echo=True)))
    assert text_of(deltas) == "skyecho: sky"


async def test_inline_images_go_to_images_and_urls_are_refused(
    ollama: OllamaProvider, ollama_upstream: LiveServer
) -> None:
    image = ContentPart("image", "image/png", data=b"\x89PNG")
    await ollama.answer(chat(MODEL, ChatMessage("user", "what is this?", (image,))))
    assert sent(ollama_upstream)["messages"] == [
        {"role": "user", "content": "what is this?", "images": ["iVBORw=="]}
    ]
    with pytest.raises(RequestError, match="inline"):
        await ollama.answer(
            chat(MODEL, ChatMessage("user", "x", (ContentPart("image", url="https://x.test/a"),)))
        )


async def test_embeddings_come_back_as_vectors_with_usage(
    ollama: OllamaProvider, ollama_upstream: LiveServer
) -> None:
    result = await ollama.embed(EmbedRequest(MODEL, ("hello world", "x"), dimensions=4))
    # truncate false unless asked: Ollama cuts long inputs by default, OpenAI's dialect refuses them.
    expected = {"model": MODEL, "input": ["hello world", "x"], "dimensions": 4, "truncate": False}
    assert sent(ollama_upstream) == expected
    await ollama.embed(EmbedRequest(MODEL, ("hello",), truncate=True))
    assert sent(ollama_upstream)["truncate"] is True
    assert len(result.vectors) == 2 and len(result.vectors[0]) == 4
    assert result.usage.prompt_tokens == 3 and result.model == MODEL
    with pytest.raises(RequestError, match="token ids"):
        await ollama.embed(EmbedRequest(MODEL, ((1, 2),)))


async def test_n_above_one_and_token_id_prompts_are_refused_before_any_request(
    ollama: OllamaProvider, ollama_upstream: LiveServer
) -> None:
    before = len(recorded(ollama_upstream))
    with pytest.raises(RequestError) as info:
        await ollama.answer(chat(MODEL, *HELLO, n=2))
    assert info.value.param == "n"
    with pytest.raises(RequestError):
        await collect(ollama.stream(chat(MODEL, *HELLO, n=2)))
    with pytest.raises(RequestError, match="token ids"):
        await ollama.answer(completion(MODEL, (1, 2)))
    assert len(recorded(ollama_upstream)) == before


async def test_it_does_not_count_tokens(ollama: OllamaProvider) -> None:
    with pytest.raises(RequestError, match="does not count tokens"):
        await ollama.count_tokens(chat(MODEL, *HELLO))


async def test_list_models_and_health(ollama: OllamaProvider) -> None:
    assert await ollama.list_models() == ["llama3.2:1b", "qwen2.5:0.5b"]
    assert await ollama.health() is True


async def test_an_unknown_model_is_a_non_retryable_404_with_ollamas_message(ollama: OllamaProvider) -> None:
    with pytest.raises(ProviderHTTPError) as info:
        await ollama.answer(chat("nope:1b", *HELLO))
    assert info.value.status == 404 and not info.value.retryable
    assert 'model "nope:1b" not found' in str(info.value)


async def test_an_error_line_mid_stream_is_a_stream_error_after_the_text_so_far(
    ollama: OllamaProvider,
) -> None:
    got = []
    with pytest.raises(ProviderStreamError, match="error was encountered"):
        async for delta in ollama.stream(chat("error-midstream", *HELLO)):
            got.append(delta)
    assert text_of(got) == "echo: hello"
