"""The ``Provider`` protocol: one interface for the local engine and every remote API, over core types.

A provider takes an :class:`~llmhost.core.types.InferenceRequest` whose ``model`` is the backend's own
model name (the router has already resolved the public name) and answers a
:class:`~llmhost.core.types.Result`, or a stream of :class:`~llmhost.core.types.Delta` objects that ends
with one delta carrying ``usage`` (providers ask upstream for it, or count). Each provider translates to
and from its own wire format (OpenAI's, Anthropic Messages, Ollama's /api/chat) inside itself.

Failures raise :class:`~llmhost.errors.ProviderError` subclasses (or the llmhost error that fits, such as
``RequestError`` for a request the backend cannot take); ``retryable`` tells the router whether another
attempt (or the next target) may succeed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from llmhost.core.types import Delta as Delta
from llmhost.core.types import Embeddings, EmbedRequest, InferenceRequest, Result
from llmhost.errors import (
    ProviderConnectionError,
    ProviderError,
    ProviderHTTPError,
    ProviderStreamError,
    ProviderTimeoutError,
    RequestError,
)

__all__ = [
    "Provider",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderHTTPError",
    "ProviderStreamError",
    "ProviderTimeoutError",
    "refuse_prefix_tokens",
]


def refuse_prefix_tokens(request: InferenceRequest, api: str) -> None:
    """A remote API has no token ids of its own to continue: a request carrying some (Ollama's
    ``context``) is a 400 there, not an answer that silently forgot the conversation."""
    if request.prefix_tokens:
        raise RequestError(
            f"context (token ids of earlier turns) needs a model on this server's own engine; the {api} "
            "behind this model takes text: send the conversation to /api/chat",
            param="context",
        )


@runtime_checkable
class Provider(Protocol):
    """A backend that answers typed inference requests."""

    name: str  # the configured provider name, e.g. "local", "openai", "claude"

    async def answer(self, request: InferenceRequest) -> Result:
        """A whole answer (``Result.model`` is the backend's model name; the router renames it)."""
        ...

    def stream(self, request: InferenceRequest) -> AsyncIterator[Delta]:
        """Deltas; choices end with a ``finish_reason`` delta, the stream with a ``usage`` delta."""
        ...

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """One float vector per input."""
        ...

    async def count_tokens(self, request: InferenceRequest) -> int:
        """Input tokens the request would use (the prompt after the chat template)."""
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
