"""``/api/ps``, ``/api/load``, ``/api/unload``: resident models, in the spirit of Ollama's API."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
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


class PullBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="hf:ORG/REPO[:FILE|:QUANT] or an https URL.")
    name: str | None = None
    sha256: str | None = None
    stream: bool = True


@router.post("/pull", response_model=None)
async def pull(body: PullBody, request: Request) -> Any:
    """Download, verify and register a model; progress as JSON lines (like Ollama's /api/pull)."""
    from fastapi.responses import JSONResponse, StreamingResponse

    from llmhost.api.errors import status_for
    from llmhost.errors import LLMHostError
    from llmhost.models.pull import PullProgress, pull_model

    service = _service(request)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[PullProgress | BaseException | None] = asyncio.Queue()
    client_gone = threading.Event()

    def run() -> None:
        def progress(event: PullProgress) -> None:
            if client_gone.is_set():  # stop; the partial file stays for the next pull to resume
                raise ConnectionAbortedError("the client disconnected")
            loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            pull_model(service.store, body.model, name=body.name, sha256=body.sha256, progress=progress)
            loop.call_soon_threadsafe(events.put_nowait, None)
        except BaseException as exc:
            loop.call_soon_threadsafe(events.put_nowait, exc)

    task = asyncio.create_task(asyncio.to_thread(run))

    async def lines() -> Any:
        try:
            while True:
                item = await events.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    message = str(item) if isinstance(item, LLMHostError) else "pull failed"
                    yield (json.dumps({"error": message}) + "\n").encode()
                    return
                yield (item.to_json() + "\n").encode()
        finally:
            client_gone.set()  # no-op once the pull has finished

    if body.stream:
        return StreamingResponse(lines(), media_type="application/x-ndjson")
    last: PullProgress | None = None
    while True:
        item = await events.get()
        if item is None:
            break
        if isinstance(item, LLMHostError):
            status, err, headers = status_for(item)
            return JSONResponse(err, status_code=status, headers=headers)
        if isinstance(item, BaseException):
            raise item
        last = item
    await task
    return {"status": "success", **({"digest": last.digest} if last and last.digest else {})}


class CopyBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


@router.post("/copy")
async def copy(body: CopyBody, request: Request) -> dict[str, Any]:
    """Register ``destination`` as another name for ``source``'s file.

    An existing ``destination`` is re-pointed: that is the hot-swap — requests already running finish on
    the old file, new ones go to the new one. The old file is deleted once no name uses it, but never while
    it is loaded. Unknown ``source``: 404; invalid ``destination``: 400.
    """
    service = _service(request)
    record = await asyncio.to_thread(
        service.store.copy, body.source, body.destination, in_use=service.models.is_in_use
    )
    return {"status": "success", "model": record.name, "digest": record.digest}


@router.delete("/delete")
async def delete(body: ModelRef, request: Request) -> dict[str, Any]:
    """Remove a model; refused (409) while it is loaded."""
    from llmhost.errors import ConflictError

    service = _service(request)
    record = service.get_model(body.model)
    if service.models.is_in_use(record):
        raise ConflictError(f"model '{body.model}' is loaded; unload it first (POST /api/unload)")
    removed = service.store.remove(body.model)
    return {"status": "success", "model": removed.name}
