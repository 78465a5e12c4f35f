"""``/v1/agents``, ``/v1/agents/{name}/runs``, ``/v1/agents/{name}/scorecard``, ``/v1/scorecards``,
``/v1/feedback``: agents (:mod:`llmhost.apps.agents`) over HTTP.

Saving an agent is checked against this server (its model, policy, datasets and tool groups exist).
Feedback names a run (the ``x-llmhost-run-id`` header of the answer, which is also its
``x-request-id``); a key may rate the runs it made (the owner and admin keys any run).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from llmhost.apps.agents import AgentSpec, Feedback, RunRecord, scorecard
from llmhost.doors.common import PRINCIPAL_KEY, door_route
from llmhost.doors.openai.translate import render_error
from llmhost.errors import NotFoundError, RequestError
from llmhost.security.auth import OWNER
from llmhost.service import Service

__all__ = ["router"]

router = APIRouter(prefix="/v1", route_class=door_route(render_error))

_MAX_DAYS = 3650.0


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str | None = Field(None, min_length=1, max_length=128)
    request_id: str | None = Field(None, min_length=1, max_length=128, description="The same id.")
    thumbs: Literal["up", "down"] | None = None
    rating: int | None = Field(None, ge=1, le=5)
    comment: str = Field("", max_length=2000)


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _run_dict(run: RunRecord, feedback: list[Feedback] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"object": "agent.run", **{k: getattr(run, k) for k in RunRecord.__slots__}}
    body["feedback"] = [
        {"rater": f.rater, "thumbs": f.thumbs, "rating": f.rating, "comment": f.comment, "created": f.created}
        for f in feedback or []
    ]
    return body


def _days(days: float) -> float:
    if not 0.0 < days <= _MAX_DAYS:  # `not <=`: NaN is refused too
        raise RequestError(f"days must be more than 0 and at most {_MAX_DAYS:g}", param="days")
    return days


# ----- agents ----------------------------------------------------------------------------------------
@router.post("/agents")
async def create_agent(body: AgentSpec, request: Request) -> dict[str, Any]:
    record = await asyncio.to_thread(_service(request).agents.create, body)
    return record.as_dict()


@router.get("/agents")
async def list_agents(request: Request) -> dict[str, Any]:
    records = await asyncio.to_thread(_service(request).agent_store.all)
    return {"object": "list", "data": [r.as_dict() for r in records]}


@router.get("/agents/{name}")
async def get_agent(name: str, request: Request) -> dict[str, Any]:
    return (await asyncio.to_thread(_service(request).agent_store.get, name)).as_dict()


@router.put("/agents/{name}")
async def replace_agent(name: str, body: AgentSpec, request: Request) -> dict[str, Any]:
    if body.name != name:
        raise RequestError(f"the body names agent {body.name!r}, the path {name!r}", param="name")
    return (await asyncio.to_thread(_service(request).agents.replace, body)).as_dict()


@router.delete("/agents/{name}")
async def delete_agent(name: str, request: Request) -> dict[str, Any]:
    await asyncio.to_thread(_service(request).agents.delete, name)
    return {"object": "agent", "name": name, "deleted": True}


# ----- runs and scorecards ---------------------------------------------------------------------------
@router.get("/agents/{name}/runs")
async def list_runs(name: str, request: Request, limit: int = 50, days: float = 30.0) -> dict[str, Any]:
    if not 1 <= limit <= 1000:
        raise RequestError("limit must be between 1 and 1000", param="limit")
    service = _service(request)
    await asyncio.to_thread(service.agent_store.get, name)  # 404 for an unknown agent
    since = time.time() - _days(days) * 86400

    def read() -> list[dict[str, Any]]:
        service.agent_store.flush(timeout=2.0)
        runs = service.agent_store.runs(agent=name, since=since, limit=limit)
        feedback = service.agent_store.feedback([r.id for r in runs])
        return [_run_dict(r, feedback.get(r.id)) for r in runs]

    return {"object": "list", "data": await asyncio.to_thread(read)}


@router.get("/agents/{name}/runs/{run_id}")
async def get_run(name: str, run_id: str, request: Request) -> dict[str, Any]:
    store = _service(request).agent_store

    def read() -> dict[str, Any]:
        store.flush(timeout=2.0)
        run = store.run(run_id)
        if run.agent != name:
            raise NotFoundError(f"agent {name!r} has no run {run_id!r}", param="run_id", code="run_not_found")
        return _run_dict(run, store.feedback([run.id]).get(run.id))

    return await asyncio.to_thread(read)


@router.get("/agents/{name}/scorecard")
async def agent_scorecard(name: str, request: Request, days: float = 7.0) -> dict[str, Any]:
    service = _service(request)
    await asyncio.to_thread(service.agent_store.get, name)
    window = _days(days)
    return await asyncio.to_thread(lambda: scorecard(service.agent_store, agent=name, days=window))


@router.get("/scorecards")
async def model_scorecard(
    request: Request, model: str | None = None, agent: str | None = None, days: float = 7.0
) -> dict[str, Any]:
    """One model's scorecard (``model``: every request answered on it, agents' included), or an
    agent's (``agent``)."""
    if (model is None) == (agent is None):
        raise RequestError("give exactly one of model or agent", param="model")
    service = _service(request)
    if agent is not None:
        await asyncio.to_thread(service.agent_store.get, agent)
    window = _days(days)
    return await asyncio.to_thread(
        lambda: scorecard(service.agent_store, agent=agent, model=model, days=window)
    )


# ----- feedback --------------------------------------------------------------------------------------
@router.post("/feedback")
async def feedback(body: FeedbackBody, request: Request) -> dict[str, Any]:
    run_id = body.run_id or body.request_id
    if run_id is None:
        raise RequestError("you must provide run_id (the answer's x-llmhost-run-id)", param="run_id")
    if body.run_id and body.request_id and body.run_id != body.request_id:
        raise RequestError("run_id and request_id name different runs", param="request_id")
    if body.thumbs is None and body.rating is None:
        raise RequestError("feedback needs thumbs ('up' or 'down') or a rating (1-5)", param="thumbs")
    principal = request.scope.get(PRINCIPAL_KEY) or OWNER
    store = _service(request).agent_store

    def save() -> dict[str, Any]:
        store.flush(timeout=2.0)
        run = store.run(run_id)
        if not principal.may("admin") and run.key_id != (principal.key_id or ""):
            raise NotFoundError(f"no run {run_id!r}", param="run_id", code="run_not_found")
        rater = principal.key_id or principal.name
        fb = Feedback(run.id, rater, body.thumbs, body.rating, body.comment, time.time())
        store.add_feedback(fb)
        return {
            "object": "feedback",
            "run_id": run.id,
            "agent": run.agent,
            "model": run.model,
            "rater": rater,
            "thumbs": fb.thumbs,
            "rating": fb.rating,
            "comment": fb.comment,
        }

    return await asyncio.to_thread(save)
