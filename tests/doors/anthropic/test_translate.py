"""Anthropic wire bodies -> core requests, and core results -> Anthropic ``message`` objects and errors."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pydantic import ValidationError

from llmhost.core.types import (
    ChatMessage,
    Choice,
    ContentPart,
    InferenceRequest,
    Result,
    ToolCall,
    ToolChoice,
    Usage,
)
from llmhost.doors.anthropic import protocol as wire
from llmhost.doors.anthropic.routes import fit_context
from llmhost.doors.anthropic.translate import (
    cached_prompt_body,
    count_request,
    error_body,
    message_body,
    messages_request,
    render_error,
    stop_reason,
    tool_use_id,
    usage_body,
)
from llmhost.errors import ContextLengthError, ErrorInfo, RequestError

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "The weather in a town.",
    "input_schema": {"type": "object", "properties": {"town": {"type": "string"}}, "required": ["town"]},
}


def translate(**body: Any) -> InferenceRequest:
    body.setdefault("model", "m")
    body.setdefault("max_tokens", 16)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return messages_request(wire.MessagesRequest.model_validate(body))


# ----- requests ----------------------------------------------------------------------------------------
def test_sampling_fields_map_onto_core_sampling() -> None:
    req = translate(max_tokens=7, temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["\n\nHuman:", "END"])
    s = req.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k) == (7, 0.5, 0.9, 40)
    assert s.stop == ("\n\nHuman:", "END")
    assert req.kind == "chat" and req.model == "m"


def test_unset_sampling_fields_stay_unset() -> None:
    s = translate().sampling
    assert (s.temperature, s.top_p, s.top_k, s.stop) == (None, None, None, ())


def test_max_tokens_is_required() -> None:
    with pytest.raises(ValidationError, match="max_tokens"):
        wire.MessagesRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


def test_max_tokens_zero_is_accepted_but_not_streamed_and_negative_is_refused() -> None:
    assert translate(max_tokens=0).sampling.max_tokens == 0
    with pytest.raises(RequestError, match="cannot be streamed"):
        translate(max_tokens=0, stream=True)
    with pytest.raises(ValidationError, match="max_tokens"):
        translate(max_tokens=-1)


def test_temperature_above_one_is_refused() -> None:
    with pytest.raises(ValidationError, match="temperature"):
        translate(temperature=1.5)


def test_a_system_string_becomes_the_first_message() -> None:
    req = translate(system="Be brief.")
    assert req.messages == (ChatMessage("system", "Be brief."), ChatMessage("user", "hi"))


def test_system_blocks_with_cache_control_are_joined_and_the_cache_marks_ignored() -> None:
    system = [
        {"type": "text", "text": "You are a CLI.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]
    assert translate(system=system).messages[0] == ChatMessage("system", "You are a CLI.\n\nBe brief.")


def test_claude_codes_billing_header_is_dropped_from_the_system_prompt() -> None:
    header = "x-anthropic-billing-header: cc_version=2.1.101.e51; cc_entrypoint=cli; cch=a5145;"
    alone = translate(system=[{"type": "text", "text": header}, {"type": "text", "text": "You are Claude."}])
    glued = translate(system=header + "You are Claude.")
    assert alone.messages[0] == glued.messages[0] == ChatMessage("system", "You are Claude.")


def test_a_system_turn_in_messages_is_a_system_message() -> None:
    req = translate(messages=[{"role": "system", "content": "Rules."}, {"role": "user", "content": "hi"}])
    assert req.messages[0] == ChatMessage("system", "Rules.")


def test_a_system_turn_at_the_end_joins_the_user_turn_before_it() -> None:
    """Claude Code's mid-conversation system turn: most chat templates take a system message only first."""
    messages = [{"role": "user", "content": "say hello"}, {"role": "system", "content": "Agents: claude."}]
    assert translate(system="S.", messages=messages).messages == (
        ChatMessage("system", "S."),
        ChatMessage("user", "say hello\n\nAgents: claude."),
    )


def test_a_system_turn_after_an_assistant_turn_joins_the_next_user_turn() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "system", "content": "Note."},
        {"role": "user", "content": "c"},
    ]
    assert translate(messages=messages).messages[1:] == (
        ChatMessage("assistant", "b"),
        ChatMessage("user", "Note.\n\nc"),
    )


def test_a_system_turn_after_tool_results_is_a_user_message() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done"}]},
        {"role": "system", "content": "Note."},
    ]
    assert translate(messages=messages).messages[-2:] == (
        ChatMessage("tool", "done", tool_call_id="t1", name="f"),
        ChatMessage("user", "Note."),
    )


