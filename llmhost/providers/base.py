"""The ``Provider`` protocol: one interface for the local engine and every remote API.

Requests and responses are OpenAI-shaped plain dicts — OpenAI's wire format is llmhost's lingua franca —
so the router can retry, fall back and account without knowing which backend answered. A provider
translates to and from its own wire format (Anthropic Messages, Ollama /api/chat) internally.

Streams yield ``chat.completion.chunk`` / ``text_completion`` chunk dicts and end with one chunk that
carries ``usage`` (providers ask upstream for it, or count). Failures raise :class:`ProviderError`
subclasses; ``retryable`` tells the router whether another attempt (or the next target) may succeed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from llmhost.errors import LLMHostError

__all__ = [
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "Provider",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderHTTPError",
    "ProviderStreamError",
    "ProviderTimeoutError",
]


class ProviderError(LLMHostError):
    """A backend failed. Messages never contain credentials."""

    retryable: bool = True

    def __init__(self, message: str, *, provider: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status


class ProviderConnectionError(ProviderError):
    """Could not connect (refused, DNS, TLS, reset before a response)."""


class ProviderTimeoutError(ProviderError):
    """Connect, first-token or total timeout."""


class ProviderHTTPError(ProviderError):
    """The backend answered with an error status; 429 and 5xx are retryable, other 4xx are not."""

    def __init__(
        self, message: str, *, provider: str = "", status: int, body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, provider=provider, status=status)
        self.body = body
        self.retryable = status == 429 or status >= 500


class ProviderStreamError(ProviderError):
    """A stream broke after it had started (tokens were already sent)."""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """An OpenAI chat request for one backend. ``model`` is the backend's own model name."""

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(
        default_factory=dict
    )  # OpenAI fields that were set: max_tokens, temperature,
    # top_p, stop, seed, presence_penalty, frequency_penalty, logit_bias, response_format, n, user, ...

    def __repr__(self) -> str:  # prompts stay out of logs
        return (
            f"ChatRequest(model={self.model!r}, messages={len(self.messages)}, params={sorted(self.params)})"
        )


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str
    prompt: str | list[int]
    params: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"CompletionRequest(model={self.model!r}, params={sorted(self.params)})"


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    input: list[str] | list[list[int]]
    params: dict[str, Any] = field(default_factory=dict)  # encoding_format, dimensions, user


@runtime_checkable
class Provider(Protocol):
    """A backend that can answer OpenAI-shaped requests."""

    name: str  # the configured provider name, e.g. "local", "openai", "claude"

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        """A full ``chat.completion`` object."""
        ...

    def chat_stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        """``chat.completion.chunk`` objects; the last one carries ``usage``."""
        ...

    async def complete(self, request: CompletionRequest) -> dict[str, Any]:
        """A full ``text_completion`` object."""
        ...

    def complete_stream(self, request: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        """``text_completion`` chunks; the last one carries ``usage``."""
        ...

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        """An OpenAI embeddings ``list`` object with float vectors."""
        ...

    async def list_models(self) -> list[str]:
        """Model names the backend serves."""
        ...

    async def health(self) -> bool:
        """A cheap liveness probe."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
