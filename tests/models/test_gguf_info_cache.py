"""The per-digest cache of GGUF summaries used when loading store blobs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmhost.models import gguf_check
from llmhost.models.gguf_check import inspect_gguf, inspect_gguf_cached

DIGEST = "sha256:" + "ab" * 32


def test_second_read_comes_from_the_cache(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = inspect_gguf_cached(tiny_model_path, DIGEST, cache)
    assert first == inspect_gguf(tiny_model_path)

    def fail(path: object) -> None:
        raise AssertionError("the file was read again")

    monkeypatch.setattr(gguf_check, "inspect_gguf", fail)
    again = inspect_gguf_cached(tiny_model_path, DIGEST, cache)
    assert again == first and dict(again.metadata) == dict(first.metadata)


def test_a_changed_size_or_a_broken_entry_is_recomputed(tiny_model_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    inspect_gguf_cached(tiny_model_path, DIGEST, cache)
    [entry] = cache.iterdir()
    entry.write_text("{not json")
    assert inspect_gguf_cached(tiny_model_path, DIGEST, cache) == inspect_gguf(tiny_model_path)

    grown = tmp_path / "grown.gguf"
    shutil.copyfile(tiny_model_path, grown)
    with grown.open("ab") as f:
        f.write(b"\0" * 64)
    info = inspect_gguf_cached(grown, DIGEST, cache)  # same digest, other size: not trusted
    assert info.size_bytes == grown.stat().st_size


def test_an_unwritable_cache_dir_costs_only_the_speed_up(tiny_model_path: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    info = inspect_gguf_cached(tiny_model_path, DIGEST, blocker / "cache")
    assert info == inspect_gguf(tiny_model_path)
