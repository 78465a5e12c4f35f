"""llmhost as a Ray Serve application: model replicas behind llmhost's own HTTP app as the ingress.

    HTTP -> Serve's proxy -> Ingress (one replica: create_app -- gate, doors, pipeline, gateway)
                               gateway's "local" provider = ReplicaProvider (llmhost/scale/provider.py)
                                 -> DeploymentHandle, multiplexed model id = the model's name
                             -> ModelReplica x N (each its own process, engine and resident models:
                                ReplicaEngine, llmhost/scale/replica.py), autoscaled on queue depth

Routing to replicas that already hold the model is Serve's model multiplexing: one deployment serves
every model in the store, each replica keeps up to ``models_per_replica`` of them loaded, and Serve
sends a request to a replica that holds its model (one with room loads it). That fits llmhost's model
manager, which loads any registered model on demand, where one deployment per model would need
redeploying for every model pulled. The price: all models share one autoscaling policy.

The ingress stays one replica: it owns the stores that are files on this machine (the hash-chained
audit log, SQLite usage and keys), which one process must write. Replicas need the same model store:
on a cluster of several machines, ``data_dir`` (or ``models_dir``) must be a shared path.

Run it with ``llmhost serve --ray`` (:func:`serve_on_ray`), or with Serve's own CLI and
``deploy/ray/serve_config.yaml`` (import path ``llmhost.scale.ray_serve:app``, the builder below).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from fastapi import FastAPI
from pydantic import BaseModel, Field, ValidationError
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle

from llmhost.config import RaySettings, Settings, default_config_path, load_settings
from llmhost.core.types import Embeddings, EmbedRequest, InferenceRequest, Result
from llmhost.doors.http.app import create_app
from llmhost.errors import ConfigError, LLMHostError
from llmhost.models.default import DEFAULT_MODEL_NAME, ensure_default_model
from llmhost.models.registry import Registry
from llmhost.models.store import ModelStore
from llmhost.scale.provider import ReplicaHeaderMiddleware, ReplicaProvider
from llmhost.scale.replica import Batch, Failure, HeldModel, ReplicaEngine, ReplicaTag, replica_settings
from llmhost.service import Service

__all__ = [
    "APP_NAME",
    "INGRESS",
    "MODEL_REPLICAS",
    "AppArgs",
    "Ingress",
    "ModelReplica",
    "SettingsSource",
    "app",
    "build_app",
    "serve_on_ray",
]

log = logging.getLogger(__name__)

APP_NAME = "llmhost"
# The ingress takes every request the proxy hands it, as uvicorn would; llmhost's own stages (limits,
# budgets) and the replicas' queue bound refuse what is too much.
_INGRESS_MAX_ONGOING = 10_000


@dataclass(frozen=True)
class SettingsSource:
    """Where every process of the application reads its settings: the config file (resolved once, by
    the process that deploys) and the command line's overrides. Each replica builds its own
    :class:`Settings` from these, so no secret travels through Ray's object store."""

    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def resolve(cls, config: Path | str | None, **overrides: Any) -> SettingsSource:
        """The file ``load_settings`` would read (the argument, ``LLMHOST_CONFIG``, the default path),
        made absolute; ``None`` overrides are dropped and paths become text."""
        if config is None:
            env = os.environ.get("LLMHOST_CONFIG")
            config = env or (default_config_path() if default_config_path().is_file() else None)
        kept = {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items() if v is not None}
        return cls(str(Path(config).resolve()) if config is not None else None, kept)

    def load(self) -> Settings:
        return load_settings(self.config, **self.overrides)


def ray_settings_of(settings: Settings, **overrides: Any) -> RaySettings:
    """The ``[ray]`` table of ``settings``, with the command line's overrides (``None``: unset)."""
    base = settings.ray
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return RaySettings.model_validate({**base.model_dump(), **given})
    except ValidationError as exc:
        problems = "; ".join(error["msg"] for error in exc.errors())
        raise ConfigError(f"invalid Ray settings: {problems}") from exc


