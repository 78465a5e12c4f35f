"""The resumable download: stream one file into its ``.partial``, hash it on the fly, check the sha256.

:class:`_Download` resumes an earlier pull's partial (``Range``, only if the remote file is still the same
one), retries dropped connections, timeouts and 5xx answers a few times, and returns the partial's path
once its sha256 matches. Hashing runs in a second thread (:class:`_BackgroundHasher`), and so does
flushing to disk (:class:`_Writeback`), so both overlap the network.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import queue
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from llmhost.errors import ModelError
from llmhost.models.pull.hub import _gated_message, _Target
from llmhost.models.pull.progress import PullProgress, _Reporter
from llmhost.models.pull.spec import _display_url
from llmhost.models.pull.staging import _SIDECAR_VERSION, _disk_error, _Staging
from llmhost.models.pull.transport import (
    FetchError,
    _os_reason,
    _request,
    _Response,
    _socket_reader,
    _strip_etag,
    _Transient,
)
from llmhost.net import DestinationPolicy

# The package's logger, as before the split into modules: log lines keep the name they had.
logger = logging.getLogger(__package__)

_BUFFER_SIZE = 256 * 1024
_RETRIES = 3
_RETRY_BACKOFF_S = 0.5  # 0.5 s, 1 s, 2 s, ...
# Flush the download to disk each time this much more has arrived (see _Writeback). Measured on ext4 over
# virtio (bench/pull_compare.py), 4-8 MiB beat 2 and 16 MiB; larger leaves more for the final fsync.
_WRITEBACK_BYTES = 4 * 1024 * 1024
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)\Z")


# -- writing and hashing --------------------------------------------------------------------------------


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _hash_file(path: Path, limit: int) -> Any:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = limit
        while remaining > 0:
            block = f.read(min(remaining, 4 << 20))
            if not block:
                break
            hasher.update(block)
            remaining -= len(block)
    return hasher


class _BackgroundHasher:
    """Feeds blocks to a sha256 in a second thread (hashlib releases the GIL), so hashing overlaps I/O.

    Blocks come from a small pool of buffers: :meth:`take_buffer` waits until the hasher has finished with
    one. Leaving the ``with`` block waits until every submitted block is hashed, so the hash always covers
    exactly the bytes written to the file, even when the download fails half-way.
    """

    _POOL = 8

    def __init__(self, hasher: Any) -> None:
        self.hasher = hasher
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._work: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
        for _ in range(self._POOL):
            self._free.put(memoryview(bytearray(_BUFFER_SIZE)))
        self._thread = threading.Thread(target=self._run, name="pull-sha256", daemon=True)

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            buf, n = item
            self.hasher.update(buf[:n])
            self._free.put(buf)

    def take_buffer(self) -> memoryview:
        return self._free.get()

    def submit(self, buf: memoryview, n: int) -> None:
        self._work.put((buf, n))

    def __enter__(self) -> _BackgroundHasher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._work.put(None)
        self._thread.join()


class _Writeback:
    """Flushes the download to disk in a second thread while it arrives: ``fdatasync`` each time
    :data:`_WRITEBACK_BYTES` more have been written.

    Without it the kernel keeps the whole file in the page cache until the ``fsync`` that makes it durable
    before registering (:meth:`ModelStore.adopt_file`), which then writes all of it while the pull waits:
    about as long again as the download itself on loopback. Flushing in the background overlaps the disk
    writes with the download, so that ``fsync`` finds little left. It only starts writes earlier; the
    durability guarantee is still the final ``fsync`` of the file and of its directory.

    A background ``fdatasync`` beat ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` (Linux only) in our
    measurements (it also commits the allocations), and works on every POSIX system. The first failure is
    kept in :attr:`error`; the thread stops then. Leaving the ``with`` block waits for a flush in progress,
    so the file descriptor may be closed afterwards.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._written = 0  # only the downloading thread touches these two
        self._asked = 0
        self._target = 0  # what the flusher should cover, under _cond
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="pull-writeback", daemon=True)
        self.error: OSError | None = None
        """The first error a flush raised, if any."""

    def wrote(self, n: int) -> None:
        """Note ``n`` more bytes written; wake the flusher every :data:`_WRITEBACK_BYTES`."""
        self._written += n
        if self._written - self._asked >= _WRITEBACK_BYTES:
            self._asked = self._written
            with self._cond:
                self._target = self._written
                self._cond.notify()

    def _run(self) -> None:
        sync = getattr(os, "fdatasync", os.fsync)  # macOS and Windows have no fdatasync
        flushed = 0
        while True:
            with self._cond:
                while not self._stop and self._target <= flushed:
                    self._cond.wait()
                if self._stop:
                    return
                target = self._target
            try:
                sync(self._fd)
            except OSError as exc:
                self.error = exc
                return
            flushed = target

    def __enter__(self) -> _Writeback:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()


# -- the download ---------------------------------------------------------------------------------------


class _Download:
    """Download one file into its staging ``.partial``, resuming and retrying; return the verified path."""

    def __init__(
        self,
        target: _Target,
        staging: _Staging,
        report: _Reporter,
        retries: int,
        destinations: DestinationPolicy | None = None,
    ) -> None:
        self.t = target
        self.destinations = destinations
        self.s = staging
        self.report = report
        self.retries = retries
        self.digest = f"sha256:{target.sha256}"
        self.hasher: Any = hashlib.sha256()
        self.offset = 0
        self.total: int | None = target.size
        self.etag: str | None = None
        self.resumed = False
        """Whether the bytes so far came from more than one request (a resume)."""

    def run(self) -> Path:
        self._adopt_partial()
        restarted = False
        attempt = 0
        while True:
            try:
                self._fetch()
            except _Transient as exc:
                attempt += 1
                if attempt > self.retries:
                    kept = f"; {self.offset} bytes kept, pull again to resume" if self.offset else ""
                    raise FetchError(
                        f"download of {self.t.filename} failed: {exc}{kept}", url=_display_url(self.t.url)
                    ) from None
                delay = _RETRY_BACKOFF_S * (2 ** (attempt - 1))
                logger.warning(
                    "download of %s interrupted at %d bytes (%s); retrying in %.1f s",
                    self.t.filename,
                    self.offset,
                    exc,
                    delay,
                )
                time.sleep(delay)
                continue
            self.report(
                PullProgress("verifying", total=self.total, completed=self.offset, digest=self.digest)
            )
            got = self.hasher.hexdigest()
            if got == self.t.sha256:
                return self.s.partial
            resumed = self.resumed and not restarted
            self.s.discard()
            if resumed:  # the kept part may have been damaged: one fresh try from the start
                logger.warning("checksum mismatch after resuming %s; downloading it again", self.t.filename)
                restarted = True
                self._restart()
                continue
            raise ModelError(
                f"checksum mismatch for {self.t.filename}: expected sha256 {self.t.sha256}, got {got}; "
                "the download was discarded"
            )

    def _restart(self) -> None:
        self.s.discard()
        self.hasher = hashlib.sha256()
        self.offset = 0
        self.etag = None
        self.resumed = False

    def _adopt_partial(self) -> None:
        """Resume from an earlier pull's ``.partial`` if its sidecar says it is the same file."""
        try:
            size = self.s.partial.stat().st_size
        except FileNotFoundError:
            self.s.discard()
            return
        meta = self.s.read_sidecar()
        ok = (
            meta is not None
            and meta.get("version") == _SIDECAR_VERSION
            and meta.get("sha256") == self.t.sha256
            and (self.t.size is None or meta.get("size") in (None, self.t.size))
            and (self.t.size is None or size <= self.t.size)
        )
        if not ok or meta is None:
            self.s.discard()
            return
        etag = meta.get("etag")
        self.etag = etag if isinstance(etag, str) else None
        self.hasher = _hash_file(self.s.partial, size)
        self.offset = size
        self.resumed = size > 0
        logger.info("resuming the download of %s at %d bytes", self.t.filename, size)

    def _fetch(self) -> None:
        """One GET from ``self.offset`` to the end; raises :class:`_Transient` when worth retrying."""
        if self.total is not None and self.offset == self.total:
            return
        headers = dict(self.t.headers)
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
            self.resumed = True
        response = _request(self.t.url, headers, self.destinations)
        try:
            self._check_status(response)
            length = self._accept(response)
            self._precheck_space()
            self._save_sidecar()
            self._stream(response, length)
        finally:
            response.close()

    def _check_status(self, response: _Response) -> None:
        status = response.status
        if status in (200, 206):
            return
        if status == 416 and self.offset:
            self._restart()  # our partial is longer than the remote file: not the same file
            raise _Transient("the server refused to resume (416); starting over")
        # The hub's own answers (gated, not found) stay specific: its host is the operator's, not the
        # client's. A plain URL's status is a FetchError, which API clients only see as "could not fetch".
        shown = _display_url(self.t.url)
        where = self.t.filename if self.t.kind == "hf" else shown
        if status in (401, 403):
            if self.t.kind == "hf":
                raise ModelError(_gated_message(self.t.repo_id or "", self.t.headers.get("Authorization")))
            raise FetchError(f"access to {where} was refused (HTTP {status})", url=shown)
        if status == 404:
            if self.t.kind == "hf":
                raise ModelError(f"{self.t.filename} not found on the hub in {self.t.repo_id}")
            raise FetchError(f"{where} not found (HTTP 404)", url=shown)
        if status == 429 or status >= 500:
            raise _Transient(f"the server answered HTTP {status}")
        raise FetchError(f"download of {where} failed: HTTP {status} {response.resp.reason}", url=shown)

    def _accept(self, response: _Response) -> int | None:
        """Check the response against what we expect; return the body length (None if unknown)."""
        etag = _strip_etag(response.header("X-Linked-Etag")) or _strip_etag(response.header("ETag"))
        if response.status == 206:
            match = _CONTENT_RANGE_RE.match((response.header("Content-Range") or "").strip())
            if match is None or int(match.group(1)) != self.offset:
                self._restart()
                raise _Transient("the server sent an unexpected range; starting over")
            total = None if match.group(3) == "*" else int(match.group(3))
            if self.etag and etag and etag != self.etag:
                self._restart()  # the remote file changed since the partial was written
                raise _Transient("the remote file changed since the last attempt; starting over")
            length: int | None = int(match.group(2)) - int(match.group(1)) + 1
        else:
            if self.offset:  # the server ignored the Range: take the whole file again
                logger.info("the server does not resume; downloading %s from the start", self.t.filename)
                self._restart()
            raw = response.header("Content-Length")
            length = int(raw) if raw and raw.isdigit() else None
            total = length
        linked = response.header("X-Linked-Size")
        if total is None and linked and linked.isdigit():
            total = int(linked)
        if total is not None and self.t.size is not None and total != self.t.size:
            self.s.discard()
            raise ModelError(
                f"size mismatch for {self.t.filename}: the hub lists {self.t.size} bytes, the server "
                f"sends {total}"
            )
        self.total = self.t.size if self.t.size is not None else total
        self.etag = etag or self.etag
        return length

    def _precheck_space(self) -> None:
        if self.total is None:
            return
        # The store moves the finished file into blobs/ (same filesystem): no second copy is needed.
        need = self.total - self.offset
        try:
            free = shutil.disk_usage(self.s.dir).free
        except OSError:
            return
        if free < need:
            raise ModelError(
                f"not enough disk space in {self.s.dir} to pull {self.t.filename}: it needs {need} more "
                f"bytes, {free} are free"
            )

    def _save_sidecar(self) -> None:
        try:
            self.s.write_sidecar(
                {
                    "version": _SIDECAR_VERSION,
                    "sha256": self.t.sha256,
                    "size": self.total,
                    "etag": self.etag,
                    "source": self.t.source,
                }
            )
        except OSError as exc:
            raise _disk_error(exc, self.s.dir, self.t.filename) from exc

    def _stream(self, response: _Response, length: int | None) -> None:
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(self.s.partial, flags, 0o644)
        except OSError as exc:
            raise _disk_error(exc, self.s.dir, self.t.filename) from exc
        writeback = _Writeback(fd)
        try:
            try:
                os.ftruncate(fd, self.offset)
                os.lseek(fd, self.offset, os.SEEK_SET)
            except OSError as exc:
                raise _disk_error(exc, self.s.dir, self.t.filename) from exc
            remaining = length
            event = PullProgress("downloading", self.total, self.offset, self.digest, self.t.filename)
            self.report.throttled(event, force=True)
            resp = response.resp
            readinto = _socket_reader(resp) if length is not None and not resp.chunked else resp.readinto
            with _BackgroundHasher(self.hasher) as hashing, writeback:
                while remaining is None or remaining > 0:
                    buf = hashing.take_buffer()
                    want = _BUFFER_SIZE if remaining is None else min(_BUFFER_SIZE, remaining)
                    try:
                        n = readinto(buf[:want])
                    except (OSError, http.client.HTTPException, ValueError) as exc:
                        raise _Transient(f"the connection dropped ({_os_reason(exc)})") from None
                    if not n:
                        if remaining is None:
                            break
                        raise _Transient("the connection dropped before the end of the file")
                    try:
                        _write_all(fd, buf[:n])
                    except OSError as exc:
                        self.s.discard()
                        raise _disk_error(exc, self.s.dir, self.t.filename) from exc
                    hashing.submit(buf, n)  # hashed in the background while the next block arrives
                    writeback.wrote(n)
                    self.offset += n
                    if remaining is not None:
                        remaining -= n
                    event = PullProgress("downloading", self.total, self.offset, self.digest, self.t.filename)
                    self.report.throttled(event)
        finally:
            os.close(fd)  # the writeback thread has stopped: leaving the with block joins it
            if writeback.error is not None:
                # After a failed flush Linux may drop the pages it could not write, and a later fsync need
                # not report it again: the partial cannot be trusted.
                self.s.discard()
                raise _disk_error(writeback.error, self.s.dir, self.t.filename) from None
        self.report.throttled(
            PullProgress("downloading", self.total, self.offset, self.digest, self.t.filename), force=True
        )
        if self.total is not None and self.offset != self.total:
            if self.offset > self.total:
                self._restart()
            raise _Transient(f"got {self.offset} bytes, expected {self.total}")
