"""What every HTTP door shares: a route class that renders errors in the door's own envelope, the
request context, and the service objects on ``app.state``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from llmhost.core.pipeline import Pipeline
from llmhost.core.types import Principal, RequestContext, TokenLogprob, new_id
from llmhost.errors import ErrorInfo, ErrorKind, LLMHostError, classify
from llmhost.logs import REQUEST_ID_KEY

__all__ = [
    "PRINCIPAL_KEY",
    "ErrorRenderer",
    "context_for",
    "door_route",
    "owner_of",
    "pipeline_of",
    "renderer_for",
    "serve_errors",
    "stream_json",
    "token_logprobs",
    "validation_info",
]

log = logging.getLogger(__name__)

ErrorRenderer = Callable[[ErrorInfo], Response]
PRINCIPAL_KEY = "llmhost.principal"  # where the HTTP gate leaves the caller's principal in the ASGI scope


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    # Drop pydantic's union-branch markers such as "str" / "list[int]" / "function-after[...]".
    parts = [
        p
        for p in parts
        if not (
            p.startswith(("list[", "function-", "tagged-union[", "dict[", "literal["))
            or p in {"str", "int", "float"}
        )
    ]
    # OpenAI's form: list positions in brackets, ``messages[0].role`` (pydantic's is ``messages.0.role``).
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() and out else (f".{p}" if out else p)
    return out or None


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
        return ErrorInfo(
            400,
            "invalid_request",
            f"Missing required parameter: '{param}'.",
            param,
            "missing_required_parameter",
        )
    return ErrorInfo(400, "invalid_request", message, param, "invalid_value")


def door_route(render: ErrorRenderer) -> type[APIRoute]:
    """An ``APIRoute`` class whose errors (validation, llmhost errors, anything unexpected) come out in
    the envelope ``render`` draws: pass it as ``APIRouter(route_class=...)``."""

    class DoorRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    response = await handler(request)
                    ctx: RequestContext | None = getattr(request.state, "llmhost_ctx", None)
                    if ctx is not None:
                        response.headers.update(ctx.response_headers)
                        response.headers["x-request-id"] = ctx.request_id
                    return response
                except RequestValidationError as exc:
                    return render(validation_info(exc))
                except HTTPException as exc:  # FastAPI's own: a body json.loads refused (a 5,000-digit int)
                    status, headers = exc.status_code, dict(exc.headers or {})
                    kind: ErrorKind = "invalid_request" if status < 500 else "server"
                    return render(ErrorInfo(status, kind, str(exc.detail), headers=headers))
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


# Characters Python's str.splitlines() (and clients that read streams with it, httpx's iter_lines
# among them) take for line ends; JSON allows them raw, so a stream escapes them.
_LINE_BREAKERS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def stream_json(payload: Any) -> bytes:
    """Compact JSON for one SSE ``data:`` field or one NDJSON line: non-ASCII text kept as is, except
    the characters some line readers split on."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).translate(_LINE_BREAKERS).encode()


def token_logprobs(items: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """Per-token log-probabilities as OpenAI's chat, the Responses API and Ollama all write them:
    ``[{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]``."""

    def entry(raw: bytes, logprob: float) -> dict[str, Any]:
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return [
        {**entry(t.token, t.logprob), "top_logprobs": [entry(raw, lp) for raw, lp in t.top]} for t in items
    ]


def serve_errors(app: FastAPI, prefix: str, render: ErrorRenderer) -> None:
    """Errors under ``prefix`` that no route of the door handles (unknown paths, the gate's 401 and
    413) come out in ``render``'s envelope; the longest matching prefix wins."""
    renderers: dict[str, ErrorRenderer] | None = getattr(app.state, "error_renderers", None)
    if renderers is None:
        renderers = app.state.error_renderers = {}
    renderers[prefix] = render


# A request that says which dialect it speaks gets that dialect's errors wherever it goes under /v1: the
# anthropic SDK sends ``anthropic-version`` on every call (``/v1/models``, a missing ``/v1/files``).
_DIALECT_HEADERS = ((b"anthropic-version", "/v1/messages"),)


def renderer_for(
    renderers: dict[str, ErrorRenderer], path: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> ErrorRenderer:
    """The error renderer of the door ``path`` belongs to (the longest prefix), or of the dialect the
    request's headers name."""
    if path.startswith("/v1/"):
        names = {k.lower() for k, _ in headers}
        for header, prefix in _DIALECT_HEADERS:
            if header in names and prefix in renderers:
                return renderers[prefix]
    best = max((p for p in renderers if path.startswith(p)), key=len, default="")
    return renderers[best]


def owner_of(principal: Principal) -> str:
    """Whose stored responses and chat completions these are: the key's id (stable across rotation,
    never reused when a name is), else the principal's name (the owner on an open loopback server, the
    config-file key)."""
    return principal.key_id or principal.name


def pipeline_of(request: Request) -> Pipeline:
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline


def context_for(request: Request, door: str) -> RequestContext:
    """The request's context: the principal the gate authenticated, the door it came through, and the
    id the outermost middleware gave the request (the ``x-request-id`` the client gets back)."""
    principal = request.scope.get(PRINCIPAL_KEY) or Principal()
    request_id = request.scope.get(REQUEST_ID_KEY) or new_id("req")
    ctx = RequestContext(principal=principal, door=door, request_id=request_id)
    request.state.llmhost_ctx = ctx  # the route class adds the stages' response headers (rate limits)
    return ctx
