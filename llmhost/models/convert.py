"""Convert a Hugging Face BERT-family folder (safetensors + ``tokenizer.json``) into a BERT GGUF.

What llama.cpp's ``convert_hf_to_gguf.py`` does for ``BertModel``, without torch: the weights are read
with ``safetensors``' numpy loader and written with ``gguf``. The folder needs ``config.json``
(``architectures`` naming a BERT model), ``model.safetensors`` (or its shards) and ``tokenizer.json``
with a WordPiece model; a sentence-transformers folder adds its pooling (``1_Pooling/config.json``),
which becomes the GGUF's ``bert.pooling_type``. Matrices are stored as F16 (as llama.cpp's converter
does by default), vectors (biases, norms) as F32. The output is deterministic: converting the same
folder twice gives the same bytes, so its sha256 can be checked.

Only what llama.cpp's BERT runs correctly is accepted: llama.cpp's WordPiece tokenizer lowercases and
strips accents, so cased models are refused, and so are pooling modes llama.cpp has no type for (max).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from llmhost.errors import InvalidModelFileError

__all__ = ["BERT_ARCHITECTURES", "ConvertedModel", "convert_hf_folder", "is_hf_folder"]

BERT_ARCHITECTURES = frozenset({"BertModel", "BertForMaskedLM", "BertForPreTraining"})
"""``config.json`` architectures the converter accepts."""

# Tensors an embedding model does not use (the pooler, the masked-LM and next-sentence heads).
_SKIPPED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids")

# Kept in F32 even though they are matrices: llama.cpp adds a row of the token-type embeddings to F32
# activations directly (an F16 row aborts the process), and converts position embeddings the same way.
_F32_TENSORS = frozenset({"token_types.weight", "position_embd.weight"})

_POOLING = {
    "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
    "pooling_mode_cls_token": gguf.PoolingType.CLS,
    "pooling_mode_lasttoken": gguf.PoolingType.LAST,
}


# Those llama.cpp reads (``cls`` is BERT's BOS, which SpecialVocab finds in the post-processor).
_SPECIAL_TOKENS = ("bos", "eos", "unk", "sep", "pad", "mask")


@dataclass(frozen=True, slots=True)
class ConvertedModel:
    path: Path
    name: str
    pooling: str
    n_tensors: int


def is_hf_folder(path: Path) -> bool:
    """Whether ``path`` looks like a Hugging Face model folder (a directory with ``config.json``)."""
    return path.is_dir() and (path / "config.json").is_file()


def _bad(folder: Path, why: str) -> InvalidModelFileError:
    return InvalidModelFileError(f"cannot convert {folder}: {why}")


def _read_json(folder: Path, name: str, *, required: bool = True) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        if required:
            raise _bad(folder, f"{name} is missing")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(folder, f"{name} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise _bad(folder, f"{name} is not a JSON object")
    return value


def _hparam(folder: Path, config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise _bad(folder, f"config.json has no positive integer {key!r}")
    return value


def _pooling(folder: Path) -> gguf.PoolingType:
    """The sentence-transformers pooling, or mean pooling (what BERT sentence embeddings use)."""
    modules = folder / "modules.json"
    pooling_dir = "1_Pooling"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            if isinstance(module, dict) and str(module.get("type", "")).endswith(".Pooling"):
                pooling_dir = str(module.get("path") or pooling_dir)
    config = _read_json(folder, f"{pooling_dir}/config.json", required=False)
    chosen = [key for key, on in config.items() if key.startswith("pooling_mode_") and on is True]
    if not chosen:
        return gguf.PoolingType.MEAN
    if len(chosen) > 1 or chosen[0] not in _POOLING:
        raise _bad(
            folder, f"its pooling ({', '.join(chosen)}) is not one llama.cpp supports (mean, cls, last)"
        )
    return _POOLING[chosen[0]]


def _vocab(folder: Path, n_vocab: int) -> tuple[list[str], list[int]]:
    """The WordPiece vocabulary in llama.cpp's form: a word start gets a phantom space (U+2581),
    a continuation (``##x``) loses its prefix, and control tokens stay as they are."""
    tokenizer = _read_json(folder, "tokenizer.json")
    model = tokenizer.get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise _bad(folder, "tokenizer.json has no WordPiece vocabulary (BERT models use one)")
    normalizer = tokenizer.get("normalizer") or {}
    if normalizer.get("type") == "BertNormalizer" and normalizer.get("lowercase") is False:
        raise _bad(folder, "it is a cased model, and llama.cpp's WordPiece tokenizer lowercases all text")
    by_id: dict[int, str] = {}
    for text, token_id in model["vocab"].items():
        if not isinstance(token_id, int) or not 0 <= token_id < max(n_vocab, len(model["vocab"])):
            raise _bad(folder, f"tokenizer.json gives token {text!r} the id {token_id!r}")
        by_id[token_id] = text
    control = {
        int(t["id"]): str(t["content"])
        for t in tokenizer.get("added_tokens") or []
        if isinstance(t, dict) and t.get("special") and isinstance(t.get("id"), int)
    }
    size = max(n_vocab, max(by_id, default=-1) + 1, max(control, default=-1) + 1)
    tokens: list[str] = []
    types: list[int] = []
    for i in range(size):
        if i in control:
            tokens.append(control[i])
            types.append(gguf.TokenType.CONTROL)
        elif i in by_id:
            text = by_id[i]
            tokens.append(text[2:] if text.startswith("##") else "\u2581" + text)
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    return tokens, types


def _weight_files(folder: Path) -> list[Path]:
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = _read_json(folder, "model.safetensors.index.json", required=False)
    shards = sorted(set((index.get("weight_map") or {}).values()))
    if not shards:
        raise _bad(folder, "model.safetensors is missing (only safetensors weights can be converted)")
    paths = [folder / str(s) for s in shards]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise _bad(folder, f"weight shard(s) missing: {', '.join(missing)}")
    return paths


def _tensors(folder: Path, n_layers: int) -> list[tuple[str, np.ndarray[Any, Any]]]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layers)
    out: dict[str, np.ndarray[Any, Any]] = {}
    for path in _weight_files(folder):
        try:
            weights = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise _bad(folder, f"{path.name} is not a readable safetensors file ({exc})") from exc
        for hf_name, array in weights.items():
            name = hf_name.removeprefix("bert.")
            name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
            if name.startswith(_SKIPPED_PREFIXES):
                continue
            target = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise _bad(folder, f"it has a tensor llama.cpp's BERT does not know: {hf_name}")
            if not np.issubdtype(array.dtype, np.floating):
                raise _bad(folder, f"tensor {hf_name} is {array.dtype}, not floating point")
            dtype = np.float16 if array.ndim >= 2 and target not in _F32_TENSORS else np.float32
            out[target] = np.ascontiguousarray(array.astype(dtype))
    required = ["token_embd.weight", "position_embd.weight", "token_embd_norm.weight"]
    required += [f"blk.{i}.attn_q.weight" for i in range(n_layers)]
    missing = [n for n in required if n not in out]
    if missing:
        raise _bad(folder, f"tensor(s) missing: {', '.join(missing[:5])}")
    return sorted(out.items())


