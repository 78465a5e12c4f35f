"""The Messages streaming events, from hand-made delta sequences: their order, their block indices, and
what the official SDK's stream helpers build from them (its own accumulator is the judge)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from llmhost.core.types import Delta, ToolCallDelta, Usage
from llmhost.doors.anthropic.stream import MessageStream
from llmhost.errors import EngineOverloadedError, ProviderStreamError

SDK_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


async def feed(deltas: Iterable[Delta | Exception]) -> AsyncIterator[Delta]:
    for d in deltas:
        if isinstance(d, Exception):
            raise d
        yield d


def encode(deltas: Iterable[Delta | Exception]) -> bytes:
    async def collect() -> list[bytes]:
        return [chunk async for chunk in MessageStream("msg_1", "m").events(feed(deltas))]

    return b"".join(asyncio.run(collect()))


def events_of(raw: bytes) -> list[dict[str, Any]]:
    """Each SSE event's data, checked: ``event:`` names its ``type``, and the SDK's models read it."""
    events = []
    for chunk in raw.decode().split("\n\n")[:-1]:
        head, data = chunk.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        if event["type"] not in ("error", "ping"):  # the SDK's reader skips pings and raises errors
            SDK_EVENT.validate_python(event)
        events.append(event)
    return events


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def sdk_stream(raw: bytes) -> anthropic.MessageStreamManager[Any]:
    """The official client's ``messages.stream`` reading ``raw`` as the server's answer."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    client = anthropic.Anthropic(
        api_key="k", base_url="http://test", http_client=httpx2.Client(transport=httpx2.MockTransport(answer))
    )
    return client.messages.stream(model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}])


USAGE = Delta(-1, usage=Usage(prompt_tokens=12, completion_tokens=3, cached_tokens=4))


def test_a_text_answer_is_one_text_block_between_message_start_and_message_stop() -> None:
    raw = encode([Delta(0, "Hello"), Delta(0, " world"), Delta(0, finish_reason="stop"), USAGE])
    events = events_of(raw)
    assert types(events) == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]["message"]
    assert (start["id"], start["model"], start["content"], start["stop_reason"]) == ("msg_1", "m", [], None)
    assert events[2] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[3]["delta"] == {"type": "text_delta", "text": "Hello"}
    assert events[6]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[6]["usage"]["output_tokens"] == 3


def test_message_start_carries_the_prompt_tokens_when_the_first_delta_knows_them() -> None:
    first = Delta(0, "Hi", usage=Usage(prompt_tokens=12, cached_tokens=4))
    raw = encode([first, Delta(0, finish_reason="stop"), USAGE])
    usage = events_of(raw)[0]["message"]["usage"]
    assert (usage["input_tokens"], usage["cache_read_input_tokens"], usage["output_tokens"]) == (8, 4, 0)
    with sdk_stream(raw) as stream:
        events = list(stream)
        message = stream.get_final_message()
    assert events[0].type == "message_start" and events[0].message.usage.input_tokens == 8
    assert (message.usage.input_tokens, message.usage.output_tokens) == (8, 3)


def test_message_start_has_zero_usage_when_the_prompt_tokens_come_only_at_the_end() -> None:
    usage = events_of(encode([Delta(0, "Hi"), Delta(0, finish_reason="stop"), USAGE]))[0]["message"]["usage"]
    assert usage["input_tokens"] == usage["output_tokens"] == usage["cache_read_input_tokens"] == 0


def test_the_sdk_builds_the_whole_message_and_merges_the_final_usage() -> None:
    raw = encode([Delta(0, "Hello"), Delta(0, " world"), Delta(0, finish_reason="stop"), USAGE])
    with sdk_stream(raw) as stream:
        assert "".join(stream.text_stream) == "Hello world"
        message = stream.get_final_message()
    assert message.id == "msg_1" and message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (8, 3)
    assert message.usage.cache_read_input_tokens == 4


