"""Per-sequence samplers built from :class:`SamplingParams` with llama.cpp's samplers.

Order follows llama.cpp's server: logit bias, penalties, then top-k, top-p, min-p, temperature and the
final draw. Each sequence owns its sampler (and its seeded RNG), so a seeded request samples the same
tokens whether it runs alone or in a busy batch.

A grammar (JSON mode) is kept outside the chain: checking a grammar against every token of a 262k-token
vocabulary costs ~90 ms, so, like llama.cpp's ``common_sampler_sample``, we sample without it, check only
the chosen token, and apply the grammar to the whole vocabulary only when that token is rejected.

A lazy grammar (``grammar_lazy``, for tool calls under ``tool_choice`` ``auto``) waits for one of its
trigger patterns to match the generated text; until then the sequence samples as it would without a
grammar (fast paths included), and from the match on the grammar constrains it as above.

Two plain cases skip llama.cpp's chain, whose cost grows with the vocabulary: greedy decoding without
biases or penalties is an ``argmax`` of the logits (0.02 ms instead of 0.35 ms for 262k tokens), and
a plain temperature draw over the whole vocabulary (OpenAI's defaults: ``top_p`` 1, no ``top_k``) is
a blocked cumulative-sum draw in numpy (0.6 ms instead of 2.6 ms), seeded per sequence like the chain.
"""

from __future__ import annotations

import ctypes
import random
import re
from collections.abc import Callable
from typing import Any

import llama_cpp
import numpy as np

from llmhost.engine.types import SamplingParams
from llmhost.errors import EngineError, RequestError

__all__ = [
    "SequenceSampler",
    "TemperatureDraw",
    "build_sampler_chain",
    "check_logit_bias",
    "fast_path",
    "token_logprobs",
]

_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
_BLOCK = 512


def fast_path(params: SamplingParams) -> str | None:
    """``"greedy"`` or ``"draw"`` when the request needs no llama.cpp sampler, else None."""
    plain = (
        not params.logit_bias
        and not params.presence_penalty
        and not params.frequency_penalty
        and params.repeat_penalty == 1.0
        and (params.grammar is None or params.grammar_lazy)
    )
    if not plain:
        return None
    if params.temperature <= 0.0:
        return "greedy"
    if params.top_k == 0 and params.top_p >= 1.0 and params.min_p <= 0.0:
        return "draw"
    return None


