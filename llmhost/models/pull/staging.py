"""The staging area (``<models_dir>/downloads``) and the step out of it into the store.

A download lives in ``<sha256>.partial``, with a sidecar ``<sha256>.partial.json`` that records the
expected sha256, size and the server's ETag (what a resume checks), and a ``<sha256>.lock`` held while a
pull writes it. Partials left for a week are removed. Once a download is verified, :func:`_register`
moves it into the store with :meth:`ModelStore.adopt_file`; a file already in the store is re-verified
and registered by :func:`_register_existing`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmhost.errors import ModelError
from llmhost.models.pull.hub import _Target
from llmhost.models.pull.progress import PullProgress, _Reporter
from llmhost.models.registry import ModelRecord
from llmhost.models.store import ModelStore

if sys.platform != "win32":
    import fcntl

# The package's logger, as before the split into modules: log lines keep the name they had.
logger = logging.getLogger(__package__)

_STALE_PARTIAL_AGE_S = 7 * 24 * 3600
_SIDECAR_VERSION = 1


# -- staging files --------------------------------------------------------------------------------------


class _Staging:
    """``<sha256>.partial`` + ``<sha256>.partial.json`` (+ a ``.lock``) in the staging directory."""

    def __init__(self, directory: Path, sha256: str) -> None:
        self.dir = directory
        self.partial = directory / f"{sha256}.partial"
        self.sidecar = directory / f"{sha256}.partial.json"
        self.lock_path = directory / f"{sha256}.lock"
        self._lock_fd: int | None = None

    @contextlib.contextmanager
    def locked(self, what: str) -> Iterator[None]:
        """Hold an exclusive lock on this download; fail at once if another pull holds it."""
        if sys.platform == "win32":  # pragma: no cover
            yield
            return
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ModelError(f"another pull of {what} is already in progress") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the lock file was removed by the pull that held it: take the new one
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                self.lock_path.unlink()
            os.close(fd)

    def read_sidecar(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_sidecar(self, data: dict[str, Any]) -> None:
        tmp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.sidecar)

    def discard(self) -> None:
        for path in (self.partial, self.sidecar):
            with contextlib.suppress(OSError):
                path.unlink()


def _remove_stale_partials(directory: Path) -> None:
    cutoff = time.time() - _STALE_PARTIAL_AGE_S
    for path in directory.glob("*.partial"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                Path(f"{path}.json").unlink(missing_ok=True)
                logger.info("removed the abandoned partial download %s", path)
        except OSError:
            pass


def _disk_error(exc: OSError, where: Path, what: str) -> ModelError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return ModelError(f"not enough disk space in {where} to download {what}: {exc.strerror or exc}")
    return ModelError(f"cannot write the download of {what} to {where}: {exc.strerror or exc}")


# -- adopting into the store ----------------------------------------------------------------------------


def _register(store: ModelStore, path: Path, name: str, target: _Target, report: _Reporter) -> ModelRecord:
    digest = f"sha256:{target.sha256}"
    report(PullProgress("registering", total=target.size, completed=0, digest=digest))

    # The download hashed every byte and matched the expected SHA-256: move the file into place
    # instead of copying and hashing it again.
    record = store.adopt_file(path, name, sha256=target.sha256, source=target.source)
    return _success(record, report)


def _register_existing(
    store: ModelStore, blob: Path, name: str, target: _Target, report: _Reporter
) -> ModelRecord:
    digest = f"sha256:{target.sha256}"

    def progress(done: int, total: int) -> None:
        report.throttled(PullProgress("registering", total=total, completed=done, digest=digest))

    progress(0, blob.stat().st_size)
    record = store.import_file(
        blob, name, source=target.source, expected_sha256=target.sha256, progress=progress
    )
    return _success(record, report)


def _success(record: ModelRecord, report: _Reporter) -> ModelRecord:
    report(
        PullProgress(
            "success",
            total=record.size_bytes,
            completed=record.size_bytes,
            digest=record.digest,
            detail=record.name,
        )
    )
    return record
