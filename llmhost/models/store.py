"""Content-addressed model files: every GGUF lives once, at ``<models_dir>/blobs/sha256-<hex>``.

Importing a model (from a local file, or from the chunk files of the embedded default model) is atomic:

1. validate the name (and, for a single file, the GGUF header, so a wrong file is rejected before anything
   is written);
2. stream-copy into a temporary file inside ``blobs/`` (same filesystem, so the final rename is atomic)
   while hashing sha256, then flush and ``fsync``;
3. check the digest against the expected one, if given, and the GGUF header of the copy;
4. ``os.replace`` the copy to its content address (or drop it when that blob already exists) and ``fsync``
   the directory;
5. register the name; the blob the name pointed to before is deleted when no other name uses it.

A failure anywhere removes the temporary file and leaves the registry and the existing blobs as they were.
Steps 4-5 (and :meth:`ModelStore.copy` and :meth:`ModelStore.remove`) run under a lock, a thread lock plus an
``flock`` on ``<models_dir>/.lock``, so that deleting an unused blob never races with another import or
copy registering it.

:meth:`ModelStore.copy` gives a blob another name without copying any file: the registry row of the
destination is written (or re-pointed) in one transaction. A blob that loses its last name that way is
deleted, unless the caller says it is loaded (``in_use``): it then stays on disk, unnamed, and a later
``copy`` in this process deletes it once it is no longer loaded.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from llmhost.errors import InvalidModelFileError, ModelError, RequestError
from llmhost.models.convert import convert_hf_folder
from llmhost.models.gguf_check import GGUFInfo, inspect_gguf
from llmhost.models.registry import ModelRecord, Registry

if sys.platform != "win32":
    import fcntl

__all__ = ["MODEL_NAME_RE", "InUse", "ModelStore", "ProgressCallback", "validate_model_name"]

logger = logging.getLogger(__name__)

MODEL_NAME_RE: re.Pattern[str] = re.compile(
    r"(?=.{1,128}\Z)"  # 1 to 128 characters
    r"(?!.*\.\.)"  # no ".." anywhere
    r"[A-Za-z0-9][A-Za-z0-9._-]*"  # first path segment (so no leading "/", "." or "-")
    r"(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*"  # more segments: "org/repo"
    r"(?::[A-Za-z0-9][A-Za-z0-9._-]*)?"  # one optional ":tag"
    r"\Z"
)
"""Valid model names: ``gemma3:270m``, ``tiny``, ``org/repo:q4_k_m``."""

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(bytes_copied, bytes_total)`` while an import copies data."""

InUse = Callable[[ModelRecord], bool]
"""Whether the blob of a record is loaded (for the server: ``ModelManager.is_in_use``); such a blob is
never deleted, even when no name points at it any more."""

_BLOCK_SIZE = 4 * 1024 * 1024
_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})\Z")
_HEX_RE = re.compile(r"[0-9a-f]{64}\Z")
_TEMP_PREFIX = ".import-"
_TEMP_SUFFIX = ".partial"
# A temporary file this old belongs to an import that died (kill -9, power loss); younger ones may be live.
_STALE_TEMP_AGE_S = 24 * 3600

