"""Ollama's native API: ``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``,
``/api/tags``, ``/api/show``, ``/api/ps``, ``/api/pull``, ``/api/copy``, ``/api/delete``, ``/api/version``.

Every route parses the body (:mod:`.protocol`), translates it to core types (:mod:`.translate`), runs
the pipeline, and answers JSON or NDJSON; errors come out as ``{"error": "..."}`` with Ollama's status
codes (404 for an unknown model, 400 for bad input).

Both the streamed and the whole answers are read from :meth:`Pipeline.stream`, as Ollama's own server
does, so the durations Ollama reports (time to the first output, generation time) are measured for
both. As in Ollama, a chat without messages or a generate without a prompt loads the model (``done_reason:
"load"``), and with ``keep_alive: 0`` unloads it (``"unload"``); ``keep_alive``, when given, sets how
long the local model stays loaded after the request (``0``: unloaded once idle; negative: for good).

Names are matched as Ollama matches them: ``x`` and ``x:latest`` are one model, whichever of the two
is registered (:func:`.catalog.known_name`); answers repeat the name the client sent, as Ollama's do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from llmhost import __version__
from llmhost.core.types import EmbedRequest, InferenceRequest, Operation, OperationResult, RequestContext
from llmhost.doors.common import context_for, door_route, pipeline_of
from llmhost.doors.ollama import catalog, create, translate
from llmhost.doors.ollama import protocol as wire
from llmhost.doors.ollama.gotime import parse_keep_alive, rfc3339
from llmhost.errors import (
    ConflictError,
    LLMHostError,
    ModelNotFoundError,
    ProviderError,
    RequestError,
    classify,
)
from llmhost.models.pull import FetchError, PullProgress, PullSlots, pull_model
from llmhost.net import DestinationPolicy
from llmhost.security.auth import check_scope
from llmhost.security.keys import model_allowed
from llmhost.service import Service

__all__ = ["router"]

router = APIRouter(prefix="/api", route_class=door_route(translate.render_error))
log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
_DOOR = "ollama"
_EMBED_METRICS = ("total_duration", "load_duration", "prompt_eval_count")


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _headers(target: str | None) -> dict[str, str]:
    return {"X-LLMHost-Target": target or ""}


# ----- model residency (load, unload, keep_alive) ------------------------------------------------------
def _base_name(service: Service, name: str) -> str:
    """The model a made model (an agent, :mod:`.create`) answers on; any other name as it is."""
    agent = service.agents.find(name)
    return agent.model if agent is not None else name


def _local_models(service: Service, name: str) -> list[str]:
    """The local models behind ``name`` (a local model, a route's local targets, or those of the model a
    made model answers on); 404 when unknown."""
    route = service.gateway.resolve(_base_name(service, name))
    return [t.settings.model for t in route.targets if t.settings.provider == "local"]


def _set_keep_alive(service: Service, model: str, seconds: float) -> None:
    loaded = service.models.get_loaded(model)
    if loaded is not None:
        loaded.keep_alive = seconds  # the manager's reaper reads it: 0 unloads once idle


async def _expire(service: Service, model: str) -> None:
    """Unload ``model`` now, or as soon as the requests it is serving are done."""
    try:
        await asyncio.to_thread(service.models.unload, model)
    except ConflictError:
        _set_keep_alive(service, model, 0.0)


async def _load(service: Service, name: str, keep_alive: float | None) -> None:
    models = _local_models(service, name)
    if not models:
        return  # a route to other providers: nothing to load here
    await asyncio.to_thread(service.models.load, models[0])
    if keep_alive is not None:
        await _keep(service, models[0], keep_alive)


async def _keep(service: Service, model: str, keep_alive: float) -> None:
    if keep_alive == 0:
        await _expire(service, model)
    else:
        _set_keep_alive(service, model, keep_alive)


async def _after(service: Service, target: str | None, keep_alive: float | None) -> None:
    """Apply a request's ``keep_alive`` to the local model that answered it."""
    provider, _, model = (target or "").partition("/")
    if keep_alive is not None and provider == "local" and model:
        await _keep(service, model, keep_alive)


def _load_ns(service: Service, target: str | None, clock: translate.Clock) -> int:
    """How long the request waited for its model to load (0 when it was loaded already)."""
    provider, _, model = (target or "").partition("/")
    loaded = service.models.get_loaded(model) if provider == "local" and model else None
    if loaded is None or loaded.loaded_at < clock.wall_started:
        return 0
    return int(loaded.load_seconds * 1e9)


