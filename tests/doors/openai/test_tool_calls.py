"""Tool calling on ``/v1/chat/completions``, spoken to by the official ``openai`` client over real
loopback HTTP.

The tiny random-weight model has no idea what a tool is, so every call it makes is one the local
provider's grammar forces (``tool_choice`` ``required`` or a named function): the assertions are about
the shape of the answer, that the arguments parse as the tool's schema says, and how the calls stream.
The tiny model spends one token per byte, so the prompt (which lists the tools) needs a wide context
window and a call needs ~100 tokens.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from tests.conftest import TINY, LiveServer

SCHEMA_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}

# Short strings keep a forced call well inside max_tokens (the tiny model would rarely close a string).
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a town for the next days.",
        "parameters": {
            "type": "object",
            "properties": {
                "town": {"type": "string", "maxLength": 12},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
            },
            "required": ["town", "days", "metric"],
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "integer"}}, "required": ["zone"]},
    },
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTION: Any = [{"role": "user", "content": "What is the weather in Oslo?"}]


def ask(client: openai.OpenAI, **kw: Any) -> Any:
    args: dict[str, Any] = {"model": TINY, "messages": QUESTION, "tools": TOOLS, "max_tokens": 200}
    args.update(kw)
    return client.chat.completions.create(**args)


def post(server: LiveServer, **body: Any) -> httpx.Response:
    payload: dict[str, Any] = {"model": TINY, "messages": QUESTION, "max_tokens": 50, **body}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=payload, timeout=60)


def assert_arguments_fit(name: str, arguments: str) -> dict[str, Any]:
    """The arguments are a JSON object holding the tool's required keys, each of its schema's type."""
    args = json.loads(arguments)
    assert isinstance(args, dict), arguments
    schema = SCHEMAS[name]
    assert set(schema["required"]) <= set(args), arguments
    for key, value in args.items():
        kind = schema["properties"][key]["type"]
        assert isinstance(value, SCHEMA_TYPES[kind]), (key, value)
        assert not (isinstance(value, bool) and kind in ("integer", "number")), (key, value)
    return args


def assert_call(call: Any, names: set[str] | None = None) -> dict[str, Any]:
    assert isinstance(call.id, str) and call.id
    assert call.type == "function"
    assert call.function.name in (names or set(SCHEMAS))
    return assert_arguments_fit(call.function.name, call.function.arguments)


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    error: dict[str, Any] = body["error"]
    return error


# ----- forced calls ----------------------------------------------------------------------------------
def test_tool_choice_required_answers_with_one_call_whose_arguments_fit_the_schema(
    client: openai.OpenAI,
) -> None:
    resp = ask(client, tool_choice="required", parallel_tool_calls=False)
    [choice] = resp.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant" and not choice.message.content
    [call] = choice.message.tool_calls
    assert_call(call)
    assert call.id.startswith("call_")
    assert resp.usage is not None and 0 < resp.usage.completion_tokens <= 200


def test_a_named_tool_choice_calls_that_tool(client: openai.OpenAI) -> None:
    for name in ("get_weather", "get_time"):
        resp = ask(
            client, tool_choice={"type": "function", "function": {"name": name}}, parallel_tool_calls=False
        )
        [choice] = resp.choices
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls
        assert_call(call, {name})


def test_every_forced_call_parses_whatever_the_seed(client: openai.OpenAI) -> None:
    for seed in range(4):
        resp = ask(client, tool_choice="required", parallel_tool_calls=False, seed=seed, temperature=1.0)
        assert resp.choices[0].finish_reason == "tool_calls"
        [call] = resp.choices[0].message.tool_calls
        assert_call(call)


def test_call_ids_are_unique(client: openai.OpenAI) -> None:
    ids = {ask(client, tool_choice="required", parallel_tool_calls=False).choices[0].message.tool_calls[0].id}
    ids.add(
        ask(client, tool_choice="required", parallel_tool_calls=False).choices[0].message.tool_calls[0].id
    )
    assert len(ids) == 2


def test_parallel_tool_calls_may_give_several_calls_and_each_parses(client: openai.OpenAI) -> None:
    counts = set()
    for seed in range(5):
        resp = ask(client, tool_choice="required", parallel_tool_calls=True, seed=seed, temperature=1.0)
        [choice] = resp.choices
        calls = choice.message.tool_calls
        assert calls, choice
        counts.add(len(calls))
        # At max_tokens the last call may be cut: it is closed so that it still parses, and the answer
        # says "length", as OpenAI's does.
        assert choice.finish_reason in ("tool_calls", "length")
        complete = calls if choice.finish_reason == "tool_calls" else calls[:-1]
        for call in complete:
            assert_call(call)
        for call in calls:
            assert isinstance(json.loads(call.function.arguments), dict)
        assert len({c.id for c in calls}) == len(calls)
    assert max(counts) > 1  # the grammar lets the model go on to a second call


@pytest.mark.parametrize("max_tokens", [3, 11, 20, 30])
def test_a_forced_call_cut_before_it_names_its_tool_leaks_no_call_markup(
    client: openai.OpenAI, max_tokens: int
) -> None:
    # The call syntax (<tool_call>, {"name": ...) is llmhost's business with the model, never content.
    resp = ask(
        client, tool_choice="required", parallel_tool_calls=False, max_tokens=max_tokens, temperature=0
    )
    [choice] = resp.choices
    assert choice.finish_reason == "length"
    assert not choice.message.content and choice.message.tool_calls is None
    chunks = list(
        ask(
            client,
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
        )
    )
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]


def test_a_forced_call_cut_in_its_arguments_is_closed_and_says_length(client: openai.OpenAI) -> None:
    resp = ask(client, tool_choice="required", parallel_tool_calls=False, max_tokens=60, temperature=0)
    [choice] = resp.choices
    assert choice.finish_reason == "length" and not choice.message.content
    [call] = choice.message.tool_calls
    assert call.function.name in SCHEMAS and isinstance(json.loads(call.function.arguments), dict)


def test_n_choices_each_make_their_own_call(client: openai.OpenAI) -> None:
    resp = ask(client, tool_choice="required", parallel_tool_calls=False, n=2, seed=7, temperature=1.0)
    assert sorted(c.index for c in resp.choices) == [0, 1]
    for choice in resp.choices:
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls
        assert_call(call)
    first, second = (c.message.tool_calls[0].id for c in resp.choices)
    assert first != second


# ----- streams ---------------------------------------------------------------------------------------
def test_streamed_call_sends_the_head_once_then_argument_fragments(client: openai.OpenAI) -> None:
    full = ask(client, tool_choice="required", parallel_tool_calls=False, temperature=0)
    [expected] = full.choices[0].message.tool_calls
    chunks = list(
        ask(
            client,
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content is None  # a choice that begins with a call, as OpenAI's
    assert full.choices[0].message.content is None
    fragments = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    head, *rest = fragments
    assert head.index == 0 and head.type == "function"
    assert head.id and head.id.startswith("call_")
    assert head.function is not None and head.function.name == expected.function.name
    assert rest
    for fragment in rest:
        assert fragment.index == 0 and fragment.id is None and fragment.type is None
        assert fragment.function is not None and fragment.function.name is None
    arguments = "".join((f.function.arguments or "") for f in fragments if f.function is not None)
    assert arguments == expected.function.arguments
    assert_arguments_fit(head.function.name, arguments)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_the_sdks_stream_state_accumulates_the_call(client: openai.OpenAI) -> None:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState(input_tools=TOOLS)
    for chunk in ask(client, tool_choice="required", parallel_tool_calls=False, stream=True):
        state.handle_chunk(chunk)
    final = state.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    [call] = final.choices[0].message.tool_calls or []
    assert_call(call)


def test_the_sdks_stream_helper_gives_argument_events_and_parsed_arguments(client: openai.OpenAI) -> None:
    strict: Any = {**WEATHER, "function": {**WEATHER["function"], "strict": True}}
    deltas: list[Any] = []
    done: list[Any] = []
    with client.chat.completions.stream(
        model=TINY,
        messages=QUESTION,
        tools=[strict],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=200,
    ) as stream:
        for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                deltas.append(event)
            elif event.type == "tool_calls.function.arguments.done":
                done.append(event)
        final = stream.get_final_completion()
    assert deltas and all(e.name == "get_weather" and e.index == 0 for e in deltas)
    assert "".join(e.arguments_delta for e in deltas) == deltas[-1].arguments
    [last] = done
    args = assert_arguments_fit("get_weather", last.arguments)
    assert last.parsed_arguments == args
    [call] = final.choices[0].message.tool_calls or []
    assert call.function.parsed_arguments == args
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.choices[0].message.content is None  # as the whole answer has it


def test_streamed_parallel_calls_are_numbered_and_match_the_whole_answer(client: openai.OpenAI) -> None:
    for seed in range(5):
        args: dict[str, Any] = {"tool_choice": "required", "seed": seed, "temperature": 1.0}
        whole = ask(client, **args).choices[0]
        state: ChatCompletionStreamState[Any] = ChatCompletionStreamState(input_tools=TOOLS)
        heads: list[int] = []
        for chunk in ask(client, **args, stream=True):
            state.handle_chunk(chunk)
            for call in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
                if call.id is not None:
                    heads.append(call.index)
        # (get_final_completion() refuses an answer cut by max_tokens; the snapshot holds it all the same)
        streamed = state.current_completion_snapshot.choices[0]
        calls = streamed.message.tool_calls or []
        assert heads == list(range(len(calls)))  # each call's head once, in order
        assert streamed.finish_reason == whole.finish_reason
        assert [(c.function.name, c.function.arguments) for c in calls] == [
            (c.function.name, c.function.arguments) for c in whole.message.tool_calls
        ]
        if len(calls) > 1:
            break
    else:
        pytest.fail("no seed gave parallel calls")


def test_streamed_n_choices_number_their_calls_per_choice(client: openai.OpenAI) -> None:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState(input_tools=TOOLS)
    heads: dict[int, int] = {}
    stream = ask(client, tool_choice="required", parallel_tool_calls=False, n=2, stream=True, seed=3)
    for chunk in stream:
        state.handle_chunk(chunk)
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                assert call.index == 0
                heads[choice.index] = heads.get(choice.index, 0) + (call.id is not None)
    assert heads == {0: 1, 1: 1}
    final = state.get_final_completion()
    for choice in final.choices:
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls or []
        assert_call(call)


# ----- no calls, and calls in the history ------------------------------------------------------------
def test_tool_choice_none_answers_text_without_calls(client: openai.OpenAI) -> None:
    resp = ask(client, tool_choice="none", max_tokens=16, logit_bias={"2": -100})
    [choice] = resp.choices
    assert choice.message.tool_calls is None
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"
    chunks = list(ask(client, tool_choice="none", max_tokens=16, stream=True))
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)


def test_a_history_with_a_call_and_its_result_is_prompted(client: openai.OpenAI) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"town": "Oslo", "days": 1, "metric": true}'},
    }
    history: Any = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 18 degrees."},
    ]
    without = ask(client, max_tokens=1)
    with_history = ask(client, messages=history, max_tokens=1)
    assert with_history.choices[0].message.content is not None
    assert without.usage is not None and with_history.usage is not None
    # Every byte of the call and the result reaches the prompt (one token per byte).
    added = (
        len("get_weather") + len('{"town": "Oslo", "days": 1, "metric": true}') + len("Sunny, 18 degrees.")
    )
    assert with_history.usage.prompt_tokens >= without.usage.prompt_tokens + added
    streamed = list(ask(client, messages=history, max_tokens=2, stream=True))
    assert streamed[-1].choices[0].finish_reason is not None


def test_the_model_can_be_asked_to_call_again_after_a_result(client: openai.OpenAI) -> None:
    history: Any = [
        *QUESTION,
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"zone":1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "12:00"},
    ]
    resp = ask(client, messages=history, tool_choice="required", parallel_tool_calls=False)
    assert resp.choices[0].finish_reason == "tool_calls"
    [call] = resp.choices[0].message.tool_calls
    assert_call(call)
    assert call.id != "call_a"


# ----- errors ----------------------------------------------------------------------------------------
def test_a_named_tool_that_is_not_in_tools_is_a_400(client: openai.OpenAI, server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, tool_choice={"type": "function", "function": {"name": "get_news"}})
    assert caught.value.param == "tool_choice"
    assert "get_news" in caught.value.message
    named = {"type": "function", "function": {"name": "get_news"}}
    error = error_of(post(server, tools=TOOLS, tool_choice=named, stream=True))
    assert error["param"] == "tool_choice"


@pytest.mark.parametrize("tool_choice", ["sometimes", {"type": "function"}, 3])
def test_a_malformed_tool_choice_is_a_400_naming_tool_choice(server: LiveServer, tool_choice: Any) -> None:
    error = error_of(post(server, tools=TOOLS, tool_choice=tool_choice))
    assert error["param"] == "tool_choice", error


def test_tool_choice_required_without_tools_is_a_400(server: LiveServer) -> None:
    assert error_of(post(server, tool_choice="required"))["param"] == "tool_choice"


@pytest.mark.parametrize("name", ["get weather", "", "x" * 65, "wetter/morgen"])
def test_an_invalid_tool_name_is_a_400(server: LiveServer, name: str) -> None:
    tool = {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    error = error_of(post(server, tools=[tool]))
    assert error["param"].startswith("tools")


def test_a_tool_name_used_twice_is_a_400(server: LiveServer) -> None:
    assert error_of(post(server, tools=[TIME, TIME]))["param"].startswith("tools")


@pytest.mark.parametrize(
    "parameters",
    [{"type": "string"}, {"type": "array", "items": {"type": "integer"}}, ["town"], "object", 3],
    ids=["string-schema", "array-schema", "a-list", "a-string", "a-number"],
)
def test_parameters_that_are_not_an_object_schema_are_a_400(server: LiveServer, parameters: Any) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    error = error_of(post(server, tools=[tool], tool_choice="required"))
    assert error["param"].startswith("tools"), error
    error = error_of(post(server, tools=[tool], stream=True))  # refused before the stream starts
    assert error["param"].startswith("tools"), error


@pytest.mark.parametrize(
    "properties",
    [
        {"town": {"type": "nonsense"}},
        {"town": {"$ref": "#/$defs/missing"}},
        {"town": {"type": "string", "pattern": "(((("}},
    ],
    ids=["unknown-type", "dangling-ref", "bad-pattern"],
)
def test_a_schema_the_grammar_cannot_enforce_is_a_400(server: LiveServer, properties: Any) -> None:
    tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": properties}},
    }
    error = error_of(post(server, tools=[tool], tool_choice="required"))
    assert error["param"].startswith("tools") and "schema" in error["message"], error


def test_a_tool_message_without_tool_call_id_is_a_400(server: LiveServer) -> None:
    messages = [*QUESTION, {"role": "tool", "content": "Sunny."}]
    error = error_of(post(server, messages=messages, tools=TOOLS))
    assert error["param"] == "messages" and "tool_call_id" in error["message"]


def test_a_tool_message_answering_no_earlier_call_is_a_400(server: LiveServer) -> None:
    messages = [*QUESTION, {"role": "tool", "tool_call_id": "call_nobody_made", "content": "Sunny."}]
    error = error_of(post(server, messages=messages, tools=TOOLS))
    assert error["param"] == "messages" and "call_nobody_made" in error["message"]


def test_tool_calls_on_a_user_message_are_a_400(server: LiveServer) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    error = error_of(post(server, messages=[{"role": "user", "content": "hi", "tool_calls": [call]}]))
    assert error["param"] == "messages"


def test_a_tool_without_type_is_a_400(server: LiveServer) -> None:
    error = error_of(post(server, tools=[{"function": {"name": "f"}}]))
    assert error["param"] == "tools[0].type"  # OpenAI's form of the path
    assert error["code"] == "missing_required_parameter"
    assert error["message"] == "Missing required parameter: 'tools[0].type'."


def test_a_tool_without_parameters_takes_no_arguments(client: openai.OpenAI) -> None:
    ping: Any = {"type": "function", "function": {"name": "ping"}}
    resp = ask(client, tools=[ping], tool_choice="required", parallel_tool_calls=False)
    [call] = resp.choices[0].message.tool_calls
    assert call.function.name == "ping" and json.loads(call.function.arguments) == {}