def test_leading_system_turns_join_the_system_prompt() -> None:
    messages = [{"role": "system", "content": "More rules."}, {"role": "user", "content": "hi"}]
    assert translate(system="Rules.", messages=messages).messages == (
        ChatMessage("system", "Rules.\n\nMore rules."),
        ChatMessage("user", "hi"),
    )


def test_text_blocks_of_a_user_turn_are_one_user_message() -> None:
    content = [{"type": "text", "text": "<reminder/>"}, {"type": "text", "text": "Fix the bug."}]
    assert translate(messages=[{"role": "user", "content": content}]).messages == (
        ChatMessage("user", "<reminder/>\n\nFix the bug."),
    )


def test_base64_and_url_images_become_content_parts() -> None:
    png = b"\x89PNG\r\n\x1a\nrest"
    content = [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(png).decode()},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "What is this?"},
    ]
    [message] = translate(messages=[{"role": "user", "content": content}]).messages
    assert message.content == "What is this?"
    assert message.parts == (
        ContentPart("image", media_type="image/png", data=png),
        ContentPart("image", url="https://example.com/cat.jpg"),
    )


def test_bad_base64_image_data_is_a_request_error() -> None:
    content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "!!"}}]
    with pytest.raises(RequestError, match="base64"):
        translate(messages=[{"role": "user", "content": content}])


def test_a_plain_text_document_is_read_as_text_and_a_pdf_is_refused() -> None:
    doc = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "Notes."},
        "title": "a.txt",
    }
    [message] = translate(
        messages=[{"role": "user", "content": [doc, {"type": "text", "text": "Sum up."}]}]
    ).messages
    assert message.content == "a.txt\n\nNotes.\n\nSum up."
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}
    with pytest.raises(RequestError, match="PDF"):
        translate(messages=[{"role": "user", "content": [pdf]}])


def test_an_unknown_block_type_is_refused_by_validation() -> None:
    with pytest.raises(ValidationError, match=r"server_tool_use|does not match"):
        translate(messages=[{"role": "user", "content": [{"type": "server_tool_use", "id": "x"}]}])


def test_tool_use_and_tool_result_become_tool_calls_and_tool_messages() -> None:
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"town": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "sunny"}],
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    req = translate(messages=messages, tools=[WEATHER])
    assert req.messages == (
        ChatMessage("user", "Weather in Oslo?"),
        ChatMessage(
            "assistant", "Checking.", tool_calls=(ToolCall("toolu_1", "get_weather", '{"town": "Oslo"}'),)
        ),
        ChatMessage("tool", "sunny", tool_call_id="toolu_1", name="get_weather"),
        ChatMessage("user", "And tomorrow?"),
    )
    assert json.loads(req.messages[1].tool_calls[0].arguments) == {"town": "Oslo"}


def test_a_tool_result_given_as_a_string_is_its_text() -> None:
    messages = [
        {"role": "user", "content": "Go."},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}],
        },
    ]
    assert translate(messages=messages).messages[-1] == ChatMessage(
        "tool", "42", tool_call_id="t1", name="get_weather"
    )


def test_a_tool_result_marked_is_error_tells_the_model_it_failed() -> None:
    def answer(content: Any) -> list[dict[str, Any]]:
        return [
            {"role": "user", "content": "Go."},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": content, "is_error": True}
                ],
            },
        ]

    assert translate(messages=answer("no such town")).messages[-1].content == "Error: no such town"
    assert translate(messages=answer([])).messages[-1].content == "Error"


def test_search_results_are_read_as_text_under_their_title_and_source() -> None:
    result = {
        "type": "search_result",
        "source": "https://example.com/oslo",
        "title": "Oslo weather",
        "content": [{"type": "text", "text": "Sunny."}, {"type": "text", "text": "21 C."}],
        "citations": {"enabled": True},
    }
    text = "Oslo weather\nhttps://example.com/oslo\n\nSunny.\n\n21 C."
    req = translate(messages=[{"role": "user", "content": [result, {"type": "text", "text": "Summarise."}]}])
    assert req.messages == (ChatMessage("user", f"{text}\n\nSummarise."),)
    messages = [
        {"role": "user", "content": "Search."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "search", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [result]}]},
    ]
    assert translate(messages=messages).messages[-1].content == text


def test_a_tool_result_for_an_unknown_tool_use_is_refused() -> None:
    content = [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "?"}]
    with pytest.raises(RequestError, match="toolu_x"):
        translate(messages=[{"role": "user", "content": content}])