async def _residency(request: Request, name: str, keep_alive: float | None, *, unload: bool) -> None:
    """An empty chat, generate or embed: load ``name`` (``unload``: unload it), as an operation through
    the pipeline, so the key's scope and model rules, its limits and the audit apply as to a prompt."""
    service = _service(request)

    async def call(op: Operation) -> OperationResult:
        if unload:
            for model in _local_models(service, name):
                await _expire(service, model)
        else:
            await _load(service, name, keep_alive)
        return OperationResult(output="{}")

    arguments = json.dumps({"model": name, "keep_alive": keep_alive})
    op = Operation("ollama.unload" if unload else "ollama.load", "inference", arguments, model=name)
    await pipeline_of(request).operate(context_for(request, _DOOR), op, call)


async def _residency_only(
    request: Request, name: str, keep_alive: float | None, *, chat: bool, asked: str
) -> dict[str, Any]:
    """An empty chat or generate: load the model, or unload it with ``keep_alive: 0``."""
    unload = keep_alive == 0
    await _residency(request, name, keep_alive, unload=unload)
    body: dict[str, Any] = {"model": asked, "created_at": rfc3339()}
    body.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
    return {**body, "done": True, "done_reason": "unload" if unload else "load"}


# ----- generation --------------------------------------------------------------------------------------
async def _answer(
    request: Request, req: InferenceRequest, *, stream: bool, chat: bool, model: str, keep_alive: float | None
) -> Response:
    service = _service(request)
    pipeline, ctx = pipeline_of(request), context_for(request, _DOOR)
    clock = translate.Clock()
    # Errors before the first output still get a proper status: the stream has output when this returns.
    deltas = await pipeline.stream(ctx, req)
    clock.first_output()
    clock.load_ns = _load_ns(service, ctx.target, clock)
    if not stream:
        ctx.stream = False  # read as a stream here, but the client gets one answer (the usage row says so)
        result = await translate.collect(deltas, model, logprobs=req.sampling.logprobs is not None)
        await _after(service, ctx.target, keep_alive)
        make = translate.chat_response if chat else translate.generate_response
        return JSONResponse(make(result, model, clock), headers=_headers(ctx.target))
    encode = translate.ndjson_chat if chat else translate.ndjson_generate
    lines = _then_keep_alive(encode(deltas, model, clock), service, ctx, keep_alive)
    return StreamingResponse(lines, media_type=NDJSON, headers=_headers(ctx.target))


async def _then_keep_alive(
    lines: AsyncIterator[bytes], service: Service, ctx: RequestContext, keep_alive: float | None
) -> AsyncIterator[bytes]:
    async for line in lines:
        yield line
    await _after(service, ctx.target, keep_alive)


def _check_generating(
    service: Service, body: wire.ChatRequest | wire.GenerateRequest, *, empty: bool
) -> tuple[str, float | None]:
    """What a chat and a generate check first, in Ollama's order: the name (as llmhost has it), the
    ``keep_alive``, then ``think`` for a known model unless the request only unloads it (an unknown
    one is the pipeline's 404)."""
    asked = translate.require_model(body.model)
    keep_alive = parse_keep_alive(body.keep_alive)
    known = catalog.known_name(service, asked)
    if known is not None and not (empty and keep_alive == 0):
        translate.refuse_thinking(asked, body.think)
    return known or asked, keep_alive


@router.post("/chat", response_model=None)
async def chat(body: wire.ChatRequest, request: Request) -> Response:
    name, keep_alive = _check_generating(_service(request), body, empty=not body.messages)
    if not body.messages:
        answer = await _residency_only(request, name, keep_alive, chat=True, asked=body.model)
        return JSONResponse(answer)
    req = translate.chat_request(body.model_copy(update={"model": name}))
    stream = body.stream is not False
    return await _answer(request, req, stream=stream, chat=True, model=body.model, keep_alive=keep_alive)


@router.post("/generate", response_model=None)
async def generate(body: wire.GenerateRequest, request: Request) -> Response:
    name, keep_alive = _check_generating(_service(request), body, empty=not body.prompt)
    if not body.prompt:
        answer = await _residency_only(request, name, keep_alive, chat=False, asked=body.model)
        return JSONResponse(answer)
    req = translate.generate_request(body.model_copy(update={"model": name}))
    stream = body.stream is not False
    return await _answer(request, req, stream=stream, chat=False, model=body.model, keep_alive=keep_alive)


