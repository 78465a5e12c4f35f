"""Request models for Ollama's native API, field by field after Ollama's ``api/types.go``.

Unknown fields are accepted and ignored, as Ollama does, so newer clients keep working. ``options`` stays
a plain mapping: Ollama ignores options it does not know, and :mod:`.translate` checks the types of
those it uses; only its numbers are checked here (finite, 64-bit integers), whatever the option.
Responses are built as plain dicts in :mod:`.translate`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ChatRequest",
    "CopyRequest",
    "DeleteRequest",
    "EmbedRequest",
    "EmbeddingsRequest",
    "GenerateRequest",
    "KeepAlive",
    "Message",
    "PullRequest",
    "ShowRequest",
    "ToolCall",
    "ToolCallFunction",
    "ToolDef",
    "ToolFunction",
]

KeepAlive = float | str | None
"""Seconds (negative: forever) or a Go duration string such as ``"5m"`` or ``"1h30m"``."""

Think = bool | str | None
"""``true``/``false`` or a level (``"high"``, ``"medium"``, ``"low"``, ``"max"``). No model here thinks
apart from its answer, so only ``false`` (or none) is served; see :func:`.translate.refuse_thinking`."""

_THINK_LEVELS = frozenset({"high", "medium", "low", "max"})


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _check_options(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Every number in ``options`` a real one: finite (JSON's ``1e400`` reads as infinity, and Python's
    reader takes ``NaN``) and, for an integer, within 64 bits, as Ollama's Go decoder would have it;
    anything else is a 400 here rather than an overflow wherever the option is used."""
    for key, item in (value or {}).items():
        if isinstance(item, bool) or not isinstance(item, int | float):
            continue  # types are checked where the option is used; unknown options are ignored
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f'option "{key}" must be a finite number')
        if isinstance(item, int) and not -(2**63) <= item < 2**63:
            raise ValueError(f'option "{key}" must fit in 64 bits')
    return value


def _check_keep_alive(value: object) -> object:
    """No ``true``/``false``: Ollama's Go decoder refuses them, and pydantic would read ``true`` as 1s."""
    if isinstance(value, bool):
        raise ValueError("keep_alive must be a number of seconds or a duration string")
    return value


def _check_think(value: Think) -> Think:
    if isinstance(value, str) and value not in _THINK_LEVELS:
        raise ValueError(
            f'invalid think value {value!r} (must be "high", "medium", "low", "max", true or false)'
        )
    return value


class ToolCallFunction(_Lenient):
    index: int | None = None
    name: str = Field(min_length=1)
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class ToolCall(_Lenient):
    id: str | None = None
    function: ToolCallFunction


class Message(_Lenient):
    role: str
    content: str | None = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    thinking: str | None = None  # a reasoning model's earlier thinking: not sent back to the model

    @field_validator("role")
    @classmethod
    def _lower_role(cls, value: str) -> str:
        return value.lower()  # Ollama lower-cases roles


class ToolFunction(_Lenient):
    name: str = Field(min_length=1)
    description: str | None = ""
    parameters: dict[str, Any] | None = None


class ToolDef(_Lenient):
    type: str = "function"
    function: ToolFunction


class _Generating(_Lenient):
    """What ``/api/chat`` and ``/api/generate`` share."""

    model: str = ""
    stream: bool | None = None  # true unless false
    format: str | dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None
    think: Think = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    truncate: bool | None = None
    shift: bool | None = None

    _think = field_validator("think")(_check_think)
    _options = field_validator("options")(_check_options)
    _keep_alive = field_validator("keep_alive", mode="before")(_check_keep_alive)


class ChatRequest(_Generating):
    messages: list[Message] | None = None
    tools: list[ToolDef] | None = None


class GenerateRequest(_Generating):
    prompt: str | None = ""
    suffix: str | None = ""
    system: str | None = ""
    template: str | None = ""
    context: list[int] | None = None
    raw: bool | None = False
    images: list[str] | None = None


class EmbedRequest(_Lenient):
    model: str = ""
    input: Any = None  # a string or a list of strings; checked in translate (Ollama: "invalid input type")
    truncate: bool | None = None  # true unless false: cut an input to the model's context, else 400
    dimensions: int | None = None
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None

    _keep_alive = field_validator("keep_alive", mode="before")(_check_keep_alive)


class EmbeddingsRequest(_Lenient):
    model: str = ""
    prompt: str | None = ""
    keep_alive: KeepAlive = None
    options: dict[str, Any] | None = None

    _keep_alive = field_validator("keep_alive", mode="before")(_check_keep_alive)


class ShowRequest(_Lenient):
    model: str = ""
    name: str = ""  # Ollama's older spelling of ``model``
    verbose: bool = False


class DeleteRequest(_Lenient):
    model: str = ""
    name: str = ""


class CopyRequest(_Lenient):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


class CreateRequest(_Lenient):
    """``/api/create``'s body, as Ollama's Go client and ollama-python send it (see :mod:`.create`)."""

    model: str = ""
    name: str = ""  # Ollama's older spelling of ``model``
    from_: str = Field(default="", alias="from")
    system: str = ""
    parameters: dict[str, Any] | None = None
    license: Any = None
    stream: bool | None = None  # true unless false
    # What llmhost refuses (400) rather than drop: files, adapters, quantize, template, messages, ...
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    quantize: str = ""
    draft_quantize: str = ""
    draft_files: dict[str, str] | None = None
    template: str = ""
    messages: list[Any] | None = None
    renderer: str = ""
    parser: str = ""


class PullRequest(_Lenient):
    model: str = Field(default="", description="hf:ORG/REPO[:FILE|:QUANT] or an https URL.")
    name: str = Field(
        default="", description="Ollama's older spelling of `model` (its Go CLI still sends it)."
    )
    register_as: str | None = Field(
        default=None, description="The name to register the model under (llmhost; default: derived)."
    )
    sha256: str | None = Field(
        default=None, description="The expected sha256 of a plain URL's file (llmhost)."
    )
    insecure: bool = False  # deprecated in Ollama and ignored; http:// is allowed for loopback hosts only
    stream: bool | None = None  # true unless false
