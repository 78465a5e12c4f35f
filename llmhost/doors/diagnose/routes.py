"""``/v1/diagnose``: the diagnose engine (:mod:`llmhost.apps.diagnose`) over HTTP.

Each diagnosis runs through the pipeline under the caller's key (its model rules, limits, policy,
usage and audit). A batch streams one NDJSON line per document as each finishes (``index`` says which),
an error line for a document that failed, so one bad document does not sink the others.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llmhost.apps.diagnose.document import DiagnosticsDocument
from llmhost.apps.diagnose.engine import DiagnoseOptions
from llmhost.core.types import RequestContext
from llmhost.doors.common import context_for, door_route
from llmhost.doors.openai.translate import info_body, render_error
from llmhost.errors import classify
from llmhost.service import Service

__all__ = ["router"]

router = APIRouter(prefix="/v1/diagnose", route_class=door_route(render_error))


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1, description="Model or route; default [diagnose] model.")
    min_confidence: float | None = Field(None, ge=0.0, le=1.0)
    examples: int | None = Field(None, ge=0, le=10)


class DiagnoseBody(_Options):
    document: DiagnosticsDocument


class BatchBody(_Options):
    documents: list[DiagnosticsDocument] = Field(min_length=1, max_length=100)


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suggestion: int = Field(ge=1, description="The suggestion's index in the diagnosis (1-based).")
    applied: bool | None = None
    worked: bool | None = None
    rating: int | None = Field(None, ge=1, le=5)
    rater: str | None = Field(None, min_length=1, max_length=128, description="Default: the key's name.")
    comment: str = Field("", max_length=2000)


def _options(service: Service, body: _Options) -> DiagnoseOptions:
    return service.diagnose_options(
        model=body.model, min_confidence=body.min_confidence, examples=body.examples
    )


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _contexts(request: Request) -> Any:
    base = context_for(request, "diagnose")

    def fresh() -> RequestContext:
        return RequestContext(principal=base.principal, door=base.door, request_id=base.request_id)

    return fresh


@router.post("")
async def diagnose(body: DiagnoseBody, request: Request) -> dict[str, Any]:
    service = _service(request)
    options = service.diagnose_options(
        model=body.model, min_confidence=body.min_confidence, examples=body.examples
    )
    return await service.diagnose.diagnose(_contexts(request), body.document, options)


@router.post("/batch", response_model=None)
async def batch(body: BatchBody, request: Request) -> StreamingResponse:
    service = _service(request)
    options = service.diagnose_options(
        model=body.model, min_confidence=body.min_confidence, examples=body.examples
    )
    contexts = _contexts(request)
    gate = asyncio.Semaphore(service.settings.diagnose.concurrency)

    async def one(index: int, doc: DiagnosticsDocument) -> dict[str, Any]:
        async with gate:
            try:
                return {"index": index, "diagnosis": await service.diagnose.diagnose(contexts, doc, options)}
            except Exception as exc:  # reported on its own line; the other documents go on
                return {"index": index, **info_body(classify(exc))}

    async def lines() -> AsyncIterator[bytes]:
        tasks = [asyncio.create_task(one(i, d)) for i, d in enumerate(body.documents)]
        try:
            for done in asyncio.as_completed(tasks):
                yield (json.dumps(await done) + "\n").encode()
        finally:
            for t in tasks:
                t.cancel()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/model")
async def model_info(request: Request) -> dict[str, Any]:
    service = _service(request)
    return service.diagnose.describe(service.diagnose_options())


@router.get("/{diagnosis_id}")
async def get_diagnosis(diagnosis_id: str, request: Request) -> dict[str, Any]:
    return await asyncio.to_thread(_service(request).diagnoses.get, diagnosis_id)


@router.post("/{diagnosis_id}/feedback")
async def feedback(diagnosis_id: str, body: FeedbackBody, request: Request) -> dict[str, Any]:
    service = _service(request)
    rater = body.rater or context_for(request, "diagnose").principal.name
    await asyncio.to_thread(
        service.diagnoses.add_feedback,
        diagnosis_id,
        body.suggestion,
        rater,
        applied=body.applied,
        worked=body.worked,
        rating=body.rating,
        comment=body.comment,
    )
    return {"diagnosis": diagnosis_id, "suggestion": body.suggestion, "rater": rater, "recorded": True}
