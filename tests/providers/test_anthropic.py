"""AnthropicProvider: core requests <-> Messages API round trips against a loopback Messages API server."""

from __future__ import annotations

from typing import Any

import pytest

from llmhost.core.types import ChatMessage, ContentPart, EmbedRequest, ResponseFormat
from llmhost.errors import RequestError
from llmhost.providers.anthropic import AnthropicProvider, to_messages_request
from llmhost.providers.base import Provider, ProviderHTTPError, ProviderStreamError
from tests.conftest import LiveServer
from tests.providers.conftest import (
    ANTHROPIC_KEY,
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

MODEL = "claude-echo-1"


@pytest.fixture
def claude(anthropic_upstream: LiveServer, make_provider: MakeProvider) -> AnthropicProvider:
    return make_provider(AnthropicProvider, "claude", anthropic_upstream.base_url, api_key=ANTHROPIC_KEY)


def sent(upstream: LiveServer) -> dict[str, Any]:
    body: dict[str, Any] = recorded(upstream)[-1]["body"]
    return body


async def test_it_keeps_the_provider_protocol(claude: AnthropicProvider) -> None:
    """Its methods have the protocol's shape and work when called through a ``Provider``."""
    provider: Provider = claude
    await check_provider(provider, chat(MODEL, user("hi there")))


async def test_a_round_trip_sends_the_documented_headers_and_translates_the_answer(
    claude: AnthropicProvider, anthropic_upstream: LiveServer
) -> None:
    result = await claude.answer(chat(MODEL, user("hi there")))
    headers = recorded(anthropic_upstream)[-1]["headers"]
    assert headers["x-api-key"] == ANTHROPIC_KEY and headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers
    assert sent(anthropic_upstream) == {
        "model": MODEL,
        "max_tokens": 4096,  # Anthropic requires it; callers may leave it unset
        "messages": [{"role": "user", "content": "hi there"}],
    }
    assert result.id.startswith("msg_") and result.model == MODEL
    assert result.text == "echo: hi there"
    assert (result.choices[0].finish_reason, result.choices[0].stop_sequence) == ("stop", None)  # end_turn
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.cached_tokens) == (
        2,
        3,
        0,
    )


async def test_system_messages_move_to_the_top_level_system_field(
    claude: AnthropicProvider, anthropic_upstream: LiveServer
) -> None:
    request = chat(
        MODEL, system("You are terse."), user("first"), system("Answer in English."), user("second")
    )
    result = await claude.answer(request)
    body = sent(anthropic_upstream)
    assert body["system"] == "You are terse.\n\nAnswer in English."
    # the two user turns, now adjacent, are merged into one (the API wants roles to alternate)
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]}
    ]
    assert result.text == "echo: first second"
    # the server reports the system prompt as read from its cache: prompt tokens include it
    assert (result.usage.prompt_tokens, result.usage.cached_tokens) == (8, 6)


async def test_sampling_fields_map_and_a_stop_sequence_is_reported_by_name(
    claude: AnthropicProvider, anthropic_upstream: LiveServer
) -> None:
    request = chat(
        MODEL,
        user("hi there"),
        max_tokens=50,
        temperature=0.3,
        top_p=0.9,
        top_k=5,
        stop=("there",),
        seed=1,
        presence_penalty=0.5,
        logit_bias={1: 2.0},
        user="u-42",
    )
    result = await claude.answer(request)
    assert sent(anthropic_upstream) == {
        "model": MODEL,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi there"}],
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 5,
        "stop_sequences": ["there"],
        "metadata": {"user_id": "u-42"},
    }  # seed, penalties and logit_bias have no Messages API field: dropped
    assert result.text == "echo: hi"  # cut before the stop sequence
    assert (result.choices[0].finish_reason, result.choices[0].stop_sequence) == ("stop", "there")


async def test_max_tokens_stop_reason_becomes_length(claude: AnthropicProvider) -> None:
    result = await claude.answer(chat(MODEL, user("a b c d"), max_tokens=2))
    assert result.text == "echo: a" and result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 2


async def test_a_stream_becomes_text_deltas_a_finish_and_the_usage(claude: AnthropicProvider) -> None:
    deltas = await collect(claude.stream(chat(MODEL, system("s"), user("one two"))))
    check_stream_shape(deltas)  # message_start, ping and content_block_stop yield nothing
    assert text_of(deltas) == "echo: one two"
    assert deltas[-2].finish_reason == "stop"
    assert deltas[-1].usage is not None
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (3, 3)


async def test_a_streamed_stop_sequence_and_length_finish(claude: AnthropicProvider) -> None:
    deltas = await collect(claude.stream(chat(MODEL, user("a b c d"), stop=("d",))))
    assert (text_of(deltas), deltas[-2].finish_reason, deltas[-2].stop_sequence) == (
        "echo: a b c",
        "stop",
        "d",
    )
    deltas = await collect(claude.stream(chat(MODEL, user("a b c d"), max_tokens=3)))
    assert (text_of(deltas), deltas[-2].finish_reason, deltas[-2].stop_sequence) == (
        "echo: a b",
        "length",
        None,
    )
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 3


async def test_an_error_event_mid_stream_is_a_stream_error_after_the_text_so_far(
    claude: AnthropicProvider,
) -> None:
    got = []
    with pytest.raises(ProviderStreamError, match="Overloaded"):
        async for delta in claude.stream(chat("claude-error-midstream", user("a b"))):
            got.append(delta)
    assert text_of(got) == "echo: a"


