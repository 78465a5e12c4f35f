"""Embeddings on llama.cpp: all-MiniLM-L6-v2 converted by llmhost gives sentence-transformers' vectors
(the committed reference, written by bench/embed_compare.py), token for token and cosine >= 0.99; packed
decodes (many inputs per llama_decode) give the vectors of one-at-a-time decodes, in input order; and
inputs it cannot embed are a 400, not a crash."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmhost.engine.embedding import MAX_SEQUENCES, EncoderRunner
from llmhost.errors import NotReadyError, RequestError

REFERENCE = Path(__file__).parent.parent / "data" / "minilm_reference.json"


@pytest.fixture(scope="module")
def runner(minilm_gguf: Path) -> Iterator[EncoderRunner]:
    r = EncoderRunner(minilm_gguf, n_threads=1, n_gpu_layers=0)
    yield r
    r.close()


def reference() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(REFERENCE.read_text(encoding="utf-8"))["items"]
    return items


def test_vectors_match_sentence_transformers(runner: EncoderRunner) -> None:
    items = reference()
    assert len(items) >= 16
    tokens = [runner.vocab.tokenize(item["text"], add_special=True) for item in items]
    for item, ids in zip(items, tokens, strict=True):
        assert ids == item["input_ids"], item["text"]  # WordPiece: lowercasing, accents, CJK, [UNK]
    vectors = runner.embed_many(tokens)
    for item, vector in zip(items, vectors, strict=True):
        cosine = float(np.dot(vector, item["vector"]) / np.linalg.norm(item["vector"]))
        assert cosine >= 0.99, (item["text"], cosine)
        assert np.linalg.norm(vector) == pytest.approx(1.0)


def test_packed_decodes_give_the_vectors_of_single_decodes_in_order(runner: EncoderRunner) -> None:
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'the stock market'}" for i in range(70)]
    tokens = [runner.vocab.tokenize(t, add_special=True) for t in texts]
    assert len(tokens) > 2 * MAX_SEQUENCES  # several packed decodes
    packed = np.array(runner.embed_many(tokens))
    single = np.array([runner.embed_many([t])[0] for t in tokens[:8]])
    # The same up to float rounding (a bigger batch takes other matmul kernels).
    assert np.min(np.sum(packed[:8] * single, axis=1)) > 0.9999
    assert not np.allclose(packed[0], packed[1])


def test_similar_sentences_are_closer_than_unrelated_ones(runner: EncoderRunner) -> None:
    a, b, c = runner.embed_many(
        [
            runner.vocab.tokenize(t, add_special=True)
            for t in ("A man is eating food.", "A man is eating a piece of bread.", "The stock market fell.")
        ]
    )
    assert np.dot(a, b) > np.dot(a, c) + 0.3


def test_inputs_it_cannot_embed_are_request_errors(runner: EncoderRunner) -> None:
    with pytest.raises(RequestError, match="must not be empty"):
        runner.embed_many([[]])
    too_long = [101] + [1996] * 600 + [102]
    with pytest.raises(RequestError, match="more than the 512 this model embeds at once"):
        runner.embed_many([too_long])


def test_an_unloaded_encoder_refuses_new_work(minilm_gguf: Path) -> None:
    r = EncoderRunner(minilm_gguf, n_threads=1, n_gpu_layers=0)
    r.close()
    r.close()  # idempotent
    with pytest.raises(NotReadyError):
        r.embed_many([[101, 102]])
