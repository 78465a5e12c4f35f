"""``create_app(settings)``: the FastAPI application, its lifespan, and the doors it serves.

Each dialect is one package under ``llmhost.doors`` with an ``attach(app)``; all of them call the same
``app.state.pipeline``. Middleware, outermost first: :class:`~llmhost.logs.RequestIdMiddleware`
(each request's id, sent back as ``x-request-id`` on every response),
:class:`~llmhost.metrics.HTTPMetricsMiddleware` (counts every request, refusals included), CORS
(allowed origins only), the drain (:mod:`llmhost.doors.http.drain`: requests in flight counted, new
ones refused with 503 once shutdown has begun), then the gate
(:mod:`llmhost.doors.http.gate`: Host and Origin checks, key and scope, body limit). With a key
configured, everything but ``/health`` and ``/ready`` needs one: ``/metrics`` the ``metrics`` scope, the
API docs any key. ``create_app`` refuses a non-loopback bind without a usable key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from llmhost import __version__
from llmhost.config import Settings
from llmhost.doors import (
    admin,
    agents,
    anthropic,
    datasets,
    diagnose,
    grpc,
    mcp,
    ollama,
    openai,
    responses,
    web,
)
from llmhost.doors.common import renderer_for, validation_info
from llmhost.doors.http.drain import Drain, DrainMiddleware, shutting_down
from llmhost.doors.http.gate import GateMiddleware, HostPolicy, origin_regex
from llmhost.doors.openai.translate import render_error as openai_render_error
from llmhost.errors import ConfigError, ErrorInfo, LLMHostError, classify
from llmhost.logs import RequestIdMiddleware
from llmhost.metrics import CONTENT_TYPE, HTTPMetricsMiddleware, Metrics
from llmhost.net import is_loopback
from llmhost.security.auth import write_owner_token
from llmhost.service import Service

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _render(request: Request, info: ErrorInfo) -> Response:
    return renderer_for(request.app.state.error_renderers, request.url.path, request.scope["headers"])(info)


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
    svc.auth.owner_token = write_owner_token(settings.data_dir).encode()
    if not is_loopback(settings.host) and not svc.auth.usable:
        if owns_service:
            svc.close()
        raise ConfigError(
            f"refusing to serve on {settings.host} without an API key: create one with "
            "`llmhost keys create NAME`, set LLMHOST_API_KEY, or bind 127.0.0.1"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(svc.startup(preload=preload))
        task.add_done_callback(_log_startup_failure)
        app.state.startup_task = task
        svc.gateway.start()  # health probes; shared breakers when limits.redis_url is set
        try:
            async with contextlib.AsyncExitStack() as stack:
                for run in app.state.lifespans:  # the doors' own (the MCP session manager)
                    await stack.enter_async_context(run())
                yield
        finally:
            if not task.done():
                task.cancel()
            await svc.aclose()
            if owns_service:
                await asyncio.to_thread(svc.close)

    app = FastAPI(title="llmhost", version=__version__, lifespan=lifespan)
    app.state.service = svc
    app.state.pipeline = svc.pipeline
    # Begun by the server on SIGTERM/SIGINT (:class:`~llmhost.doors.http.drain.DrainingServer`).
    app.state.drain = drain = Drain(settings.drain_seconds)
    # Errors outside any door's routes: OpenAI's envelope unless a door claims the path.
    app.state.error_renderers = {"": openai_render_error}
    lifespans: list[Callable[[], AbstractAsyncContextManager[None]]] = []
    app.state.lifespans = lifespans
    install_error_handlers(app)
    openai.attach(app)
    responses.attach(app)
    anthropic.attach(app)
    ollama.attach(app)
    admin.attach(app)
    diagnose.attach(app)
    agents.attach(app)
    datasets.attach(app)
    web.attach(app)
    grpc.attach(app, svc)
    mcp.attach(app, svc)

    @app.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse, include_in_schema=False)
    async def root() -> str:
        # Ollama's liveness answer: its Go client's heartbeat (HEAD /) and its CLI check this.
        return "Ollama is running"

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", response_model=None)
    async def ready(request: Request) -> Response:
        if drain.draining:  # first, so a load balancer takes the server out at once
            return _render(request, shutting_down())
        task: asyncio.Task[None] | None = getattr(request.app.state, "startup_task", None)
        if task is not None and task.done() and task.exception() is not None:
            # The reason is in the server log; a probe's answer must not echo exception text.
            info = ErrorInfo(503, "server", "startup failed (see the server log)", code="startup_failed")
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

    app.add_middleware(
        GateMiddleware,
        max_body=settings.max_request_bytes,
        auth=svc.auth,
        hosts=HostPolicy(settings.host, settings.security.allowed_hosts),
        origins=settings.security.allowed_origins,
        renderers=app.state.error_renderers,
        audit=svc.audit if settings.audit.enabled else None,
        sessions=app.state.web_sessions,
    )
    # Outside the gate: a request refused during the drain is refused before any key is checked.
    app.add_middleware(DrainMiddleware, drain=drain, renderers=app.state.error_renderers)
    # Outside the gate: preflights carry no key. Only allowed origins get CORS headers.
    app.add_middleware(
        CORSMiddleware,
        allow_origin_regex=origin_regex(settings.security.allowed_origins) or None,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["x-request-id", "retry-after", "mcp-session-id"],  # a browser MCP client reads it
    )
    # Added last, so it runs first: requests the gate refuses are counted too.
    app.add_middleware(HTTPMetricsMiddleware, stats=metrics.http, routes=_all_routes(app.router.routes))
    # Outermost: the id exists before anything can refuse or log, and goes out on every response.
    app.add_middleware(RequestIdMiddleware)
    return app


def _log_startup_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("startup failed", exc_info=task.exception())


def _all_routes(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """Every route, those of included routers too (newer FastAPI keeps an included router as one entry
    that holds the original router)."""
    flat: list[BaseRoute] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        flat.extend(_all_routes(inner.routes) if inner is not None else [route])
    return flat
