"""``/v1/datasets``: datasets (:mod:`llmhost.apps.datasets`) over HTTP.

A document comes as a multipart upload (field ``file``, optional ``name`` and ``format``) or as JSON
(``{"name", "text"}`` or ``{"name", "content_base64"}``); its embeddings are computed through the
pipeline under the caller's key. Adding a document under a name the dataset has replaces it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from llmhost.doors.common import context_for, door_route, validation_info
from llmhost.doors.openai.translate import render_error
from llmhost.errors import RequestError
from llmhost.service import Service

__all__ = ["router"]

router = APIRouter(prefix="/v1/datasets", route_class=door_route(render_error))


class CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    description: str = Field("", max_length=2000)
    embedding_model: str | None = Field(None, min_length=1, max_length=256)
    chunk_tokens: int | None = Field(None, ge=16, le=8192)
    chunk_overlap: int | None = Field(None, ge=0, le=4096)


class DocumentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    text: str | None = None
    content_base64: str | None = None
    format: Literal["txt", "md", "html", "pdf", "jsonl", "csv"] | None = None


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=10_000)
    k: int = Field(5, ge=1, le=100)
    mode: Literal["hybrid", "vector", "text"] = "hybrid"


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


@router.post("")
async def create(body: CreateBody, request: Request) -> dict[str, Any]:
    info = await _service(request).datasets.create(
        body.name,
        description=body.description,
        embedding_model=body.embedding_model,
        chunk_tokens=body.chunk_tokens,
        chunk_overlap=body.chunk_overlap,
    )
    return info.as_dict()


@router.get("")
async def list_datasets(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [d.as_dict() for d in await _service(request).datasets.all()]}


@router.get("/{name}")
async def get(name: str, request: Request) -> dict[str, Any]:
    return _service(request).datasets.get(name).as_dict()


@router.delete("/{name}")
async def delete(name: str, request: Request) -> dict[str, Any]:
    await _service(request).datasets.delete(name)
    return {"object": "dataset", "name": name, "deleted": True}


async def _document(request: Request) -> tuple[str, bytes, str | None]:
    """The upload's name, bytes and declared format, from a multipart form or a JSON body."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise RequestError("a multipart upload needs a 'file' field", param="file")
        data = await upload.read()
        name = form.get("name") or upload.filename or ""
        fmt = form.get("format")
        if not isinstance(name, str) or not name:
            raise RequestError("the document needs a name (the file's name or a 'name' field)", param="name")
        if fmt is not None and not isinstance(fmt, str):
            raise RequestError("format must be text", param="format")
        return name, data, fmt or None
    try:
        body = DocumentBody.model_validate_json(await request.body())
    except ValidationError as exc:
        info = validation_info(exc)  # type: ignore[arg-type]
        raise RequestError(info.message, param=info.param) from None
    if (body.text is None) == (body.content_base64 is None):
        raise RequestError("give exactly one of text or content_base64", param="text")
    if body.text is not None:
        return body.name, body.text.encode("utf-8"), body.format
    try:
        data = base64.b64decode(body.content_base64 or "", validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("content_base64 is not base64", param="content_base64") from None
    return body.name, data, body.format


@router.post("/{name}/documents")
async def add_document(name: str, request: Request) -> dict[str, Any]:
    service = _service(request)
    service.datasets.get(name)  # 404 before reading the upload
    doc_name, data, fmt = await _document(request)
    info = await service.datasets.add_document(
        context_for(request, "datasets"), name, doc_name, data, fmt=fmt
    )
    return info.as_dict()


@router.get("/{name}/documents")
async def list_documents(name: str, request: Request) -> dict[str, Any]:
    docs = await _service(request).datasets.documents(name)
    return {"object": "list", "data": [d.as_dict() for d in docs]}


@router.delete("/{name}/documents/{ref}")
async def delete_document(name: str, ref: str, request: Request) -> dict[str, Any]:
    doc = await _service(request).datasets.delete_document(name, ref)
    return {**doc.as_dict(), "deleted": True}


@router.post("/{name}/search")
async def search(name: str, body: SearchBody, request: Request) -> dict[str, Any]:
    hits = await _service(request).datasets.search(
        context_for(request, "datasets"), [name], body.query, body.k, body.mode
    )
    return {"object": "list", "data": [h.as_dict() for h in hits]}
