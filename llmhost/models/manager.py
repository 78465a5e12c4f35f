"""Resident models: load on first use, keep them ready, unload on shutdown.

Each loaded model is one :class:`LlamaRunner` (weights + a multi-slot context) driven by one
:class:`Engine` step-loop thread, plus its resolved chat template.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from llmhost.config import Settings
from llmhost.engine.async_engine import Engine
from llmhost.engine.runner import LlamaRunner, RunnerConfig
from llmhost.models.registry import ModelRecord, Registry
from llmhost.models.templates import ChatTemplate, resolve_chat_template

__all__ = ["LoadedModel", "ModelManager"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedModel:
    """A model in memory, ready to serve."""

    name: str
    record: ModelRecord
    runner: LlamaRunner
    engine: Engine
    template: ChatTemplate
    load_seconds: float

    @property
    def bos_text(self) -> str:
        return self.runner.vocab.token_text(self.runner.vocab.bos) if self.runner.vocab.adds_bos else ""

    @property
    def eos_text(self) -> str:
        return self.runner.vocab.token_text(self.runner.vocab.eos)


class ModelManager:
    """Loads registered models on demand and keeps them resident until shutdown."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()  # serialises loads; lookups of loaded models don't wait on it

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    def get_loaded(self, name: str) -> LoadedModel | None:
        return self._loaded.get(name)

    def load(self, name: str) -> LoadedModel:
        """Return the loaded model, loading it first if needed (blocking: call from a worker thread)."""
        model = self._loaded.get(name)
        if model is not None:
            return model
        with self._lock:
            model = self._loaded.get(name)
            if model is not None:
                return model
            record = self.registry.get(name)
            engine_cfg = self.settings.engine
            started = time.perf_counter()
            runner = LlamaRunner(
                record.path,
                RunnerConfig(
                    n_ctx_slot=engine_cfg.n_ctx,
                    n_slots=engine_cfg.n_parallel,
                    n_batch=engine_cfg.n_batch,
                    n_threads=engine_cfg.n_threads,
                    n_gpu_layers=engine_cfg.n_gpu_layers,
                ),
            )
            engine = Engine(runner, max_queue=engine_cfg.max_queue, name=name)
            engine.start()
            template = resolve_chat_template(record.architecture, record.chat_template)
            elapsed = time.perf_counter() - started
            model = LoadedModel(name, record, runner, engine, template, elapsed)
            self._loaded[name] = model
            log.info(
                "loaded %s in %.2fs (%d slots x %d tokens)", name, elapsed, runner.n_slots, runner.n_ctx_slot
            )
            return model

    def unload(self, name: str) -> bool:
        with self._lock:
            model = self._loaded.pop(name, None)
        if model is None:
            return False
        model.engine.stop()
        return True

    def close(self) -> None:
        for name in list(self._loaded):
            self.unload(name)
