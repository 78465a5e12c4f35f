"""GBNF grammars that make a model write well-formed tool calls.

``forced_call_grammar`` is for ``tool_choice`` ``required`` or a named tool: the output *is* one call (or,
with ``parallel``, one or more) of a permitted tool, written in the model's syntax, with arguments valid
against the tool's JSON schema -- on any model, base models included. ``lazy_call_grammar`` is for
``auto``: the same calls, but the grammar only takes hold once the text matches one of its trigger
patterns (a call marker), so free text stays free.

Arguments are converted with llama-cpp-python's JSON-schema converter (``llama_cpp.llama_grammar``), the
one ``response_format`` uses, with two fixes: ``$ref`` targets are named after the whole reference, so two
tools that both define ``#/$defs/Item`` keep their own definitions, and strings may not contain raw
control characters, so every argument string is strict JSON.

Known limits of the converter: numeric bounds (``minimum``...), ``uniqueItems`` and ``not`` are not
enforced, and remote ``$ref`` URLs are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import INVALID_RULE_CHARS_RE, BuiltinRule, SchemaConverter

from llmhost.core.types import Tool, ToolChoice
from llmhost.toolcalls.syntax import ToolSyntax

__all__ = [
    "ToolGrammar",
    "arguments_grammar",
    "forced_call_grammar",
    "grammar_parses",
    "json_schema_grammar",
    "lazy_call_grammar",
    "permitted_tools",
    "tool_grammar",
]

# JSON strings without raw control characters (llama-cpp-python's own rule lets them through).
_STRICT_CHAR = BuiltinRule(
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])', []
)
# Whitespace between the parts of a call: a little, never unbounded (a model must not run away in it).
_WS = "[ \\t\\n]{0,4}"
_REGEX_SPECIAL = re.compile(r"[.^$|()*+?\[\]{}\\]")


@dataclass(frozen=True, slots=True)
class ToolGrammar:
    """What a request's sampling needs: ``grammar`` (GBNF, root rule ``root``) and, when ``lazy``, the
    ``triggers`` (regex patterns over the generated text) from which the grammar applies."""

    grammar: str
    lazy: bool = False
    triggers: tuple[str, ...] = ()


_Converter: Any = SchemaConverter  # untyped upstream
_ANNOTATIONS = frozenset(
    {"description", "title", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly"}
)
_ANY_TYPES = ("string", "number", "boolean", "object", "array", "null")


class _ToolSchemaConverter(_Converter):  # type: ignore[misc]
    """llama-cpp-python's converter, with refs named uniquely and strict JSON strings."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)

    def add_rule(self, name: str, body: str) -> str:
        """Add ``name ::= body`` (renamed if taken) and return the name it got."""
        return str(self._add_rule(name, body))

    def _resolve_ref(self, ref: str) -> str:
        # The stock converter names a ref's rule after its last segment, so "tool-a#/$defs/Item" and
        # "tool-b#/$defs/Item" would share one rule; name it after the whole ref instead.
        ref_name = INVALID_RULE_CHARS_RE.sub("-", ref).strip("-")
        if ref_name not in self._rules and ref not in self._refs_being_resolved:
            self._refs_being_resolved.add(ref)
            ref_name = self.visit(self._refs[ref], ref_name)
            self._refs_being_resolved.remove(ref)
        return ref_name

    def visit(self, schema: Any, name: str) -> str:
        # A schema with nothing but annotations ({"description": ...}, or {}) allows any JSON value;
        # the stock converter refuses the first and reads the second as "any object".
        if isinstance(schema, dict) and set(schema) <= _ANNOTATIONS:
            schema = {**schema, "type": list(_ANY_TYPES)}
        return str(super().visit(schema, name))

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        return str(super()._add_primitive(name, _STRICT_CHAR if name == "char" else rule))

    def arguments_rule(self, schema: dict[str, Any], name: str, scope: str) -> str:
        """Convert one tool's parameters schema; return its rule name. ``scope`` (unique per tool)
        qualifies the schema's local ``$ref``s."""
        copy = json.loads(json.dumps(schema))  # resolve_refs rewrites refs in place
        resolved = self.resolve_refs(copy, scope)
        return str(self.visit(resolved, f"{name}-args"))


