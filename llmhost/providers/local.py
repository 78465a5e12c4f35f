"""The local provider: llmhost's own engine behind the :class:`Provider` protocol.

It turns OpenAI-shaped requests into engine requests (chat template, sampling parameters, grammar for
``response_format``) and engine outputs back into OpenAI objects and chunks.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from llmhost.engine.types import FinishReason, RequestOutput, SamplingParams, TokenLogprob
from llmhost.errors import EngineError, LLMHostError, RequestError
from llmhost.providers.base import ChatRequest, CompletionRequest, EmbeddingRequest
from llmhost.service import Generation, Service

__all__ = ["LocalProvider", "sampling_from_params"]


def finish_reason_name(reason: FinishReason | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason is FinishReason.LENGTH else "stop"


def usage_of(out: RequestOutput) -> dict[str, Any]:
    return {
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        "total_tokens": out.prompt_tokens + out.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": out.cached_tokens},
    }


def grammar_for(response_format: dict[str, Any] | None) -> str | None:
    """GBNF for OpenAI's ``response_format`` (json_object / json_schema), or None for text."""
    if not response_format or response_format.get("type", "text") == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if response_format["type"] == "json_object":
        return str(JSON_GBNF)
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise RequestError("response_format.json_schema.schema is required", param="response_format")
    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:
        raise RequestError(f"unsupported JSON schema: {exc}", param="response_format") from exc


def _pick(params: dict[str, Any], defaults: dict[str, float | int], key: str, fallback: float) -> float:
    value = params.get(key)
    if value is None:
        value = defaults.get(key, fallback)
    return float(value)


def sampling_from_params(params: dict[str, Any], defaults: dict[str, float | int]) -> SamplingParams:
    """OpenAI request fields -> engine sampling; the model's configured defaults fill unset fields."""
    if params.get("n", 1) != 1:
        raise RequestError("only n=1 is supported", param="n")
    stop_raw = params.get("stop")
    stop: tuple[str, ...] = (stop_raw,) if isinstance(stop_raw, str) else tuple(stop_raw or ())
    bias: dict[int, float] = {}
    for key, value in (params.get("logit_bias") or {}).items():
        try:
            bias[int(key)] = float(value)
        except ValueError:
            raise RequestError(f"logit_bias key {key!r} is not a token id", param="logit_bias") from None
    max_tokens = params.get("max_completion_tokens") or params.get("max_tokens")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_pick(params, defaults, "temperature", 1.0),
        top_p=_pick(params, defaults, "top_p", 1.0),
        top_k=int(_pick(params, defaults, "top_k", 0)),
        min_p=_pick(params, defaults, "min_p", 0.0),
        seed=params.get("seed"),
        presence_penalty=float(params.get("presence_penalty") or 0.0),
        frequency_penalty=float(params.get("frequency_penalty") or 0.0),
        repeat_penalty=_pick(params, defaults, "repeat_penalty", 1.0),
        logit_bias=bias,
        stop=stop,
        grammar=grammar_for(params.get("response_format")),
        ignore_eos=bool(params.get("ignore_eos", False)),
        logprobs=logprobs_wanted(params),
    )


def logprobs_wanted(params: dict[str, Any]) -> int | None:
    """How many alternatives per token the request wants log-probabilities for, or None for none.

    Chat sends ``logprobs: true`` plus ``top_logprobs: N``; the legacy completions API sends
    ``logprobs: N``.
    """
    value = params.get("logprobs")
    top = params.get("top_logprobs")
    if isinstance(value, bool) or value is None:
        if top is not None and not value:
            raise RequestError("top_logprobs requires logprobs to be true", param="top_logprobs")
        return int(top or 0) if value else None
    if params.get("echo"):
        raise RequestError("logprobs together with echo is not supported", param="logprobs")
    return int(value)


