"""One model replica's engine, in the replica's own process: what a Ray Serve replica runs, without Ray.

A :class:`ReplicaEngine` owns what serving models takes in one process (the registry, the resident
models, the local backend and provider) and answers over plain picklable core types, so the Serve
deployment around it (:mod:`llmhost.scale.ray_serve`) stays a thin shell and this module is tested
without a cluster.

    answer(request)                  -> (ReplicaTag, Result)
    stream(request)                  -> ReplicaTag, then batches of Delta
    resume(request, produced, done)  -> ReplicaTag, then batches of Delta: the rest of a stream whose
                                        replica died after it had sent ``produced``
    embed(request)                   -> (ReplicaTag, Embeddings)

Streams travel in batches: the first delta at once (time to first token), then whatever arrived within
``stream_interval``; each message between Ray processes costs about a millisecond of CPU, more than a
token of a small model.

Resuming: the replica rebuilds the prompt exactly as the first one did (chat template, request text kept
out of control tokens), appends the text already sent tokenized as plain text, and continues it as a raw
continuation with the chat format's stops; ``max_tokens`` counts what was sent. Only a stream whose
output is free text of one choice can resume (:func:`resumable`): a tool call or a JSON grammar cannot
be picked up halfway, and ``n`` > 1 choices would each need their own continuation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from llmhost.config import RaySettings, Settings
from llmhost.core.types import Delta, Embeddings, EmbedRequest, FinishReason, InferenceRequest, Result, Usage
from llmhost.engine.types import FinishReason as EngineFinish
from llmhost.errors import ConflictError, EngineError, LLMHostError
from llmhost.local.backend import ChatPlan, LocalBackend
from llmhost.local.embed_cache import EmbeddingCache, make_cache
from llmhost.models.default_embedding import DEFAULT_EMBEDDING_MODEL_NAME, ensure_default_embedding_model
from llmhost.models.manager import LoadedModel, ModelManager
from llmhost.models.registry import ModelRecord, Registry
from llmhost.models.store import ModelStore
from llmhost.providers.local import LocalProvider, engine_sampling
from llmhost.toolcalls import to_template_messages

__all__ = [
    "Batch",
    "Failure",
    "HeldModel",
    "ReplicaEngine",
    "ReplicaTag",
    "batched",
    "replica_settings",
    "resumable",
]

log = logging.getLogger(__name__)

Batch = tuple[Delta, ...]


@dataclass(frozen=True, slots=True)
class Failure:
    """An llmhost error raised in a replica, carried back to the ingress as a value.

    Rebuilt there without calling its constructor (not every error's constructor takes its own message:
    pickling would call ``ModelNotFoundError(message)``), and returned rather than raised, so Serve does
    not log a client's 400 as a replica's crash.
    """

    kind: type[LLMHostError]
    args: tuple[Any, ...]
    state: dict[str, Any]

    @classmethod
    def of(cls, exc: LLMHostError) -> Failure:
        return cls(type(exc), exc.args, dict(vars(exc)))

    def error(self) -> LLMHostError:
        exc = self.kind.__new__(self.kind)
        exc.args = self.args
        exc.__dict__.update(self.state)
        return exc


@dataclass(frozen=True, slots=True)
class ReplicaTag:
    """Which replica answered: Serve's replica id, its actor's name (what ``ray.kill`` takes) and pid."""

    replica_id: str
    actor_name: str = ""
    pid: int = 0


def replica_settings(settings: Settings, ray: RaySettings) -> Settings:
    """The settings a replica's engine runs with: as many decode threads as CPUs Ray reserves for it
    (unless ``engine.n_threads`` says otherwise), and models that stay loaded until Serve's multiplexing
    unloads them (an idle timeout of its own would make Serve route to a replica that no longer holds
    the model)."""
    engine = settings.engine
    if engine.n_threads is None:
        engine = engine.model_copy(update={"n_threads": ray.engine_threads()})
    memory = settings.memory.model_copy(update={"keep_alive": -1.0})
    return settings.model_copy(update={"engine": engine, "memory": memory})


def resumable(request: InferenceRequest) -> bool:
    """Can a stream of ``request`` that already sent text be continued on another replica?"""
    uses_tools = bool(request.tools) and request.tool_choice.mode != "none"
    return request.sampling.n == 1 and not uses_tools and request.response_format.type == "text"


class HeldModel:
    """A model as Serve's multiplexing holds it: Serve calls ``__del__`` when it evicts the model (least
    recently used beyond ``models_per_replica``); the engine then unloads it once its requests end."""

    def __init__(self, name: str, release: Callable[[str], None]) -> None:
        self.name = name
        self._release: Callable[[str], None] | None = release

    def __del__(self) -> None:  # Serve's eviction hook; the garbage collector's later call is a no-op
        release, self._release = self._release, None
        if release is not None:
            release(self.name)


class ReplicaEngine:
    """The models one replica serves, and the calls the ingress makes on them."""

    def __init__(self, settings: Settings, tag: ReplicaTag, *, stream_interval: float = 0.02) -> None:
        self.settings = settings
        self.tag = tag
        self.stream_interval = stream_interval
        self.registry = Registry(settings.database_for("llmhost.db"))
        self.store = ModelStore(settings.resolved_models_dir, self.registry)
        self.models = ModelManager(settings, self.registry)
        emb = settings.embeddings
        self.embed_cache: EmbeddingCache | None = make_cache(
            emb.cache, settings.data_dir / "embeddings.db", emb.cache_entries, emb.cache_ttl
        )
        embedded = {DEFAULT_EMBEDDING_MODEL_NAME: self._import_embedding_model}
        self.backend = LocalBackend(
            settings, self.registry, self.models, embedded=embedded, embed_cache=self.embed_cache
        )
        self.backend.ready = True  # a replica takes requests once Serve runs it: its models load on demand
        self.provider = LocalProvider(self.backend)
        self._held: set[str] = set()  # what Serve believes this replica holds

    def _import_embedding_model(self) -> ModelRecord:
        return ensure_default_embedding_model(self.store, self.registry)

    # ----- models, as Serve's multiplexing loads and evicts them -------------------------------------
    async def load(self, name: str) -> HeldModel:
        """Make ``name`` resident here (Serve's multiplexed loader)."""
        async with self.backend.using(name, generate=False):
            pass
        self._held.add(name)
        log.info("replica %s holds %s", self.tag.replica_id, name)
        return HeldModel(name, self._evicted)

    def _evicted(self, name: str) -> None:
        self._held.discard(name)
        threading.Thread(target=self._unload_when_idle, args=(name,), daemon=True).start()

    def _unload_when_idle(self, name: str) -> None:
        while name not in self._held:  # Serve may load it here again meanwhile: then it stays
            try:
                self.models.unload(name)
                return
            except ConflictError:  # requests routed before the eviction still run on it
                time.sleep(0.5)

    # ----- the calls ---------------------------------------------------------------------------------
    async def answer(self, request: InferenceRequest) -> tuple[ReplicaTag, Result]:
        return self.tag, await self.provider.answer(request)

    async def stream(self, request: InferenceRequest) -> AsyncIterator[ReplicaTag | Batch]:
        yield self.tag
        async for batch in batched(self.provider.stream(request), self.stream_interval):
            yield batch

    async def resume(
        self, request: InferenceRequest, produced: str, finished: bool
    ) -> AsyncIterator[ReplicaTag | Batch]:
        """The rest of a stream that already sent ``produced`` (choice 0's text, echo excluded);
        ``finished``: its finish delta was sent too, only the usage is missing."""
        yield self.tag
        async for batch in batched(self._continue(request, produced, finished), self.stream_interval):
            yield batch

    async def embed(self, request: EmbedRequest) -> tuple[ReplicaTag, Embeddings]:
        return self.tag, await self.provider.embed(request)

    async def count_tokens(self, request: InferenceRequest) -> int:
        return await self.provider.count_tokens(request)

    def list_models(self) -> list[str]:
        return [record.name for record in self.registry.list()]

    def close(self) -> None:
        self.models.close()
        if self.embed_cache is not None:
            self.embed_cache.close()
        self.registry.close()

    # ----- resuming ----------------------------------------------------------------------------------
    async def _continue(
        self, request: InferenceRequest, produced: str, finished: bool
    ) -> AsyncIterator[Delta]:
        if not resumable(request):
            raise EngineError("only a free-text stream of one choice can resume on another replica")
        name = request.model
        params = engine_sampling(request.sampling, self.backend.model_settings(name))
        plan = ChatPlan(to_template_messages(request.messages), None, [params])
        async with self.backend.using(name) as model:
            if request.kind == "chat":
                prompt = await self.backend.chat_tokens(name, lambda _model: plan)
            else:
                prompt = await asyncio.to_thread(self._raw_prompt, model, request.prompt)
            prompt = self.backend.after_prefix(model, request.prefix_tokens, prompt)
            sent, (stop_texts, stop_ids) = await asyncio.to_thread(self._sent_tokens, model, produced)
        prompt_tokens, done_tokens = len(prompt), len(sent)
        left = None if params.max_tokens is None else params.max_tokens - done_tokens
        generated: list[int] = []

        def tokens() -> tuple[int, ...] | None:  # the whole sequence, for a request that wants it
            return (*prompt, *sent, *generated) if request.want_tokens else None

        if finished or (left is not None and left <= 0):
            if not finished:
                yield Delta(0, finish_reason="length", tokens=tokens())
            yield Delta(-1, usage=Usage(prompt_tokens, done_tokens))
            return
        if request.kind == "chat":  # a raw continuation: the chat format's own stops, as a chat has them
            stop = tuple(dict.fromkeys((*params.stop, *stop_texts)))
            params = dataclasses.replace(params, stop=stop, stop_token_ids=params.stop_token_ids | stop_ids)
        params = dataclasses.replace(params, max_tokens=left)
        log.info(
            "resuming a stream of %s after %d tokens on replica %s", name, done_tokens, self.tag.replica_id
        )
        (generation,) = await self.backend.complete(name, prompt + sent, [params], request.cache_scope)
        client_stops = set(request.sampling.stop)
        try:
            async for out in generation.stream:
                if out.error is not None:
                    raise out.error if isinstance(out.error, LLMHostError) else EngineError(str(out.error))
                generated += out.token_ids
                if out.text or out.logprobs:
                    yield Delta(0, out.text, logprobs=out.logprobs)
                if out.finish_reason is None:
                    continue
                reason: FinishReason = "length" if out.finish_reason is EngineFinish.LENGTH else "stop"
                stop_sequence = out.stop_sequence if out.stop_sequence in client_stops else None
                yield Delta(0, finish_reason=reason, stop_sequence=stop_sequence, tokens=tokens())
                cached = min(out.cached_tokens, prompt_tokens)
                yield Delta(-1, usage=Usage(prompt_tokens, done_tokens + out.completion_tokens, cached))
                return
        finally:
            generation.stream.cancel()

    def _raw_prompt(self, model: LoadedModel, prompt: str | tuple[int, ...]) -> list[int]:
        if not isinstance(prompt, str):
            return list(prompt)
        with model.runner.borrow():
            return self.backend.tokenize_prompt(model, prompt)

    @staticmethod
    def _sent_tokens(
        model: LoadedModel, produced: str
    ) -> tuple[list[int], tuple[tuple[str, ...], frozenset[int]]]:
        """``produced`` as plain-text tokens (what the model wrote is never read as control tokens), and
        the chat format's stops."""
        with model.runner.borrow():
            tokens = model.runner.vocab.tokenize(produced, add_special=False) if produced else []
            return tokens, model.template_stops


async def batched(deltas: AsyncIterator[Delta], interval: float) -> AsyncIterator[Batch]:
    """``deltas`` in batches: the first at once, then what arrived within each ``interval`` seconds
    (0: one delta a batch). Leaving early closes ``deltas`` (which frees the engine's slot)."""
    if interval <= 0:
        async for delta in deltas:
            yield (delta,)
        return
    queue: asyncio.Queue[Delta | Exception | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for delta in deltas:
                queue.put_nowait(delta)
        except Exception as exc:
            queue.put_nowait(exc)
        else:
            queue.put_nowait(None)

    task = asyncio.create_task(pump())
    try:
        first = True
        while True:
            items = [await queue.get()]
            if not first:
                await asyncio.sleep(interval)
            first = False
            while not queue.empty():
                items.append(queue.get_nowait())
            last = items[-1]  # the pump's end mark (None, or its error) comes after every delta
            batch = tuple(x for x in items if isinstance(x, Delta))
            if batch:
                yield batch
            if isinstance(last, Exception):
                raise last
            if last is None:
                return
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
