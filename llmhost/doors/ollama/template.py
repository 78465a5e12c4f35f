"""The part of Go's ``text/template`` that ``/api/generate``'s ``template`` field needs.

Ollama renders a request's ``template`` with Go templates over the legacy variables ``.System``,
``.Prompt`` and ``.Response``, and cuts the template after the first ``.Response`` (the model writes
that part). This module renders the same subset: text, ``{{ .Field }}``, ``{{ if .Field }}`` /
``{{ else if .Field }}`` / ``{{ else }}`` / ``{{ end }}``, comments, and the ``{{-`` / ``-}}`` whitespace
trims. Anything else (``range .Messages``, functions, pipelines) is a :class:`RequestError`: the model's
own chat template, used when ``template`` is left out, handles messages and tools.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from llmhost.errors import RequestError

__all__ = ["render_go_template"]

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_FIELD = re.compile(r"^\.([A-Za-z_][A-Za-z0-9_]*)$")
_VARIABLES = frozenset({"System", "Prompt", "Response", "Suffix", "Think", "ThinkLevel", "IsThinkSet"})


@dataclass(slots=True)
class _Field:
    name: str


@dataclass(slots=True)
class _If:
    branches: list[tuple[str, list[_Node]]] = field(default_factory=list)  # (condition field, body)
    otherwise: list[_Node] = field(default_factory=list)


_Node = str | _Field | _If


def _unsupported(action: str) -> RequestError:
    return RequestError(
        f"template: {{{{ {action} }}}} is not supported; llmhost renders .System, .Prompt and .Response "
        "with if/else/end (leave 'template' out to use the model's own chat template)",
        param="template",
    )


def _tokens(source: str) -> list[str | tuple[str]]:
    """Text pieces and ``(action,)`` tuples, with Go's trim markers applied to the text around them."""
    out: list[str | tuple[str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(source):
        text = source[pos : m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if text:
            out.append(text)
        action = m.group(2).strip()
        if not (action.startswith("/*") and action.endswith("*/")):
            out.append((action,))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = source[pos:]
    if trim_next:
        tail = tail.lstrip()
    if "{{" in tail:
        raise RequestError("template: an action is not closed with '}}'", param="template")
    if tail:
        out.append(tail)
    return out


def _condition(text: str) -> str:
    m = _FIELD.match(text.strip())
    if m is None or m.group(1) not in _VARIABLES:
        raise _unsupported(f"if {text.strip()}")
    return m.group(1)


def _parse(tokens: list[str | tuple[str]]) -> list[_Node]:
    root: list[_Node] = []
    stack: list[tuple[_If, list[_Node]]] = []  # open ifs and the body being filled in each
    body = root
    for token in tokens:
        if isinstance(token, str):
            body.append(token)
            continue
        action = token[0]
        if action.startswith("if "):
            node = _If()
            node.branches.append((_condition(action[3:]), []))
            body.append(node)
            stack.append((node, body))
            body = node.branches[-1][1]
        elif action.startswith("else if "):
            if not stack or body is stack[-1][0].otherwise:
                raise _unsupported(action)
            node = stack[-1][0]
            node.branches.append((_condition(action[8:]), []))
            body = node.branches[-1][1]
        elif action == "else":
            if not stack or body is stack[-1][0].otherwise:
                raise _unsupported(action)
            body = stack[-1][0].otherwise
        elif action == "end":
            if not stack:
                raise RequestError("template: {{ end }} without an {{ if }}", param="template")
            _, body = stack.pop()
        else:
            m = _FIELD.match(action)
            if m is None or m.group(1) not in _VARIABLES:
                raise _unsupported(action)
            body.append(_Field(m.group(1)))
    if stack:
        raise RequestError("template: an {{ if }} is not closed with {{ end }}", param="template")
    return root


def _cut(nodes: list[_Node]) -> tuple[list[_Node], bool]:
    """The nodes up to and including the first ``.Response`` (in document order), and whether one was
    found: Ollama deletes everything after it, inside enclosing ``if`` blocks too."""
    kept: list[_Node] = []
    for node in nodes:
        if isinstance(node, _Field) and node.name == "Response":
            kept.append(node)
            return kept, True
        if isinstance(node, _If):
            trimmed = _If()
            for cond, body in node.branches:
                new_body, found = _cut(body)
                trimmed.branches.append((cond, new_body))
                if found:
                    kept.append(trimmed)
                    return kept, True
            new_otherwise, found = _cut(node.otherwise)
            trimmed.otherwise = new_otherwise
            kept.append(trimmed)
            if found:
                return kept, True
            continue
        kept.append(node)
    return kept, False


def _render(nodes: list[_Node], values: Mapping[str, object], out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Field):
            value = values.get(node.name)
            if isinstance(value, bool):
                out.append("true" if value else "false")
            elif value is not None:
                out.append(str(value))
        else:
            for cond, body in node.branches:
                if values.get(cond):
                    _render(body, values, out)
                    break
            else:
                _render(node.otherwise, values, out)


def render_go_template(source: str, *, system: str, prompt: str) -> str:
    """The prompt text ``source`` renders to for one system message and one user prompt, cut after
    ``.Response`` as Ollama cuts it."""
    nodes, _ = _cut(_parse(_tokens(source)))
    values: dict[str, object] = {
        "System": system,
        "Prompt": prompt,
        "Response": "",
        "Suffix": "",
        "Think": False,
        "ThinkLevel": "",
        "IsThinkSet": False,
    }
    out: list[str] = []
    _render(nodes, values, out)
    return "".join(out)
