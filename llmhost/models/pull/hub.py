"""The Hugging Face side of a pull: list a repo's files with their LFS sha256, pick one, say what to fetch.

:func:`_resolve_target` turns a parsed :class:`~llmhost.models.pull.spec.PullSpec` into a :class:`_Target`
(URL, expected sha256, size, headers): for the hub from ``HfApi.model_info(files_metadata=True)`` and the
file picked by :func:`_select_file`; for a plain URL from the caller's ``--sha256``.

With a :class:`~llmhost.net.DestinationPolicy`, the hub endpoint must pass it too (:func:`_check_endpoint`):
the endpoint is the operator's setting, not the client's, so the check is made on the name's addresses
before ``huggingface_hub`` connects by itself; the file download that follows is pinned hop by hop
(:mod:`.transport`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

from llmhost.errors import ModelError, RequestError
from llmhost.models.pull.spec import _HEX64_RE, PullSpec, _display_url, _quant_in_name
from llmhost.models.pull.transport import _TIMEOUT_S, FetchError
from llmhost.net import BlockedDestinationError, DestinationPolicy

DEFAULT_QUANT = "Q4_K_M"
"""The quantization picked when a hub spec names neither a file nor a quantization."""

DEFAULT_ENDPOINT = "https://huggingface.co"

_SPLIT_RE = re.compile(r"-\d{5}-of-\d{5}\.gguf\Z", re.IGNORECASE)


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
        raise FetchError(
            f"the hub ({endpoint}) failed to describe {repo}: {first}", url=_display_url(endpoint)
        ) from None
    except Exception as exc:  # connection refused, DNS, TLS, offline mode, malformed JSON, ...
        detail = redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
        raise FetchError(
            f"cannot reach the hub at {endpoint} to describe {repo}: {detail}", url=_display_url(endpoint)
        ) from None
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


# -- the target -----------------------------------------------------------------------------------------


def _check_endpoint(endpoint: str, destinations: DestinationPolicy) -> None:
    """Refuse a hub endpoint the policy does not allow (a loopback or private ``HF_ENDPOINT``).

    The message speaks to the operator (the endpoint is their setting): it says which setting to change.
    """
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        destinations.resolve(host, port)
    except BlockedDestinationError as exc:
        raise ModelError(
            f"the hub endpoint {_display_url(endpoint)} is not allowed for pulls over the API ({exc}); "
            "add its host to pull_allow_hosts"
        ) from None
    except OSError as exc:
        raise FetchError(
            f"cannot resolve the hub endpoint {_display_url(endpoint)}: {exc}", url=_display_url(endpoint)
        ) from None


def _resolve_target(
    parsed: PullSpec,
    sha256: str | None,
    endpoint: str | None,
    token: str | None,
    redact: _Redactor,
    destinations: DestinationPolicy | None = None,
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
    if destinations is not None:
        _check_endpoint(ep, destinations)
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
