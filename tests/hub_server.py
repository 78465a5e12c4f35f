"""A loopback stand-in for the Hugging Face Hub, for pull tests and download benchmarks.

It serves the parts of the hub's URL layout that a GGUF pull touches, for repos kept in memory:

* ``GET /api/models/{org}/{repo}`` and ``.../revision/{rev}``: model info JSON (``id``, ``sha``, ``gated``,
  ``siblings``; with ``?blobs=true`` each sibling has ``size``, ``blobId`` and ``lfs: {sha256, size,
  pointerSize}``);
* ``HEAD``/``GET /{org}/{repo}/resolve/{rev}/{file}``: the file, with ``ETag``, ``X-Repo-Commit``,
  ``X-Linked-Etag``, ``X-Linked-Size``, ``Content-Length``, ``Accept-Ranges: bytes`` and ``Range`` support
  (206/416). With ``redirect_lfs`` the hub answers 302 to ``/cdn/{sha256}``, as the real hub sends LFS
  files to its CDN; the CDN path needs no token;
* ``GET /files/{name}``: plain files (for ``https://...`` pulls and for ``curl`` comparisons).

Errors follow the hub: unknown repo 404 + ``X-Error-Code: RepoNotFound``, unknown file 404 +
``EntryNotFound``, gated repo without the right bearer token 401 (no token) or 403 (wrong token) +
``GatedRepo``. Model info of a gated repo is public, as on the hub.

Fault knobs (:class:`Faults`, change them between requests): drop the connection after N body bytes
(a list, one entry used per response), corrupt one byte of every body, cap the body bytes served in
all, force a status code. Every request is logged (:attr:`HubServer.requests`) so tests can assert that
a resumed download asked for a ``Range``.

Bodies go out with ``os.sendfile`` straight from the file, so the server is not the bottleneck when a
download is timed. ``python -m tests.hub_server --file X`` serves one file for speed comparisons.

Pulls over the HTTP API may only reach public addresses unless ``pull_allow_hosts`` says otherwise:
servers under test that pull from this hub need :data:`LOOPBACK_ALLOW_HOSTS` there (the hub's address and
its CDN's name), or :attr:`HubServer.allow_hosts` for a hub on another address.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support import sha256_of

if TYPE_CHECKING:
    import pytest

__all__ = [
    "HUB_ENV_VARS",
    "LOOPBACK_ALLOW_HOSTS",
    "Faults",
    "HubFile",
    "HubRepo",
    "HubServer",
    "LoggedRequest",
    "isolate_from_real_hub",
    "running_hub",
]

LOOPBACK_ALLOW_HOSTS = ["127.0.0.1", "localhost"]
"""``pull_allow_hosts`` for a :class:`HubServer` on 127.0.0.1: the hub itself and its "CDN" name."""

_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)\Z")


@dataclass
class HubFile:
    """One file of a repo, served from ``path``."""

    path: Path
    sha256: str
    size: int
    lfs: bool = True


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    sha: str
    gated: bool = False
    token: str | None = None
    """The bearer token that unlocks a gated repo."""


@dataclass
class Faults:
    drop_after: list[int] = field(default_factory=list)
    """Drop the connection after this many body bytes; one entry is used (and removed) per response body."""
    corrupt: bool = False
    """Flip one byte in the middle of every file body (the client sees a wrong sha256)."""
    max_bytes_served: int | None = None
    """Body bytes the server sends in all; responses are cut (connection dropped) past it."""
    status: int | None = None
    """Answer every file request (resolve, CDN, plain) with this status and an empty body."""
    stall_after: list[int] = field(default_factory=list)
    """Send this many body bytes, then hang (until :meth:`HubServer.release` or stop) and drop the
    connection; one entry is used per response body. Lets a test kill a client mid-download."""


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str]


class HubServer:
    """The loopback hub; use as a context manager or call :meth:`start`/:meth:`stop`."""

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        redirect_lfs: bool = True,
        cdn_host: str | None = None,
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, HubRepo] = {}
        self.plain: dict[str, HubFile] = {}
        self.faults = Faults()
        self.redirect_lfs = redirect_lfs
        self.requests: list[LoggedRequest] = []
        self.bytes_served = 0
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.stalled = threading.Event()
        """Set when a response has stalled (see :attr:`Faults.stall_after`)."""
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://{host}:{self.port}"
        # The "CDN" answers on the same server under another host name, as the real hub's CDN is another
        # host: clients must drop the Authorization header there, and huggingface_hub reads the file's
        # metadata from the 302 itself instead of following it.
        # ``cdn_host`` names another host for it (one this server may not even listen on).
        if cdn_host is None:
            cdn_host = "localhost" if host == "127.0.0.1" else host
        self.cdn_url = f"http://{cdn_host}:{self.port}/cdn"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.05,), name="hub-server", daemon=True
        )

    @property
    def allow_hosts(self) -> list[str]:
        """``pull_allow_hosts`` that lets a guarded pull reach this hub and its CDN."""
        hosts = [urlsplit(self.url).hostname or "", urlsplit(self.cdn_url).hostname or ""]
        return sorted(set(hosts))

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def release(self) -> None:
        """Let stalled responses go on (they drop their connection)."""
        self._released.set()

    def stop(self) -> None:
        self._released.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- content --------------------------------------------------------------------------------------

    def _hub_file(self, content: bytes | Path, name: str) -> HubFile:
        if isinstance(content, bytes):
            path = self.root / "content" / hashlib.sha256(content).hexdigest()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        else:
            path = Path(content)
        return HubFile(path=path, sha256=sha256_of(path), size=path.stat().st_size, lfs=True)

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes | Path],
        *,
        gated: bool = False,
        token: str | None = None,
        sha: str | None = None,
    ) -> HubRepo:
        """Serve ``files`` (repo path -> content or file) as ``repo_id``; non-``.gguf`` files are not LFS."""
        hub_files = {}
        for name, content in files.items():
            hub_file = self._hub_file(content, name)
            hub_file.lfs = name.endswith(".gguf")
            hub_files[name] = hub_file
        commit = sha or hashlib.sha1(repo_id.encode() + str(time.time_ns()).encode()).hexdigest()
        repo = HubRepo(repo_id=repo_id, files=hub_files, sha=commit, gated=gated, token=token)
        self.repos[repo_id] = repo
        return repo

    def add_plain(self, name: str, content: bytes | Path) -> str:
        """Serve ``content`` at ``/files/{name}``; return its URL."""
        self.plain[name] = self._hub_file(content, name)
        return f"{self.url}/files/{name}"

    def file_requests(self) -> list[LoggedRequest]:
        """Logged GET requests for file bodies (resolve, CDN and plain), in order."""
        return [
            r
            for r in self.requests
            if r.method == "GET" and ("/resolve/" in r.path or r.path.startswith(("/cdn/", "/files/")))
        ]

    def _take_drop(self) -> tuple[int | None, bool]:
        """(bytes to send before cutting the body, whether to stall there) for the next response body."""
        with self._lock:
            if self.faults.stall_after:
                return self.faults.stall_after.pop(0), True
            return (self.faults.drop_after.pop(0) if self.faults.drop_after else None), False

    def _budget(self, want: int) -> int:
        """How many of ``want`` body bytes may still be sent under ``max_bytes_served``."""
        with self._lock:
            limit = self.faults.max_bytes_served
            allowed = want if limit is None else max(0, min(want, limit - self.bytes_served))
            self.bytes_served += allowed
            return allowed


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"
    server_version = "hub-server/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    # -- routing --------------------------------------------------------------------------------------

    def _dispatch(self, head: bool) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        path = unquote(split.path)
        with hub._lock:
            hub.requests.append(
                LoggedRequest(self.command, path, {k.lower(): v for k, v in self.headers.items()})
            )
        try:
            if path.startswith("/api/models/"):
                self._model_info(path.removeprefix("/api/models/"), parse_qs(split.query), head)
            elif path.startswith("/cdn/"):
                self._cdn(path.removeprefix("/cdn/"), head)
            elif path.startswith("/files/"):
                plain = hub.plain.get(path.removeprefix("/files/"))
                if plain is None:
                    self._error(404, "EntryNotFound", "file not found")
                else:
                    self._send_file(plain, head, {})
            elif "/resolve/" in path:
                self._resolve(path, head)
            else:
                self._error(404, None, "not found")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _model_info(self, rest: str, query: dict[str, list[str]], head: bool) -> None:
        repo_id, _, revision = rest.partition("/revision/")
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        if revision and revision not in ("main", repo.sha):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings: list[dict[str, Any]] = []
        for name, f in sorted(repo.files.items()):
            sibling: dict[str, Any] = {"rfilename": name}
            if blobs:
                sibling["size"] = f.size
                sibling["blobId"] = hashlib.sha1(f.sha256.encode()).hexdigest()
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            siblings.append(sibling)
        body = {
            "_id": repo.sha[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": repo.sha,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": ["gguf"],
            "library_name": "gguf",
            "siblings": siblings,
        }
        self._send_json(200, body, head)

    def _resolve(self, path: str, head: bool) -> None:
        repo_id, _, rest = path.lstrip("/").partition("/resolve/")
        revision, _, filename = rest.partition("/")
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        if revision not in ("main", repo.sha):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        if repo.gated:
            auth = self.headers.get("Authorization")
            if auth != f"Bearer {repo.token}":
                status = 401 if auth is None else 403
                self._error(status, "GatedRepo", f"Access to model {repo_id} is restricted.")
                return
        f = repo.files.get(filename)
        if f is None:
            self._error(404, "EntryNotFound", "Entry not found")
            return
        if self.hub.faults.status is not None:
            self._error(self.hub.faults.status, None, "injected failure")
            return
        hub_headers = {
            "X-Repo-Commit": repo.sha,
            "X-Linked-Etag": f'"{f.sha256}"',
            "X-Linked-Size": str(f.size),
        }
        if f.lfs and self.hub.redirect_lfs:
            self.send_response(302)
            for key, value in hub_headers.items():
                self.send_header(key, value)
            self.send_header("ETag", f'"{hashlib.sha1(f.sha256.encode()).hexdigest()}"')
            self.send_header("Location", f"{self.hub.cdn_url}/{f.sha256}?X-Signature=loopback")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_file(f, head, hub_headers)

    def _cdn(self, sha: str, head: bool) -> None:
        for repo in self.hub.repos.values():
            for f in repo.files.values():
                if f.sha256 == sha:
                    if self.hub.faults.status is not None:
                        self._error(self.hub.faults.status, None, "injected failure")
                        return
                    self._send_file(f, head, {})
                    return
        self._error(404, None, "no such object")

    # -- responses ------------------------------------------------------------------------------------

    def _error(self, status: int, code: str | None, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code is not None:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, head: bool) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_file(self, f: HubFile, head: bool, extra: dict[str, str]) -> None:
        if self.hub.faults.status is not None:
            self._error(self.hub.faults.status, None, "injected failure")
            return
        size = f.size
        start, end = 0, size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            match = _RANGE_RE.match(range_header.strip())
            if match is None:
                self._error(400, None, f"bad range {range_header!r}")
                return
            start = int(match.group(1))
            if match.group(2):
                end = min(int(match.group(2)), size - 1)
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        length = end - start + 1
        self.send_response(status)
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("ETag", f'"{f.sha256}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        allowed = length
        drop, stall = self.hub._take_drop()
        if drop is not None:
            allowed = min(allowed, drop)
        allowed = self.hub._budget(allowed)
        if self.hub.faults.corrupt:
            self._send_corrupt(f, start, allowed)
        else:
            self._sendfile(f.path, start, allowed)
        if stall:
            self.hub.stalled.set()
            self.hub._released.wait(60)
        if allowed < length or stall:  # cut the body short: the client sees the connection drop mid-file
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _sendfile(self, path: Path, offset: int, count: int) -> None:
        sock_fd = self.connection.fileno()
        with open(path, "rb") as fh:
            while count > 0:
                sent = os.sendfile(sock_fd, fh.fileno(), offset, min(count, 1 << 30))
                if sent == 0:
                    break
                offset += sent
                count -= sent

    def _send_corrupt(self, f: HubFile, offset: int, count: int) -> None:
        flip_at = f.size // 2
        with open(f.path, "rb") as fh:
            fh.seek(offset)
            while count > 0:
                block = bytearray(fh.read(min(count, 1 << 20)))
                if not block:
                    break
                if offset <= flip_at < offset + len(block):
                    block[flip_at - offset] ^= 0xFF
                self.wfile.write(block)
                offset += len(block)
                count -= len(block)


HUB_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE")
"""The environment that would point a pull at the real hub, or give it this machine's token."""


