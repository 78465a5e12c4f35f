"""A tiny random-weight Hugging Face BERT folder (what sentence-transformers downloads), for the converter.

``write_tiny_bert_folder`` writes ``config.json``, ``model.safetensors`` (numpy, no torch),
``tokenizer.json`` (a WordPiece vocabulary of the BERT special tokens, lowercase letters, a few words
and their ``##`` continuations), ``modules.json`` and ``1_Pooling/config.json``. Converted, llama.cpp
loads it in milliseconds and embeds (meaningless) vectors. Keyword arguments change one part, for the
rejection tests.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

__all__ = ["TINY_BERT_WORDS", "write_tiny_bert_folder"]

TINY_BERT_WORDS = ["the", "cat", "sat", "on", "mat", "dog", "hello", "world", ".", ",", "!", "?"]
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab() -> list[str]:
    letters = list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase]
    return [*_SPECIAL, *TINY_BERT_WORDS, *letters, "##s", "##ing"]


def write_tiny_bert_folder(
    folder: Path,
    *,
    hidden: int = 16,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    config: dict[str, Any] | None = None,
    pooling: dict[str, bool] | None = None,
    drop: tuple[str, ...] = (),
    extra: dict[str, np.ndarray[Any, Any]] | None = None,
    lowercase: bool = True,
    tokenizer_model: str = "WordPiece",
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    ff = hidden * 4
    cfg: dict[str, Any] = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": hidden,
        "intermediate_size": ff,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "vocab_size": len(vocab),
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
        "_name_or_path": "tests/tiny-bert",
    }
    cfg.update(config or {})
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")

    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray[Any, Any]:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    tensors: dict[str, np.ndarray[Any, Any]] = {
        "embeddings.word_embeddings.weight": w(len(vocab), hidden),
        "embeddings.position_embeddings.weight": w(64, hidden),
        "embeddings.token_type_embeddings.weight": w(2, hidden),
        "embeddings.LayerNorm.weight": np.ones(hidden, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(hidden, np.float32),
        "embeddings.position_ids": np.arange(64, dtype=np.int64)[None, :],
        "pooler.dense.weight": w(hidden, hidden),
        "pooler.dense.bias": w(hidden),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for part in ("query", "key", "value"):
            tensors[f"{p}attention.self.{part}.weight"] = w(hidden, hidden)
            tensors[f"{p}attention.self.{part}.bias"] = w(hidden)
        tensors[f"{p}attention.output.dense.weight"] = w(hidden, hidden)
        tensors[f"{p}attention.output.dense.bias"] = w(hidden)
        tensors[f"{p}attention.output.LayerNorm.weight"] = np.ones(hidden, np.float32)
        tensors[f"{p}attention.output.LayerNorm.bias"] = np.zeros(hidden, np.float32)
        tensors[f"{p}intermediate.dense.weight"] = w(ff, hidden)
        tensors[f"{p}intermediate.dense.bias"] = w(ff)
        tensors[f"{p}output.dense.weight"] = w(hidden, ff)
        tensors[f"{p}output.dense.bias"] = w(hidden)
        tensors[f"{p}output.LayerNorm.weight"] = np.ones(hidden, np.float32)
        tensors[f"{p}output.LayerNorm.bias"] = np.zeros(hidden, np.float32)
    for name in drop:
        tensors.pop(name)
    tensors.update(extra or {})
    save_file(tensors, str(folder / "model.safetensors"))

    special = {t: vocab.index(t) for t in _SPECIAL}
    tokenizer = {
        "version": "1.0",
        "added_tokens": [
            {"id": i, "content": t, "special": True, "single_word": False, "lstrip": False, "rstrip": False}
            for t, i in special.items()
        ],
        "normalizer": {
            "type": "BertNormalizer",
            "clean_text": True,
            "handle_chinese_chars": True,
            "strip_accents": None,
            "lowercase": lowercase,
        },
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
            ],
            "pair": [],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [special["[CLS]"]], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [special["[SEP]"]], "tokens": ["[SEP]"]},
            },
        },
        "model": {
            "type": tokenizer_model,
            "unk_token": "[UNK]",
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": {t: i for i, t in enumerate(vocab)},
        },
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": lowercase, **{k.strip("[]").lower() + "_token": k for k in _SPECIAL}}),
        encoding="utf-8",
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pool = pooling if pooling is not None else {"pooling_mode_mean_tokens": True}
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": hidden, **pool}), encoding="utf-8"
    )
    return folder