async def test_overloaded_529_is_retryable(claude: AnthropicProvider) -> None:
    with pytest.raises(ProviderHTTPError) as info:
        await claude.answer(chat("claude-overloaded", user("x")))
    assert info.value.status == 529 and info.value.retryable
    assert "Overloaded" in str(info.value)
    assert info.value.body is not None and info.value.body["error"]["type"] == "overloaded_error"


async def test_a_wrong_key_is_a_non_retryable_401(
    anthropic_upstream: LiveServer, make_provider: MakeProvider
) -> None:
    p = make_provider(AnthropicProvider, "claude", anthropic_upstream.base_url, api_key="sk-ant-wrong-000000")
    with pytest.raises(ProviderHTTPError) as info:
        await p.answer(chat(MODEL, user("x")))
    assert info.value.status == 401 and not info.value.retryable
    assert "invalid x-api-key" in str(info.value)
    assert await p.health() is False


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": 1}, "logprobs"),
        ({"response_format": ResponseFormat("json")}, "response_format"),
    ],
)
async def test_what_the_messages_api_cannot_do_is_refused_before_any_request(
    claude: AnthropicProvider, anthropic_upstream: LiveServer, fields: dict[str, Any], param: str
) -> None:
    before = len(recorded(anthropic_upstream))
    request = chat(MODEL, user("x"), **fields)
    with pytest.raises(RequestError) as info:
        await claude.answer(request)
    assert info.value.param == param
    with pytest.raises(RequestError):
        await collect(claude.stream(request))
    assert len(recorded(anthropic_upstream)) == before


async def test_a_json_schema_response_format_becomes_output_config(
    claude: AnthropicProvider, anthropic_upstream: LiveServer
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}
    await claude.answer(chat(MODEL, user("x"), response_format=ResponseFormat("json_schema", schema)))
    assert sent(anthropic_upstream)["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


async def test_embeddings_are_refused(claude: AnthropicProvider) -> None:
    with pytest.raises(RequestError, match="no embeddings API"):
        await claude.embed(EmbedRequest(MODEL, ("x",)))


async def test_count_tokens_asks_the_count_tokens_endpoint_with_the_countable_fields(
    claude: AnthropicProvider, anthropic_upstream: LiveServer
) -> None:
    count = await claude.count_tokens(chat(MODEL, system("be brief"), user("hello there"), max_tokens=9))
    assert recorded(anthropic_upstream)[-1]["path"] == "/v1/messages/count_tokens"
    assert sent(anthropic_upstream) == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello there"}],
        "system": "be brief",
    }  # no max_tokens: the endpoint refuses fields it does not count
    assert count == 4


async def test_completions_become_a_single_user_message(
    claude: AnthropicProvider, anthropic_upstream: LiveServer
) -> None:
    result = await claude.answer(completion(MODEL, "tell me", max_tokens=10))
    assert sent(anthropic_upstream)["messages"] == [{"role": "user", "content": "tell me"}]
    assert result.text == "echo: tell me" and result.choices[0].finish_reason == "stop"
    deltas = await collect(claude.stream(completion(MODEL, "tell me")))
    check_stream_shape(deltas)
    assert text_of(deltas) == "echo: tell me"
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 3


async def test_an_echoed_completion_starts_with_its_prompt(claude: AnthropicProvider) -> None:
    result = await claude.answer(completion(MODEL, "tell me", echo=True))
    assert result.text == "tell meecho: tell me"
    deltas = await collect(claude.stream(completion(MODEL, "tell me", echo=True)))
    assert deltas[0].text == "tell me" and text_of(deltas) == "tell meecho: tell me"


async def test_token_id_prompts_are_refused(claude: AnthropicProvider) -> None:
    with pytest.raises(RequestError, match="token ids") as info:
        await claude.answer(completion(MODEL, (1, 2, 3)))
    assert info.value.param == "prompt"


async def test_list_models_follows_pages_and_health_is_true(claude: AnthropicProvider) -> None:
    assert await claude.list_models() == ["claude-echo-1", "claude-echo-2", "claude-echo-3"]
    assert await claude.health() is True


async def test_images_reach_the_upstream_as_image_blocks(
    claude: AnthropicProvider, anthropic_upstream: LiveServer
) -> None:
    parts = (
        ContentPart("image", "image/png", data=b"\x89PNG"),
        ContentPart("image", url="https://x.test/c.jpg"),
    )
    request = chat(
        MODEL, user("plain"), ChatMessage("assistant", "ok"), ChatMessage("user", "what is this?", parts)
    )
    result = await claude.answer(request)
    assert sent(anthropic_upstream)["messages"] == [
        {"role": "user", "content": "plain"},  # a single text stays a plain string
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw=="},
                },
                {"type": "image", "source": {"type": "url", "url": "https://x.test/c.jpg"}},
            ],
        },
    ]
    assert result.text == "echo: what is this?"


def test_images_in_a_system_message_are_refused() -> None:
    request = chat(
        MODEL, ChatMessage("system", "s", (ContentPart("image", url="https://x.test/a.png"),)), user("x")
    )
    with pytest.raises(RequestError, match="system messages take text only"):
        to_messages_request(request)