def test_tool_use_in_a_user_turn_is_refused() -> None:
    content = [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]
    with pytest.raises(RequestError, match="assistant turns"):
        translate(messages=[{"role": "user", "content": content}])


def test_ending_with_an_assistant_turn_prefill_is_refused() -> None:
    messages = [{"role": "user", "content": "Answer:"}, {"role": "assistant", "content": "The answer is ("}]
    with pytest.raises(RequestError, match="prefill"):
        translate(messages=messages)


def test_tools_become_core_tools_and_cache_control_is_ignored() -> None:
    tool = {**WEATHER, "cache_control": {"type": "ephemeral"}, "type": "custom"}
    req = translate(tools=[tool])
    assert [(t.name, t.description, t.parameters) for t in req.tools] == [
        ("get_weather", "The weather in a town.", WEATHER["input_schema"])
    ]
    assert req.tool_choice == ToolChoice("auto") and req.parallel_tool_calls


def test_server_tools_are_refused() -> None:
    with pytest.raises(RequestError, match="web_search_20250305"):
        translate(tools=[{"type": "web_search_20250305", "name": "web_search"}])


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, ToolChoice("auto"), True),
        ({"type": "any"}, ToolChoice("required"), True),
        ({"type": "tool", "name": "get_weather"}, ToolChoice("tool", "get_weather"), True),
        ({"type": "none"}, ToolChoice("none"), True),
        ({"type": "any", "disable_parallel_tool_use": True}, ToolChoice("required"), False),
        ({"type": "auto", "disable_parallel_tool_use": True}, ToolChoice("auto"), False),
    ],
)
def test_tool_choice_maps_onto_core_tool_choice(
    choice: dict[str, Any], expected: ToolChoice, parallel: bool
) -> None:
    req = translate(tools=[WEATHER], tool_choice=choice)
    assert (req.tool_choice, req.parallel_tool_calls) == (expected, parallel)


def test_forcing_a_tool_without_tools_is_refused_in_anthropics_words() -> None:
    with pytest.raises(RequestError, match="tool_choice 'any' needs at least one tool"):
        translate(tool_choice={"type": "any"})


def test_claude_code_extras_are_accepted_and_ignored() -> None:
    req = translate(
        metadata={"user_id": "user_abc"},
        thinking={"type": "enabled", "budget_tokens": 2048},
        service_tier="auto",
        context_management={"edits": []},
        stream=True,
    )
    assert req.user == "user_abc"
    assert translate(thinking={"type": "adaptive"}).messages == (ChatMessage("user", "hi"),)


def test_output_config_format_is_a_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    rf = translate(
        output_config={"format": {"type": "json_schema", "schema": schema}, "effort": "low"}
    ).response_format
    assert (rf.type, rf.schema) == ("json_schema", schema)


def test_count_tokens_needs_no_max_tokens() -> None:
    body = wire.CountTokensRequest.model_validate(
        {"model": "m", "system": "S.", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]}
    )
    req = count_request(body)
    assert req.messages == (ChatMessage("system", "S."), ChatMessage("user", "hi"))
    assert [t.name for t in req.tools] == ["get_weather"] and req.sampling.max_tokens is None


# ----- answers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("finish", "stop", "expected"),
    [
        ("tool_calls", None, "tool_use"),
        ("length", None, "max_tokens"),
        ("stop", "END", "stop_sequence"),
        ("stop", None, "end_turn"),
        (None, None, "end_turn"),
    ],
)
def test_stop_reason_of_each_finish(finish: Any, stop: str | None, expected: str) -> None:
    assert stop_reason(finish, stop) == expected


def test_the_token_limit_is_the_context_window_when_max_tokens_was_cut_to_it() -> None:
    assert stop_reason("length", None, context_full=True) == "model_context_window_exceeded"
    assert stop_reason("stop", None, context_full=True) == "end_turn"
    result = Result("r", "m", [Choice(0, "ab", finish_reason="length")])
    assert message_body(result, "msg_1", context_full=True)["stop_reason"] == "model_context_window_exceeded"


def test_max_tokens_is_cut_to_the_room_the_prompt_leaves() -> None:
    req = translate(max_tokens=32000, temperature=0.5)
    fitted = fit_context(req, ContextLengthError(32100, 4096, 100, 32000))
    assert fitted is not None and fitted.sampling.max_tokens == 3996 and fitted.sampling.temperature == 0.5
    assert fitted.messages == req.messages


