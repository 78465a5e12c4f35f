"""Tool-call grammars: what they accept (checked in llama.cpp's own grammar engine, byte by byte), and
that forced output from a real (tiny, random-weight) model always parses and validates."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from llmhost.core.types import Tool, ToolChoice
from llmhost.engine.async_engine import Engine
from llmhost.engine.runner import LlamaRunner, RunnerConfig
from llmhost.engine.types import GenerationRequest, SamplingParams
from llmhost.toolcalls import (
    ToolCallParser,
    ToolSyntax,
    forced_call_grammar,
    grammar_parses,
    lazy_call_grammar,
    tool_grammar,
    validate_tools,
)
from llmhost.toolcalls.grammar import arguments_grammar
from tests.toolcalls.validator import schema_errors

WEATHER = Tool(
    "get_weather",
    "Current weather",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
    },
)
PING = Tool("ping")
REQUIRED = ToolChoice("required")
EOS = 2


@pytest.fixture(scope="module")
def runner(tiny_model_path: Path) -> Iterator[LlamaRunner]:
    r = LlamaRunner(tiny_model_path, RunnerConfig(n_ctx_slot=1024, n_slots=1, n_batch=64, n_threads=1))
    yield r
    r.close()


def accepts(runner: LlamaRunner, grammar: str, text: str) -> bool:
    """Whether ``grammar`` accepts exactly ``text``: each byte (the tiny vocabulary's byte tokens) is
    checked against the grammar, then the end of generation."""
    sampler = llama_cpp.llama_sampler_init_grammar(runner.vocab.vocab, grammar.encode(), b"root")
    assert sampler, "the grammar does not parse"
    one = (llama_cpp.llama_token_data * 1)()
    arr = llama_cpp.llama_token_data_array(one, 1, -1, False)

    def allowed(token: int) -> bool:
        one[0].id, one[0].logit, one[0].p = token, 1.0, 0.0  # type: ignore[assignment]
        arr.size, arr.selected, arr.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(arr))
        return bool(one[0].logit > -1e30)

    try:
        for byte in text.encode():
            token = 3 + byte  # <0x00> is token 3
            if not allowed(token):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return allowed(EOS)
    finally:
        llama_cpp.llama_sampler_free(sampler)


def call(name: str, args: dict[str, Any], key: str = "arguments") -> str:
    return json.dumps({"name": name, key: args})


# --- what the grammars accept -------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", list(ToolSyntax))
@pytest.mark.parametrize("parallel", [False, True])
def test_every_grammar_parses_in_llama_cpp(syntax: ToolSyntax, parallel: bool) -> None:
    assert grammar_parses(forced_call_grammar([WEATHER, PING], REQUIRED, parallel, syntax))
    assert grammar_parses(lazy_call_grammar([WEATHER, PING], parallel, syntax).grammar)


def hermes(name: str, args: dict[str, Any]) -> str:
    return f"<tool_call>\n{call(name, args)}\n</tool_call>"


def test_hermes_forced_grammar_accepts_one_valid_call_laid_out_as_the_template_writes_it(
    runner: LlamaRunner,
) -> None:
    g = forced_call_grammar([WEATHER, PING], REQUIRED, False, ToolSyntax.HERMES)
    assert accepts(runner, g, hermes("get_weather", {"city": "Paris"}))
    assert accepts(runner, g, hermes("get_weather", {"city": "Oslo", "unit": "c"}))
    assert accepts(runner, g, hermes("ping", {}))
    assert accepts(runner, g, '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>')
    # no token goes to layout: no other whitespace, no other key order
    assert not accepts(runner, g, f"<tool_call>{call('ping', {})}</tool_call>")
    assert not accepts(runner, g, hermes("ping", {}) + "\n")
    assert not accepts(runner, g, '<tool_call>\n{"arguments": {}, "name": "ping"}\n</tool_call>')


@pytest.mark.parametrize(
    "text",
    [
        "Sure, let me check.",
        f"Sure. {hermes('ping', {})}",  # no text around a forced call
        hermes("get_time", {}),  # not a tool
        hermes("get_weather", {}),  # city is required
        hermes("get_weather", {"city": "Paris", "unit": "k"}),  # not in the enum
        hermes("get_weather", {"city": 3}),  # not a string
        hermes("get_weather", {"city": "Paris", "extra": 1}),
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "a\nb"}}\n</tool_call>',  # raw newline
        f"<tool_call>\n{call('ping', {})}",  # unclosed
        hermes("ping", {}) + "\n" + hermes("ping", {}),  # two calls
    ],
)
def test_hermes_forced_grammar_refuses_anything_else(runner: LlamaRunner, text: str) -> None:
    g = forced_call_grammar([WEATHER, PING], REQUIRED, False, ToolSyntax.HERMES)
    assert not accepts(runner, g, text)


def test_escaped_control_characters_are_fine(runner: LlamaRunner) -> None:
    g = forced_call_grammar([WEATHER], REQUIRED, False, ToolSyntax.HERMES)
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "a\\nb\\u00e9"}}\n</tool_call>'
    assert accepts(runner, g, text)


def test_parallel_allows_several_calls(runner: LlamaRunner) -> None:
    g = forced_call_grammar([WEATHER, PING], REQUIRED, True, ToolSyntax.HERMES)
    one, two = hermes("ping", {}), hermes("get_weather", {"city": "Rome"})
    assert accepts(runner, g, one)
    assert accepts(runner, g, f"{one}\n{two}\n{one}")
    assert not accepts(runner, g, f"{one}\nand text")


def test_a_named_choice_permits_only_that_tool(runner: LlamaRunner) -> None:
    g = forced_call_grammar([WEATHER, PING], ToolChoice("tool", "ping"), True, ToolSyntax.HERMES)
    assert accepts(runner, g, hermes("ping", {}))
    assert not accepts(runner, g, hermes("get_weather", {"city": "Rome"}))


def test_llama3_forced_grammar_writes_the_llama_shape(runner: LlamaRunner) -> None:
    g = forced_call_grammar([WEATHER, PING], REQUIRED, True, ToolSyntax.LLAMA3)
    args = {"city": "Paris"}
    assert accepts(runner, g, call("get_weather", args, key="parameters"))
    assert accepts(
        runner, g, call("ping", {}, key="parameters") + "; " + call("get_weather", args, key="parameters")
    )
    assert not accepts(runner, g, call("ping", {}))  # "arguments" is not Llama's key
    assert not accepts(runner, g, hermes("ping", {}))
    single = forced_call_grammar([WEATHER, PING], REQUIRED, False, ToolSyntax.LLAMA3)
    assert not accepts(
        runner, single, call("ping", {}, key="parameters") + "; " + call("ping", {}, key="parameters")
    )


def test_mistral_forced_grammar_writes_an_array_with_optional_ids(runner: LlamaRunner) -> None:
    g = forced_call_grammar([WEATHER, PING], REQUIRED, True, ToolSyntax.MISTRAL)
    assert accepts(runner, g, '[TOOL_CALLS][{"name": "ping", "arguments": {}, "id": "a1B2c3D4e"}]')
    assert accepts(runner, g, f"[TOOL_CALLS][{call('ping', {})}, {call('get_weather', {'city': 'Rome'})}]")
    assert not accepts(runner, g, '[TOOL_CALLS][{"name": "ping", "arguments": {}, "id": "short"}]')
    assert not accepts(runner, g, "[TOOL_CALLS][]")
    single = forced_call_grammar([WEATHER, PING], REQUIRED, False, ToolSyntax.MISTRAL)
    assert not accepts(runner, single, f"[TOOL_CALLS][{call('ping', {})}, {call('ping', {})}]")


def test_lazy_grammars_take_the_shapes_models_write_on_their_own(runner: LlamaRunner) -> None:
    # A lazy grammar takes over text the model already started: it allows a little layout freedom.
    hermes_g = lazy_call_grammar([WEATHER, PING], True, ToolSyntax.HERMES).grammar
    assert accepts(runner, hermes_g, f"<tool_call>{call('ping', {})}</tool_call>")
    assert accepts(runner, hermes_g, '<tool_call>\n{ "name" : "ping", "arguments": {} }\n</tool_call>\n')
    assert not accepts(runner, hermes_g, f"<tool_call>{call('nope', {})}</tool_call>")
    llama_g = lazy_call_grammar([WEATHER, PING], True, ToolSyntax.LLAMA3).grammar
    assert accepts(runner, llama_g, '{"type": "function", "name": "ping", "parameters": {}}')
    assert accepts(runner, llama_g, "<|python_tag|>" + call("ping", {}))
    assert accepts(runner, llama_g, call("ping", {}) + ";\n" + call("ping", {}, key="parameters"))
    mistral_g = lazy_call_grammar([WEATHER, PING], True, ToolSyntax.MISTRAL).grammar
    assert accepts(runner, mistral_g, f"[ {call('ping', {})} ]")  # the marker token may be hidden
    assert accepts(runner, mistral_g, f"[TOOL_CALLS] [{call('ping', {})},\n{call('ping', {})}]")


def test_each_tool_keeps_its_own_definitions(runner: LlamaRunner) -> None:
    # Both tools define #/$defs/Item, differently: neither may borrow the other's.
    a = Tool(
        "add_item",
        parameters={
            "type": "object",
            "$defs": {
                "Item": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
            },
            "properties": {"item": {"$ref": "#/$defs/Item"}},
            "required": ["item"],
        },
    )
    b = Tool(
        "tag",
        parameters={
            "type": "object",
            "$defs": {"Item": {"type": "string"}},
            "properties": {"item": {"$ref": "#/$defs/Item"}},
            "required": ["item"],
        },
    )
    g = forced_call_grammar([a, b], REQUIRED, False, ToolSyntax.HERMES)
    assert accepts(runner, g, hermes("add_item", {"item": {"n": 1}}))
    assert accepts(runner, g, hermes("tag", {"item": "x"}))
    assert not accepts(runner, g, hermes("add_item", {"item": "x"}))
    assert not accepts(runner, g, hermes("tag", {"item": {"n": 1}}))


def test_tool_grammar_follows_the_choice() -> None:
    assert tool_grammar([WEATHER], ToolChoice("none"), True, ToolSyntax.HERMES) is None
    assert tool_grammar([], ToolChoice("auto"), True, ToolSyntax.HERMES) is None
    forced = tool_grammar([WEATHER], REQUIRED, True, ToolSyntax.HERMES)
    assert forced is not None and not forced.lazy and forced.triggers == ()
    auto = tool_grammar([WEATHER], ToolChoice("auto"), True, ToolSyntax.HERMES)
    assert auto is not None and auto.lazy and auto.triggers == ("(<tool_call>)",)
    assert auto.grammar != forced.grammar  # lenient layout (see above)


def test_lazy_triggers_for_llama3_and_mistral_also_catch_a_bare_call_at_the_start() -> None:
    assert lazy_call_grammar([PING], True, ToolSyntax.LLAMA3).triggers == (
        r"(<\|python_tag\|>)",
        r'^\s*(\{\s*(?:"type"\s*:\s*"function"\s*,\s*)?"name"\s*:\s*")',
    )
    assert lazy_call_grammar([PING], True, ToolSyntax.MISTRAL).triggers == (
        r"(\[TOOL_CALLS\])",
        r'^\s*(\[\s*\{\s*"name"\s*:\s*")',
    )


def test_forced_grammar_needs_a_permitted_tool() -> None:
    with pytest.raises(ValueError):
        forced_call_grammar([WEATHER], ToolChoice("tool", "ping"), False, ToolSyntax.HERMES)


# --- forced output of a real model --------------------------------------------------------------------------

SETTINGS = Tool(
    "set_mode",
    "Switch a mode",
    {
        "type": "object",
        "properties": {
            "on": {"type": "boolean"},
            "level": {"enum": [1, 2, 3]},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
        },
        "required": ["on", "level"],
    },
)


@pytest.fixture(scope="module")
def engine(runner: LlamaRunner) -> Iterator[Engine]:
    eng = Engine(runner, max_queue=8, name="tiny")
    eng.start()
    yield eng
    eng.stop()


@pytest.mark.parametrize("syntax", list(ToolSyntax))
@pytest.mark.parametrize("parallel", [False, True])
def test_forced_output_of_a_random_model_always_parses_and_validates(
    engine: Engine, syntax: ToolSyntax, parallel: bool
) -> None:
    tools = [SETTINGS, PING]
    grammar = forced_call_grammar(tools, REQUIRED, parallel, syntax)
    for seed in range(4):
        params = SamplingParams(max_tokens=1000, temperature=1.0, seed=seed, grammar=grammar)
        outputs = list(
            engine.generate_sync(GenerationRequest(f"{syntax}-{parallel}-{seed}", [1, 40, 41], params))
        )
        assert all(out.error is None for out in outputs)
        assert outputs[-1].finish_reason == "stop"  # the grammar ended the output, not max_tokens
        parser = ToolCallParser(syntax, tools, parallel=parallel)
        parser.feed("".join(out.text for out in outputs))
        parser.finish()
        assert parser.content == "" and not parser.truncated
        calls = parser.parsed_calls
        assert calls and (parallel or len(calls) == 1)
        schemas = {tool.name: tool.parameters for tool in tools}
        for tool_call in calls:
            assert schema_errors(schemas[tool_call.name], json.loads(tool_call.arguments)) == []


def test_a_property_with_only_annotations_takes_any_json_value(runner: LlamaRunner) -> None:
    # Claude Code's tools have properties like {"description": "..."} with no type: any value.
    schema = {"type": "object", "properties": {"args": {"description": "anything"}}, "required": ["args"]}
    grammar = arguments_grammar(schema)
    for value in ('"text"', "3", "true", "null", '{"a": [1]}', "[1, 2]"):
        assert accepts(runner, grammar, '{"args": ' + value + "}"), value
    assert not accepts(runner, grammar, '{"other": 1}')
    validate_tools([Tool("run", "", schema)], ToolChoice("required"))
