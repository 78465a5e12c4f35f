"""``/api/create``: Ollama's way to make a model out of another with its own system prompt and parameters
(``ollama create NAME -f Modelfile`` with ``FROM``, ``SYSTEM``, ``PARAMETER``, ``LICENSE``).

In llmhost such a model is an agent (:mod:`llmhost.apps.agents`): a name that answers on a model or
route with a system prompt and sampling defaults, served by every dialect, listed by ``/api/tags`` and
``/v1/models``. ``from`` may be a model, a route or another agent made this way (whose settings the new
one starts from, as an Ollama model inherits its base's layers); creating an existing agent's name again
replaces it, as Ollama overwrites a model. ``/api/show`` prints its Modelfile, ``/api/copy`` copies it
and ``/api/delete`` removes it (:mod:`.catalog`, :mod:`.routes`).

``files`` with one GGUF file (pushed first with ``POST /api/blobs/:digest``, which ``HEAD`` checks:
:mod:`llmhost.models.uploads`) registers that file as a stored model of that name, as ``llmhost import``
does; a system prompt or parameters for it are a second model made ``FROM`` it.

What llmhost cannot honour is a 400 naming the field, never silently dropped: safetensors ``files``,
``adapters``, ``quantize``, a Go ``template``, preset ``messages``, ``renderer`` and ``parser``.
Parameters for the runner itself (``num_ctx``, ``num_gpu``, ``num_thread``, ...) are ignored, as in a
request's ``options``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from llmhost.apps.agents.spec import AgentSpec, SamplingSpec
from llmhost.core.types import Principal
from llmhost.doors.common import PRINCIPAL_KEY, door_route
from llmhost.doors.ollama import catalog, translate
from llmhost.doors.ollama import protocol as wire
from llmhost.errors import ConflictError, ModelError, ModelNotFoundError, NotFoundError, RequestError
from llmhost.models.uploads import Uploads, parse_digest
from llmhost.security.auth import OWNER, check_scope
from llmhost.service import Service

__all__ = ["agent_spec", "principal_of", "router", "save_agent", "uploads_of"]

router = APIRouter(prefix="/api", route_class=door_route(translate.render_error))
_FLUSH_BYTES = 4 * 1024 * 1024  # a pushed file goes to disk in pieces this big, off the event loop

# Modelfile parameters and the agent sampling field each sets.
_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "repeat_penalty": "repeat_penalty",
    "num_predict": "max_tokens",
    "stop": "stop",
}
# Ollama's other parameters: the runner's own settings here (the config's [engine] and [models."NAME"]),
# ignored as a request's options are.
_RUNNER = frozenset(
    {
        "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "repeat_last_n",
        "typical_p", "presence_penalty", "frequency_penalty", "penalize_newline", "use_mmap", "use_mlock",
        "numa", "low_vram", "vocab_only", "f16_kv", "logits_all", "mirostat", "mirostat_eta",
        "mirostat_tau", "tfs_z",
    }
)  # fmt: skip
_REFUSED = {
    "adapters": "LoRA adapters",
    "quantize": "quantizing (pull or import a quantized GGUF)",
    "draft_quantize": "quantizing",
    "draft_files": "draft models",
    "template": "a Go chat template (the model's own template is used; config: [models.NAME] chat_template)",
    "messages": "preset messages",
    "renderer": "renderers",
    "parser": "parsers",
}


def principal_of(request: Request) -> Principal:
    principal = request.scope.get(PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else OWNER


def _license_text(value: object) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n\n".join(value)
    raise RequestError("license must be a string or a list of strings", param="license")


def _sampling(base: SamplingSpec, parameters: dict[str, Any]) -> SamplingSpec:
    """``base`` with the Modelfile ``parameters`` set on it (a 400 names a wrong one)."""
    values = base.model_dump()
    for key, value in parameters.items():
        field = _SAMPLING.get(key)
        if field is None:
            if key in _RUNNER:
                continue
            raise RequestError(f"unknown parameter '{key}'", param="parameters")
        if field == "stop":
            value = [value] if isinstance(value, str) else value
        if field == "max_tokens" and value in (-1, -2):  # Ollama's "no limit" / "fill the context"
            value = None
        values[field] = value
    try:
        return SamplingSpec.model_validate(values)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise RequestError(f"invalid parameter {where}: {problem['msg']}", param="parameters") from None


def agent_spec(service: Service, body: wire.CreateRequest, name: str, base_name: str) -> AgentSpec:
    """The agent a create request makes: ``base_name`` (a model, route or agent, already resolved) with
    the request's system prompt, parameters and license on top."""
    base = service.agents.find(base_name)
    # An agent made from an agent starts from its settings, on its model.
    values: dict[str, Any] = base.model_dump() if base is not None else {"model": base_name}
    values["name"] = name
    values["sampling"] = _sampling(
        base.sampling if base is not None else SamplingSpec(), body.parameters or {}
    )
    if body.system:
        values["system"] = body.system
    license_text = _license_text(body.license)
    if license_text:
        values["description"] = f"License: {license_text}"
    try:
        return AgentSpec.model_validate(values)
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = str(problem["loc"][0]) if problem["loc"] else "model"
        param = {"name": "model", "description": "license", "model": "from"}.get(field, field)
        raise RequestError(f"invalid {param}: {problem['msg']}", param=param) from None


def save_agent(service: Service, spec: AgentSpec) -> None:
    """Save ``spec`` as a new agent, or in place of the agent of that name (checked either way)."""
    if service.agents.find(spec.name) is not None:
        service.agents.replace(spec)
    else:
        service.agents.create(spec)