# ----- the deployments -----------------------------------------------------------------------------------
class ModelReplica:
    """One model replica: its own process, engine and resident models (see :class:`ReplicaEngine`)."""

    async def __init__(self, source: SettingsSource, ray_settings: RaySettings) -> None:  # type: ignore[misc]
        settings = source.load()
        context = serve.get_replica_context()
        actor = ray.get_runtime_context().get_actor_name() or ""
        tag = ReplicaTag(context.replica_id.unique_id, actor, os.getpid())
        engine = self.engine = ReplicaEngine(
            replica_settings(settings, ray_settings), tag, stream_interval=ray_settings.stream_interval
        )

        async def load(name: str) -> HeldModel:
            return await engine.load(name)

        # Wired here, not as a decorated method: the number of models comes from the settings.
        self._hold = serve.multiplexed(max_num_models_per_replica=ray_settings.models_per_replica)(load)
        if settings.default_model:
            await self._hold(settings.default_model)  # loaded before Serve counts the replica as up

    # Each call holds its model first (Serve's multiplexing: loaded here if this replica lacks it), and
    # returns an llmhost error as a Failure (see there): the ingress raises it again.
    async def answer(self, request: InferenceRequest) -> tuple[ReplicaTag, Result] | Failure:
        try:
            await self._hold(request.model)
            return await self.engine.answer(request)
        except LLMHostError as exc:
            return Failure.of(exc)

    async def stream(self, request: InferenceRequest) -> AsyncIterator[ReplicaTag | Batch | Failure]:
        try:
            await self._hold(request.model)
            async for item in self.engine.stream(request):
                yield item
        except LLMHostError as exc:
            yield Failure.of(exc)

    async def resume(
        self, request: InferenceRequest, produced: str, finished: bool
    ) -> AsyncIterator[ReplicaTag | Batch | Failure]:
        try:
            await self._hold(request.model)
            async for item in self.engine.resume(request, produced, finished):
                yield item
        except LLMHostError as exc:
            yield Failure.of(exc)

    async def embed(self, request: EmbedRequest) -> tuple[ReplicaTag, Embeddings] | Failure:
        try:
            await self._hold(request.model)
            return await self.engine.embed(request)
        except LLMHostError as exc:
            return Failure.of(exc)

    async def count_tokens(self, request: InferenceRequest) -> int | Failure:
        try:
            await self._hold(request.model)
            return await self.engine.count_tokens(request)
        except LLMHostError as exc:
            return Failure.of(exc)

    async def list_models(self) -> list[str]:
        return self.engine.list_models()

    def __del__(self) -> None:
        engine: ReplicaEngine | None = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


class Ingress:
    """llmhost's HTTP app (doors, gate, pipeline, gateway) whose local models are the replicas."""

    def __init__(
        self, replicas: DeploymentHandle[Any], source: SettingsSource, ray_settings: RaySettings
    ) -> None:
        self.settings = source.load()
        provider = ReplicaProvider(replicas, retries=ray_settings.retries)
        self.service = Service(self.settings, local_provider=provider)

    def __serve_build_asgi_app__(self) -> FastAPI:
        # preload=False: the models load in the replicas; this process loads none.
        application = create_app(self.settings, self.service, preload=False)
        application.add_middleware(ReplicaHeaderMiddleware)
        return application

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


# Serve's deployments of the two classes (an ingress built at start: ``__serve_build_asgi_app__``).
MODEL_REPLICAS: Deployment = serve.deployment(name="ModelReplica")(ModelReplica)
INGRESS: Deployment = serve.deployment(name="Ingress")(serve.ingress()(Ingress))


# ----- building the application ------------------------------------------------------------------------
def prepare_models(settings: Settings) -> None:
    """Import the embedded default model before the replicas start, so they never race to import it."""
    if settings.default_model != DEFAULT_MODEL_NAME:
        return
    registry = Registry(settings.database_for("llmhost.db"))
    try:
        ensure_default_model(ModelStore(settings.resolved_models_dir, registry), registry, DEFAULT_MODEL_NAME)
    finally:
        registry.close()


