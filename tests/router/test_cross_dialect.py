"""Every door over every provider: a request in one dialect answered by a backend that speaks another.

Two real llmhost servers on loopback: the *upstream* serves the tiny local model; the *gateway* has no
model of its own and a config file that routes ``remote`` to the upstream as an OpenAI-compatible
provider (``[providers.up] type = "openai"``). Through the gateway, the OpenAI, Responses and Ollama
doors (and the Anthropic door, spoken to by the ``anthropic`` client) are all answered by the upstream:
``X-LLMHost-Target`` names ``up/tiny``. The reverse: a gateway whose route ``claude`` goes to an
Anthropic-dialect provider (a loopback server speaking the Messages API, standing in for the paid one)
answers OpenAI-door and Ollama-door requests, streamed and not, tool calls included.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from llmhost.config import load_settings
from llmhost.service import Service
from tests.conftest import TINY, LiveServer, start_server
from tests.providers.conftest import ANTHROPIC_KEY
from tests.providers.wire_servers import anthropic_app

TARGET = f"up/{TINY}"
CLAUDE = "claude-echo-1"
EOS = "2"  # the tiny model's end-of-generation token: biased away, answers run to max_tokens
HI: Any = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def upstream(make_server: Callable[..., LiveServer]) -> LiveServer:
    """llmhost A: the tiny local model, wide enough for a prompt that lists tools."""
    return make_server(engine={"n_ctx": 2048})


def gateway_config(path: Path, provider: str) -> Path:
    path.write_text(f'default_model = ""\n\n{provider}', encoding="utf-8")
    return path


@pytest.fixture
def gateway(tmp_path: Path, upstream: LiveServer) -> Iterator[tuple[LiveServer, Service]]:
    """llmhost B: no local model, ``remote`` routed to A as an OpenAI-compatible provider."""
    config = gateway_config(
        tmp_path / "gateway.toml",
        f"""[providers.up]
type = "openai"
base_url = "{upstream.base_url}/v1"
health_interval = 0

[routes.remote]
targets = [{{ provider = "up", model = "{TINY}" }}]
retries = 0
""",
    )
    settings = load_settings(config, data_dir=tmp_path / "gateway")
    service = Service(settings)
    live = start_server(settings, service)
    yield live, service
    live.stop()
    service.close()


@pytest.fixture
def claude_upstream() -> Iterator[LiveServer]:
    live = LiveServer(anthropic_app(ANTHROPIC_KEY)).start(wait_ready=False)
    yield live
    live.stop()


@pytest.fixture
def claude_gateway(tmp_path: Path, claude_upstream: LiveServer) -> Iterator[tuple[LiveServer, Service]]:
    """llmhost B again, its route ``claude`` going to an Anthropic-dialect provider."""
    config = gateway_config(
        tmp_path / "claude.toml",
        f"""[providers.anthropic_up]
type = "anthropic"
base_url = "{claude_upstream.base_url}"
api_key = "{ANTHROPIC_KEY}"
health_interval = 0

