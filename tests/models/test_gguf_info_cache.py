"""The per-digest cache of GGUF summaries used when loading store blobs."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import gguf
import httpx
import pytest

from llmhost.errors import InvalidModelFileError, ModelError, classify
from llmhost.models import gguf_check
from llmhost.models.gguf_check import inspect_gguf, inspect_gguf_cached
from llmhost.service import Service
from tests.conftest import TINY, LiveServer

DIGEST = "sha256:" + "ab" * 32


def rewrite_in_place(path: Path, offset: int, new: bytes, *, keep_mtime: bool = True) -> None:
    """Overwrite bytes of ``path`` in place (same inode, same size), by default keeping its mtime: the
    worst case for a cache that trusts the file's metadata."""
    before = path.stat()
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(new)
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_ino) == (before.st_size, before.st_ino)
    assert not keep_mtime or after.st_mtime_ns == before.st_mtime_ns


def first_tensor_type_offset(path: Path) -> int:
    """Where the first tensor's ggml type sits: deep in the header, after the whole vocabulary."""
    tensor = gguf.GGUFReader(path).tensors[0]
    name_len = len(tensor.name.encode())
    return int(tensor.field.offset) + 8 + name_len + 4 + 8 * len(tensor.shape)


@pytest.fixture
def model(tiny_model_path: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model, free to be rewritten."""
    copy = tmp_path / "model.gguf"
    shutil.copyfile(tiny_model_path, copy)
    return copy


def test_second_read_comes_from_the_cache(
    tiny_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = inspect_gguf_cached(tiny_model_path, DIGEST, cache)
    assert first == inspect_gguf(tiny_model_path)

    def fail(path: object) -> None:
        raise AssertionError("the file was checked again")

    monkeypatch.setattr(gguf_check, "_inspect", fail)
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


def test_an_entry_of_the_old_format_is_recomputed(model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    inspect_gguf_cached(model, DIGEST, cache)
    [entry] = cache.iterdir()
    entry.write_text(f'{{"cache_version": 1, "size_bytes": {model.stat().st_size}}}')
    rewrite_in_place(model, 4, struct.pack("<I", 99))
    with pytest.raises(InvalidModelFileError, match="unsupported GGUF version 99"):
        inspect_gguf_cached(model, DIGEST, cache)


@pytest.mark.parametrize("where", ["version", "tensor-type"])
def test_a_same_size_rewrite_with_the_same_mtime_is_checked_again(
    model: Path, tmp_path: Path, where: str
) -> None:
    cache = tmp_path / "cache"
    inspect_gguf_cached(model, DIGEST, cache)
    if where == "version":
        rewrite_in_place(model, 4, struct.pack("<I", 99))
        fragment = "unsupported GGUF version 99"
    else:
        rewrite_in_place(model, first_tensor_type_offset(model), struct.pack("<I", 200))
        fragment = "has unknown type 200"

    with pytest.raises(InvalidModelFileError, match=fragment):
        inspect_gguf_cached(model, DIGEST, cache)


def test_a_same_size_valid_rewrite_gets_a_fresh_summary(model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert inspect_gguf_cached(model, DIGEST, cache).name == "tiny-llama"
    offset = model.read_bytes().index(b"tiny-llama")
    rewrite_in_place(model, offset, b"tiny-LLAMA")

    assert inspect_gguf_cached(model, DIGEST, cache).name == "tiny-LLAMA"
    assert inspect_gguf_cached(model, DIGEST, cache).name == "tiny-LLAMA"  # and that is cached in turn


def test_a_touched_file_is_checked_again(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    expected = inspect_gguf_cached(model, DIGEST, cache)
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    calls: list[Path] = []
    real = gguf_check._inspect

    def counting(path: Path) -> gguf_check._Checked:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(gguf_check, "_inspect", counting)
    assert inspect_gguf_cached(model, DIGEST, cache) == expected
    assert calls == [model]


def test_an_unwritable_cache_dir_costs_only_the_speed_up(tiny_model_path: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    info = inspect_gguf_cached(tiny_model_path, DIGEST, blocker / "cache")
    assert info == inspect_gguf(tiny_model_path)


def test_a_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found") as info:
        inspect_gguf_cached(tmp_path / "gone.gguf", DIGEST, tmp_path / "cache")
    assert not isinstance(info.value, InvalidModelFileError)


def test_a_blob_rewritten_after_a_load_is_refused_at_the_next_load_with_a_400(
    service: Service, server: LiveServer
) -> None:
    """The load path: a cached summary must not let llama.cpp open a blob that changed since."""
    base = server.base_url
    assert httpx.post(f"{base}/api/load", json={"model": TINY}, timeout=60).status_code == 200
    assert service.models.unload(TINY)
    blob = service.store.registry.get(TINY).path
    blob.chmod(0o644)
    rewrite_in_place(blob, first_tensor_type_offset(blob), struct.pack("<I", 200))

    r = httpx.post(f"{base}/api/load", json={"model": TINY}, timeout=60)

    assert r.status_code == 400, r.text
    assert "has unknown type 200" in r.text and str(blob) in r.text
    assert service.models.get_loaded(TINY) is None


def test_invalid_model_file_is_a_client_error() -> None:
    info = classify(InvalidModelFileError("invalid model file /x.gguf: truncated"))
    assert (info.status, info.kind, info.param, info.code) == (
        400,
        "invalid_request",
        "model",
        "invalid_model_file",
    )
    assert classify(ModelError("cannot read model file /x.gguf (I/O error)")).status == 500
