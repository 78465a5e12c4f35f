"""The diagnose engine over gRPC (``diagnose.proto``): ``Diagnose``, ``BatchDiagnose`` (a bidirectional
stream), ``GetModelInfo`` and ``Health``, on ``[grpc] port`` beside the HTTP server.

The proto is loaded when the server starts (``grpc.protos_and_services``), so no generated code lives
in the repository. Calls authenticate with the HTTP API's keys (``authorization: Bearer KEY`` or
``x-api-key`` metadata) and need the ``inference`` scope (``GetModelInfo``: ``models:read``;
``Health`` is open, as ``/health`` is); each diagnosis then runs through the pipeline under that key,
exactly as ``POST /v1/diagnose`` does. Errors map to gRPC status codes (400 -> INVALID_ARGUMENT,
401 -> UNAUTHENTICATED, 403 -> PERMISSION_DENIED, 404 -> NOT_FOUND, 429 -> RESOURCE_EXHAUSTED,
503 -> UNAVAILABLE), with the API's message as the details.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from pydantic import ValidationError

from llmhost.apps.diagnose.document import DiagnosticsDocument
from llmhost.core.types import Principal, RequestContext
from llmhost.errors import LLMHostError, RequestError, classify
from llmhost.security.auth import check_scope
from llmhost.service import Service

__all__ = ["PROTO", "GrpcServer", "protos", "services"]

log = logging.getLogger(__name__)

PROTO = "llmhost/doors/grpc/diagnose.proto"


def _load_proto() -> tuple[Any, Any]:
    """The messages and services of :data:`PROTO`, compiled in memory. grpc finds the file through
    ``sys.path``, where an editable install does not put the source tree: its root is added for the
    call (for an installed wheel it is site-packages, there already)."""
    root = str(Path(__file__).resolve().parents[3])
    added = root not in sys.path
    if added:
        sys.path.append(root)
    try:
        return grpc.protos_and_services(PROTO)  # type: ignore[no-any-return]
    finally:
        if added:
            sys.path.remove(root)


protos: Any
services: Any
protos, services = _load_proto()

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(status: int) -> grpc.StatusCode:
    return _CODES.get(status, grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.INVALID_ARGUMENT)


def _document(message: Any) -> DiagnosticsDocument:
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    if not data.get("category"):
        data.pop("category", None)
    try:
        return DiagnosticsDocument.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RequestError(
            f"document{'.' + where if where else ''}: {first['msg']}", param="document"
        ) from exc


def _diagnosis(answer: dict[str, Any]) -> Any:
    fields = ("id", "category", "model", "template", "examples", "latency_s", "cached", "problem")
    message = protos.Diagnosis(**{k: answer[k] for k in fields if k in answer})
    for s in answer["suggestions"]:
        message.suggestions.add(**{k: s[k] for k in protos.Suggestion.DESCRIPTOR.fields_by_name if k in s})
    for d in answer["dropped"]:
        message.dropped.add(suggestion=d["suggestion"], reason=d["reason"])
    message.prompt_tokens = answer["usage"]["prompt_tokens"]
    message.completion_tokens = answer["usage"]["completion_tokens"]
    return message


class DiagnoseServicer(services.DiagnoseServicer):  # type: ignore[misc]
    def __init__(self, service: Service) -> None:
        self.service = service

    def _principal(self, context: grpc.aio.ServicerContext, scope: str) -> Principal:
        metadata = dict(context.invocation_metadata() or ())
        secret = metadata.get("x-api-key") or ""
        auth = metadata.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            secret = auth[7:].strip()
        principal = self.service.auth.authenticate(secret.encode() or None)
        check_scope(principal, scope)
        return principal

    async def _diagnose(self, principal: Principal, request: Any) -> dict[str, Any]:
        def fresh() -> RequestContext:
            return RequestContext(principal=principal, door="grpc")

        options = self.service.diagnose_options(
            model=request.model or None,
            min_confidence=request.min_confidence if request.HasField("min_confidence") else None,
            examples=request.examples if request.HasField("examples") else None,
        )
        return await self.service.diagnose.diagnose(fresh, _document(request.document), options)

    async def Diagnose(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return _diagnosis(await self._diagnose(self._principal(context, "inference"), request))
        except LLMHostError as exc:
            info = classify(exc)
            await context.abort(status_code(info.status), info.message)

    async def BatchDiagnose(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        try:
            principal = self._principal(context, "inference")
        except LLMHostError as exc:
            info = classify(exc)
            await context.abort(status_code(info.status), info.message)
        gate = asyncio.Semaphore(self.service.settings.diagnose.concurrency)
        replies: asyncio.Queue[Any] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()

        async def one(request: Any) -> None:
            async with gate:
                try:
                    reply = protos.DiagnoseReply(
                        tag=request.tag, diagnosis=_diagnosis(await self._diagnose(principal, request))
                    )
                except Exception as exc:  # one document's failure is its own reply; the stream goes on
                    info = classify(exc)
                    reply = protos.DiagnoseReply(tag=request.tag, error_code=info.status, error=info.message)
            await replies.put(reply)

        async def read() -> None:
            async for request in requests:
                task = asyncio.create_task(one(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*list(pending))
            await replies.put(None)

        reader = asyncio.create_task(read())
        try:
            while (reply := await replies.get()) is not None:
                yield reply
            await reader
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()

    async def GetModelInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self._principal(context, "models:read")
        except LLMHostError as exc:
            info = classify(exc)
            await context.abort(status_code(info.status), info.message)
        described = self.service.diagnose.describe(self.service.diagnose_options())
        return protos.ModelInfo(
            model=described["model"],
            embedding_model=described["embedding_model"],
            templates=described["templates"],
            examples=described["examples"],
            min_confidence=described["min_confidence"],
            examples_per_prompt=described["examples_per_prompt"],
        )

    async def Health(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return protos.HealthReply(serving=self.service.ready)


class GrpcServer:
    """A ``grpc.aio`` server with the diagnose service, bound to ``host:port``."""

    def __init__(self, service: Service, host: str, port: int) -> None:
        self.server = grpc.aio.server()
        services.add_DiagnoseServicer_to_server(DiagnoseServicer(service), self.server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise RequestError(f"the gRPC server cannot listen on {address}")

    async def start(self) -> None:
        await self.server.start()
        log.info("gRPC diagnose service on port %d", self.port)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.server.stop(grace=2)