def _token_str(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def chat_logprobs(items: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """OpenAI chat ``logprobs`` object: one entry per token with its ``top_logprobs``."""
    return {
        "content": [
            {
                "token": _token_str(item.token),
                "logprob": item.logprob,
                "bytes": list(item.token),
                "top_logprobs": [
                    {"token": _token_str(raw), "logprob": lp, "bytes": list(raw)} for raw, lp in item.top
                ],
            }
            for item in items
        ],
        "refusal": None,
    }


def completion_logprobs(items: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int) -> dict[str, Any]:
    """OpenAI legacy completions ``logprobs`` object; ``offset`` is the text offset of the first token."""
    tokens: list[str] = []
    offsets: list[int] = []
    for item in items:
        tokens.append(_token_str(item.token))
        offsets.append(offset)
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [item.logprob for item in items],
        "top_logprobs": [
            {_token_str(raw): lp for raw, lp in (*item.top, (item.token, item.logprob))} for item in items
        ],
        "text_offset": offsets,
    }


def _raise_output_error(out: RequestOutput) -> None:
    if out.error is not None:
        raise out.error if isinstance(out.error, LLMHostError) else EngineError(str(out.error))


def message_text(message: dict[str, Any]) -> str:
    """A message's content as one string: text parts joined; other parts are refused."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    parts: list[str] = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise RequestError(
                f"content part type '{part.get('type')}' is not supported: this model reads text only",
                param="messages",
            )
        parts.append(part["text"])
    return "".join(parts)


class LocalProvider:
    """The in-process engine as a provider."""

    def __init__(self, service: Service, name: str = "local") -> None:
        self.service = service
        self.name = name

    async def _start_chat(self, request: ChatRequest) -> Generation:
        params = sampling_from_params(request.params, self.service.sampling_defaults(request.model))
        messages = [{"role": m["role"], "content": message_text(m)} for m in request.messages]
        return await self.service.chat(request.model, messages, params)

    async def _start_completion(self, request: CompletionRequest) -> Generation:
        if request.params.get("suffix"):
            raise RequestError("suffix is not supported", param="suffix")
        if request.params.get("best_of") not in (None, 1):
            raise RequestError("only best_of=1 is supported", param="best_of")
        params = sampling_from_params(request.params, self.service.sampling_defaults(request.model))
        return await self.service.complete(request.model, request.prompt, params)

    @staticmethod
    async def _collect(gen: Generation) -> tuple[str, RequestOutput, list[TokenLogprob]]:
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        last: RequestOutput | None = None
        try:
            async for out in gen.stream:
                _raise_output_error(out)
                parts.append(out.text)
                logprobs.extend(out.logprobs)
                last = out
        finally:
            gen.stream.cancel()
        assert last is not None
        return "".join(parts), last, logprobs

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        gen = await self._start_chat(request)
        text, last, logprobs = await self._collect(gen)
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
                    "logprobs": chat_logprobs(logprobs) if gen.logprobs else None,
                    "finish_reason": finish_reason_name(last.finish_reason),
                }
            ],
            "usage": usage_of(last),
        }

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        gen = await self._start_chat(request)
        base = {
            "id": gen.request_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": gen.model,
            "system_fingerprint": None,
        }

        def chunk(
            delta: dict[str, Any], finish: str | None, logprobs: tuple[TokenLogprob, ...] = ()
        ) -> dict[str, Any]:
            lp = chat_logprobs(logprobs) if logprobs else None
            return {
                **base,
                "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}],
            }

        try:
            yield chunk({"role": "assistant", "content": ""}, None)
            async for out in gen.stream:
                _raise_output_error(out)
                if out.text or out.logprobs:
                    yield chunk({"content": out.text}, None, out.logprobs)
                if out.finished:
                    yield chunk({}, finish_reason_name(out.finish_reason))
                    yield {**base, "choices": [], "usage": usage_of(out)}
        finally:
            gen.stream.cancel()  # the consumer left early (client gone): free the slot

    async def complete(self, request: CompletionRequest) -> dict[str, Any]:
        gen = await self._start_completion(request)
        text, last, logprobs = await self._collect(gen)
        echo = request.prompt if request.params.get("echo") and isinstance(request.prompt, str) else ""
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
                    "logprobs": completion_logprobs(logprobs, len(echo)) if gen.logprobs else None,
                    "finish_reason": finish_reason_name(last.finish_reason),
                }
            ],
            "usage": usage_of(last),
        }

    async def complete_stream(self, request: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        gen = await self._start_completion(request)
        base = {
            "id": gen.request_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": gen.model,
            "system_fingerprint": None,
        }

        offset = 0

        def chunk(text: str, finish: str | None, logprobs: tuple[TokenLogprob, ...] = ()) -> dict[str, Any]:
            lp = completion_logprobs(logprobs, offset) if gen.logprobs else None
            return {
                **base,
                "choices": [{"text": text, "index": 0, "logprobs": lp, "finish_reason": finish}],
            }

        try:
            if request.params.get("echo") and isinstance(request.prompt, str):
                yield chunk(request.prompt, None)
                offset += len(request.prompt)
            async for out in gen.stream:
                _raise_output_error(out)
                if out.text or out.finished or out.logprobs:
                    yield chunk(out.text, finish_reason_name(out.finish_reason), out.logprobs)
                    offset += sum(len(_token_str(item.token)) for item in out.logprobs)
                if out.finished:
                    yield {**base, "choices": [], "usage": usage_of(out)}
        finally:
            gen.stream.cancel()

    async def embed(self, request: EmbeddingRequest) -> dict[str, Any]:
        inputs: list[str | list[int]] = list(request.input)
        vectors, n_tokens = await self.service.embed(request.model, inputs)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": request.model,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }

    async def list_models(self) -> list[str]:
        return [r.name for r in self.service.list_models()]

    async def health(self) -> bool:
        return self.service.ready

    async def aclose(self) -> None:
        return None