# ----- embeddings --------------------------------------------------------------------------------------
@router.post("/embed", response_model=None)
async def embed(body: wire.EmbedRequest, request: Request) -> JSONResponse:
    """Ollama's ``truncate`` (true unless false) cuts an input longer than the model's context to fit;
    ``truncate: false`` makes it a 400."""
    service = _service(request)
    model = translate.require_model(body.model or service.settings.embeddings.model)
    name = _base_name(service, catalog.known_name(service, model) or model)
    keep_alive = parse_keep_alive(body.keep_alive)
    inputs = translate.embed_inputs(body.input)
    if body.dimensions is not None and body.dimensions < 0:
        raise RequestError("dimensions must be a positive number", param="dimensions")
    if not inputs:
        await _residency(request, name, keep_alive, unload=False)
        return JSONResponse({"model": model, "embeddings": []})
    clock = translate.Clock()
    ctx = context_for(request, _DOOR)
    dimensions = body.dimensions or None
    req = EmbedRequest(name, tuple(inputs), dimensions=dimensions, truncate=body.truncate is not False)
    result = await pipeline_of(request).embed(ctx, req)
    clock.first_output()
    clock.load_ns = _load_ns(service, result.target, clock)
    await _after(service, result.target, keep_alive)
    metrics = clock.metrics(result.usage)
    response: dict[str, Any] = {
        "model": model,
        "embeddings": translate.fit_dimensions(result.vectors, dimensions),
    }
    response.update({k: v for k, v in metrics.items() if k in _EMBED_METRICS})
    return JSONResponse(response, headers=_headers(result.target))


@router.post("/embeddings", response_model=None)
async def embeddings(body: wire.EmbeddingsRequest, request: Request) -> JSONResponse:
    """The older single-prompt embedding route."""
    service = _service(request)
    model = translate.require_model(body.model or service.settings.embeddings.model)
    name = _base_name(service, catalog.known_name(service, model) or model)
    keep_alive = parse_keep_alive(body.keep_alive)
    if not body.prompt:
        await _residency(request, name, keep_alive, unload=False)
        return JSONResponse({"embedding": []})
    ctx = context_for(request, _DOOR)
    result = await pipeline_of(request).embed(ctx, EmbedRequest(name, (body.prompt,)))
    await _after(service, result.target, keep_alive)
    return JSONResponse({"embedding": result.vectors[0]}, headers=_headers(result.target))


# ----- models ------------------------------------------------------------------------------------------
@router.head("/tags", include_in_schema=False)
@router.get("/tags")
async def tags(request: Request) -> dict[str, Any]:
    """The models the caller's key may use (a key limited to some sees only those)."""
    globs = create.principal_of(request).models
    return {"models": [m for m in catalog.tags(_service(request)) if model_allowed(globs, m["name"])]}


@router.post("/show")
async def show(body: wire.ShowRequest, request: Request) -> dict[str, Any]:
    service = _service(request)
    asked = body.model or body.name
    if not asked:
        raise RequestError("model is required", param="model")
    name = catalog.known_name(service, asked) or asked
    if not model_allowed(create.principal_of(request).models, name):
        raise ModelNotFoundError(name)  # as if it did not exist, as the model lists have it
    shown = await asyncio.to_thread(catalog.show_model, service, name)
    if shown is not None:
        return shown
    agent = service.agents.find(name)
    if agent is not None:
        return catalog.show_agent(service, agent)
    if name in service.gateway.public_models():
        return catalog.show_route(service, name)
    raise ModelNotFoundError(name)


@router.get("/ps")
async def ps(request: Request) -> dict[str, Any]:
    """The loaded models, the longest to stay first (as Ollama lists them)."""
    loaded = sorted(_service(request).models.loaded(), key=catalog.expires_in, reverse=True)
    return {"models": [catalog.describe_loaded(m) for m in loaded]}


@router.head("/version", include_in_schema=False)
@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.post("/copy", response_model=None)
async def copy(body: wire.CopyRequest, request: Request) -> Response:
    """Register ``destination`` as another name for ``source``'s file (200, empty, as Ollama answers).

    An existing ``destination`` is re-pointed: that is the hot-swap — requests already running finish on
    the old file, new ones go to the new one. The old file is deleted once no name uses it, but never while
    it is loaded. Unknown ``source``: 404; invalid ``destination``: 400.
    """
    service = _service(request)
    source = catalog.known_name(service, body.source) or body.source
    destination = catalog.known_name(service, body.destination) or body.destination
    if service.agents.find(destination) is not None and service.agents.find(source) is None:
        raise ConflictError(f"'{destination}' is a made model (/api/create); delete it first")
    agent = service.agents.find(source)
    if agent is not None:  # a model /api/create made: the copy is another agent with its settings
        check_scope(create.principal_of(request), "agents:write")
        await asyncio.to_thread(create.save_agent, service, agent.model_copy(update={"name": destination}))
        return Response(status_code=200)
    await asyncio.to_thread(service.store.copy, source, destination, in_use=service.models.is_in_use)
    return Response(status_code=200)


