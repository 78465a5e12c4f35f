"""The gateway: public model name -> route -> ordered targets -> breaker-guarded calls with fallback.

A name with a ``[routes.NAME]`` entry uses that route: its strategy orders the targets, each target is
tried (with retries and backoff on retryable errors) unless its circuit breaker is open, and the next
target takes over on failure. Streams fall back transparently until their first token; after that a
failure ends the stream with an error event. A cascade route escalates to the next target when a check
on the answer fails (invalid JSON for a JSON request, an empty answer).

Any other name that is a local model is an implicit single-target route to the engine: no breaker, no
retries, errors unchanged (a 429 stays a 429).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from llmhost.config import Settings, TargetSettings
from llmhost.errors import (
    ContextLengthError,
    LLMHostError,
    ModelNotFoundError,
    NotReadyError,
    RequestError,
)
from llmhost.providers.base import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    Provider,
    ProviderError,
)
from llmhost.providers.http import carries_output
from llmhost.router.breaker import CircuitBreaker
from llmhost.router.cost import UsageRecord, UsageStore, cost_of
from llmhost.router.strategies import Target, order_targets

__all__ = ["Gateway", "Route", "build_providers", "cascade_check_fails", "is_retryable"]

log = logging.getLogger(__name__)

Chunk = dict[str, Any]
_Req = TypeVar("_Req", ChatRequest, CompletionRequest)


@dataclass(eq=False)
class Route:
    name: str
    strategy: str
    targets: list[Target]
    retries: int = 0
    backoff: float = 0.05
    cascade: list[str] = field(default_factory=list)
    explicit: bool = True
    min_logprob: float = -1.0


def is_retryable(exc: BaseException) -> bool:
    """May another attempt, or another target, succeed where this one failed?"""
    if isinstance(exc, ProviderError):
        return exc.retryable
    if isinstance(exc, ContextLengthError | RequestError):
        return isinstance(exc, ModelNotFoundError)
    return isinstance(exc, LLMHostError | OSError)


def _answer_text(response: Chunk) -> str:
    choice = (response.get("choices") or [{}])[0]
    if "message" in choice:
        return str(choice["message"].get("content") or "")
    return str(choice.get("text") or "")


def mean_logprob(response: Chunk) -> float | None:
    """Mean log-probability of the answer's tokens (chat or completions shape), or None without them."""
    choice = (response.get("choices") or [{}])[0]
    logprobs = choice.get("logprobs") or {}
    values: list[float] = []
    if isinstance(logprobs.get("content"), list):
        values = [float(item["logprob"]) for item in logprobs["content"] if item.get("logprob") is not None]
    elif isinstance(logprobs.get("token_logprobs"), list):
        values = [float(v) for v in logprobs["token_logprobs"] if v is not None]
    return sum(values) / len(values) if values else None


def with_logprobs(params: dict[str, Any], chat: bool) -> dict[str, Any]:
    """Request parameters that make a provider return token log-probabilities."""
    if chat:
        return {**params, "logprobs": True}
    value = params.get("logprobs")
    return {**params, "logprobs": value if isinstance(value, int) and not isinstance(value, bool) else 0}


def cascade_check_fails(
    checks: list[str], request_params: dict[str, Any], response: Chunk, min_logprob: float = -1.0
) -> str | None:
    """Name of the first failing check, or None when the answer is acceptable."""
    text = _answer_text(response)
    for check in checks:
        if check == "nonempty" and not text.strip():
            return "empty answer"
        if check == "logprob":
            mean = mean_logprob(response)
            if mean is None:
                return "no token log-probabilities to judge the answer by"
            if mean < min_logprob:
                return f"mean token log-probability {mean:.3f} is below {min_logprob}"
        if check == "json" and (request_params.get("response_format") or {}).get("type") in {
            "json_object",
            "json_schema",
        }:
            try:
                value = json.loads(text)
            except ValueError:
                return "answer is not valid JSON"
            schema = ((request_params["response_format"].get("json_schema") or {}).get("schema")) or {}
            missing = [k for k in schema.get("required", []) if not isinstance(value, dict) or k not in value]
            if missing:
                return f"answer lacks required keys {missing}"
    return None


