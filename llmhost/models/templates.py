"""Chat templates: turning a list of chat messages into the prompt text a model was trained on.

Templates are Jinja, rendered the way Hugging Face ``transformers`` renders ``tokenizer.chat_template``: in an
:class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` with ``trim_blocks`` and ``lstrip_blocks``, the
``loopcontrols`` extension, a pass-through ``{% generation %}`` block, a ``raise_exception(msg)`` global, a
``strftime_now(fmt)`` global and a ``tojson`` filter that keeps non-ASCII text as is. Templates come from GGUF
metadata or from the configuration, so they are untrusted: the sandbox refuses attribute escapes
(``''.__class__...``) and mutation of lists and dicts, and every failure is reported as a
:class:`~llmhost.errors.RequestError` on ``messages`` rather than a server error.

Which template is used (:func:`resolve_chat_template`): a configured override, else the model's own
``tokenizer.chat_template``, else a built-in chosen by architecture -- ``gemma`` for the Gemma family (the
embedded Gemma 3 270M ships without a template), ``chatml`` for everything else.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, NoReturn

from jinja2 import Environment, Template, TemplateError, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmhost.errors import RequestError

__all__ = ["BUILTIN_TEMPLATES", "ChatTemplate", "resolve_chat_template"]

# Google's Gemma template (as published with Gemma 2/3 on Hugging Face): BOS, then alternating
# ``<start_of_turn>user`` / ``<start_of_turn>model`` turns with trimmed content; a leading system message
# is folded into the first user turn followed by a blank line. llmhost additions: ``developer`` is accepted
# as the system role, a conversation holding only a system message renders it as the user turn instead of
# silently dropping it, and any role other than user/assistant after it is rejected with a clear message.
_GEMMA_TEMPLATE = r"""{{- bos_token -}}
{%- if messages and messages[0]['role'] in ['system', 'developer'] -%}
    {%- set system_text = (messages[0]['content'] or '') | trim -%}
    {%- set first_user_prefix = system_text + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
    {%- if not loop_messages -%}
        {{- '<start_of_turn>user\n' + system_text + '<end_of_turn>\n' -}}
    {%- endif -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if message['role'] not in ['user', 'assistant'] -%}
        {{- raise_exception("The Gemma chat format does not support the '" ~ message['role'] ~ "' role here; "
            ~ "use an optional leading system message followed by alternating user/assistant messages") -}}
    {%- endif -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}
    {%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}
    {{- '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') -}}
    {{- (message['content'] or '') | trim -}}
    {{- '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<start_of_turn>model\n' -}}
{%- endif -%}
"""

# ChatML (Qwen, Hermes, many fine-tunes): the general fallback for models without a template of their own.
_CHATML_TEMPLATE = r"""{%- for message in messages -%}
    {{- '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""

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


class _ChatTemplateEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, made strict about unsafe attributes.

    Jinja's sandbox answers an unsafe attribute lookup (``x.__class__``, ``list.append``) with an undefined
    value that only fails when used further; here the lookup itself fails, so an escape attempt can never
    render silently as an empty string.
    """

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


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


def _make_environment() -> _ChatTemplateEnvironment:
    env = _ChatTemplateEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[loopcontrols, _GenerationExtension],
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


_ENVIRONMENT = _make_environment()


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> Template:
    """Compile ``source`` once; syntax errors propagate (and are not cached)."""
    return _ENVIRONMENT.from_string(source)


def _template_error(exc: BaseException) -> RequestError:
    if isinstance(exc, TemplateSyntaxError):
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

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        bos_token: str = "",
        eos_token: str = "",
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """Render ``messages`` (dicts with ``role`` and string ``content``) into prompt text.

        ``content`` of ``None`` is rendered as empty. Raises :class:`~llmhost.errors.RequestError` with
        ``param="messages"`` when the template does not compile, rejects the conversation
        (``raise_exception``), trips the sandbox, or fails in any other way.
        """
        prepared: list[dict[str, Any]] = []
        for message in messages:
            item = dict(message)
            if item.get("content") is None:
                item["content"] = ""
            prepared.append(item)
        tool_list = None if tools is None else [dict(tool) for tool in tools]
        try:
            template = _compile(self.source)
            return template.render(
                messages=prepared,
                tools=tool_list,
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
            )
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