[routes.claude]
targets = [{{ provider = "anthropic_up", model = "{CLAUDE}" }}]
retries = 0
""",
    )
    settings = load_settings(config, data_dir=tmp_path / "claude-gateway")
    service = Service(settings)
    live = start_server(settings, service)
    yield live, service
    live.stop()
    service.close()


def sse_payloads(response: httpx.Response) -> list[Any]:
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def anthropic_client(live: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live.base_url, api_key="unused", max_retries=0)


# ----- any door -> an OpenAI-compatible provider (another llmhost) -----------------------------------
def test_the_openai_door_is_answered_by_the_upstream(
    gateway: tuple[LiveServer, Service], openai_client: Callable[..., openai.OpenAI]
) -> None:
    live, _ = gateway
    raw = openai_client(live).chat.completions.with_raw_response.create(
        model="remote", messages=HI, max_tokens=6, logit_bias={EOS: -100}
    )
    assert raw.headers["x-llmhost-target"] == TARGET
    answer = raw.parse()
    assert answer.model == "remote"
    assert answer.choices[0].message.content and answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 6

    body = {"model": "remote", "messages": HI, "max_tokens": 6, "stream": True, "logit_bias": {EOS: -100}}
    streamed = httpx.post(f"{live.base_url}/v1/chat/completions", json=body, timeout=60)
    assert streamed.status_code == 200 and streamed.headers["x-llmhost-target"] == TARGET
    chunks = sse_payloads(streamed)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == [
        "length"
    ]

    completion = openai_client(live).completions.with_raw_response.create(
        model="remote", prompt="Once", max_tokens=4, logit_bias={EOS: -100}
    )
    assert completion.headers["x-llmhost-target"] == TARGET
    assert completion.parse().choices[0].finish_reason == "length"


def test_a_forced_tool_call_made_upstream_comes_back_through_the_gateway(
    gateway: tuple[LiveServer, Service], openai_client: Callable[..., openai.OpenAI]
) -> None:
    live, _ = gateway
    tool: Any = {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "integer"}},
                "required": ["zone"],
            },
        },
    }
    client = openai_client(live)
    args: dict[str, Any] = {
        "model": "remote",
        "messages": HI,
        "tools": [tool],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 200,
        "temperature": 0,
    }
    answer = client.chat.completions.create(**args)
    assert answer.choices[0].finish_reason == "tool_calls"
    [call] = answer.choices[0].message.tool_calls or []
    assert call.function.name == "get_time" and isinstance(json.loads(call.function.arguments)["zone"], int)

    fragments = [
        f
        for chunk in client.chat.completions.create(**args, stream=True)
        if chunk.choices
        for f in chunk.choices[0].delta.tool_calls or ()
    ]
    assert fragments[0].id and fragments[0].function is not None
    assert fragments[0].function.name == "get_time"
    streamed = "".join(f.function.arguments or "" for f in fragments if f.function is not None)
    assert json.loads(streamed) == json.loads(call.function.arguments)


def test_the_responses_door_is_answered_by_the_upstream(
    gateway: tuple[LiveServer, Service], openai_client: Callable[..., openai.OpenAI]
) -> None:
    live, _ = gateway
    # The Responses API has no logit_bias to ban EOS: greedy decoding makes the answer the same every
    # run (a sampled one is empty whenever the random model picks EOS first).
    raw = openai_client(live).responses.with_raw_response.create(
        model="remote", input="Say hello", max_output_tokens=6, temperature=0
    )
    assert raw.headers["x-llmhost-target"] == TARGET
    response = raw.parse()
    assert response.model == "remote" and response.output_text
    assert response.usage is not None and response.usage.output_tokens <= 6

    events = list(
        openai_client(live).responses.create(
            model="remote", input="Say hello", max_output_tokens=6, temperature=0, stream=True
        )
    )
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta")


def test_the_ollama_door_is_answered_by_the_upstream(gateway: tuple[LiveServer, Service]) -> None:
    live, _ = gateway
    client = ollama.Client(host=live.base_url, timeout=60)
    options = {"num_predict": 5, "seed": 1}
    chat = client.chat(model="remote", messages=HI, options=options)
    assert chat.model == "remote" and chat.message.role == "assistant" and chat.message.content
    assert chat.done and chat.eval_count == 5 and chat.done_reason == "length"
    assert chat.prompt_eval_count

    chunks = list(client.chat(model="remote", messages=HI, options=options, stream=True))
    assert [c.done for c in chunks].count(True) == 1 and chunks[-1].done
    assert "".join(c.message.content or "" for c in chunks)

    generated = client.generate(model="remote", prompt="Once upon", options=options)
    assert generated.response and generated.done and generated.eval_count == 5
    assert generated.context is None  # an OpenAI-compatible API has no token ids to give
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="remote", prompt="and then?", context=[1, 2, 3])
    assert err.value.status_code == 400 and "context" in err.value.error

    body = {"model": "remote", "messages": HI, "options": options, "stream": False}
    raw = httpx.post(f"{live.base_url}/api/chat", json=body, timeout=60)
    assert raw.status_code == 200 and raw.headers["x-llmhost-target"] == TARGET
    streamed = httpx.post(f"{live.base_url}/api/chat", json={**body, "stream": True}, timeout=60)
    assert streamed.status_code == 200 and streamed.headers["x-llmhost-target"] == TARGET
    lines = [json.loads(line) for line in streamed.text.splitlines() if line]
    assert lines[-1]["done"] is True


def test_the_anthropic_door_is_answered_by_the_upstream(gateway: tuple[LiveServer, Service]) -> None:
    live, _ = gateway
    client = anthropic_client(live)
    raw = client.messages.with_raw_response.create(model="remote", max_tokens=6, messages=HI)
    assert raw.headers["x-llmhost-target"] == TARGET
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.content and message.content[0].type == "text"
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.output_tokens <= 6 and message.usage.input_tokens > 0

    with client.messages.stream(model="remote", max_tokens=6, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert text == "".join(b.text for b in final.content if b.type == "text")


def test_an_anthropic_forced_tool_use_is_made_upstream(gateway: tuple[LiveServer, Service]) -> None:
    live, _ = gateway
    tool: Any = {
        "name": "get_time",
        "description": "The time in a zone.",
        "input_schema": {"type": "object", "properties": {"zone": {"type": "integer"}}, "required": ["zone"]},
    }
    message = anthropic_client(live).messages.create(
        model="remote",
        max_tokens=200,
        messages=HI,
        tools=[tool],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    assert message.stop_reason == "tool_use"
    [use] = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "get_time" and use.id
    assert isinstance(use.input, dict) and isinstance(use.input["zone"], int)


def test_usage_rows_on_the_gateway_record_the_door(
    gateway: tuple[LiveServer, Service], openai_client: Callable[..., openai.OpenAI]
) -> None:
    live, service = gateway
    # A random-weight model may end on its first token, so each row must match what its client was told.
    chat = openai_client(live).chat.completions.create(model="remote", messages=HI, max_tokens=2)
    response = openai_client(live).responses.create(model="remote", input="hi", max_output_tokens=2)
    ollama_chat = ollama.Client(host=live.base_url).chat(
        model="remote", messages=HI, options={"num_predict": 2}
    )
    generated = ollama.Client(host=live.base_url).generate(
        model="remote", prompt="hi", options={"num_predict": 2}
    )
    message = anthropic_client(live).messages.create(model="remote", max_tokens=2, messages=HI)
    assert chat.usage and response.usage
    told = {
        "openai": (chat.usage.prompt_tokens, chat.usage.completion_tokens),
        "responses": (response.usage.input_tokens, response.usage.output_tokens),
        "ollama": (
            (ollama_chat.prompt_eval_count or 0) + (generated.prompt_eval_count or 0),
            (ollama_chat.eval_count or 0) + (generated.eval_count or 0),
        ),
        # Anthropic's input_tokens leaves out the prompt tokens read from the prefix cache.
        "anthropic": (
            message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0),
            message.usage.output_tokens,
        ),
    }
    doors = {"openai": 1, "responses": 1, "ollama": 2, "anthropic": 1}
    service.usage.flush()
    rows = {row["door"]: row for row in service.usage.summary("door")}
    assert {door: row["requests"] for door, row in rows.items()} == doors
    for door, row in rows.items():
        assert row["ok"] == row["requests"] and row["prompt_tokens"] > 0
        assert (row["prompt_tokens"], row["completion_tokens"]) == told[door]
    [target] = service.usage.summary("target")
    assert target["target"] == TARGET and target["requests"] == sum(doors.values())


# ----- the OpenAI and Ollama doors -> an Anthropic-dialect provider ---------------------------------
def test_the_openai_door_is_answered_by_an_anthropic_provider(
    claude_gateway: tuple[LiveServer, Service], openai_client: Callable[..., openai.OpenAI]
) -> None:
    live, _ = claude_gateway
    client = openai_client(live)
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=messages, max_tokens=50)
    assert raw.headers["x-llmhost-target"] == f"anthropic_up/{CLAUDE}"
    answer = raw.parse()
    assert answer.choices[0].message.content == "echo: hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens == 3

    cut = client.chat.completions.create(model="claude", messages=messages, max_tokens=2)
    assert cut.choices[0].message.content == "echo: hello" and cut.choices[0].finish_reason == "length"

    chunks = list(
        client.chat.completions.create(
            model="claude",
            messages=messages,
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_an_anthropic_tool_use_is_an_openai_tool_call(
    claude_gateway: tuple[LiveServer, Service], openai_client: Callable[..., openai.OpenAI]
) -> None:
    live, _ = claude_gateway
    client = openai_client(live)
    tool: Any = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
            },
        },
    }
    question: Any = [{"role": "user", "content": "please lookup this"}]
    answer = client.chat.completions.create(model="claude", messages=question, tools=[tool], max_tokens=50)
    assert answer.choices[0].finish_reason == "tool_calls"
    [call] = answer.choices[0].message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {
        "text": "please lookup this"
    }

    fragments = [
        f
        for chunk in client.chat.completions.create(
            model="claude", messages=question, tools=[tool], max_tokens=50, stream=True
        )
        if chunk.choices
        for f in chunk.choices[0].delta.tool_calls or ()
    ]
    assert fragments[0].id and fragments[0].function is not None and fragments[0].function.name == "lookup"
    arguments = "".join(f.function.arguments or "" for f in fragments if f.function is not None)
    assert json.loads(arguments) == {"text": "please lookup this"}

    # The call and its result go back upstream as Anthropic's tool_use / tool_result blocks.
    history: Any = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "found it"},
    ]
    after = client.chat.completions.create(model="claude", messages=history, tools=[tool], max_tokens=50)
    assert after.choices[0].message.content == "echo: found it"


def test_the_ollama_door_is_answered_by_an_anthropic_provider(
    claude_gateway: tuple[LiveServer, Service],
) -> None:
    live, _ = claude_gateway
    client = ollama.Client(host=live.base_url, timeout=60)
    messages: Any = [{"role": "user", "content": "hello there"}]
    chat = client.chat(model="claude", messages=messages, options={"num_predict": 50})
    assert chat.message.content == "echo: hello there" and chat.done_reason == "stop"
    assert chat.eval_count == 3

    chunks = list(client.chat(model="claude", messages=messages, stream=True))
    assert "".join(c.message.content or "" for c in chunks) == "echo: hello there"
    assert chunks[-1].done and chunks[-1].done_reason == "stop"

    cut = client.chat(model="claude", messages=messages, options={"num_predict": 2})
    assert cut.message.content == "echo: hello" and cut.done_reason == "length"

    def lookup(text: str) -> str:
        """Look a text up.

        Args:
          text: what to look up
        """
        return text

    called = client.chat(
        model="claude", messages=[{"role": "user", "content": "lookup this"}], tools=[lookup]
    )
    [call] = called.message.tool_calls or []
    assert call.function.name == "lookup" and call.function.arguments == {"text": "lookup this"}

    raw = httpx.post(
        f"{live.base_url}/api/chat",
        json={"model": "claude", "messages": messages, "stream": False},
        timeout=60,
    )
    assert raw.status_code == 200 and raw.headers["x-llmhost-target"] == f"anthropic_up/{CLAUDE}"
