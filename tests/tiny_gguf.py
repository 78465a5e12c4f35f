"""Tiny, real GGUF files for tests.

``write_tiny_llama_gguf`` writes a random-weight **llama-architecture** model (a few hundred KB) that
real llama.cpp loads in milliseconds and generates (gibberish) from, so engine and API tests exercise
the real native code path without a real model. Its vocabulary is a byte-fallback SentencePiece one:
``<unk>``, ``<s>``, ``</s>``, the 256 byte tokens ``<0x00>``..``<0xFF>`` and a few normal pieces, so
every string tokenizes and every generated token detokenizes.

``write_not_gguf`` and ``truncate_copy`` make broken files for the rejection tests; ``write_vocab_gguf``
writes a small file whose tokenizer arrays (and extra metadata) a test chooses, for the checks that
compare them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np

__all__ = [
    "TINY_NORMAL_PIECES",
    "tiny_vocab",
    "truncate_copy",
    "write_not_gguf",
    "write_tiny_llama_gguf",
    "write_vocab_gguf",
]

# Normal (non-byte) pieces after the byte tokens; "▁" is SentencePiece's word-boundary marker.
TINY_NORMAL_PIECES: tuple[str, ...] = ("▁", "▁the", "▁hello", "e", "t", "a")


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of the tiny byte-fallback SentencePiece vocabulary."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    tokens += list(TINY_NORMAL_PIECES)
    types += [gguf.TokenType.NORMAL] * len(TINY_NORMAL_PIECES)
    # SentencePiece scores: control/byte tokens 0, normal pieces negative log-probs (longer = better).
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(TINY_NORMAL_PIECES))]
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama_gguf(
    path: Path,
    *,
    seed: int = 0,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 4,
    n_ff: int = 128,
    context_length: int = 2048,
    chat_template: str | None = None,
    name: str = "tiny-llama",
) -> Path:
    """Write a tiny random-weight llama GGUF (all F32) to ``path`` and return ``path``."""
    if n_embd % n_head != 0 or n_head % n_head_kv != 0:
        raise ValueError("n_embd must be divisible by n_head, and n_head by n_head_kv")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens, scores, types = tiny_vocab()
    n_vocab = len(tokens)
    head_dim = n_embd // n_head
    n_embd_kv = head_dim * n_head_kv

    def weight(*shape: int) -> np.ndarray:
        # numpy shape is (rows, cols) = ggml (ne1, ne0): (out_features, in_features)
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def norm() -> np.ndarray:
        return np.ones(n_embd, dtype=np.float32)

    writer = gguf.GGUFWriter(path, "llama")
    try:
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(context_length)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(10000.0)
        writer.add_vocab_size(n_vocab)

        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        if chat_template is not None:
            writer.add_chat_template(chat_template)

        writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
        for i in range(n_layer):
            writer.add_tensor(f"blk.{i}.attn_norm.weight", norm())
            writer.add_tensor(f"blk.{i}.attn_q.weight", weight(n_embd, n_embd))
            writer.add_tensor(f"blk.{i}.attn_k.weight", weight(n_embd_kv, n_embd))
            writer.add_tensor(f"blk.{i}.attn_v.weight", weight(n_embd_kv, n_embd))
            writer.add_tensor(f"blk.{i}.attn_output.weight", weight(n_embd, n_embd))
            writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
            writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
            writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
            writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
        writer.add_tensor("output_norm.weight", norm())
        writer.add_tensor("output.weight", weight(n_vocab, n_embd))

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def write_not_gguf(path: Path, size: int = 4096, seed: int = 0) -> Path:
    """Write ``size`` random bytes (never starting with the GGUF magic) to ``path``."""
    data = bytearray(np.random.default_rng(seed).bytes(size))
    if data[:4] == b"GGUF":
        data[0] = 0
    Path(path).write_bytes(bytes(data))
    return Path(path)


def truncate_copy(src: Path, dst: Path, keep_bytes: int) -> Path:
    """Copy the first ``keep_bytes`` bytes of ``src`` to ``dst`` (a truncated download)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        remaining = keep_bytes
        while remaining > 0:
            chunk = fin.read(min(remaining, 1 << 20))
            if not chunk:
                break
            fout.write(chunk)
            remaining -= len(chunk)
    return Path(dst)


_TINY = object()  # "the tiny vocabulary's own array" (None means "leave the key out")


def write_vocab_gguf(
    path: Path,
    *,
    tokens: object = _TINY,
    scores: object = _TINY,
    token_types: object = _TINY,
    merges: Sequence[Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a small llama-architecture GGUF (one F32 tensor) with the given tokenizer arrays.

    Each array defaults to the tiny vocabulary's (:func:`tiny_vocab`); ``None`` leaves it out. Arrays
    keep the element type the values have (floats: FLOAT32, ints: INT32, strings: STRING, lists: nested
    arrays), so a test can give a key the wrong type or length. ``extra`` adds metadata the same way.
    Not meant for llama.cpp: it has no weights to run, only a header for ``inspect_gguf`` to judge.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tiny_tokens, tiny_scores, tiny_types = tiny_vocab()
    arrays: dict[str, Any] = {
        "tokenizer.ggml.tokens": tiny_tokens if tokens is _TINY else tokens,
        "tokenizer.ggml.scores": tiny_scores if scores is _TINY else scores,
        "tokenizer.ggml.token_type": tiny_types if token_types is _TINY else token_types,
        "tokenizer.ggml.merges": merges,
    }
    writer = gguf.GGUFWriter(path, "llama")
    try:
        writer.add_name("vocab-test")
        writer.add_tokenizer_model("gpt2" if merges is not None else "llama")
        for key, values in {**arrays, **(extra or {})}.items():
            if values is None:
                continue
            if isinstance(values, Sequence) and not isinstance(values, str):
                writer.add_key_value(key, list(values), gguf.GGUFValueType.ARRAY)
            else:
                writer.add_key_value(key, values, gguf.GGUFValueType.get_type(values))
        writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path
