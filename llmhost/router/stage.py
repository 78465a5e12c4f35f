"""The pipeline's "route" stage: the public model name becomes a route before anything is generated."""

from __future__ import annotations

from llmhost.core.stage import Request, StageBase
from llmhost.core.types import RequestContext
from llmhost.router.gateway import Gateway

__all__ = ["RouteStage"]


class RouteStage(StageBase):
    name = "route"

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def before(self, ctx: RequestContext, request: Request) -> Request:
        ctx.route = self.gateway.resolve(request.model)  # unknown names fail here with a 404
        return request
