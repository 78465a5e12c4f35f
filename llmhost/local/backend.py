"""The local backend: chat, completions and embeddings on the resident models.

It owns nothing but a view of the model manager: it holds a model for the length of a call (loading it
when needed), renders chat templates, tokenizes, and starts generations on the model's engine.

Prompt preparation (the request's plan, the template render, tokenization, embeddings) runs in a worker
thread inside :meth:`LlamaRunner.borrow`, never on the event loop: a hostile template or a multi-MiB
prompt then costs one worker for a bounded time (the render's time and size limits, a byte cap sized
from the context window) while every other connection keeps being served, and a forced unload waits
for the preparation instead of freeing the vocabulary under it.

Special tokens: only the chat template's own markup may produce control tokens. Text that came with
the request (message content, tool calls, tool definitions) and spells one (``<start_of_turn>``,
``<|im_start|>``) is tokenized as plain text, so a user cannot forge a turn. Raw completion prompts
(``/v1/completions``, Ollama's ``raw`` generate) are the client's own prompt format and keep special
parsing, as llama.cpp's server does for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmhost.config import ModelSettings, Settings
from llmhost.engine.async_engine import OutputStream
from llmhost.engine.types import GenerationRequest, SamplingParams
from llmhost.errors import EngineError, NotReadyError, RequestError
from llmhost.local.embed_cache import EmbeddingCache, cache_key, pack, unpack
from llmhost.models.manager import LoadedModel, ModelManager
from llmhost.models.registry import ModelRecord, Registry

__all__ = ["BYTES_PER_TOKEN_LIMIT", "ChatPlan", "Generation", "LocalBackend", "new_request_id"]

_ids = itertools.count(1)

# A prompt may have at most this many bytes for each token of the context window. Real text averages
# 3-5 bytes a token, so no prompt that fits the context is refused, and a multi-MiB prompt against a
# 4k context fails at once instead of being tokenized (and rendered) first.
BYTES_PER_TOKEN_LIMIT = 64

# Placeholders for control-token texts found in request text: characters of Unicode's supplementary
# private use areas, which no tokenizer gives meaning to (each one is checked to be absent from the
# request).
_PLACEHOLDER_RANGE = range(0xF0000, 0x10FFFE)
_PRIVATE_USE = re.compile("[\U000f0000-\U0010ffff]")


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
    prompt_ids: Sequence[int] = ()  # the prompt's token ids, as the engine reads them


class LocalBackend:
    """Runs requests on the resident models; ``ready`` turns true once the default model is loaded."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        models: ModelManager,
        *,
        embedded: Mapping[str, Callable[[], ModelRecord]] | None = None,
        embed_cache: EmbeddingCache | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.models = models
        # Models that import themselves into the store on first use (the embedded embedding model).
        self.embedded = dict(embedded or {})
        self.embed_cache = embed_cache
        self.ready = False

    def has_model(self, name: str) -> bool:
        """Whether ``name`` is a local model: registered, or embedded and importable on first use."""
        return name in self.embedded or self.registry.find(name) is not None

    def list_models(self) -> list[ModelRecord]:
        return self.registry.list()

    @contextlib.asynccontextmanager
    async def using(self, name: str, *, generate: bool = True) -> AsyncIterator[LoadedModel]:
        """Hold the model ``name`` points at (loading it if needed) for the duration of the block;
        ``generate`` refuses an embedding-only model (400)."""
        if not self.ready:
            raise NotReadyError("the server is still loading its default model; retry shortly")
        if name in self.embedded and self.registry.find(name) is None:
            await asyncio.to_thread(self.embedded[name])
        model = await asyncio.to_thread(self.models.acquire, name)
        try:
            if generate and model.embedding_only:
                raise RequestError(
                    f"model '{name}' is an embedding model: it cannot generate text (use it with the "
                    "embeddings endpoints)",
                    param="model",
                )
            yield model
        finally:
            self.models.release(model)

    def model_settings(self, name: str) -> ModelSettings:
        """The config's ``[models."NAME"]`` table: sampling defaults for fields a request leaves unset,
        and the model's speculative decoding setting."""
        return self.settings.model_settings(name)

    # ----- prompt preparation (worker threads) -------------------------------------------------------
    def prompt_byte_limit(self, model: LoadedModel) -> int:
        """The most bytes a prompt for ``model`` may have (:data:`BYTES_PER_TOKEN_LIMIT`)."""
        return model.runner.n_ctx_slot * BYTES_PER_TOKEN_LIMIT

    def _check_size(self, model: LoadedModel, n_bytes: int, param: str) -> None:
        limit = self.prompt_byte_limit(model)
        if n_bytes > limit:
            raise RequestError(
                f"the prompt is {n_bytes} bytes, more than the {limit} this server accepts for this "
                f"model's {model.runner.n_ctx_slot}-token context; shorten it",
                param=param,
                code="context_length_exceeded",
            )

    def render_chat(
        self,
        model: LoadedModel,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The chat template's text for ``messages`` (blocking, bounded: call it in a worker thread)."""
        return model.template.render(
            messages,
            tools=tools,
            bos_token=model.bos_text,
            eos_token=model.eos_text,
            max_chars=self.prompt_byte_limit(model),
        )

    def tokenize_prompt(self, model: LoadedModel, text: str) -> list[int]:
        """Tokenize a raw prompt, special tokens included (blocking: call it in a worker thread)."""
        self._check_size(model, len(text.encode("utf-8", errors="replace")), "prompt")
        vocab = model.runner.vocab
        # A template that writes BOS itself must not get a second one from the tokenizer.
        writes_bos = bool(model.bos_text) and text.startswith(model.bos_text)
        return vocab.tokenize(text, add_special=not writes_bos, parse_special=True)

    def _chat_tokens(self, model: LoadedModel, chosen: ChatPlan) -> list[int]:
        """Render and tokenize a chat, with the request's own text never read as control tokens."""
        strings = list(_strings((chosen.messages, chosen.tools)))
        self._check_size(model, sum(len(x.encode("utf-8", errors="replace")) for x in strings), "messages")
        vocab = model.runner.vocab
        found: set[str] = set()
        for text in set(strings):
            found |= vocab.special_texts(text)
        messages, tools = chosen.messages, chosen.tools
        literals: dict[str, str] = {}
        if found:
            literals = _stand_ins(found, [*strings, model.template.source])
            marks = {text: mark for mark, text in literals.items()}
            messages = _escape(messages, marks)
            tools = _escape(tools, marks) if tools is not None else None
        prompt = self.render_chat(model, messages, tools)
        self._check_size(model, len(prompt.encode("utf-8", errors="replace")), "messages")
        writes_bos = bool(model.bos_text) and prompt.startswith(model.bos_text)
        if not literals:
            return vocab.tokenize(prompt, add_special=not writes_bos, parse_special=True)
        return vocab.tokenize_literal(prompt, literals, add_special=not writes_bos)

    def _prepare_chat(
        self, model: LoadedModel, plan: Callable[[LoadedModel], ChatPlan]
    ) -> tuple[ChatPlan, list[int], tuple[tuple[str, ...], frozenset[int]]]:
        with model.runner.borrow():
            chosen = plan(model)
            return chosen, self._chat_tokens(model, chosen), model.template_stops

    def _prepare_raw(self, model: LoadedModel, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            with model.runner.borrow():
                return self.tokenize_prompt(model, prompt)
        _check_ids(model, prompt, "prompt")
        return list(prompt)

    async def _prediction_tokens(self, model: LoadedModel, prediction: str | None) -> tuple[int, ...]:
        """A prediction's tokens, as the answer would spell it (plain text, no BOS)."""
        if not prediction:
            return ()

        def tokenize() -> tuple[int, ...]:
            self._check_size(model, len(prediction.encode("utf-8", errors="replace")), "prediction")
            with model.runner.borrow():
                return tuple(model.runner.vocab.tokenize(prediction, add_special=False))

        return await asyncio.to_thread(tokenize)

    @staticmethod
    def after_prefix(model: LoadedModel, prefix: Sequence[int], tokens: list[int]) -> list[int]:
        """``tokens`` continuing the token ids of earlier turns (Ollama's ``context``): the prefix
        already starts with the BOS a new prompt would begin with, so the prompt's own is left out."""
        if not prefix:
            return tokens
        _check_ids(model, prefix, "context")
        bos = model.runner.vocab.bos
        if tokens and tokens[0] == bos:
            tokens = tokens[1:]
            if prefix[0] != bos:  # a context without the BOS a prompt starts with: it goes first still
                return [bos, *prefix, *tokens]
        return [*prefix, *tokens]

    # ----- generation --------------------------------------------------------------------------------
    async def chat(
        self,
        name: str,
        plan: Callable[[LoadedModel], ChatPlan],
        cache_scope: str = "",
        prefix: Sequence[int] = (),
        prediction: str | None = None,
    ) -> list[Generation]:
        """Hold the model, let ``plan`` decide the template input and sampling for it, render the chat
        template and start one generation per sampling entry (``n`` choices). ``cache_scope`` (the
        caller's key) decides whose cached prefix counts in ``cached_tokens``; ``prefix`` is token ids
        to continue (:meth:`after_prefix`); ``prediction`` text the answer should largely repeat."""
        async with self.using(name) as model:
            chosen, tokens, (template_stops, stop_ids) = await asyncio.to_thread(
                self._prepare_chat, model, plan
            )
            tokens = self.after_prefix(model, prefix, tokens)
            predicted = await self._prediction_tokens(model, prediction)
            started = []
            for p in chosen.params:
                stop = tuple(dict.fromkeys((*p.stop, *template_stops)))
                started.append(
                    dataclasses.replace(
                        p, stop=stop, stop_token_ids=p.stop_token_ids | stop_ids, prediction=predicted
                    )
                )
            # Once submitted, the engine's own count of live requests keeps the model resident.
            return self._start(model, tokens, started, "chatcmpl", cache_scope)

    async def complete(
        self,
        name: str,
        prompt: str | list[int],
        params: Sequence[SamplingParams],
        cache_scope: str = "",
        prefix: Sequence[int] = (),
        prediction: str | None = None,
    ) -> list[Generation]:
        """Continue a raw prompt (text or token ids) without any template; text is tokenized with
        special-token parsing, as llama.cpp's server does for raw prompts."""
        async with self.using(name) as model:
            tokens = await asyncio.to_thread(self._prepare_raw, model, prompt)
            tokens = self.after_prefix(model, prefix, tokens)
            predicted = await self._prediction_tokens(model, prediction)
            if predicted:
                params = [dataclasses.replace(p, prediction=predicted) for p in params]
            return self._start(model, tokens, params, "cmpl", cache_scope)

    async def chat_tokens(self, name: str, plan: Callable[[LoadedModel], ChatPlan]) -> list[int]:
        """The prompt tokens a chat would start with."""
        async with self.using(name) as model:
            return (await asyncio.to_thread(self._prepare_chat, model, plan))[1]

    async def count_chat_tokens(self, name: str, plan: Callable[[LoadedModel], ChatPlan]) -> int:
        return len(await self.chat_tokens(name, plan))

    async def count_text_tokens(self, name: str, text: str) -> int:
        async with self.using(name) as model:
            return len(await asyncio.to_thread(self._prepare_raw, model, text))

    def _start(
        self,
        model: LoadedModel,
        tokens: list[int],
        params: Sequence[SamplingParams],
        kind: str,
        cache_scope: str,
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
                rid = request_id if i == 0 else f"{request_id}-{i}"
                request = GenerationRequest(rid, tokens, p, cache_scope=cache_scope)
                assert model.engine is not None  # `using` refuses embedding-only models
                try:
                    stream = model.engine.stream(request)
                except EngineError as exc:
                    if type(exc) is not EngineError:
                        raise  # a full queue (429) and the like keep their own status
                    # The engine refuses only while it is being unloaded: a retry loads it again.
                    raise NotReadyError("the model was unloaded; retry the request") from exc
                logprobs = p.logprobs is not None
                generations.append(
                    Generation(request.request_id, model.name, len(tokens), stream, logprobs, tokens)
                )
        except BaseException:
            for gen in generations:  # all choices or none: a full queue refuses the whole request
                gen.stream.cancel()
            raise
        return generations

    async def embed(
        self, name: str, inputs: Sequence[str | list[int]], *, truncate: bool = False
    ) -> tuple[list[list[float]], int]:
        """Embed each input; return the vectors and the total number of input tokens. Inputs the
        embedding cache holds for this model file are not computed again. ``truncate``: an input
        longer than the model embeds at once is cut to fit instead of refused."""
        async with self.using(name, generate=False) as model:
            cache = self.embed_cache
            # A cut input's vector is not the whole input's: it is cached under a key of its own.
            digest = model.record.digest + ("+truncate" if truncate else "")
            keys = [cache_key(digest, x) for x in inputs] if cache is not None else []
            hits = await asyncio.to_thread(cache.get_many, keys) if cache is not None else {}
            vectors: list[list[float]] = [[] for _ in inputs]
            counts = [0] * len(inputs)
            for i, (blob, n_tokens) in hits.items():
                vectors[i], counts[i] = unpack(blob), n_tokens
            todo = [i for i in range(len(inputs)) if i not in hits]
            if todo:
                token_lists = await asyncio.to_thread(
                    self._embedding_tokens, model, [inputs[i] for i in todo], truncate
                )
                # The hold keeps the model loaded; a forced unload stops the batch between decodes (503).
                computed = await asyncio.to_thread(model.runner.embed_many, token_lists)
                for i, tokens, vector in zip(todo, token_lists, computed, strict=True):
                    vectors[i], counts[i] = vector, len(tokens)
                if cache is not None:
                    entries = [(keys[i], (pack(vectors[i]), counts[i])) for i in todo]
                    await asyncio.to_thread(cache.put_many, entries)
            return vectors, sum(counts)

    async def word_tokens(self, name: str, words: Sequence[str]) -> list[int] | None:
        """How many of embedding model ``name``'s tokens each word takes (no special tokens), for
        chunking by tokens; ``None`` when ``name`` is not a local model."""
        if not self.has_model(name):
            return None
        async with self.using(name, generate=False) as model:

            def count() -> list[int]:
                with model.runner.borrow():
                    vocab = model.runner.vocab
                    return [len(vocab.tokenize(w, add_special=False)) for w in words]

            return await asyncio.to_thread(count)

    def _embedding_tokens(
        self, model: LoadedModel, inputs: Sequence[str | list[int]], truncate: bool
    ) -> list[list[int]]:
        runner = model.runner
        n_ctx = runner.n_ctx_embed
        limit = n_ctx * BYTES_PER_TOKEN_LIMIT
        token_lists = []
        with runner.borrow():
            vocab = runner.vocab
            for x in inputs:
                if isinstance(x, str):
                    raw = x.encode("utf-8", errors="replace")
                    if len(raw) > limit and not truncate:
                        raise RequestError(
                            f"an input is longer than the {n_ctx} tokens this model embeds at once",
                            param="input",
                        )
                    text = raw[:limit].decode("utf-8", errors="ignore") if len(raw) > limit else x
                    tokens = vocab.tokenize(text, add_special=True)
                else:
                    tokens = list(x)
                if truncate and len(tokens) > n_ctx:
                    tokens = _cut(tokens, n_ctx, vocab) if isinstance(x, str) else tokens[:n_ctx]
                token_lists.append(tokens)
        for tokens in token_lists:
            bad = next((t for t in tokens if not 0 <= t < vocab.n_vocab), None)
            if bad is not None:
                raise RequestError(f"input token {bad} is not in the vocabulary", "input")
        return token_lists


def _check_ids(model: LoadedModel, tokens: Sequence[int], param: str) -> None:
    n_vocab = model.runner.vocab.n_vocab
    bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise RequestError(f"{param} token {bad} is not in the vocabulary (0..{n_vocab - 1})", param)


def _cut(tokens: list[int], n: int, vocab: Any) -> list[int]:
    """The first ``n`` tokens of a tokenized text, ending with the end marker the tokenizer added (a
    BERT model's ``[SEP]``) if it added one."""
    if vocab.is_control(tokens[-1]):
        return [*tokens[: n - 1], tokens[-1]]
    return tokens[:n]


# ----- request text that spells control tokens ----------------------------------------------------------
def _strings(value: Any) -> Iterator[str]:
    """Every string in a template input (dict keys included: ``tojson`` writes them)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _stand_ins(texts: set[str], taken: Sequence[str]) -> dict[str, str]:
    """One stand-in character (private use) per control-token text, none of them present in ``taken``."""
    used = {c for s in taken for c in _PRIVATE_USE.findall(s)}
    free = (chr(code) for code in _PLACEHOLDER_RANGE if chr(code) not in used)
    out: dict[str, str] = {}
    for text in sorted(texts, key=lambda t: (-len(t), t)):
        mark = next(free, None)
        if mark is None:
            raise RequestError("the messages use every private-use character", param="messages")
        out[mark] = text
    return out


def _escape(value: Any, marks: Mapping[str, str]) -> Any:
    """``value`` with each control-token text in its strings replaced by its stand-in (longest
    first, so a text that contains a shorter one stays whole)."""
    if isinstance(value, str):
        for text, mark in marks.items():
            if text in value:
                value = value.replace(text, mark)
        return value
    if isinstance(value, Mapping):
        return {_escape(k, marks): _escape(v, marks) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escape(item, marks) for item in value]
    return value
