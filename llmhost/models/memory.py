"""How much memory a model will take once llama.cpp loads it, from its GGUF metadata alone.

The estimate mirrors what llama.cpp 0.3.36 (as driven by :class:`~llmhost.engine.runner.LlamaRunner`)
allocates, in three parts:

``weights_bytes``
    The file size (tensor data plus metadata: llama.cpp maps or copies all of it) plus ~224 bytes per
    vocabulary entry for the tokenizer's in-memory tables (measured: loading Gemma 3 270M adds 54 MiB
    of heap for its 262,144-token vocabulary and 13 MiB of CPU "repack" weight copies). Repacked copies
    are not modelled further: on AVX2/NEON builds a Q4_0 model may get most of its weights repacked,
    and the mapped originals then linger as reclaimable page cache.
``kv_cache_bytes``
    K and V for every attention layer and every cell:
    ``n_layer x n_cells x head_count_kv x (key_length + value_length) x kv_type_bytes``.
    ``n_cells`` is ``n_ctx_total`` padded as llama.cpp pads it (each sequence's share to a multiple of
    256). Sliding-window layers (Gemma 2/3, Cohere 2, gpt-oss, Llama 4 ...) keep only
    ``n_swa + n_ubatch`` cells per sequence unless ``swa_full`` (llmhost's runner sets it, so prefixes
    stay reusable).
``compute_bytes``
    llama.cpp's compute buffer for one micro-batch (``n_ubatch = min(n_batch, 512)`` tokens) with flash
    attention, which llama.cpp's default ``auto`` turns on for the CPU and CUDA backends (without it
    the KQ scores, ``4 x n_ctx x n_ubatch x n_head`` bytes, would dominate):
    activations ``4 x n_ubatch x (2*n_ff + 2*n_embd + 2*n_head*key_length)``; KQ masks of
    ``2.25 x n_cells_per_seq x n_ubatch`` bytes (an f16 mask plus flash-attention scratch that grows
    with it; a second, window-sized one with sliding-window layers); logits ``4 x n_vocab x n_outputs``;
    plus the context's output buffer (``4 x n_vocab x n_seq``, the rows llmhost requests), llmhost's
    per-sequence sampler arrays (~24 bytes x n_vocab each) and 5 MiB of fixed overhead (graph
    metadata, thread pool, native code paged in by the first decode).

``n_outputs`` is the most logit rows one decode step produces. llmhost's runner samples at most one token
per sequence per step, so it defaults to ``n_seq``. llama.cpp reserves room for ``n_outputs_max`` rows,
which is ``n_batch`` unless the context sets it: with Gemma 3's 262k vocabulary and ``n_batch`` 512 that
is 512 MiB of logits per context, real VRAM on a GPU (on a CPU the untouched pages stay virtual). Pass
``n_outputs=n_batch`` to budget for a context created without ``n_outputs_max``.

Validated against the VmRSS growth of a real ``LlamaRunner`` after filling a slot's context (2-core
AVX2 CPU): Gemma 3 270M from 1x4096 to 8x2048 slots x tokens, +1% to +5%; the tiny test model
(a few MiB, mostly fixed overhead), -1% to +16%. See tests/models/test_memory.py. The embeddings
context that the runner creates on first use is not included.

Recurrent (Mamba, RWKV) and MLA (DeepSeek) state is not modelled: their KV estimate is the attention
formula above, or 0 without attention metadata.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmhost.models.gguf_check import GGUFInfo

__all__ = [
    "MemoryEstimate",
    "estimate_embedding_memory",
    "estimate_memory",
    "max_ctx_per_slot",
    "max_slots",
    "read_vocab_size",
]

MiB = 1 << 20
VOCAB_TABLE_BYTES_PER_TOKEN = 224
SAMPLER_BYTES_PER_TOKEN = 24
FIXED_OVERHEAD_BYTES = 5 * MiB
MASK_BYTES_PER_ELEMENT = 2.25  # the f16 KQ mask, plus flash-attention scratch that grows with it
DEFAULT_VOCAB_SIZE = 256_000  # when the file does not say: large, so the estimate errs high
MAX_UBATCH = 512  # llmhost's runner: n_ubatch = min(n_batch, 512)
CTX_PAD = 256  # llama.cpp pads each sequence's context (and the SWA cache) to a multiple of this

# Sliding-window layer patterns llama.cpp hard-codes per architecture when the file has no
# `{arch}.attention.sliding_window_pattern`: (period, dense_first). One layer per period is full
# attention: the last of each period, or the first with dense_first.
_SWA_PATTERNS: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma3n": (5, False),
    "gemma-embedding": (6, False),
    "cohere2": (4, False),
    "gpt-oss": (2, False),
    "llama4": (4, False),
    "exaone4": (4, False),
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a loaded model will take: weights, KV cache and compute buffers."""

    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes


