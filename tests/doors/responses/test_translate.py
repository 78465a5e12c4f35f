"""The Responses door's translation: wire input -> canonical items -> core messages, and results ->
``response`` objects, without a server or a model."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from llmhost.core.types import (
    ChatMessage,
    Choice,
    ContentPart,
    Result,
    TokenLogprob,
    ToolCall,
    ToolChoice,
    Usage,
)
from llmhost.doors.responses import protocol as wire
from llmhost.doors.responses import translate
from llmhost.errors import RequestError


def body(**fields: Any) -> wire.ResponseCreateRequest:
    return wire.ResponseCreateRequest.model_validate({"model": "m", **fields})


def items_of(input_: Any) -> list[dict[str, Any]]:
    return translate.input_items(body(input=input_).input)


# ----- input items ------------------------------------------------------------------------------------
def test_string_input_is_one_user_message_with_an_input_text_part() -> None:
    [item] = items_of("hello")
    assert item["type"] == "message" and item["role"] == "user" and item["status"] == "completed"
    assert item["id"].startswith("msg_")
    assert item["content"] == [{"type": "input_text", "text": "hello"}]


def test_message_items_keep_their_ids_and_get_canonical_parts() -> None:
    items = items_of(
        [
            {"role": "developer", "content": "be brief"},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "a"}],
                "id": "msg_1",
            },
            {"role": "assistant", "content": "b"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "c", "annotations": []}]},
        ]
    )
    assert items[0]["content"] == [{"type": "input_text", "text": "be brief"}]
    assert items[1]["id"] == "msg_1"
    assert items[2]["content"] == [{"type": "output_text", "text": "b", "annotations": []}]
    assert items[3]["content"] == [{"type": "output_text", "text": "c", "annotations": []}]


def test_function_call_and_output_items_are_kept_with_fresh_ids() -> None:
    call, output = items_of(
        [
            {"type": "function_call", "call_id": "call_1", "name": "get", "arguments": '{"q": 1}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        ]
    )
    assert call == {
        "id": call["id"],
        "type": "function_call",
        "status": "completed",
        "arguments": '{"q": 1}',
        "call_id": "call_1",
        "name": "get",
    }
    assert call["id"].startswith("fc_")
    assert output["type"] == "function_call_output" and output["output"] == "42"
    assert output["call_id"] == "call_1"


def test_item_references_stay_for_the_store_to_resolve_and_reasoning_items_are_dropped() -> None:
    items = items_of(
        [{"type": "reasoning", "summary": []}, {"id": "msg_x"}, {"type": "item_reference", "id": "fc_y"}]
    )
    assert items == [{"type": "item_reference", "id": "msg_x"}, {"type": "item_reference", "id": "fc_y"}]


def test_unsupported_items_and_parts_are_refused_naming_them() -> None:
    with pytest.raises(RequestError, match="item type 'web_search_call'"):
        items_of([{"type": "web_search_call", "id": "ws_1"}])
    with pytest.raises(RequestError, match="content part type 'input_file'"):
        items_of([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}])
    with pytest.raises(RequestError, match="input_image"):
        items_of([{"role": "assistant", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}])
    with pytest.raises(RequestError, match="file_id"):
        items_of([{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}])
    with pytest.raises(RequestError, match="base64"):
        items_of(
            [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,%%"}]}]
        )


def test_images_become_content_parts() -> None:
    data = base64.b64encode(b"\x89PNG").decode()
    items = items_of(
        [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this?"},
                    {"type": "input_image", "image_url": f"data:image/png;base64,{data}"},
                ],
            }
        ]
    )
    [message] = translate.messages(items, None)
    assert message.content == "what is this?"
    assert message.parts == (ContentPart("image", media_type="image/png", data=b"\x89PNG"),)


# ----- conversations ----------------------------------------------------------------------------------
def test_instructions_come_first_and_developer_is_system() -> None:
    items = items_of([{"role": "developer", "content": "rules"}, {"role": "user", "content": "hi"}])
    chat = translate.messages(items, "You are terse.")
    assert [(m.role, m.content) for m in chat] == [
        ("system", "You are terse."),
        ("system", "rules"),
        ("user", "hi"),
    ]


def test_consecutive_function_calls_join_the_assistant_message_before_them() -> None:
    items = items_of(
        [
            {"role": "user", "content": "weather in two towns?"},
            {"role": "assistant", "content": "Let me look."},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"town": "A"}'},
            {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": '{"town": "B"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "sun"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "rain"}],
            },
        ]
    )
    chat = translate.messages(items, None)
    assert chat[1] == ChatMessage(
        "assistant",
        "Let me look.",
        tool_calls=(ToolCall("c1", "weather", '{"town": "A"}'), ToolCall("c2", "weather", '{"town": "B"}')),
    )
    assert chat[2] == ChatMessage("tool", "sun", tool_call_id="c1", name="weather")
    assert chat[3] == ChatMessage("tool", "rain", tool_call_id="c2", name="weather")


def test_a_function_call_without_assistant_text_is_its_own_assistant_message() -> None:
    items = items_of(
        [
            {"role": "user", "content": "x"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        ]
    )
    assert translate.messages(items, None)[1] == ChatMessage(
        "assistant", tool_calls=(ToolCall("c1", "f", "{}"),)
    )


def test_duplicate_item_ids_are_refused() -> None:
    earlier = items_of([{"role": "user", "content": "a", "id": "msg_a"}])
    with pytest.raises(RequestError, match="Duplicate item found with id msg_a"):
        translate.check_conversation(earlier, items_of([{"role": "user", "content": "b", "id": "msg_a"}]))


def test_a_tool_result_must_answer_an_earlier_call() -> None:
    with pytest.raises(RequestError, match="No tool call found for function call output with call_id c9"):
        translate.check_conversation(
            [], items_of([{"type": "function_call_output", "call_id": "c9", "output": "x"}])
        )
    earlier = items_of([{"type": "function_call", "call_id": "c9", "name": "f", "arguments": "{}"}])
    translate.check_conversation(
        earlier, items_of([{"type": "function_call_output", "call_id": "c9", "output": "x"}])
    )


# ----- the core request -------------------------------------------------------------------------------
def request_of(**fields: Any) -> Any:
    b = body(input="hi", **fields)
    return translate.inference_request(b, b.model, translate.input_items(b.input))


def test_sampling_fields_map_to_the_core_request() -> None:
    req = request_of(max_output_tokens=7, temperature=0.5, top_p=0.9, user="u1")
    assert req.kind == "chat" and req.model == "m"
    assert (req.sampling.max_tokens, req.sampling.temperature, req.sampling.top_p) == (7, 0.5, 0.9)
    assert req.sampling.logprobs is None and req.user == "u1"
    unset = request_of()
    assert (unset.sampling.max_tokens, unset.sampling.temperature, unset.sampling.top_p) == (None, None, None)


def test_logprobs_are_asked_for_through_include() -> None:
    assert request_of(include=["message.output_text.logprobs"], top_logprobs=3).sampling.logprobs == 3
    assert request_of(include=["message.output_text.logprobs"]).sampling.logprobs == 0
    assert request_of(top_logprobs=3).sampling.logprobs is None


def test_function_tools_and_tool_choice() -> None:
    tools = [{"type": "function", "name": "get", "description": "d", "parameters": {"type": "object"}}]
    req = request_of(tools=tools)
    assert [(t.name, t.description, t.parameters) for t in req.tools] == [("get", "d", {"type": "object"})]
    assert req.tool_choice == ToolChoice("auto")
    assert request_of(tools=tools, tool_choice="required").tool_choice == ToolChoice("required")
    named = request_of(tools=tools, tool_choice={"type": "function", "name": "get"})
    assert named.tool_choice == ToolChoice("tool", "get")
    assert request_of().tool_choice == ToolChoice("none")
    assert request_of(tools=tools, parallel_tool_calls=False).parallel_tool_calls is False


def test_tool_choice_must_fit_the_tools() -> None:
    tools = [{"type": "function", "name": "get"}]
    with pytest.raises(RequestError, match="not in tools"):
        request_of(tools=tools, tool_choice={"type": "function", "name": "other"})
    with pytest.raises(RequestError, match="needs at least one tool"):
        request_of(tool_choice="required")
    with pytest.raises(RequestError, match="tool_choice type 'file_search'"):
        request_of(tools=tools, tool_choice={"type": "file_search"})


def test_text_format_becomes_the_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    req = request_of(
        text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}}
    )
    assert (req.response_format.type, req.response_format.schema, req.response_format.name) == (
        "json_schema",
        schema,
        "thing",
    )
    assert request_of(text={"format": {"type": "json_object"}}).response_format.type == "json"
    assert request_of(text={"format": {"type": "text"}, "verbosity": "low"}).response_format.type == "text"
    with pytest.raises(RequestError, match="schema is required"):
        request_of(text={"format": {"type": "json_schema", "name": "x"}})


def test_no_input_at_all_is_refused() -> None:
    with pytest.raises(RequestError, match="you must provide input"):
        translate.inference_request(body(instructions="only rules"), "m", [])


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"background": True}, "background"),
        ({"truncation": "auto"}, "truncation"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ],
)
def test_what_this_server_cannot_do_is_refused_naming_the_parameter(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(RequestError) as err:
        translate.check_supported(body(input="x", **fields))
    assert err.value.param == param


def test_harmless_parameters_are_accepted() -> None:
    translate.check_supported(
        body(
            input="x",
            background=False,
            truncation="disabled",
            reasoning={"effort": "low", "summary": "auto"},
            include=["reasoning.encrypted_content"],
            service_tier="auto",
            store=True,
            prompt_cache_key="k",
            safety_identifier="s",
            max_tool_calls=3,
            stream_options={"include_obfuscation": False},
        )
    )


# ----- response objects -------------------------------------------------------------------------------
def test_the_frame_echoes_the_request() -> None:
    b = body(
        input="x",
        instructions="be kind",
        max_output_tokens=9,
        temperature=0.2,
        tools=[{"type": "function", "name": "get", "parameters": {"type": "object"}, "strict": True}],
        tool_choice={"type": "function", "name": "get"},
        metadata={"k": "v"},
        store=False,
        previous_response_id="resp_1",
        text={"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}},
    )
    frame = translate.response_frame(b, "resp_2", 1700000000)
    assert frame["id"] == "resp_2" and frame["object"] == "response" and frame["created_at"] == 1700000000
    assert frame["status"] == "in_progress" and frame["output"] == [] and frame["usage"] is None
    assert (
        frame["instructions"] == "be kind" and frame["max_output_tokens"] == 9 and frame["temperature"] == 0.2
    )
    assert frame["tools"] == [
        {
            "type": "function",
            "name": "get",
            "description": None,
            "parameters": {"type": "object"},
            "strict": True,
        }
    ]
    assert frame["tool_choice"] == {"type": "function", "name": "get"}
    assert frame["metadata"] == {"k": "v"} and frame["store"] is False
    assert frame["previous_response_id"] == "resp_1"
    assert frame["text"]["format"]["type"] == "json_schema" and frame["text"]["format"]["name"] == "n"
    assert frame["parallel_tool_calls"] is True and frame["truncation"] == "disabled"
    assert translate.response_frame(body(input="x"), "r", 0)["tool_choice"] == "auto"


def test_a_whole_answer_becomes_a_message_and_function_calls() -> None:
    frame = translate.response_frame(body(input="x"), "resp_1", 0)
    choice = Choice(
        0, "thinking aloud", [ToolCall("call_7", "get", '{"q": "x"}')], finish_reason="tool_calls"
    )
    response = translate.response_of(frame, Result("r", "m", [choice], Usage(10, 5, 4)))
    assert response["status"] == "completed" and response["incomplete_details"] is None
    assert isinstance(response["completed_at"], int)
    message, call = response["output"]
    assert (
        message["type"] == "message" and message["role"] == "assistant" and message["status"] == "completed"
    )
    assert message["content"] == [
        {"type": "output_text", "text": "thinking aloud", "annotations": [], "logprobs": []}
    ]
    assert call["type"] == "function_call" and call["id"].startswith("fc_") and call["call_id"] == "call_7"
    assert (call["name"], call["arguments"], call["status"]) == ("get", '{"q": "x"}', "completed")
    assert response["usage"] == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 15,
    }


def test_only_function_calls_means_no_message_and_a_missing_call_id_is_made_up() -> None:
    frame = translate.response_frame(body(input="x"), "resp_1", 0)
    choice = Choice(0, "", [ToolCall("", "get", "{}")], finish_reason="tool_calls")
    [call] = translate.response_of(frame, Result("r", "m", [choice]))["output"]
    assert call["call_id"].startswith("call_")


def test_hitting_the_token_limit_is_incomplete() -> None:
    frame = translate.response_frame(body(input="x"), "resp_1", 0)
    response = translate.response_of(frame, Result("r", "m", [Choice(0, "abc", finish_reason="length")]))
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"
    assert "completed_at" not in response


def test_logprobs_are_listed_per_token() -> None:
    frame = translate.response_frame(body(input="x"), "resp_1", 0)
    lp = [TokenLogprob(b"a", -0.5, ((b"a", -0.5), (b"b", -1.5)))]
    result = Result("r", "m", [Choice(0, "a", logprobs=lp, finish_reason="stop")])
    [part] = translate.response_of(frame, result)["output"][0]["content"]
    assert part["logprobs"] == [
        {
            "token": "a",
            "bytes": [97],
            "logprob": -0.5,
            "top_logprobs": [
                {"token": "a", "bytes": [97], "logprob": -0.5},
                {"token": "b", "bytes": [98], "logprob": -1.5},
            ],
        }
    ]
