"""OpenAI's Responses API, spoken to by the official ``openai`` client over real loopback HTTP.

The tiny random-weight model answers gibberish and rarely stops on its own, so assertions are about
shapes, counts and control: ``max_output_tokens`` ends an answer (status ``incomplete``), a JSON schema
of numbers and booleans makes it end by itself (status ``completed``), and tool calls are forced by the
local provider's grammar when ``tool_choice`` asks for one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from llmhost.config import Settings
from tests.conftest import TINY, LiveServer, make_settings

POINT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"x": {"type": "integer"}, "ok": {"type": "boolean"}},
    "required": ["x", "ok"],
    "additionalProperties": False,
}
POINT_FORMAT: Any = {
    "format": {"type": "json_schema", "name": "point", "schema": POINT_SCHEMA, "strict": True}
}
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a town.",
    "parameters": {
        "type": "object",
        "properties": {"town": {"type": "string", "maxLength": 12}},
        "required": ["town"],
        "additionalProperties": False,
    },
}
TIME: Any = {
    "type": "function",
    "name": "get_time",
    "parameters": {"type": "object", "properties": {"zone": {"type": "integer"}}, "required": ["zone"]},
}


class Point(BaseModel):
    x: int
    ok: bool


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A context window that fits a prompt listing tools (the tiny model spends a token per byte)."""
    return make_settings(tmp_path / "data", engine={"n_ctx": 2048})


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def create(client: openai.OpenAI, **kw: Any) -> Any:
    args: dict[str, Any] = {"model": TINY, "input": "Say hello", "max_output_tokens": 8, "temperature": 0}
    args.update(kw)
    return client.responses.create(**args)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


def code_of(exc: openai.APIStatusError) -> Any:
    body: Any = exc.body
    return body["code"]


# ----- creating responses -----------------------------------------------------------------------------
def test_string_input_returns_a_response_object(client: openai.OpenAI) -> None:
    # Greedy: at the default temperature the random-weight model may draw its end token before 8 tokens.
    raw = client.responses.with_raw_response.create(
        model=TINY, input="Say hello", max_output_tokens=8, temperature=0
    )
    assert raw.headers["X-LLMHost-Target"] == f"local/{TINY}"
    resp = raw.parse()
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.model == TINY
    [message] = resp.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    [part] = message.content
    assert part.type == "output_text" and part.annotations == [] and part.text == resp.output_text
    assert resp.usage is not None
    assert resp.usage.output_tokens == 8 and resp.usage.input_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + 8
    assert resp.usage.output_tokens_details.reasoning_tokens == 0
    assert resp.to_dict()["store"] is True and resp.error is None and resp.previous_response_id is None


def test_max_output_tokens_ends_the_answer_as_incomplete(client: openai.OpenAI) -> None:
    resp = create(client, max_output_tokens=3)
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output[0].status == "incomplete"
    assert resp.usage.output_tokens == 3 and resp.max_output_tokens == 3


