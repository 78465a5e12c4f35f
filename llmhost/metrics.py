"""Prometheus metrics for ``GET /metrics`` (text exposition format), one registry per app.

Almost everything is read at scrape time from state the server keeps anyway, so serving a request pays
nothing for it:

- resident models (memory, slots, busy slots, waiting requests, KV-cache cells in use) from the
  :class:`ModelManager`, and what each model's engine counted as it went (time to first token, time per
  output token, prompt, prefix-cache-hit and generated tokens: :mod:`llmhost.engine.stats`);
- circuit-breaker states and recent latency from the :class:`Gateway`'s routes and breakers;
- requests the limits and budget stages refused and the policy stage's decisions, from the counters
  those stages keep (found by stage name in the pipeline);
- gateway requests, tokens, cost and latency per target from the usage log (``Gateway._record``): each
  scrape reads the rows appended since the previous one (by row id) and adds them to running totals,
  which start at zero when the app is created. The log is written in batches, so these lag a request by
  up to ~50 ms (more on a busy machine).

Only HTTP requests are counted as they happen, by :class:`HTTPMetricsMiddleware`: one dict update and one
bisect per request under an uncontended lock, about 3 µs in all. Labels are route templates
(``/v1/models/{model}``), never raw paths, so a client cannot grow the number of series.

Label values are only route, provider, model and path-template names: no header, key or prompt text ever
reaches a metric.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmhost import __version__
from llmhost.engine.stats import EngineStats, Histogram
from llmhost.router.breaker import BreakerState
from llmhost.router.cost import UsageRecord
from llmhost.service import Service

__all__ = ["BREAKER_STATE_VALUES", "CONTENT_TYPE", "HTTPMetricsMiddleware", "HTTPStats", "Metrics"]

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST

BREAKER_STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
"""``llmhost_breaker_state`` encodes a breaker's state as one number."""

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds. Generations (and whole SSE streams) run long, hence the buckets past 10 s."""

TARGET_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

MODEL_LABELS = ["model", "digest"]
"""Every per-loaded-model series carries both: a hot-swapped alias has two files for a moment."""

UNMATCHED_PATH = "<unmatched>"
"""The ``path`` label of requests no route matched (404s): raw paths would be unbounded."""

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HTTPStats:
    """HTTP request counts by (path template, method, status) and durations by path template."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = {}
        self._durations: dict[str, Histogram] = {}

    def observe(self, path: str, method: str, status: int, seconds: float) -> None:
        key = (path, method, status)
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            histogram = self._durations.get(path)
            if histogram is None:
                histogram = self._durations[path] = Histogram(HTTP_BUCKETS)
            histogram.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "llmhost_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            labels=["path", "method", "status"],
        )
        duration = HistogramMetricFamily(
            "llmhost_http_request_duration_seconds",
            "Time from receiving an HTTP request to the end of its response (whole stream for SSE).",
            labels=["path"],
        )
        with self._lock:
            counts = sorted(self._requests.items())
            histograms = [(p, h.cumulative(), h.total) for p, h in sorted(self._durations.items())]
        for (path, method, status), n in counts:
            requests.add_metric([path, method, str(status)], n)
        for path, buckets, total in histograms:
            duration.add_metric([path], buckets, total)
        yield requests
        yield duration


class HTTPMetricsMiddleware:
    """Counts every HTTP request by route template; the outermost layer, so gate refusals count too."""

    def __init__(self, app: ASGIApp, *, stats: HTTPStats, routes: Iterable[BaseRoute]) -> None:
        """``routes``: every route the app serves, those of included routers too (newer FastAPI keeps
        an included router as one opaque entry in ``app.router.routes``)."""
        self.app = app
        self.stats = stats
        # For requests whose matched route this layer cannot see: static paths by dict, the few
        # templated ones by their regex.
        self._static: dict[str, str] = {}
        self._templated: list[tuple[re.Pattern[str], str]] = []
        for route in routes:
            template, regex = _template_of(route), getattr(route, "path_regex", None)
            if template is None or not isinstance(regex, re.Pattern):
                continue
            if "{" in template:
                self._templated.append((regex, template))
            else:
                self._static.setdefault(template, template)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before starting a response

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            path = _template_of(scope.get("route")) or self._template(scope["path"])
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.stats.observe(path or UNMATCHED_PATH, method, status, time.perf_counter() - started)

    def _template(self, path: str) -> str | None:
        """Route template of a request the router did not see in this scope: refused by the gate, no
        route at all (404), or routed in a copy of the scope (the gate's content-type fix)."""
        template = self._static.get(path)
        if template is None:
            template = next((t for regex, t in self._templated if regex.match(path)), None)
        return template


