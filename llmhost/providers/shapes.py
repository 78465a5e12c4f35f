"""OpenAI response and chunk builders for the providers that translate from another wire format.

Anthropic and Ollama answers become the same shapes an OpenAI-compatible server sends: a
``chat.completion`` / ``text_completion`` object, or a stream of chunks that starts with a role chunk,
carries text deltas, ends with a chunk holding ``finish_reason`` and then a ``choices: []`` chunk holding
``usage`` (OpenAI's ``stream_options.include_usage`` layout).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from llmhost.providers.base import ProviderHTTPError

__all__ = [
    "chat_chunk",
    "chat_chunk_to_text_chunk",
    "chat_completion",
    "chat_to_text_chunks",
    "chat_to_text_completion",
    "new_id",
    "now",
    "unsupported",
    "usage",
    "usage_chunk",
]


def new_id(prefix: str) -> str:
    """A fresh OpenAI-style id such as ``chatcmpl-3f2a...``."""
    return f"{prefix}-{os.urandom(12).hex()}"


def unsupported(provider: str, what: str) -> ProviderHTTPError:
    """A non-retryable 400: the request asks for something this backend's API cannot do."""
    return ProviderHTTPError(f"{provider}: {what}", provider=provider, status=400)


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens:
        result["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return result


def chat_completion(
    id_: str, created: int, model: str, content: str, finish_reason: str, usage_: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": id_,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage_,
    }


def chat_chunk(
    id_: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(id_: str, created: int, model: str, usage_: dict[str, Any], obj: str) -> dict[str, Any]:
    return {"id": id_, "object": obj, "created": created, "model": model, "choices": [], "usage": usage_}


def chat_to_text_completion(completion: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` recast as the ``text_completion`` a completions call returns."""
    choice = completion["choices"][0]
    return {
        "id": completion["id"].replace("chatcmpl-", "cmpl-", 1),
        "object": "text_completion",
        "created": completion["created"],
        "model": completion["model"],
        "choices": [
            {
                "index": 0,
                "text": choice["message"]["content"] or "",
                "logprobs": None,
                "finish_reason": choice["finish_reason"],
            }
        ],
        "usage": completion["usage"],
    }


async def chat_to_text_chunks(chunks: AsyncIterator[dict[str, Any]]) -> AsyncGenerator[dict[str, Any], None]:
    """Chat chunks recast as ``text_completion`` chunks; the role-only chunk has no counterpart."""
    try:
        async for chunk in chunks:
            text_chunk = chat_chunk_to_text_chunk(chunk)
            if text_chunk is not None:
                yield text_chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()  # close the upstream response now, not whenever the generator is collected


def chat_chunk_to_text_chunk(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """One chat chunk as a ``text_completion`` chunk, or ``None`` for a chunk with neither text nor end."""
    base = {
        "id": chunk["id"].replace("chatcmpl-", "cmpl-", 1),
        "object": "text_completion",
        "created": chunk["created"],
        "model": chunk["model"],
    }
    if not chunk["choices"]:
        return {**base, "choices": [], "usage": chunk.get("usage")}
    choice = chunk["choices"][0]
    text = choice["delta"].get("content") or ""
    if not text and choice["finish_reason"] is None:
        return None
    return {
        **base,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": choice["finish_reason"]}],
    }


def now() -> int:
    return int(time.time())