def test_item_input_with_every_role_and_part_kind(client: openai.OpenAI) -> None:
    resp = create(
        client,
        input=[
            {"role": "developer", "content": "Answer briefly."},
            {"role": "system", "content": [{"type": "input_text", "text": "You are a tester."}]},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Again"}]},
        ],
    )
    assert resp.status == "incomplete" and resp.output_text
    items: Any = client.responses.input_items.list(resp.id, order="asc")
    assert [(i.type, i.role) for i in items.data] == [
        ("message", "developer"),
        ("message", "system"),
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    assert all(i.id.startswith("msg_") for i in items.data)
    assert (
        items.data[0].content[0].type == "input_text" and items.data[0].content[0].text == "Answer briefly."
    )
    assert items.data[3].content[0].type == "output_text"


def test_instructions_are_prompted_and_echoed(client: openai.OpenAI) -> None:
    plain = create(client)
    instructed = create(client, instructions="You are a helpful assistant who answers in French.")
    assert instructed.instructions == "You are a helpful assistant who answers in French."
    assert instructed.usage.input_tokens > plain.usage.input_tokens


def test_request_settings_are_echoed(client: openai.OpenAI) -> None:
    resp = create(
        client,
        temperature=0.3,
        top_p=0.9,
        user="user-7",
        metadata={"ticket": "42"},
        parallel_tool_calls=False,
        reasoning={"effort": "low"},
        include=["reasoning.encrypted_content"],
        truncation="disabled",
    )
    assert (resp.temperature, resp.top_p, resp.user) == (0.3, 0.9, "user-7")
    assert resp.metadata == {"ticket": "42"} and resp.parallel_tool_calls is False
    assert resp.truncation == "disabled" and resp.tool_choice == "auto" and resp.tools == []
    assert resp.text is not None and resp.text.format is not None and resp.text.format.type == "text"


def test_json_schema_format_gives_parseable_json(client: openai.OpenAI) -> None:
    resp = create(client, input="A point, please.", text=POINT_FORMAT, max_output_tokens=100)
    assert resp.status == "completed"
    point = json.loads(resp.output_text)
    assert isinstance(point["x"], int) and isinstance(point["ok"], bool)
    assert resp.text.format.type == "json_schema" and resp.text.format.name == "point"


def test_the_sdks_parse_helper_reads_the_structured_answer(client: openai.OpenAI) -> None:
    resp = client.responses.parse(model=TINY, input="A point.", text_format=Point, max_output_tokens=100)
    assert isinstance(resp.output_parsed, Point)


def test_logprobs_come_with_include(client: openai.OpenAI) -> None:
    resp = create(client, include=["message.output_text.logprobs"], top_logprobs=2, max_output_tokens=4)
    logprobs = resp.output[0].content[0].logprobs
    assert len(logprobs) == 4
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in logprobs)
    assert "".join(lp.token for lp in logprobs) == resp.output_text


def test_an_unknown_include_value_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        create(client, include=["message.output_text.logprobs", "bogus.value"])
    assert err.value.param == "include[1]" and err.value.code == "invalid_value"
    # A reference value for a tool this server has not: nothing to add, as on OpenAI without such items.
    assert create(client, include=["file_search_call.results"], max_output_tokens=2).status == "incomplete"


def test_a_context_overflow_names_input(client: openai.OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            create(client, input="x" * 3000, max_output_tokens=16, stream=stream)
        assert err.value.code == "context_length_exceeded" and err.value.param == "input"


def test_input_tokens_counts_what_create_would_prompt(client: openai.OpenAI) -> None:
    count = client.responses.input_tokens.count(model=TINY, input="Say hello", instructions="Be brief.")
    resp = create(client, instructions="Be brief.")
    assert count.object == "response.input_tokens" and count.input_tokens == resp.usage.input_tokens


# ----- streaming --------------------------------------------------------------------------------------
def test_stream_true_sends_the_events_in_order(client: openai.OpenAI) -> None:
    events = list(create(client, stream=True, max_output_tokens=5))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    final = events[-1].response
    assert "".join(d.delta for d in deltas) == final.output_text
    item_id = events[2].item.id
    assert all(d.item_id == item_id and d.output_index == 0 and d.content_index == 0 for d in deltas)
    assert final.status == "incomplete" and final.usage.output_tokens == 5


def test_a_streamed_response_is_stored_before_it_ends(client: openai.OpenAI) -> None:
    events = list(create(client, stream=True, max_output_tokens=4))
    final = events[-1].response
    stored = client.responses.retrieve(final.id)
    assert stored.model_dump() == final.model_dump()


def test_the_sdks_stream_helper_assembles_the_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=TINY, input="A point.", text_format=Point, max_output_tokens=100
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[-1] == "response.completed" and "response.output_text.delta" in kinds
    assert final.status == "completed" and isinstance(final.output_parsed, Point)


def test_errors_before_the_first_token_keep_their_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        create(client, model="no-such-model", stream=True)
    assert code_of(err.value) == "model_not_found"


# ----- tools ------------------------------------------------------------------------------------------
def function_calls(resp: Any) -> list[Any]:
    return [item for item in resp.output if item.type == "function_call"]


def test_tool_choice_required_produces_function_calls_whose_arguments_parse(client: openai.OpenAI) -> None:
    resp = create(
        client,
        input="Weather in Oslo?",
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,  # a base model would repeat calls until max_output_tokens
        max_output_tokens=160,
    )
    calls = function_calls(resp)
    assert len(calls) == 1, resp.output
    for call in calls:
        assert call.id.startswith("fc_") and call.call_id and call.status == "completed"
        assert call.name in {"get_weather", "get_time"}
        assert isinstance(json.loads(call.arguments), dict)
    assert resp.tool_choice == "required" and [t.name for t in resp.tools] == ["get_weather", "get_time"]
    assert resp.status == "completed"


def test_a_named_tool_choice_calls_that_function(client: openai.OpenAI) -> None:
    resp = create(
        client,
        input="What time is it?",
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "name": "get_time"},
        max_output_tokens=64,
    )
    calls = function_calls(resp)
    assert calls and {c.name for c in calls} == {"get_time"}
    assert isinstance(json.loads(calls[0].arguments)["zone"], int)


