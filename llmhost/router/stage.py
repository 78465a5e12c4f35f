"""The pipeline's "route" stage: the public model name becomes a route before anything is generated."""

from __future__ import annotations

import dataclasses

from llmhost.core.stage import Request, StageBase
from llmhost.core.types import InferenceRequest, RequestContext
from llmhost.router.gateway import Gateway

__all__ = ["RouteStage"]


class RouteStage(StageBase):
    name = "route"

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def before(self, ctx: RequestContext, request: Request) -> Request:
        ctx.route = self.gateway.resolve(request.model)  # unknown names fail here with a 404
        if isinstance(request, InferenceRequest):
            # A local engine shares its prefix cache between callers but tells each only of its own hits.
            request = dataclasses.replace(request, cache_scope=ctx.principal.key_id or "")
        return request