class TemperatureDraw:
    """Draw a token from softmax(logits / temperature) over the whole vocabulary.

    The probabilities are summed in blocks of 512: pick a block by the cumulative sum of the block
    sums, then the token inside it, so no cumulative sum runs over the whole vocabulary.
    """

    def __init__(self, n_vocab: int, temperature: float, seed: int) -> None:
        self.n_vocab = n_vocab
        self.scale = np.float32(1.0 / temperature)
        n_blocks = -(-n_vocab // _BLOCK)
        self._buf = np.zeros(n_blocks * _BLOCK, dtype=np.float32)  # the padding stays 0
        self._blocks = self._buf.reshape(n_blocks, _BLOCK)
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def __call__(self, logits: np.ndarray[Any, Any]) -> int:
        x = self._buf[: self.n_vocab]
        np.multiply(logits, self.scale, out=x)
        np.subtract(x, x.max(), out=x)
        np.exp(x, out=x)
        sums = self._blocks.sum(axis=1, dtype=np.float64)
        cumulative = np.cumsum(sums)
        u = self.rng.random() * cumulative[-1]
        block = min(int(np.searchsorted(cumulative, u, side="right")), len(sums) - 1)
        u -= cumulative[block] - sums[block]
        inner = np.cumsum(self._blocks[block], dtype=np.float64)
        token = block * _BLOCK + min(int(np.searchsorted(inner, u, side="right")), _BLOCK - 1)
        return min(token, self.n_vocab - 1)


class SequenceSampler:
    """One sequence's sampler: a llama.cpp chain plus an optional grammar checked lazily."""

    def __init__(self, vocab: Any, n_vocab: int, n_ctx: int, params: SamplingParams) -> None:
        self.vocab = vocab
        self.n_vocab = n_vocab
        self.n_ctx = n_ctx
        self.params = params
        self.grammar: Any = None
        self.chain: Any = None
        self.fast = fast_path(params)
        self._draw: TemperatureDraw | None = None
        self._watch: _TriggerWatch | None = None
        self._pending: Any = None  # a lazy request's grammar, parsed up front, waiting for its trigger
        if self.fast == "draw":
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            self._draw = TemperatureDraw(n_vocab, params.temperature, seed & 0xFFFFFFFF)
        try:
            if params.grammar is not None and params.grammar_lazy:
                self._watch = _TriggerWatch(params.grammar_triggers)
                self._pending = self._new_grammar()
            elif params.grammar is not None:
                self.grammar = self._new_grammar()
            if self.fast is None:
                self.chain = build_sampler_chain(vocab, n_vocab, n_ctx, params)
        except BaseException:
            self.free()
            raise
        if self.grammar is not None:
            self._buffers()

    def _new_grammar(self) -> Any:
        assert self.params.grammar is not None
        grammar = llama_cpp.llama_sampler_init_grammar(self.vocab, self.params.grammar.encode(), b"root")
        if not grammar:
            raise RequestError("the grammar could not be parsed", "response_format")
        return grammar

    def _buffers(self) -> None:
        if getattr(self, "_data", None) is not None:
            return
        self._data = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._arr = llama_cpp.llama_token_data_array(
            self._data.ctypes.data_as(llama_cpp.llama_token_data_p), self.n_vocab, -1, False
        )
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_arr = llama_cpp.llama_token_data_array(self._one, 1, -1, False)

    def sample(self, ctx: Any, idx: int) -> int:
        """Pick the next token from the logits at batch index ``idx`` and record it."""
        if self.fast == "greedy":
            token = int(np.argmax(self.logits(ctx, idx)))
        elif self._draw is not None:
            token = self._draw(self.logits(ctx, idx))
        elif self.grammar is None:
            token = int(llama_cpp.llama_sampler_sample(self.chain, ctx, idx))
        else:
            logits = self.logits(ctx, idx)
            token = self._apply(logits, with_grammar=False)
            if not self._grammar_allows(self.grammar, token):
                token = self._apply(logits, with_grammar=True)
            llama_cpp.llama_sampler_accept(self.grammar, token)
            llama_cpp.llama_sampler_accept(self.chain, token)
        if self._watch is not None:
            self._watch_token(token)
        return token

    def _watch_token(self, token: int) -> None:
        """A lazy grammar: once a trigger matches, hand the grammar the text from the match on.

        llama.cpp's own lazy grammar (``llama_sampler_init_grammar_lazy_patterns``) replays that text
        into the grammar unchecked, and a C++ exception escapes ``llama_sampler_accept`` (aborting the
        process) when the token that completed the trigger carries text the grammar rejects. Here every
        replayed token is checked first; text the grammar rejects leaves the output unconstrained and
        the watch goes on after it.
        """
        assert self._watch is not None
        start = self._watch.add(token, _piece(self.vocab, token))
        if start is None:
            return
        grammar = self._pending
        replay = self._watch.tokens_from(start, lambda text: _tokenize(self.vocab, text))
        self._buffers()
        for tok in replay:
            if not self._grammar_allows(grammar, tok):
                llama_cpp.llama_sampler_free(grammar)
                self._pending = self._new_grammar()
                self._watch.drop_until(start + 1)
                return
            llama_cpp.llama_sampler_accept(grammar, tok)
        self._pending = None
        self._watch = None
        self.grammar = grammar
        if self.chain is None:
            self.chain = build_sampler_chain(self.vocab, self.n_vocab, self.n_ctx, self.params)
        self.fast = None
        self._draw = None

    def logits(self, ctx: Any, idx: int) -> np.ndarray[Any, Any]:
        """The raw logits at batch index ``idx`` (a view; valid until the next decode)."""
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, idx), shape=(self.n_vocab,))

    def _apply(self, logits: np.ndarray[Any, Any], *, with_grammar: bool) -> int:
        self._data["id"] = self._ids
        self._data["logit"] = logits
        self._data["p"] = 0.0
        arr = self._arr
        arr.size, arr.selected, arr.sorted = self.n_vocab, -1, False
        if with_grammar:
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(arr))
        if not 0 <= arr.selected < arr.size:
            raise EngineError("the sampler selected no token")
        return int(self._data["id"][arr.selected])

    def _grammar_allows(self, grammar: Any, token: int) -> bool:
        self._one[0].id = token  # type: ignore[assignment]
        self._one[0].logit = 1.0
        self._one[0].p = 0.0
        self._one_arr.size, self._one_arr.selected, self._one_arr.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(self._one_arr))
        return bool(np.isfinite(self._one[0].logit))

    def free(self) -> None:
        for attr in ("chain", "grammar", "_pending"):
            sampler = getattr(self, attr, None)
            if sampler:
                llama_cpp.llama_sampler_free(sampler)
            setattr(self, attr, None)


