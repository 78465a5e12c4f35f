"""Resident models: load on demand, share memory under a budget, unload when idle.

A loaded model is one :class:`LlamaRunner` (weights + a multi-slot context) driven by one
:class:`Engine` step-loop thread. Loaded models are keyed by *file and runtime settings*, not by name,
and names are resolved through the registry on every request: pointing an alias at another file
(``llmhost cp``) hot-swaps it — new requests go to the new file while running ones finish on the old.

Memory: loading estimates weights + KV cache + compute buffers from GGUF metadata and evicts
least-recently-used *idle* models until the new one fits the RAM (or VRAM) budget. A model is idle when
no request holds it (``acquire``/``release``) and its engine has nothing running or waiting, so a model
is never unloaded under a running request. Idle models also unload after their ``keep_alive``.

A forced unload (``unload(name, force=True)``) does not wait for idleness, but it never frees memory that
is in use: running generations end (``abort``) when the engine's loop stops, and freeing the model waits
for every thread inside :meth:`LlamaRunner.borrow` -- prompt preparation finishes, an embedding batch
stops between inputs -- which then fail with a 503 to retry (the next request loads the model again).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from llmhost.config import ModelSettings, Settings
from llmhost.engine.async_engine import Engine
from llmhost.engine.embedding import EncoderRunner
from llmhost.engine.runner import LlamaRunner, RunnerConfig
from llmhost.errors import ConflictError, ModelError, NotReadyError
from llmhost.models.gguf_check import GGUFInfo, inspect_gguf_cached
from llmhost.models.hardware import HardwareInfo, detect_hardware
from llmhost.models.memory import estimate_embedding_memory, estimate_memory
from llmhost.models.registry import ModelRecord, Registry
from llmhost.models.templates import ChatTemplate, resolve_chat_template

__all__ = ["LoadedModel", "ModelManager", "RuntimeKey"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RuntimeKey:
    """What makes two loads the same: the file and the settings it runs with."""

    digest: str
    n_ctx: int
    n_parallel: int
    n_batch: int
    n_threads: int | None
    n_gpu_layers: int | None


@dataclass(eq=False)
class LoadedModel:
    """A model in memory, ready to serve: a generative model has a runner and the engine that drives it;
    an embedding-only model (BERT) has an :class:`EncoderRunner` and no engine."""

    name: str
    key: RuntimeKey
    record: ModelRecord
    runner: LlamaRunner | EncoderRunner
    engine: Engine | None
    template: ChatTemplate
    settings: ModelSettings
    memory_bytes: int
    on_gpu: bool
    keep_alive: float
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)
    refs: int = 0

    # The properties below read the vocabulary: off the engine's thread, use them inside
    # ``runner.borrow()`` so a forced unload cannot free it meanwhile.
    @property
    def bos_text(self) -> str:
        vocab = self.runner.vocab
        return vocab.token_text(vocab.bos) if vocab.adds_bos else ""

    @property
    def eos_text(self) -> str:
        return self.runner.vocab.token_text(self.runner.vocab.eos)

    @functools.cached_property
    def template_stops(self) -> tuple[tuple[str, ...], frozenset[int]]:
        """The chat format's stop strings, with those that are single control tokens (which render as
        no text) turned into stop token ids. Computed once per loaded model."""
        vocab = self.runner.vocab
        texts: list[str] = []
        ids: set[int] = set()
        for stop in self.template.stop:
            tokens = vocab.tokenize(stop, add_special=False, parse_special=True)
            if len(tokens) == 1 and not vocab.piece(tokens[0]):
                ids.add(tokens[0])
            else:
                texts.append(stop)
        return tuple(texts), frozenset(ids)

    @property
    def embedding_only(self) -> bool:
        return self.engine is None

    @property
    def active_requests(self) -> int:
        return self.engine.active_requests if self.engine is not None else self.refs

    @property
    def last_used(self) -> float:
        """``time.monotonic()`` of the last work done."""
        if self.engine is not None:
            return self.engine.last_used
        assert isinstance(self.runner, EncoderRunner)
        return self.runner.last_used

    @property
    def idle(self) -> bool:
        return self.refs == 0 and self.active_requests == 0

    @property
    def idle_seconds(self) -> float:
        return 0.0 if not self.idle else max(0.0, time.monotonic() - self.last_used)

    def stop(self) -> None:
        """End the engine's loop (open requests end with ``abort``) and free the model."""
        if self.engine is not None:
            self.engine.stop()
        else:
            self.runner.close()

    @property
    def expires_in(self) -> float | None:
        """Seconds until the keep-alive unloads it, or None when it stays (busy, or keep_alive < 0)."""
        if self.keep_alive < 0 or not self.idle:
            return None
        return max(0.0, self.keep_alive - self.idle_seconds)


