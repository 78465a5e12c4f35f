"""The Responses streaming events, from hand-made delta sequences: order, numbering, indices, and that
the official SDK's event types read every event."""

from __future__ import annotations

import asyncio
import json
import typing
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from openai.types.responses import ResponseStreamEvent

from llmhost.core.types import Delta, TokenLogprob, ToolCallDelta, Usage
from llmhost.doors.responses import protocol as wire
from llmhost.doors.responses import translate
from llmhost.doors.responses.events import ResponseStream
from llmhost.errors import ProviderStreamError

# The SDK's event model for each event type (its union discriminates with an SDK-only marker).
SDK_EVENTS: dict[str, Any] = {
    typing.get_args(cls.model_fields["type"].annotation)[0]: cls
    for cls in typing.get_args(typing.get_args(ResponseStreamEvent)[0])
}


async def feed(deltas: Iterable[Delta | Exception]) -> AsyncIterator[Delta]:
    for d in deltas:
        if isinstance(d, Exception):
            raise d
        yield d


def frame() -> dict[str, Any]:
    body = wire.ResponseCreateRequest.model_validate({"model": "m", "input": "hi"})
    return translate.response_frame(body, "resp_1", 1700000000)


def run(deltas: Iterable[Delta | Exception], **kw: Any) -> tuple[list[dict[str, Any]], ResponseStream]:
    stream = ResponseStream(frame(), **kw)

    async def collect() -> list[bytes]:
        return [chunk async for chunk in stream.events(feed(deltas))]

    events = []
    for chunk in asyncio.run(collect()):
        text = chunk.decode()
        assert text.endswith("\n\n")
        head, data = text[:-2].split("\n")
        assert head.startswith("event: ") and data.startswith("data: ")
        event = json.loads(data[len("data: ") :])
        assert event["type"] == head[len("event: ") :]
        SDK_EVENTS[event["type"]].model_validate(event)  # the SDK's own event model reads it
        events.append(event)
    return events, stream


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


TEXT = [Delta(0, "Hel"), Delta(0, "lo"), Delta(0, finish_reason="stop"), Delta(-1, usage=Usage(5, 2))]


