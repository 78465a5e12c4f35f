"""Anthropic Messages request bodies (``POST /v1/messages`` and ``/v1/messages/count_tokens``), as
pydantic models that follow the official SDK's ``anthropic.types`` params.

Unknown fields are ignored, so what a client sends that changes nothing here passes: ``cache_control``
on any block or tool, ``metadata`` beyond ``user_id``, ``service_tier``, ``container``, ``speed``,
``context_management``, ``citations``. ``thinking`` is accepted whatever its ``type`` and ignored: no
model here produces signed thinking blocks, and Claude Code works with thinking off. Unknown content
block types are refused with a 400 that names them. A ``content`` or ``system`` given as a string is
read as one text block, so errors point into the block list rather than at a ``str`` branch.
``max_tokens`` may be 0, Anthropic's request to fill the prompt cache without an answer.
``speculative`` is llmhost's own field (the SDK sends it with ``extra_body``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "Base64PDFSource",
    "Base64Source",
    "ContentBlock",
    "ContentSource",
    "CountTokensRequest",
    "DocumentBlock",
    "FileSource",
    "ImageBlock",
    "JSONOutputFormat",
    "Message",
    "MessagesRequest",
    "Metadata",
    "OutputConfig",
    "PlainTextSource",
    "RedactedThinkingBlock",
    "SearchResultBlock",
    "TextBlock",
    "ThinkingBlock",
    "ThinkingConfig",
    "ToolChoice",
    "ToolChoiceAny",
    "ToolChoiceAuto",
    "ToolChoiceNone",
    "ToolChoiceTool",
    "ToolDefinition",
    "ToolResultBlock",
    "ToolUseBlock",
    "URLPDFSource",
    "URLSource",
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _text_as_blocks(value: Any) -> Any:
    """``"hi"`` is shorthand for ``[{"type": "text", "text": "hi"}]``."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


# ----- sources -----------------------------------------------------------------------------------------
class Base64Source(_Wire):
    type: Literal["base64"]
    media_type: str
    data: str


class URLSource(_Wire):
    type: Literal["url"]
    url: str


class FileSource(_Wire):
    """A file uploaded through Anthropic's Files API: there is no such store here (refused)."""

    type: Literal["file"]
    file_id: str


class PlainTextSource(_Wire):
    type: Literal["text"]
    data: str
    media_type: str = "text/plain"


class Base64PDFSource(_Wire):
    type: Literal["base64"]
    data: str
    media_type: str = "application/pdf"


class URLPDFSource(_Wire):
    type: Literal["url"]
    url: str


# ----- content blocks ----------------------------------------------------------------------------------
class TextBlock(_Wire):
    type: Literal["text"]
    text: str


class ImageBlock(_Wire):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource | FileSource, Field(discriminator="type")]


class ContentSource(_Wire):
    """A document made of content blocks (text and images)."""

    type: Literal["content"]
    content: Annotated[
        list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]], BeforeValidator(_text_as_blocks)
    ]


class DocumentBlock(_Wire):
    """A document: plain text and content sources are read as text; PDFs are refused."""

    type: Literal["document"]
    source: Annotated[
        PlainTextSource | ContentSource | Base64PDFSource | URLPDFSource | FileSource,
        Field(discriminator="type"),
    ]
    title: str | None = None
    context: str | None = None


class SearchResultBlock(_Wire):
    """A search result the client found (its own RAG): read as text under its title and source."""

    type: Literal["search_result"]
    source: str
    title: str
    content: list[TextBlock]


class ToolUseBlock(_Wire):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


ToolResultContent = Annotated[
    TextBlock | ImageBlock | DocumentBlock | SearchResultBlock, Field(discriminator="type")
]


class ToolResultBlock(_Wire):
    type: Literal["tool_result"]
    tool_use_id: str
    content: Annotated[list[ToolResultContent], BeforeValidator(_text_as_blocks)] = Field(
        default_factory=list
    )
    is_error: bool = False


class ThinkingBlock(_Wire):
    """A thinking block from an earlier answer (some other server's): dropped from the prompt."""

    type: Literal["thinking"]
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(_Wire):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock
    | ImageBlock
    | DocumentBlock
    | SearchResultBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class Message(_Wire):
    """One turn. ``system`` turns are the SDK's ``SystemMessageParam`` (text blocks only)."""

    role: Literal["user", "assistant", "system"]
    content: Annotated[list[ContentBlock], BeforeValidator(_text_as_blocks)]


# ----- tools -------------------------------------------------------------------------------------------
class ToolDefinition(_Wire):
    """A client tool (``type`` absent or ``custom``). Server tools (``web_search_...``, ``bash_...``)
    have another ``type`` and no ``input_schema``; the door refuses them, as nothing here runs them."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoiceAuto(_Wire):
    type: Literal["auto"]
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(_Wire):
    type: Literal["any"]
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(_Wire):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(_Wire):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


# ----- request options ---------------------------------------------------------------------------------
class ThinkingConfig(_Wire):
    """``enabled`` / ``disabled`` / ``adaptive`` / ...: accepted and ignored (see the module doc)."""

    type: str
    budget_tokens: int | None = None


class Metadata(_Wire):
    user_id: str | None = None


class JSONOutputFormat(_Wire):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Wire):
    """Structured outputs (``format``); ``effort`` is accepted and ignored."""

    format: JSONOutputFormat | None = None
    effort: str | None = None


SystemPrompt = Annotated[list[TextBlock], BeforeValidator(_text_as_blocks)]


class CountTokensRequest(_Wire):
    """``POST /v1/messages/count_tokens``: a conversation, without the generation settings."""

    model: str
    messages: list[Message] = Field(min_length=1)
    system: SystemPrompt | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``. ``max_tokens`` is required, as Anthropic's API requires it; 0 asks for
    the prompt to be cached and no answer (not streamed)."""

    max_tokens: int = Field(ge=0)
    stop_sequences: list[str] | None = None
    stream: bool = False
    thread: Any = None  # the Threads beta: refused in the error its SDK recovers from
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    speculative: Literal["ngram", "none"] | None = Field(
        default=None,
        description=(
            "llmhost extension (the SDK sends it in `extra_body`): `ngram` speculative decoding (the same "
            "output), `none` off; unset: the model's setting. Local models only."
        ),
    )
    metadata: Metadata | None = None