def _int(info: GGUFInfo, key: str) -> int | None:
    value = info.metadata.get(f"{info.architecture}.{key}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


# ----- vocabulary size from the GGUF header -------------------------------------------------------------

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def read_vocab_size(path: Path | str) -> int | None:
    """The length of ``tokenizer.ggml.tokens``, read by stepping over the metadata; None if not found.

    Reads only up to that key and never the tokens themselves (the key/value section is walked with
    seeks, so a 262k-token vocabulary costs nothing).
    """
    try:
        with open(path, "rb") as f:
            header = f.read(24)
            if len(header) < 24 or header[:4] != b"GGUF":
                return None
            order = "<" if struct.unpack_from("<I", header, 4)[0] & 0xFFFF else ">"
            (kv_count,) = struct.unpack_from(order + "Q", header, 16)
            u32, u64 = struct.Struct(order + "I"), struct.Struct(order + "Q")

            def read(s: struct.Struct) -> int:
                data = f.read(s.size)
                if len(data) < s.size:
                    raise EOFError
                return int(s.unpack(data)[0])

            def skip_value(vtype: int) -> None:
                if vtype == _STRING:
                    f.seek(read(u64), 1)
                elif vtype == _ARRAY:
                    itype, count = read(u32), read(u64)
                    if itype in _SCALAR_SIZES:
                        f.seek(_SCALAR_SIZES[itype] * count, 1)
                    else:
                        for _ in range(count):
                            skip_value(itype)
                elif vtype in _SCALAR_SIZES:
                    f.seek(_SCALAR_SIZES[vtype], 1)
                else:
                    raise ValueError(f"unknown GGUF value type {vtype}")

            for _ in range(min(kv_count, 100_000)):
                key = f.read(read(u64))
                vtype = read(u32)
                if key == b"tokenizer.ggml.tokens" and vtype == _ARRAY:
                    read(u32)
                    return read(u64)
                skip_value(vtype)
    except (OSError, EOFError, ValueError, struct.error):
        return None
    return None


def _vocab_size(info: GGUFInfo) -> int:
    return _int(info, "vocab_size") or read_vocab_size(info.path) or DEFAULT_VOCAB_SIZE


# ----- the estimate -------------------------------------------------------------------------------------


def _full_attention_layers(info: GGUFInfo, n_layer: int) -> int:
    """How many of ``n_layer`` layers attend over the whole context (the rest use a sliding window)."""
    if not _int(info, "attention.sliding_window"):
        return n_layer
    period = _int(info, "attention.sliding_window_pattern")
    dense_first = False
    if period is None:
        if info.architecture not in _SWA_PATTERNS:
            return n_layer  # unknown pattern: count every layer as full, so the estimate errs high
        period, dense_first = _SWA_PATTERNS[info.architecture]
    if period <= 0:
        return 0
    if dense_first:
        return sum(1 for il in range(n_layer) if il % period == 0)
    return sum(1 for il in range(n_layer) if il % period == period - 1)


def estimate_memory(
    info: GGUFInfo,
    *,
    n_ctx_total: int,
    n_seq: int = 1,
    kv_type_bytes: float = 2.0,
    swa_full: bool = True,
    n_batch: int = 512,
    n_outputs: int | None = None,
    n_vocab: int | None = None,
) -> MemoryEstimate:
    """Estimate the memory of ``info``'s model with a context of ``n_ctx_total`` cells for ``n_seq``
    sequences (llmhost: ``n_ctx x n_parallel`` and ``n_parallel``).

    ``kv_type_bytes`` is bytes per cached element: 2 for f16 (llama.cpp's default), 34/32 for q8_0,
    18/32 for q4_0. ``n_outputs`` defaults to ``n_seq`` (see the module docstring); ``n_vocab`` to the
    file's vocabulary size.
    """
    if n_ctx_total < 1 or n_seq < 1:
        raise ValueError("n_ctx_total and n_seq must be at least 1")
    vocab = n_vocab if n_vocab is not None else _vocab_size(info)
    n_ubatch = max(1, min(n_batch, MAX_UBATCH))
    outputs = max(1, n_outputs if n_outputs is not None else n_seq)
    n_embd = info.embedding_length or _int(info, "embedding_length") or 0
    n_layer = info.block_count or 0
    n_head = _int(info, "attention.head_count") or 0
    n_head_kv = info.head_count_kv or n_head
    key_length = _int(info, "attention.key_length") or (n_embd // n_head if n_head else 0)
    value_length = _int(info, "attention.value_length") or key_length
    n_ff = _int(info, "feed_forward_length") or 4 * n_embd

    # Cells, as llama.cpp sizes them: each sequence's share padded to 256.
    n_ctx_seq = _pad(max(1, -(-_pad(n_ctx_total, CTX_PAD) // n_seq)), CTX_PAD)
    cells_full = n_ctx_seq * n_seq
    n_full = _full_attention_layers(info, n_layer)
    n_swa_layers = n_layer - n_full
    if swa_full or n_swa_layers == 0:
        cells_swa = cells_full
    else:
        n_swa = _int(info, "attention.sliding_window") or n_ctx_seq
        cells_swa = n_seq * _pad(min(n_ctx_seq, n_swa + n_ubatch), CTX_PAD)
    per_cell = n_head_kv * (key_length + value_length) * kv_type_bytes
    kv = math.ceil(per_cell * (n_full * cells_full + n_swa_layers * cells_swa))

    weights = info.size_bytes + VOCAB_TABLE_BYTES_PER_TOKEN * vocab

    activations = 4 * n_ubatch * (2 * n_ff + 2 * n_embd + 2 * n_head * key_length)
    mask_cells = n_ctx_seq + (cells_swa // n_seq if n_swa_layers else 0)  # full mask + SWA mask
    masks = math.ceil(MASK_BYTES_PER_ELEMENT * mask_cells * n_ubatch)
    logits = 4 * vocab * outputs
    output_buffer = 4 * vocab * min(outputs, n_seq)  # grows to the rows actually requested
    samplers = SAMPLER_BYTES_PER_TOKEN * vocab * n_seq
    compute = activations + masks + logits + output_buffer + samplers + FIXED_OVERHEAD_BYTES
    return MemoryEstimate(weights_bytes=weights, kv_cache_bytes=kv, compute_bytes=compute)


def estimate_embedding_memory(info: GGUFInfo, *, n_tokens: int) -> MemoryEstimate:
    """Estimate an embedding-only model (BERT): weights and one embeddings context of ``n_tokens``
    tokens a decode (:class:`~llmhost.engine.embedding.EncoderRunner`), with no KV cache. The KQ
    scores are counted in full (``4 x n_tokens^2 x n_head``), as without flash attention."""
    vocab = _vocab_size(info)
    n_embd = info.embedding_length or _int(info, "embedding_length") or 0
    n_head = _int(info, "attention.head_count") or 0
    n_ff = _int(info, "feed_forward_length") or 4 * n_embd
    weights = info.size_bytes + VOCAB_TABLE_BYTES_PER_TOKEN * vocab
    activations = 4 * n_tokens * (2 * n_ff + 4 * n_embd)
    scores = 4 * n_tokens * n_tokens * n_head
    return MemoryEstimate(weights, 0, activations + scores + FIXED_OVERHEAD_BYTES)


def max_slots(
    info: GGUFInfo,
    *,
    budget_bytes: int,
    n_ctx_slot: int,
    upper: int = 256,
    kv_type_bytes: float = 2.0,
    swa_full: bool = True,
    n_batch: int = 512,
    n_outputs: int | None = None,
) -> int:
    """The most sequence slots (up to ``upper``) of ``n_ctx_slot`` tokens each whose estimate fits
    ``budget_bytes``; 0 when not even one does. The other arguments are :func:`estimate_memory`'s.
    """
    vocab = _vocab_size(info)

    def fits(n: int) -> bool:
        est = estimate_memory(
            info,
            n_ctx_total=n_ctx_slot * n,
            n_seq=n,
            kv_type_bytes=kv_type_bytes,
            swa_full=swa_full,
            n_batch=n_batch,
            n_outputs=n_outputs,
            n_vocab=vocab,
        )
        return est.total_bytes <= budget_bytes

    return _largest_fitting(fits, upper)


def max_ctx_per_slot(
    info: GGUFInfo,
    *,
    budget_bytes: int,
    n_seq: int,
    upper: int | None = None,
    kv_type_bytes: float = 2.0,
    swa_full: bool = True,
    n_batch: int = 512,
    n_outputs: int | None = None,
) -> int:
    """The longest context per slot (a multiple of 256, up to ``upper``: default the model's trained
    context, else 131072) for ``n_seq`` slots whose estimate fits ``budget_bytes``; 0 if 256 does not.
    """
    vocab = _vocab_size(info)
    limit = upper or info.context_length or 131_072

    def fits(n_ctx: int) -> bool:
        est = estimate_memory(
            info,
            n_ctx_total=n_ctx * n_seq,
            n_seq=n_seq,
            kv_type_bytes=kv_type_bytes,
            swa_full=swa_full,
            n_batch=n_batch,
            n_outputs=n_outputs,
            n_vocab=vocab,
        )
        return est.total_bytes <= budget_bytes

    steps = max(1, limit // CTX_PAD)
    return _largest_fitting(lambda k: fits(k * CTX_PAD), steps) * CTX_PAD


def _largest_fitting(fits: Callable[[int], bool], upper: int) -> int:
    """The largest n in 1..upper with ``fits(n)``, or 0; memory grows with n, so binary search."""
    if not fits(1):
        return 0
    if fits(upper):
        return upper
    lo, hi = 1, upper
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