def build_providers(settings: Settings, local: Provider) -> dict[str, Provider]:
    """Provider objects for ``[providers]``, plus ``local``."""
    providers: dict[str, Provider] = {"local": local}
    for name, cfg in settings.providers.items():
        if cfg.type == "local":
            providers[name] = local
            continue
        from llmhost.providers.http import Timeouts, resolve_secret

        timeouts = Timeouts(
            connect=cfg.timeout_connect, first_token=cfg.timeout_first_token, total=cfg.timeout_total
        )
        secret = cfg.api_key.get_secret_value() if cfg.api_key else None
        key = resolve_secret(secret, cfg.api_key_env, cfg.api_key_file)
        if cfg.type == "openai":
            from llmhost.providers.openai_compat import OpenAICompatProvider

            assert cfg.base_url is not None
            providers[name] = OpenAICompatProvider(
                name, cfg.base_url, api_key=key, timeouts=timeouts, extra_headers=cfg.headers or None
            )
        elif cfg.type == "anthropic":
            from llmhost.providers.anthropic import AnthropicProvider

            providers[name] = AnthropicProvider(
                name, base_url=cfg.base_url or "https://api.anthropic.com", api_key=key, timeouts=timeouts
            )
        elif cfg.type == "ollama":
            from llmhost.providers.ollama import OllamaProvider

            providers[name] = OllamaProvider(
                name, base_url=cfg.base_url or "http://127.0.0.1:11434", timeouts=timeouts
            )
    return providers


