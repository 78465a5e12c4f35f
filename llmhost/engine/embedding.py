"""Embeddings: a batched embeddings context, and the runner of embedding-only models (BERT).

:class:`EmbeddingRunner` packs many inputs into one ``llama_decode`` (one sequence id each, up to the
context's token budget), as llama.cpp's server does, and reads each sequence's pooled vector. A
generative model embeds through a second context with mean pooling (``LlamaRunner.embedder``); an
embedding model (a GGUF whose attention is not causal: BERT and its kin) has no generation context at
all and is driven by :class:`EncoderRunner`, with the pooling its file names.

Vectors are L2-normalised, as OpenAI's and sentence-transformers' are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from llmhost.engine.vocab import Vocab, load_model
from llmhost.errors import EngineError, ModelError, NotReadyError, RequestError

__all__ = ["BorrowGate", "EmbeddingRunner", "EncoderRunner"]

# Sequences one embeddings decode may hold.
MAX_SEQUENCES = 32


class BorrowGate:
    """Lets other threads use a model for a block while an unload waits for them all to leave."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._borrowers = 0
        self.closing = False

    @contextmanager
    def borrow(self) -> Iterator[None]:
        """Raises :class:`NotReadyError` (503, retry) once an unload has begun."""
        with self._cv:
            if self.closing:
                raise NotReadyError("the model was unloaded; retry the request")
            self._borrowers += 1
        try:
            yield
        finally:
            with self._cv:
                self._borrowers -= 1
                self._cv.notify_all()

    @property
    def borrowers(self) -> int:
        return self._borrowers

    def close(self) -> bool:
        """Refuse new borrowers and wait for those inside; False when another close came first."""
        with self._cv:
            if self.closing:
                return False
            self.closing = True
            while self._borrowers:
                self._cv.wait()
        return True


class EmbeddingRunner:
    """An embeddings-only context on a loaded model: ``n_ctx`` tokens a decode, any number of inputs.

    ``pooling`` is a ``LLAMA_POOLING_TYPE_*``; ``LLAMA_POOLING_TYPE_UNSPECIFIED`` takes the model's own.
    """

    def __init__(self, model: Any, n_ctx: int, n_threads: int, *, pooling: int, causal: bool) -> None:
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
        # A causal model keeps a KV cache: each sequence gets the whole context (one input may fill it).
        self.n_seq = 1 if causal else MAX_SEQUENCES
        cparams.n_seq_max = self.n_seq
        cparams.embeddings = True
        cparams.pooling_type = pooling
        cparams.n_threads = cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not self.ctx:
            raise ModelError("llama.cpp could not create an embeddings context")
        self.n_ctx = n_ctx
        self.n_embd = int(llama_cpp.llama_model_n_embd(model))
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self._batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        self._tok = np.ctypeslib.as_array(self._batch.token, shape=(n_ctx,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(n_ctx,))
        self._nseq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(n_ctx,))
        self._logits = np.ctypeslib.as_array(self._batch.logits, shape=(n_ctx,))
        self._seq_ptrs = [self._batch.seq_id[i] for i in range(n_ctx)]
        self._lock = threading.Lock()

    def check(self, tokens: Sequence[int]) -> None:
        if not tokens:
            raise RequestError("input must not be empty", param="input")
        if len(tokens) > self.n_ctx:
            raise RequestError(
                f"input is {len(tokens)} tokens, more than the {self.n_ctx} this model embeds at once",
                param="input",
            )

    def embed(self, tokens: list[int]) -> list[float]:
        return self.embed_many([tokens])[0]

    def embed_many(
        self, token_lists: Sequence[list[int]], stop: threading.Event | None = None
    ) -> list[list[float]]:
        """One vector per token list, in order; inputs share decodes up to the token budget."""
        for tokens in token_lists:
            self.check(tokens)
        vectors: list[list[float]] = []
        group: list[list[int]] = []
        used = 0
        for tokens in token_lists:
            if group and (used + len(tokens) > self.n_ctx or len(group) == self.n_seq):
                vectors += self._decode(group, stop)
                group, used = [], 0
            group.append(tokens)
            used += len(tokens)
        if group:
            vectors += self._decode(group, stop)
        return vectors

    def _decode(self, group: list[list[int]], stop: threading.Event | None) -> list[list[float]]:
        if stop is not None and stop.is_set():
            raise NotReadyError("the model was unloaded while embedding; retry the request")
        with self._lock:
            if self.memory:
                llama_cpp.llama_memory_clear(self.memory, True)
            n = 0
            for seq, tokens in enumerate(group):
                end = n + len(tokens)
                self._tok[n:end] = tokens
                self._pos[n:end] = np.arange(len(tokens))
                for i in range(n, end):
                    self._seq_ptrs[i][0] = seq
                n = end
            self._nseq[:n] = 1
            self._logits[:n] = 1
            self._batch.n_tokens = n
            rc = llama_cpp.llama_decode(self.ctx, self._batch)
            if rc != 0:
                raise EngineError(f"embedding decode failed: llama_decode returned {rc}")
            out = []
            for seq in range(len(group)):
                ptr = llama_cpp.llama_get_embeddings_seq(self.ctx, seq)
                if not ptr:
                    raise EngineError("llama.cpp returned no embedding")
                out.append(np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(np.float64))
        vectors = []
        for v in out:
            norm = float(np.linalg.norm(v)) or 1.0
            vectors.append((v / norm).astype(np.float32).tolist())  # float32, as llama.cpp computed it
        return vectors

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self.ctx)


class EncoderRunner:
    """An embedding-only model (no generation context): the file, its vocabulary and one
    :class:`EmbeddingRunner` with the model's own pooling. Thread-safe: calls share the context."""

    n_slots = 0  # no generation slots
    MIN_BATCH_TOKENS = 1024  # the packing budget: several short inputs per decode

    def __init__(self, path: Path, *, n_threads: int, n_gpu_layers: int | None) -> None:
        self.path = path
        self.model = load_model(path, n_gpu_layers)
        self._gate = BorrowGate()
        self.last_used = time.monotonic()
        try:
            self.vocab = Vocab(self.model)
            self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self.model))
            self.n_ctx_embed = min(self.n_ctx_train or 512, 8192)
            budget = max(self.n_ctx_embed, self.MIN_BATCH_TOKENS)
            self._embedder = EmbeddingRunner(
                self.model,
                budget,
                n_threads,
                pooling=llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
                causal=False,
            )
        except BaseException:
            llama_cpp.llama_model_free(self.model)
            raise
        self.n_ctx_slot = self.n_ctx_embed
        self._stop = threading.Event()

    @contextmanager
    def borrow(self) -> Iterator[EncoderRunner]:
        with self._gate.borrow():
            yield self

    @property
    def closing(self) -> bool:
        return self._gate.closing

    @property
    def busy(self) -> int:
        """Threads using the model now (embedding or tokenizing)."""
        return self._gate.borrowers

    def embed_many(self, token_lists: list[list[int]]) -> list[list[float]]:
        for tokens in token_lists:
            if len(tokens) > self.n_ctx_embed:
                raise RequestError(
                    f"input is {len(tokens)} tokens, more than the {self.n_ctx_embed} this model "
                    "embeds at once",
                    param="input",
                )
        with self.borrow():
            try:
                return self._embedder.embed_many(token_lists, self._stop)
            finally:
                self.last_used = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        if not self._gate.close():
            return
        self._embedder.close()
        llama_cpp.llama_model_free(self.model)