def test_a_text_answer_streams_the_events_in_openais_order() -> None:
    events, _ = run(TEXT)
    assert types(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_text_events_name_their_item_output_and_content_index() -> None:
    events, _ = run(TEXT)
    added = events[2]
    item_id = added["item"]["id"]
    assert item_id.startswith("msg_") and added["output_index"] == 0
    assert added["item"]["status"] == "in_progress" and added["item"]["content"] == []
    assert events[3]["part"] == {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    for e in events[3:8]:
        assert (e["item_id"], e["output_index"], e["content_index"]) == (item_id, 0, 0)
    assert [e["delta"] for e in events[4:6]] == ["Hel", "lo"]
    assert events[6]["text"] == "Hello" and events[7]["part"]["text"] == "Hello"
    assert events[8]["item"]["status"] == "completed"
    assert events[8]["item"]["content"][0]["text"] == "Hello"


def test_the_created_event_holds_the_frame_and_the_last_the_whole_response() -> None:
    events, stream = run(TEXT)
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    final = events[-1]["response"]
    assert final["id"] == "resp_1" and final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["usage"]["input_tokens"] == 5 and final["usage"]["output_tokens"] == 2
    assert stream.final == final


def test_function_calls_stream_as_their_own_items_after_the_text() -> None:
    events, stream = run(
        [
            Delta(0, "Let me check."),
            Delta(0, tool_calls=(ToolCallDelta(0, "call_a", "get", '{"q":'),)),
            Delta(0, tool_calls=(ToolCallDelta(0, arguments=' "x"}'),)),
            Delta(0, tool_calls=(ToolCallDelta(1, "call_b", "put", "{}"),)),
            Delta(0, finish_reason="tool_calls"),
            Delta(-1, usage=Usage(3, 9)),
        ]
    )
    assert types(events)[2:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",  # each call is done before the next one starts
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    first = events[8]["item"]
    assert events[8]["output_index"] == 1 and first["type"] == "function_call"
    assert first["id"].startswith("fc_") and first["call_id"] == "call_a" and first["name"] == "get"
    assert first["arguments"] == "" and first["status"] == "in_progress"
    assert [e["delta"] for e in events[9:11]] == ['{"q":', ' "x"}']
    assert events[13]["output_index"] == 2
    done = {e["item_id"]: e for e in events if e["type"] == "response.function_call_arguments.done"}
    assert done[first["id"]]["arguments"] == '{"q": "x"}' and done[first["id"]]["name"] == "get"
    final = stream.final
    assert final is not None
    assert [i["type"] for i in final["output"]] == ["message", "function_call", "function_call"]
    assert final["output"][1]["arguments"] == '{"q": "x"}' and final["output"][1]["status"] == "completed"
    assert final["output"][2]["call_id"] == "call_b"


def test_a_call_without_an_id_gets_a_call_id() -> None:
    events, _ = run(
        [Delta(0, tool_calls=(ToolCallDelta(0, None, "f", "{}"),)), Delta(0, finish_reason="tool_calls")]
    )
    assert events[2]["item"]["call_id"].startswith("call_")


def test_the_token_limit_ends_with_response_incomplete() -> None:
    events, _stream = run([Delta(0, "abc"), Delta(0, finish_reason="length"), Delta(-1, usage=Usage(1, 3))])
    assert events[-1]["type"] == "response.incomplete"
    final = events[-1]["response"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


def test_an_empty_answer_still_has_one_empty_message() -> None:
    events, _ = run([Delta(0, finish_reason="stop"), Delta(-1, usage=Usage(1, 0))])
    assert types(events)[2:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == ""


def test_a_stream_that_breaks_ends_with_response_failed_holding_what_was_said() -> None:
    events, _stream = run([Delta(0, "partial"), ProviderStreamError("connection reset", provider="up")])
    assert types(events)[-2:] == ["response.output_text.delta", "response.failed"]
    final = events[-1]["response"]
    assert final["status"] == "failed"
    assert final["error"]["code"] == "server_error" and "connection reset" in final["error"]["message"]
    assert final["output"][0]["content"][0]["text"] == "partial"
    assert final["output"][0]["status"] == "incomplete"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_the_response_is_handed_over_before_the_last_event() -> None:
    seen: list[dict[str, Any]] = []

    async def keep(response: dict[str, Any]) -> None:
        seen.append(response)

    events, _ = run(TEXT, on_done=keep)
    assert seen == [events[-1]["response"]]


def test_a_failure_to_store_fails_the_response() -> None:
    async def broken(response: dict[str, Any]) -> None:
        raise OSError("disk full")

    events, _ = run(TEXT, on_done=broken)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"


def test_logprobs_ride_on_the_text_events() -> None:
    lp = (TokenLogprob(b"a", -0.25, ((b"a", -0.25),)),)
    events, _ = run([Delta(0, "a", logprobs=lp), Delta(0, finish_reason="stop")])
    delta = next(e for e in events if e["type"] == "response.output_text.delta")
    assert delta["logprobs"][0]["token"] == "a" and delta["logprobs"][0]["logprob"] == -0.25
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert done["logprobs"] == delta["logprobs"]


def test_deltas_of_other_choices_are_ignored() -> None:
    _events, stream = run(
        [Delta(0, "a"), Delta(1, "b"), Delta(0, finish_reason="stop"), Delta(1, finish_reason="stop")]
    )
    assert stream.final is not None and stream.final["output"][0]["content"][0]["text"] == "a"


@pytest.mark.parametrize("closing", [True, False])
def test_the_delta_source_is_closed(closing: bool) -> None:
    closed: list[bool] = []

    async def source() -> AsyncIterator[Delta]:
        try:
            yield Delta(0, "x")
            if not closing:
                raise ProviderStreamError("boom")
            yield Delta(0, finish_reason="stop")
        finally:
            closed.append(True)

    stream = ResponseStream(frame())

    async def collect() -> None:
        async for _ in stream.events(source()):
            pass

    asyncio.run(collect())
    assert closed == [True]
