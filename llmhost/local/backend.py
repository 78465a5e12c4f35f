"""The local backend: chat, completions and embeddings on the resident models.

It owns nothing but a view of the model manager: it holds a model for the length of a call (loading it
when needed), renders chat templates, tokenizes, and starts generations on the model's engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmhost.config import Settings
from llmhost.engine.async_engine import OutputStream
from llmhost.engine.types import GenerationRequest, SamplingParams
from llmhost.errors import NotReadyError, RequestError
from llmhost.models.manager import LoadedModel, ModelManager
from llmhost.models.registry import ModelRecord, Registry

__all__ = ["ChatPlan", "Generation", "LocalBackend", "new_request_id"]

_ids = itertools.count(1)


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(6).hex()}{next(_ids):x}"


@dataclass(frozen=True, slots=True)
class ChatPlan:
    """What to render for a chat on a given model: template-shaped messages and tools, and one
    sampling entry per choice."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    params: list[SamplingParams]


@dataclass(eq=False)
class Generation:
    """A generation that has been accepted by an engine; iterate ``stream`` for its deltas."""

    request_id: str
    model: str
    prompt_tokens: int
    stream: OutputStream
    logprobs: bool = False  # outputs carry each token's log-probability


class LocalBackend:
    """Runs requests on the resident models; ``ready`` turns true once the default model is loaded."""

    def __init__(self, settings: Settings, registry: Registry, models: ModelManager) -> None:
        self.settings = settings
        self.registry = registry
        self.models = models
        self.ready = False

    def list_models(self) -> list[ModelRecord]:
        return self.registry.list()

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
    def render_chat(
        self,
        model: LoadedModel,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        return model.template.render(
            messages, tools=tools, bos_token=model.bos_text, eos_token=model.eos_text
        )

    def tokenize_prompt(self, model: LoadedModel, text: str) -> list[int]:
        vocab = model.runner.vocab
        # A template that writes BOS itself must not get a second one from the tokenizer.
        writes_bos = bool(model.bos_text) and text.startswith(model.bos_text)
        return vocab.tokenize(text, add_special=not writes_bos, parse_special=True)

    async def chat(self, name: str, plan: Callable[[LoadedModel], ChatPlan]) -> list[Generation]:
        """Hold the model, let ``plan`` decide the template input and sampling for it, render the chat
        template and start one generation per sampling entry (``n`` choices)."""
        async with self.using(name) as model:
            chosen = plan(model)
            prompt = self.render_chat(model, chosen.messages, chosen.tools)
            tokens = self.tokenize_prompt(model, prompt)
            template_stops, stop_ids = model.template_stops
            started = []
            for p in chosen.params:
                stop = tuple(dict.fromkeys((*p.stop, *template_stops)))
                started.append(dataclasses.replace(p, stop=stop, stop_token_ids=p.stop_token_ids | stop_ids))
            # Once submitted, the engine's own count of live requests keeps the model resident.
            return self._start(model, tokens, started, "chatcmpl")

    async def complete(
        self, name: str, prompt: str | list[int], params: Sequence[SamplingParams]
    ) -> list[Generation]:
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

    async def count_chat_tokens(self, name: str, plan: Callable[[LoadedModel], ChatPlan]) -> int:
        async with self.using(name) as model:
            chosen = plan(model)
            return len(self.tokenize_prompt(model, self.render_chat(model, chosen.messages, chosen.tools)))

    async def count_text_tokens(self, name: str, text: str) -> int:
        async with self.using(name) as model:
            return len(self.tokenize_prompt(model, text))

    def _start(
        self, model: LoadedModel, tokens: list[int], params: Sequence[SamplingParams], kind: str
    ) -> list[Generation]:
        if len(params) > model.runner.n_slots:
            raise RequestError(
                f"n={len(params)} is more than this model's {model.runner.n_slots} parallel sequences",
                param="n",
            )
        request_id = new_request_id(kind)
        generations: list[Generation] = []
        try:
            for i, p in enumerate(params):
                request = GenerationRequest(request_id if i == 0 else f"{request_id}-{i}", tokens, p)
                stream = model.engine.stream(request)
                logprobs = p.logprobs is not None
                generations.append(Generation(request.request_id, model.name, len(tokens), stream, logprobs))
        except BaseException:
            for gen in generations:  # all choices or none: a full queue refuses the whole request
                gen.stream.cancel()
            raise
        return generations

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
