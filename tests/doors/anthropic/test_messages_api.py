"""The Anthropic Messages API, spoken to by the official ``anthropic`` client over real loopback HTTP.

The tiny random-weight model answers gibberish, so assertions are about shapes, counts and control: at
temperature 0 its answer is fixed, which makes ``max_tokens`` and ``stop_sequences`` deterministic, and
tool calls are forced by the local provider's grammar when ``tool_choice`` is ``any`` or ``tool``.
(This SDK has no ``temperature`` argument any more, so it travels in ``extra_body``.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import anthropic
import httpx
import pytest

from tests.conftest import TINY, LiveServer, make_service, make_settings
from tests.doors.anthropic.claude_code import HEADERS, PATH, claude_code_body, count_tokens_body
from tests.doors.anthropic.conftest import messages_app

GREEDY: Any = {"temperature": 0}
HI: Any = [{"role": "user", "content": "Say hello"}]
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a town.",
    "input_schema": {
        "type": "object",
        "properties": {"town": {"type": "string", "maxLength": 12}},
        "required": ["town"],
        "additionalProperties": False,
    },
}
TIME: Any = {
    "name": "get_time",
    "input_schema": {"type": "object", "properties": {"zone": {"type": "integer"}}, "required": ["zone"]},
}


def create(client: anthropic.Anthropic, **kw: Any) -> Any:
    args: dict[str, Any] = {"model": TINY, "max_tokens": 8, "messages": HI, "extra_body": GREEDY}
    args.update(kw)
    return client.messages.create(**args)


def tool_uses(message: Any) -> list[Any]:
    return [b for b in message.content if b.type == "tool_use"]


# ----- messages ----------------------------------------------------------------------------------------
def test_a_message_has_a_text_block_usage_and_a_msg_id(client: anthropic.Anthropic) -> None:
    message = create(client, max_tokens=6)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == TINY
    [block] = message.content
    assert block.type == "text" and block.text
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert message.usage.output_tokens == 6
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 0


def test_the_answer_says_who_answered_and_its_request_id(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model=TINY, max_tokens=2, messages=HI)
    assert raw.headers["x-llmhost-target"].endswith(f"/{TINY}")
    assert raw.request_id and raw.request_id.startswith("req")


def test_a_system_prompt_in_blocks_with_cache_control_is_accepted(client: anthropic.Anthropic) -> None:
    system: Any = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    plain = create(client, system="Be brief.")
    blocks = create(client, system=system)
    assert blocks.content[0].text == plain.content[0].text
    assert blocks.usage.input_tokens + (blocks.usage.cache_read_input_tokens or 0) == (
        plain.usage.input_tokens + (plain.usage.cache_read_input_tokens or 0)
    )


def test_stop_sequences_end_the_answer_with_stop_sequence(client: anthropic.Anthropic) -> None:
    whole = create(client, max_tokens=16).content[0].text
    cut = next(i for i, ch in enumerate(whole) if i > 0 and ch.isascii() and ch.isprintable())
    message = create(client, max_tokens=16, stop_sequences=[whole[cut]])
    assert message.content[0].text == whole[:cut]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", whole[cut])


def test_max_tokens_zero_reads_the_prompt_into_the_cache_and_answers_nothing(
    client: anthropic.Anthropic,
) -> None:
    system = "You are a terse assistant. " * 12  # a prefix long enough to fill a cache block
    cached = create(client, max_tokens=0, system=system)
    assert cached.content == [] and cached.stop_reason == "max_tokens" and cached.stop_sequence is None
    assert cached.usage.output_tokens == 0
    assert cached.usage.input_tokens + (cached.usage.cache_read_input_tokens or 0) > 0
    assert cached._request_id and cached._request_id.startswith("req")
    after = create(client, max_tokens=2, system=system)
    assert (after.usage.cache_read_input_tokens or 0) > 0


def test_max_tokens_zero_cannot_be_streamed(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as failed:
        create(client, max_tokens=0, stream=True)
    assert "max_tokens: 0" in failed.value.message


def test_sampling_parameters_are_accepted(client: anthropic.Anthropic) -> None:
    message = create(
        client,
        max_tokens=4,
        metadata={"user_id": "user-7"},
        thinking={"type": "disabled"},
        extra_body={"temperature": 0.7, "top_p": 0.9, "top_k": 20},
    )
    assert 1 <= message.usage.output_tokens <= 4


# ----- streams -----------------------------------------------------------------------------------------
def test_a_streamed_message_matches_the_whole_one(client: anthropic.Anthropic) -> None:
    whole = create(client, max_tokens=12)
    with client.messages.stream(model=TINY, max_tokens=12, messages=HI, extra_body=GREEDY) as stream:
        kinds = [event.type for event in stream]
        message: Any = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds[-2] == "message_delta" and "content_block_start" in kinds and "text" in kinds
    assert message.content[0].text == whole.content[0].text
    assert message.id.startswith("msg_") and message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 12
    streamed_in = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    assert streamed_in == whole.usage.input_tokens + (whole.usage.cache_read_input_tokens or 0)


def test_message_start_tells_the_prompt_tokens_before_the_answer(client: anthropic.Anthropic) -> None:
    with create(client, max_tokens=3, stream=True) as events:
        start = next(iter(events))
    whole = create(client, max_tokens=3)
    assert start.type == "message_start"
    told = start.message.usage.input_tokens + (start.message.usage.cache_read_input_tokens or 0)
    assert told == whole.usage.input_tokens + (whole.usage.cache_read_input_tokens or 0) > 0


def test_the_text_stream_helper_yields_the_text(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=TINY, max_tokens=5, messages=HI, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        assert text == stream.get_final_text()


def test_create_with_stream_true_sends_raw_events(client: anthropic.Anthropic) -> None:
    events = list(create(client, max_tokens=3, stream=True))
    assert [e.type for e in events][:2] == ["message_start", "content_block_start"]
    assert events[-2].type == "message_delta" and events[-2].delta.stop_reason == "max_tokens"
    assert events[-2].usage.output_tokens == 3


# ----- tools -------------------------------------------------------------------------------------------
def test_tool_choice_any_produces_a_tool_use_block_whose_input_parses(client: anthropic.Anthropic) -> None:
    message = create(
        client,
        max_tokens=200,
        tools=[WEATHER, TIME],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    [call] = tool_uses(message)
    assert call.id.startswith("toolu_") and call.name in {"get_weather", "get_time"}
    assert set(call.input) == ({"town"} if call.name == "get_weather" else {"zone"})
    assert message.stop_reason == "tool_use"


def test_a_named_tool_choice_calls_that_tool(client: anthropic.Anthropic) -> None:
    message = create(
        client,
        max_tokens=200,
        tools=[WEATHER, TIME],
        tool_choice={"type": "tool", "name": "get_time", "disable_parallel_tool_use": True},
    )
    [call] = tool_uses(message)
    assert call.name == "get_time" and isinstance(call.input["zone"], int)
    assert message.stop_reason == "tool_use"


def test_a_streamed_tool_call_arrives_as_input_json_deltas(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=TINY,
        max_tokens=200,
        messages=HI,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        extra_body=GREEDY,
    ) as stream:
        pieces = [event.partial_json for event in stream if event.type == "input_json"]
        message = stream.get_final_message()
    [call] = tool_uses(message)
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert json.loads("".join(pieces)) == call.input and isinstance(call.input["town"], str)
    assert message.stop_reason == "tool_use"


def test_a_tool_result_round_trip_continues_the_conversation(client: anthropic.Anthropic) -> None:
    first = create(client, max_tokens=200, tools=[WEATHER], tool_choice={"type": "any"})
    [call, *_] = tool_uses(first)
    answer: Any = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}],
    }
    second = create(client, max_tokens=6, tools=[WEATHER], messages=[*HI, first.to_param(), answer])
    assert second.content[0].type == "text" and second.stop_reason in {"max_tokens", "end_turn"}
    assert second.usage.input_tokens + (second.usage.cache_read_input_tokens or 0) > (
        first.usage.input_tokens + (first.usage.cache_read_input_tokens or 0)
    )


def test_a_tool_result_marked_is_error_reaches_the_prompt(client: anthropic.Anthropic) -> None:
    def counted(is_error: bool) -> int:
        call: Any = {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}],
        }
        result: Any = {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "no such town", "is_error": is_error}
            ],
        }
        answer = client.messages.count_tokens(model=TINY, messages=[*HI, call, result], tools=[WEATHER])
        return answer.input_tokens

    assert counted(True) > counted(False)  # "Error: " in front of the result (the tiny model: a token a byte)


# ----- count_tokens ------------------------------------------------------------------------------------
def test_count_tokens_counts_what_a_message_would_take_in(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=TINY, messages=HI, system="Be brief.")
    assert counted._request_id and counted._request_id.startswith("req")
    message = create(client, max_tokens=1, system="Be brief.")
    assert counted.input_tokens == message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    with_tools = client.messages.count_tokens(model=TINY, messages=HI, system="Be brief.", tools=[WEATHER])
    assert with_tools.input_tokens > counted.input_tokens


# ----- the context window ------------------------------------------------------------------------------
@pytest.fixture
def small_context(tmp_path: Path, tiny_model_path: Path) -> Iterator[anthropic.Anthropic]:
    settings = make_settings(tmp_path / "small", engine={"n_ctx": 256})
    service = make_service(settings, tiny_model_path)
    live = LiveServer(messages_app(settings, service)).start()
    yield anthropic.Anthropic(base_url=live.base_url, api_key="unused", max_retries=0)
    live.stop()
    service.close()


def test_max_tokens_beyond_the_context_runs_until_the_context_is_full(
    small_context: anthropic.Anthropic,
) -> None:
    """Claude Code asks for 32,000 tokens whatever the model: that is a ceiling, not an error."""
    message = create(small_context, max_tokens=2000)
    assert message.stop_reason == "model_context_window_exceeded"
    assert (
        message.usage.input_tokens
        + (message.usage.cache_read_input_tokens or 0)
        + message.usage.output_tokens
        == 256
    )
    with small_context.messages.stream(
        model=TINY, max_tokens=32000, messages=HI, extra_body=GREEDY
    ) as stream:
        assert stream.get_final_message().stop_reason == "model_context_window_exceeded"


def test_a_prompt_longer_than_the_context_is_invalid_request_error(
    small_context: anthropic.Anthropic,
) -> None:
    with pytest.raises(anthropic.BadRequestError) as failed:
        create(small_context, messages=[{"role": "user", "content": "x" * 400}])
    assert failed.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    # Anthropic's words, which Claude Code reads to compact the conversation.
    message = failed.value.body["error"]["message"]  # type: ignore[index]
    assert re.fullmatch(r"prompt is too long: \d+ tokens > 255 maximum", message), message


# ----- the Threads beta ----------------------------------------------------------------------------------
def test_a_thread_is_refused_in_the_error_the_sdk_recovers_from(server: LiveServer) -> None:
    body = {"model": TINY, "max_tokens": 4, "messages": HI, "thread": {"type": "create"}}
    resp = post(server, body)
    assert resp.status_code == 400 and resp.headers["request-id"]
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and "thread" in error["message"]
    assert error["details"] == {"error_code": "thread_unsupported_request"}


def test_the_sdk_tool_runner_keeps_the_whole_conversation(client: anthropic.Anthropic) -> None:
    # Its threaded turns are refused; it then sends every turn whole (system, tools and history).
    from anthropic import beta_tool

    calls: list[str] = []

    @beta_tool
    def get_weather(city: Literal["Paris", "Rome"]) -> str:  # an enum: the random model's call is short
        """The weather in a city.

        Args:
            city: the city
        """
        calls.append(city)
        return "sunny"

    runner = client.beta.messages.tool_runner(
        model=TINY,
        max_tokens=400,
        max_iterations=2,
        tools=[get_weather],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        extra_body=GREEDY,
    )
    replies = list(runner)
    assert len(replies) == 2 and len(calls) == 2  # the second turn still had the tools to call


# ----- errors ------------------------------------------------------------------------------------------
def post(server: LiveServer, body: Any, path: str = "/v1/messages", **kw: Any) -> httpx.Response:
    headers = {"anthropic-version": "2023-06-01", **kw.pop("headers", {})}
    return httpx.post(f"{server.base_url}{path}", json=body, headers=headers, **kw)


def envelope(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"type", "error", "request_id"} and body["type"] == "error"
    assert body["request_id"] == response.headers["request-id"]
    assert set(body["error"]) == {"type", "message"}
    error: dict[str, Any] = body["error"]
    return error


def test_a_missing_max_tokens_is_invalid_request_error(server: LiveServer) -> None:
    response = post(server, {"model": TINY, "messages": HI})
    assert response.status_code == 400
    error = envelope(response)
    assert error["type"] == "invalid_request_error" and "max_tokens" in error["message"]


def test_an_unknown_model_is_not_found_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as failed:
        create(client, model="claude-nonexistent")
    assert failed.value.status_code == 404
    assert failed.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": failed.value.body["error"]["message"]},  # type: ignore[index]
        "request_id": failed.value.request_id,
    }
    assert "claude-nonexistent" in failed.value.message
    assert failed.value.request_id and failed.value.request_id.startswith("req")


def test_an_unknown_model_is_not_found_error_for_streams_too(client: anthropic.Anthropic) -> None:
    with (
        pytest.raises(anthropic.NotFoundError),
        client.messages.stream(model="nope", max_tokens=4, messages=HI),
    ):
        pass


@pytest.mark.parametrize(
    "body",
    [
        {"model": TINY, "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
        {"model": TINY, "max_tokens": 4, "messages": []},
        {"model": TINY, "max_tokens": 4, "messages": HI, "temperature": 3},
        {"model": TINY, "max_tokens": -1, "messages": HI},
        {
            "model": TINY,
            "max_tokens": 4,
            "messages": HI,
            "tools": [{"type": "bash_20250124", "name": "bash"}],
        },
        {"model": TINY, "max_tokens": 4, "messages": [*HI, {"role": "assistant", "content": "Sure,"}]},
    ],
    ids=["unknown-block", "no-messages", "temperature", "negative-max-tokens", "server-tool", "prefill"],
)
def test_bad_requests_are_invalid_request_error(server: LiveServer, body: Any) -> None:
    response = post(server, body)
    assert response.status_code == 400, response.text
    assert envelope(response)["type"] == "invalid_request_error"


def test_a_body_that_is_not_json_is_invalid_request_error(server: LiveServer) -> None:
    response = httpx.post(f"{server.base_url}/v1/messages", content=b"{not json")
    assert response.status_code == 400 and envelope(response)["type"] == "invalid_request_error"


def test_the_api_key_is_taken_from_x_api_key_or_a_bearer_token(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data", api_key="s3cret")
    service = make_service(settings, tiny_model_path)
    live = LiveServer(messages_app(settings, service)).start()
    try:
        wrong = anthropic.Anthropic(base_url=live.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as failed:
            create(wrong, max_tokens=1)
        assert failed.value.status_code == 401
        assert failed.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        assert failed.value.request_id and failed.value.request_id.startswith("req")
        with pytest.raises(anthropic.AuthenticationError):
            wrong.messages.count_tokens(model=TINY, messages=HI)
        # Anthropic's envelope wherever an Anthropic client goes: its models list, a path llmhost lacks.
        with pytest.raises(anthropic.AuthenticationError) as failed:
            wrong.models.list()
        assert failed.value.body["type"] == "error" and failed.value.request_id  # type: ignore[index]
        missing = httpx.get(
            f"{live.base_url}/v1/files", headers={"anthropic-version": "2023-06-01", "x-api-key": "s3cret"}
        )
        assert missing.status_code == 404 and envelope(missing)["type"] == "not_found_error"
        openai_style = httpx.get(f"{live.base_url}/v1/files", headers={"Authorization": "Bearer s3cret"})
        assert set(openai_style.json()) == {"error"}  # without the header: OpenAI's, as before
        by_key = anthropic.Anthropic(base_url=live.base_url, api_key="s3cret", max_retries=0)
        assert create(by_key, max_tokens=1).usage.output_tokens == 1
        by_token = anthropic.Anthropic(base_url=live.base_url, auth_token="s3cret", max_retries=0)
        assert create(by_token, max_tokens=1).usage.output_tokens == 1
    finally:
        live.stop()
        service.close()


# ----- Claude Code -------------------------------------------------------------------------------------
def test_a_claude_code_request_streams_and_counts(server: LiveServer) -> None:
    headers = {**HEADERS, "x-api-key": "unused"}
    with httpx.stream(
        "POST", f"{server.base_url}{PATH}", json=claude_code_body(TINY), headers=headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        kinds = [line.removeprefix("event: ") for line in response.iter_lines() if line.startswith("event: ")]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"] and kinds[-2:] == [
        "message_delta",
        "message_stop",
    ]
    counted = post(
        server, count_tokens_body(TINY), path="/v1/messages/count_tokens?beta=true", headers=headers
    )
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
