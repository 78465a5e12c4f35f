"""The Ollama door's translation: wire bodies -> core requests, results and deltas -> Ollama's JSON and
NDJSON, without a server or a model."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from llmhost.core.types import (
    ChatMessage,
    Choice,
    ContentPart,
    Delta,
    Result,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from llmhost.doors.ollama import protocol as wire
from llmhost.doors.ollama import translate
from llmhost.doors.ollama.gotime import parse_keep_alive, rfc3339
from llmhost.errors import ErrorInfo, RefusedError, RequestError

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8


def chat_body(**fields: Any) -> wire.ChatRequest:
    fields.setdefault("messages", [{"role": "user", "content": "hi"}])
    return wire.ChatRequest.model_validate({"model": "m", **fields})


def generate_body(**fields: Any) -> wire.GenerateRequest:
    fields.setdefault("prompt", "hi")
    return wire.GenerateRequest.model_validate({"model": "m", **fields})


async def _replay(deltas: Sequence[Delta], fail: BaseException | None = None) -> AsyncIterator[Delta]:
    for d in deltas:
        yield d
    if fail is not None:
        raise fail


def lines(encoder: Any, deltas: Sequence[Delta], fail: BaseException | None = None) -> list[dict[str, Any]]:
    async def run() -> list[bytes]:
        return [b async for b in encoder(_replay(deltas, fail), "m", translate.Clock())]

    raw = asyncio.run(run())
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in raw)
    return [json.loads(line) for line in raw]


# ----- options -> sampling -------------------------------------------------------------------------------
def test_options_become_sampling_fields() -> None:
    options = {
        "num_predict": 12,
        "temperature": 0.5,
        "top_k": 7,
        "top_p": 0.8,
        "min_p": 0.05,
        "seed": 42,
        "stop": ["\n\n", "END"],
        "repeat_penalty": 1.1,
        "presence_penalty": 0.3,
        "frequency_penalty": 0.2,
    }
    s = translate.sampling(options)
    assert (s.max_tokens, s.temperature, s.top_k, s.top_p, s.min_p, s.seed) == (12, 0.5, 7, 0.8, 0.05, 42)
    assert s.stop == ("\n\n", "END")
    assert (s.repeat_penalty, s.presence_penalty, s.frequency_penalty) == (1.1, 0.3, 0.2)
    assert s.logprobs is None


def test_unset_options_stay_unset_and_ollama_sentinels_mean_unset() -> None:
    s = translate.sampling(None)
    assert (s.max_tokens, s.temperature, s.top_k, s.seed, s.stop) == (None, None, None, None, ())
    s = translate.sampling({"num_predict": -1, "seed": -1, "temperature": None})
    assert (s.max_tokens, s.seed, s.temperature) == (None, None, None)
    assert translate.sampling({"num_predict": 0}).max_tokens is None  # Ollama: 0 is no limit
    assert translate.sampling({"num_predict": 8.0}).max_tokens == 8  # JSON numbers may carry a ".0"


def test_runner_and_unknown_options_are_ignored() -> None:
    s = translate.sampling({"num_ctx": 4096, "num_gpu": 1, "mirostat": 2, "nonsense": "x"})
    assert s == translate.sampling(None)


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"num_predict": "ten"}, "options.num_predict"),
        ({"temperature": "hot"}, "options.temperature"),
        ({"seed": True}, "options.seed"),
        ({"stop": [1, 2]}, "options.stop"),
    ],
)
def test_options_of_the_wrong_type_are_400_naming_the_option(options: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as err:
        translate.sampling(options)
    assert err.value.param == param


def test_a_single_stop_string_is_accepted() -> None:
    assert translate.sampling({"stop": "END"}).stop == ("END",)


def test_logprobs_and_top_logprobs() -> None:
    assert translate.sampling(None, logprobs=True).logprobs == 0
    assert translate.sampling(None, logprobs=True, top_logprobs=3).logprobs == 3
    assert translate.sampling(None, logprobs=False, top_logprobs=3).logprobs is None
    with pytest.raises(RequestError, match="between 0 and 20"):
        translate.sampling(None, logprobs=True, top_logprobs=21)


# ----- format, keep_alive, times ------------------------------------------------------------------------
def test_format_json_or_a_schema_becomes_the_response_format() -> None:
    assert translate.response_format(None).type == "text"
    assert translate.response_format("").type == "text"
    assert translate.response_format("json").type == "json"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    rf = translate.response_format(schema)
    assert rf.type == "json_schema" and rf.schema == schema
    with pytest.raises(RequestError):
        translate.response_format("yaml")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), (0, 0.0), (30, 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("300ms", 0.3), ("0", 0.0)],
)
def test_keep_alive_takes_seconds_or_go_durations(value: Any, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", [-1, "-1", "-5m", -0.5, float("inf"), 1e12, "3000000h"])
def test_a_negative_keep_alive_or_one_past_go_durations_means_forever(value: Any) -> None:
    assert parse_keep_alive(value) == -1.0


@pytest.mark.parametrize("value", ["", "soon", "5x", "1.2.3s", True])
def test_a_keep_alive_that_is_no_duration_is_400(value: Any) -> None:
    with pytest.raises(RequestError) as err:
        parse_keep_alive(value)
    assert err.value.param == "keep_alive"


def test_timestamps_are_rfc3339_in_utc_as_go_writes_them() -> None:
    assert rfc3339(1714566896.0) == "2024-05-01T12:34:56Z"
    assert rfc3339(1714566896.25) == "2024-05-01T12:34:56.25Z"
    assert rfc3339().endswith("Z")


# ----- /api/chat bodies -----------------------------------------------------------------------------------
def test_chat_messages_map_to_core_messages() -> None:
    req = translate.chat_request(
        chat_body(
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "USER", "content": "hi", "images": [base64.b64encode(PNG).decode()]},
                {"role": "assistant", "content": "hello"},
            ],
            options={"num_predict": 4},
        )
    )
    assert req.kind == "chat" and req.model == "m" and req.sampling.max_tokens == 4
    system, user, assistant = req.messages
    assert (system.role, system.content) == ("system", "be brief")
    assert user.role == "user" and user.parts == (ContentPart("image", media_type="image/png", data=PNG),)
    assert (assistant.role, assistant.content) == ("assistant", "hello")


def test_tools_and_tool_history_pair_calls_with_their_answers() -> None:
    req = translate.chat_request(
        chat_body(
            messages=[
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                        {"id": "call_given", "function": {"name": "time", "arguments": {}}},
                    ],
                },
                {"role": "tool", "content": "12:00", "tool_name": "time"},
                {"role": "tool", "content": "sunny", "tool_name": "weather"},
            ],
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": "weather",
                        "description": "Weather in a city",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                    },
                }
            ],
        )
    )
    [tool] = req.tools
    assert tool.name == "weather" and tool.parameters["properties"]["city"] == {"type": "string"}
    assistant, time_answer, weather_answer = req.messages[1:]
    weather_call, time_call = assistant.tool_calls
    assert json.loads(weather_call.arguments) == {"city": "Paris"}
    assert weather_call.id.startswith("call_") and time_call.id == "call_given"
    assert (time_answer.role, time_answer.tool_call_id, time_answer.name) == ("tool", "call_given", "time")
    assert (weather_answer.tool_call_id, weather_answer.name) == (weather_call.id, "weather")


def test_a_tool_answer_without_name_or_id_answers_the_next_open_call() -> None:
    req = translate.chat_request(
        chat_body(
            messages=[
                {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
                {"role": "tool", "content": "42"},
            ]
        )
    )
    call = req.messages[0].tool_calls[0]
    assert req.messages[1].tool_call_id == call.id and req.messages[1].name == "f"


def test_tool_call_arguments_as_a_json_string_are_accepted_but_must_be_an_object() -> None:
    msg = {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}]}
    req = translate.chat_request(chat_body(messages=[msg]))
    assert json.loads(req.messages[0].tool_calls[0].arguments) == {"a": 1}
    msg["tool_calls"][0]["function"]["arguments"] = "[1]"  # type: ignore[index]
    with pytest.raises(RequestError, match="JSON object"):
        translate.chat_request(chat_body(messages=[msg]))


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ({"role": "wizard", "content": "x"}, "role"),
        ({"role": "user", "content": "x", "images": ["not base64!"]}, "base64"),
    ],
)
def test_bad_messages_are_400(message: dict[str, Any], match: str) -> None:
    with pytest.raises(RequestError, match=match):
        translate.chat_request(chat_body(messages=[message]))


def test_a_non_function_tool_is_400() -> None:
    with pytest.raises(RequestError, match="function"):
        translate.chat_request(chat_body(tools=[{"type": "code", "function": {"name": "f"}}]))


def test_think_off_passes_think_on_is_refused_and_an_unknown_level_is_invalid() -> None:
    translate.refuse_thinking("m", None)
    translate.refuse_thinking("m", False)
    for on in (True, "high", "max"):
        with pytest.raises(RequestError, match='"m" does not support thinking'):
            translate.refuse_thinking("m", on)
    with pytest.raises(ValueError, match="think"):
        chat_body(think="extreme")


def test_a_missing_model_is_400() -> None:
    with pytest.raises(RequestError, match="model is required"):
        translate.chat_request(wire.ChatRequest.model_validate({"messages": [{"role": "user"}]}))


# ----- /api/generate bodies -------------------------------------------------------------------------------
def test_generate_is_a_chat_of_system_and_prompt_through_the_model_template() -> None:
    req = translate.generate_request(generate_body(system="be brief", format="json"))
    assert req.kind == "chat" and req.response_format.type == "json"
    assert req.messages == (ChatMessage("system", "be brief"), ChatMessage("user", "hi"))


def test_raw_generate_is_a_completion_of_the_prompt_as_given() -> None:
    req = translate.generate_request(generate_body(prompt="<s>[INST] hi [/INST]", raw=True))
    assert req.kind == "completion" and req.prompt == "<s>[INST] hi [/INST]"


def test_a_template_renders_system_and_prompt_into_a_completion() -> None:
    template = (
        "{{ if .System }}<sys>{{ .System }}</sys>{{ end }}<user>{{ .Prompt }}</user>{{ .Response }}<eot>"
    )
    req = translate.generate_request(generate_body(system="S", template=template))
    assert req.kind == "completion" and req.prompt == "<sys>S</sys><user>hi</user>"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"suffix": "end"}, "suffix"),
        ({"raw": True, "context": [1, 2, 3]}, "raw"),
        ({"raw": True, "system": "x"}, "raw"),
        ({"raw": True, "template": "{{ .Prompt }}"}, "raw"),
        ({"raw": True, "images": [base64.b64encode(PNG).decode()]}, "images"),
        ({"template": "{{ range .Messages }}{{ end }}"}, "template"),
    ],
)
def test_generate_fields_llmhost_cannot_honour_are_400(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as err:
        translate.generate_request(generate_body(**fields))
    assert err.value.param == param


# ----- embeddings -------------------------------------------------------------------------------------------
def test_embed_input_is_a_string_or_a_list_of_strings() -> None:
    assert translate.embed_inputs("a") == ["a"]
    assert translate.embed_inputs(["a", "b"]) == ["a", "b"]
    assert translate.embed_inputs("") == [] and translate.embed_inputs(None) == []
    for bad in (3, [1, 2], {"a": 1}):
        with pytest.raises(RequestError, match="invalid input type"):
            translate.embed_inputs(bad)


def test_dimensions_cut_and_renormalise_like_ollama() -> None:
    [v] = translate.fit_dimensions([[0.6, 0.0, 0.8, 0.0]], 2)
    assert v == pytest.approx([1.0, 0.0])
    assert translate.fit_dimensions([[0.6, 0.8]], 4) == [[0.6, 0.8]]  # never longer
    assert translate.fit_dimensions([[0.6, 0.8]], None) == [[0.6, 0.8]]


# ----- answers ----------------------------------------------------------------------------------------------
def test_whole_chat_answer_has_ollamas_fields_and_nanosecond_durations() -> None:
    result = Result("r", "m", [Choice(0, "hello", finish_reason="length")], Usage(5, 3))
    clock = translate.Clock()
    clock.first_output()
    body = translate.chat_response(result, "m", clock)
    assert body["model"] == "m" and body["created_at"].endswith("Z")
    assert body["message"] == {"role": "assistant", "content": "hello"}
    assert body["done"] is True and body["done_reason"] == "length"
    assert body["prompt_eval_count"] == 5 and body["eval_count"] == 3
    assert body["total_duration"] > 0 and isinstance(body["total_duration"], int)
    assert "load_duration" not in body  # zero values are left out, as Ollama's omitempty does


def test_tool_calls_and_logprobs_in_a_whole_answer() -> None:
    choice = Choice(0, "", [ToolCall("call_1", "f", '{"x": 1}')], finish_reason="tool_calls")
    choice.logprobs = [TokenLogprob(b"a", -0.5, ((b"a", -0.5), (b"b", -1.5)))]
    body = translate.chat_response(Result("r", "m", [choice], Usage(1, 1)), "m", translate.Clock())
    assert body["done_reason"] == "stop"  # Ollama reports tool calls as a stop
    assert body["message"]["tool_calls"] == [
        {"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}
    ]
    assert body["logprobs"] == [
        {
            "token": "a",
            "logprob": -0.5,
            "bytes": [97],
            "top_logprobs": [
                {"token": "a", "logprob": -0.5, "bytes": [97]},
                {"token": "b", "logprob": -1.5, "bytes": [98]},
            ],
        }
    ]


def test_whole_generate_answer() -> None:
    result = Result("r", "m", [Choice(0, "text", finish_reason="stop")], Usage(2, 1))
    body = translate.generate_response(result, "m", translate.Clock())
    assert body["response"] == "text" and body["done"] is True and body["done_reason"] == "stop"
    assert "context" not in body  # a raw answer, or one from a provider without token ids
    result.choices[0].tokens = [1, 5, 6]
    body = translate.generate_response(result, "m", translate.Clock())
    assert body["context"] == [1, 5, 6]
    assert list(body)[:6] == ["model", "created_at", "response", "done", "done_reason", "context"]


def test_generate_request_continues_a_context_and_asks_for_tokens_unless_raw() -> None:
    req = translate.generate_request(generate_body(context=[1, 2, 3]))
    assert req.prefix_tokens == (1, 2, 3) and req.want_tokens
    raw = translate.generate_request(generate_body(raw=True))
    assert raw.prefix_tokens == () and not raw.want_tokens


def test_chat_stream_is_fragments_then_a_done_object_with_counts() -> None:
    out = lines(
        translate.ndjson_chat,
        [Delta(0, "he"), Delta(0, "llo"), Delta(0, finish_reason="stop"), Delta(-1, usage=Usage(4, 2))],
    )
    assert [o["message"]["content"] for o in out] == ["he", "llo", ""]
    assert [o["done"] for o in out] == [False, False, True]
    final = out[-1]
    assert final["done_reason"] == "stop" and final["prompt_eval_count"] == 4 and final["eval_count"] == 2
    assert final["total_duration"] > 0
    assert all(o["message"]["role"] == "assistant" and o["model"] == "m" for o in out)


def test_streamed_tool_calls_go_out_whole_once_their_arguments_are_complete() -> None:
    out = lines(
        translate.ndjson_chat,
        [
            Delta(0, tool_calls=(ToolCallDelta(0, "call_a", "weather", '{"ci'),)),
            Delta(0, tool_calls=(ToolCallDelta(0, arguments='ty": "Paris"}'),)),
            Delta(0, tool_calls=(ToolCallDelta(1, "call_b", "time", "{}"),)),
            Delta(0, finish_reason="tool_calls"),
            Delta(-1, usage=Usage(3, 9)),
        ],
    )
    first, second, final = out
    assert first["message"]["tool_calls"] == [
        {"id": "call_a", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}}
    ]
    assert first["message"]["content"] == "" and first["done"] is False
    assert second["message"]["tool_calls"] == [
        {"id": "call_b", "function": {"index": 1, "name": "time", "arguments": {}}}
    ]
    assert final["done"] is True and final["done_reason"] == "stop" and "tool_calls" not in final["message"]


def test_parallel_call_fragments_in_one_delta_complete_the_earlier_call() -> None:
    collector = translate.ToolCallCollector()
    done = collector.add(
        [
            ToolCallDelta(0, "a", "f", "{}"),
            ToolCallDelta(1, "b", "g", '{"x"'),
            ToolCallDelta(1, arguments=":1}"),
        ]
    )
    assert [c.id for c in done] == ["a"]
    [last] = collector.flush()
    assert (last.id, last.name, json.loads(last.arguments)) == ("b", "g", {"x": 1})
    assert collector.flush() == []


def test_a_call_without_an_id_gets_one_and_broken_arguments_become_an_empty_object() -> None:
    out = lines(
        translate.ndjson_chat,
        [Delta(0, tool_calls=(ToolCallDelta(0, None, "f", "{oops"),)), Delta(0, finish_reason="tool_calls")],
    )
    call = out[0]["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and len(call["id"]) == len("call_") + 8
    assert call["function"]["arguments"] == {}


def test_generate_stream_carries_response_fragments_and_logprobs() -> None:
    lp = (TokenLogprob(b"x", -0.1),)
    out = lines(
        translate.ndjson_generate,
        [Delta(0, "x", logprobs=lp), Delta(0, finish_reason="length"), Delta(-1, usage=Usage(1, 1))],
    )
    assert out[0]["response"] == "x" and out[0]["logprobs"][0]["token"] == "x"
    assert out[-1] == {**out[-1], "response": "", "done": True, "done_reason": "length"}


def test_a_failure_mid_stream_is_one_error_line() -> None:
    out = lines(translate.ndjson_generate, [Delta(0, "partial")], fail=RefusedError("policy says no"))
    assert out == [out[0], {"error": "policy says no"}]


def test_collect_assembles_a_stream_into_the_whole_answer() -> None:
    deltas = [
        Delta(0, "a"),
        Delta(0, "b", tool_calls=(ToolCallDelta(0, "c", "f", "{}"),)),
        Delta(0, finish_reason="tool_calls"),
        Delta(-1, usage=Usage(2, 2)),
    ]
    result = asyncio.run(translate.collect(_replay(deltas), "m"))
    assert result.text == "ab" and result.usage == Usage(2, 2)
    assert result.choices[0].tool_calls == [ToolCall("c", "f", "{}")]


def test_errors_render_in_ollamas_envelope() -> None:
    response = translate.render_error(ErrorInfo(404, "not_found", "model 'x' not found", "model"))
    assert response.status_code == 404
    assert json.loads(bytes(response.body)) == {"error": "model 'x' not found"}


# ----- /api/pull bodies -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "spec"),
    [
        ({"model": "hf:a/b"}, "hf:a/b"),
        ({"name": "hf:a/b"}, "hf:a/b"),  # Ollama's Go CLI
        ({"model": "hf:a/b", "name": "hf:a/b"}, "hf:a/b"),
        ({"model": "hf:a/b", "register_as": "mine"}, "hf:a/b"),
    ],
)
def test_pull_fetches_model_or_its_older_spelling_name(fields: dict[str, Any], spec: str) -> None:
    assert translate.pull_spec(wire.PullRequest.model_validate(fields)) == spec


@pytest.mark.parametrize(
    ("fields", "match"),
    [({}, "model is required"), ({"model": "hf:a/b", "name": "mine"}, "register_as")],
)
def test_pull_without_a_model_or_with_a_different_name_is_400(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(RequestError, match=match):
        translate.pull_spec(wire.PullRequest.model_validate(fields))