class _TriggerWatch:
    """The generated text of a lazy-grammar sequence, searched for its trigger patterns."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        if not patterns:
            raise RequestError("a lazy grammar needs at least one trigger pattern", "tools")
        try:
            self.patterns = [re.compile(p.encode()) for p in patterns]
        except re.error as exc:
            raise RequestError(f"invalid grammar trigger pattern: {exc}", "tools") from exc
        self.text = bytearray()
        self.tokens: list[tuple[int, int, int]] = []  # (token, offset in text, length)
        self._base = 0  # text dropped from the front, so offsets stay comparable

    def add(self, token: int, piece: bytes) -> int | None:
        """Record a token; the offset where the grammar's text starts once a trigger matches."""
        self.tokens.append((token, self._base + len(self.text), len(piece)))
        self.text += piece
        for pattern in self.patterns:  # in order, like llama.cpp
            match = pattern.search(self.text)
            if match is not None:
                group = next((g for g in range(1, len(match.groups()) + 1) if match.group(g)), 0)
                return self._base + match.start(group)
        return None

    def tokens_from(self, start: int, tokenize: Callable[[bytes], list[int]]) -> list[int]:
        """Tokens that spell the text from ``start`` on: the generated ones where ``start`` falls on a
        token boundary, the tail of the token it cuts re-tokenized."""
        out: list[int] = []
        for token, offset, length in self.tokens:
            if offset + length <= start:
                continue
            if offset >= start:
                out.append(token)
            else:
                cut = start - self._base
                out.extend(tokenize(bytes(self.text[cut : offset - self._base + length])))
        return out

    def drop_until(self, offset: int) -> None:
        """Forget the text before ``offset`` (a trigger there led nowhere)."""
        cut = offset - self._base
        del self.text[:cut]
        self._base = offset
        self.tokens = [t for t in self.tokens if t[1] + t[2] > offset]


def _piece(vocab: Any, token: int) -> bytes:
    """A token's text as grammars see it (control tokens included)."""
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    return buf.raw[:n]


def _tokenize(vocab: Any, text: bytes) -> list[int]:
    cap = len(text) + 8
    buf = (llama_cpp.llama_token * cap)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, cap, False, True)
    if n < 0:
        cap = -n
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, cap, False, True)
    return list(buf[: max(n, 0)])


def token_logprobs(
    logits: np.ndarray[Any, Any], token: int, top: int
) -> tuple[float, list[tuple[int, float]]]:
    """Log-probability of ``token`` under softmax(``logits``), and the ``top`` likeliest (id, logprob).

    These are the model's probabilities before any sampler (temperature, top-k, grammar) reshapes them,
    as OpenAI reports them.
    """
    x = logits.astype(np.float64, copy=False)
    peak = float(x.max())
    lse = peak + float(np.log(np.exp(x - peak).sum()))
    best: list[tuple[int, float]] = []
    if top > 0:
        ids = np.argpartition(x, -top)[-top:]
        ids = ids[np.argsort(-x[ids], kind="stable")]
        best = [(int(i), float(x[i]) - lse) for i in ids]
    return float(x[token]) - lse, best


def check_logit_bias(logit_bias: dict[int, float], n_vocab: int) -> None:
    """Every ``logit_bias`` key must be a token of this model: a client mistake (400), raised before the
    request takes a slot, and again where the chain is built."""
    for token in logit_bias:
        if not 0 <= token < n_vocab:
            raise RequestError(
                f"logit_bias token {token} is not in the vocabulary (0..{n_vocab - 1})", "logit_bias"
            )


def build_sampler_chain(vocab: Any, n_vocab: int, n_ctx: int, params: SamplingParams) -> Any:
    """Return a new llama.cpp sampler chain (no grammar); the caller frees it with ``llama_sampler_free``."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    try:
        if params.logit_bias:
            check_logit_bias(params.logit_bias, n_vocab)
            biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias.items()):
                biases[i].token = token  # type: ignore[assignment]
                biases[i].bias = bias
            add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
        if params.presence_penalty or params.frequency_penalty or params.repeat_penalty != 1.0:
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab, n_ctx, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
                ),
            )
        if params.temperature <= 0.0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        if params.top_k > 0:
            add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        if params.temperature != 1.0:
            add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        add(chain, llama_cpp.llama_sampler_init_dist(ctypes.c_uint32(seed & 0xFFFFFFFF).value))
        return chain
    except BaseException:
        llama_cpp.llama_sampler_free(chain)
        raise


def add(chain: Any, sampler: Any) -> None:
    """Add a sampler to a chain, which takes ownership of it."""
    llama_cpp.llama_sampler_chain_add(chain, sampler)
