"""Up-front checks of a request's tools and tool choice: bad input is a 400 before anything runs."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from llmhost.core.types import Tool, ToolChoice
from llmhost.errors import RequestError
from llmhost.toolcalls.grammar import arguments_grammar, grammar_parses

__all__ = ["enforceable", "validate_tools"]

_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def validate_tools(tools: Sequence[Tool], choice: ToolChoice) -> None:
    """Raise :class:`~llmhost.errors.RequestError` (``param`` ``tools`` or ``tool_choice``) unless every
    tool has a valid, unique name (OpenAI's ``^[a-zA-Z0-9_-]{1,64}$``) and parameters that are a JSON
    schema of an object the grammar converter handles, and ``choice`` fits the tools (``required`` or a
    named tool need tools; the named tool must be one of them)."""
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool.name, str) or not _NAME.fullmatch(tool.name):
            raise RequestError(
                f"{where}.function.name {tool.name!r} is invalid: a tool name must be 1 to 64 letters, "
                "digits, underscores or dashes",
                param="tools",
            )
        if tool.name in seen:
            raise RequestError(f"{where}: the tool name {tool.name!r} is used twice", param="tools")
        seen.add(tool.name)
        _check_parameters(tool, where)
    if choice.mode in ("required", "tool") and not tools:
        raise RequestError(f"tool_choice {_describe(choice)} needs at least one tool in tools", "tool_choice")
    if choice.mode == "tool":
        if not choice.name:
            raise RequestError("tool_choice names no function", param="tool_choice")
        if choice.name not in seen:
            raise RequestError(
                f"tool_choice names the function {choice.name!r}, which is not in tools", param="tool_choice"
            )


def enforceable(tool: Tool) -> bool:
    """Whether ``validate_tools`` takes this tool (a valid name, parameters the grammar handles): what
    an agent's loop offers of the tools an MCP server lists."""
    try:
        validate_tools([tool], ToolChoice())
    except RequestError:
        return False
    return True


def _describe(choice: ToolChoice) -> str:
    return f"'{choice.name}'" if choice.mode == "tool" else f"'{choice.mode}'"


def _check_parameters(tool: Tool, where: str) -> None:
    params = tool.parameters
    if not isinstance(params, dict):
        raise RequestError(f"{where}.function.parameters must be a JSON schema object", param="tools")
    kind = params.get("type", "object")
    if kind != "object":
        raise RequestError(
            f"{where}.function.parameters must be a JSON schema of type 'object', not {kind!r}", param="tools"
        )
    if "properties" in params and not isinstance(params["properties"], dict):
        raise RequestError(f"{where}.function.parameters.properties must be an object", param="tools")
    try:
        json.dumps(params)
        grammar = arguments_grammar(params)
    except Exception as exc:  # the converter raises assorted errors (AssertionError, KeyError, ...)
        raise RequestError(
            f"{where}.function.parameters is a JSON schema llmhost cannot enforce: {_reason(exc)}",
            param="tools",
        ) from exc
    if not grammar_parses(grammar):
        raise RequestError(
            f"{where}.function.parameters is a JSON schema llmhost cannot enforce", param="tools"
        )


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text[:200] if text else type(exc).__name__
