"""What every HTTP door shares: a route class that renders errors in the door's own envelope, the
request context, and the service objects on ``app.state``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute

from llmhost.core.pipeline import Pipeline
from llmhost.core.types import Principal, RequestContext
from llmhost.errors import ErrorInfo, LLMHostError, classify

__all__ = ["ErrorRenderer", "context_for", "door_route", "pipeline_of", "validation_info"]

log = logging.getLogger(__name__)

ErrorRenderer = Callable[[ErrorInfo], Response]


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    # Drop pydantic's union-branch markers such as "str" / "list[int]" / "function-after[...]".
    parts = [
        p
        for p in parts
        if not (
            p.startswith(("list[", "function-", "tagged-union[", "dict[")) or p in {"str", "int", "float"}
        )
    ]
    return ".".join(parts) or None


def validation_info(exc: RequestValidationError) -> ErrorInfo:
    """A request body that failed validation, as a 400 naming the offending field."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return ErrorInfo(
            400,
            "invalid_request",
            "We could not parse the JSON body of your request. The body must be valid JSON.",
            code="invalid_json",
        )
    param = _param_from_loc(tuple(first.get("loc", ())))
    message = f"{param}: {first['msg']}" if param else str(first["msg"])
    if first.get("type") == "missing":
        message = f"you must provide the '{param}' parameter"
    return ErrorInfo(400, "invalid_request", message, param, "invalid_value")


def door_route(render: ErrorRenderer) -> type[APIRoute]:
    """An ``APIRoute`` class whose errors (validation, llmhost errors, anything unexpected) come out in
    the envelope ``render`` draws: pass it as ``APIRouter(route_class=...)``."""

    class DoorRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    return render(validation_info(exc))
                except LLMHostError as exc:
                    info = classify(exc)
                    if info.status >= 500:
                        log.error("%s %s failed: %s", request.method, request.url.path, exc)
                    return render(info)
                except Exception:
                    log.exception("unhandled error on %s %s", request.method, request.url.path)
                    return render(classify(RuntimeError()))

            return guarded

    return DoorRoute


def pipeline_of(request: Request) -> Pipeline:
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline


def context_for(request: Request, door: str) -> RequestContext:
    """The request's context: the principal the gate authenticated, and the door it came through."""
    principal = request.scope.get("llmhost.principal") or Principal()
    return RequestContext(principal=principal, door=door)
