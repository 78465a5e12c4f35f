"""OpenAICompatProvider against a loopback OpenAI-compatible upstream and against a real llmhost server."""

from __future__ import annotations

import pytest

from llmhost.core.types import (
    ChatMessage,
    ContentPart,
    EmbedRequest,
    InferenceRequest,
    ResponseFormat,
    Sampling,
    TokenLogprob,
)
from llmhost.errors import RequestError
from llmhost.providers.base import Provider, ProviderHTTPError
from llmhost.providers.openai_compat import OpenAICompatProvider, chat_body, completion_body
from tests.conftest import TINY, LiveServer
from tests.providers.conftest import (
    OPENAI_KEY,
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

HELLO = (system("be brief"), user("hello there"))
WIRE_HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture
def provider(openai_upstream: LiveServer, make_provider: MakeProvider) -> OpenAICompatProvider:
    return make_provider(OpenAICompatProvider, "remote", f"{openai_upstream.base_url}/v1", api_key=OPENAI_KEY)


def sent(upstream: LiveServer) -> dict[str, object]:
    body: dict[str, object] = recorded(upstream)[-1]["body"]
    return body


async def test_it_keeps_the_provider_protocol(provider: OpenAICompatProvider) -> None:
    """Its methods have the protocol's shape and work when called through a ``Provider``."""
    assert provider.name == "remote"
    protocol: Provider = provider
    await check_provider(protocol, chat("echo-1", *HELLO))


async def test_answer_sends_only_the_fields_that_are_set_and_translates_the_reply(
    provider: OpenAICompatProvider, openai_upstream: LiveServer
) -> None:
    result = await provider.answer(chat("echo-1", *HELLO, temperature=0.2, stop=("zzz",), seed=7))
    assert recorded(openai_upstream)[-1]["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent(openai_upstream) == {
        "model": "echo-1",
        "messages": WIRE_HELLO,
        "temperature": 0.2,
        "stop": ["zzz"],
        "seed": 7,
    }
    assert result.model == "echo-1" and result.id == "chatcmpl-test"
    assert result.text == "echo: hello there"
    (choice,) = result.choices
    assert (choice.finish_reason, choice.stop_sequence, choice.tool_calls) == ("stop", None, [])
    assert choice.logprobs is None  # not asked for
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (4, 3)
    assert result.usage.cached_tokens == 2  # prompt_tokens_details.cached_tokens: "be brief"


async def test_every_sampling_field_that_is_set_reaches_the_upstream(
    provider: OpenAICompatProvider, openai_upstream: LiveServer
) -> None:
    request = chat(
        "echo-1",
        *HELLO,
        max_tokens=9,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        repeat_penalty=1.1,
        seed=3,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={15: -100.0},
        ignore_eos=True,
        user="u-42",
        response_format=ResponseFormat("json"),
    )
    await provider.answer(request)
    body = sent(openai_upstream)
    assert {k: v for k, v in body.items() if k not in ("model", "messages")} == {
        "max_tokens": 9,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "seed": 3,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"15": -100.0},
        "ignore_eos": True,
        "user": "u-42",
        "response_format": {"type": "json_object"},
    }
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    await provider.answer(
        chat("echo-1", *HELLO, response_format=ResponseFormat("json_schema", schema, "thing"))
    )
    assert sent(openai_upstream)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema},
    }


async def test_the_chat_limit_field_can_be_max_completion_tokens(
    openai_upstream: LiveServer, make_provider: MakeProvider
) -> None:
    p = make_provider(
        OpenAICompatProvider,
        "o",
        f"{openai_upstream.base_url}/v1",
        api_key=OPENAI_KEY,
        max_tokens_field="max_completion_tokens",
    )
    result = await p.answer(chat("echo-1", *HELLO, max_tokens=2))
    assert sent(openai_upstream)["max_completion_tokens"] == 2 and "max_tokens" not in sent(openai_upstream)
    assert result.choices[0].finish_reason == "length"


