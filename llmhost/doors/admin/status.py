"""``GET /api/status`` (scope ``metrics``): the server now, in one JSON document, for the dashboard's
live view.

What the MCP monitoring tools report (:mod:`llmhost.doors.mcp.monitoring`: machine, loaded models with
their slots and queues, breaker states) plus, per loaded model, what its engine has counted since it
was loaded (the counters ``/metrics`` exports: :class:`~llmhost.engine.stats.EngineStats`), and the memory
budgets. Counters are cumulative; a client that polls divides the change by the time between polls to get
rates (tokens per second across all requests).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from llmhost.doors.common import door_route
from llmhost.doors.mcp.monitoring import provider_health, system_status
from llmhost.doors.openai.translate import render_error
from llmhost.engine.stats import EngineStats, Histogram
from llmhost.service import Service

__all__ = ["router", "server_status"]

router = APIRouter(prefix="/api", route_class=door_route(render_error))


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    """Loaded models (memory against the budget, slots, queue, tokens, TTFT, prefix-cache hits), each
    route target's circuit breaker, the machine, uptime."""
    service: Service = request.app.state.service
    # Off the event loop: CPU use is sampled over 0.2 s and GPU memory is read from the driver.
    return await asyncio.to_thread(server_status, service)


def server_status(service: Service) -> dict[str, Any]:
    system = system_status(service)
    health = provider_health(service)
    loaded = {m.name: m for m in service.models.loaded()}
    models = []
    for resident in system.models:
        model = loaded.get(resident.name)
        if model is None:  # unloaded between the two reads
            continue
        stats = model.engine.stats_snapshot() if model.engine is not None else None
        models.append(
            {
                **resident.model_dump(),
                "size_bytes": model.record.size_bytes,
                "device": "gpu" if model.on_gpu else "cpu",
                "embedding_only": model.engine is None,
                **engine_figures(stats),
            }
        )
    manager = service.models
    used_gpu = sum(m.memory_bytes for m in loaded.values() if m.on_gpu)
    used_cpu = sum(m.memory_bytes for m in loaded.values() if not m.on_gpu)
    return {
        "object": "status",
        "version": system.version,
        "ready": service.ready,
        "uptime_seconds": system.uptime_seconds,
        "system": {
            "cpu_model": system.cpu_model,
            "logical_cpus": system.logical_cpus,
            "cpu_percent": system.cpu_percent,
            "load_average": system.load_average,
            "ram_total_bytes": system.ram_total_bytes,
            "ram_available_bytes": system.ram_available_bytes,
            "gpus": [g.model_dump() for g in system.gpus],
            "gpu_note": system.gpu_note,
        },
        "memory": {
            "ram_budget_bytes": manager.ram_budget,
            "ram_used_bytes": used_cpu,
            "vram_budget_bytes": manager.vram_budget,
            "vram_used_bytes": used_gpu,
        },
        "models": models,
        "requests_waiting": system.requests_waiting,
        "slots": sum(m["slots"] for m in models if not m["embedding_only"]),
        "slots_busy": sum(m["slots_busy"] for m in models),
        "generation_tokens": sum(m["generation_tokens"] for m in models),
        "breakers": [t.model_dump() for t in health.targets],
        "providers": [p.model_dump() for p in health.providers],
    }


def engine_figures(stats: EngineStats | None) -> dict[str, Any]:
    """A loaded model's engine counters as the dashboard shows them: totals, the prefix-cache hit ratio,
    time to first token (mean and median, in ms) and the mean decode speed of one stream."""
    if stats is None:  # an embedding model: no engine, nothing generated
        stats = EngineStats()
    tpot = stats.tpot.total / stats.tpot.count if stats.tpot.count else None
    return {
        "requests": stats.ttft.count,
        "prompt_tokens": stats.prompt_tokens,
        "prefix_hit_tokens": stats.prefix_hit_tokens,
        "prefix_hit_ratio": stats.prefix_hit_tokens / stats.prompt_tokens if stats.prompt_tokens else None,
        "generation_tokens": stats.generation_tokens,
        "ttft_mean_ms": _ms(stats.ttft.total / stats.ttft.count) if stats.ttft.count else None,
        "ttft_p50_ms": _ms(quantile(stats.ttft, 0.5)),
        "decode_tokens_per_second": round(1 / tpot, 1) if tpot else None,
    }


def quantile(histogram: Histogram, q: float) -> float | None:
    """The ``q`` quantile, interpolated inside its bucket as Prometheus' ``histogram_quantile`` does
    (the last finite bound when it falls in the +Inf bucket); None without observations."""
    total = histogram.count
    if not total:
        return None
    rank = q * total
    running = 0
    lower = 0.0
    for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
        if count and running + count >= rank:
            return lower + (bound - lower) * (rank - running) / count
        running += count
        lower = bound
    return float(histogram.bounds[-1])


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