class ModelManager:
    """Loads registered models on demand and keeps them resident within the memory budget."""

    def __init__(self, settings: Settings, registry: Registry, hardware: HardwareInfo | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.hardware = hardware or detect_hardware()
        mem = settings.memory
        self.ram_budget = (
            mem.ram_budget if mem.ram_budget is not None else int(self.hardware.available_ram_bytes * 0.8)
        )
        free_vram = sum(gpu.free_bytes for gpu in self.hardware.gpus)
        self.vram_budget = mem.vram_budget if mem.vram_budget is not None else int(free_vram * 0.9)
        self._loaded: dict[RuntimeKey, LoadedModel] = {}
        self._lock = threading.Condition()
        self._load_lock = threading.Lock()  # one load at a time: loads compete for the same memory
        self._closed = False
        self.busy_wait_seconds = 30.0  # how long a load waits for busy models to become evictable
        self._reaper = threading.Thread(target=self._reap_idle, name="llmhost-keepalive", daemon=True)
        self._reaper.start()

    # ----- lookups -----------------------------------------------------------------------------------
    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    def runtime_key(self, record: ModelRecord) -> RuntimeKey:
        eng, ms = self.settings.engine, self.settings.model_settings(record.name)
        return RuntimeKey(
            digest=record.digest,
            n_ctx=ms.n_ctx or eng.n_ctx,
            n_parallel=ms.n_parallel or eng.n_parallel,
            n_batch=ms.n_batch or eng.n_batch,
            n_threads=ms.n_threads or eng.n_threads,
            n_gpu_layers=ms.n_gpu_layers if ms.n_gpu_layers is not None else eng.n_gpu_layers,
        )

    def get_loaded(self, name: str) -> LoadedModel | None:
        """The resident model that ``name`` currently points at, if it is loaded."""
        record = self.registry.find(name)
        if record is None:
            return None
        with self._lock:
            return self._loaded.get(self.runtime_key(record))

    # ----- acquire / release -------------------------------------------------------------------------
    def acquire(self, name: str) -> LoadedModel:
        """Resolve ``name``, load it if needed, and hold it until :meth:`release` (blocking)."""
        record = self.registry.get(name)
        key = self.runtime_key(record)
        with self._lock:
            model = self._loaded.get(key)
            if model is not None:
                model.refs += 1
                return model
        with self._load_lock:
            with self._lock:
                model = self._loaded.get(key)
                if model is not None:
                    model.refs += 1
                    return model
            model = self._load(name, record, key)
            with self._lock:
                model.refs += 1
                self._loaded[key] = model
            return model

    def release(self, model: LoadedModel) -> None:
        with self._lock:
            model.refs = max(0, model.refs - 1)
            self._lock.notify_all()

    @contextmanager
    def hold(self, name: str) -> Iterator[LoadedModel]:
        model = self.acquire(name)
        try:
            yield model
        finally:
            self.release(model)

    def load(self, name: str) -> LoadedModel:
        """Make ``name`` resident (preload) without holding it."""
        model = self.acquire(name)
        self.release(model)
        return model

    # ----- loading -----------------------------------------------------------------------------------
    def _load(self, name: str, record: ModelRecord, key: RuntimeKey) -> LoadedModel:
        ms = self.settings.model_settings(name)
        info = inspect_gguf_cached(record.path, record.digest, self.settings.data_dir / "cache" / "gguf-info")
        if info.embedding_only:
            return self._load_encoder(name, record, key, info, ms)
        estimate = estimate_memory(
            info, n_ctx_total=key.n_ctx * key.n_parallel, n_seq=key.n_parallel, n_batch=key.n_batch
        )
        need = estimate.total_bytes
        gpu_layers = key.n_gpu_layers
        on_gpu = self._on_gpu(key)
        budget = self.vram_budget if on_gpu else self.ram_budget
        where = "VRAM" if on_gpu else "RAM"
        if need > budget:
            raise ModelError(
                f"model '{name}' needs about {_gib(need)} of {where} with {key.n_parallel} slots x "
                f"{key.n_ctx} tokens, more than the {_gib(budget)} budget; lower n_ctx or n_parallel, "
                f"or raise memory.{'vram' if on_gpu else 'ram'}_budget"
            )
        self._make_room(need, on_gpu, name)
        started = time.perf_counter()
        runner = LlamaRunner(
            record.path,
            RunnerConfig(
                n_ctx_slot=key.n_ctx,
                n_slots=key.n_parallel,
                n_batch=key.n_batch,
                n_threads=key.n_threads or self.hardware.default_threads,
                n_gpu_layers=gpu_layers,
            ),
        )
        max_queue = ms.max_queue if ms.max_queue is not None else self.settings.engine.max_queue
        engine = Engine(runner, max_queue=max_queue, name=name, nice=self.settings.engine.nice)
        engine.start()
        template = resolve_chat_template(record.architecture, record.chat_template, ms.chat_template)
        keep_alive = ms.keep_alive if ms.keep_alive is not None else self.settings.memory.keep_alive
        elapsed = time.perf_counter() - started
        log.info(
            "loaded %s in %.2fs (%d slots x %d tokens, ~%s %s)",
            name,
            elapsed,
            runner.n_slots,
            runner.n_ctx_slot,
            _gib(need),
            where,
        )
        return LoadedModel(name, key, record, runner, engine, template, ms, need, on_gpu, keep_alive, elapsed)

    def _load_encoder(
        self, name: str, record: ModelRecord, key: RuntimeKey, info: GGUFInfo, ms: ModelSettings
    ) -> LoadedModel:
        """An embedding-only model: one embeddings context, no generation slots and no engine."""
        n_tokens = max(min(info.context_length or 512, 8192), EncoderRunner.MIN_BATCH_TOKENS)
        need = estimate_embedding_memory(info, n_tokens=n_tokens).total_bytes
        on_gpu = (
            bool(self.hardware.gpus) and self.hardware.llama_gpu_offload and (key.n_gpu_layers or -1) != 0
        )
        budget = self.vram_budget if on_gpu else self.ram_budget
        if need > budget:
            raise ModelError(f"model '{name}' needs about {_gib(need)}, more than the {_gib(budget)} budget")
        self._make_room(need, on_gpu, name)
        started = time.perf_counter()
        runner = EncoderRunner(
            record.path,
            n_threads=key.n_threads or self.hardware.default_threads,
            n_gpu_layers=key.n_gpu_layers,
        )
        template = resolve_chat_template(record.architecture, record.chat_template, ms.chat_template)
        keep_alive = ms.keep_alive if ms.keep_alive is not None else self.settings.memory.keep_alive
        elapsed = time.perf_counter() - started
        log.info("loaded embedding model %s in %.2fs (~%s)", name, elapsed, _gib(need))
        return LoadedModel(name, key, record, runner, None, template, ms, need, on_gpu, keep_alive, elapsed)

    def _on_gpu(self, key: RuntimeKey) -> bool:
        return bool(self.hardware.gpus) and self.hardware.llama_gpu_offload and (key.n_gpu_layers or -1) != 0

    def _used(self, on_gpu: bool) -> int:
        return sum(m.memory_bytes for m in self._loaded.values() if m.on_gpu == on_gpu)

    def _make_room(self, need: int, on_gpu: bool, name: str) -> None:
        """Evict least-recently-used idle models until ``need`` fits; wait briefly for busy ones."""
        budget = self.vram_budget if on_gpu else self.ram_budget
        deadline = time.monotonic() + self.busy_wait_seconds
        while True:
            with self._lock:
                over_memory = self._used(on_gpu) + need > budget
                over_count = len(self._loaded) >= self.settings.memory.max_loaded
                if not over_memory and not over_count:
                    return
                # Evicting a model on the other device frees nothing unless we are over the count.
                idle = sorted(
                    (m for m in self._loaded.values() if m.idle and (m.on_gpu == on_gpu or not over_memory)),
                    key=lambda m: m.last_used,
                )
                victim = idle[0] if idle else None
                if victim is not None:
                    del self._loaded[victim.key]
                elif time.monotonic() > deadline:
                    raise NotReadyError(
                        f"not enough memory to load '{name}' while other models are serving requests; "
                        "retry later"
                    )
                else:
                    self._lock.wait(0.25)
                    continue
            log.info("evicting %s to make room for %s", victim.name, name)
            victim.stop()

    # ----- unloading ---------------------------------------------------------------------------------
    def unload(self, name: str, *, force: bool = False) -> bool:
        """Unload what ``name`` points at; refuse while it serves requests unless ``force`` (see the
        module docstring for what a forced unload does to them). Blocks until the memory is free."""
        record = self.registry.find(name)
        if record is None:
            return False
        key = self.runtime_key(record)
        with self._lock:
            model = self._loaded.get(key)
            if model is None:
                return False
            if not model.idle and not force:
                raise ConflictError(
                    f"model '{name}' is serving {model.active_requests} request(s); try again when idle"
                )
            del self._loaded[key]
        model.stop()
        log.info("unloaded %s", name)
        return True

    def is_in_use(self, record: ModelRecord) -> bool:
        """Whether any resident model runs this file."""
        with self._lock:
            return any(key.digest == record.digest for key in self._loaded)

    def _reap_idle(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                expired = [
                    m for m in self._loaded.values() if (left := m.expires_in) is not None and left <= 0.0
                ]
                for m in expired:
                    del self._loaded[m.key]
            for m in expired:
                log.info("unloading %s after %.0fs idle", m.name, m.keep_alive)
                m.stop()
            with self._lock:
                if self._closed:
                    return
                self._lock.wait(0.5)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            models = list(self._loaded.values())
            self._loaded.clear()
            self._lock.notify_all()
        for m in models:
            m.stop()
        self._reaper.join(timeout=5)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
