"""The one pipeline every door (HTTP API, CLI, later MCP and web) calls.

door -> Service.gateway (routes, fallback, breakers, usage) -> provider -> [local] model manager ->
engine. Doors never talk to an engine or a provider directly, so whatever the pipeline enforces (today:
validation, context limits, back-pressure, usage accounting; later: keys, policy, audit) holds for
every door alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmhost.config import Settings
from llmhost.engine.async_engine import OutputStream
from llmhost.engine.types import GenerationRequest, SamplingParams
from llmhost.errors import NotReadyError, RequestError
from llmhost.models.default import DEFAULT_MODEL_NAME, ensure_default_model
from llmhost.models.manager import LoadedModel, ModelManager
from llmhost.models.registry import ModelRecord, Registry
from llmhost.models.store import ModelStore
from llmhost.router.cost import UsageStore
from llmhost.router.router import Gateway, build_providers

__all__ = ["Generation", "Service"]

log = logging.getLogger(__name__)

_ids = itertools.count(1)


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(6).hex()}{next(_ids):x}"


@dataclass(eq=False)
class Generation:
    """A generation that has been accepted by an engine; iterate ``stream`` for its deltas."""

    request_id: str
    model: str
    prompt_tokens: int
    stream: OutputStream
    logprobs: bool = False  # outputs carry each token's log-probability


class Service:
    """Owns the registry, the model store and the resident models; runs requests through them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(settings.database_path)
        self.store = ModelStore(settings.resolved_models_dir, self.registry)
        self.models = ModelManager(settings, self.registry)
        self.usage = UsageStore(settings.database_path)
        self.ready = False
        self.started_at = time.time()
        from llmhost.providers.local import LocalProvider  # the local provider wraps this service

        self.gateway = Gateway(
            settings,
            build_providers(settings, LocalProvider(self)),
            is_local_model=lambda name: self.registry.find(name) is not None,
            usage=self.usage,
        )

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

    async def startup(self, *, preload: bool = True) -> None:
        """Make the default model available (import + load) without blocking the event loop."""
        if preload and self.settings.default_model:
            await asyncio.to_thread(self.prepare_default_model)
            await asyncio.to_thread(self.models.load, self.settings.default_model)
        self.ready = True

    def close(self) -> None:
        self.models.close()
        self.usage.close()
        self.registry.close()

    # ----- models ------------------------------------------------------------------------------------
    def list_models(self) -> list[ModelRecord]:
        return self.registry.list()

    def get_model(self, name: str) -> ModelRecord:
        return self.registry.get(name)

    @contextlib.asynccontextmanager
    async def using(self, name: str) -> AsyncIterator[LoadedModel]:
        """Hold the model ``name`` points at (loading it if needed) for the duration of the block."""
        if not self.ready:
            raise NotReadyError("the server is still loading its default model; retry shortly")
        model = await asyncio.to_thread(self.models.acquire, name)
        try:
            yield model
        finally:
            self.models.release(model)

    def sampling_defaults(self, name: str) -> dict[str, float | int]:
        """Per-model sampling defaults from the config, for fields a request leaves unset."""
        return self.settings.model_settings(name).sampling_defaults()

    # ----- generation --------------------------------------------------------------------------------
    def render_chat(self, model: LoadedModel, messages: Sequence[Mapping[str, Any]]) -> str:
        return model.template.render(messages, bos_token=model.bos_text, eos_token=model.eos_text)

    def tokenize_prompt(self, model: LoadedModel, text: str) -> list[int]:
        vocab = model.runner.vocab
        # A template that writes BOS itself must not get a second one from the tokenizer.
        writes_bos = bool(model.bos_text) and text.startswith(model.bos_text)
        return vocab.tokenize(text, add_special=not writes_bos, parse_special=True)

    async def chat(
        self, name: str, messages: Sequence[Mapping[str, Any]], params: SamplingParams
    ) -> Generation:
        """Apply the model's chat template and start generating."""
        async with self.using(name) as model:
            prompt = self.render_chat(model, messages)
            tokens = self.tokenize_prompt(model, prompt)
            template_stops, stop_ids = model.template_stops
            stop = tuple(dict.fromkeys((*params.stop, *template_stops)))
            params = dataclasses.replace(params, stop=stop, stop_token_ids=params.stop_token_ids | stop_ids)
            # Once submitted, the engine's own count of live requests keeps the model resident.
            return self._start(model, tokens, params, "chatcmpl")

    async def complete(self, name: str, prompt: str | list[int], params: SamplingParams) -> Generation:
        """Continue a raw prompt (text or token ids) without any template."""
        async with self.using(name) as model:
            if isinstance(prompt, str):
                tokens = self.tokenize_prompt(model, prompt)
            else:
                n_vocab = model.runner.vocab.n_vocab
                bad = next((t for t in prompt if not 0 <= t < n_vocab), None)
                if bad is not None:
                    raise RequestError(
                        f"prompt token {bad} is not in the vocabulary (0..{n_vocab - 1})", "prompt"
                    )
                tokens = list(prompt)
            return self._start(model, tokens, params, "cmpl")

    def _start(self, model: LoadedModel, tokens: list[int], params: SamplingParams, kind: str) -> Generation:
        request = GenerationRequest(new_request_id(kind), tokens, params)
        stream = model.engine.stream(request)
        return Generation(request.request_id, model.name, len(tokens), stream, params.logprobs is not None)

    async def embed(self, name: str, inputs: Sequence[str | list[int]]) -> tuple[list[list[float]], int]:
        """Embed each input; return the vectors and the total number of input tokens."""
        async with self.using(name) as model:
            vocab = model.runner.vocab
            token_lists = [
                vocab.tokenize(x, add_special=True) if isinstance(x, str) else list(x) for x in inputs
            ]
            for tokens in token_lists:
                bad = next((t for t in tokens if not 0 <= t < vocab.n_vocab), None)
                if bad is not None:
                    raise RequestError(f"input token {bad} is not in the vocabulary", "input")

            def run() -> list[list[float]]:
                embedder = model.runner.embedder()
                return [embedder.embed(tokens) for tokens in token_lists]

            vectors = await asyncio.to_thread(run)  # the hold keeps the model loaded meanwhile
            return vectors, sum(len(t) for t in token_lists)
