"""Model tools (``list_models``, ``get_model_info``, ``pull_model``, ``load_model``, ``unload_model``,
``switch_model``), each model's card as a resource (``llmhost://models/{name}``), and prompts for
common tasks. Reading needs ``models:read``, changing ``models:write``."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from pydantic import BaseModel, Field

from llmhost.doors.mcp.gate import Registrar, current
from llmhost.doors.ollama.catalog import describe_loaded, human_number
from llmhost.errors import ModelNotFoundError, ProviderError
from llmhost.models.manager import LoadedModel
from llmhost.models.pull import FetchError, PullProgress, PullSlots, pull_model
from llmhost.models.registry import ModelRecord
from llmhost.net import DestinationPolicy
from llmhost.security.keys import model_allowed
from llmhost.service import Service

__all__ = ["register"]

log = logging.getLogger(__name__)

ModelName = Annotated[str, Field(min_length=1, max_length=256, description="A model name (list_models).")]


class Loaded(BaseModel):
    context_length: int = Field(description="Tokens of context each slot has.")
    slots: int = Field(description="Sequences decoded together.")
    slots_busy: int
    waiting: int = Field(description="Requests queued for a slot.")
    memory_bytes: int
    on_gpu: bool
    idle_seconds: float
    keep_alive: float = Field(description="Seconds it stays loaded once idle (-1: for good).")


class ModelInfo(BaseModel):
    name: str
    kind: str = Field(description='"local" (a GGUF file here) or "route" (the gateway\'s name).')
    digest: str = ""
    architecture: str = ""
    parameters: str = Field("", description="Parameter count, e.g. 270M.")
    quantization: str = ""
    size_bytes: int = 0
    trained_context: int | None = None
    has_chat_template: bool = False
    source: str = ""
    loaded: Loaded | None = Field(None, description="Set while the model is resident.")
    targets: list[str] = Field(default_factory=list, description="A route's provider/model targets.")


class ModelList(BaseModel):
    models: list[ModelInfo]
    default_model: str = Field(description='The model used when a call names none ("" if none).')


class LoadResult(BaseModel):
    model: str
    status: str = Field(description="loaded, unloaded or not loaded.")
    loaded: Loaded | None = None


class PullResult(BaseModel):
    model: str = Field(description="The name the model was registered under.")
    digest: str
    size_bytes: int


class SwitchResult(BaseModel):
    alias: str
    model: str = Field(description="The model the alias now names.")
    previous: str | None = Field(None, description="The digest the alias named before, if any.")
    digest: str


def _loaded(m: LoadedModel) -> Loaded:
    d = describe_loaded(m)
    return Loaded(
        context_length=d["context_length"],
        slots=d["slots"],
        slots_busy=d["slots_busy"],
        waiting=d["waiting"],
        memory_bytes=m.memory_bytes,
        on_gpu=m.on_gpu,
        idle_seconds=d["idle_seconds"],
        keep_alive=m.keep_alive,
    )


def _local_info(service: Service, record: ModelRecord) -> ModelInfo:
    resident = service.models.get_loaded(record.name)
    return ModelInfo(
        name=record.name,
        kind="local",
        digest=record.digest,
        architecture=record.architecture,
        parameters=human_number(record.parameter_count),
        quantization=record.quantization,
        size_bytes=record.size_bytes,
        trained_context=record.context_length,
        has_chat_template=bool(record.chat_template),
        source=record.source,
        loaded=_loaded(resident) if resident is not None else None,
    )


def _route_info(service: Service, name: str) -> ModelInfo:
    route = service.gateway.routes[name]
    targets = [f"{t.settings.provider}/{t.settings.model}" for t in route.targets]
    return ModelInfo(name=name, kind="route", targets=targets)


def model_info(service: Service, name: str) -> ModelInfo:
    if name in service.gateway.routes:
        return _route_info(service, name)
    record = service.registry.find(name)
    if record is None:
        raise ModelNotFoundError(name)
    return _local_info(service, record)


def model_list(service: Service) -> ModelList:
    routes = set(service.gateway.public_models())
    models = [_local_info(service, r) for r in service.list_models() if r.name not in routes]
    models += [_route_info(service, name) for name in sorted(routes)]
    return ModelList(models=models, default_model=service.settings.default_model)


def register(reg: Registrar, service: Service) -> None:
    slots = PullSlots(service.settings.max_concurrent_pulls)

    async def list_models() -> ModelList:
        """Every model this server can answer for: local GGUF models (with their load state) and the
        gateway's routes."""
        listed = await asyncio.to_thread(model_list, service)
        # A key limited to some models sees only those, as /v1/models and /api/tags list them.
        globs = current().principal.models
        kept = [m for m in listed.models if model_allowed(globs, m.name)]
        return listed.model_copy(update={"models": kept})

    async def get_model_info(model: ModelName) -> ModelInfo:
        """One model's details: architecture, size, quantization, context, and its load state."""
        return await asyncio.to_thread(model_info, service, model)

    async def load_model(model: ModelName) -> LoadResult:
        """Make a model resident (evicting idle ones if memory is short); returns its slots and memory."""
        loaded = await asyncio.to_thread(service.models.load, model)
        return LoadResult(model=model, status="loaded", loaded=_loaded(loaded))

    async def unload_model(
        model: ModelName,
        force: Annotated[bool, Field(description="Unload even while it serves requests.")] = False,
    ) -> LoadResult:
        """Free a model's memory. Refused while it serves requests, unless force."""
        service.get_model(model)  # unknown names: not found
        unloaded = await asyncio.to_thread(service.models.unload, model, force=force)
        return LoadResult(model=model, status="unloaded" if unloaded else "not loaded")

    async def switch_model(
        alias: Annotated[str, Field(min_length=1, max_length=256, description="The name clients use.")],
        model: ModelName,
    ) -> SwitchResult:
        """Point ``alias`` at ``model`` (hot swap): ``model`` is loaded first, then the alias moves in one
        step; requests already running finish on the old model, new ones go to the new one."""
        previous = service.registry.find(alias)
        await asyncio.to_thread(service.models.load, model)
        record = await asyncio.to_thread(service.store.copy, model, alias, in_use=service.models.is_in_use)
        return SwitchResult(
            alias=alias, model=model, previous=previous.digest if previous else None, digest=record.digest
        )

    async def pull_model(
        spec: Annotated[
            str,
            Field(
                min_length=1,
                max_length=2048,
                description="hf://owner/repo/file.gguf, owner/repo:QUANT, or an https:// URL (with sha256).",
            ),
        ],
        ctx: Context,
        name: Annotated[str | None, Field(description="Register under this name.")] = None,
        sha256: Annotated[str | None, Field(description="Expected SHA-256 (required for URLs).")] = None,
    ) -> PullResult:
        """Download, verify and register a GGUF model; progress is reported as it downloads. Only public
        addresses and the configured pull_allow_hosts are reachable."""
        record = await _pull(service, slots, ctx, spec, name, sha256)
        return PullResult(model=record.name, digest=record.digest, size_bytes=record.size_bytes)

    for fn, title in (
        (list_models, "List models"),
        (get_model_info, "Describe a model"),
    ):
        reg.tool(fn, scope="models:read", title=title, model_arg="model", idempotent=True)
    reg.tool(load_model, scope="models:write", title="Load a model", model_arg="model", read_only=False)
    reg.tool(unload_model, scope="models:write", title="Unload a model", model_arg="model", read_only=False)
    reg.tool(
        switch_model, scope="models:write", title="Hot-swap an alias", model_arg="model", read_only=False
    )
    reg.tool(pull_model, scope="models:write", title="Pull a model", read_only=False, open_world=True)
    _resources_and_prompts(reg, service)