def test_streamed_function_calls_send_argument_events(client: openai.OpenAI) -> None:
    events = list(
        create(
            client,
            input="Weather?",
            tools=[WEATHER],
            tool_choice="required",
            max_output_tokens=160,
            stream=True,
        )
    )
    added = [e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    assert added
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [d.item_id for d in done] == [a.item.id for a in added]
    for a, d in zip(added, done, strict=True):
        pieces = [
            e.delta
            for e in events
            if e.type == "response.function_call_arguments.delta" and e.item_id == a.item.id
        ]
        assert "".join(pieces) == d.arguments and isinstance(json.loads(d.arguments), dict)
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_a_function_call_output_round_trip_continues_the_conversation(client: openai.OpenAI) -> None:
    first = create(
        client, input="Weather in Oslo?", tools=[WEATHER], tool_choice="required", max_output_tokens=160
    )
    [call, *_] = function_calls(first)
    second = create(
        client,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "clear"}'}],
        tools=[WEATHER],
    )
    assert second.output_text
    items: list[Any] = client.responses.input_items.list(second.id, order="asc").data
    assert [i.type for i in items][-2:] == ["function_call", "function_call_output"]
    assert items[-1].call_id == call.call_id and items[-1].output == '{"sky": "clear"}'


def test_client_sent_function_calls_and_results_are_prompted(client: openai.OpenAI) -> None:
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"town": "Oslo"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 C"},
    ]
    without = create(client, input=history[:1], tools=[WEATHER])
    resp = create(client, input=history, tools=[WEATHER])
    assert resp.usage.input_tokens > without.usage.input_tokens
    items: list[Any] = client.responses.input_items.list(resp.id, order="asc").data
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]
    assert items[1].id.startswith("fc_") and items[1].call_id == "call_1" and items[2].output == "sunny, 21 C"


def test_a_tool_result_for_an_unknown_call_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="No tool call found"):
        create(client, input=[{"type": "function_call_output", "call_id": "call_x", "output": "?"}])


# ----- storage and conversations ----------------------------------------------------------------------
def test_retrieve_returns_the_stored_response(client: openai.OpenAI) -> None:
    resp = create(client, metadata={"k": "v"})
    assert client.responses.retrieve(resp.id).model_dump() == resp.model_dump()


def test_store_false_is_not_kept(client: openai.OpenAI) -> None:
    resp = create(client, store=False)
    assert resp.to_dict()["store"] is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        create(client, previous_response_id=resp.id, input="more")


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI) -> None:
    first = create(client, input="My name is Ada.", instructions="Remember names.")
    second = create(client, input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.instructions is None
    items: list[Any] = client.responses.input_items.list(second.id, order="asc").data
    assert [i.id for i in items] == [
        client.responses.input_items.list(first.id).data[0].id,
        first.output[0].id,
        items[2].id,
    ]
    assert items[1].content[0].text == first.output_text and items[2].content[0].text == "What is my name?"
    assert second.usage.input_tokens > first.usage.input_tokens
    # The earlier instructions are not carried over: the prompt is exactly the three items.
    explicit: list[Any] = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"},
    ]
    count = client.responses.input_tokens.count(model=TINY, input=explicit)
    assert second.usage.input_tokens == count.input_tokens


def test_conversations_chain_over_many_turns(client: openai.OpenAI) -> None:
    previous: Any = None
    for turn in range(3):
        resp = create(client, input=f"turn {turn}", previous_response_id=previous, max_output_tokens=4)
        previous = resp.id
    items: list[Any] = client.responses.input_items.list(previous, order="asc").data
    assert [i.role for i in items] == ["user", "assistant", "user", "assistant", "user"]
    assert [i.content[0].text for i in items if i.role == "user"] == ["turn 0", "turn 1", "turn 2"]


