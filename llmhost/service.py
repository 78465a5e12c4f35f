"""The composition root: builds the stores, the local backend, the gateway and the one pipeline.

Every door (HTTP dialects, CLI, later MCP and web) calls ``service.pipeline``; none talks to an engine
or a provider directly, so whatever the pipeline's stages enforce holds for every door alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from llmhost.apps.agents import AgentGenerator, Agents, AgentStage, AgentStore, Checks, Toolbox, safe_exists
from llmhost.apps.datasets import Datasets, open_store
from llmhost.apps.diagnose.engine import DiagnoseEngine, DiagnoseOptions
from llmhost.apps.diagnose.store import DiagnoseStore
from llmhost.config import Settings
from llmhost.core.pipeline import Pipeline
from llmhost.core.stage import Stage
from llmhost.core.validate import ValidateStage
from llmhost.local.backend import LocalBackend
from llmhost.local.embed_cache import make_cache
from llmhost.models.default import DEFAULT_MODEL_NAME, ensure_default_model
from llmhost.models.default_embedding import DEFAULT_EMBEDDING_MODEL_NAME, ensure_default_embedding_model
from llmhost.models.manager import ModelManager
from llmhost.models.registry import ModelRecord, Registry
from llmhost.models.store import ModelStore
from llmhost.providers.base import Provider
from llmhost.providers.local import LocalProvider
from llmhost.router.cost import UsageStage, UsageStore
from llmhost.router.factory import build_providers
from llmhost.router.gateway import Gateway
from llmhost.router.stage import RouteStage
from llmhost.security.audit import AuditLog, AuditStage
from llmhost.security.auth import Authenticator, AuthStage
from llmhost.security.budgets import BudgetStage, Ledger, MemoryLedger
from llmhost.security.keys import KeyStore
from llmhost.security.limits import LimitStage, MemoryWindows, RedisWindows, Windows
from llmhost.security.policy import PolicyStage
from llmhost.security.redis_ledger import RedisLedger

__all__ = ["Service"]

log = logging.getLogger(__name__)


class Service:
    """Owns the registry, the model store, the resident models, the gateway and the pipeline."""

    def __init__(
        self,
        settings: Settings,
        *,
        extra_stages: Sequence[Stage] = (),
        local_provider: Provider | None = None,
    ) -> None:
        """``local_provider`` answers for the local models instead of this process's engine (the model
        replicas of a Ray Serve deployment: ``llmhost.scale``)."""
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(settings.database_for("llmhost.db"))
        self.store = ModelStore(settings.resolved_models_dir, self.registry)
        self.models = ModelManager(settings, self.registry)
        self.usage = UsageStore(settings.database_for("llmhost.db"))
        self.keys = KeyStore(settings.database_for("llmhost.db"))
        config_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        self.auth = Authenticator(self.keys, config_key)
        # Rate-limit windows and budgets: in this process, or shared by every instance on one Redis
        # (the gateway shares its breakers there too).
        redis_url = settings.limits.redis_url
        self.windows: Windows = RedisWindows(redis_url) if redis_url else MemoryWindows()
        self.ledger: Ledger = (
            RedisLedger(redis_url, self.usage.spent) if redis_url else MemoryLedger(self.usage.spent)
        )
        self.audit = AuditLog(settings.database_for("audit.db"), synchronous=settings.audit.synchronous)
        embedded = {DEFAULT_EMBEDDING_MODEL_NAME: self.prepare_embedding_model}
        emb = settings.embeddings
        self.embed_cache = make_cache(
            emb.cache, settings.data_dir / "embeddings.db", emb.cache_entries, emb.cache_ttl
        )
        self.local = LocalBackend(
            settings, self.registry, self.models, embedded=embedded, embed_cache=self.embed_cache
        )
        self.started_at = time.time()
        self.gateway = Gateway(
            settings,
            build_providers(settings, local_provider or LocalProvider(self.local)),
            is_local_model=self.local.has_model,
        )
        self.policy = PolicyStage.from_settings(settings)
        # Agents: their store, the tools their loops call (llmhost's own MCP server is wired in by the
        # MCP door: Service.toolbox.own), and the stage that turns an agent's name into its request.
        self.agent_store = AgentStore(
            settings.database_for("agents.db"),
            settings.database_for("runs.db"),
            runs_retention=settings.agents.runs_retention,
        )
        self.toolbox = Toolbox(None, None)
        checks = Checks(
            model_exists=safe_exists(self.gateway.resolve), policies=lambda: set(settings.policies)
        )
        self.agents = Agents(self.agent_store, self.toolbox, checks)
        self.agent_stage = AgentStage(self.agents)
        # The stages, in order: the one place that says what every request goes through.
        audit = (AuditStage(self.audit, store_content=settings.audit.store_content),)
        stages: tuple[Stage, ...] = (
            *(audit if settings.audit.enabled else ()),  # first, so it sees every outcome last
            AuthStage(),
            self.agent_stage,  # an agent's name becomes its request; every request leaves a run
            ValidateStage(settings.embeddings.model),
            *((self.policy,) if self.policy.enabled else ()),  # redaction, blocked text, size caps
            *extra_stages,
            RouteStage(self.gateway),
            LimitStage(self.windows),
            BudgetStage(self.ledger),
            UsageStage(self.usage),
        )
        self.pipeline = Pipeline(AgentGenerator(self.gateway, self.toolbox), stages)
        self.toolbox.pipeline = self.pipeline
        dg = settings.diagnose
        self.diagnoses = DiagnoseStore(settings.data_dir / "diagnose.db")
        self.diagnose = DiagnoseEngine(
            self.pipeline, self.diagnoses, cache_entries=dg.cache_entries, cache_ttl=dg.cache_ttl
        )
        ds = settings.datasets
        self.datasets = Datasets(
            open_store(settings.database_for("datasets.db")),
            self.pipeline,
            default_embedding_model=settings.embeddings.model,
            count_tokens=self.local.word_tokens,
            chunk_tokens=ds.chunk_tokens,
            chunk_overlap=ds.chunk_overlap,
        )
        self.agent_stage.retriever = self.datasets  # agents answer from their datasets
        checks.dataset_exists = self.datasets.exists

    @property
    def ready(self) -> bool:
        return self.local.ready

    # ----- lifecycle ---------------------------------------------------------------------------------
    def prepare_default_model(self) -> ModelRecord | None:
        """Import the embedded default model when it is the configured default; return its record.

        ``None`` when no default model is configured (``default_model = ""``: a gateway-only server).
        """
        name = self.settings.default_model
        if not name:
            return None
        if name == DEFAULT_MODEL_NAME:
            return ensure_default_model(self.store, self.registry, name)
        return self.registry.get(name)

    def prepare_embedding_model(self) -> ModelRecord:
        """Import the embedded embedding model (all-minilm:l6-v2) if it is not yet in the store."""
        return ensure_default_embedding_model(self.store, self.registry)

    async def startup(self, *, preload: bool = True) -> None:
        """Make the default model available (import + load) without blocking the event loop."""
        if preload and self.settings.default_model:
            await asyncio.to_thread(self.prepare_default_model)
            await asyncio.to_thread(self.models.load, self.settings.default_model)
        self.local.ready = True

    def diagnose_options(
        self, *, model: str | None = None, min_confidence: float | None = None, examples: int | None = None
    ) -> DiagnoseOptions:
        """The diagnose engine's options from ``[diagnose]``, with a request's own overrides."""
        dg = self.settings.diagnose
        return DiagnoseOptions(
            model=model or dg.model or self.settings.default_model,
            embedding_model=dg.embedding_model or self.settings.embeddings.model,
            min_confidence=dg.min_confidence if min_confidence is None else min_confidence,
            examples=dg.examples if examples is None else examples,
            dedup_similarity=dg.dedup_similarity,
        )

    async def aclose(self) -> None:
        """Stop what runs on the event loop: the gateway's background work and providers, the Redis
        clients of the limits and budgets. :meth:`close` then closes the stores."""
        await self.gateway.aclose()
        await self.windows.aclose()
        await self.ledger.aclose()

    def close(self) -> None:
        self.datasets.close()
        self.agents.close()
        self.agent_store.close()
        self.diagnoses.close()
        self.models.close()
        if self.embed_cache is not None:
            self.embed_cache.close()
        self.usage.close()
        self.keys.close()
        self.audit.close()
        self.registry.close()

    # ----- models ------------------------------------------------------------------------------------
    def list_models(self) -> list[ModelRecord]:
        return self.registry.list()

    def get_model(self, name: str) -> ModelRecord:
        return self.registry.get(name)
