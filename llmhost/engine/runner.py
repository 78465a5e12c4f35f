"""The only low-level llama.cpp user: one model, one context, many sequences per decode call.

The runner fills one ``llama_batch`` per step from the scheduler's chunks, calls ``llama_decode`` once,
and samples each sequence that needs a token with that sequence's own sampler chain.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from llmhost.engine.sampling import SequenceSampler, token_logprobs
from llmhost.engine.types import SamplingParams, ScheduledChunk, SchedulerOutput, TokenLogprob
from llmhost.errors import EngineError, ModelError, NotReadyError, RequestError
from llmhost.native import gpu_offload_supported, init_backend

__all__ = ["EmbeddingRunner", "LlamaRunner", "RunnerConfig", "gpu_offload_supported"]

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


def _load_model(path: Path, n_gpu_layers: int | None) -> Any:
    init_backend()
    params = llama_cpp.llama_model_default_params()
    if n_gpu_layers is None:
        n_gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
    params.n_gpu_layers = 2**31 - 1 if n_gpu_layers < 0 else n_gpu_layers
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ModelError(f"llama.cpp could not load {path} (see LLMHOST_LLAMA_VERBOSE=1 for details)")
    return model


# Token attributes that make a token "special": llama.cpp matches their text only with parse_special.
_SPECIAL_ATTRS = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
_C_SPACE = " \t\n\v\f\r"  # what C's isspace() strips next to an lstrip/rstrip token


class _Vocab:
    """Tokenizer helpers shared by the generation and embedding runners."""

    def __init__(self, model: Any) -> None:
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._attrs: dict[int, int] = {}

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            raise EngineError("tokenization failed")
        return list(buf[:n])

    def attr(self, token: int) -> int:
        attr = self._attrs.get(token)
        if attr is None:
            attr = self._attrs[token] = int(llama_cpp.llama_vocab_get_attr(self.vocab, token))
        return attr

    def special_texts(self, text: str) -> set[str]:
        """The texts of the control (and unknown) tokens that ``text`` would turn into if it were
        tokenized with special-token parsing, as a template's markup is."""
        ids = set(self.tokenize(text, add_special=False, parse_special=True))
        return {self.token_text(t) for t in ids if self.attr(t) & _SPECIAL_ATTRS}

    def tokenize_literal(self, text: str, literals: Mapping[str, str], *, add_special: bool) -> list[int]:
        """Tokenize ``text`` with special-token parsing, where each key of ``literals`` (a stand-in
        character standing in for user text) reads as its value, tokenized as plain text.

        The text is cut where llama.cpp's own tokenizer would cut it (at each control token, longest
        first, honouring lstrip/rstrip), the stand-ins are put back in the plain pieces, and each
        piece is tokenized on its own -- as llama.cpp tokenizes each piece between special tokens, so
        with no stand-ins the result is the same as ``tokenize(text, parse_special=True)``.
        """
        specials: dict[str, int] = {}
        for t in self.tokenize(text, add_special=False, parse_special=True):
            if self.attr(t) & _SPECIAL_ATTRS:
                specials.setdefault(self.token_text(t), t)
        fragments: list[str | int] = [text]
        for special in sorted(specials, key=len, reverse=True):
            token = specials[special]
            lstrip = bool(self.attr(token) & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP)
            rstrip = bool(self.attr(token) & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP)
            split: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int):
                    split.append(fragment)
                    continue
                start = 0
                while (match := fragment.find(special, start)) >= 0:
                    left = fragment[start:match]
                    if lstrip:
                        left = left.rstrip(_C_SPACE)
                    if left:
                        split.append(left)
                    split.append(token)
                    start = match + len(special)
                    if rstrip:
                        while start < len(fragment) and fragment[start] in _C_SPACE:
                            start += 1
                if start < len(fragment):
                    split.append(fragment[start:])
            fragments = split
        tokens: list[int] = []
        if add_special and self.adds_bos:
            tokens.append(self.bos)
        for fragment in fragments:
            if isinstance(fragment, int):
                tokens.append(fragment)
                continue
            for mark, literal in literals.items():
                fragment = fragment.replace(mark, literal)
            tokens += self.tokenize(fragment, add_special=False, parse_special=False)
        if add_special and self.adds_eos:
            tokens.append(self.eos)
        return tokens

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for; control tokens render as nothing."""
        cached = self._pieces.get(token)
        if cached is None:
            # A buffer per call: prompt preparation in worker threads reads pieces too.
            buf = ctypes.create_string_buffer(256)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            if n < 0:
                big = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, big, len(big), 0, False)
                cached = big.raw[:n]
            else:
                cached = buf.raw[:n]
            self._pieces[token] = cached
        return cached

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
        return eog

    @property
    def bos(self) -> int:
        return int(llama_cpp.llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        return int(llama_cpp.llama_vocab_eos(self.vocab))

    @property
    def adds_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    @property
    def adds_eos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_eos(self.vocab))

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        raw = llama_cpp.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""


class LlamaRunner:
    """One loaded model with a context of ``n_slots`` sequences of ``n_ctx_slot`` tokens each.

    Not thread-safe: the engine's step-loop thread is its only caller for decoding. Other threads
    (prompt preparation, embeddings) use the model inside :meth:`borrow`, which :meth:`close` waits
    for, so an unload never frees the model under them.
    """

    def __init__(self, path: Path, config: RunnerConfig) -> None:
        self.path = path
        self.config = config
        self.model = _load_model(path, config.n_gpu_layers)
        try:
            self.vocab = _Vocab(self.model)
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
        self._closing = False
        self._borrowers = 0
        self._borrow_cv = threading.Condition()

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
        with self._borrow_cv:
            if self._closing:
                raise NotReadyError("the model was unloaded; retry the request")
            self._borrowers += 1
        try:
            yield self
        finally:
            with self._borrow_cv:
                self._borrowers -= 1
                self._borrow_cv.notify_all()

    @property
    def closing(self) -> bool:
        """True once an unload has begun: long work in :meth:`borrow` should stop at the next step."""
        return self._closing

    @property
    def n_ctx_embed(self) -> int:
        """The most tokens one embedding input may have."""
        return min(self.n_ctx_slot, 8192)

    def embedder(self) -> EmbeddingRunner:
        """The embeddings context for this model, created on first use (call inside :meth:`borrow`)."""
        with self._embedder_lock:
            if self._closing:
                raise NotReadyError("the model was unloaded; retry the request")
            if self._embedder is None:
                self._embedder = EmbeddingRunner(
                    self.model, self.vocab, self.n_ctx_embed, self.config.n_threads
                )
            return self._embedder

    def embed_many(self, token_lists: list[list[int]]) -> list[list[float]]:
        """Embed each token list; an unload that begins meanwhile stops it between inputs."""
        with self.borrow():
            embedder = self.embedder()
            vectors = []
            for tokens in token_lists:
                if self._closing:
                    raise NotReadyError("the model was unloaded while embedding; retry the request")
                vectors.append(embedder.embed(tokens))
            return vectors

    def close(self) -> None:
        """Free the model; waits for the :meth:`borrow` blocks in flight (new ones are refused)."""
        with self._borrow_cv:
            if self._closing:
                return
            self._closing = True
            while self._borrowers:
                self._borrow_cv.wait()
        with self._embedder_lock:
            if self._embedder is not None:
                self._embedder.close()
        for slot in list(self._samplers):
            self.end_sequence(slot)
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


class EmbeddingRunner:
    """A second, embeddings-only context on the same model file (mean pooling, L2-normalised)."""

    def __init__(self, model: Any, vocab: _Vocab, n_ctx: int, n_threads: int) -> None:
        self.vocab = vocab
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
        cparams.n_seq_max = 1
        cparams.embeddings = True
        cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        cparams.n_threads = cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not self.ctx:
            raise ModelError("llama.cpp could not create an embeddings context")
        self.n_ctx = n_ctx
        self.n_embd = int(llama_cpp.llama_model_n_embd(model))
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self._batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        self._lock = threading.Lock()

    def embed(self, tokens: list[int]) -> list[float]:
        if not tokens:
            raise RequestError("input must not be empty", param="input")
        if len(tokens) > self.n_ctx:
            raise RequestError(
                f"input is {len(tokens)} tokens, more than the {self.n_ctx} this model embeds at once",
                param="input",
            )
        with self._lock:
            llama_cpp.llama_memory_clear(self.memory, True)
            batch = self._batch
            for i, token in enumerate(tokens):
                batch.token[i] = token
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            batch.n_tokens = len(tokens)
            rc = llama_cpp.llama_decode(self.ctx, batch)
            if rc != 0:
                raise EngineError(f"embedding decode failed: llama_decode returned {rc}")
            ptr = llama_cpp.llama_get_embeddings_seq(self.ctx, 0)
            if not ptr:
                raise EngineError("llama.cpp returned no embedding")
            values = [float(ptr[i]) for i in range(self.n_embd)]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        return [v / norm for v in values]

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self.ctx)
