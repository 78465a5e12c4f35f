"""Parts of OpenAI's chat and completions reference beyond the common path, spoken to by the official
``openai`` client over real loopback HTTP: ``allowed_tools``, the deprecated ``functions`` /
``function_call`` / ``function`` role, assistant ``refusal`` parts, ``top_p: 0`` and a list of prompts
on ``/v1/completions``. The tiny random-weight model answers; the assertions are about shapes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TINY, LiveServer
from tests.doors.openai.test_tool_calls import QUESTION, TIME, TOOLS, WEATHER, assert_call, error_of, post


def only(name: str) -> Any:
    return {"type": "function", "function": {"name": name}}


# ----- tool_choice: allowed_tools --------------------------------------------------------------------
def test_allowed_tools_required_calls_only_a_tool_it_allows(client: openai.OpenAI) -> None:
    choice: Any = {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "required", "tools": [only("get_time")]},
    }
    for seed in range(3):
        resp = client.chat.completions.create(
            model=TINY,
            messages=QUESTION,
            tools=TOOLS,
            tool_choice=choice,
            parallel_tool_calls=False,
            max_tokens=200,
            seed=seed,
            temperature=1.0,
        )
        assert resp.choices[0].finish_reason == "tool_calls"
        [call] = resp.choices[0].message.tool_calls or []
        assert_call(call, {"get_time"})


def test_allowed_tools_auto_is_accepted(client: openai.OpenAI) -> None:
    choice: Any = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [only("get_weather")]}}
    resp = client.chat.completions.create(
        model=TINY, messages=QUESTION, tools=TOOLS, tool_choice=choice, max_tokens=4
    )
    assert resp.choices[0].finish_reason in ("length", "stop", "tool_calls")


@pytest.mark.parametrize(
    "allowed",
    [
        {"mode": "required", "tools": [only("get_news")]},  # not in tools
        {"mode": "required", "tools": []},
        {"mode": "sometimes", "tools": [only("get_time")]},
    ],
)
def test_a_bad_allowed_tools_choice_is_a_400_naming_tool_choice(server: LiveServer, allowed: Any) -> None:
    error = error_of(
        post(server, tools=TOOLS, tool_choice={"type": "allowed_tools", "allowed_tools": allowed})
    )
    assert error["param"] == "tool_choice", error


# ----- the deprecated functions API ------------------------------------------------------------------
FUNCTIONS = [WEATHER["function"], TIME["function"]]


def test_functions_with_a_named_function_call_answer_with_function_call(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=TINY,
        messages=QUESTION,
        functions=FUNCTIONS,
        function_call={"name": "get_weather"},
        max_tokens=200,
    )
    [choice] = resp.choices
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None and not choice.message.content
    fc = choice.message.function_call
    assert fc is not None and fc.name == "get_weather"
    args = json.loads(fc.arguments)
    assert {"town", "days", "metric"} <= set(args)


def test_functions_stream_as_function_call_deltas(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=TINY,
            messages=QUESTION,
            functions=FUNCTIONS,
            function_call={"name": "get_time"},
            max_tokens=200,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [d.function_call for d in deltas if d.function_call is not None]
    assert calls and calls[0].name == "get_time"
    assert all(c.name is None for c in calls[1:])
    assert isinstance(json.loads("".join(c.arguments or "" for c in calls)), dict)
    assert not any(d.tool_calls for d in deltas)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "function_call"
    ]


def test_a_function_message_answers_the_assistants_function_call(client: openai.OpenAI) -> None:
    history: Any = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_time", "arguments": '{"zone":1}'},
        },
        {"role": "function", "name": "get_time", "content": "It is 12:00 in zone 1."},
    ]
    without = client.chat.completions.create(model=TINY, messages=QUESTION, functions=FUNCTIONS, max_tokens=1)
    resp = client.chat.completions.create(model=TINY, messages=history, functions=FUNCTIONS, max_tokens=1)
    assert without.usage is not None and resp.usage is not None
    added = len("get_time") + len('{"zone":1}') + len("It is 12:00 in zone 1.")  # a token per byte
    assert resp.usage.prompt_tokens >= without.usage.prompt_tokens + added


def test_a_function_message_with_no_call_before_it_is_a_400(server: LiveServer) -> None:
    history = [*QUESTION, {"role": "function", "name": "get_time", "content": "12:00"}]
    assert error_of(post(server, messages=history))["param"] == "messages"


def test_functions_and_tools_together_are_a_400(server: LiveServer) -> None:
    assert error_of(post(server, tools=TOOLS, functions=FUNCTIONS))["param"] == "functions"


# ----- assistant refusals in the history -------------------------------------------------------------
def test_an_assistant_refusal_part_is_prompted_as_the_assistants_words(client: openai.OpenAI) -> None:
    refusal = "I can't help with that request."
    history: Any = [
        *QUESTION,
        {"role": "assistant", "content": [{"type": "refusal", "refusal": refusal}]},
        {"role": "user", "content": "Why not?"},
    ]
    plain: Any = [
        *QUESTION,
        {"role": "assistant", "content": refusal},
        {"role": "user", "content": "Why not?"},
    ]
    a = client.chat.completions.create(model=TINY, messages=history, max_tokens=1)
    b = client.chat.completions.create(model=TINY, messages=plain, max_tokens=1)
    assert a.usage is not None and b.usage is not None
    assert a.usage.prompt_tokens == b.usage.prompt_tokens
    # The field form an SDK echoes back from a previous answer, too.
    field: Any = [*QUESTION, {"role": "assistant", "content": None, "refusal": refusal}, plain[-1]]
    c = client.chat.completions.create(model=TINY, messages=field, max_tokens=1)
    assert c.usage is not None and c.usage.prompt_tokens == b.usage.prompt_tokens


def test_a_refusal_part_in_a_user_message_is_a_400(server: LiveServer) -> None:
    messages = [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}]
    assert error_of(post(server, messages=messages))["param"] == "messages"


def test_top_p_zero_is_accepted_as_the_reference_allows(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=TINY, messages=QUESTION, top_p=0, max_tokens=3)
    assert resp.choices[0].finish_reason in ("length", "stop")


# ----- /v1/completions with a list of prompts --------------------------------------------------------
def test_a_list_of_prompts_answers_each_in_order_times_n(client: openai.OpenAI) -> None:
    prompts = ["Once upon a time", "The capital of France", "def fib(n):"]
    resp = client.completions.create(model=TINY, prompt=prompts, max_tokens=3, n=2, seed=1, temperature=0)
    assert [c.index for c in resp.choices] == list(range(6))
    assert resp.usage is not None and resp.usage.completion_tokens <= 6 * 3
    for k, prompt in enumerate(prompts):  # prompt k's answers are choices 2k and 2k+1
        one = client.completions.create(model=TINY, prompt=prompt, max_tokens=3, temperature=0)
        assert resp.choices[2 * k].text == one.choices[0].text
    single = [client.completions.create(model=TINY, prompt=p, max_tokens=3) for p in prompts]
    assert resp.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in single if s.usage)


def test_a_list_of_token_prompts_is_answered_like_a_list_of_strings(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=TINY, prompt=[[72, 105], [79, 107, 33]], max_tokens=2)
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.usage is not None and resp.usage.prompt_tokens >= 5


def test_a_list_of_prompts_streams_each_choice_to_its_end(client: openai.OpenAI) -> None:
    prompts = ["Once upon a time", "The capital of France"]
    chunks = list(
        client.completions.create(
            model=TINY,
            prompt=prompts,
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts: dict[int, str] = {}
    finished = []
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finished.append(c.index)
    assert sorted(finished) == [0, 1]
    whole = client.completions.create(model=TINY, prompt=prompts, max_tokens=4, temperature=0)
    assert texts == {c.index: c.text for c in whole.choices}
    usage = chunks[-1].usage
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_an_empty_or_oversized_list_of_prompts_is_a_400(server: LiveServer) -> None:
    for prompt in ([], ["x"] * 65):
        r = httpx.post(
            f"{server.base_url}/v1/completions", json={"model": TINY, "prompt": prompt, "max_tokens": 1}
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "prompt"


def test_one_failing_prompt_fails_the_request_with_the_dialects_error(server: LiveServer) -> None:
    # A prompt longer than the context window is a client mistake: 400, and no answer for the others.
    r = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": TINY, "prompt": ["short", "x" * 5000], "max_tokens": 1},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"}