async def _pull(
    service: Service, slots: PullSlots, ctx: Context, spec: str, name: str | None, sha256: str | None
) -> ModelRecord:
    """The pull on a pull thread; its progress events relayed, in order, as MCP progress
    notifications (which must grow with each one, so repeats and restarts at 0 are dropped). A
    cancelled call (``notifications/cancelled``, or the client gone) stops the pull at its next progress
    event, before it registers anything; the partial file stays for a later pull to resume."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[PullProgress | None] = asyncio.Queue()  # None: the pull has ended
    pulled: list[ModelRecord] = []
    cancelled = threading.Event()

    def progress(event: PullProgress) -> None:
        if cancelled.is_set():
            raise ConnectionAbortedError("the MCP call was cancelled")
        loop.call_soon_threadsafe(events.put_nowait, event)

    def job() -> None:
        try:
            pulled.append(
                pull_model(
                    service.store,
                    spec,
                    name=name,
                    sha256=sha256,
                    progress=progress,
                    destinations=DestinationPolicy(service.settings.pull_allow_hosts),
                )
            )
        finally:
            loop.call_soon_threadsafe(events.put_nowait, None)

    task = asyncio.wrap_future(slots.submit(job))
    reported = -1
    try:
        while (event := await events.get()) is not None:
            done = event.completed or 0
            if event.total and done > reported:
                reported = done
                await ctx.report_progress(done, event.total, event.status)
    except asyncio.CancelledError:
        cancelled.set()
        task.add_done_callback(lambda f: f.cancelled() or f.exception())  # ends on its own; nobody waits
        raise
    try:
        await task
    except FetchError as exc:
        log.warning("MCP pull failed: %s", exc)
        raise ProviderError(exc.public_message) from None
    return pulled[0]


def _resources_and_prompts(reg: Registrar, service: Service) -> None:
    server = reg.server

    @server.resource(
        "llmhost://models/{name}",
        name="model-card",
        title="Model card",
        description="A model's details as JSON: architecture, size, quantization, context, load state.",
        mime_type="application/json",
    )
    async def model_card(name: str) -> str:
        try:
            info = await asyncio.to_thread(model_info, service, name)
        except ModelNotFoundError as exc:
            raise ResourceNotFoundError(str(exc)) from None
        return info.model_dump_json(indent=2)

    @server.prompt(name="summarize", title="Summarize a text")
    def summarize(text: str, words: str = "100") -> str:
        """Ask a model for a short summary of a text."""
        return f"Summarize the following text in at most {words} words.\n\n{text}"

    @server.prompt(name="explain_code", title="Explain code")
    def explain_code(code: str, language: str = "") -> str:
        """Ask a model to explain what a piece of code does."""
        fence = f"```{language}" if language else "```"
        return f"Explain what this code does, step by step, then note any bugs.\n\n{fence}\n{code}\n```"

    @server.prompt(name="compare_models", title="Compare models on one question")
    def compare_models(question: str) -> str:
        """A plan for asking the same question of several models with the chat tool."""
        models = json.dumps([r.name for r in service.list_models()])
        return (
            f"Call list_models, then ask each of these models the question with the chat tool: {models}. "
            f"Compare their answers for accuracy and brevity.\n\nQuestion: {question}"
        )
