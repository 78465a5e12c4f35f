"""Request models for the OpenAI-compatible API, field by field after OpenAI's API reference.

Unknown fields are accepted and ignored (as OpenAI-compatible servers do), so clients that send newer
parameters keep working. Responses are built as plain dicts in ``translate`` for speed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "EmbeddingRequest",
    "ResponseFormat",
    "StreamOptions",
    "ToolDef",
]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: bool = False


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImageURL(_Lenient):
    url: str
    detail: str | None = None


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


class RefusalPart(_Lenient):
    type: Literal["refusal"]
    refusal: str


class OtherPart(_Lenient):
    type: str


class FunctionCall(_Lenient):
    name: str = Field(min_length=1)
    arguments: str = "{}"


class ToolCallItem(_Lenient):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart | ImagePart | RefusalPart | OtherPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallItem] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None  # deprecated: one call, answered by a "function" message


class FunctionDef(_Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Lenient):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class AllowedTools(_Lenient):
    mode: Literal["auto", "required"]
    tools: list[NamedToolChoice] = Field(min_length=1)


class AllowedToolsChoice(_Lenient):
    """Only these of ``tools`` may be called (the rest stay in the prompt, as OpenAI keeps them)."""

    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


ToolChoiceField = Literal["none", "auto", "required"] | NamedToolChoice | AllowedToolsChoice


class JSONSchemaFormat(_Lenient):
    name: str = "response"
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _SamplingFields(_Lenient):
    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(
        None, ge=0, le=1 << 20, description="llama.cpp extension: keep the k most likely tokens."
    )
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="llama.cpp extension.")
    repeat_penalty: float | None = Field(None, gt=0.0, description="llama.cpp extension.")
    ignore_eos: bool = Field(
        False, description="llama.cpp extension: generate past end-of-generation tokens."
    )
    speculative: Literal["ngram", "none"] | None = Field(
        None,
        description=(
            "llmhost extension: `ngram` speculative decoding (the same output), `none` "
            "off; unset: the model's setting. Local models only."
        ),
    )
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    seed: int | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_limits(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop sequences are allowed")
        return value


class PredictionPart(_Lenient):
    type: Literal["text"]
    text: str


class Prediction(_Lenient):
    """OpenAI's Predicted Outputs: ``{"type": "content", "content": "..." | [{"type": "text", ...}]}``."""

    type: Literal["content"]
    content: str | list[PredictionPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoiceField | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = Field(None, description="Deprecated: tools of type function.")
    function_call: Literal["none", "auto"] | NamedFunction | None = Field(
        None, description="Deprecated: tool_choice for `functions`."
    )
    prediction: Prediction | None = Field(
        None,
        description="Predicted Outputs: text the answer will largely repeat (drafted from; same output).",
    )
    store: bool | None = Field(None, description="Keep the completion for GET /v1/chat/completions.")
    metadata: dict[str, str] | None = None


class EnsembleRequest(ChatCompletionRequest):
    """llmhost's ``POST /v1/ensemble``: a chat request asked of several models at once."""

    model: str = Field("", description="The name the answer is given under (default: ensemble).")
    models: list[str] = Field(min_length=1, max_length=16, description="The members: models or routes.")
    aggregate: Literal["vote", "judge", "best_of", "first", "all"] = "vote"
    judge: str | None = Field(None, description="The judging model or route (aggregate judge).")
    merge: bool = Field(False, description="The judge writes one answer from all instead of picking.")
    timeout: float | None = Field(None, gt=0, le=3600, description="Seconds a member may take.")

    @field_validator("models")
    @classmethod
    def _named(cls, models: list[str]) -> list[str]:
        if any(not m for m in models):
            raise ValueError("every member must name a model")
        return models


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for the legacy endpoint
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None


class EmbeddingRequest(_Lenient):
    model: str = ""  # none: the default embedding model ([embeddings] model)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
