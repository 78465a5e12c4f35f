"""``/api/load``, ``/api/unload``: resident models; ``/api/providers``, ``/api/usage``: the gateway;
``/api/audit``: the audit log (scope ``audit``)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from llmhost.doors.common import door_route
from llmhost.doors.ollama.catalog import describe_loaded
from llmhost.doors.openai.translate import render_error
from llmhost.errors import RequestError
from llmhost.router.cost import GroupBy, since_days
from llmhost.service import Service

__all__ = ["ModelRef", "router"]

router = APIRouter(prefix="/api", route_class=door_route(render_error))

_GROUPINGS: tuple[GroupBy, ...] = ("model", "provider", "target", "key", "day", "door")
# A century: far more history than any store keeps, and far from the dates ``datetime`` cannot hold.
_MAX_USAGE_DAYS = 36_500.0


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    force: bool = False


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


@router.post("/load")
async def load(body: ModelRef, request: Request) -> dict[str, Any]:
    """Make a model resident (404 for an unknown name); answers its ``/api/ps`` entry."""
    service = _service(request)
    model = await asyncio.to_thread(service.models.load, body.model)
    return {"status": "loaded", **describe_loaded(model)}


@router.post("/unload")
async def unload(body: ModelRef, request: Request) -> dict[str, Any]:
    """Unload a model; 409 while it serves requests, unless ``force``."""
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
    """Requests, tokens and cost grouped by model, provider, target, key, day or door."""
    grouping = next((g for g in _GROUPINGS if g == by), None)
    if grouping is None:
        raise RequestError("by must be one of model, provider, target, key, day, door", param="by")
    # ``not <=`` rather than ``>``: NaN fails every comparison, so it is refused here too.
    if days is not None and not 0.0 <= days <= _MAX_USAGE_DAYS:
        raise RequestError(f"days must be between 0 and {_MAX_USAGE_DAYS:g}", param="days")
    service = _service(request)
    await asyncio.to_thread(service.usage.flush, timeout=1.0)
    since = since_days(days) if days is not None else None
    return {"by": grouping, "rows": service.usage.summary(grouping, since)}


@router.get("/audit")
async def audit(request: Request, after: int = 0, limit: int = 100, key: str | None = None) -> dict[str, Any]:
    """Audit records in order (``after``: the last ``seq`` the caller has; ``limit`` ≤ 1000)."""
    if not 1 <= limit <= 1000:
        raise RequestError("limit must be between 1 and 1000", "limit")
    if after < 0:
        raise RequestError("after must be a row number (0 or more)", "after")
    rows = await asyncio.to_thread(_service(request).audit.rows, after=after, limit=limit, key_id=key)
    return {"object": "list", "data": [asdict(r) for r in rows], "last": rows[-1].seq if rows else after}