def _literal(text: str) -> str:
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    ).replace("\t", "\\t")
    return f'"{escaped}"'


def _regex_literal(text: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), text)


def _rule_base(tool_name: str) -> str:
    return INVALID_RULE_CHARS_RE.sub("-", tool_name).strip("-") or "tool"


def _call_rule(conv: _ToolSchemaConverter, tool: Tool, syntax: ToolSyntax, index: int, lenient: bool) -> str:
    base = _rule_base(tool.name)
    args = conv.arguments_rule(tool.parameters, base, f"tool{index}")
    name = json.dumps(tool.name)
    key = "parameters" if syntax is ToolSyntax.LLAMA3 else "arguments"
    call_id = conv.add_rule("call-id", '"\\"" [a-zA-Z0-9]{9} "\\""') if syntax is ToolSyntax.MISTRAL else ""
    if not lenient:  # exactly as the templates write calls
        prefix = '{"name": ' + name + ', "' + key + '": '
        body = f"{_literal(prefix)} {args}"
        if call_id:
            body += f' ( ", \\"id\\": " {call_id} )?'
        return conv.add_rule(f"{base}-call", f'{body} "}}"')
    name_kv = f'"\\"name\\"" ws ":" ws {_literal(name)} ws "," ws'
    if syntax is ToolSyntax.LLAMA3:
        body = (
            f'"{{" ws ( "\\"type\\"" ws ":" ws "\\"function\\"" ws "," ws )? {name_kv} '
            f'( "\\"parameters\\"" | "\\"arguments\\"" ) ws ":" ws {args} ws "}}"'
        )
    elif call_id:
        body = (
            f'"{{" ws {name_kv} "\\"arguments\\"" ws ":" ws {args} '
            f'( ws "," ws "\\"id\\"" ws ":" ws {call_id} )? ws "}}"'
        )
    else:
        body = f'"{{" ws {name_kv} "\\"arguments\\"" ws ":" ws {args} ws "}}"'
    return conv.add_rule(f"{base}-call", body)


def _calls_grammar(tools: Sequence[Tool], parallel: bool, syntax: ToolSyntax, *, lenient: bool) -> str:
    """Calls of ``tools`` in ``syntax``. Strict (forced calls): laid out exactly as the templates write
    them, so no token goes to layout. Lenient (lazy grammars, which take over text the model already
    wrote): a little whitespace anywhere, the optional ``"type": "function"`` of Llama 3, either
    arguments key."""
    if not tools:
        raise ValueError("a tool-call grammar needs at least one tool")
    conv = _ToolSchemaConverter()
    if lenient:
        conv.add_rule("ws", _WS)
    call = conv.add_rule(
        "call", " | ".join(_call_rule(conv, tool, syntax, i, lenient) for i, tool in enumerate(tools))
    )
    if syntax is ToolSyntax.HERMES and not lenient:
        one = conv.add_rule("tool-call", f'"<tool_call>\\n" {call} "\\n</tool_call>"')
        root = f'{one} ( "\\n" {one} )*' if parallel else one
    elif syntax is ToolSyntax.HERMES:
        one = conv.add_rule("tool-call", f'"<tool_call>" ws {call} ws "</tool_call>"')
        root = f"{one} ( ws {one} )* ws" if parallel else f"{one} ws"
    elif syntax is ToolSyntax.LLAMA3 and not lenient:
        root = f'{call} ( "; " {call} )*' if parallel else call
    elif syntax is ToolSyntax.LLAMA3:
        more = f' ( ws ";"? ws {call} )*' if parallel else ""
        root = f'"<|python_tag|>"? ws {call}{more} ws'
    elif not lenient:
        more = f' ( ", " {call} )*' if parallel else ""
        root = f'"[TOOL_CALLS][" {call}{more} "]"'
    else:
        more = f' ( ws "," ws {call} )*' if parallel else ""
        root = f'"[TOOL_CALLS]"? ws "[" ws {call}{more} ws "]" ws'
    conv.add_rule("root", root)
    return str(conv.format_grammar())


