"""Request models for OpenAI's Responses API, field by field after the official SDK's
``openai/types/responses/response_create_params.py`` and the API reference.

Unknown fields are accepted and ignored, so clients that send newer parameters keep working; parameters
we know but cannot honour are refused in ``translate`` with a 400 that names them. Items, content parts
and tools are told apart by their ``type``: an unknown type lands in an ``Other*`` model, so the refusal
can say which type it was instead of listing every union branch that did not match.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

__all__ = [
    "Content",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionChoice",
    "FunctionTool",
    "Input",
    "InputImage",
    "InputItem",
    "InputText",
    "InputTokensRequest",
    "ItemReference",
    "MessageItem",
    "OtherChoice",
    "OtherItem",
    "OtherPart",
    "OtherTool",
    "OutputText",
    "Part",
    "ReasoningConfig",
    "Refusal",
    "ResponseCreateRequest",
    "StreamOptions",
    "TextConfig",
    "TextFormat",
    "ToolChoiceField",
    "ToolField",
]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _branch(name: str) -> str:
    # Named like pydantic's own union markers, which the shared validation handler leaves out of the
    # ``param`` it reports: an error reads ``input.0.call_id``, not ``input.items.0.function_call...``.
    return f"tagged-union[{name}]"


def _by_type(known: frozenset[str], *, untyped: Callable[[Any], str] | None = None) -> Discriminator:
    """A discriminator on ``type`` whose unknown values go to the ``other`` branch."""

    def tag(value: Any) -> str:
        kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        if kind is None and untyped is not None:
            return _branch(untyped(value))
        return _branch(kind if kind in known else "other")

    return Discriminator(tag)


def _text_or_list(value: Any) -> str:
    return _branch("text" if isinstance(value, str) else "list")


# ----- content parts ---------------------------------------------------------------------------------
class InputText(_Lenient):
    type: Literal["input_text"]
    text: str


class OutputText(_Lenient):
    type: Literal["output_text"]
    text: str


class Refusal(_Lenient):
    type: Literal["refusal"]
    refusal: str


class InputImage(_Lenient):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str = "auto"


class OtherPart(_Lenient):
    type: str


Part = Annotated[
    Annotated[InputText, Tag(_branch("input_text"))]
    | Annotated[OutputText, Tag(_branch("output_text"))]
    | Annotated[Refusal, Tag(_branch("refusal"))]
    | Annotated[InputImage, Tag(_branch("input_image"))]
    | Annotated[OtherPart, Tag(_branch("other"))],
    _by_type(frozenset({"input_text", "output_text", "refusal", "input_image"})),
]


Content = Annotated[
    Annotated[str, Tag(_branch("text"))] | Annotated[list[Part], Tag(_branch("list"))],
    Discriminator(_text_or_list),
]


# ----- input items -----------------------------------------------------------------------------------
class MessageItem(_Lenient):
    """A message; ``type`` may be left out (OpenAI's "easy input message")."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Content
    id: str | None = None
    status: str | None = None


class FunctionCallItem(_Lenient):
    """A call the model made earlier, sent back as context."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Lenient):
    """The client's result for a function call (the tool's answer)."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: Content
    id: str | None = None
    status: str | None = None


class ItemReference(_Lenient):
    """An item of an earlier stored response, by id."""

    type: Literal["item_reference"] = "item_reference"
    id: str = Field(min_length=1)


class OtherItem(_Lenient):
    type: str


def _untyped_item(value: Any) -> str:
    return "message" if isinstance(value, dict) and "role" in value else "item_reference"


InputItem = Annotated[
    Annotated[MessageItem, Tag(_branch("message"))]
    | Annotated[FunctionCallItem, Tag(_branch("function_call"))]
    | Annotated[FunctionCallOutputItem, Tag(_branch("function_call_output"))]
    | Annotated[ItemReference, Tag(_branch("item_reference"))]
    | Annotated[OtherItem, Tag(_branch("other"))],
    _by_type(
        frozenset({"message", "function_call", "function_call_output", "item_reference"}),
        untyped=_untyped_item,
    ),
]


Input = Annotated[
    Annotated[str, Tag(_branch("text"))] | Annotated[list[InputItem], Tag(_branch("list"))],
    Discriminator(_text_or_list),
]


# ----- tools -----------------------------------------------------------------------------------------
class FunctionTool(_Lenient):
    """A function tool: flat (``name`` next to ``type``), unlike Chat Completions' nested ``function``."""

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class OtherTool(_Lenient):
    type: str


ToolField = Annotated[
    Annotated[FunctionTool, Tag(_branch("function"))] | Annotated[OtherTool, Tag(_branch("other"))],
    _by_type(frozenset({"function"})),
]


class FunctionChoice(_Lenient):
    type: Literal["function"]
    name: str = Field(min_length=1)


class OtherChoice(_Lenient):
    type: str


def _choice_tag(value: Any) -> str:
    if isinstance(value, str):
        return _branch("mode")
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return _branch("function" if kind == "function" else "other")


ToolChoiceField = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag(_branch("mode"))]
    | Annotated[FunctionChoice, Tag(_branch("function"))]
    | Annotated[OtherChoice, Tag(_branch("other"))],
    Discriminator(_choice_tag),
]


# ----- text, reasoning -------------------------------------------------------------------------------
class TextFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Lenient):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(_Lenient):
    """Accepted for compatibility; the models served here do not take a reasoning budget."""

    effort: str | None = None
    summary: str | None = None


class StreamOptions(_Lenient):
    include_obfuscation: bool | None = None


# ----- requests --------------------------------------------------------------------------------------
class _InputFields(_Lenient):
    input: Input | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[ToolField] | None = None
    tool_choice: ToolChoiceField | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None
    conversation: Any = None


class ResponseCreateRequest(_InputFields):
    """``POST /v1/responses``."""

    model: str = Field(min_length=1)
    max_output_tokens: int | None = Field(None, ge=1)
    max_tool_calls: int | None = Field(None, ge=0, le=2**31 - 1)  # echoed back: a sane number only
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    speculative: Literal["ngram", "none"] | None = Field(
        None,
        description=(
            "llmhost extension: `ngram` speculative decoding (the same output), `none` "
            "off; unset: the model's setting. Local models only."
        ),
    )
    store: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    include: list[str] | None = None
    background: bool | None = None
    service_tier: str | None = None
    prompt: Any = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > 16:
            raise ValueError("at most 16 metadata pairs are allowed")
        for key, item in value.items():
            if len(key) > 64:
                raise ValueError(f"metadata key {key[:16]!r}... is longer than 64 characters")
            if len(item) > 512:
                raise ValueError(f"metadata value for {key!r} is longer than 512 characters")
        return value


class InputTokensRequest(_InputFields):
    """``POST /v1/responses/input_tokens``: the same input fields, no generation."""

    model: str | None = None
