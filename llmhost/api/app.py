"""``create_app(settings)``: the FastAPI application, its lifespan, and the request gate.

The gate is plain ASGI middleware (cheap on every request): body-size limit (413) and, when an API key
is configured, bearer-token auth (401) on ``/v1`` and ``/api``. ``/health``, ``/ready`` and ``/metrics``
stay open for probes and scrapers, as vLLM's ``/metrics`` does (it names models, routes and providers,
never a key). Outside the gate, :class:`~llmhost.metrics.HTTPMetricsMiddleware` counts every request,
refusals included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmhost import __version__
from llmhost.api.admin.routes import router as admin_router
from llmhost.api.errors import error_body, install_error_handlers
from llmhost.api.openai.routes import router as openai_router
from llmhost.api.openai.serving import OpenAIServing
from llmhost.config import Settings
from llmhost.metrics import CONTENT_TYPE, HTTPMetricsMiddleware, Metrics
from llmhost.service import Service

__all__ = ["create_app"]

log = logging.getLogger(__name__)


class _BodyTooLarge(Exception):
    pass


class GateMiddleware:
    """Body-size limit and bearer-token auth, before any route runs."""

    def __init__(self, app: ASGIApp, *, max_body: int, api_key: str | None) -> None:
        self.app = app
        self.max_body = max_body
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if scope["method"] == "POST" and scope["path"].startswith(("/v1", "/api")):
            # Bodies are JSON whatever the client declares: `curl -d '{...}'` sends a form content type.
            ctype = headers.get(b"content-type", b"")
            if not ctype.startswith(b"application/json"):
                raw = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope = {**scope, "headers": [*raw, (b"content-type", b"application/json")]}
        if self.api_key is not None and scope["path"].startswith(("/v1", "/api")):
            auth = headers.get(b"authorization", b"")
            token = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
            if not token or not secrets.compare_digest(token, self.api_key):
                message = "Incorrect API key provided." if token else "You didn't provide an API key."
                await _send_json(
                    send, 401, error_body(message, "invalid_request_error", None, "invalid_api_key")
                )
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _send_json(send, 413, _too_large(self.max_body))
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await _send_json(send, 413, _too_large(self.max_body))


def _too_large(limit: int) -> dict[str, Any]:
    return error_body(
        f"request body is larger than the {limit} bytes this server accepts",
        "invalid_request_error",
        None,
        "request_too_large",
    )


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


def create_app(settings: Settings, service: Service | None = None, *, preload: bool = True) -> FastAPI:
    """Build the app. The service is created (and closed) by the lifespan unless one is passed in."""
    owns_service = service is None
    svc = service if service is not None else Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(svc.startup(preload=preload))
        app.state.startup_task = task
        svc.gateway.start_health_probes()
        try:
            yield
        finally:
            if not task.done():
                task.cancel()
            await svc.gateway.aclose()
            if owns_service:
                await asyncio.to_thread(svc.close)

    app = FastAPI(title="llmhost", version=__version__, lifespan=lifespan)
    app.state.service = svc
    app.state.serving = OpenAIServing(svc)
    install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(admin_router)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", response_model=None)
    async def ready(request: Request) -> JSONResponse:
        task: asyncio.Task[None] | None = getattr(request.app.state, "startup_task", None)
        if task is not None and task.done() and task.exception() is not None:
            message = f"startup failed: {task.exception()}"
            return JSONResponse(error_body(message, "server_error", None, "startup_failed"), status_code=503)
        if not svc.ready:
            body = error_body("loading the default model", "server_error", None, "service_unavailable")
            return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
        loaded = [m.name for m in svc.models.loaded()]
        return JSONResponse({"status": "ready", "models": loaded})

    metrics = Metrics(svc)
    app.state.metrics = metrics

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        # Off the event loop: a scrape reads the usage log from SQLite.
        return Response(await asyncio.to_thread(metrics.render), media_type=CONTENT_TYPE)

    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    app.add_middleware(GateMiddleware, max_body=settings.max_request_bytes, api_key=api_key)
    # Added last, so it runs first: requests the gate refuses are counted too.
    routes = [*app.router.routes, *openai_router.routes, *admin_router.routes]
    app.add_middleware(HTTPMetricsMiddleware, stats=metrics.http, routes=routes)
    return app