def permitted_tools(tools: Sequence[Tool], choice: ToolChoice) -> list[Tool]:
    """The tools a call may name under ``choice`` (all of them, or the one it names)."""
    if choice.mode == "tool":
        return [tool for tool in tools if tool.name == choice.name]
    return list(tools)


def forced_call_grammar(tools: Sequence[Tool], choice: ToolChoice, parallel: bool, syntax: ToolSyntax) -> str:
    """GBNF (root ``root``) whose every sentence is a call -- or, with ``parallel``, calls -- of a tool
    ``choice`` permits, in ``syntax``, with arguments valid against the tool's schema.

    Validate the tools first (:func:`llmhost.toolcalls.validate_tools`); this raises ``ValueError`` when no
    tool is permitted.
    """
    return _calls_grammar(permitted_tools(tools, choice), parallel, syntax, lenient=False)


def lazy_call_grammar(tools: Sequence[Tool], parallel: bool, syntax: ToolSyntax) -> ToolGrammar:
    """For ``tool_choice`` ``auto``: the calls grammar, applied only once the output starts a call.

    The triggers are the syntax's call markers (``<tool_call>``, ``[TOOL_CALLS]``, ``<|python_tag|>``)
    and, for ``llama3`` and ``mistral``, a call object / array at the very start of the message (their
    marker is a control token a detokenizer may hide).
    """
    grammar = _calls_grammar(tools, parallel, syntax, lenient=True)
    triggers = [f"({_regex_literal(marker)})" for marker in syntax.start_markers]
    if syntax is ToolSyntax.LLAMA3:
        triggers.append(r'^\s*(\{\s*(?:"type"\s*:\s*"function"\s*,\s*)?"name"\s*:\s*")')
    elif syntax is ToolSyntax.MISTRAL:
        triggers.append(r'^\s*(\[\s*\{\s*"name"\s*:\s*")')
    return ToolGrammar(grammar, lazy=True, triggers=tuple(triggers))


def tool_grammar(
    tools: Sequence[Tool], choice: ToolChoice, parallel: bool, syntax: ToolSyntax
) -> ToolGrammar | None:
    """The grammar a request's tool settings call for: forced for ``required`` / a named tool, lazy for
    ``auto``, none for ``none`` or when there are no tools."""
    if not tools or choice.mode == "none":
        return None
    if choice.mode == "auto":
        return lazy_call_grammar(tools, parallel, syntax)
    return ToolGrammar(forced_call_grammar(tools, choice, parallel, syntax))


def arguments_grammar(schema: dict[str, Any]) -> str:
    """GBNF for one arguments object alone; raises whatever the converter raises on a schema it cannot
    handle (used to validate tool schemas up front)."""
    conv = _ToolSchemaConverter()
    conv.add_rule("root", conv.arguments_rule(schema, "tool", "tool0"))
    return str(conv.format_grammar())


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF for any JSON value valid against ``schema`` (``response_format`` ``json_schema``), with the
    same fixes as the arguments: strict JSON strings (the stock converter lets a raw newline into one,
    which every JSON parser refuses) and annotation-only schemas meaning any value."""
    conv = _ToolSchemaConverter()
    copy = json.loads(json.dumps(schema))  # resolve_refs rewrites refs in place
    conv.visit(conv.resolve_refs(copy, "schema"), "")
    return str(conv.format_grammar())


def grammar_parses(grammar: str) -> bool:
    """Whether llama.cpp's grammar parser accepts ``grammar`` (no model needed)."""
    sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True