def test_each_tool_call_is_its_own_tool_use_block_fed_by_input_json_deltas() -> None:
    deltas = [
        Delta(0, "Checking."),
        Delta(0, tool_calls=(ToolCallDelta(0, "call_a", "get_weather", '{"town":'),)),
        Delta(0, tool_calls=(ToolCallDelta(0, arguments=' "Oslo"}'),)),
        Delta(0, tool_calls=(ToolCallDelta(1, "call_b", "get_time", ""),)),
        Delta(0, tool_calls=(ToolCallDelta(1, arguments='{"zone": 2}'),)),
        Delta(0, finish_reason="tool_calls"),
        USAGE,
    ]
    events = events_of(encode(deltas))
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [(e["index"], e["content_block"]["type"]) for e in starts] == [
        (0, "text"),
        (1, "tool_use"),
        (2, "tool_use"),
    ]
    assert starts[1]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_call_a",
        "name": "get_weather",
        "input": {},
    }
    pieces = [
        (e["index"], e["delta"]["partial_json"])
        for e in events
        if e.get("delta", {}).get("type") == "input_json_delta"
    ]
    assert pieces == [(1, '{"town":'), (1, ' "Oslo"}'), (2, '{"zone": 2}')]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert stops == [0, 1, 2]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"

    with sdk_stream(encode(deltas)) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[1].input == {"town": "Oslo"}  # type: ignore[union-attr]
    assert message.content[2].input == {"zone": 2}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


def test_text_after_a_tool_call_opens_a_new_text_block() -> None:
    deltas = [
        Delta(0, tool_calls=(ToolCallDelta(0, "c", "f", "{}"),)),
        Delta(0, "after"),
        Delta(0, finish_reason="stop"),
    ]
    starts = [e for e in events_of(encode(deltas)) if e["type"] == "content_block_start"]
    assert [e["content_block"]["type"] for e in starts] == ["tool_use", "text"]


def test_a_stop_sequence_is_named_in_message_delta() -> None:
    events = events_of(encode([Delta(0, "ab"), Delta(0, finish_reason="stop", stop_sequence="END"), USAGE]))
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_the_token_limit_is_max_tokens() -> None:
    events = events_of(encode([Delta(0, "ab"), Delta(0, finish_reason="length"), USAGE]))
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"


def test_the_token_limit_is_the_context_window_when_max_tokens_was_cut_to_it() -> None:
    async def collect() -> list[bytes]:
        deltas = feed([Delta(0, "ab"), Delta(0, finish_reason="length"), USAGE])
        return [chunk async for chunk in MessageStream("msg_1", "m", context_full=True).events(deltas)]

    events = events_of(b"".join(asyncio.run(collect())))
    assert events[-2]["delta"]["stop_reason"] == "model_context_window_exceeded"


def test_an_empty_answer_is_still_one_empty_text_block() -> None:
    events = events_of(encode([Delta(0, finish_reason="stop"), USAGE]))
    assert types(events) == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    with sdk_stream(encode([Delta(0, finish_reason="stop"), USAGE])) as stream:
        assert stream.get_final_text() == ""


def test_a_failure_mid_stream_is_an_error_event_the_sdk_raises() -> None:
    raw = encode([Delta(0, "Hel"), ProviderStreamError("connection reset", provider="up")])
    events = events_of(raw)
    assert types(events) == ["message_start", "ping", "content_block_start", "content_block_delta", "error"]
    assert events[-1]["error"]["type"] == "api_error" and "connection reset" in events[-1]["error"]["message"]
    with sdk_stream(raw) as stream, pytest.raises(anthropic.APIStatusError) as failed:
        stream.get_final_message()
    assert failed.value.body == events[-1]


def test_an_overloaded_engine_mid_stream_is_overloaded_error() -> None:
    events = events_of(encode([EngineOverloadedError("queue full")]))
    assert types(events) == ["message_start", "ping", "error"]
    assert events[-1] == {"type": "error", "error": {"type": "overloaded_error", "message": "queue full"}}


def test_the_deltas_are_closed_when_the_client_goes_away() -> None:
    closed = []

    async def deltas() -> AsyncIterator[Delta]:
        try:
            while True:
                yield Delta(0, "x")
        finally:
            closed.append(True)

    async def read_two_and_leave() -> None:
        events = MessageStream("msg_1", "m").events(deltas())
        await anext(events)
        await anext(events)
        await events.aclose()

    asyncio.run(read_two_and_leave())
    assert closed == [True]