@router.delete("/delete", response_model=None)
async def delete(request: Request) -> Response:
    """Remove a model name (200, empty); 404 when there is none, 409 while its file is loaded."""
    body = await _delete_body(request)
    service = _service(request)
    asked = body.model or body.name
    if not asked:
        raise RequestError("model is required", param="model")
    name = catalog.known_name(service, asked) or asked
    if service.agents.find(name) is not None:  # a model /api/create made
        check_scope(create.principal_of(request), "agents:write")
        await asyncio.to_thread(service.agents.delete, name)
        return Response(status_code=200)
    record = service.get_model(name)
    if service.models.is_in_use(record):
        raise ConflictError(f"model '{name}' is loaded; unload it first (POST /api/unload)")
    await asyncio.to_thread(service.store.remove, name)
    return Response(status_code=200)


async def _delete_body(request: Request) -> wire.DeleteRequest:
    """The body read as JSON whatever its content type: Ollama's own docs send it with ``curl -X DELETE
    -d``, which declares a form (the gate makes POST bodies JSON, not DELETE ones)."""
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise RequestError("We could not parse the JSON body of your request.", code="invalid_json") from None
    try:
        return wire.DeleteRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


@router.post("/pull", response_model=None)
async def pull(body: wire.PullRequest, request: Request) -> Response:
    """Download, verify and register a model; progress as NDJSON lines (``status``, ``digest``,
    ``total``, ``completed``), ``{"status": "success"}`` last. ``model`` (or ``name``, as Ollama's Go
    CLI sends it) is the spec; ``register_as`` the name to register it under (default: derived). A pull
    that fails before its first progress line (a bad spec or name, a refused address, 429 over
    ``max_concurrent_pulls``) is a plain error status; later failures are an error line.

    The pull may only reach public addresses and ``pull_allow_hosts``; it runs on the pull threads
    (:class:`PullSlots`), not on the default executor generations use; a failed fetch reads "could not
    fetch URL" (502) here, with the reason in the server's log only (see :func:`_for_client`)."""
    service = _service(request)
    spec = translate.pull_spec(body)
    slots = _pull_slots(request, service)
    destinations = DestinationPolicy(service.settings.pull_allow_hosts)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[PullProgress | BaseException | None] = asyncio.Queue()
    client_gone = threading.Event()

    def run() -> None:
        def progress(event: PullProgress) -> None:
            if client_gone.is_set():  # stop; the partial file stays for the next pull to resume
                raise ConnectionAbortedError("the client disconnected")
            loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            pull_model(
                service.store,
                spec,
                name=body.register_as,
                sha256=body.sha256,
                progress=progress,
                destinations=destinations,
            )
            loop.call_soon_threadsafe(events.put_nowait, None)
        except BaseException as exc:
            loop.call_soon_threadsafe(events.put_nowait, _for_client(exc))

    task = asyncio.wrap_future(slots.submit(run))  # TooManyPullsError (429) when the cap is reached
    first = await events.get()
    if isinstance(first, BaseException):
        await task
        if isinstance(first, LLMHostError):
            raise first
        raise RuntimeError("pull failed") from first

    if body.stream is not False:
        return StreamingResponse(_pull_lines(first, events, task, client_gone), media_type=NDJSON)
    last: PullProgress | None = None
    item: PullProgress | BaseException | None = first
    while item is not None:
        if isinstance(item, BaseException):
            await task
            return translate.render_error(classify(item))
        last = item
        item = await events.get()
    await task
    return JSONResponse({"status": "success", **({"digest": last.digest} if last and last.digest else {})})


def _pull_slots(request: Request, service: Service) -> PullSlots:
    """The app's pull threads, made on the first pull (the event loop runs this, so no race)."""
    slots: PullSlots | None = getattr(request.app.state, "pull_slots", None)
    if slots is None:
        slots = PullSlots(service.settings.max_concurrent_pulls)
        request.app.state.pull_slots = slots
    return slots


def _for_client(exc: BaseException) -> BaseException:
    """What the API client may learn of a failed pull: a failed fetch becomes "could not fetch URL" (502)
    and its reason (refused, TLS, timeout, an HTTP status, a private address) goes to the log only."""
    if isinstance(exc, FetchError):
        log.warning("pull failed: %s", exc)
        return ProviderError(exc.public_message)
    return exc


async def _pull_lines(
    first: PullProgress | None,
    events: asyncio.Queue[PullProgress | BaseException | None],
    task: asyncio.Future[None],
    client_gone: threading.Event,
) -> AsyncIterator[bytes]:
    item: PullProgress | BaseException | None = first
    try:
        while item is not None:
            if isinstance(item, BaseException):
                message = str(item) if isinstance(item, LLMHostError) else "pull failed"
                yield (json.dumps({"error": message}) + "\n").encode()
                return
            yield (item.to_json() + "\n").encode()
            item = await events.get()
        await task
    finally:
        client_gone.set()  # no-op once the pull has finished
