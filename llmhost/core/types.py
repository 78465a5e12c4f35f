"""Typed internal requests, results, stream deltas and usage: what travels between doors and providers.

Doors translate their wire format (OpenAI, Anthropic, Ollama, the CLI) into these types at the edge, and
results back out of them; nothing between a door and a provider builds or reads a wire dict. Every
dataclass that may hold prompt text prints counts, not text, so prompts stay out of logs.

    InferenceRequest  --Pipeline.run-->     Result  (choices, usage, who answered)
                      --Pipeline.stream-->  Delta, Delta, ... (the last ones carry finish + usage)
    EmbedRequest      --Pipeline.embed-->   Embeddings
    Operation         --Pipeline.operate--> OperationResult (an MCP tool that is not inference ...)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from llmhost.engine.types import TokenLogprob

__all__ = [
    "Attempt",
    "ChatMessage",
    "Choice",
    "ContentPart",
    "Delta",
    "EmbedRequest",
    "Embeddings",
    "FinishReason",
    "InferenceRequest",
    "Operation",
    "OperationResult",
    "Principal",
    "RequestContext",
    "ResponseFormat",
    "Result",
    "Sampling",
    "Speculative",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "Usage",
    "new_id",
]

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls"]
RequestKind = Literal["chat", "completion"]
Speculative = Literal["ngram", "none"]  # a request's speculative decoding: n-gram drafts, or off


def new_id(prefix: str) -> str:
    """A fresh id such as ``chatcmpl-3f2a...`` (doors pick the prefix their dialect uses)."""
    return f"{prefix}-{os.urandom(12).hex()}"


# ----- who is asking ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a request runs for, as the "auth" stage found it (``llmhost.security.auth``).

    ``scopes`` holds ``"*"`` for the owner (the config-file key, the CLI, a server with no keys on
    loopback). ``models`` are globs the key may use (empty: any); ``rpm``/``tpm``/``budget`` its limits;
    ``policy`` the named governance policy it runs under (None: the default one).
    """

    name: str = "anonymous"
    key_id: str | None = None  # never the key itself
    scopes: frozenset[str] = frozenset({"*"})
    models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    budget: float | None = None  # USD
    policy: str | None = None

    def may(self, scope: str) -> bool:
        return "*" in self.scopes or scope in self.scopes


@dataclass(eq=False, slots=True)
class RequestContext:
    """Carried by the pipeline through every stage and into each usage row.

    ``door`` names the dialect the request came in through (``openai``, ``anthropic``, ``ollama``,
    ``responses``, ``cli``). Stages may leave notes for later ones in ``attrs``.
    """

    principal: Principal = field(default_factory=Principal)
    door: str = "openai"
    request_id: str = field(default_factory=lambda: new_id("req"))
    started: float = field(default_factory=time.perf_counter)
    route: Any = None  # the router's Route for the model asked for, set by the "route" stage
    target: str | None = None  # "provider/model" that answered, once known
    tier: int = 0
    stream: bool = False
    attempts: list[Attempt] = field(default_factory=list)  # one per call to a target, failures too
    attrs: dict[str, Any] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)  # stages' headers for the door to send


@dataclass(frozen=True, slots=True)
class Attempt:
    """One call to one target, as the usage stage records it."""

    route: str
    provider: str
    model: str
    tier: int
    usage: Usage
    latency_s: float
    status: str  # "ok" or the error's class name
    cost: float = 0.0