def convert_hf_folder(folder: Path, dest: Path, *, name: str | None = None) -> ConvertedModel:
    """Write ``folder``'s BERT model as a GGUF at ``dest`` (replaced atomically); return what was written.

    Raises :class:`InvalidModelFileError` (a 400 on the API, a one-line CLI error) when the folder is
    not a BERT model llama.cpp can run.
    """
    folder = Path(folder)
    if not is_hf_folder(folder):
        raise _bad(folder, "it is not a Hugging Face model folder (no config.json)")
    config = _read_json(folder, "config.json")
    archs = [str(a) for a in config.get("architectures") or []]
    if not archs or archs[0] not in BERT_ARCHITECTURES:
        supported = ", ".join(sorted(BERT_ARCHITECTURES))
        raise _bad(folder, f"architecture {archs[0] if archs else 'unknown'} is not supported ({supported})")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise _bad(folder, "only absolute position embeddings are supported")
    n_layers = _hparam(folder, config, "num_hidden_layers")
    tokens, types = _vocab(folder, _hparam(folder, config, "vocab_size"))
    pooling = _pooling(folder)
    tensors = _tensors(folder, n_layers)
    model_name = name or str(config.get("_name_or_path") or folder.name).rsplit("/", 1)[-1]

    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    try:
        writer.add_name(model_name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_context_length(_hparam(folder, config, "max_position_embeddings"))
        writer.add_embedding_length(_hparam(folder, config, "hidden_size"))
        writer.add_feed_forward_length(_hparam(folder, config, "intermediate_size"))
        writer.add_block_count(n_layers)
        writer.add_head_count(_hparam(folder, config, "num_attention_heads"))
        writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-12)))
        writer.add_causal_attention(False)
        writer.add_pooling_type(pooling)
        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_type_count(int(config.get("type_vocab_size", 1)))
        gguf.SpecialVocab(folder, n_vocab=len(tokens), special_token_types=_SPECIAL_TOKENS).add_to_gguf(
            writer, quiet=True
        )
        for tensor_name, array in tensors:
            writer.add_tensor(tensor_name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, dest)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return ConvertedModel(dest, model_name, pooling.name.lower(), len(tensors))
