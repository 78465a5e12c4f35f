"""Pull GGUF models from the Hugging Face Hub (``hf:ORG/REPO[:FILE.gguf|:QUANT]``) or a plain URL.

A pull goes through these steps, reported to ``progress`` as :class:`PullProgress` events that mirror
Ollama's ``/api/pull`` JSON lines:

1. ``resolving``: parse the spec; for the hub, ``HfApi.model_info(files_metadata=True)`` lists the repo's
   files with their LFS sha256 and size, and the file is picked (by name, by quantization, or Q4_K_M /
   the only GGUF by default). The endpoint is ``endpoint``, else ``$HF_ENDPOINT``, else huggingface.co;
   the token is ``token``, else ``$HF_TOKEN`` (or the token ``huggingface-cli login`` saved). A plain URL
   needs the expected sha256 from the caller (``--sha256``); ``http://`` is allowed for loopback hosts only.
2. ``downloading``: the file is streamed into ``<models_dir>/downloads/<sha256>.partial`` (same
   filesystem as the blobs) and hashed on the fly. A sidecar ``<sha256>.partial.json`` records the expected
   sha256, size and the server's ETag, so an interrupted download resumes with an HTTP ``Range`` request,
   and only if the remote file is still the same one. Dropped connections, timeouts and 5xx answers are
   retried (resuming) a few times within one pull; after that the ``.partial`` stays for the next pull.
   The download uses the standard library's ``http.client`` with large ``readinto`` buffers: on loopback
   it matches ``curl``, where httpx's 64 KiB chunking reached about a third of that. A second thread
   flushes what has arrived to disk (``fdatasync`` every few MiB) while the rest downloads, so the
   ``fsync`` before registering finds little left to write (see :class:`_Writeback`).
3. ``verifying``: the sha256 computed while downloading must equal the hub's LFS sha256 (or ``--sha256``);
   a mismatch deletes the partial file and nothing is registered.
4. ``registering``: :meth:`ModelStore.adopt_file` validates the GGUF header, syncs the file to disk, moves
   it to its content address (``fsync`` of the directory) and registers the name atomically. A file
   already in the store is not downloaded: :meth:`ModelStore.import_file` re-verifies it (sha256 and GGUF
   header) and registers the name, leaving the stored blob in place.
5. ``success``.

Nothing is registered before step 4 succeeds, so no partial or unverified file can ever become a model.
Errors are :class:`~llmhost.errors.ModelError` (or :class:`~llmhost.errors.RequestError` for a bad spec or
name), with one-line messages that never contain the token. ``progress`` may raise to abort a pull (for
example when an HTTP client disconnects): the partial file is kept, so the next pull resumes.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import http.client
import json
import logging
import os
import queue
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import quote, unquote, urljoin, urlsplit

from llmhost.errors import ModelError, RequestError
from llmhost.models.registry import ModelRecord
from llmhost.models.store import ModelStore, validate_model_name
from llmhost.net import is_loopback, proxy_for, ssl_context

if sys.platform != "win32":
    import fcntl

__all__ = [
    "DEFAULT_QUANT",
    "PullProgress",
    "PullSpec",
    "default_model_name",
    "parse_pull_spec",
    "pull_model",
]

logger = logging.getLogger(__name__)

DEFAULT_QUANT = "Q4_K_M"
"""The quantization picked when a hub spec names neither a file nor a quantization."""

DEFAULT_ENDPOINT = "https://huggingface.co"

_BUFFER_SIZE = 256 * 1024
_TIMEOUT_S = 30.0
_MAX_REDIRECTS = 10
_RETRIES = 3
_RETRY_BACKOFF_S = 0.5  # 0.5 s, 1 s, 2 s, ...
_PROGRESS_INTERVAL_S = 0.1
# Flush the download to disk each time this much more has arrived (see _Writeback). Measured on ext4 over
# virtio (bench/pull_compare.py), 4-8 MiB beat 2 and 16 MiB; larger leaves more for the final fsync.
_WRITEBACK_BYTES = 4 * 1024 * 1024
_STALE_PARTIAL_AGE_S = 7 * 24 * 3600
_SIDECAR_VERSION = 1
_USER_AGENT = "llmhost/0.1 (python http.client)"

_SPEC_HELP = "expected hf:ORG/REPO, hf:ORG/REPO:FILE.gguf, hf:ORG/REPO:QUANT or an https:// URL"
_SEGMENT = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,95})"
_REPO_RE = re.compile(rf"{_SEGMENT}/{_SEGMENT}\Z")
_REVISION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}\Z")
_FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+@=-]*(?:/[A-Za-z0-9_][A-Za-z0-9._+@=-]*)*\Z")
_QUANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_HEX64_RE = re.compile(r"[0-9a-f]{64}\Z")
_SPLIT_RE = re.compile(r"-\d{5}-of-\d{5}\.gguf\Z", re.IGNORECASE)
# A quantization label inside a file name: Q4_K_M, IQ2_XXS, Q8_0, F16, BF16, TQ1_0, ...
_QUANT_IN_NAME_RE = re.compile(
    r"(?<![A-Za-z0-9])((?:I?Q|TQ)[1-8](?:_[A-Za-z0-9]+)*|B?F16|F32)(?![A-Za-z0-9])", re.IGNORECASE
)
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)\Z")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


# -- public types ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullSpec:
    """A parsed pull spec: a file on the hub (``kind="hf"``) or a plain URL (``kind="url"``)."""

    kind: Literal["hf", "url"]
    repo_id: str | None = None
    """``ORG/REPO`` for the hub."""
    revision: str = "main"
    filename: str | None = None
    """A file path inside the repo, when the spec names one."""
    quant: str | None = None
    """A quantization (``Q4_K_M``), when the spec names one; matched case-insensitively."""
    url: str | None = None

    def __str__(self) -> str:
        if self.kind == "url":
            return _display_url(self.url or "")
        rev = "" if self.revision == "main" else f"@{self.revision}"
        sel = self.filename or self.quant
        return f"hf:{self.repo_id}{rev}" + (f":{sel}" if sel else "")


@dataclass(frozen=True)
class PullProgress:
    """One progress event; :meth:`to_json` is one line of ``/api/pull``'s streamed answer."""

    status: str
    """``resolving``, ``downloading``, ``verifying``, ``registering`` or ``success``."""
    total: int | None = None
    completed: int | None = None
    digest: str | None = None
    """``sha256:<hex>`` of the file being pulled, once known."""
    detail: str | None = None
    """The file being pulled (``downloading``), or the model name registered (``success``)."""

    def to_dict(self) -> dict[str, Any]:
        """The event as a dict without its unset fields (Ollama's shape plus ``detail``)."""
        out: dict[str, Any] = {"status": self.status}
        for key in ("digest", "total", "completed", "detail"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


ProgressFn = Callable[[PullProgress], None]


# -- spec parsing ---------------------------------------------------------------------------------------


def _bad_spec(spec: str, why: str) -> RequestError:
    return RequestError(f"invalid pull spec {spec!r}: {why}; {_SPEC_HELP}", param="model")


def parse_pull_spec(spec: str) -> PullSpec:
    """Parse ``hf:ORG/REPO[@REV][:FILE.gguf|:QUANT]`` (also ``hf.co/...``) or an ``https://`` URL.

    Raises :class:`RequestError` (``param="model"``) when the spec is malformed.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _bad_spec(str(spec), "empty")
    text = spec.strip()
    lower = text.lower()
    if lower.startswith(("https://", "http://")):
        return _parse_url(text)
    for prefix in ("hf:", "hf.co/", "huggingface.co/"):
        if lower.startswith(prefix):
            rest = text[len(prefix) :]
            break
    else:
        raise _bad_spec(text, "unknown source")
    repo_part, colon, selector = rest.partition(":")
    repo_id, at, revision = repo_part.partition("@")
    if _REPO_RE.match(repo_id) is None or ".." in repo_id:
        raise _bad_spec(text, f"{repo_id!r} is not a repository id (ORG/REPO)")
    if at and (_REVISION_RE.match(revision) is None or ".." in revision):
        raise _bad_spec(text, f"{revision!r} is not a revision")
    rev = revision if at else "main"
    if not colon:
        return PullSpec(kind="hf", repo_id=repo_id, revision=rev)
    if selector.lower().endswith(".gguf"):
        if _FILE_RE.match(selector) is None or ".." in selector.split("/"):
            raise _bad_spec(text, f"{selector!r} is not a file name")
        return PullSpec(kind="hf", repo_id=repo_id, revision=rev, filename=selector)
    if _QUANT_RE.match(selector) is None:
        raise _bad_spec(text, f"{selector!r} is neither a .gguf file name nor a quantization like Q4_K_M")
    return PullSpec(kind="hf", repo_id=repo_id, revision=rev, quant=selector)


def _parse_url(text: str) -> PullSpec:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise _bad_spec(_display_url(text), f"malformed URL ({exc})") from None
    del port
    if not parts.hostname:
        raise _bad_spec(_display_url(text), "the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise RequestError("credentials in the URL are not supported", param="model")
    if parts.scheme.lower() == "http" and not is_loopback(parts.hostname):
        raise _bad_spec(_display_url(text), "plain http:// is only allowed for loopback hosts; use https://")
    if not PurePosixPath(unquote(parts.path)).name:
        raise _bad_spec(_display_url(text), "the URL does not name a file")
    return PullSpec(kind="url", url=text)


def _display_url(url: str) -> str:
    """``url`` without credentials, query or fragment (signed URLs carry secrets in the query)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<malformed URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


# -- names ----------------------------------------------------------------------------------------------


def _quant_in_name(filename: str) -> str | None:
    stem = PurePosixPath(filename).name
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    matches = _QUANT_IN_NAME_RE.findall(stem)
    return str(matches[-1]) if matches else None


def _clean_tag(text: str) -> str:
    tag = re.sub(r"[^a-z0-9._-]+", "-", text.lower())
    tag = re.sub(r"\.{2,}", ".", tag).strip("._-")
    return tag[:64]


def default_model_name(spec: PullSpec, filename: str) -> str:
    """``<repo>:<quant>`` lower-cased (``qwen2.5-0.5b-instruct-gguf:q4_k_m``), or the URL file's stem."""
    quant = spec.quant or _quant_in_name(filename)
    if spec.kind == "hf" and spec.repo_id:
        base = _clean_tag(spec.repo_id.split("/", 1)[1])
        tag = _clean_tag(quant) if quant else _clean_tag(PurePosixPath(filename).stem)
    else:
        stem = PurePosixPath(filename).stem
        if quant and stem.lower().endswith(quant.lower()):
            base, tag = _clean_tag(stem[: -len(quant)]), _clean_tag(quant)
        else:
            base, tag = _clean_tag(stem), ""
    name = f"{base}:{tag}" if base and tag else base or tag
    try:
        return validate_model_name(name)
    except RequestError:
        raise RequestError(
            f"cannot derive a model name from {filename!r}; choose one with --name", param="name"
        ) from None


# -- hub metadata ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """What to download and how to check it."""

    url: str
    filename: str
    sha256: str
    size: int | None
    headers: dict[str, str]
    source: str
    kind: Literal["hf", "url"]
    repo_id: str | None = None


@dataclass(frozen=True)
class _HubFile:
    name: str
    size: int | None
    sha256: str | None


def _resolve_endpoint(endpoint: str | None) -> str:
    if endpoint:
        value = endpoint
    else:
        value = os.environ.get("HF_ENDPOINT") or ""
        if not value:
            try:
                from huggingface_hub import constants

                value = str(constants.ENDPOINT)
            except Exception:  # pragma: no cover - huggingface_hub is a dependency
                value = DEFAULT_ENDPOINT
    value = value.strip().rstrip("/")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ModelError("the hub endpoint (HF_ENDPOINT) is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelError(f"the hub endpoint {_display_url(value)!r} (HF_ENDPOINT) is not an http(s) URL")
    return value


def _resolve_token(token: str | None) -> str | None:
    if token:
        return token
    try:
        from huggingface_hub import get_token

        found = get_token()
    except Exception:  # a broken saved token must not break public pulls
        found = os.environ.get("HF_TOKEN") or None
    return found or None


class _Redactor:
    def __init__(self, secret: str | None) -> None:
        self.secret = secret

    def __call__(self, text: str) -> str:
        if self.secret:
            text = text.replace(self.secret, "***")
        return text


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _hub_files(
    spec: PullSpec, endpoint: str, token: str | None, redact: _Redactor
) -> tuple[list[_HubFile], str]:
    """The repo's files (with LFS sha256 and size) and the commit sha, from the hub's model info API."""
    from huggingface_hub import HfApi

    # huggingface_hub.utils re-exports these in every version we support (>= 0.24); .errors came later.
    from huggingface_hub.utils import (  # type: ignore[attr-defined]
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = spec.repo_id or ""
    where = f"{repo} on the hub ({endpoint})"
    try:
        info = HfApi(endpoint=endpoint).model_info(
            repo,
            revision=None if spec.revision == "main" else spec.revision,
            files_metadata=True,
            token=token if token else False,
            timeout=_TIMEOUT_S,
        )
    except GatedRepoError:
        raise ModelError(_gated_message(repo, token)) from None
    except RevisionNotFoundError:
        raise ModelError(f"revision {spec.revision!r} of {where} not found") from None
    except RepositoryNotFoundError:
        hint = "" if token else "; if it is private or gated, set HF_TOKEN to a token that can read it"
        raise ModelError(f"repository {where} not found{hint}") from None
    except HfHubHTTPError as exc:
        status = _status_of(exc)
        if status in (401, 403):
            raise ModelError(_gated_message(repo, token)) from None
        if status == 404:
            raise ModelError(f"repository {where} not found") from None
        first = redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"the hub ({endpoint}) failed to describe {repo}: {first}") from None
    except Exception as exc:  # connection refused, DNS, TLS, offline mode, malformed JSON, ...
        detail = redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot reach the hub at {endpoint} to describe {repo}: {detail}") from None
    files = []
    for sibling in info.siblings or []:
        lfs = getattr(sibling, "lfs", None)
        sha = None
        size = getattr(sibling, "size", None)
        if lfs is not None:
            sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
            lfs_size = lfs.get("size") if isinstance(lfs, dict) else getattr(lfs, "size", None)
            size = lfs_size if isinstance(lfs_size, int) else size
        files.append(
            _HubFile(
                name=str(sibling.rfilename),
                size=size if isinstance(size, int) else None,
                sha256=str(sha).lower() if sha else None,
            )
        )
    return files, str(info.sha or spec.revision)


def _gated_message(repo: str, token: str | None) -> str:
    if token:
        return (
            f"access to {repo} was refused with the given token: it is a gated or private repository; accept "
            "its terms on the hub with the account of your HF_TOKEN, or use a token that can read it"
        )
    return (
        f"access to {repo} was refused: it is a gated or private repository; accept its terms on the hub and "
        "set HF_TOKEN to an access token of that account"
    )


def _listing(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _matches_quant(filename: str, quant: str) -> bool:
    base = PurePosixPath(filename).name
    pattern = rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])"
    return re.search(pattern, base, re.IGNORECASE) is not None


def _is_projector(filename: str) -> bool:
    return PurePosixPath(filename).name.lower().startswith("mmproj")


def _select_file(spec: PullSpec, files: Sequence[_HubFile]) -> _HubFile:
    repo = spec.repo_id or ""
    ggufs = [f for f in files if f.name.lower().endswith(".gguf")]
    names = [f.name for f in ggufs]
    if spec.filename is not None:
        exact = [f for f in files if f.name == spec.filename]
        if not exact:
            exact = [f for f in ggufs if f.name.lower() == spec.filename.lower()]
        if len(exact) != 1:
            available = f"; GGUF files there: {_listing(names)}" if names else "; it has no GGUF files"
            raise ModelError(f"file {spec.filename} not found in {repo} on the hub{available}")
        chosen = exact[0]
    else:
        if not ggufs:
            raise ModelError(f"{repo} has no GGUF files on the hub")
        models = [f for f in ggufs if not _is_projector(f.name)] or ggufs
        if spec.quant is not None:
            matches = [f for f in models if _matches_quant(f.name, spec.quant)]
            if not matches:
                quants = sorted({q.upper() for f in models if (q := _quant_in_name(f.name))})
                hint = f"available: {_listing(quants)}" if quants else f"GGUF files: {_listing(names)}"
                raise ModelError(f"no GGUF file in {repo} matches quantization {spec.quant}; {hint}")
        else:
            matches = [f for f in models if _matches_quant(f.name, DEFAULT_QUANT)]
            if not matches:
                matches = models
        singles = [f for f in matches if _SPLIT_RE.search(f.name) is None]
        if not singles:
            raise ModelError(
                f"{matches[0].name} in {repo} is split into several files; split GGUF models are not "
                "supported yet"
            )
        if len(singles) > 1:
            what = spec.quant or "no quantization was given"
            raise ModelError(
                f"{len(singles)} GGUF files in {repo} fit ({what}): {_listing([f.name for f in singles])}; "
                f"pick one with hf:{repo}:QUANT or hf:{repo}:FILE.gguf"
            )
        chosen = singles[0]
    if _SPLIT_RE.search(chosen.name):
        raise ModelError(
            f"{chosen.name} is one part of a split GGUF model; split models are not supported yet"
        )
    return chosen


# -- HTTP -----------------------------------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth retrying (dropped connection, timeout, 5xx)."""


@functools.cache
class _Response:
    """An open HTTP response and its connection, after redirects."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str) -> None:
        self.conn = conn
        self.resp = resp
        self.url = url
        self.hub_headers: dict[str, str] = {}

    @property
    def status(self) -> int:
        return int(self.resp.status)

    def header(self, name: str) -> str | None:
        return self.resp.getheader(name) or self.hub_headers.get(name.lower())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.resp.close()
        with contextlib.suppress(Exception):
            self.conn.close()


def _request(url: str, headers: dict[str, str]) -> _Response:
    """``GET url`` with ``headers``, following redirects (``Authorization`` only goes to the first origin)."""
    origin = urlsplit(url)
    current = url
    hub_headers: dict[str, str] = {}
    for _ in range(_MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        scheme, host = parts.scheme.lower(), parts.hostname or ""
        if scheme not in ("http", "https") or not host:
            raise ModelError(f"cannot download from {_display_url(current)}: not an http(s) URL")
        port = parts.port or (443 if scheme == "https" else 80)
        same_origin = (scheme, host, port) == (
            origin.scheme.lower(),
            origin.hostname or "",
            origin.port or (443 if origin.scheme.lower() == "https" else 80),
        )
        send = {
            "User-Agent": _USER_AGENT,
            "Accept": "*/*",
            **{k: v for k, v in headers.items() if same_origin or k.lower() != "authorization"},
        }
        proxy = proxy_for(scheme, host)
        target = parts.path or "/"
        if parts.query:
            target += f"?{parts.query}"
        conn: http.client.HTTPConnection
        if scheme == "https":
            if proxy is not None:
                conn = http.client.HTTPSConnection(
                    proxy.host, proxy.port, timeout=_TIMEOUT_S, context=ssl_context()
                )
                conn.set_tunnel(host, port, headers=proxy.headers)
            else:
                conn = http.client.HTTPSConnection(host, port, timeout=_TIMEOUT_S, context=ssl_context())
        elif proxy is not None:
            conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=_TIMEOUT_S)
            target = f"http://{host}:{port}{target}"
            send.update(proxy.headers)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=_TIMEOUT_S)
        try:
            conn.request("GET", target, headers=send)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _Transient(f"cannot connect to {host}:{port}: {_os_reason(exc)}") from None
        if resp.status in _REDIRECTS:
            for key in ("X-Repo-Commit", "X-Linked-Etag", "X-Linked-Size", "X-Error-Code"):
                value = resp.getheader(key)
                if value is not None:
                    hub_headers.setdefault(key.lower(), value)
            location = resp.getheader("Location")
            with contextlib.suppress(Exception):
                resp.read(1 << 16)
            conn.close()
            if not location:
                raise ModelError(f"{_display_url(current)} answered {resp.status} without a Location")
            nxt = urljoin(current, location)
            nxt_parts = urlsplit(nxt)
            if (
                scheme == "https"
                and nxt_parts.scheme.lower() != "https"
                and not is_loopback(nxt_parts.hostname or "")
            ):
                raise ModelError(f"refusing a redirect from https to {_display_url(nxt)}")
            current = nxt
            continue
        response = _Response(conn, resp, current)
        response.hub_headers = hub_headers
        return response
    raise ModelError(f"too many redirects downloading {_display_url(url)}")


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _strip_etag(value: str | None) -> str | None:
    if not value:
        return None
    return value.strip().removeprefix("W/").strip('"') or None


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


def _socket_reader(resp: http.client.HTTPResponse) -> Callable[[memoryview], int]:
    """``readinto`` that returns what has arrived (one ``recv``), straight from the response's socket.

    Every byte received then reaches the disk at once, so a kill loses nothing already received, where
    ``HTTPResponse.readinto`` waits to fill the whole buffer. ``BufferedReader.readinto1`` does one more
    (blocking) ``recv`` even when bytes are already buffered, so the bytes that arrived with the headers
    are taken first with ``read1``, which returns buffered bytes alone. For bodies with a Content-Length.
    """
    fp = resp.fp
    first = True

    def readinto(view: memoryview) -> int:
        nonlocal first
        if first:
            first = False
            data = fp.read1(len(view))
            view[: len(data)] = data
            return len(data)
        return fp.readinto1(view)

    return readinto


# -- the download ---------------------------------------------------------------------------------------


class _Reporter:
    def __init__(self, progress: ProgressFn | None) -> None:
        self.progress = progress
        self._last = 0.0

    def __call__(self, event: PullProgress) -> None:
        if self.progress is not None:
            self.progress(event)

    def throttled(self, event: PullProgress, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= _PROGRESS_INTERVAL_S:
            self._last = now
            self(event)


class _Download:
    """Download one file into its staging ``.partial``, resuming and retrying; return the verified path."""

    def __init__(self, target: _Target, staging: _Staging, report: _Reporter, retries: int) -> None:
        self.t = target
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
                    raise ModelError(f"download of {self.t.filename} failed: {exc}{kept}") from None
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
        response = _request(self.t.url, headers)
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
        where = self.t.filename if self.t.kind == "hf" else _display_url(self.t.url)
        if status in (401, 403):
            if self.t.kind == "hf":
                raise ModelError(_gated_message(self.t.repo_id or "", self.t.headers.get("Authorization")))
            raise ModelError(f"access to {where} was refused (HTTP {status})")
        if status == 404:
            if self.t.kind == "hf":
                raise ModelError(f"{self.t.filename} not found on the hub in {self.t.repo_id}")
            raise ModelError(f"{where} not found (HTTP 404)")
        if status == 429 or status >= 500:
            raise _Transient(f"the server answered HTTP {status}")
        raise ModelError(f"download of {where} failed: HTTP {status} {response.resp.reason}")

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


# -- the pull -------------------------------------------------------------------------------------------


def _normalise_sha256(value: str) -> str:
    hexdigest = value.strip().lower().removeprefix("sha256:")
    if _HEX64_RE.match(hexdigest) is None:
        raise RequestError(f"invalid sha256 {value!r}: expected 64 hexadecimal digits", param="sha256")
    return hexdigest


def _resolve_target(
    parsed: PullSpec, sha256: str | None, endpoint: str | None, token: str | None, redact: _Redactor
) -> _Target:
    if parsed.kind == "url":
        url = parsed.url or ""
        if sha256 is None:
            raise RequestError(
                f"pulling a plain URL needs its expected checksum: pass --sha256 for {_display_url(url)}",
                param="sha256",
            )
        filename = PurePosixPath(unquote(urlsplit(url).path)).name
        return _Target(
            url=url,
            filename=filename,
            sha256=sha256,
            size=None,
            headers={},
            source=f"url:{_display_url(url)}",
            kind="url",
        )
    ep = _resolve_endpoint(endpoint)
    files, commit = _hub_files(parsed, ep, token, redact)
    chosen = _select_file(parsed, files)
    expected = chosen.sha256
    if expected is not None and _HEX64_RE.match(expected) is None:
        expected = None
    if sha256 is not None and expected is not None and sha256 != expected:
        raise ModelError(
            f"the given sha256 {sha256} does not match the hub's sha256 {expected} for {chosen.name}"
        )
    expected = expected or sha256
    if expected is None:
        raise ModelError(
            f"the hub lists no LFS sha256 for {chosen.name} in {parsed.repo_id}, so it cannot be verified; "
            "pass --sha256 with its expected checksum"
        )
    repo = parsed.repo_id or ""
    url = f"{ep}/{quote(repo)}/resolve/{quote(commit, safe='')}/{quote(chosen.name)}"
    return _Target(
        url=url,
        filename=chosen.name,
        sha256=expected,
        size=chosen.size,
        headers={"Authorization": f"Bearer {token}"} if token else {},
        source=f"hf:{repo}/{chosen.name}@{commit}",
        kind="hf",
        repo_id=repo,
    )


def pull_model(
    store: ModelStore,
    spec: str,
    *,
    name: str | None = None,
    sha256: str | None = None,
    progress: ProgressFn | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    staging_dir: Path | None = None,
    retries: int = _RETRIES,
) -> ModelRecord:
    """Download the model ``spec`` names, verify it, and register it in ``store``; return its record.

    ``name`` defaults to :func:`default_model_name`. ``sha256`` is required for a plain URL and, for the
    hub, must agree with the hub's LFS sha256 when given. ``endpoint``/``token`` override ``HF_ENDPOINT``/
    ``HF_TOKEN``. ``staging_dir`` (default ``<models_dir>/downloads``) should be on the models' filesystem.
    ``retries`` is how often a dropped connection is resumed within this call.
    """
    parsed = parse_pull_spec(spec)
    if name is not None:
        validate_model_name(name)
    expected_user = None if sha256 is None else _normalise_sha256(sha256)
    report = _Reporter(progress)
    report(PullProgress("resolving", detail=str(parsed)))
    tok = _resolve_token(token) if parsed.kind == "hf" else None
    redact = _Redactor(tok)
    try:
        target = _resolve_target(parsed, expected_user, endpoint, tok, redact)
        model_name = name if name is not None else default_model_name(parsed, target.filename)
        digest = f"sha256:{target.sha256}"

        existing = store.blob_path(digest)
        if existing.is_file() and (target.size is None or existing.stat().st_size == target.size):
            # Already in the store (another name, or an earlier pull): no download; the import re-verifies
            # it (sha256, GGUF header) and leaves the stored blob where it is.
            report(PullProgress("verifying", total=target.size, completed=target.size, digest=digest))
            return _register_existing(store, existing, model_name, target, report)

        directory = Path(staging_dir) if staging_dir is not None else store.models_dir / "downloads"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _disk_error(exc, directory, target.filename) from exc
        _remove_stale_partials(directory)
        staging = _Staging(directory, target.sha256)
        with staging.locked(target.filename):
            path = _Download(target, staging, report, max(0, retries)).run()
            try:
                return _register(store, path, model_name, target, report)
            finally:
                staging.discard()
    except RequestError as exc:
        if tok and tok in str(exc):  # belt and braces: no message carries the token
            raise RequestError(redact(str(exc)), param=exc.param, code=exc.code) from None
        raise
    except ModelError as exc:
        if tok and tok in str(exc):
            raise ModelError(redact(str(exc))) from None
        raise


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
