"""Chat templates: turning a list of chat messages into the prompt text a model was trained on.

Templates are Jinja, rendered the way Hugging Face ``transformers`` renders ``tokenizer.chat_template``: in an
:class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` with ``trim_blocks`` and ``lstrip_blocks``, the
``loopcontrols`` extension, a pass-through ``{% generation %}`` block, a ``raise_exception(msg)`` global, a
``strftime_now(fmt)`` global and a ``tojson`` filter that keeps non-ASCII text as is. Templates come from GGUF
metadata or from the configuration, so they are untrusted: the sandbox refuses attribute escapes
(``''.__class__...``) and mutation of lists and dicts, a render is bounded in time and size
(:mod:`llmhost.models.template_sandbox`), and every failure is reported as a
:class:`~llmhost.errors.RequestError` on ``messages`` rather than a server error.

Which template is used (:func:`resolve_chat_template`): a configured override, else the model's own
``tokenizer.chat_template``, else a built-in chosen by architecture -- ``gemma`` for the Gemma family (the
embedded Gemma 3 270M ships without a template), ``chatml`` for everything else.

Tools: templates get ``tools`` and messages with ``tool_calls`` / ``role: "tool"`` in Hugging Face's shapes
(see :mod:`llmhost.toolcalls.render`). Both built-ins write them Hermes style, as Qwen 2.5 does: a tool
section, ``<tool_call>`` blocks for calls, ``<tool_response>`` blocks for results. A model template that
cannot write some of it (found once per template by rendering probe conversations, :class:`TemplateCaps`)
gets it spelled out in plain messages the same way, so tool use works on every template.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, NoReturn

from jinja2 import Environment, Template, TemplateError, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser

from llmhost.errors import RequestError
from llmhost.models.template_sandbox import (
    DEFAULT_MAX_CHARS,
    DEFAULT_TIME_LIMIT,
    BoundedSandbox,
    PromptTooLongError,
    RenderLimitError,
    render_bounded,
    render_limits,
)

__all__ = [
    "BUILTIN_TEMPLATES",
    "HERMES_TOOLS_HEAD",
    "HERMES_TOOLS_TAIL",
    "ChatTemplate",
    "TemplateCaps",
    "hermes_call_blocks",
    "hermes_tool_section",
    "resolve_chat_template",
    "template_caps",
]

# How the built-in templates (and the fallback for model templates without tool support) describe tools:
# Qwen 2.5's wording, Hermes-style calls. The tool-call parser reads the calls back (syntax "hermes").
HERMES_TOOLS_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
HERMES_TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)

# Jinja that sets ``listing.text`` to the tool section (HERMES_TOOLS_HEAD, one JSON line per tool, TAIL).
_TOOL_LISTING = (
    "{%- set listing = namespace(text=" + json.dumps(HERMES_TOOLS_HEAD) + ") -%}\n"
    "{%- for tool in tools -%}\n"
    "    {%- set listing.text = listing.text + '\\n' + (tool | tojson) -%}\n"
    "{%- endfor -%}\n"
    "{%- set listing.text = listing.text + " + json.dumps(HERMES_TOOLS_TAIL) + " -%}\n"
)

# Jinja that sets ``calls.text`` to ``calls.text`` followed by the message's tool calls, each a
# ``<tool_call>`` block, separated by newlines.
_CALL_BLOCKS = r"""{%- for call in message['tool_calls'] -%}
    {%- set fn = call['function'] if call['function'] is defined else call -%}
    {%- set calls.text = calls.text + ('\n' if calls.text else '') + '<tool_call>\n'
        + ({'name': fn['name'], 'arguments': fn['arguments']} | tojson) + '\n</tool_call>' -%}
{%- endfor -%}
"""

_ALTERNATE = "Conversation roles must alternate user/assistant/user/assistant/..."

# Google's Gemma template (as published with Gemma 2/3 on Hugging Face): BOS, then alternating
# ``<start_of_turn>user`` / ``<start_of_turn>model`` turns with trimmed content; a leading system message
# is folded into the first user turn followed by a blank line. llmhost additions: ``developer`` is accepted
# as the system role, a conversation holding only a system message renders it as the user turn instead of
# silently dropping it, and any role other than user/assistant/tool after it is rejected with a clear
# message. Tools: the tool section joins the system text, an assistant's tool calls are ``<tool_call>``
# blocks in its model turn, and tool results are ``<tool_response>`` blocks in a user turn -- consecutive
# results, and a user message right after them, share one user turn, so turns still alternate.
_GEMMA_TEMPLATE = (
    r"""{{- bos_token -}}
{%- if messages and messages[0]['role'] in ['system', 'developer'] -%}
    {%- set system_text = (messages[0]['content'] or '') | trim -%}
    {%- set has_system = true -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set system_text = '' -%}
    {%- set has_system = false -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- if tools -%}
