"""Turns protocol requests into service calls, and results into OpenAI's JSON and SSE shapes."""

from __future__ import annotations

import base64
import json
import logging
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from llmhost.api.errors import status_for
from llmhost.api.openai.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    ResponseFormat,
)
from llmhost.engine.types import FinishReason, RequestOutput, SamplingParams
from llmhost.errors import EngineError, LLMHostError, RequestError
from llmhost.service import Generation, Service

__all__ = ["OpenAIServing"]

log = logging.getLogger(__name__)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


_DONE = b"data: [DONE]\n\n"


def _usage(out: RequestOutput) -> dict[str, Any]:
    return {
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        "total_tokens": out.prompt_tokens + out.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": out.cached_tokens},
    }


def _finish_reason(reason: FinishReason | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason is FinishReason.LENGTH else "stop"


def _message_text(message: ChatMessage) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts: list[str] = []
    for part in message.content:
        text = getattr(part, "text", None)
        if part.type != "text" or text is None:
            raise RequestError(
                f"content part type '{part.type}' is not supported: this model reads text only",
                param="messages",
            )
        parts.append(text)
    return "".join(parts)


def _grammar_for(response_format: ResponseFormat | None) -> str | None:
    if response_format is None or response_format.type == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if response_format.type == "json_object":
        return str(JSON_GBNF)
    spec = response_format.json_schema
    if spec is None or spec.schema_ is None:
        raise RequestError("response_format.json_schema.schema is required", param="response_format")
    try:
        return str(json_schema_to_gbnf(json.dumps(spec.schema_)))
    except Exception as exc:
        raise RequestError(f"unsupported JSON schema: {exc}", param="response_format") from exc


def _sampling(
    req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None, defaults: dict[str, float | int]
) -> SamplingParams:
    """Request fields win; the model's configured defaults fill what the request leaves unset."""
    if req.n != 1:
        raise RequestError("only n=1 is supported", param="n")
    stop: tuple[str, ...] = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    bias: dict[int, float] = {}
    for key, value in (req.logit_bias or {}).items():
        try:
            bias[int(key)] = value
        except ValueError:
            raise RequestError(f"logit_bias key {key!r} is not a token id", param="logit_bias") from None
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=float(_pick(req.temperature, defaults, "temperature", 1.0)),
        top_p=float(_pick(req.top_p, defaults, "top_p", 1.0)),
        top_k=int(_pick(req.top_k, defaults, "top_k", 0)),
        min_p=float(_pick(req.min_p, defaults, "min_p", 0.0)),
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repeat_penalty=float(_pick(req.repeat_penalty, defaults, "repeat_penalty", 1.0)),
        logit_bias=bias,
        stop=stop,
        grammar=_grammar_for(req.response_format),
        ignore_eos=req.ignore_eos,
    )


def _pick(
    value: float | int | None, defaults: dict[str, float | int], key: str, fallback: float
) -> float | int:
    if value is not None:
        return value
    return defaults.get(key, fallback)


