"""validate_tools: bad tools or a tool_choice that does not fit them are a 400 on the right field."""

from __future__ import annotations

from typing import Any

import pytest

from llmhost.core.types import Tool, ToolChoice
from llmhost.errors import RequestError, classify
from llmhost.toolcalls import validate_tools

WEATHER = Tool(
    "get_weather",
    "Current weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def _error(tools: list[Tool], choice: ToolChoice = ToolChoice()) -> RequestError:
    with pytest.raises(RequestError) as info:
        validate_tools(tools, choice)
    return info.value


@pytest.mark.parametrize(
    "choice",
    [ToolChoice("auto"), ToolChoice("none"), ToolChoice("required"), ToolChoice("tool", "get_weather")],
)
def test_valid_tools_and_choices_pass(choice: ToolChoice) -> None:
    validate_tools([WEATHER, Tool("ping")], choice)


def test_no_tools_with_auto_or_none_is_fine() -> None:
    validate_tools([], ToolChoice("auto"))
    validate_tools([], ToolChoice("none"))


@pytest.mark.parametrize("name", ["", "has space", "dots.not.allowed", "x" * 65, "naïve", "a\n"])
def test_invalid_names_are_refused(name: str) -> None:
    error = _error([Tool(name)])
    assert error.param == "tools"
    assert "tools[0].function.name" in str(error)


def test_names_of_64_letters_digits_underscores_and_dashes_are_fine() -> None:
    validate_tools([Tool("a" * 64), Tool("A_b-9")], ToolChoice())


def test_a_duplicate_name_is_refused() -> None:
    error = _error([WEATHER, Tool("ping"), Tool("get_weather")])
    assert error.param == "tools"
    assert "tools[2]" in str(error) and "used twice" in str(error)


@pytest.mark.parametrize(
    "parameters",
    [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}},
        {"type": "object", "properties": ["city"]},
        ["not", "a", "schema"],
    ],
)
def test_parameters_must_be_an_object_schema(parameters: Any) -> None:
    error = _error([Tool("f", parameters=parameters)])
    assert error.param == "tools"
    assert "tools[0].function.parameters" in str(error)


@pytest.mark.parametrize(
    "parameters",
    [
        {"type": "object", "properties": {"x": {"type": "no-such-type"}}},
        {"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}},
        {"type": "object", "properties": {"x": {"$ref": "https://example.com/schema.json"}}},
    ],
)
def test_schemas_the_grammar_converter_cannot_handle_are_refused(parameters: dict[str, Any]) -> None:
    error = _error([Tool("f", parameters=parameters)])
    assert error.param == "tools"
    assert "cannot enforce" in str(error)


@pytest.mark.parametrize(
    "parameters",
    [
        {},  # any object
        {"type": "object"},
        {"properties": {"q": {"type": "string"}}},  # "type" left out
        {
            "type": "object",
            "$defs": {"Item": {"type": "object", "properties": {"n": {"type": "integer"}}}},
            "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
        },
        {"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "null"}]}}},
    ],
)
def test_common_object_schemas_are_accepted(parameters: dict[str, Any]) -> None:
    validate_tools([Tool("f", parameters=parameters)], ToolChoice("required"))


@pytest.mark.parametrize("choice", [ToolChoice("required"), ToolChoice("tool", "get_weather")])
def test_a_forced_choice_needs_tools(choice: ToolChoice) -> None:
    error = _error([], choice)
    assert error.param == "tool_choice"
    assert "needs at least one tool" in str(error)


def test_a_named_choice_must_name_one_of_the_tools() -> None:
    error = _error([WEATHER], ToolChoice("tool", "get_time"))
    assert error.param == "tool_choice"
    assert "'get_time'" in str(error) and "not in tools" in str(error)
    assert _error([WEATHER], ToolChoice("tool", None)).param == "tool_choice"


def test_the_errors_are_client_errors() -> None:
    assert classify(_error([Tool("bad name")])).status == 400
    assert classify(_error([WEATHER], ToolChoice("tool", "nope"))).status == 400