async def test_a_stream_asks_for_usage_and_yields_text_then_finish_then_usage(
    provider: OpenAICompatProvider, openai_upstream: LiveServer
) -> None:
    deltas = await collect(provider.stream(chat("echo-1", *HELLO, max_tokens=2)))
    body = sent(openai_upstream)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    check_stream_shape(deltas)  # the role-only chunk yields nothing
    assert text_of(deltas) == "echo: hello"
    assert deltas[-2].finish_reason == "length"
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 2


async def test_the_matched_stop_string_is_reported_when_the_server_names_it(
    provider: OpenAICompatProvider,
) -> None:
    """vLLM's ``stop_reason``; OpenAI itself does not say which stop string ended a choice."""
    request = chat("echo-1", user("one two three"), stop=("three", "nine"))
    result = await provider.answer(request)
    assert result.text == "echo: one two" and result.choices[0].stop_sequence == "three"
    deltas = await collect(provider.stream(request))
    assert deltas[-2].finish_reason == "stop" and deltas[-2].stop_sequence == "three"


async def test_n_choices_are_answered_and_streamed_side_by_side(
    provider: OpenAICompatProvider, openai_upstream: LiveServer
) -> None:
    result = await provider.answer(chat("echo-1", user("a b"), n=2))
    assert sent(openai_upstream)["n"] == 2
    assert [c.index for c in result.choices] == [0, 1]
    assert {c.text for c in result.choices} == {"echo: a b"}
    deltas = await collect(provider.stream(chat("echo-1", user("a b"), n=2)))
    check_stream_shape(deltas, choices=2)
    assert text_of(deltas, 0) == text_of(deltas, 1) == "echo: a b"
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 6


async def test_chat_logprobs_ask_for_top_logprobs_and_come_back_per_token(
    provider: OpenAICompatProvider, openai_upstream: LiveServer
) -> None:
    result = await provider.answer(chat("echo-1", user("hi"), logprobs=2))
    body = sent(openai_upstream)
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and len(logprobs) == 2
    assert logprobs[1] == TokenLogprob(b" hi", -0.5, ((b" hi", -0.5), (b" x", -2.0)))
    deltas = await collect(provider.stream(chat("echo-1", user("hi"), logprobs=0)))
    streamed = [lp for d in deltas for lp in d.logprobs]
    assert [lp.token for lp in streamed] == [b"echo:", b" hi"] and all(lp.top == () for lp in streamed)


async def test_completions_plain_streamed_with_echo_and_logprobs(
    provider: OpenAICompatProvider, openai_upstream: LiveServer
) -> None:
    result = await provider.answer(completion("echo-1", "once upon", max_tokens=16))
    assert recorded(openai_upstream)[-1]["path"] == "/v1/completions"
    assert sent(openai_upstream) == {"model": "echo-1", "prompt": "once upon", "max_tokens": 16}
    assert result.text == "echo: once upon" and result.choices[0].finish_reason == "stop"
    deltas = await collect(provider.stream(completion("echo-1", "once upon")))
    check_stream_shape(deltas)
    assert text_of(deltas) == "echo: once upon"
    assert deltas[-1].usage is not None and deltas[-1].usage.total_tokens == 5

    result = await provider.answer(completion("echo-1", "once", echo=True, logprobs=1))
    assert (sent(openai_upstream)["echo"], sent(openai_upstream)["logprobs"]) == (True, 1)
    assert result.text == "onceecho: once"
    assert result.choices[0].logprobs == [
        TokenLogprob(b"echo:", -0.5, ((b"echo:", -0.5),)),
        TokenLogprob(b" once", -0.5, ((b" once", -0.5),)),
    ]


async def test_token_id_prompts_are_sent_as_a_list(
    provider: OpenAICompatProvider, openai_upstream: LiveServer
) -> None:
    await provider.answer(completion("echo-1", (1, 2, 3)))
    assert sent(openai_upstream)["prompt"] == [1, 2, 3]


async def test_images_become_image_url_parts(
    provider: OpenAICompatProvider, openai_upstream: LiveServer
) -> None:
    parts = (
        ContentPart("image", "image/png", data=b"\x89PNG"),
        ContentPart("image", url="https://x.test/c.jpg"),
    )
    await provider.answer(chat("echo-1", ChatMessage("user", "what is this?", parts)))
    assert sent(openai_upstream)["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}},
                {"type": "image_url", "image_url": {"url": "https://x.test/c.jpg"}},
            ],
        }
    ]