def test_a_prompt_that_does_not_fit_is_not_cut() -> None:
    req = translate(max_tokens=10)
    assert fit_context(req, ContextLengthError(5010, 4096, 5000, 10)) is None
    assert fit_context(req, ContextLengthError(4106, 4096, 4096, 10)) is None


def test_a_text_answer_is_one_text_block() -> None:
    result = Result("r", "m", [Choice(0, "Hello", finish_reason="stop")], Usage(10, 2))
    assert message_body(result, "msg_1") == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage_body(Usage(10, 2)),
    }


def test_a_stop_sequence_answer_names_the_sequence() -> None:
    result = Result("r", "m", [Choice(0, "ab", finish_reason="stop", stop_sequence="END")])
    body = message_body(result, "msg_1")
    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", "END")


def test_tool_calls_are_tool_use_blocks_after_the_text() -> None:
    calls = [ToolCall("call_1", "get_weather", '{"town": "Oslo"}'), ToolCall("toolu_2", "get_time", "")]
    result = Result("r", "m", [Choice(0, "Checking.", calls, finish_reason="tool_calls")])
    body = message_body(result, "msg_1")
    assert body["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_call_1", "name": "get_weather", "input": {"town": "Oslo"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
    ]
    assert body["stop_reason"] == "tool_use"


def test_tool_calls_without_text_have_no_text_block() -> None:
    result = Result("r", "m", [Choice(0, "", [ToolCall("c", "f", "{}")], finish_reason="tool_calls")])
    assert [b["type"] for b in message_body(result, "msg_1")["content"]] == ["tool_use"]


def test_tool_use_ids_keep_the_toolu_prefix_once() -> None:
    assert tool_use_id("call_abc") == "toolu_call_abc"
    assert tool_use_id("toolu_abc") == "toolu_abc"
    assert tool_use_id("").startswith("toolu_") and len(tool_use_id("")) > 10


def test_usage_splits_prefix_cache_reads_from_fresh_input() -> None:
    assert usage_body(Usage(prompt_tokens=100, completion_tokens=7, cached_tokens=60)) == {
        "input_tokens": 40,
        "output_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 60,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
    }


@pytest.mark.parametrize(
    ("info", "type_"),
    [
        (ErrorInfo(400, "invalid_request", "bad"), "invalid_request_error"),
        (ErrorInfo(401, "authentication", "key"), "authentication_error"),
        (ErrorInfo(403, "permission", "no"), "permission_error"),
        (ErrorInfo(404, "not_found", "model"), "not_found_error"),
        (ErrorInfo(409, "conflict", "model busy"), "conflict_error"),
        (ErrorInfo(413, "too_large", "big"), "request_too_large"),
        (ErrorInfo(429, "rate_limit", "slow"), "rate_limit_error"),
        (ErrorInfo(429, "overloaded", "queue full"), "overloaded_error"),
        (ErrorInfo(503, "overloaded", "loading"), "overloaded_error"),
        (ErrorInfo(504, "timeout", "slow upstream"), "timeout_error"),
        (ErrorInfo(502, "upstream", "upstream failed"), "api_error"),
        (ErrorInfo(500, "server", "boom"), "api_error"),
    ],
)
def test_errors_use_anthropics_type_names(info: ErrorInfo, type_: str) -> None:
    assert error_body(info) == {"type": "error", "error": {"type": type_, "message": info.message}}


def test_an_error_body_names_its_request_id() -> None:
    assert error_body(ErrorInfo(400, "invalid_request", "bad"), "req_1")["request_id"] == "req_1"


@pytest.mark.parametrize("status", [429, 503])
def test_an_overloaded_engine_is_status_529_as_anthropic_sends_overloaded_error(status: int) -> None:
    response = render_error(ErrorInfo(status, "overloaded", "queue full", headers={"Retry-After": "2"}))
    assert response.status_code == 529 and response.headers["retry-after"] == "2"
    assert json.loads(bytes(response.body))["error"]["type"] == "overloaded_error"


def test_a_rate_limit_stays_429_rate_limit_error() -> None:
    response = render_error(ErrorInfo(429, "rate_limit", "slow down"))
    assert response.status_code == 429
    assert json.loads(bytes(response.body))["error"]["type"] == "rate_limit_error"


def test_a_cached_prompt_answer_has_no_content_and_no_output_tokens() -> None:
    result = Result("r", "m", [Choice(0, "x", finish_reason="length")], Usage(30, 1, 10))
    assert cached_prompt_body(result, "msg_1") == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": usage_body(Usage(30, 0, 10)),
    }
