"""Monitoring tools: ``get_system_status`` (CPU, RAM, GPUs, loaded models, slots, queues),
``get_vram_status``, ``get_provider_health`` (breakers, latency) and ``get_usage``."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Annotated, Any, Literal

import psutil
from pydantic import BaseModel, Field

from llmhost import __version__
from llmhost.doors.mcp.gate import Registrar
from llmhost.doors.ollama.catalog import describe_loaded
from llmhost.models.hardware import clear_hardware_cache, detect_hardware
from llmhost.router.cost import GroupBy, since_days
from llmhost.service import Service

__all__ = ["register"]


class Gpu(BaseModel):
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int


class ResidentModel(BaseModel):
    name: str
    memory_bytes: int
    on_gpu: bool
    context_length: int
    slots: int
    slots_busy: int
    waiting: int = Field(description="Requests queued for a slot.")
    idle_seconds: float


class SystemStatus(BaseModel):
    version: str
    uptime_seconds: float
    cpu_model: str
    logical_cpus: int
    cpu_percent: float = Field(description="Whole-machine CPU use over the last 0.2 s.")
    load_average: list[float] = Field(description="1, 5 and 15 minute load averages.")
    ram_total_bytes: int
    ram_available_bytes: int
    gpus: list[Gpu]
    gpu_note: str | None = Field(None, description="Why no GPU is listed, when none is.")
    gpu_offload: bool = Field(description="Whether this llama.cpp build can offload to a GPU.")
    models: list[ResidentModel] = Field(description="Models in memory, with their slots and queues.")
    requests_waiting: int


class VramStatus(BaseModel):
    gpus: list[Gpu]
    note: str | None = None
    models_on_gpu: list[ResidentModel]


class TargetHealth(BaseModel):
    route: str
    target: str = Field(description="provider/model")
    breaker: str = Field(description="closed (healthy), open (failing: skipped) or half_open (probing).")
    retry_in_s: float | None = Field(None, description="While open: seconds until the next probe.")
    p50_latency_ms: float | None = Field(None, description="Median latency of recent calls.")


class Provider(BaseModel):
    name: str
    type: str


class ProviderHealth(BaseModel):
    providers: list[Provider]
    targets: list[TargetHealth]


class UsageRow(BaseModel):
    group: str | None
    requests: int
    ok: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    avg_latency_ms: float


class UsageSummary(BaseModel):
    by: str
    days: float | None
    rows: list[UsageRow]


def _gpus(hardware: Any) -> list[Gpu]:
    return [
        Gpu(
            index=g.index,
            name=g.name,
            total_bytes=g.total_bytes,
            free_bytes=g.free_bytes,
            used_bytes=g.total_bytes - g.free_bytes,
        )
        for g in hardware.gpus
    ]


def _resident(service: Service) -> list[ResidentModel]:
    out = []
    for m in service.models.loaded():
        d = describe_loaded(m)
        out.append(
            ResidentModel(
                name=m.name,
                memory_bytes=m.memory_bytes,
                on_gpu=m.on_gpu,
                context_length=d["context_length"],
                slots=d["slots"],
                slots_busy=d["slots_busy"],
                waiting=d["waiting"],
                idle_seconds=d["idle_seconds"],
            )
        )
    return out


def _fresh_hardware() -> Any:
    clear_hardware_cache()  # free memory changes: read it now
    return detect_hardware()


def system_status(service: Service) -> SystemStatus:
    hardware = _fresh_hardware()
    memory = psutil.virtual_memory()
    models = _resident(service)
    return SystemStatus(
        version=__version__,
        uptime_seconds=round(time.time() - service.started_at, 1),
        cpu_model=hardware.cpu_model,
        logical_cpus=hardware.logical_cpus,
        cpu_percent=psutil.cpu_percent(interval=0.2),
        load_average=[round(x, 2) for x in os.getloadavg()],
        ram_total_bytes=hardware.total_ram_bytes,
        ram_available_bytes=min(hardware.available_ram_bytes, memory.available),
        gpus=_gpus(hardware),
        gpu_note=hardware.gpu_error,
        gpu_offload=hardware.llama_gpu_offload,
        models=models,
        requests_waiting=sum(m.waiting for m in models),
    )


def provider_health(service: Service) -> ProviderHealth:
    described = service.gateway.describe()
    targets = [
        TargetHealth(
            route=route["name"],
            target=f"{t['provider']}/{t['model']}",
            breaker=str(t["breaker"]),
            retry_in_s=t["retry_in"],
            p50_latency_ms=t["p50_latency_ms"],
        )
        for route in described["routes"]
        for t in route["targets"]
    ]
    providers = [Provider(name=p["name"], type=p["type"]) for p in described["providers"]]
    return ProviderHealth(providers=providers, targets=targets)


def register(reg: Registrar, service: Service) -> None:
    async def get_system_status() -> SystemStatus:
        """This machine and this server now: CPU, RAM, GPUs with free memory, the loaded models with
        their slots in use and queued requests."""
        return await asyncio.to_thread(system_status, service)

    async def get_vram_status() -> VramStatus:
        """GPU memory: each GPU's total, used and free bytes, and the models holding it."""
        hardware = await asyncio.to_thread(_fresh_hardware)
        on_gpu = [m for m in _resident(service) if m.on_gpu]
        return VramStatus(gpus=_gpus(hardware), note=hardware.gpu_error, models_on_gpu=on_gpu)

    async def get_provider_health() -> ProviderHealth:
        """The gateway's providers and each route target's breaker state and recent latency."""
        return provider_health(service)

    async def get_usage(
        by: Annotated[
            Literal["model", "provider", "target", "key", "day", "door"], Field(description="How to group.")
        ] = "model",
        days: Annotated[float | None, Field(gt=0, le=36500, description="Only the last N days.")] = None,
    ) -> UsageSummary:
        """Requests, tokens and cost, grouped by model, provider, target, key, day or door."""
        grouping: GroupBy = by
        await asyncio.to_thread(service.usage.flush, timeout=1.0)
        since = since_days(days) if days is not None else None
        rows = await asyncio.to_thread(service.usage.summary, grouping, since)
        return UsageSummary(by=by, days=days, rows=[_usage_row(by, r) for r in rows])

    reg.tool(get_system_status, scope="metrics", title="System status")
    reg.tool(get_vram_status, scope="metrics", title="GPU memory")
    reg.tool(get_provider_health, scope="admin", title="Provider health")
    reg.tool(get_usage, scope="admin", title="Usage and cost")


def _usage_row(by: str, row: dict[str, Any]) -> UsageRow:
    return UsageRow(
        group=None if row[by] is None else str(row[by]),
        requests=row["requests"],
        ok=row["ok"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        cached_tokens=row["cached_tokens"],
        cost_usd=row["cost"],
        avg_latency_ms=row["avg_latency_ms"],
    )