async def test_embeddings_ask_for_floats_and_come_back_in_input_order(
    provider: OpenAICompatProvider, openai_upstream: LiveServer
) -> None:
    result = await provider.embed(EmbedRequest("echo-1", ("a b", "c", (5, 6)), dimensions=4, user="u"))
    assert sent(openai_upstream) == {
        "model": "echo-1",
        "input": ["a b", "c", [5, 6]],
        "encoding_format": "float",
        "dimensions": 4,
        "user": "u",
    }
    assert len(result.vectors) == 3 and result.vectors[0] != result.vectors[1]  # sorted by "index"
    assert result.vectors[0][2] > 0  # "a b" has a space; the upstream answered it last
    assert result.usage.prompt_tokens == 5 and result.model == "echo-1"


async def test_it_does_not_count_tokens(provider: OpenAICompatProvider) -> None:
    with pytest.raises(RequestError, match="does not count tokens") as info:
        await provider.count_tokens(chat("echo-1", *HELLO))
    assert info.value.param == "model"


async def test_list_models_and_health(provider: OpenAICompatProvider) -> None:
    assert await provider.list_models() == ["echo-1"]
    assert await provider.health() is True


async def test_a_wrong_key_is_a_non_retryable_401_with_the_upstream_message(
    openai_upstream: LiveServer, make_provider: MakeProvider
) -> None:
    p = make_provider(
        OpenAICompatProvider, "remote", f"{openai_upstream.base_url}/v1", api_key="sk-wrong-key-000000"
    )
    with pytest.raises(ProviderHTTPError) as info:
        await p.answer(chat("echo-1", *HELLO))
    assert info.value.status == 401 and info.value.retryable is False
    assert "Incorrect API key provided" in str(info.value)
    assert await p.health() is False


async def test_extra_headers_reach_the_upstream(
    openai_upstream: LiveServer, make_provider: MakeProvider
) -> None:
    p = make_provider(
        OpenAICompatProvider,
        "remote",
        f"{openai_upstream.base_url}/v1",
        api_key=OPENAI_KEY,
        extra_headers={"x-tenant": "blue"},
    )
    await p.answer(chat("echo-1", *HELLO))
    assert recorded(openai_upstream)[-1]["headers"]["x-tenant"] == "blue"


# The provider's added latency over a direct call to the same upstream is measured by
# bench/bench_latency.py: a wall-clock bound has no place in a unit test on a shared machine.


# -- a real llmhost server as the upstream ------------------------------------------------------------


async def test_another_llmhost_serves_chat_and_streams_through_the_provider(
    server: LiveServer, make_provider: MakeProvider
) -> None:
    p = make_provider(
        OpenAICompatProvider, "peer", f"{server.base_url}/v1", health_path=f"{server.base_url}/health"
    )
    request = chat(TINY, user("Say hello"), max_tokens=6, temperature=0.0, seed=1)
    result = await p.answer(request)
    assert result.model == TINY and result.choices[0].finish_reason in ("stop", "length")
    assert 0 < result.usage.completion_tokens <= 6
    deltas = await collect(p.stream(request))
    check_stream_shape(deltas)
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == result.usage.completion_tokens
    assert text_of(deltas) == result.text
    assert TINY in await p.list_models()
    assert await p.health() is True


def test_a_prediction_goes_upstream_on_chat_only() -> None:
    sampling = Sampling(prediction="def f():\n    return 1\n")
    chat = InferenceRequest("chat", "m", messages=(ChatMessage("user", "hi"),), sampling=sampling)
    assert chat_body(chat)["prediction"] == {"type": "content", "content": "def f():\n    return 1\n"}
    assert "prediction" not in chat_body(InferenceRequest("chat", "m", messages=(ChatMessage("user", "hi"),)))
    assert "prediction" not in completion_body(
        InferenceRequest("completion", "m", prompt="x", sampling=sampling)
    )
