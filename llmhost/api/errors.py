"""Every error becomes OpenAI's error envelope here, and nowhere else.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` with the status OpenAI uses.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmhost.errors import (
    AuthError,
    ConflictError,
    EngineError,
    EngineOverloadedError,
    LLMHostError,
    ModelError,
    ModelNotFoundError,
    NotReadyError,
    RequestError,
)
from llmhost.providers.base import ProviderError, ProviderHTTPError, ProviderTimeoutError

__all__ = ["error_body", "error_response", "install_error_handlers", "status_for"]

log = logging.getLogger(__name__)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)


def status_for(exc: LLMHostError) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    """Map an llmhost error to (status, envelope, headers)."""
    if isinstance(exc, ProviderError):
        return _provider_status(exc)
    if isinstance(exc, ModelNotFoundError):
        return 404, error_body(str(exc), "invalid_request_error", "model", "model_not_found"), None
    if isinstance(exc, RequestError):
        return 400, error_body(str(exc), "invalid_request_error", exc.param, exc.code), None
    if isinstance(exc, ConflictError):
        return 409, error_body(str(exc), "invalid_request_error", "model", "conflict"), None
    if isinstance(exc, AuthError):
        return 401, error_body(str(exc), "invalid_request_error", None, "invalid_api_key"), None
    if isinstance(exc, EngineOverloadedError):
        headers = {"Retry-After": str(exc.retry_after)}
        return 429, error_body(str(exc), "rate_limit_error", None, "rate_limit_exceeded"), headers
    if isinstance(exc, NotReadyError):
        return 503, error_body(str(exc), "server_error", None, "service_unavailable"), {"Retry-After": "1"}
    if isinstance(exc, ModelError):
        return 500, error_body(str(exc), "server_error", "model", "model_error"), None
    if isinstance(exc, EngineError):
        return 500, error_body(str(exc), "server_error", None, "engine_error"), None
    return 500, error_body(str(exc), "server_error"), None


def _provider_status(exc: ProviderError) -> tuple[int, dict[str, Any], dict[str, str] | None]:
    where = f"upstream {exc.provider}" if exc.provider else "upstream"
    if isinstance(exc, ProviderTimeoutError):
        return 504, error_body(f"{where} timed out: {exc}", "server_error", None, "upstream_timeout"), None
    if isinstance(exc, ProviderHTTPError) and exc.status is not None and 400 <= exc.status < 500:
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        type_ = "rate_limit_error" if exc.status == 429 else "invalid_request_error"
        return exc.status, error_body(str(exc), type_, None, "upstream_error"), headers
    return 502, error_body(f"{where} failed: {exc}", "server_error", None, "upstream_error"), None


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    # Drop pydantic's union-branch markers such as "str" / "list[int]" / "function-after[...]".
    parts = [p for p in parts if not (p.startswith(("list[", "function-")) or p in {"str", "int", "float"})]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LLMHostError)
    async def _llmhost_error(request: Request, exc: LLMHostError) -> JSONResponse:
        status, body, headers = status_for(exc)
        if status >= 500:
            log.error("request failed: %s", exc)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return error_response(
                400,
                "We could not parse the JSON body of your request. The body must be valid JSON.",
                code="invalid_json",
            )
        param = _param_from_loc(tuple(first.get("loc", ())))
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        if first.get("type") == "missing":
            message = f"you must provide the '{param}' parameter"
        return error_response(400, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"unknown endpoint {request.method} {request.url.path}"
        return error_response(exc.status_code, message, type_, code=code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", "server_error")