def replica_options(settings: Settings, ray_settings: RaySettings) -> dict[str, Any]:
    """The model replicas' Serve options: replica count or autoscaling on queue depth, placement, and
    how many requests each replica takes (the rest wait at the ingress for the first with room)."""
    slots = settings.engine.n_parallel
    max_replicas = ray_settings.max_replicas or ray_settings.replicas
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": ray_settings.replica_cpus, "num_gpus": ray_settings.replica_gpus},
        "max_ongoing_requests": ray_settings.max_ongoing or slots,
        # As many waiting requests as the replicas' engine queues would hold; more get 429.
        "max_queued_requests": max(1, settings.engine.max_queue * max_replicas),
        # A replica Serve stops (shutdown, downscaling) first lets its requests finish, as a drain does.
        "graceful_shutdown_timeout_s": settings.drain_seconds,
    }
    if ray_settings.autoscales:
        options["autoscaling_config"] = {
            "min_replicas": ray_settings.replicas,
            "initial_replicas": ray_settings.replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": ray_settings.target_queue or float(slots),
        }
    else:
        options["num_replicas"] = ray_settings.replicas
    return options


def build_app(source: SettingsSource, ray_settings: RaySettings | None = None) -> Application:
    """The application: the ingress bound to the model replicas' deployment."""
    settings = source.load()
    ray_settings = ray_settings or ray_settings_of(settings)
    prepare_models(settings)
    replicas = MODEL_REPLICAS.options(**replica_options(settings, ray_settings)).bind(source, ray_settings)
    ingress = INGRESS.options(
        num_replicas=1,
        max_ongoing_requests=_INGRESS_MAX_ONGOING,
        ray_actor_options={"num_cpus": 0},
        graceful_shutdown_timeout_s=settings.drain_seconds,
    )
    return ingress.bind(replicas, source, ray_settings)


class AppArgs(BaseModel):
    """``args`` of ``deploy/ray/serve_config.yaml``: the llmhost config file, and settings to override."""

    config: str | None = Field(
        None, description="llmhost's TOML file; unset: LLMHOST_CONFIG, else the default path."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Settings over the file's, e.g. data_dir."
    )


def app(args: dict[str, Any]) -> Application:
    """Serve's application builder (``import_path: llmhost.scale.ray_serve:app``); ``args`` as
    :class:`AppArgs` (validated here: Serve reads a builder's annotation only when it is a class, and
    this module's annotations are strings)."""
    try:
        parsed = AppArgs.model_validate(args)
    except ValidationError as exc:
        raise ConfigError(f"invalid args for llmhost's Serve application: {exc}") from exc
    return build_app(SettingsSource.resolve(parsed.config, **parsed.overrides))


# ----- llmhost serve --ray -----------------------------------------------------------------------------
def serve_on_ray(
    source: SettingsSource, ray_settings: RaySettings, *, on_ready: Callable[[str], None] | None = None
) -> None:
    """Start a local Ray cluster (or join ``[ray] address`` / ``RAY_ADDRESS``), deploy the application
    with Serve's HTTP proxy on the configured host and port, and serve until SIGINT or SIGTERM. A cluster
    started here stops with it; on a joined one only the application is deleted."""
    settings = source.load()
    address = ray_settings.address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address or "local")
    # ray.init sets a SIGTERM handler of its own (sys.exit(15)); ours from here on, so that a SIGTERM at
    # any time, while the application deploys too, shuts it down in order and the server exits 0.
    stop = _StopSignal()
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_app(source, ray_settings), name=APP_NAME, route_prefix="/")
        if on_ready is not None and not stop.is_set():
            on_ready(f"http://{settings.host}:{settings.port}")
        stop.wait()
    finally:
        if address:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        stop.restore()


class _StopSignal:
    """SIGTERM noted as an event from the moment this is made; :meth:`wait` also returns on Ctrl-C."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous = signal.signal(signal.SIGTERM, lambda *_: self._event.set())

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self) -> None:
        try:
            while not self._event.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