def isolate_from_real_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """For one test: pulls in this process use no hub token, endpoint or offline switch of this machine
    (environment or ``huggingface_hub``'s token file), and retry without waiting between attempts."""
    import huggingface_hub.constants

    import llmhost.models.pull.download as pull_download

    for var in HUB_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(pull_download, "_RETRY_BACKOFF_S", 0.0)


@contextlib.contextmanager
def running_hub(
    root: Path,
    monkeypatch: pytest.MonkeyPatch | None = None,
    *,
    repos: Mapping[str, Mapping[str, bytes | Path]] | None = None,
    **options: Any,
) -> Iterator[HubServer]:
    """A started :class:`HubServer` in ``root`` serving ``repos`` (repo id -> files), stopped on exit:
    the body of a ``hub`` fixture. With ``monkeypatch``, :func:`isolate_from_real_hub` too (its token
    file path under ``root``). ``options`` go to :class:`HubServer` (``host``, ``redirect_lfs``, ...)."""
    if monkeypatch is not None:
        isolate_from_real_hub(monkeypatch, Path(root))
    server = HubServer(root, **options)
    for repo_id, files in (repos or {}).items():
        server.add_repo(repo_id, dict(files))
    with server:
        yield server


def bench(hub: HubServer, repo: str, name: str, runs: int, work: Path) -> None:
    """Alternate ``curl -L -o FILE`` and ``pull_model`` of the same file ``runs`` times; print MB/s.

    "download" is ``pull_model`` up to its ``verifying`` event (model info, download, sha256: the part curl
    does); "total" adds the store import (GGUF check, copy into blobs/, fsync, register). A file that is not
    a GGUF fails at the import: its download time is still reported.
    """
    import shutil
    import statistics
    import subprocess

    from llmhost.errors import ModelError
    from llmhost.models.pull import PullProgress, pull_model
    from llmhost.models.registry import Registry
    from llmhost.models.store import ModelStore

    size = hub.repos[repo].files[name].size
    url = f"{hub.url}/{repo}/resolve/main/{name}"
    curl_s: list[float] = []
    download_s: list[float] = []
    total_s: list[float] = []
    for i in range(runs):
        out = work / "curl.out"
        if shutil.which("curl"):
            start = time.perf_counter()
            subprocess.run(["curl", "-sfL", "-o", str(out), url], check=True)
            curl_s.append(time.perf_counter() - start)
            out.unlink()
        data = work / f"store-{i}"
        store = ModelStore(data / "models", Registry(data / "llmhost.db"))
        marks: dict[str, float] = {}

        def progress(event: PullProgress, marks: dict[str, float] = marks) -> None:
            marks.setdefault(event.status, time.perf_counter())

        start = time.perf_counter()
        try:
            pull_model(store, f"hf:{repo}:{name}", endpoint=hub.url, progress=progress)
            total_s.append(time.perf_counter() - start)
        except ModelError as exc:
            if "verifying" not in marks:
                raise
            print(f"run {i}: import failed ({exc}); download timed only", flush=True)
        download_s.append(marks["verifying"] - start)
        store.registry.close()
        shutil.rmtree(data)

    def row(label: str, times: list[float]) -> str:
        rates = " ".join(f"{size / t / 1e6:.0f}" for t in times)
        return f"{label:<10} median {size / statistics.median(times) / 1e6:6.0f} MB/s   runs: {rates}"

    print(f"file: {size} bytes, {runs} runs", flush=True)
    for label, times in (("curl", curl_s), ("download", download_s), ("total", total_s)):
        if times:
            print(row(label, times), flush=True)
    if curl_s:
        for label, times in (("download", download_s), ("total", total_s)):
            if times:
                ratio = statistics.median(curl_s) / statistics.median(times)
                print(f"{label} / curl (medians): {ratio:.2f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a file from a loopback hub (for speed tests).")
    parser.add_argument("--file", type=Path, required=True, help="the file to serve")
    parser.add_argument("--repo", default="bench/bench-GGUF", help="repo id to serve it under")
    parser.add_argument("--name", default=None, help="file name inside the repo (default: the file's)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-redirect", action="store_true", help="serve LFS files without the CDN 302")
    parser.add_argument(
        "--bench", type=int, default=0, metavar="N", help="compare curl and llmhost's pull N times, then exit"
    )
    args = parser.parse_args(argv)
    import tempfile

    name = args.name or args.file.name
    with tempfile.TemporaryDirectory(dir=args.file.resolve().parent) as tmp:
        hub = HubServer(Path(tmp) / "hub", port=args.port, redirect_lfs=not args.no_redirect)
        hub.add_repo(args.repo, {name: args.file.resolve()})
        plain = hub.add_plain(name, args.file.resolve())
        with hub:
            if args.bench:
                bench(hub, args.repo, name, args.bench, Path(tmp))
                return
            print(f"hub endpoint: {hub.url}", flush=True)
            print(f"resolve url:  {hub.url}/{args.repo}/resolve/main/{name}", flush=True)
            print(f"plain url:    {plain}", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
