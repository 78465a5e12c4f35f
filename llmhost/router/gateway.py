"""The gateway: public model name -> route -> ordered targets -> breaker-guarded calls with fallback.

A name with a ``[routes.NAME]`` entry uses that route: its strategy orders the targets, each target is
tried (with retries and backoff on retryable errors) unless its circuit breaker is open, and the next
target takes over on failure. Streams fall back transparently until their first output; after that a
failure ends the stream with an error the door reports. A cascade route escalates to the next target
when a check on the answer fails (invalid JSON for a JSON request, an empty answer, low log-probability).
With ``limits.redis_url`` the breakers are shared by every instance (:mod:`llmhost.router.shared_breakers`).

Any other name that is a local model is an implicit single-target route to the engine: no breaker, no
retries, errors unchanged (a 429 stays a 429). Every call to a target is noted in ``ctx.attempts``;
the pipeline's usage stage writes them down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from llmhost.apps.ensemble import EnsembleSpec, Member, run_ensemble
from llmhost.config import RouteSettings, Settings, TargetSettings
from llmhost.core.stream import deltas_of
from llmhost.core.types import (
    Attempt,
    Delta,
    Embeddings,
    EmbedRequest,
    InferenceRequest,
    RequestContext,
    Result,
    Usage,
)
from llmhost.errors import LLMHostError, ModelNotFoundError, NotReadyError, ProviderError, classify
from llmhost.providers.base import Provider
from llmhost.router.breaker import BreakerState, CircuitBreaker
from llmhost.router.cascade import cascade_check_fails
from llmhost.router.cost import cost_of
from llmhost.router.shared_breakers import SharedBreakers
from llmhost.router.strategies import Target, order_targets

__all__ = ["Gateway", "Route", "is_retryable"]

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    settings: RouteSettings | None = None  # the [routes.NAME] table (ensemble fields), None if implicit


def is_retryable(exc: BaseException) -> bool:
    """May another attempt, or another target, succeed where this one failed? Never for a client
    mistake, anything :func:`classify` answers with a 4xx other than 429 (a bad field, a grammar that
    does not parse, a refused or unauthenticated call), so those neither fall back nor count against a
    breaker. Two 4xx are the target's, not the client's: 429 (that target is busy) and a target whose
    model is missing (the client named the route, and the route's next target may have it)."""
    if isinstance(exc, ProviderError):
        return exc.retryable
    if isinstance(exc, ModelNotFoundError):
        return True
    if isinstance(exc, LLMHostError):
        status = classify(exc).status
        return status >= 500 or status == 429
    return isinstance(exc, OSError)


def carries_output(delta: Delta) -> bool:
    """Has the stream produced something for the client (so falling back is no longer possible)?"""
    return bool(delta.text or delta.tool_calls or delta.logprobs or delta.finish_reason)


class Gateway:
    """The pipeline's "generate" step: routes, breakers, fallback and cascade over the providers."""

    def __init__(
        self,
        settings: Settings,
        providers: dict[str, Provider],
        *,
        is_local_model: Callable[[str], bool],
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.is_local_model = is_local_model
        self.rng = rng or random.Random()
        self.breakers: dict[str, CircuitBreaker] = {}
        # With ``limits.redis_url`` every instance's breakers open and close together.
        redis_url = settings.limits.redis_url
        self.shared_breakers = SharedBreakers(redis_url) if redis_url else None
        self.routes: dict[str, Route] = {}
        for name, cfg in settings.routes.items():
            targets = [Target(name, i, t) for i, t in enumerate(cfg.targets)]
            for t in targets:
                self.breaker(t)
            self.routes[name] = Route(
                name,
                cfg.strategy,
                targets,
                cfg.retries,
                cfg.backoff,
                list(cfg.cascade),
                True,
                cfg.min_logprob,
                cfg,
            )
        self._health_task: asyncio.Task[None] | None = None

    def breaker(self, target: Target) -> CircuitBreaker:
        b = self.breakers.get(target.key)
        if b is None:
            cfg = self.settings.breaker
            b = self.breakers[target.key] = CircuitBreaker(cfg.failures, cfg.window, cfg.cooldown)
            if self.shared_breakers is not None:
                self.shared_breakers.attach(target.key, b)
        return b

    async def _admit(self, target: Target, breaker: CircuitBreaker) -> bool:
        """May a call go to ``target``? The local breaker decides, except that a half-open probe must
        also win the claim across instances when breakers are shared (the only Redis call a request
        may wait for)."""
        probing = breaker.state is BreakerState.HALF_OPEN
        if not breaker.allow():
            return False
        shared = self.shared_breakers
        if probing and shared is not None and not await shared.claim_probe(target.key, breaker.cooldown):
            breaker.release()  # another instance probes; its verdict reaches this one
            return False
        return True

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

    # ----- the four calls ----------------------------------------------------------------------------
    async def answer(self, ctx: RequestContext, request: InferenceRequest) -> Result:
        """A whole answer. A `logprob` cascade asks targets for log-probabilities and hides them again
        from a client that did not ask."""
        route = ctx.route or self.resolve(request.model)
        if route.strategy == "ensemble":
            return await self._ensemble(ctx, route, request)
        return await self._answer_on(ctx, route, request)

    async def _answer_on(self, ctx: RequestContext, route: Route, request: InferenceRequest) -> Result:
        asked = request.sampling.logprobs
        if "logprob" in route.cascade and asked is None:
            request = replace(request, sampling=replace(request.sampling, logprobs=0))
        last = len(route.targets) - 1

        async def call(provider: Provider, target: Target) -> Result:
            return await provider.answer(replace(request, model=target.settings.model))

        def accept(target: Target, tier: int, result: Result, elapsed: float) -> bool:
            self._note(ctx, route, target, tier, result.usage, elapsed, "ok")
            failed = (
                cascade_check_fails(route.cascade, request, result, route.min_logprob)
                if tier < last
                else None
            )
            if failed is not None:
                log.info("route %s: escalating past %s (%s)", route.name, target.key, failed)
            return failed is None

        result, target = await self._fallback(ctx, route, call, accept, stream=False)
        if asked is None:
            for choice in result.choices:
                choice.logprobs = None
        result.model = route.name
        result.target = target.key
        return result

    async def open_stream(self, ctx: RequestContext, request: InferenceRequest) -> AsyncIterator[Delta]:
        """Open a stream; it has produced its first output (or failed over) when this returns."""
        route = ctx.route or self.resolve(request.model)
        if route.cascade or route.strategy == "ensemble":  # these decide on whole answers
            return deltas_of(await self.answer(ctx, request))

        async def call(provider: Provider, target: Target) -> tuple[AsyncIterator[Delta], list[Delta], float]:
            started = time.perf_counter()
            iterator = provider.stream(replace(request, model=target.settings.model))
            buffered: list[Delta] = []
            try:
                async for delta in iterator:
                    buffered.append(delta)
                    if carries_output(delta):
                        break
            except BaseException:
                await _aclose(iterator)
                raise
            return iterator, buffered, started

        (iterator, buffered, started), target = await self._fallback(
            ctx, route, call, lambda *_: True, stream=True
        )
        return self._committed(ctx, route, target, ctx.tier, iterator, buffered, started)

    async def _ensemble(self, ctx: RequestContext, route: Route, request: InferenceRequest) -> Result:
        """An ``ensemble`` route: every target at once, each with its breaker and retries, combined by
        the route's aggregate (:mod:`llmhost.apps.ensemble`); each target's usage is its own row."""
        cfg = route.settings
        assert cfg is not None

        def member(target: Target) -> Member:
            single = Route(route.name, "priority", [target], route.retries, route.backoff, settings=None)

            async def call(req: InferenceRequest) -> Result:
                return await self._answer_on(ctx, single, req)

            return Member(target.key, call)

        judge = None
        if cfg.judge:
            judge_route = self.resolve(cfg.judge)

            async def ask_judge(req: InferenceRequest) -> Result:
                return await self._answer_on(ctx, judge_route, replace(req, model=cfg.judge or ""))

            judge = Member(cfg.judge, ask_judge)
        spec = EnsembleSpec(cfg.aggregate, judge, cfg.judge_merge, cfg.member_timeout)
        result = await run_ensemble([member(t) for t in route.targets], request, spec, name=route.name)
        ctx.target = result.target
        return result

    async def embed(self, ctx: RequestContext, request: EmbedRequest) -> Embeddings:
        route = ctx.route or self.resolve(request.model)

        async def call(provider: Provider, target: Target) -> Embeddings:
            return await provider.embed(replace(request, model=target.settings.model))

        def accept(target: Target, tier: int, result: Embeddings, elapsed: float) -> bool:
            self._note(ctx, route, target, tier, result.usage, elapsed, "ok")
            return True

        result, target = await self._fallback(ctx, route, call, accept, stream=False)
        result.model = route.name
        result.target = target.key
        return result

    async def count_tokens(self, ctx: RequestContext, request: InferenceRequest) -> int:
        route = ctx.route or self.resolve(request.model)

        async def call(provider: Provider, target: Target) -> int:
            return await provider.count_tokens(replace(request, model=target.settings.model))

        count, _ = await self._fallback(ctx, route, call, lambda *_: True, stream=False, note=False)
        return count

    # ----- the one fallback loop ---------------------------------------------------------------------
    async def _fallback(
        self,
        ctx: RequestContext,
        route: Route,
        call: Callable[[Provider, Target], Awaitable[T]],
        accept: Callable[[Target, int, T, float], bool],
        *,
        stream: bool,
        note: bool = True,
    ) -> tuple[T, Target]:
        """Try the route's targets in strategy order (retries with backoff, breakers, fallback on
        retryable errors) until ``accept`` takes an answer. The last accepted-or-not answer wins when
        every target was tried."""
        last_exc: BaseException | None = None
        ordered = order_targets(route.name, route.strategy, route.targets, self.rng)
        fallback_result: tuple[T, Target] | None = None
        for tier, target in enumerate(ordered):
            provider = self.providers[target.settings.provider]
            breaker = self.breaker(target) if route.explicit else None
            for attempt in range(route.retries + 1):
                if breaker is not None and not await self._admit(target, breaker):
                    last_exc = last_exc or _circuit_open(target)
                    break
                started = time.perf_counter()
                try:
                    result = await call(provider, target)
                except Exception as exc:
                    last_exc = exc
                    if note:
                        self._note(ctx, route, target, tier, Usage(), time.perf_counter() - started, exc)
                    if not route.explicit or not is_retryable(exc):
                        if breaker is not None:
                            breaker.release()  # a half-open probe that got a client error proved nothing
                        raise
                    if breaker is not None:
                        breaker.record_failure()
                    when = " before its first output" if stream else ""
                    log.warning(
                        "route %s: %s failed%s (%s)", route.name, target.key, when, type(exc).__name__
                    )
                    if attempt < route.retries:
                        await asyncio.sleep(route.backoff * 2**attempt)
                        continue
                    break
                except BaseException:
                    if breaker is not None:
                        breaker.release()  # cancelled (the client left): no verdict on the target
                    raise
                elapsed = time.perf_counter() - started
                if not stream:
                    target.latency.add(elapsed)
                    if breaker is not None:
                        breaker.record_success()
                ctx.target, ctx.tier = target.key, tier
                if accept(target, tier, result, elapsed) or tier == len(ordered) - 1:
                    return result, target
                fallback_result = (result, target)
                break
        if fallback_result is not None:
            return fallback_result
        raise last_exc or NotReadyError(f"no target of route '{route.name}' could answer")

    async def _committed(
        self,
        ctx: RequestContext,
        route: Route,
        target: Target,
        tier: int,
        iterator: AsyncIterator[Delta],
        buffered: list[Delta],
        started: float,
    ) -> AsyncIterator[Delta]:
        breaker = self.breaker(target) if route.explicit else None
        usage = Usage()
        status: str | BaseException = "ok"
        verdict = False  # did this stream tell the breaker anything?
        try:
            for delta in buffered:
                usage = delta.usage or usage
                yield delta
            try:
                async for delta in iterator:
                    usage = delta.usage or usage
                    yield delta
            except Exception as exc:  # after the first output there is no taking it back: the door reports it
                status = exc
                if breaker is not None and is_retryable(exc):
                    breaker.record_failure()
                    verdict = True
                raise
            if breaker is not None:
                breaker.record_success()
                verdict = True
        finally:
            if breaker is not None and not verdict:
                breaker.release()  # a client error or a client gone: let the next request probe
            await _aclose(iterator)
            elapsed = time.perf_counter() - started
            if status == "ok":
                target.latency.add(elapsed)
            self._note(ctx, route, target, tier, usage, elapsed, status)

    def _note(
        self,
        ctx: RequestContext,
        route: Route,
        target: Target,
        tier: int,
        usage: Usage,
        elapsed: float,
        status: str | BaseException,
    ) -> None:
        s = target.settings
        ctx.attempts.append(
            Attempt(
                route=route.name,
                provider=s.provider,
                model=s.model,
                tier=tier,
                usage=usage,
                latency_s=elapsed,
                status=status if isinstance(status, str) else type(status).__name__,
                cost=cost_of(usage.prompt_tokens, usage.completion_tokens, s.input_price, s.output_price),
            )
        )

    # ----- background work ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the gateway's background work on the running loop: health probes, and the shared
        breakers' link to Redis when ``limits.redis_url`` is set. :meth:`aclose` stops it."""
        self.start_health_probes()
        if self.shared_breakers is not None:
            self.shared_breakers.start()

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
                                self.breaker(t).trip()
            await asyncio.sleep(max(0.05, min(next_due.values()) - time.monotonic()))

    def describe(self) -> dict[str, Any]:
        """Providers, routes, targets and breaker states for ``GET /api/providers``."""
        routes = []
        for route in self.routes.values():
            targets = []
            for t in route.targets:
                b = self.breaker(t)
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
        if self.shared_breakers is not None:
            await self.shared_breakers.aclose()
        for name, provider in self.providers.items():
            if name != "local":
                await provider.aclose()


def _circuit_open(target: Target) -> NotReadyError:
    return NotReadyError(f"target {target.key} is unavailable (circuit open)")


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