"""
    + _TOOL_LISTING
    + r"""    {%- set system_text = (system_text + '\n\n' if system_text else '') + listing.text -%}
    {%- set has_system = true -%}
{%- endif -%}
{%- set first_user_prefix = system_text + '\n\n' if has_system else '' -%}
{%- if has_system and not loop_messages -%}
    {{- '<start_of_turn>user\n' + system_text + '<end_of_turn>\n' -}}
{%- endif -%}
{%- set turn = namespace(last='', results=false, first=true) -%}
{%- for message in loop_messages -%}
    {%- set role = message['role'] -%}
    {%- if role not in ['user', 'assistant', 'tool'] -%}
        {{- raise_exception("The Gemma chat format does not support the '" ~ role ~ "' role here; "
            ~ "use an optional leading system message followed by alternating user/assistant messages "
            ~ "(and tool results after assistant tool calls)") -}}
    {%- endif -%}
    {%- if role == 'assistant' -%}
        {%- if turn.last != 'user' -%}
            {{- raise_exception('"""
    + _ALTERNATE
    + r"""') -}}
        {%- endif -%}
        {%- set calls = namespace(text=(message['content'] or '') | trim) -%}
        {%- if message['tool_calls'] is defined and message['tool_calls'] -%}
"""
    + _CALL_BLOCKS
    + r"""        {%- endif -%}
        {{- '<end_of_turn>\n<start_of_turn>model\n' + calls.text -}}
        {%- set turn.last = 'model' -%}
        {%- set turn.results = false -%}
    {%- elif role == 'tool' -%}
        {%- if turn.last == 'user' and turn.results -%}
            {{- '\n' -}}
        {%- elif turn.last == 'model' -%}
            {{- '<end_of_turn>\n<start_of_turn>user\n' -}}
        {%- else -%}
            {{- raise_exception('"""
    + _ALTERNATE
    + r"""') -}}
        {%- endif -%}
        {{- '<tool_response>\n' + ((message['content'] or '') | trim) + '\n</tool_response>' -}}
        {%- set turn.last = 'user' -%}
        {%- set turn.results = true -%}
    {%- else -%}
        {%- if turn.last == 'user' and turn.results -%}
            {{- '\n\n' -}}
        {%- elif turn.last == 'user' -%}
            {{- raise_exception('"""
    + _ALTERNATE
    + r"""') -}}
        {%- else -%}
            {{- ('<end_of_turn>\n' if turn.last else '') + '<start_of_turn>user\n'
                + (first_user_prefix if turn.first else '') -}}
        {%- endif -%}
        {{- (message['content'] or '') | trim -}}
        {%- set turn.last = 'user' -%}
        {%- set turn.results = false -%}
    {%- endif -%}
    {%- set turn.first = false -%}
{%- endfor -%}
{%- if turn.last -%}
    {{- '<end_of_turn>\n' -}}
{%- endif -%}
{%- if add_generation_prompt -%}
    {{- '<start_of_turn>model\n' -}}
{%- endif -%}
"""
)

# ChatML (Qwen, Hermes, many fine-tunes): the general fallback for models without a template of their own.
# With tools it follows Qwen 2.5's template: a system turn with the (leading system message and the) tool
# section, calls as ``<tool_call>`` blocks in the assistant turn, results as ``<tool_response>`` blocks in
# one user turn per run of tool messages.
_CHATML_TEMPLATE = (
    r"""{%- if tools -%}
"""
    + _TOOL_LISTING
    + r"""    {{- '<|im_start|>system\n' -}}
    {%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] -%}
        {{- messages[0]['content'] + '\n\n' -}}
    {%- endif -%}
    {{- listing.text + '<|im_end|>\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {%- if tools and loop.first and message['role'] == 'system' -%}
    {%- elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] -%}
        {%- set calls = namespace(text='') -%}
"""
    + _CALL_BLOCKS
    + r"""        {{- '<|im_start|>assistant' + ('\n' + message['content'] if message['content'] else '')
            + '\n' + calls.text + '<|im_end|>\n' -}}
    {%- elif message['role'] == 'tool' -%}
        {%- if loop.first or loop.previtem['role'] != 'tool' -%}
            {{- '<|im_start|>user' -}}
        {%- endif -%}
        {{- '\n<tool_response>\n' + (message['content'] or '') + '\n</tool_response>' -}}
        {%- if loop.last or loop.nextitem['role'] != 'tool' -%}
            {{- '<|im_end|>\n' -}}
        {%- endif -%}
    {%- else -%}
        {{- '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""
)

BUILTIN_TEMPLATES: Mapping[str, str] = MappingProxyType(
    {"gemma": _GEMMA_TEMPLATE, "chatml": _CHATML_TEMPLATE}
)

_BUILTIN_STOP: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"gemma": ("<end_of_turn>", "<start_of_turn>"), "chatml": ("<|im_end|>", "<|im_start|>")}
)

# GGUF ``general.architecture`` values that use the Gemma turn format.
_ARCHITECTURE_BUILTINS: Mapping[str, str] = MappingProxyType(
    {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma"}
)

# End-of-turn markers recognised in model/override templates, in the order they are reported.
_KNOWN_END_MARKERS: tuple[str, ...] = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>")

_ERROR_PREFIX = "chat template error: "


class _TemplateRaisedError(TemplateError):
    """Raised by the ``raise_exception`` global: the template itself rejected the conversation."""


class _GenerationExtension(Extension):
    """Accept transformers' ``{% generation %}...{% endgeneration %}`` block and render its body as is.

    transformers uses the block to compute assistant-token masks for training; for inference it is a no-op.
    """

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render_body")
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaisedError(message)


def _tojson(
    value: Any,
    indent: int | None = None,
    ensure_ascii: bool = False,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _make_environment() -> BoundedSandbox:
    env = BoundedSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[loopcontrols, _GenerationExtension],
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    env.guard_filters()
    return env


_ENVIRONMENT = _make_environment()


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> Template:
    """Compile ``source`` once; syntax errors propagate (and are not cached)."""
    return _ENVIRONMENT.from_string(source)


def _template_error(exc: BaseException) -> RequestError:
    if isinstance(exc, PromptTooLongError):
        return RequestError(
            f"the rendered prompt is longer than the {exc.max_chars} characters this model's context "
            "accepts; shorten the messages",
            param="messages",
            code="context_length_exceeded",
        )
    if isinstance(exc, RenderLimitError):
        detail = f"stopped: {exc}"
    elif isinstance(exc, TemplateSyntaxError):
        where = f" on line {exc.lineno}" if exc.lineno else ""
        detail = f"syntax error{where}: {exc.message or exc}"
    elif isinstance(exc, SecurityError):
        detail = f"unsafe operation blocked by the sandbox: {exc}"
    elif isinstance(exc, _TemplateRaisedError):
        detail = str(exc)
    elif isinstance(exc, TemplateError):
        detail = str(exc) or type(exc).__name__
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return RequestError(_ERROR_PREFIX + detail, param="messages")


def _guess_stop(source: str) -> tuple[str, ...]:
    return tuple(marker for marker in _KNOWN_END_MARKERS if marker in source)


@dataclass(frozen=True, slots=True)
class TemplateCaps:
    """What a template does with tools, found by rendering probe conversations (as minja does):
    ``tools`` it lists the tools it is given, ``tool_calls`` it writes an assistant's calls,
    ``tool_results`` it writes ``tool`` messages, ``system`` it writes a leading system message."""

    tools: bool
    tool_calls: bool
    tool_results: bool
    system: bool


_PROBE_USER = {"role": "user", "content": "llmhost_probe_user"}
_PROBE_SYSTEM = {"role": "system", "content": "llmhost_probe_system"}
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "llmhost_probe_tool",
        "description": "llmhost probe",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    },
}
_PROBE_CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {
            "id": "probe0001",  # 9 alphanumerics: Mistral's templates accept nothing else
            "type": "function",
            "function": {"name": "llmhost_probe_call", "arguments": {"text": "x"}},
        }
    ],
}
_PROBE_RESULT = {
    "role": "tool",
    "tool_call_id": "probe0001",
    "name": "llmhost_probe_call",
    "content": "llmhost_probe_result",
}


def _probe(source: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    """Render a probe conversation; '' when the template refuses it."""
    for add_generation_prompt in (True, False):
        context = {
            "messages": messages,
            "tools": tools,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": "",
            "eos_token": "",
        }
        try:
            return render_bounded(_compile(source), context)
        except RenderLimitError:
            raise  # not an answer about the template's features: never cached as one
        except Exception:  # a template that refuses the probe does not support what it probes
            continue
    return ""


@functools.lru_cache(maxsize=64)
def template_caps(source: str) -> TemplateCaps:
    """Probe what the template ``source`` does with tools (cached per source)."""
    return TemplateCaps(
        tools="llmhost_probe_tool" in _probe(source, [_PROBE_USER], [_PROBE_TOOL]),
        tool_calls="llmhost_probe_call" in _probe(source, [_PROBE_USER, _PROBE_CALL]),
        tool_results="llmhost_probe_result" in _probe(source, [_PROBE_USER, _PROBE_CALL, _PROBE_RESULT]),
        system="llmhost_probe_system" in _probe(source, [_PROBE_SYSTEM, _PROBE_USER]),
    )


def hermes_tool_section(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tool section the built-in templates write for ``tools`` (template-shaped tool dicts)."""
    listing = "".join("\n" + _tojson(dict(tool)) for tool in tools)
    return HERMES_TOOLS_HEAD + listing + HERMES_TOOLS_TAIL


def hermes_call_blocks(tool_calls: Sequence[Mapping[str, Any]]) -> str:
    """An assistant's calls as the built-in templates write them: ``<tool_call>`` blocks, one a line."""
    blocks = []
    for call in tool_calls:
        fn = call.get("function", call)
        body = _tojson({"name": fn.get("name"), "arguments": fn.get("arguments")})
        blocks.append(f"<tool_call>\n{body}\n</tool_call>")
    return "\n".join(blocks)


def _with_tool_fallbacks(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, caps: TemplateCaps
) -> list[dict[str, Any]]:
    """Spell out in plain messages, Hermes style, what the template cannot write itself: the tool
    section (in the system message, else the first user message), assistant calls (in the content) and
    tool results (``<tool_response>`` blocks in a user message; consecutive results, and a user message
    right after them, share one user message so roles still alternate)."""
    out: list[dict[str, Any]] = []
    results_at = -1  # index in ``out`` of the user message holding tool results, while it is open
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls") and not caps.tool_calls:
            item = {k: v for k, v in message.items() if k != "tool_calls"}
            calls = hermes_call_blocks(message["tool_calls"])
            item["content"] = f"{item['content']}\n{calls}" if item.get("content") else calls
            out.append(item)
        elif role == "tool" and not caps.tool_results:
            block = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if results_at == len(out) - 1 and results_at >= 0:
                out[results_at] = {**out[results_at], "content": out[results_at]["content"] + "\n" + block}
            else:
                out.append({"role": "user", "content": block})
                results_at = len(out) - 1
            continue
        elif role == "user" and results_at >= 0 and results_at == len(out) - 1:
            merged = out[results_at]["content"] + "\n\n" + (message.get("content") or "")
            out[results_at] = {**message, "content": merged}
        else:
            out.append(message)
        results_at = -1
    if tools and not caps.tools:
        out = _add_tool_section(out, hermes_tool_section(tools), caps)
    return out


def _add_tool_section(
    messages: list[dict[str, Any]], section: str, caps: TemplateCaps
) -> list[dict[str, Any]]:
    out = list(messages)
    if caps.system:
        if out and out[0].get("role") in ("system", "developer"):
            first = out[0].get("content") or ""
            out[0] = {**out[0], "content": f"{first}\n\n{section}" if first else section}
        else:
            out.insert(0, {"role": "system", "content": section})
        return out
    for i, message in enumerate(out):
        if message.get("role") == "user":
            text = message.get("content") or ""
            out[i] = {**message, "content": f"{section}\n\n{text}" if text else section}
            return out
    out.append({"role": "user", "content": section})
    return out


def _uses_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> bool:
    return bool(tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


@dataclass(frozen=True)
class ChatTemplate:
    """A resolved chat template: its Jinja ``source``, where it came from, and its implied stop strings.

    ``origin`` is ``"override"``, ``"model"``, ``"builtin:gemma"`` or ``"builtin:chatml"``. ``stop`` holds
    the end-of-turn markers generation should stop at (for model and override templates: the well-known
    markers that appear literally in the source).
    """

    source: str
    origin: str
    stop: tuple[str, ...]

    @property
    def caps(self) -> TemplateCaps:
        """What this template does with tools (probed once per source)."""
        return template_caps(self.source)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        bos_token: str = "",
        eos_token: str = "",
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        time_limit: float = DEFAULT_TIME_LIMIT,
    ) -> str:
        """Render ``messages`` into prompt text; ``tools`` (template-shaped, see
        :func:`llmhost.toolcalls.to_template_tools`) are passed to the template as ``tools``.

        The render is bounded (:mod:`llmhost.models.template_sandbox`): it fails after ``time_limit``
        seconds, or once its output (or any value it builds) passes ``max_chars`` characters -- the
        caller sizes that from the model's context, so a prompt that could never fit fails here,
        before tokenization. It blocks for as long as it runs: call it off the event loop.

        Messages are dicts with ``role`` and string ``content`` (``None`` renders as empty), plus
        ``tool_calls`` / ``tool_call_id`` / ``name`` for tool use. Where the template cannot write tools,
        calls or tool results itself (:attr:`caps`), they are spelled out in the messages, Hermes style,
        as the built-in templates write them. Raises :class:`~llmhost.errors.RequestError` with
        ``param="messages"`` when the template does not compile, rejects the conversation
        (``raise_exception``), trips the sandbox, or fails in any other way.
        """
        prepared: list[dict[str, Any]] = []
        for message in messages:
            item = dict(message)
            if item.get("content") is None:
                item["content"] = ""
            prepared.append(item)
        tool_list = [dict(tool) for tool in tools] if tools else None
        try:
            # One budget for the whole call, the first use's feature probes included.
            with render_limits(max_chars, time_limit):
                template = _compile(self.source)
                if _uses_tools(prepared, tool_list):
                    caps = self.caps
                    if not (caps.tools and caps.tool_calls and caps.tool_results):
                        prepared = _with_tool_fallbacks(prepared, tool_list, caps)
                context = {
                    "messages": prepared,
                    "tools": tool_list,
                    "add_generation_prompt": add_generation_prompt,
                    "bos_token": bos_token,
                    "eos_token": eos_token,
                }
                return render_bounded(template, context)
        except Exception as exc:  # anything a template does wrong is the request's (or template's) fault
            raise _template_error(exc) from exc


def resolve_chat_template(
    architecture: str | None, model_template: str | None, override: str | None = None
) -> ChatTemplate:
    """Pick the chat template: ``override`` text, else the model's own template, else a built-in.

    Blank strings count as absent. The built-in is ``gemma`` for the Gemma architectures (``gemma``,
    ``gemma2``, ``gemma3``, ``gemma3n``) and ``chatml`` for anything else, including an unknown architecture.
    """
    if override is not None and override.strip():
        return ChatTemplate(source=override, origin="override", stop=_guess_stop(override))
    if model_template is not None and model_template.strip():
        return ChatTemplate(source=model_template, origin="model", stop=_guess_stop(model_template))
    name = _ARCHITECTURE_BUILTINS.get((architecture or "").strip().lower(), "chatml")
    return ChatTemplate(source=BUILTIN_TEMPLATES[name], origin=f"builtin:{name}", stop=_BUILTIN_STOP[name])
