"""``create_app(settings)``: the FastAPI application, its lifespan, and the doors it serves.

Each dialect is one package under ``llmhost.doors`` with an ``attach(app)``; all of them call the same
``app.state.pipeline``. The gate (:mod:`llmhost.doors.http.gate`) runs before any route: body-size limit
(413) and, when an API key is configured, key auth (401) on ``/v1`` and ``/api``. ``/health``,
``/ready`` and ``/metrics`` stay open for probes and scrapers, as vLLM's ``/metrics`` does (it names
models, routes and providers, never a key). Outside the gate, :class:`~llmhost.metrics.HTTPMetricsMiddleware`
counts every request, refusals included.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from llmhost import __version__
from llmhost.config import Settings
from llmhost.doors import admin, anthropic, ollama, openai, responses
from llmhost.doors.common import renderer_for, validation_info
from llmhost.doors.http.gate import GateMiddleware
from llmhost.doors.openai.translate import render_error as openai_render_error
from llmhost.errors import ErrorInfo, LLMHostError, classify
from llmhost.metrics import CONTENT_TYPE, HTTPMetricsMiddleware, Metrics
from llmhost.service import Service

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _render(request: Request, info: ErrorInfo) -> Response:
    return renderer_for(request.app.state.error_renderers, request.url.path)(info)


def install_error_handlers(app: FastAPI) -> None:
    """Errors raised outside a door's own routes (unknown paths, methods, probes) in the envelope of the
    dialect the path belongs to."""

    @app.exception_handler(LLMHostError)
    async def _llmhost_error(request: Request, exc: LLMHostError) -> Response:
        info = classify(exc)
        if info.status >= 500:
            log.error("request failed: %s", exc)
        return _render(request, info)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _render(request, validation_info(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"unknown endpoint {request.method} {request.url.path}"
        info = ErrorInfo(exc.status_code, "invalid_request", message, None, code)
        if exc.status_code == 404:
            info = ErrorInfo(404, "not_found", message, None, code)
        return _render(request, info)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _render(request, ErrorInfo(500, "server", "internal server error"))


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
    app.state.pipeline = svc.pipeline
    # Errors outside any door's routes: OpenAI's envelope unless a door claims the path.
    app.state.error_renderers = {"": openai_render_error}
    install_error_handlers(app)
    openai.attach(app)
    responses.attach(app)
    anthropic.attach(app)
    ollama.attach(app)
    admin.attach(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", response_model=None)
    async def ready(request: Request) -> Response:
        task: asyncio.Task[None] | None = getattr(request.app.state, "startup_task", None)
        if task is not None and task.done() and task.exception() is not None:
            info = ErrorInfo(503, "server", f"startup failed: {task.exception()}", code="startup_failed")
            return _render(request, info)
        if not svc.ready:
            retry = {"Retry-After": "1"}
            info = ErrorInfo(503, "server", "loading the default model", None, "service_unavailable", retry)
            return _render(request, info)
        loaded = [m.name for m in svc.models.loaded()]
        return JSONResponse({"status": "ready", "models": loaded})

    metrics = Metrics(svc)
    app.state.metrics = metrics

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        # Off the event loop: a scrape reads the usage log from SQLite.
        return Response(await asyncio.to_thread(metrics.render), media_type=CONTENT_TYPE)

    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    app.add_middleware(
        GateMiddleware,
        max_body=settings.max_request_bytes,
        api_key=api_key,
        renderers=app.state.error_renderers,
    )
    # Added last, so it runs first: requests the gate refuses are counted too.
    app.add_middleware(HTTPMetricsMiddleware, stats=metrics.http, routes=_all_routes(app.router.routes))
    return app


def _all_routes(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """Every route, those of included routers too (newer FastAPI keeps an included router as one entry
    that holds the original router)."""
    flat: list[BaseRoute] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        flat.extend(_all_routes(inner.routes) if inner is not None else [route])
    return flat