# ----- requests --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ContentPart:
    """A non-text part of a message (an image); text lives in ``ChatMessage.content``."""

    type: Literal["image"]
    media_type: str = ""
    data: bytes = b""  # decoded bytes for inline images
    url: str = ""  # or a URL

    def __repr__(self) -> str:
        return f"ContentPart({self.type}, {self.media_type or self.url[:32]}, {len(self.data)} bytes)"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the assistant made: ``arguments`` is the JSON text of the arguments object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str = ""
    parts: tuple[ContentPart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()  # role "assistant"
    tool_call_id: str | None = None  # role "tool": the call this message answers
    name: str | None = None  # role "tool": the tool's name, when the dialect sends it

    def __repr__(self) -> str:
        return (
            f"ChatMessage({self.role}, {len(self.content)} chars, parts={len(self.parts)}, "
            f"tool_calls={len(self.tool_calls)})"
        )


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; ``parameters`` is its arguments' JSON schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``auto``: the model decides; ``none``: no calls; ``required``: at least one; ``tool``: ``name``."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """``json``: any JSON object; ``json_schema``: JSON valid against ``schema``."""

    type: Literal["text", "json", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    name: str = "response"


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling as the client asked for it; ``None`` means unset (the model's configured default, else
    OpenAI's default, applies where the request is answered)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; N: each token's log-probability and its N likeliest rivals
    n: int = 1
    # Speculative decoding, a local-engine speed option (remote providers never get it): "ngram" on,
    # "none" off even where the model turns it on, None the model's setting.
    speculative: Speculative | None = None
    # Text the answer is expected to repeat largely (OpenAI's Predicted Outputs): the local engine drafts
    # from it; an OpenAI-compatible upstream gets it as ``prediction``. A speed hint: same output.
    prediction: str | None = None


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """One chat or completion request, whatever door it came through.

    ``kind == "chat"`` uses ``messages`` (and the model's chat template); ``"completion"`` uses ``prompt``
    (text or token ids) as is. ``echo`` (completions) puts the prompt in front of the answer.
    ``user`` is the client's end-user tag, passed on to providers that take one.

    ``prefix_tokens`` go in front of the prompt's own tokens (after the rendered chat template's tokens
    lose their leading BOS): Ollama's ``context``, a conversation carried as the token ids of its earlier
    turns. ``want_tokens`` asks for each choice's whole token sequence (prompt and answer) on its finish
    delta, to send back as the next turn's ``context``. Only llmhost's own engine has token ids: remote
    providers refuse ``prefix_tokens`` and leave ``want_tokens`` unanswered.
    """

    kind: RequestKind
    model: str
    messages: tuple[ChatMessage, ...] = ()
    prompt: str | tuple[int, ...] = ""
    sampling: Sampling = field(default_factory=Sampling)
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    echo: bool = False
    user: str | None = None
    cache_scope: str = ""  # whose prefix-cache hits this request may be told of (set by the route stage)
    prefix_tokens: tuple[int, ...] = ()
    want_tokens: bool = False

    def __repr__(self) -> str:
        size = len(self.messages) if self.kind == "chat" else len(self.prompt)
        return (
            f"InferenceRequest({self.kind}, model={self.model!r}, size={size}, tools={len(self.tools)}, "
            f"max_tokens={self.sampling.max_tokens}, n={self.sampling.n})"
        )


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """``truncate``: an input longer than the model embeds at once is cut to fit (Ollama's default);
    otherwise it is a 400 (OpenAI's way)."""

    model: str
    inputs: tuple[str | tuple[int, ...], ...]
    dimensions: int | None = None
    user: str | None = None
    truncate: bool = False

    def __repr__(self) -> str:
        return f"EmbedRequest(model={self.model!r}, inputs={len(self.inputs)})"


# ----- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a streamed tool call: the first fragment of a call has ``id`` and ``name``; the
    following ones extend ``arguments``. ``index`` numbers the calls within one choice."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of a streamed answer for choice ``index``.

    A choice ends with a delta that has ``finish_reason`` (and ``stop_sequence``, the stop string that
    ended it, if one did). The stream ends with one delta that has ``usage`` (the whole request's, all
    choices together) and ``index == -1``. A local model's first delta carries the prompt's usage
    (prompt and cached tokens, no completion tokens yet), so a door can tell it before the answer.
    A finish delta of a request with ``want_tokens`` has ``tokens``: the prompt's and that choice's
    answer's token ids.
    """

    index: int = 0
    text: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None
    usage: Usage | None = None
    tokens: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        return (
            f"Delta({self.index}, {len(self.text)} chars, tool_calls={len(self.tool_calls)}, "
            f"finish={self.finish_reason}, usage={self.usage})"
        )


@dataclass(slots=True)
class Choice:
    index: int = 0
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None
    tokens: list[int] | None = None  # prompt and answer as token ids (``InferenceRequest.want_tokens``)

    def __repr__(self) -> str:
        return f"Choice({self.index}, {len(self.text)} chars, finish={self.finish_reason})"


@dataclass(slots=True)
class Result:
    """A whole answer. ``model`` is the name the client asked for; ``target`` who answered it."""

    id: str
    model: str
    choices: list[Choice]
    usage: Usage = field(default_factory=Usage)
    created: int = field(default_factory=lambda: int(time.time()))
    target: str = ""
    ensemble: dict[str, Any] | None = None  # an ensemble's account: members, their answers, the winner
    citations: list[dict[str, Any]] | None = None  # an agent's retrieved sources, numbered as cited

    @property
    def text(self) -> str:
        return self.choices[0].text if self.choices else ""


@dataclass(slots=True)
class Embeddings:
    vectors: list[list[float]]
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    target: str = ""


# ----- operations: calls that are not inference ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Operation:
    """A call that runs no model itself (an MCP tool such as ``list_models`` or ``fs_read``) but goes
    through the pipeline all the same, so it is authorised, rate-limited, inspected and audited.

    ``arguments`` is the call's input as JSON text (what the audit record hashes and the policy reads);
    ``model`` names the model the call is about, if any (the key's model globs apply to it).
    """

    name: str
    scope: str
    arguments: str = "{}"
    model: str = ""

    def __repr__(self) -> str:
        return f"Operation({self.name!r}, scope={self.scope!r}, {len(self.arguments)} chars of arguments)"


@dataclass(slots=True)
class OperationResult:
    """What an operation gave: its output as JSON text, or the error it reports as a result (an MCP
    tool's ``isError``) rather than raises."""

    output: str = ""
    error: str = ""
    status: int = 200  # the error's HTTP-like status (400 bad input, 403 refused, 404 unknown ...)

    def __repr__(self) -> str:
        return f"OperationResult({len(self.output)} chars, error={bool(self.error)})"
