"""``/api/ps``, ``/api/load``, ``/api/unload``: resident models, in the spirit of Ollama's API."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from llmhost.models.manager import LoadedModel
from llmhost.service import Service

__all__ = ["router"]

router = APIRouter(prefix="/api")


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    force: bool = False


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def describe_loaded(m: LoadedModel) -> dict[str, Any]:
    expires_in = m.expires_in
    expires_at = None
    if expires_in is not None:
        expires_at = dt.datetime.fromtimestamp(time.time() + expires_in, dt.UTC).isoformat()
    return {
        "name": m.name,
        "model": m.name,
        "digest": m.record.digest,
        "size": m.memory_bytes,
        "size_vram": m.memory_bytes if m.on_gpu else 0,
        "expires_at": expires_at,
        "details": {
            "format": "gguf",
            "family": m.record.architecture,
            "parameter_size": m.record.parameter_count,
            "quantization_level": m.record.quantization,
        },
        "context_length": m.key.n_ctx,
        "slots": m.runner.n_slots,
        "slots_busy": m.engine.busy_slots,
        "waiting": m.engine.waiting,
        "idle_seconds": round(m.idle_seconds, 1),
        "keep_alive": m.keep_alive,
        "loaded_at": dt.datetime.fromtimestamp(m.loaded_at, dt.UTC).isoformat(),
        "load_seconds": round(m.load_seconds, 3),
    }


@router.get("/ps")
async def ps(request: Request) -> dict[str, Any]:
    service = _service(request)
    return {"models": [describe_loaded(m) for m in service.models.loaded()]}


@router.post("/load")
async def load(body: ModelRef, request: Request) -> dict[str, Any]:
    service = _service(request)
    model = await asyncio.to_thread(service.models.load, body.model)
    return {"status": "loaded", **describe_loaded(model)}


@router.post("/unload")
async def unload(body: ModelRef, request: Request) -> dict[str, Any]:
    service = _service(request)
    service.get_model(body.model)  # 404 for unknown names
    unloaded = await asyncio.to_thread(service.models.unload, body.model, force=body.force)
    return {"status": "unloaded" if unloaded else "not loaded", "model": body.model}


@router.get("/providers")
async def providers(request: Request) -> dict[str, Any]:
    """Providers, routes, and each target's breaker state and recent latency."""
    return _service(request).gateway.describe()


@router.get("/usage")
async def usage(request: Request, by: str = "model", days: float | None = None) -> dict[str, Any]:
    """Requests, tokens and cost grouped by model, provider, target, key or day."""
    from llmhost.errors import RequestError
    from llmhost.router.cost import since_days

    if by not in {"model", "provider", "target", "key", "day"}:
        raise RequestError("by must be one of model, provider, target, key, day", param="by")
    service = _service(request)
    service.usage.flush(timeout=1.0)
    since = since_days(days) if days is not None else None
    return {"by": by, "rows": service.usage.summary(by, since)}  # type: ignore[arg-type]