class OpenAIServing:
    """The OpenAI-compatible endpoints over one :class:`Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service

    # ----- models ------------------------------------------------------------------------------------
    def model_card(self, name: str) -> dict[str, Any]:
        record = self.service.get_model(name)
        return {
            "id": record.name,
            "object": "model",
            "created": int(record.created_at.timestamp()),
            "owned_by": "llmhost",
        }

    def list_models(self) -> dict[str, Any]:
        data = [
            {"id": r.name, "object": "model", "created": int(r.created_at.timestamp()), "owned_by": "llmhost"}
            for r in self.service.list_models()
        ]
        return {"object": "list", "data": data}

    # ----- chat --------------------------------------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest) -> tuple[Generation, SamplingParams]:
        if req.logprobs:
            raise RequestError("logprobs are not supported yet", param="logprobs")
        defaults = self.service.sampling_defaults(req.model)
        params = _sampling(req, req.max_completion_tokens or req.max_tokens, defaults)
        messages = [{"role": m.role, "content": _message_text(m)} for m in req.messages]
        for m in messages:
            if m["role"] == "developer":
                m["role"] = "system"
        return await self.service.chat(req.model, messages, params), params

    async def chat_full(self, req: ChatCompletionRequest) -> dict[str, Any]:
        gen, _ = await self.chat(req)
        text, last = await _collect(gen)
        return {
            "id": gen.request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": gen.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": _finish_reason(last.finish_reason),
                }
            ],
            "usage": _usage(last),
        }

    async def chat_stream(self, gen: Generation, include_usage: bool) -> AsyncIterator[bytes]:
        created = int(time.time())
        base: dict[str, Any] = {
            "id": gen.request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": gen.model,
            "system_fingerprint": None,
        }
        if include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse({**base, "choices": [choice]})

        yield chunk({"role": "assistant", "content": ""}, None)
        async for item in _stream_outputs(gen):
            if isinstance(item, bytes):
                yield item
                return
            out = item
            if out.text:
                yield chunk({"content": out.text}, None)
            if out.finished:
                yield chunk({}, _finish_reason(out.finish_reason))
                if include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage(out)})
        yield _DONE

    # ----- completions -------------------------------------------------------------------------------
    async def complete(self, req: CompletionRequest) -> tuple[Generation, str]:
        if req.logprobs:
            raise RequestError("logprobs are not supported yet", param="logprobs")
        if req.suffix:
            raise RequestError("suffix is not supported", param="suffix")
        if req.best_of not in (None, 1):
            raise RequestError("only best_of=1 is supported", param="best_of")
        prompt: str | list[int]
        p = req.prompt
        if isinstance(p, str):
            prompt = p
        elif p and all(isinstance(x, int) for x in p):
            prompt = [int(x) for x in p]  # type: ignore[arg-type]
        elif len(p) == 1:
            prompt = p[0]  # type: ignore[assignment]
        else:
            raise RequestError("exactly one prompt per request is supported", param="prompt")
        if prompt == "" or prompt == []:
            raise RequestError("prompt must not be empty", param="prompt")
        params = _sampling(req, req.max_tokens, self.service.sampling_defaults(req.model))
        gen = await self.service.complete(req.model, prompt, params)
        echo = ""
        if req.echo:
            echo = prompt if isinstance(prompt, str) else ""
        return gen, echo

    async def complete_full(self, req: CompletionRequest) -> dict[str, Any]:
        gen, echo = await self.complete(req)
        text, last = await _collect(gen)
        return {
            "id": gen.request_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": gen.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "text": echo + text,
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": _finish_reason(last.finish_reason),
                }
            ],
            "usage": _usage(last),
        }

    async def complete_stream(self, gen: Generation, echo: str, include_usage: bool) -> AsyncIterator[bytes]:
        base: dict[str, Any] = {
            "id": gen.request_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": gen.model,
            "system_fingerprint": None,
        }
        if include_usage:
            base["usage"] = None

        def chunk(text: str, finish: str | None) -> bytes:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
            return _sse({**base, "choices": [choice]})

        if echo:
            yield chunk(echo, None)
        async for item in _stream_outputs(gen):
            if isinstance(item, bytes):
                yield item
                return
            out = item
            if out.text or out.finished:
                yield chunk(out.text, _finish_reason(out.finish_reason))
            if out.finished and include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(out)})
        yield _DONE

    # ----- embeddings --------------------------------------------------------------------------------
    async def embeddings(self, req: EmbeddingRequest) -> dict[str, Any]:
        raw = req.input
        inputs: list[str | list[int]]
        if isinstance(raw, str):
            inputs = [raw]
        elif raw and all(isinstance(x, int) for x in raw):
            inputs = [[int(x) for x in raw]]  # type: ignore[arg-type]
        else:
            inputs = list(raw)  # type: ignore[arg-type]
        if not inputs or any(len(x) == 0 for x in inputs):
            raise RequestError("input must be a non-empty string or array", param="input")
        if len(inputs) > 2048:
            raise RequestError("at most 2048 inputs per request", param="input")
        vectors, n_tokens = await self.service.embed(req.model, inputs)
        if req.dimensions is not None and req.dimensions != len(vectors[0]):
            raise RequestError(
                f"this model's embeddings have {len(vectors[0])} dimensions; "
                f"dimensions={req.dimensions} is not supported",
                param="dimensions",
            )
        data = []
        for i, vec in enumerate(vectors):
            emb: list[float] | str = vec
            if req.encoding_format == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }


async def _collect(gen: Generation) -> tuple[str, RequestOutput]:
    parts: list[str] = []
    last: RequestOutput | None = None
    try:
        async for out in gen.stream:
            if out.error is not None:
                raise out.error if isinstance(out.error, LLMHostError) else EngineError(str(out.error))
            parts.append(out.text)
            last = out
    finally:
        gen.stream.cancel()
    assert last is not None
    return "".join(parts), last


async def _stream_outputs(gen: Generation) -> AsyncIterator[RequestOutput | bytes]:
    """Outputs of a generation; an engine error becomes one SSE error event plus [DONE]."""
    try:
        async for out in gen.stream:
            if out.error is not None:
                err = out.error if isinstance(out.error, LLMHostError) else EngineError(str(out.error))
                _, body, _ = status_for(err)
                yield _sse(body) + _DONE
                return
            yield out
    finally:
        gen.stream.cancel()  # the client went away, or we are done: free the slot
