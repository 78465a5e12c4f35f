"""Tool calls through every remote provider: offered tools, calls in answers and streams, tool results in
the history, and each dialect's own wire shapes for them (see ``wire_servers`` for how the loopback
servers decide to call a tool)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from llmhost.core.types import ChatMessage, ContentPart, InferenceRequest, Tool, ToolCall, ToolChoice
from llmhost.errors import RequestError
from llmhost.providers.anthropic import AnthropicProvider, anthropic_sse_deltas, to_messages_request
from llmhost.providers.base import Provider, ProviderHTTPError
from llmhost.providers.ollama import OllamaProvider, ollama_deltas
from llmhost.providers.openai_compat import OpenAICompatProvider, openai_sse_deltas
from tests.conftest import LiveServer
from tests.providers.conftest import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    MakeProvider,
    assembled,
    chat,
    check_stream_shape,
    collect,
    text_of,
    user,
)
from tests.providers.wire_servers import recorded

pytestmark = pytest.mark.anyio

WEATHER = Tool(
    "weather", "The weather in a city", {"type": "object", "properties": {"text": {"type": "string"}}}
)
CLOCK = Tool("clock", "", {"type": "object", "properties": {}})
TOOLS = (WEATHER, CLOCK)
ASKED = "what is the weather in Paris"
CALLED = ChatMessage("assistant", "", tool_calls=(ToolCall("call_1", "weather", '{"city": "Paris"}'),))
ANSWERED = ChatMessage("tool", "sunny, 21 C", tool_call_id="call_1")


@dataclass
class Dialect:
    provider: Provider
    upstream: LiveServer
    model: str

    def sent(self) -> dict[str, Any]:
        body: dict[str, Any] = recorded(self.upstream)[-1]["body"]
        return body

    def ask(self, *messages: ChatMessage, **fields: Any) -> InferenceRequest:
        return chat(self.model, *messages, **{"tools": TOOLS, **fields})


@pytest.fixture(params=["openai", "anthropic", "ollama"])
def dialect(request: pytest.FixtureRequest, make_provider: MakeProvider) -> Dialect:
    upstream: LiveServer = request.getfixturevalue(f"{request.param}_upstream")
    provider: Any
    if request.param == "openai":
        provider = make_provider(
            OpenAICompatProvider, "openai", f"{upstream.base_url}/v1", api_key=OPENAI_KEY
        )
        model = "echo-1"
    elif request.param == "anthropic":
        provider = make_provider(AnthropicProvider, "claude", upstream.base_url, api_key=ANTHROPIC_KEY)
        model = "claude-echo-1"
    else:
        provider, model = make_provider(OllamaProvider, "ollama", upstream.base_url), "llama3.2:1b"
    return Dialect(provider, upstream, model)


# -- what every dialect does ---------------------------------------------------------------------------


async def test_a_tool_call_comes_back_with_json_arguments_and_the_tool_calls_finish(dialect: Dialect) -> None:
    result = await dialect.provider.answer(dialect.ask(user(ASKED)))
    (choice,) = result.choices
    assert choice.finish_reason == "tool_calls" and choice.text == ""
    (call,) = choice.tool_calls
    assert call.name == "weather" and call.id
    assert json.loads(call.arguments) == {"text": ASKED}


async def test_a_streamed_tool_call_assembles_into_the_same_call(dialect: Dialect) -> None:
    deltas = await collect(dialect.provider.stream(dialect.ask(user(ASKED))))
    check_stream_shape(deltas)
    first = next(d.tool_calls[0] for d in deltas if d.tool_calls)
    assert first.index == 0 and first.id and first.name == "weather"  # the first fragment names the call
    (choice,) = assembled(deltas).choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == (first.id, "weather", {"text": ASKED})


async def test_parallel_calls_get_their_own_indices_unless_parallel_calls_are_off(dialect: Dialect) -> None:
    both = "weather and clock please"
    deltas = await collect(dialect.provider.stream(dialect.ask(user(both))))
    calls = assembled(deltas).choices[0].tool_calls
    assert [c.name for c in calls] == ["weather", "clock"] and calls[0].id != calls[1].id
    if isinstance(dialect.provider, OllamaProvider):
        return  # Ollama has no such switch
    result = await dialect.provider.answer(dialect.ask(user(both), parallel_tool_calls=False))
    assert [c.name for c in result.choices[0].tool_calls] == ["weather"]


async def test_tool_results_in_the_history_reach_the_model(dialect: Dialect) -> None:
    request = dialect.ask(user(ASKED), CALLED, ANSWERED)
    result = await dialect.provider.answer(request)
    assert result.text == "echo: sunny, 21 C" and result.choices[0].finish_reason == "stop"
    deltas = await collect(dialect.provider.stream(request))
    assert text_of(deltas) == "echo: sunny, 21 C"


async def test_without_a_mentioned_tool_the_answer_is_text(dialect: Dialect) -> None:
    result = await dialect.provider.answer(dialect.ask(user("hello")))
    assert result.text == "echo: hello" and result.choices[0].tool_calls == []


async def test_tool_choice_none_gets_text(dialect: Dialect) -> None:
    result = await dialect.provider.answer(dialect.ask(user(ASKED), tool_choice=ToolChoice("none")))
    assert result.text == f"echo: {ASKED}" and result.choices[0].tool_calls == []


# -- OpenAI's wire shapes ------------------------------------------------------------------------------


@pytest.fixture
def openai(openai_upstream: LiveServer, make_provider: MakeProvider) -> Dialect:
    url = f"{openai_upstream.base_url}/v1"
    provider = make_provider(OpenAICompatProvider, "openai", url, api_key=OPENAI_KEY)
    return Dialect(provider, openai_upstream, "echo-1")


async def test_openai_gets_function_tools_and_each_tool_choice(openai: Dialect) -> None:
    await openai.provider.answer(openai.ask(user(ASKED)))
    assert openai.sent()["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "parameters": WEATHER.parameters,
                "description": WEATHER.description,
            },
        },
        {
            "type": "function",
            "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}},
        },
    ]
    assert "tool_choice" not in openai.sent() and "parallel_tool_calls" not in openai.sent()  # the defaults
    choices = {
        ToolChoice("required"): "required",
        ToolChoice("none"): "none",
        ToolChoice("tool", "clock"): {"type": "function", "function": {"name": "clock"}},
    }
    for choice, wire in choices.items():
        result = await openai.provider.answer(
            openai.ask(user("hi"), tool_choice=choice, parallel_tool_calls=False)
        )
        assert (openai.sent()["tool_choice"], openai.sent()["parallel_tool_calls"]) == (wire, False)
    assert [c.name for c in result.choices[0].tool_calls] == ["clock"]  # the forced one


async def test_openai_history_carries_assistant_tool_calls_and_tool_messages(openai: Dialect) -> None:
    await openai.provider.answer(openai.ask(user(ASKED), CALLED, ANSWERED))
    assert openai.sent()["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_1"},
    ]


async def test_openai_refuses_a_tool_result_that_answers_no_call(openai: Dialect) -> None:
    with pytest.raises(ProviderHTTPError, match="must be a response to a preceeding message") as info:
        await openai.provider.answer(openai.ask(user(ASKED), ANSWERED))
    assert info.value.status == 400 and not info.value.retryable


async def test_openai_stream_fragments_of_two_calls_are_kept_apart() -> None:
    def chunk(calls: list[dict[str, Any]], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": {"tool_calls": calls} if calls else {}, "finish_reason": finish}
        return "data: " + json.dumps({"choices": [choice]}) + "\n"

    events = [
        chunk([{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]),
        chunk([{"index": 1, "id": "b", "function": {"name": "g", "arguments": '{"y"'}}]),
        chunk([{"index": 0, "function": {"arguments": '{"x": 1}'}}]),
        chunk([{"index": 1, "function": {"arguments": ": 2}"}}]),
        chunk([], "stop"),  # some servers finish a calling turn with "stop"
        "data: [DONE]\n",
    ]

    async def lines() -> AsyncIterator[str]:
        for event in events:
            for line in event.split("\n"):
                yield line

    deltas = await collect(openai_sse_deltas(lines()))
    (choice,) = assembled(deltas).choices
    assert choice.tool_calls == [ToolCall("a", "f", '{"x": 1}'), ToolCall("b", "g", '{"y": 2}')]
    assert choice.finish_reason == "tool_calls"


# -- Anthropic's wire shapes ---------------------------------------------------------------------------


@pytest.fixture
def claude(anthropic_upstream: LiveServer, make_provider: MakeProvider) -> Dialect:
    provider = make_provider(AnthropicProvider, "claude", anthropic_upstream.base_url, api_key=ANTHROPIC_KEY)
    return Dialect(provider, anthropic_upstream, "claude-echo-1")


async def test_anthropic_gets_input_schemas_and_its_own_tool_choices(claude: Dialect) -> None:
    await claude.provider.answer(claude.ask(user(ASKED)))
    assert claude.sent()["tools"] == [
        {"name": "weather", "input_schema": WEATHER.parameters, "description": WEATHER.description},
        {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in claude.sent()  # auto is the default
    cases = [
        (ToolChoice("required"), True, {"type": "any"}),
        (ToolChoice("tool", "clock"), True, {"type": "tool", "name": "clock"}),
        (ToolChoice("none"), True, {"type": "none"}),
        (ToolChoice("auto"), False, {"type": "auto", "disable_parallel_tool_use": True}),
        (ToolChoice("required"), False, {"type": "any", "disable_parallel_tool_use": True}),
    ]
    for choice, parallel, wire in cases:
        await claude.provider.answer(claude.ask(user("hi"), tool_choice=choice, parallel_tool_calls=parallel))
        assert claude.sent()["tool_choice"] == wire


async def test_anthropic_history_has_tool_use_blocks_and_tool_results_first_in_a_user_turn(
    claude: Dialect,
) -> None:
    await claude.provider.answer(claude.ask(user(ASKED), CALLED, ANSWERED, user("and tomorrow?")))
    assert claude.sent()["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny, 21 C"},
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
    ]


def test_anthropic_tool_results_with_images_are_blocks_and_an_empty_one_has_no_content() -> None:
    chart = ContentPart("image", "image/png", data=b"\x89PNG")
    two_calls = ChatMessage(
        "assistant", "", tool_calls=(ToolCall("a", "weather", "{}"), ToolCall("b", "clock", ""))
    )
    request = chat(
        "claude-echo-1",
        user(ASKED),
        two_calls,
        ChatMessage("tool", "see chart", (chart,), tool_call_id="a"),
        ChatMessage("tool", "", tool_call_id="b"),
        tools=TOOLS,
    )
    body = to_messages_request(request)
    assert body["messages"][1]["content"][1]["input"] == {}  # empty arguments: an empty object
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "a",
                "content": [
                    {"type": "text", "text": "see chart"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw=="},
                    },
                ],
            },
            {"type": "tool_result", "tool_use_id": "b"},
        ],
    }


async def test_anthropic_refuses_arguments_that_are_not_a_json_object_before_any_request(
    claude: Dialect,
) -> None:
    before = len(recorded(claude.upstream))
    for arguments in ("{not json", "[1, 2]"):
        bad = ChatMessage("assistant", "", tool_calls=(ToolCall("c", "weather", arguments),))
        with pytest.raises(RequestError, match="messages\\[1\\]") as info:
            await claude.provider.answer(claude.ask(user(ASKED), bad, ANSWERED))
        assert info.value.param == "messages"
    assert len(recorded(claude.upstream)) == before


async def test_anthropic_upstream_refuses_a_tool_result_that_answers_no_call(claude: Dialect) -> None:
    with pytest.raises(ProviderHTTPError, match="tool_use_id") as info:
        await claude.provider.answer(claude.ask(user(ASKED), ANSWERED))
    assert info.value.status == 400


async def test_anthropic_count_tokens_counts_the_tools_too(claude: Dialect) -> None:
    plain = await claude.provider.count_tokens(chat(claude.model, user(ASKED)))
    assert await claude.provider.count_tokens(claude.ask(user(ASKED))) == plain + 20
    assert "tools" in claude.sent() and "max_tokens" not in claude.sent()


async def test_anthropic_decoder_streams_input_json_and_gives_an_argumentless_call_braces() -> None:
    def event(kind: str, **data: Any) -> list[str]:
        return [f"event: {kind}", "data: " + json.dumps({"type": kind, **data}), ""]

    stream = [
        *event("message_start", message={"id": "m", "usage": {"input_tokens": 3}}),
        *event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        *event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Let me look."}),
        *event("content_block_stop", index=0),
        *event(
            "content_block_start",
            index=1,
            content_block={"type": "tool_use", "id": "t1", "name": "f", "input": {}},
        ),
        *event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": ""}),
        *event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '{"a":'}),
        *event("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": " 1}"}),
        *event("content_block_stop", index=1),
        *event(
            "content_block_start",
            index=2,
            content_block={"type": "tool_use", "id": "t2", "name": "g", "input": {}},
        ),
        *event("content_block_stop", index=2),
        *event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 9}),
        *event("message_stop"),
    ]

    async def lines() -> AsyncIterator[str]:
        for line in stream:
            yield line

    deltas = await collect(anthropic_sse_deltas(lines()))
    check_stream_shape(deltas)
    (choice,) = assembled(deltas).choices
    assert choice.text == "Let me look." and choice.finish_reason == "tool_calls"
    assert choice.tool_calls == [ToolCall("t1", "f", '{"a": 1}'), ToolCall("t2", "g", "{}")]


# -- Ollama's wire shapes ------------------------------------------------------------------------------


@pytest.fixture
def ollama(ollama_upstream: LiveServer, make_provider: MakeProvider) -> Dialect:
    provider = make_provider(OllamaProvider, "ollama", ollama_upstream.base_url)
    return Dialect(provider, ollama_upstream, "llama3.2:1b")


async def test_ollama_gets_function_tools_and_history_with_object_arguments(ollama: Dialect) -> None:
    await ollama.provider.answer(ollama.ask(user(ASKED), CALLED, ANSWERED))
    body = ollama.sent()
    assert [t["function"]["name"] for t in body["tools"]] == ["weather", "clock"]
    assert body["tools"][0] == {
        "type": "function",
        "function": {"name": "weather", "description": WEATHER.description, "parameters": WEATHER.parameters},
    }
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_1", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}}
            ],
        },
        # the tool's name, which Ollama wants, is looked up from the call the result answers
        {"role": "tool", "content": "sunny, 21 C", "tool_name": "weather", "tool_call_id": "call_1"},
    ]


async def test_ollama_leaves_the_tools_out_for_tool_choice_none_and_refuses_forcing_a_call(
    ollama: Dialect,
) -> None:
    await ollama.provider.answer(ollama.ask(user(ASKED), tool_choice=ToolChoice("none")))
    assert "tools" not in ollama.sent()
    before = len(recorded(ollama.upstream))
    for choice in (ToolChoice("required"), ToolChoice("tool", "clock")):
        with pytest.raises(RequestError, match="cannot force") as info:
            await ollama.provider.answer(ollama.ask(user(ASKED), tool_choice=choice))
        assert info.value.param == "tool_choice"
    assert len(recorded(ollama.upstream)) == before


async def test_ollama_calls_without_ids_get_distinct_ones(ollama: Dialect) -> None:
    """Ollama releases before call ids existed: the provider names each call itself."""
    request = chat("old-llama", user("weather and clock"), tools=TOOLS)
    calls = (await ollama.provider.answer(request)).choices[0].tool_calls
    assert [c.name for c in calls] == ["weather", "clock"]
    assert calls[0].id and calls[1].id and calls[0].id != calls[1].id
    streamed = assembled(await collect(ollama.provider.stream(request))).choices[0].tool_calls
    assert [c.name for c in streamed] == ["weather", "clock"] and streamed[0].id != streamed[1].id


async def test_ollama_decoder_sends_each_call_whole_and_numbers_calls_across_lines() -> None:
    def line(message: dict[str, Any], done: bool = False) -> str:
        return json.dumps(
            {"model": "m", "message": {"role": "assistant", "content": "", **message}, "done": done}
        )

    call = {"function": {"index": 0, "name": "f", "arguments": {"x": 1}}}

    async def lines() -> AsyncIterator[str]:
        yield line({"tool_calls": [{"id": "a", **call}]})
        yield line({"tool_calls": [{"id": "b", **call}]})
        yield line({}, done=True)

    deltas = await collect(ollama_deltas(lines()))
    check_stream_shape(deltas)
    assert [tc.index for d in deltas for tc in d.tool_calls] == [0, 1]
    (choice,) = assembled(deltas).choices
    assert choice.tool_calls == [ToolCall("a", "f", '{"x": 1}'), ToolCall("b", "f", '{"x": 1}')]
    assert choice.finish_reason == "tool_calls"  # Ollama says "stop"
