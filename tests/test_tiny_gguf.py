"""The tiny test model is a real GGUF that real llama.cpp loads quickly and generates from."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.tiny_gguf import tiny_vocab, truncate_copy, write_not_gguf, write_tiny_llama_gguf

llama_cpp = pytest.importorskip("llama_cpp")


def test_tiny_model_is_small_and_deterministic(tmp_path: Path) -> None:
    a = write_tiny_llama_gguf(tmp_path / "a.gguf", seed=7)
    b = write_tiny_llama_gguf(tmp_path / "b.gguf", seed=7)
    c = write_tiny_llama_gguf(tmp_path / "c.gguf", seed=8)

    assert a.read_bytes()[:4] == b"GGUF"
    assert a.stat().st_size < 1_000_000
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_vocab_is_byte_fallback_sentencepiece() -> None:
    tokens, scores, types = tiny_vocab()
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[3] == "<0x00>" and tokens[3 + 255] == "<0xFF>"
    assert "▁" in tokens
    assert len(tokens) == len(scores) == len(types)
    assert 256 + 3 < len(tokens) < 300


def test_llama_cpp_loads_and_generates(tmp_path: Path) -> None:
    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")

    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False)
    load_seconds = time.perf_counter() - start
    try:
        assert llm.n_vocab() == len(tiny_vocab()[0])
        assert llm.n_ctx() == 256
        assert llm.token_bos() == 1
        assert llm.token_eos() == 2

        tokens = llm.tokenize(b"hello")
        assert tokens[0] == 1  # BOS is added
        assert llm.detokenize(tokens[1:]).strip() == b"hello"  # byte fallback round-trips

        out = llm("hello", max_tokens=8, temperature=0.0)
        assert out["usage"]["completion_tokens"] >= 1
        assert isinstance(out["choices"][0]["text"], str)
    finally:
        llm.close()
    assert load_seconds < 5  # typically ~10-50 ms


def test_any_text_round_trips_through_the_tokenizer(tmp_path: Path) -> None:
    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False, vocab_only=True)
    try:
        text = "Grüße, 世界! 🚀\n\ttabs"
        tokens = llm.tokenize(text.encode(), add_bos=False)
        assert llm.detokenize(tokens).decode().lstrip() == text
    finally:
        llm.close()


def test_chat_template_is_stored(tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    path = write_tiny_llama_gguf(tmp_path / "chat.gguf", chat_template=template)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False, vocab_only=True)
    try:
        assert llm.metadata.get("tokenizer.chat_template") == template
    finally:
        llm.close()


def test_bad_file_helpers(tmp_path: Path) -> None:
    junk = write_not_gguf(tmp_path / "junk.bin", size=100)
    assert junk.stat().st_size == 100
    assert junk.read_bytes()[:4] != b"GGUF"

    src = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    cut = truncate_copy(src, tmp_path / "cut.gguf", 1000)
    assert cut.read_bytes() == src.read_bytes()[:1000]