def test_items_of_stored_responses_can_be_referenced(client: openai.OpenAI) -> None:
    first = create(client, input="Remember this.")
    resp = create(
        client,
        input=[{"type": "item_reference", "id": first.output[0].id}, {"role": "user", "content": "ok?"}],
    )
    items: list[Any] = client.responses.input_items.list(resp.id, order="asc").data
    assert items[0].id == first.output[0].id and items[0].content[0].text == first.output_text


def test_input_items_page_newest_first(client: openai.OpenAI) -> None:
    resp = create(client, input=[{"role": "user", "content": f"m{n}"} for n in range(5)])
    page: Any = client.responses.input_items.list(resp.id, limit=2)
    assert [i.content[0].text for i in page.data] == ["m4", "m3"] and page.has_more
    assert page.first_id == page.data[0].id and page.last_id == page.data[1].id
    pages: Any = client.responses.input_items.list(resp.id, limit=2, order="asc")
    everything = [i.content[0].text for i in pages]
    assert everything == ["m0", "m1", "m2", "m3", "m4"]  # the SDK follows ``after`` through every page


def test_delete_forgets_a_response(client: openai.OpenAI, server: LiveServer) -> None:
    resp = create(client)
    deleted = httpx.delete(f"{server.base_url}/v1/responses/{resp.id}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": resp.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(resp.id)


# ----- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/responses/resp_nope"),
        ("DELETE", "/v1/responses/resp_nope"),
        ("GET", "/v1/responses/resp_nope/input_items"),
        ("POST", "/v1/responses/resp_nope/cancel"),
    ],
)
def test_unknown_ids_are_404_in_openais_envelope(server: LiveServer, method: str, path: str) -> None:
    r = httpx.request(method, f"{server.base_url}{path}")
    assert r.status_code == 404
    error = error_of(r)
    assert error["type"] == "invalid_request_error" and error["param"] == "response_id"
    assert "resp_nope" in error["message"]


def test_an_unknown_previous_response_is_404(server: LiveServer) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/responses",
        json={"model": TINY, "input": "hi", "previous_response_id": "resp_gone"},
    )
    assert r.status_code == 404
    error = error_of(r)
    assert (error["param"], error["code"]) == ("previous_response_id", "previous_response_not_found")


def test_a_stored_response_cannot_be_cancelled(client: openai.OpenAI) -> None:
    resp = create(client)
    with pytest.raises(openai.BadRequestError, match="background"):
        client.responses.cancel(resp.id)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi"}, "model"),
        ({"model": TINY, "input": "hi", "temperature": 3}, "temperature"),
        ({"model": TINY, "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": TINY, "input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
        (
            {"model": TINY, "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[0].call_id",
        ),
        ({"model": TINY, "input": [{"type": "computer_call_output", "call_id": "c"}]}, "input"),
        ({"model": TINY, "input": "hi", "tools": [{"type": "web_search"}]}, "tools"),
        ({"model": TINY, "input": "hi", "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": TINY, "input": "hi", "background": True}, "background"),
        ({"model": TINY, "input": "hi", "truncation": "auto"}, "truncation"),
        (
            {"model": TINY, "input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}},
            "text.format.schema",
        ),
        ({"model": TINY, "instructions": "nothing to answer"}, "input"),
    ],
)
def test_invalid_requests_are_400_naming_the_parameter(
    server: LiveServer, body: dict[str, Any], param: str
) -> None:
    r = httpx.post(f"{server.base_url}/v1/responses", json=body)
    assert r.status_code == 400, r.text
    error = error_of(r)
    assert error["type"] == "invalid_request_error" and error["param"] == param


@pytest.mark.parametrize(
    ("query", "param"), [("order=sideways", "order"), ("limit=0", "limit"), ("after=msg_x", "after")]
)
def test_bad_input_items_queries_are_400(
    client: openai.OpenAI, server: LiveServer, query: str, param: str
) -> None:
    resp = create(client)
    r = httpx.get(f"{server.base_url}/v1/responses/{resp.id}/input_items?{query}")
    assert r.status_code == 400 and error_of(r)["param"] == param


def test_an_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        create(client, model="no-such-model")
    assert code_of(err.value) == "model_not_found"
