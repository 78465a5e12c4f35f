"""The only low-level llama.cpp user: one model, one context, many sequences per decode call.

The runner fills one ``llama_batch`` per step from the scheduler's chunks, calls ``llama_decode`` once,
and samples each sequence that needs a token with that sequence's own sampler chain.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from llmhost.engine.embedding import BorrowGate, EmbeddingRunner
from llmhost.engine.sampling import SequenceSampler, token_logprobs
from llmhost.engine.types import SamplingParams, ScheduledChunk, SchedulerOutput, TokenLogprob
from llmhost.engine.vocab import Vocab, load_model
from llmhost.errors import EngineError, ModelError, NotReadyError
from llmhost.native import gpu_offload_supported

__all__ = ["LlamaRunner", "RunnerConfig", "gpu_offload_supported"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    n_ctx_slot: int = 4096
    n_slots: int = 4
    n_batch: int = 512
    n_threads: int = 1  # the model manager passes the machine's default (models.hardware) when unset
    n_gpu_layers: int | None = None
    # Logits rows a step keeps beyond one per slot, for speculative drafts (each drafted token needs
    # its own row: n_vocab floats, 1 MiB for Gemma's 262k vocabulary). 0 turns speculation off.
    n_draft_rows: int = 32


class LlamaRunner:
    """One loaded model with a context of ``n_slots`` sequences of ``n_ctx_slot`` tokens each.

    Not thread-safe: the engine's step-loop thread is its only caller for decoding. Other threads
    (prompt preparation, embeddings) use the model inside :meth:`borrow`, which :meth:`close` waits
    for, so an unload never frees the model under them.
    """

    def __init__(self, path: Path, config: RunnerConfig) -> None:
        self.path = path
        self.config = config
        self.model = load_model(path, config.n_gpu_layers)
        try:
            self.vocab = Vocab(self.model)
            self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self.model))
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = config.n_ctx_slot * config.n_slots
            cparams.n_batch = config.n_batch
            cparams.n_ubatch = self.n_ubatch = min(config.n_batch, 512)
            cparams.n_seq_max = config.n_slots
            # One logits row per slot per step, plus the rows for drafts: without a cap llama.cpp reserves
            # logits for every batch row (~490 MiB more compute buffer for Gemma's 262k vocabulary).
            self.n_draft_rows = max(0, min(config.n_draft_rows, config.n_batch - config.n_slots))
            cparams.n_outputs_max = config.n_slots + self.n_draft_rows
            cparams.n_threads = cparams.n_threads_batch = config.n_threads
            # A full-size sliding-window cache keeps prefixes reusable (Gemma 3 has SWA layers).
            cparams.swa_full = True
            cparams.no_perf = True
            self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
            if not self.ctx:
                raise ModelError(f"llama.cpp could not create a context for {path}")
        except BaseException:
            llama_cpp.llama_model_free(self.model)
            raise
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_ctx_slot = int(llama_cpp.llama_n_ctx_seq(self.ctx))
        self.n_slots = config.n_slots
        self.n_batch = config.n_batch
        self._batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)
        self._tok = np.ctypeslib.as_array(self._batch.token, shape=(config.n_batch,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(config.n_batch,))
        self._nseq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(config.n_batch,))
        self._logits = np.ctypeslib.as_array(self._batch.logits, shape=(config.n_batch,))
        self._nseq[:] = 1
        self._seq_ptrs = [self._batch.seq_id[i] for i in range(config.n_batch)]
        self._samplers: dict[int, SequenceSampler] = {}
        self._want_logprobs: dict[int, int] = {}
        # Log-probabilities of the tokens sampled by the last step, for the requests that asked.
        self.logprobs: dict[str, list[TokenLogprob]] = {}
        self._embedder: EmbeddingRunner | None = None
        self._embedder_lock = threading.Lock()
        self._gate = BorrowGate()
        self._stop_embedding = threading.Event()  # set when an unload begins: a batch stops between decodes

    # ----- metadata ----------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace") if n >= 0 else None

    # ----- sequences ---------------------------------------------------------------------------------
    def start_sequence(self, slot: int, keep: int, params: SamplingParams) -> bool:
        """Prepare ``slot`` for a new request: drop KV cells from ``keep`` on, attach a sampler chain.

        Returns False when the cells before ``keep`` could not be kept; the slot is then empty.
        """
        self.end_sequence(slot)
        self._samplers[slot] = SequenceSampler(self.vocab.vocab, self.vocab.n_vocab, self.n_ctx_slot, params)
        if params.logprobs is not None:
            self._want_logprobs[slot] = params.logprobs
        if keep > 0 and llama_cpp.llama_memory_seq_rm(self.memory, slot, keep, -1):
            return True
        llama_cpp.llama_memory_seq_rm(self.memory, slot, -1, -1)
        return keep == 0

    def end_sequence(self, slot: int) -> None:
        self._want_logprobs.pop(slot, None)
        sampler = self._samplers.pop(slot, None)
        if sampler is not None:
            sampler.free()

    def clear_slot(self, slot: int) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, slot, -1, -1)

    # ----- one step ----------------------------------------------------------------------------------
    def step(self, output: SchedulerOutput) -> dict[str, list[int]]:
        """Decode every scheduled chunk in one call; return the tokens sampled per sequence that needs one.

        A chunk with a draft is verified here: its positions are sampled in order with the sequence's own
        sampler, each from the logits after the tokens before it, and accepted while the sampled token
        is the drafted one. The sequence gets the accepted tokens and the first token that differs (or
        the one after a wholly accepted draft) -- the tokens plain decoding would sample one step at a
        time from the same logits (llama.cpp's quantized CPU kernels give a chunk's rows slightly
        different logits than single-token steps, so a near-tie can still go the other way) -- and the
        KV cells of the rejected tail are dropped.
        """
        n = 0
        sample_at: list[tuple[ScheduledChunk, int]] = []
        # In slot order: with a per-sequence KV cache (kv_unified off), llama.cpp packs a batch into one
        # micro-batch only when its sequence ids come in order; out of order it splits the batch into
        # several, each reading all the weights again (8 streams: 10.5 -> 17 tok/s each when sorted).
        for chunk in sorted(output.chunks, key=lambda c: c.slot):
            k = len(chunk.tokens)
            self._tok[n : n + k] = chunk.tokens
            self._pos[n : n + k] = np.arange(chunk.start_pos, chunk.start_pos + k, dtype=np.int32)
            self._logits[n : n + k] = 0
            for i in range(n, n + k):
                self._seq_ptrs[i][0] = chunk.slot
            if chunk.sample:
                first = n + k - 1 - chunk.n_draft
                self._logits[first : n + k] = 1
                sample_at.append((chunk, first))
            n += k
        if n == 0:
            return {}
        self._batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, self._batch)
        if rc != 0:
            reason = "no room left in the KV cache" if rc == 1 else f"llama_decode returned {rc}"
            raise EngineError(f"decode failed: {reason}")
        sampled: dict[str, list[int]] = {}
        self.logprobs.clear()
        for chunk, first in sample_at:
            tokens = sampled[chunk.request_id] = self._sample(chunk, first)
            rejected = chunk.n_draft - (len(tokens) - 1)
            if rejected:
                kept = chunk.start_pos + len(chunk.tokens) - rejected
                llama_cpp.llama_memory_seq_rm(self.memory, chunk.slot, kept, -1)
        return sampled

    def _sample(self, chunk: ScheduledChunk, first: int) -> list[int]:
        sampler = self._samplers[chunk.slot]
        top = self._want_logprobs.get(chunk.slot)
        draft = chunk.tokens[len(chunk.tokens) - chunk.n_draft :]
        tokens: list[int] = []
        for i in range(chunk.n_draft + 1):
            token = sampler.sample(self.ctx, first + i)
            tokens.append(token)
            if top is not None:
                logprob, best = token_logprobs(sampler.logits(self.ctx, first + i), token, top)
                piece = self.vocab.piece
                self.logprobs.setdefault(chunk.request_id, []).append(
                    TokenLogprob(piece(token), logprob, tuple((piece(t), lp) for t, lp in best))
                )
            if i == chunk.n_draft or token != draft[i] or self.vocab.is_eog(token):
                break
        return tokens

    # ----- use from other threads --------------------------------------------------------------------
    @contextmanager
    def borrow(self) -> Iterator[LlamaRunner]:
        """Use the model (vocabulary, embeddings) from a thread other than the engine's for the block.

        Raises :class:`NotReadyError` (503, retry) once an unload has begun; :meth:`close` waits until
        every block has left, so no borrower ever touches freed memory.
        """
        with self._gate.borrow():
            yield self

    @property
    def closing(self) -> bool:
        """True once an unload has begun: long work in :meth:`borrow` should stop at the next step."""
        return self._gate.closing

    @property
    def n_ctx_embed(self) -> int:
        """The most tokens one embedding input may have."""
        return min(self.n_ctx_slot, 8192)

    def embedder(self) -> EmbeddingRunner:
        """The embeddings context for this model, created on first use (call inside :meth:`borrow`)."""
        with self._embedder_lock:
            if self.closing:
                raise NotReadyError("the model was unloaded; retry the request")
            if self._embedder is None:
                self._embedder = EmbeddingRunner(
                    self.model,
                    self.n_ctx_embed,
                    self.config.n_threads,
                    pooling=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    causal=True,
                )
            return self._embedder

    def embed_many(self, token_lists: list[list[int]]) -> list[list[float]]:
        """Embed each token list; an unload that begins meanwhile stops it between inputs."""
        with self.borrow():
            return self.embedder().embed_many(token_lists, self._stop_embedding)

    def close(self) -> None:
        """Free the model; waits for the :meth:`borrow` blocks in flight (new ones are refused)."""
        self._stop_embedding.set()
        if not self._gate.close():
            return
        with self._embedder_lock:
            if self._embedder is not None:
                self._embedder.close()
        for slot in list(self._samplers):
            self.end_sequence(slot)
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)