@router.post("/create", response_model=None)
async def create(body: wire.CreateRequest, request: Request) -> Response:
    """Make ``model`` from ``from`` with ``system``, ``parameters`` and ``license`` (an agent; see the
    module's doc). Progress as NDJSON ``status`` lines ending with ``success``, or one object with
    ``stream: false``. Errors come before any line: 400 bad input, 404 unknown ``from``, 409 a name that
    is a stored model or route."""
    service: Service = request.app.state.service
    name = body.model or body.name
    if not name:
        raise RequestError("model is required", param="model")
    for field, what in _REFUSED.items():
        if getattr(body, field, None):
            raise RequestError(f"{field}: {what} is not supported by llmhost's /api/create", param=field)
    if body.files:
        return await _from_files(request, service, body, name)
    if not body.from_:
        raise RequestError("neither 'from' or 'files' was specified", param="from")
    check_scope(principal_of(request), "agents:write")  # the name becomes an agent
    base = catalog.known_name(service, body.from_)
    if base is None:
        raise ModelNotFoundError(body.from_)
    target = catalog.known_name(service, name) or name
    if service.agents.find(target) is None and (
        target in service.gateway.public_models() or service.gateway.is_local_model(target)
    ):
        raise ConflictError(
            f"'{target}' is a stored model or a route; create the new model under another name"
        )
    spec = agent_spec(service, body, target, base)
    await asyncio.to_thread(save_agent, service, spec)
    return _progress(body, [f"using {base}", *(["creating system layer"] if spec.system else [])])


def _progress(body: wire.CreateRequest, steps: list[str]) -> Response:
    """Ollama's progress lines for what was done, ``success`` last (one object with ``stream: false``)."""
    statuses = [{"status": s} for s in (*steps, "writing manifest", "success")]
    if body.stream is False:
        return JSONResponse(statuses[-1])
    lines = (json.dumps(s).encode() + b"\n" for s in statuses)
    return StreamingResponse(iter(lines), media_type="application/x-ndjson")


async def _from_files(request: Request, service: Service, body: wire.CreateRequest, name: str) -> Response:
    """``files``: one pushed GGUF registered as the stored model ``name``."""
    files = body.files or {}
    for filename in files:  # a name, as Go's fs.ValidPath takes it: no absolute path, no ".."
        parts = filename.split("/")
        if not filename or filename.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise RequestError(f"invalid file name {filename!r}", param="files")
    ggufs = [f for f in files if f.lower().endswith(".gguf")]
    if len(files) != 1 or len(ggufs) != 1:
        raise RequestError(
            "files must be one .gguf file (a safetensors folder: import it with `llmhost import DIR`)",
            param="files",
        )
    if body.from_ or body.system or body.parameters:
        raise RequestError(
            "a model from files takes no from, system or parameters: create it, then another model "
            "FROM it with them",
            param="files",
        )
    target = catalog.known_name(service, name) or name
    if service.agents.find(target) is not None or target in service.gateway.public_models():
        raise ConflictError(f"'{target}' is a made model or a route; give the file another name")
    (filename,) = ggufs
    uploads = await asyncio.to_thread(uploads_of, request)
    record = await asyncio.to_thread(uploads.register, files[filename], target, filename)
    return _progress(body, ["parsing GGUF", f"using existing layer {record.digest}"])


def uploads_of(request: Request) -> Uploads:
    uploads: Uploads | None = getattr(request.app.state, "ollama_uploads", None)
    if uploads is None:
        service: Service = request.app.state.service
        uploads = request.app.state.ollama_uploads = Uploads(service.store)
    return uploads


@router.head("/blobs/{digest}", response_model=None)
async def head_blob(digest: str, request: Request) -> Response:
    """200 when the server holds the file with ``digest`` (pushed, or a stored model's), else 404."""
    parse_digest(digest)
    uploads = await asyncio.to_thread(uploads_of, request)  # the first use makes the folder
    if await asyncio.to_thread(uploads.has, digest):
        return Response(status_code=200)
    raise NotFoundError(f'blob "{digest}" not found', param="digest")


@router.post("/blobs/{digest}", response_model=None)
async def push_blob(digest: str, request: Request) -> Response:
    """Store the body as the file with ``digest``: 201, or 200 when it is here already (the body is not
    read); a body whose SHA-256 differs is a 400 and leaves nothing behind. The gate streams this one
    body instead of reading it whole (a GGUF is gigabytes): it goes to disk as it comes."""
    parse_digest(digest)
    uploads = await asyncio.to_thread(uploads_of, request)
    if await asyncio.to_thread(uploads.has, digest):
        return Response(status_code=200)
    writer = await asyncio.to_thread(uploads.writer, digest)
    try:
        pending = bytearray()
        async for chunk in request.stream():
            pending += chunk
            if len(pending) >= _FLUSH_BYTES:
                await asyncio.to_thread(writer.write, bytes(pending))
                pending.clear()
        await asyncio.to_thread(writer.write, bytes(pending))
        await asyncio.to_thread(writer.finish)
    except OSError as exc:
        raise ModelError(f"cannot store the pushed file: {exc}") from exc
    except ClientDisconnect:  # the client went away midway: nothing is kept (a client's doing, not a 5xx)
        raise RequestError("the upload ended before its last byte", param="digest") from None
    finally:
        writer.abort()  # a kept file was moved away already
    return Response(status_code=201)