# Serialises the commit phase between ModelStore instances of this process; flock covers other processes.
_COMMIT_LOCK = threading.Lock()


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise :class:`RequestError` (``param="name"``)."""
    if not isinstance(name, str) or MODEL_NAME_RE.match(name) is None:
        raise RequestError(
            f"invalid model name {name!r}: use letters, digits, '.', '_', '-' and '/' with an optional "
            "':tag' (for example 'gemma3:270m' or 'org/repo:q4_k_m'), at most 128 characters, no '..'",
            param="name",
        )
    return name


def _normalise_sha256(value: str) -> str:
    hexdigest = value.strip().lower().removeprefix("sha256:")
    if _HEX_RE.match(hexdigest) is None:
        raise ModelError(f"invalid expected sha256 {value!r}: expected 64 hexadecimal digits")
    return hexdigest


def _disk_error(exc: OSError, name: str, where: Path) -> ModelError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ModelError(f"not enough disk space in {where} to import model '{name}': {exc}")
    return ModelError(f"cannot import model '{name}': {exc}")


def _same_kind(exc: ModelError, message: str) -> ModelError:
    """``message`` as the same kind of error: an invalid file stays a 400 when the store adds context."""
    return InvalidModelFileError(message) if isinstance(exc, InvalidModelFileError) else ModelError(message)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable. POSIX only: Windows cannot open a directory for fsync."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelStore:
    """GGUF files stored by content address under ``<models_dir>/blobs``, registered by name."""

    def __init__(self, models_dir: Path, registry: Registry) -> None:
        self.models_dir = Path(models_dir)
        self.blobs_dir = self.models_dir / "blobs"
        self.registry = registry
        # Blobs that lost their last name while loaded, by digest: kept until a later copy finds them unused.
        self._kept: dict[str, ModelRecord] = {}
        try:
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelError(f"cannot create the models directory {self.blobs_dir}: {exc}") from exc
        self._remove_stale_temp_files()

    # -- public API -----------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob with ``digest`` (``"sha256:<hex>"``) lives; it need not exist."""
        match = _DIGEST_RE.match(digest)
        if match is None:
            raise ModelError(f"invalid digest {digest!r}: expected 'sha256:' and 64 lowercase hex digits")
        return self.blobs_dir / f"sha256-{match.group(1)}"

    def import_file(
        self,
        src: Path,
        name: str,
        *,
        source: str | None = None,
        expected_sha256: str | None = None,
        default_license: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ModelRecord:
        """Copy the GGUF file ``src`` into the store and register it as ``name`` (replacing that name).

        ``source`` defaults to ``"import:<absolute src>"``; ``default_license`` is recorded when the file
        has no ``general.license``. Raises :class:`RequestError` for a bad name and :class:`ModelError` for a
        bad file, a checksum mismatch or a disk error; on any error nothing changes.
        """
        validate_model_name(name)
        src = Path(src)
        inspect_gguf(src)  # reject a wrong file before writing anything
        return self._import(
            [src],
            name,
            source=source if source is not None else f"import:{src.resolve()}",
            expected_sha256=expected_sha256,
            default_license=default_license,
            progress=progress,
        )

    def import_hf_folder(
        self,
        folder: Path,
        name: str,
        *,
        source: str | None = None,
        default_license: str | None = None,
        title: str | None = None,
    ) -> ModelRecord:
        """Convert the Hugging Face BERT-family folder ``folder`` to a GGUF (:mod:`llmhost.models.convert`)
        and import that as ``name``; ``title`` is the GGUF's ``general.name`` (default: from the folder's
        config). Raises :class:`InvalidModelFileError` for a folder it cannot convert; on any error
        nothing changes."""
        validate_model_name(name)
        folder = Path(folder)
        work = Path(tempfile.mkdtemp(prefix=".convert-", dir=self.models_dir))
        try:
            converted = convert_hf_folder(folder, work / "model.gguf", name=title)
            return self.import_file(
                converted.path,
                name,
                source=source if source is not None else f"convert:{folder.resolve()}",
                default_license=default_license,
            )
        except OSError as exc:
            raise _disk_error(exc, name, work) from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def import_parts(
        self,
        parts: Sequence[Path],
        name: str,
        *,
        source: str,
        expected_sha256: str | None = None,
        default_license: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ModelRecord:
        """Concatenate the chunk files ``parts`` (in order) into one blob and register it as ``name``.

        Same guarantees as :meth:`import_file`; the GGUF check runs on the assembled copy.
        """
        validate_model_name(name)
        paths = [Path(p) for p in parts]
        if not paths:
            raise ModelError(f"cannot import model '{name}': no part files given")
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ModelError(f"cannot import model '{name}': part file(s) not found: {', '.join(missing)}")
        return self._import(
            paths,
            name,
            source=source,
            expected_sha256=expected_sha256,
            default_license=default_license,
            progress=progress,
        )

    def remove(self, name: str) -> ModelRecord:
        """Unregister ``name``, delete its blob if no other name uses it, and return the removed record."""
        with self._commit_lock():
            record = self.registry.remove(name)
            self._delete_blob_if_unused(record.digest)
        return record

    def copy(self, source: str, destination: str, *, in_use: InUse | None = None) -> ModelRecord:
        """Register ``destination`` as another name for ``source``'s blob (no file is copied); return it.

        An existing ``destination`` is re-pointed in one registry transaction, so a reader sees either the
        old or the new record, never none: requests that already resolved the name finish on the old file.
        The blob ``destination`` pointed to before is deleted when no name uses it any more, unless
        ``in_use`` says it is loaded; then it stays until a later ``copy`` finds it unused. Copying a name
        onto itself changes nothing.

        Raises :class:`RequestError` (``param="destination"``) for an invalid destination name and
        :class:`ModelNotFoundError` when ``source`` is not registered; either way nothing changes.
        """
        try:
            validate_model_name(destination)
        except RequestError as exc:
            raise RequestError(str(exc), param="destination") from None
        with self._commit_lock():
            if source == destination:
                return self.registry.get(source)
            record, previous = self.registry.copy(source, destination)
            if previous is not None and previous.digest != record.digest:
                self._release_blob(previous, in_use)
            if in_use is not None:
                for kept in list(self._kept.values()):
                    self._release_blob(kept, in_use)
        logger.info("copied model %s to %s (%s)", source, destination, record.digest)
        return record

    # -- the import -----------------------------------------------------------------------------------

    def _import(
        self,
        sources: Sequence[Path],
        name: str,
        *,
        source: str,
        expected_sha256: str | None,
        default_license: str | None,
        progress: ProgressCallback | None,
    ) -> ModelRecord:
        expected = None if expected_sha256 is None else _normalise_sha256(expected_sha256)
        try:
            total = sum(p.stat().st_size for p in sources)
            fd, tmp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=self.blobs_dir)
        except OSError as exc:
            raise _disk_error(exc, name, self.blobs_dir) from exc
        tmp = Path(tmp_name)
        moved = False
        try:
            try:
                hexdigest, size = self._copy_and_hash(fd, sources, total, progress)
            except OSError as exc:
                raise _disk_error(exc, name, self.blobs_dir) from exc
            if expected is not None and hexdigest != expected:
                raise ModelError(f"checksum mismatch: expected {expected}, got {hexdigest}")
            try:
                info = inspect_gguf(tmp)
            except ModelError as exc:
                origin = str(sources[0]) if len(sources) == 1 else f"{len(sources)} parts ({sources[0]}, ...)"
                raise _same_kind(exc, f"cannot import model '{name}' from {origin}: {exc}") from exc

            record, moved = self._commit(tmp, info, name, hexdigest, size, source, default_license)
        finally:
            if not moved:
                tmp.unlink(missing_ok=True)
        logger.info("imported model %s (%s, %d bytes) from %s", name, record.digest, size, source)
        return record

    def _commit(
        self,
        tmp: Path,
        info: GGUFInfo,
        name: str,
        hexdigest: str,
        size: int,
        source: str,
        default_license: str | None,
    ) -> tuple[ModelRecord, bool]:
        """Move a verified file into its content address and register it; return (record, moved)."""
        digest = f"sha256:{hexdigest}"
        final = self.blob_path(digest)
        record = ModelRecord(
            name=name,
            digest=digest,
            path=final.resolve(),
            size_bytes=size,
            architecture=info.architecture,
            parameter_count=info.parameter_count,
            quantization=info.quantization,
            context_length=info.context_length,
            chat_template=info.chat_template,
            license=info.license if info.license else default_license,
            source=source,
            created_at=datetime.now(UTC),
        )
        with self._commit_lock():
            previous = self.registry.find(name)
            try:
                created = self._place_blob(tmp, final, size)
            except OSError as exc:
                raise _disk_error(exc, name, self.blobs_dir) from exc
            try:
                self.registry.put(record)
            except BaseException:
                if created:  # nobody can reference a blob we just created: put it back the way it was
                    final.unlink(missing_ok=True)
                raise
            if previous is not None and previous.digest != digest:
                self._delete_blob_if_unused(previous.digest)
        return record, created

    def adopt_file(
        self, path: Path, name: str, *, sha256: str, source: str, default_license: str | None = None
    ) -> ModelRecord:
        """Register a file whose SHA-256 the caller has already verified, by moving it into place.

        For downloads: the puller hashed every byte as it arrived, so copying and hashing 250 MB again
        would only cost time. ``path`` must be on the store's filesystem; it is consumed either way, unless
        it is the blob of ``sha256`` itself (which is then registered under ``name`` as it is).
        """
        validate_model_name(name)
        hexdigest = _normalise_sha256(sha256)
        # Adopting the blob itself (a pull of a file already stored) must not consume it.
        consumed = Path(path).resolve() != self.blob_path(f"sha256:{hexdigest}").resolve()
        try:
            try:
                info = inspect_gguf(path)
            except ModelError as exc:
                raise _same_kind(exc, f"cannot import model '{name}' from {path}: {exc}") from exc
            try:
                size = path.stat().st_size
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
            except OSError as exc:
                raise _disk_error(exc, name, self.blobs_dir) from exc
            record, _ = self._commit(path, info, name, hexdigest, size, source, default_license)
        finally:
            if consumed:
                path.unlink(missing_ok=True)  # moved into place, or not needed (dedup / failure)
        logger.info("adopted model %s (%s, %d bytes) from %s", name, record.digest, size, source)
        return record

    @staticmethod
    def _copy_and_hash(
        fd: int, sources: Sequence[Path], total: int, progress: ProgressCallback | None
    ) -> tuple[str, int]:
        hasher = hashlib.sha256()
        copied = 0
        with os.fdopen(fd, "wb") as out:
            for part in sources:
                with part.open("rb") as inp:
                    while block := inp.read(_BLOCK_SIZE):
                        hasher.update(block)
                        out.write(block)
                        copied += len(block)
                        if progress is not None:
                            progress(copied, total)
            out.flush()
            os.fsync(out.fileno())
        return hasher.hexdigest(), copied

    def _place_blob(self, tmp: Path, final: Path, size: int) -> bool:
        """Move ``tmp`` to ``final``; return False (keeping the existing blob) when it is already there."""
        try:
            if final.stat().st_size == size:
                return False
            # Same name, wrong size: a damaged blob; the fresh copy replaces it.
            logger.warning("replacing damaged blob %s (size differs from the imported copy)", final)
        except FileNotFoundError:
            pass
        os.replace(tmp, final)
        _fsync_dir(self.blobs_dir)
        return True

    def _release_blob(self, record: ModelRecord, in_use: InUse | None) -> None:
        """Delete ``record``'s blob if no name uses it and it is not loaded; call with the commit lock."""
        if self.registry.find_by_digest(record.digest):
            self._kept.pop(record.digest, None)
            return
        if in_use is not None and in_use(record):
            if record.digest not in self._kept:
                logger.info("keeping blob %s without a name while it is loaded", record.digest)
            self._kept[record.digest] = record
            return
        self._kept.pop(record.digest, None)
        self._delete_blob_if_unused(record.digest)

    def _delete_blob_if_unused(self, digest: str) -> None:
        """Delete the blob of ``digest`` if no record points at it. Call with the commit lock held."""
        if self.registry.find_by_digest(digest):
            return
        try:
            self.blob_path(digest).unlink(missing_ok=True)
        except (OSError, ModelError) as exc:  # the registry is already right; a leftover blob is harmless
            logger.warning("could not delete unused blob %s: %s", digest, exc)

    @contextmanager
    def _commit_lock(self) -> Iterator[None]:
        with _COMMIT_LOCK:
            if sys.platform == "win32":
                yield
                return
            try:
                handle = open(self.models_dir / ".lock", "a+b")  # noqa: SIM115 - held across the yield
            except OSError as exc:
                raise ModelError(f"cannot lock the models directory {self.models_dir}: {exc}") from exc
            with handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _remove_stale_temp_files(self) -> None:
        cutoff = time.time() - _STALE_TEMP_AGE_S
        for folder in self.models_dir.glob(".convert-*"):  # a conversion killed midway
            with contextlib.suppress(OSError):
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
        for path in self.blobs_dir.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    logger.info("removed leftover temporary file %s from an interrupted import", path)
            except OSError:
                pass