class Gateway:
    """Runs every generation through routes, breakers and fallback, and records usage."""

    def __init__(
        self,
        settings: Settings,
        providers: dict[str, Provider],
        *,
        is_local_model: Callable[[str], bool],
        usage: UsageStore | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.is_local_model = is_local_model
        self.usage = usage
        self.rng = rng or random.Random()
        self.breakers: dict[str, CircuitBreaker] = {}
        self.routes: dict[str, Route] = {}
        for name, cfg in settings.routes.items():
            targets = [Target(name, i, t) for i, t in enumerate(cfg.targets)]
            for t in targets:
                self._breaker(t)
            self.routes[name] = Route(
                name,
                cfg.strategy,
                targets,
                cfg.retries,
                cfg.backoff,
                list(cfg.cascade),
                True,
                cfg.min_logprob,
            )
        self._health_task: asyncio.Task[None] | None = None

    def _breaker(self, target: Target) -> CircuitBreaker:
        b = self.breakers.get(target.key)
        if b is None:
            cfg = self.settings.breaker
            b = self.breakers[target.key] = CircuitBreaker(cfg.failures, cfg.window, cfg.cooldown)
        return b

    def resolve(self, model: str) -> Route:
        route = self.routes.get(model)
        if route is not None:
            return route
        if self.is_local_model(model):
            target = Target(model, 0, TargetSettings(provider="local", model=model))
            return Route(model, "priority", [target], explicit=False)
        raise ModelNotFoundError(model)

    def public_models(self) -> list[str]:
        return sorted(self.routes)

    # ----- non-streaming -----------------------------------------------------------------------------
    async def _call(
        self,
        route: Route,
        params: dict[str, Any],
        fn: Callable[[Provider, str], Awaitable[Chunk]],
        stream: bool = False,
    ) -> tuple[Chunk, Target, int]:
        last_exc: BaseException | None = None
        ordered = order_targets(route.name, route.strategy, route.targets, self.rng)
        for tier, target in enumerate(ordered):
            provider = self.providers[target.settings.provider]
            breaker = self._breaker(target) if route.explicit else None
            for attempt in range(route.retries + 1):
                if breaker is not None and not breaker.allow():
                    last_exc = last_exc or _circuit_open(target)
                    break
                started = time.perf_counter()
                try:
                    result = await fn(provider, target.settings.model)
                except Exception as exc:
                    last_exc = exc
                    if await self._failed(route, target, tier, breaker, exc, started, stream, attempt):
                        continue
                    break
                elapsed = time.perf_counter() - started
                target.latency.add(elapsed)
                if breaker is not None:
                    breaker.record_success()
                failed = (
                    cascade_check_fails(route.cascade, params, result, route.min_logprob)
                    if tier < len(ordered) - 1
                    else None
                )
                self._record(route, target, tier, result.get("usage") or {}, elapsed, "ok", stream)
                if failed is not None:
                    log.info("route %s: escalating past %s (%s)", route.name, target.key, failed)
                    break
                return result, target, tier
        raise last_exc or NotReadyError(f"no target of route '{route.name}' could answer")

    async def _failed(
        self,
        route: Route,
        target: Target,
        tier: int,
        breaker: CircuitBreaker | None,
        exc: Exception,
        started: float,
        stream: bool,
        attempt: int,
    ) -> bool:
        """Account for a failed attempt. Re-raise when nothing else may be tried; True: retry this target."""
        self._record_error(route, target, tier, exc, started, stream)
        if not route.explicit or not is_retryable(exc):
            raise exc
        if breaker is not None:
            breaker.record_failure()
        when = " before its first token" if stream else ""
        log.warning("route %s: %s failed%s (%s)", route.name, target.key, when, type(exc).__name__)
        if attempt < route.retries:
            await asyncio.sleep(route.backoff * 2**attempt)
            return True
        return False

    async def chat(self, request: ChatRequest) -> tuple[Chunk, Target, int]:
        return await self._answer(request, lambda p, r: p.chat(r), chat=True)

    async def complete(self, request: CompletionRequest) -> tuple[Chunk, Target, int]:
        return await self._answer(request, lambda p, r: p.complete(r), chat=False)

    async def _answer(
        self, request: _Req, call: Callable[[Provider, _Req], Awaitable[Chunk]], *, chat: bool
    ) -> tuple[Chunk, Target, int]:
        """A whole answer through the route; a `logprob` cascade asks targets for log-probabilities and
        hides them again from a client that did not ask."""
        route = self.resolve(request.model)
        asked = request.params
        if "logprob" in route.cascade:
            request = replace(request, params=with_logprobs(asked, chat))
        result = await self._call(route, asked, lambda p, m: call(p, replace(request, model=m)))
        return _drop_unasked_logprobs(result, asked)

    async def embed(self, request: EmbeddingRequest) -> tuple[Chunk, Target, int]:
        route = self.resolve(request.model)
        return await self._call(route, request.params, lambda p, m: p.embed(replace(request, model=m)))

    # ----- streaming ---------------------------------------------------------------------------------
    async def chat_stream(self, request: ChatRequest) -> tuple[AsyncIterator[Chunk], Target, int]:
        """Open a stream; it has produced its first token (or failed over) when this returns."""
        route = self.resolve(request.model)
        if route.cascade:
            response, target, tier = await self.chat(request)
            return _chunks_of(response), target, tier
        return await self._open_stream(route, lambda p, m: p.chat_stream(replace(request, model=m)))

    async def complete_stream(self, request: CompletionRequest) -> tuple[AsyncIterator[Chunk], Target, int]:
        route = self.resolve(request.model)
        if route.cascade:
            response, target, tier = await self.complete(request)
            return _chunks_of(response), target, tier
        return await self._open_stream(route, lambda p, m: p.complete_stream(replace(request, model=m)))

    async def _open_stream(
        self, route: Route, fn: Callable[[Provider, str], AsyncIterator[Chunk]]
    ) -> tuple[AsyncIterator[Chunk], Target, int]:
        last_exc: BaseException | None = None
        ordered = order_targets(route.name, route.strategy, route.targets, self.rng)
        for tier, target in enumerate(ordered):
            provider = self.providers[target.settings.provider]
            breaker = self._breaker(target) if route.explicit else None
            for attempt in range(route.retries + 1):
                if breaker is not None and not breaker.allow():
                    last_exc = last_exc or _circuit_open(target)
                    break
                started = time.perf_counter()
                iterator = fn(provider, target.settings.model)
                buffered: list[Chunk] = []
                try:
                    async for chunk in iterator:
                        buffered.append(chunk)
                        if carries_output(chunk):
                            break
                except Exception as exc:
                    await _aclose(iterator)
                    last_exc = exc
                    if await self._failed(route, target, tier, breaker, exc, started, True, attempt):
                        continue
                    break
                except BaseException:
                    await _aclose(iterator)
                    raise
                return (
                    self._committed(route, target, tier, iterator, buffered, started, breaker),
                    target,
                    tier,
                )
        raise last_exc or NotReadyError(f"no target of route '{route.name}' could answer")

    async def _committed(
        self,
        route: Route,
        target: Target,
        tier: int,
        iterator: AsyncIterator[Chunk],
        buffered: list[Chunk],
        started: float,
        breaker: CircuitBreaker | None,
    ) -> AsyncIterator[Chunk]:
        usage: dict[str, Any] = {}
        status = "ok"
        try:
            for chunk in buffered:
                if chunk.get("usage"):
                    usage = chunk["usage"]
                yield chunk
            try:
                async for chunk in iterator:
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    yield chunk
            except Exception as exc:  # after the first token there is no taking it back: the door reports it
                status = type(exc).__name__
                if breaker is not None and is_retryable(exc):
                    breaker.record_failure()
                raise
            if breaker is not None:
                breaker.record_success()
        finally:
            await _aclose(iterator)
            elapsed = time.perf_counter() - started
            if status == "ok":
                target.latency.add(elapsed)
            self._record(route, target, tier, usage, elapsed, status, True)

    # ----- usage -------------------------------------------------------------------------------------
    def _record(
        self,
        route: Route,
        target: Target,
        tier: int,
        usage: dict[str, Any],
        elapsed: float,
        status: str,
        stream: bool,
    ) -> None:
        if self.usage is None:
            return
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        s = target.settings
        self.usage.record(
            UsageRecord(
                ts=time.time(),
                model=route.name,
                provider=s.provider,
                target_model=s.model,
                tier=tier,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cached_tokens=cached,
                latency_ms=elapsed * 1000,
                cost=cost_of(prompt, completion, s.input_price, s.output_price),
                status=status,
                stream=stream,
            )
        )

    def _record_error(
        self, route: Route, target: Target, tier: int, exc: BaseException, started: float, stream: bool
    ) -> None:
        self._record(route, target, tier, {}, time.perf_counter() - started, type(exc).__name__, stream)

    # ----- health ------------------------------------------------------------------------------------
    def start_health_probes(self) -> None:
        if self._health_task is None and any(
            cfg.health_interval > 0 and cfg.type != "local" for cfg in self.settings.providers.values()
        ):
            self._health_task = asyncio.create_task(self._probe_forever())

    async def _probe_forever(self) -> None:
        intervals = {
            n: c.health_interval for n, c in self.settings.providers.items() if c.health_interval > 0
        }
        next_due = dict.fromkeys(intervals, 0.0)
        while True:
            now = time.monotonic()
            for name, due in next_due.items():
                if now < due:
                    continue
                next_due[name] = now + intervals[name]
                try:
                    healthy = await self.providers[name].health()
                except Exception:
                    healthy = False
                if not healthy:
                    for route in self.routes.values():
                        for t in route.targets:
                            if t.settings.provider == name:
                                self._breaker(t).trip()
            await asyncio.sleep(max(0.05, min(next_due.values()) - time.monotonic()))

    def describe(self) -> dict[str, Any]:
        """Providers, routes, targets and breaker states for ``GET /api/providers``."""
        routes = []
        for route in self.routes.values():
            targets = []
            for t in route.targets:
                b = self._breaker(t)
                p50 = t.latency.p50()
                targets.append(
                    {
                        "provider": t.settings.provider,
                        "model": t.settings.model,
                        "breaker": b.state.value,
                        "retry_in": b.seconds_until_probe(),
                        "p50_latency_ms": None if p50 is None else round(p50 * 1000, 1),
                        "input_price": t.settings.input_price,
                        "output_price": t.settings.output_price,
                        "weight": t.settings.weight,
                    }
                )
            routes.append(
                {"name": route.name, "strategy": route.strategy, "cascade": route.cascade, "targets": targets}
            )
        providers = [
            {
                "name": name,
                "type": (self.settings.providers[name].type if name in self.settings.providers else "local"),
            }
            for name in self.providers
        ]
        return {"providers": providers, "routes": routes}

    async def aclose(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
        for name, provider in self.providers.items():
            if name != "local":
                await provider.aclose()


def _circuit_open(target: Target) -> NotReadyError:
    return NotReadyError(f"target {target.key} is unavailable (circuit open)")


async def _aclose(iterator: AsyncIterator[Chunk]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.debug("error closing a stream", exc_info=True)


def _drop_unasked_logprobs(
    result: tuple[Chunk, Target, int], asked: dict[str, Any]
) -> tuple[Chunk, Target, int]:
    """Hide log-probabilities the router asked for on its own (for the cascade's check)."""
    if asked.get("logprobs") is None or asked.get("logprobs") is False:
        for choice in result[0].get("choices") or []:
            if choice.get("logprobs") is not None:
                choice["logprobs"] = None
    return result


async def _chunks_of(response: Chunk) -> AsyncIterator[Chunk]:
    """A full response replayed as stream chunks (cascade routes decide on whole answers)."""
    base: Chunk = {k: response[k] for k in ("id", "created", "model") if k in response}
    choice = (response.get("choices") or [{}])[0]
    finish = choice.get("finish_reason")
    if response.get("object") == "chat.completion":
        base["object"] = "chat.completion.chunk"
        content = (choice.get("message") or {}).get("content") or ""
        yield {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
        if content:
            delta = {"index": 0, "delta": {"content": content}, "logprobs": choice.get("logprobs")}
            yield {**base, "choices": [{**delta, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
    else:
        base["object"] = "text_completion"
        text = choice.get("text") or ""
        yield {
            **base,
            "choices": [
                {"index": 0, "text": text, "logprobs": choice.get("logprobs"), "finish_reason": finish}
            ],
        }
    if response.get("usage"):
        yield {**base, "choices": [], "usage": response["usage"]}
