"""The gateway's routing, fallback, retries, breakers, cascade and usage, with in-process providers.

The providers here are real objects implementing the Provider protocol (scripted to fail in chosen
ways); the same behaviour over real loopback HTTP servers is covered in tests/router/test_fallback_http.py.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmhost.config import Settings, load_settings
from llmhost.core.pipeline import Pipeline
from llmhost.core.types import (
    ChatMessage,
    Choice,
    Delta,
    Embeddings,
    EmbedRequest,
    InferenceRequest,
    RequestContext,
    ResponseFormat,
    Result,
    Sampling,
    TokenLogprob,
    Usage,
)
from llmhost.errors import (
    ConfigError,
    EngineOverloadedError,
    ModelNotFoundError,
    NotReadyError,
    RequestError,
)
from llmhost.providers.base import ProviderConnectionError, ProviderHTTPError, ProviderStreamError
from llmhost.router.breaker import BreakerState
from llmhost.router.cost import UsageStage, UsageStore
from llmhost.router.gateway import Gateway
from llmhost.router.stage import RouteStage
from llmhost.router.strategies import Target, order_targets
from tests.support import wait_until


class ScriptedProvider:
    """A provider that answers "<name>: <model>" or raises what its script says, in order."""

    def __init__(self, name: str, script: list[BaseException | str] | None = None, tokens: int = 3) -> None:
        self.name = name
        self.script = list(script or [])
        self.calls: list[str] = []
        self.requests: list[InferenceRequest] = []
        self.tokens = tokens

    def _next(self, request: InferenceRequest) -> str:
        self.calls.append(request.model)
        self.requests.append(request)
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, BaseException):
            raise step
        return step

    async def answer(self, request: InferenceRequest) -> Result:
        step = self._next(request)
        text = f"{self.name}: {request.model}" if step == "ok" else step.removeprefix("say:")
        choice = Choice(0, text, finish_reason="stop")
        return Result("x", request.model, [choice], Usage(10, self.tokens))

    async def stream(self, request: InferenceRequest) -> AsyncIterator[Delta]:
        step = self._next(request)
        for i in range(self.tokens):
            if step == "cut" and i == 1:
                raise ProviderStreamError("connection cut", provider=self.name)
            yield Delta(0, f"t{i}")
        yield Delta(0, finish_reason="stop")
        yield Delta(-1, usage=Usage(10, self.tokens))

    async def embed(self, request: EmbedRequest) -> Embeddings:
        self._next(request)  # type: ignore[arg-type]
        return Embeddings([[1.0]], Usage(1))

    async def count_tokens(self, request: InferenceRequest) -> int:
        return 7

    async def list_models(self) -> list[str]:
        return []

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def refused(name: str) -> ProviderConnectionError:
    return ProviderConnectionError("connection refused", provider=name)


def settings_with(tmp_path: Path, route: dict[str, Any], **extra: Any) -> Settings:
    providers = {n: {"type": "openai", "base_url": "http://127.0.0.1:9/v1"} for n in ("a", "b", "c")}
    return load_settings(None, data_dir=tmp_path, providers=providers, routes={"smart": route}, **extra)


class Routed:
    """A gateway inside a pipeline with the route and usage stages, as the service builds it."""

    def __init__(self, gw: Gateway, usage: UsageStore | None) -> None:
        self.gw = gw
        self.breakers = gw.breakers
        stages: list[Any] = [RouteStage(gw)]
        if usage is not None:
            stages.append(UsageStage(usage))
        self.pipeline = Pipeline(gw, stages)

    def resolve(self, name: str) -> Any:
        return self.gw.resolve(name)

    def describe(self) -> dict[str, Any]:
        return self.gw.describe()

    async def chat(self, request: InferenceRequest) -> tuple[Result, Target, int]:
        ctx = RequestContext()
        result = await self.pipeline.run(ctx, request)
        return result, self._target(ctx), ctx.tier

    async def chat_stream(self, request: InferenceRequest) -> tuple[AsyncIterator[Delta], Target, int]:
        ctx = RequestContext()
        deltas = await self.pipeline.stream(ctx, request)
        return deltas, self._target(ctx), ctx.tier

    def _target(self, ctx: RequestContext) -> Target:
        return next(t for t in ctx.route.targets if t.key == ctx.target)


def gateway(
    settings: Settings, providers: dict[str, ScriptedProvider], usage: UsageStore | None = None
) -> Routed:
    gw = Gateway(settings, dict(providers), is_local_model=lambda n: n == "localmodel")  # type: ignore[arg-type]
    return Routed(gw, usage)


def chat_req(
    model: str = "smart", *, response_format: ResponseFormat | None = None, logprobs: int | None = None
) -> InferenceRequest:
    return InferenceRequest(
        "chat",
        model,
        messages=(ChatMessage("user", "hi"),),
        sampling=Sampling(logprobs=logprobs),
        response_format=response_format or ResponseFormat(),
    )


def targets(*names: str) -> list[dict[str, Any]]:
    return [{"provider": n, "model": f"m-{n}"} for n in names]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_priority_route_falls_back_to_the_next_target_on_connection_error(tmp_path: Path) -> None:
    a, b = ScriptedProvider("a", [refused("a"), refused("a")]), ScriptedProvider("b")
    gw = gateway(
        settings_with(tmp_path, {"targets": targets("a", "b"), "retries": 1, "backoff": 0}), {"a": a, "b": b}
    )
    response, target, tier = run(gw.chat(chat_req()))
    assert response.text == "b: m-b"
    assert (target.settings.provider, tier) == ("b", 1)
    assert a.calls == ["m-a", "m-a"]  # one retry, then the next target


def test_retry_on_the_same_target_can_succeed(tmp_path: Path) -> None:
    a = ScriptedProvider("a", [ProviderHTTPError("busy", provider="a", status=503)])
    gw = gateway(
        settings_with(tmp_path, {"targets": targets("a", "b"), "retries": 1, "backoff": 0}),
        {"a": a, "b": ScriptedProvider("b")},
    )
    _, target, tier = run(gw.chat(chat_req()))
    assert target.settings.provider == "a" and tier == 0


def test_client_errors_are_not_retried_or_failed_over(tmp_path: Path) -> None:
    """On a route that retries, a 400 is tried once, on the first target only, and reaches the caller."""
    a = ScriptedProvider("a", [ProviderHTTPError("bad request", provider="a", status=400)])
    b = ScriptedProvider("b")
    route = {"targets": targets("a", "b"), "retries": 2, "backoff": 0}
    gw = gateway(settings_with(tmp_path, route), {"a": a, "b": b})
    with pytest.raises(ProviderHTTPError, match="bad request") as info:
        run(gw.chat(chat_req()))
    assert info.value.status == 400
    assert a.calls == ["m-a"] and b.calls == []
    assert gw.breakers["a/m-a"].state is BreakerState.CLOSED  # the client's mistake is not the target's


def test_fallback_completes_well_within_five_seconds(tmp_path: Path) -> None:
    a = ScriptedProvider("a", [refused("a")] * 5)
    gw = gateway(
        settings_with(tmp_path, {"targets": targets("a", "b"), "retries": 2}),
        {"a": a, "b": ScriptedProvider("b")},
    )
    started = time.perf_counter()
    response, _, _ = run(gw.chat(chat_req()))
    assert time.perf_counter() - started < 5  # two backoffs of 0.05 s and 0.1 s: far below
    assert response.text == "b: m-b" and a.calls == ["m-a"] * 3  # the first try, two retries, then b


def test_breaker_opens_and_skips_the_target_then_probes_and_closes(tmp_path: Path) -> None:
    a = ScriptedProvider("a", [refused("a")] * 2)
    b = ScriptedProvider("b")
    route = {"targets": targets("a", "b"), "retries": 0}
    gw = gateway(
        settings_with(tmp_path, route, breaker={"failures": 2, "window": 60, "cooldown": 0.2}),
        {"a": a, "b": b},
    )
    run(gw.chat(chat_req()))
    run(gw.chat(chat_req()))
    assert gw.breakers["a/m-a"].state is BreakerState.OPEN
    run(gw.chat(chat_req()))
    assert a.calls == ["m-a", "m-a"]  # skipped while open
    wait_until(lambda: gw.breakers["a/m-a"].state is BreakerState.HALF_OPEN, what="half-open")
    _, target, _ = run(gw.chat(chat_req()))  # half-open probe succeeds
    assert target.settings.provider == "a"
    assert gw.breakers["a/m-a"].state is BreakerState.CLOSED
    described = gw.describe()["routes"][0]["targets"][0]
    assert described["breaker"] == "closed"


def test_all_breakers_open_gives_not_ready(tmp_path: Path) -> None:
    a = ScriptedProvider("a", [refused("a")])
    gw = gateway(
        settings_with(tmp_path, {"targets": targets("a"), "retries": 0}, breaker={"failures": 1}), {"a": a}
    )
    with pytest.raises(ProviderConnectionError):
        run(gw.chat(chat_req()))
    with pytest.raises(NotReadyError, match="circuit open"):
        run(gw.chat(chat_req()))


def test_stream_failing_before_its_first_token_falls_back_transparently(tmp_path: Path) -> None:
    a = ScriptedProvider("a", [refused("a")])
    b = ScriptedProvider("b")
    gw = gateway(settings_with(tmp_path, {"targets": targets("a", "b"), "retries": 0}), {"a": a, "b": b})

    async def go() -> list[Delta]:
        it, target, _ = await gw.chat_stream(chat_req())
        assert target.settings.provider == "b"
        return [c async for c in it]

    assert "".join(d.text for d in run(go())) == "t0t1t2"


def test_stream_failing_after_its_first_token_raises_to_the_door(tmp_path: Path) -> None:
    a = ScriptedProvider("a", ["cut"])
    b = ScriptedProvider("b")
    gw = gateway(settings_with(tmp_path, {"targets": targets("a", "b")}), {"a": a, "b": b})

    async def go() -> list[str]:
        it, _, _ = await gw.chat_stream(chat_req())
        got: list[str] = []
        with pytest.raises(ProviderStreamError):
            async for d in it:
                got.append(d.text)
        return got

    assert "t0" in run(go())
    assert b.calls == []  # no answering twice


def test_cascade_escalates_when_json_is_invalid(tmp_path: Path) -> None:
    small = ScriptedProvider("a", ["say:not json"])
    big = ScriptedProvider("b", ['say:{"ok": true}'])
    route = {"targets": targets("a", "b"), "cascade": ["json"]}
    usage = UsageStore(tmp_path / "u.db")
    gw = gateway(settings_with(tmp_path, route), {"a": small, "b": big}, usage)
    response, target, tier = run(gw.chat(chat_req(response_format=ResponseFormat("json"))))
    assert response.text == '{"ok": true}'
    assert (target.settings.provider, tier) == ("b", 1)
    usage.flush()
    rows = usage.summary("target")
    assert {r["target"]: r["requests"] for r in rows} == {"a/m-a": 1, "b/m-b": 1}
    usage.close()


def test_cascade_keeps_a_good_first_answer(tmp_path: Path) -> None:
    small = ScriptedProvider("a", ['say:{"ok": 1}'])
    big = ScriptedProvider("b")
    gw = gateway(
        settings_with(tmp_path, {"targets": targets("a", "b"), "cascade": ["json", "nonempty"]}),
        {"a": small, "b": big},
    )
    _, target, _ = run(gw.chat(chat_req(response_format=ResponseFormat("json"))))
    assert target.settings.provider == "a" and big.calls == []


def test_usage_records_cost_from_the_price_table(tmp_path: Path) -> None:
    route = {"targets": [{"provider": "a", "model": "m", "input_price": 1.0, "output_price": 2.0}]}
    usage = UsageStore(tmp_path / "u.db")
    gw = gateway(settings_with(tmp_path, route), {"a": ScriptedProvider("a", tokens=5)}, usage)
    run(gw.chat(chat_req()))
    usage.flush()
    [row] = usage.summary("model")
    assert row["model"] == "smart" and row["prompt_tokens"] == 10 and row["completion_tokens"] == 5
    assert row["cost"] == pytest.approx((10 * 1.0 + 5 * 2.0) / 1e6)
    usage.close()


def test_cost_strategy_tries_the_cheapest_first(tmp_path: Path) -> None:
    route = {
        "strategy": "cost",
        "targets": [
            {"provider": "a", "model": "m", "input_price": 5, "output_price": 5},
            {"provider": "b", "model": "m", "input_price": 1, "output_price": 1},
        ],
    }
    gw = gateway(settings_with(tmp_path, route), {"a": ScriptedProvider("a"), "b": ScriptedProvider("b")})
    _, target, _ = run(gw.chat(chat_req()))
    assert target.settings.provider == "b"


def test_round_robin_and_weighted_spread_traffic(tmp_path: Path) -> None:
    s = settings_with(tmp_path, {"strategy": "round_robin", "targets": targets("a", "b", "c")})
    ts = [Target("rr", i, t) for i, t in enumerate(s.routes["smart"].targets)]
    firsts = [
        order_targets("rr-test", "round_robin", ts, random.Random(0))[0].settings.provider for _ in range(6)
    ]
    assert sorted(firsts) == ["a", "a", "b", "b", "c", "c"]
    weighted = [
        Target("w", 0, s.routes["smart"].targets[0].model_copy(update={"weight": 9.0})),
        Target("w", 1, s.routes["smart"].targets[1].model_copy(update={"weight": 1.0})),
    ]
    rng = random.Random(1)
    picks = [order_targets("w", "weighted", weighted, rng)[0].settings.provider for _ in range(1000)]
    assert 850 < picks.count("a") < 950


def test_latency_strategy_prefers_the_fastest_measured_target(tmp_path: Path) -> None:
    s = settings_with(tmp_path, {"strategy": "latency", "targets": targets("a", "b")})
    ts = [Target("l", i, t) for i, t in enumerate(s.routes["smart"].targets)]
    ts[0].latency.add(0.5)
    ts[1].latency.add(0.1)
    assert order_targets("l", "latency", ts, random.Random(0))[0].settings.provider == "b"


def test_unknown_name_is_model_not_found_and_local_names_route_implicitly(tmp_path: Path) -> None:
    gw = gateway(settings_with(tmp_path, {"targets": targets("a")}), {"a": ScriptedProvider("a")})
    with pytest.raises(ModelNotFoundError):
        gw.resolve("nope")
    route = gw.resolve("localmodel")
    assert not route.explicit and route.targets[0].settings.provider == "local"


def test_implicit_local_route_passes_errors_through_unchanged(tmp_path: Path) -> None:
    local = ScriptedProvider("local", [EngineOverloadedError("busy")])
    s = load_settings(None, data_dir=tmp_path)
    gw = Routed(Gateway(s, {"local": local}, is_local_model=lambda n: True), None)  # type: ignore[dict-item]
    with pytest.raises(EngineOverloadedError):
        run(gw.chat(chat_req("localmodel")))
    local.script = [RequestError("bad", "x")]
    with pytest.raises(RequestError):
        run(gw.chat(chat_req("localmodel")))


def test_route_naming_an_unknown_provider_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not in \\[providers\\]"):
        load_settings(None, data_dir=tmp_path, routes={"r": {"targets": [{"provider": "zzz", "model": "m"}]}})


class ConfidenceProvider(ScriptedProvider):
    """Answers with token log-probabilities of a scripted mean when the request asks for them."""

    def __init__(self, name: str, mean: float) -> None:
        super().__init__(name)
        self.mean = mean

    async def answer(self, request: InferenceRequest) -> Result:
        result = await super().answer(request)
        if request.sampling.logprobs is not None:
            entry = TokenLogprob(b"t", self.mean)
            result.choices[0].logprobs = [entry, entry]
        return result


def test_cascade_escalates_on_a_low_mean_logprob(tmp_path: Path) -> None:
    small, big = ConfidenceProvider("a", -2.5), ConfidenceProvider("b", -0.1)
    route = {"targets": targets("a", "b"), "cascade": ["logprob"], "min_logprob": -1.0}
    gw = gateway(settings_with(tmp_path, route), {"a": small, "b": big})
    response, target, tier = run(gw.chat(chat_req()))
    assert (target.settings.provider, tier) == ("b", 1)
    assert small.requests[0].sampling.logprobs == 0  # the router asked for them ...
    assert response.choices[0].logprobs is None  # ... and hides them from a client that did not


def test_cascade_keeps_a_confident_answer_and_returns_asked_logprobs(tmp_path: Path) -> None:
    small, big = ConfidenceProvider("a", -0.2), ConfidenceProvider("b", -0.1)
    route = {"targets": targets("a", "b"), "cascade": ["logprob"], "min_logprob": -1.0}
    gw = gateway(settings_with(tmp_path, route), {"a": small, "b": big})
    response, target, _ = run(gw.chat(chat_req(logprobs=0)))
    assert target.settings.provider == "a" and big.calls == []
    assert response.choices[0].logprobs is not None and response.choices[0].logprobs[0].logprob == -0.2


def test_cascade_escalates_when_a_target_gives_no_logprobs(tmp_path: Path) -> None:
    small, big = ScriptedProvider("a"), ConfidenceProvider("b", -3.0)
    route = {"targets": targets("a", "b"), "cascade": ["logprob"]}
    gw = gateway(settings_with(tmp_path, route), {"a": small, "b": big})
    _, target, tier = run(gw.chat(chat_req()))
    assert (target.settings.provider, tier) == ("b", 1)  # the last tier answers whatever its score


def test_min_logprob_must_not_be_positive(tmp_path: Path) -> None:
    """A log-probability above 0 cannot be reached: the setting is refused as a config error that names
    it and its bound (not a bare validation error)."""
    with pytest.raises(ConfigError) as info:
        settings_with(tmp_path, {"targets": targets("a"), "cascade": ["logprob"], "min_logprob": 0.5})
    assert str(info.value).splitlines()[1:] == [
        "  routes.smart.min_logprob: Input should be less than or equal to 0"
    ]