def _template_of(route: object) -> str | None:
    """``/v1/models/{model}``: the path with its parameters named but without their convertors."""
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else None


class _UsageTotals:
    """Running totals of the usage rows this process recorded (fed by the usage store as it records:
    with a shared PostgreSQL usage table, every instance counts only its own attempts)."""

    def __init__(self, service: Service) -> None:
        self._lock = threading.Lock()
        self._pending: collections.deque[UsageRecord] = collections.deque()
        # (route, provider, target, status) -> attempts
        self.requests: dict[tuple[str, str, str, str], int] = {}
        # (route, provider, target) -> [prompt, completion, cached tokens, cost]
        self.tokens: dict[tuple[str, str, str], list[float]] = {}
        self.latency: dict[tuple[str, str, str], Histogram] = {}
        service.usage.listeners.append(self._pending.append)  # a deque's append is thread-safe

    def refresh(self) -> None:
        """Fold in the rows recorded since the last refresh."""
        with self._lock:
            while self._pending:
                r = self._pending.popleft()
                route, provider, model, status = r.model, r.provider, r.target_model, r.status
                prompt, completion, cached, cost, ms = (
                    r.prompt_tokens,
                    r.completion_tokens,
                    r.cached_tokens,
                    r.cost,
                    r.latency_ms,
                )
                target = (route, provider, f"{provider}/{model}")
                key = (*target, status)
                self.requests[key] = self.requests.get(key, 0) + 1
                sums = self.tokens.setdefault(target, [0, 0, 0, 0.0])
                sums[0] += prompt
                sums[1] += completion
                sums[2] += cached
                sums[3] += cost
                if status == "ok":
                    histogram = self.latency.get(target)
                    if histogram is None:
                        histogram = self.latency[target] = Histogram(TARGET_BUCKETS)
                    histogram.observe(ms / 1000)

    def collect(self) -> Iterator[Metric]:
        self.refresh()
        labels = ["route", "provider", "target"]
        requests = CounterMetricFamily(
            "llmhost_gateway_requests",
            "Attempts sent to a route's target (a fallback counts one per target tried), by outcome "
            "('ok' or the error class).",
            labels=[*labels, "status"],
        )
        families = [
            CounterMetricFamily(f"llmhost_gateway_{name}", doc, labels=labels)
            for name, doc in (
                ("prompt_tokens", "Prompt (input) tokens billed by a target."),
                ("completion_tokens", "Completion (output) tokens produced by a target."),
                ("cached_tokens", "Prompt tokens a target served from its cache."),
                ("cost", "Cost at the target's configured prices (per million tokens)."),
            )
        ]
        latency = HistogramMetricFamily(
            "llmhost_gateway_request_duration_seconds",
            "Latency of a target's successful answers (whole stream for streams).",
            labels=labels,
        )
        with self._lock:
            for key, n in sorted(self.requests.items()):
                requests.add_metric(list(key), n)
            for target, sums in sorted(self.tokens.items()):
                for family, value in zip(families, sums, strict=True):
                    family.add_metric(list(target), value)
            for target, histogram in sorted(self.latency.items()):
                latency.add_metric(list(target), histogram.cumulative(), histogram.total)
        yield requests
        yield from families
        yield latency


