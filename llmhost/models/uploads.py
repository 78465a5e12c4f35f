"""Files pushed to the server before a name is given to them: Ollama's ``POST /api/blobs/:digest``, then
``/api/create`` with ``files`` (what ``ollama create`` does with ``FROM ./model.gguf``, and
ollama-python's ``create_blob``).

An upload is written to ``<models_dir>/uploads/`` while it is hashed; only a file whose SHA-256 is the
digest it was pushed as is kept (as ``sha256-<hex>``), so a name can never be bound to other bytes.
Registering it moves it into the store's blobs (:meth:`ModelStore.adopt_file`, which checks it is a
GGUF first: a file that is not is deleted, not kept). A push cut off midway leaves nothing; uploads
nobody registered are removed a day later.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from pathlib import Path

from llmhost.errors import InvalidModelFileError, RequestError
from llmhost.models.registry import ModelRecord
from llmhost.models.store import ModelStore

__all__ = ["UploadWriter", "Uploads", "parse_digest"]

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})\Z")
_PARTIAL = ".partial"
_KEEP_S = 24 * 3600  # a pushed file nobody registered
_PARTIAL_KEEP_S = 3600  # a push cut off (a partial file this old is no other process's live upload)


def parse_digest(value: str) -> str:
    """``sha256:<hex>`` (or Ollama's file form ``sha256-<hex>``) as ``sha256:<lowercase hex>``."""
    match = _DIGEST.match(value)
    if match is None:
        raise RequestError("invalid digest format", param="digest")
    return f"sha256:{match.group(1).lower()}"


class UploadWriter:
    """One upload under way: :meth:`write` each chunk, then :meth:`finish` (or :meth:`abort`)."""

    def __init__(self, uploads: Uploads, digest: str) -> None:
        self.digest = digest
        self._final = uploads.path(digest)
        fd, name = tempfile.mkstemp(prefix=".upload-", suffix=_PARTIAL, dir=uploads.dir)
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._file.write(chunk)
        self.size += len(chunk)

    def finish(self) -> None:
        """Keep the file if its digest is the one it was pushed as; a 400 (and nothing kept) if not."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            got = f"sha256:{self._hash.hexdigest()}"
            if got != self.digest:
                raise RequestError(f'digest mismatch, expected "{self.digest}", got "{got}"', param="digest")
            os.replace(self._tmp, self._final)
        finally:
            self.abort()  # a kept file was moved away already

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        self._tmp.unlink(missing_ok=True)


class Uploads:
    """The pushed files of one store."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.dir = store.models_dir / "uploads"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._prune()

    def path(self, digest: str) -> Path:
        return self.dir / f"sha256-{parse_digest(digest).removeprefix('sha256:')}"

    def has(self, digest: str) -> bool:
        """Whether the server holds a file with ``digest``: pushed, or already a stored model's."""
        return self.path(digest).is_file() or self.store.blob_path(parse_digest(digest)).is_file()

    def writer(self, digest: str) -> UploadWriter:
        return UploadWriter(self, parse_digest(digest))

    def register(self, digest: str, name: str, filename: str) -> ModelRecord:
        """Register the GGUF file with ``digest`` as the model ``name`` (a 400 when there is none)."""
        digest = parse_digest(digest)
        stored = self.store.blob_path(digest)
        source = stored if stored.is_file() else self.path(digest)
        if not source.is_file():
            raise RequestError(f"blob {digest} not found: push it first (POST /api/blobs/{digest})", "files")
        try:
            return self.store.adopt_file(source, name, sha256=digest, source=f"upload:{filename}")
        except InvalidModelFileError as exc:  # worded without the server's paths
            raise InvalidModelFileError(
                f"{filename} ({digest}) is not a model file llmhost can serve: {str(exc).rsplit(': ', 1)[-1]}"
            ) from None

    def _prune(self) -> None:
        now = time.time()
        for path in self.dir.iterdir():
            with contextlib.suppress(OSError):
                keep = _PARTIAL_KEEP_S if path.name.endswith(_PARTIAL) else _KEEP_S
                if path.stat().st_mtime < now - keep:
                    path.unlink()
                    log.info("removed upload %s (never registered, or cut off)", path.name)