class _ServiceCollector:
    """Reads models, breakers and usage from the service at scrape time."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.usage = _UsageTotals(service)

    def collect(self) -> Iterator[Metric]:
        yield from self._server()
        yield from self._models()
        yield from self._gateway()
        yield from self._security()
        yield from self._embedding_cache()
        yield from self.usage.collect()

    def _embedding_cache(self) -> Iterable[Metric]:
        cache = self.service.embed_cache
        if cache is None:
            return
        stats = cache.stats()
        labels = ["store"]
        for name, doc, value in (
            ("llmhost_embedding_cache_hits_total", "Embedding inputs served from the cache.", stats.hits),
            ("llmhost_embedding_cache_misses_total", "Embedding inputs computed by a model.", stats.misses),
        ):
            family = CounterMetricFamily(name.removesuffix("_total"), doc, labels=labels)
            family.add_metric([cache.kind], value)
            yield family
        entries = GaugeMetricFamily("llmhost_embedding_cache_entries", "Vectors in the cache.", labels=labels)
        entries.add_metric([cache.kind], stats.entries)
        ratio = GaugeMetricFamily(
            "llmhost_embedding_cache_hit_ratio", "Hits / (hits + misses) since start.", labels=labels
        )
        ratio.add_metric([cache.kind], stats.hit_ratio)
        yield entries
        yield ratio

    def _server(self) -> Iterable[Metric]:
        info = GaugeMetricFamily("llmhost_info", "llmhost version (always 1).", labels=["version"])
        info.add_metric([__version__], 1)
        ready = GaugeMetricFamily("llmhost_ready", "1 once the default model is loaded (see /ready).")
        ready.add_metric([], 1 if self.service.ready else 0)
        return [info, ready]

    def _models(self) -> Iterable[Metric]:
        manager = self.service.models
        loaded = manager.loaded()
        labels = MODEL_LABELS
        count = GaugeMetricFamily("llmhost_models_loaded", "Models resident in memory.")
        count.add_metric([], len(loaded))
        memory = GaugeMetricFamily(
            "llmhost_model_memory_bytes",
            "Estimated memory of a loaded model (weights, KV cache, buffers) on its device.",
            labels=[*labels, "device"],
        )
        slots = GaugeMetricFamily("llmhost_model_slots", "Sequence slots of a loaded model.", labels=labels)
        busy = GaugeMetricFamily("llmhost_model_slots_busy", "Slots generating right now.", labels=labels)
        waiting = GaugeMetricFamily(
            "llmhost_model_requests_waiting", "Requests queued for a free slot.", labels=labels
        )
        kv_cells = GaugeMetricFamily(
            "llmhost_model_kv_cells", "KV-cache cells of a loaded model (every slot's window).", labels=labels
        )
        kv_used = GaugeMetricFamily(
            "llmhost_model_kv_cells_used",
            "KV-cache cells holding tokens: 'active' for running requests, 'cached' kept by free slots "
            "for prefix reuse.",
            labels=[*labels, "state"],
        )
        engines = _EngineFamilies()
        for m in loaded:
            # The digest tells apart the old and the new file while an alias is being hot-swapped.
            values = [m.name, m.record.digest[:19]]  # "sha256:" + 12 hex digits
            memory.add_metric([*values, "gpu" if m.on_gpu else "cpu"], m.memory_bytes)
            slots.add_metric(values, m.runner.n_slots)
            if m.engine is None:  # an embedding model: no slots, no KV cache
                continue
            busy.add_metric(values, m.engine.busy_slots)
            waiting.add_metric(values, m.engine.waiting)
            active, cached = m.engine.kv_cells()
            kv_cells.add_metric(values, m.engine.kv_capacity)
            kv_used.add_metric([*values, "active"], active)
            kv_used.add_metric([*values, "cached"], cached)
            engines.add(values, m.engine.stats_snapshot())
        budget = GaugeMetricFamily(
            "llmhost_memory_budget_bytes", "Memory loaded models may use, per device.", labels=["device"]
        )
        budget.add_metric(["cpu"], manager.ram_budget)
        budget.add_metric(["gpu"], manager.vram_budget)
        return [count, memory, slots, busy, waiting, kv_cells, kv_used, *engines.families(), budget]

    def _security(self) -> Iterable[Metric]:
        """Refusals by the limits and budget stages and the policy stage's decisions: counters those
        stages keep as they decide (read by name, so a pipeline without one simply has no series)."""
        stages = {stage.name: stage for stage in self.service.pipeline.stages}
        rejected = CounterMetricFamily(
            "llmhost_rate_limit_rejections",
            "Requests refused with 429 by a key's limits: 'requests' (rpm), 'tokens' (tpm), 'budget' (USD).",
            labels=["kind"],
        )
        for stage_name, kinds in (("limits", ("requests", "tokens")), ("budget", ("budget",))):
            if stage_name in stages:
                counts = _counts(stages[stage_name], "rejections")
                for kind in sorted({*kinds, *counts}):
                    rejected.add_metric([str(kind)], counts.get(kind, 0))
        decisions = CounterMetricFamily(
            "llmhost_policy_decisions",
            "Governance policy decisions, by direction (input, output), rule and action taken.",
            labels=["direction", "rule", "action"],
        )
        if "policy" in stages:
            for key, n in sorted(_counts(stages["policy"], "counts").items(), key=lambda kv: str(kv[0])):
                if isinstance(key, tuple) and len(key) == 3:
                    decisions.add_metric([str(part) for part in key], n)
        return [rejected, decisions]

    def _gateway(self) -> Iterable[Metric]:
        gateway = self.service.gateway
        state = GaugeMetricFamily(
            "llmhost_breaker_state",
            "Circuit breaker of a route's target: 0 closed, 1 half-open, 2 open. One breaker per "
            "provider/model, shared by the routes that list it.",
            labels=["route", "target"],
        )
        p50 = GaugeMetricFamily(
            "llmhost_target_latency_p50_seconds",
            "Median latency of a route target's last 64 successful answers (what the 'latency' "
            "strategy orders by).",
            labels=["route", "target"],
        )
        opened = CounterMetricFamily(
            "llmhost_breaker_opened",
            "Times a target's circuit breaker opened (failures or a failed health probe).",
            labels=["target"],
        )
        seen_targets: set[str] = set()
        seen_pairs: set[tuple[str, str]] = set()
        for route in gateway.routes.values():
            for target in route.targets:
                if (route.name, target.key) in seen_pairs:  # a route may list a target twice
                    continue
                seen_pairs.add((route.name, target.key))
                breaker = gateway.breakers.get(target.key)
                if breaker is not None:
                    state.add_metric([route.name, target.key], BREAKER_STATE_VALUES[breaker.state])
                    if target.key not in seen_targets:
                        seen_targets.add(target.key)
                        opened.add_metric([target.key], breaker.opened_count)
                median = target.latency.p50()
                if median is not None:
                    p50.add_metric([route.name, target.key], median)
        return [state, opened, p50]


def _counts(stage: object, attribute: str) -> dict[Any, int]:
    """A copy of a stage's ``Counter``. The event loop updates it while a scrape runs in a thread:
    ``dict()`` of a Counter copies in one C call under the GIL, so the copy is consistent."""
    counter = getattr(stage, attribute, None)
    return dict(counter) if isinstance(counter, Mapping) else {}


class _EngineFamilies:
    """Per loaded model: what its engine counted (:class:`~llmhost.engine.stats.EngineStats`)."""

    def __init__(self) -> None:
        labels = MODEL_LABELS
        self.ttft = HistogramMetricFamily(
            "llmhost_model_time_to_first_token_seconds",
            "From queueing a request in a loaded model's engine to its first sampled token (waiting for a "
            "slot plus prompt prefill).",
            labels=labels,
        )
        self.tpot = HistogramMetricFamily(
            "llmhost_model_time_per_output_token_seconds",
            "Per finished request, seconds per output token after the first: 1/x is that stream's "
            "generation speed in tokens per second.",
            labels=labels,
        )
        self.prompt = CounterMetricFamily(
            "llmhost_model_prompt_tokens", "Prompt tokens of requests that took a slot.", labels=labels
        )
        self.hits = CounterMetricFamily(
            "llmhost_model_prefix_cache_hit_tokens",
            "Prompt tokens whose KV cells were reused from a slot's prefix cache, whoever computed them "
            "(hit ratio: divide by llmhost_model_prompt_tokens_total).",
            labels=labels,
        )
        self.generated = CounterMetricFamily(
            "llmhost_model_generation_tokens",
            "Tokens generated (rate(): the model's aggregate tokens per second).",
            labels=labels,
        )
        self.steps = CounterMetricFamily(
            "llmhost_model_decode_steps", "Decode calls the model's step loop made.", labels=labels
        )
        self.passes = CounterMetricFamily(
            "llmhost_model_decode_passes",
            "Passes over the weights those calls took (llama.cpp's micro-batches: one per run of "
            "consecutive slots; passes / steps near 1 is a well-packed batch).",
            labels=labels,
        )
        self.drafted = CounterMetricFamily(
            "llmhost_model_draft_tokens",
            'Tokens drafted for speculative decoding (speculative = "ngram").',
            labels=labels,
        )
        self.accepted = CounterMetricFamily(
            "llmhost_model_draft_accepted_tokens",
            "Drafted tokens the model agreed with (acceptance: divide by llmhost_model_draft_tokens_total).",
            labels=labels,
        )

    def add(self, values: list[str], stats: EngineStats) -> None:
        self.ttft.add_metric(values, stats.ttft.cumulative(), stats.ttft.total)
        self.tpot.add_metric(values, stats.tpot.cumulative(), stats.tpot.total)
        self.prompt.add_metric(values, stats.prompt_tokens)
        self.hits.add_metric(values, stats.prefix_hit_tokens)
        self.generated.add_metric(values, stats.generation_tokens)
        self.steps.add_metric(values, stats.steps)
        self.passes.add_metric(values, stats.passes)
        self.drafted.add_metric(values, stats.draft_tokens)
        self.accepted.add_metric(values, stats.draft_accepted)

    def families(self) -> list[Metric]:
        return [
            self.ttft,
            self.tpot,
            self.prompt,
            self.hits,
            self.generated,
            self.steps,
            self.passes,
            self.drafted,
            self.accepted,
        ]


class Metrics:
    """One app's metrics: its own registry (apps in one process do not collide) and HTTP counters."""

    def __init__(self, service: Service) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.http = HTTPStats()
        self.registry.register(self.http)
        self.registry.register(_ServiceCollector(service))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def render(self) -> bytes:
        """The text exposition; reads SQLite, so call it off the event loop."""
        return generate_latest(self.registry)
