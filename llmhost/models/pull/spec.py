"""What to pull: parse ``hf:ORG/REPO[@REV][:FILE.gguf|:QUANT]`` or a URL, and derive a model name.

Nothing here reaches the network. A spec is checked for its shape only (repository id, revision, file
name or quantization, ``http://`` for loopback hosts only), so a malformed one fails with a
:class:`~llmhost.errors.RequestError` before anything is fetched; whether the file exists is
:mod:`llmhost.models.pull.hub`'s question.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import unquote, urlsplit

from llmhost.errors import RequestError
from llmhost.models.store import validate_model_name
from llmhost.net import is_loopback

_SPEC_HELP = "expected hf:ORG/REPO, hf:ORG/REPO:FILE.gguf, hf:ORG/REPO:QUANT or an https:// URL"
_SEGMENT = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,95})"
_REPO_RE = re.compile(rf"{_SEGMENT}/{_SEGMENT}\Z")
_REVISION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}\Z")
_FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+@=-]*(?:/[A-Za-z0-9_][A-Za-z0-9._+@=-]*)*\Z")
_QUANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_HEX64_RE = re.compile(r"[0-9a-f]{64}\Z")
# A quantization label inside a file name: Q4_K_M, IQ2_XXS, Q8_0, F16, BF16, TQ1_0, ...
_QUANT_IN_NAME_RE = re.compile(
    r"(?<![A-Za-z0-9])((?:I?Q|TQ)[1-8](?:_[A-Za-z0-9]+)*|B?F16|F32)(?![A-Za-z0-9])", re.IGNORECASE
)


# -- the spec -------------------------------------------------------------------------------------------


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


# -- checksums ------------------------------------------------------------------------------------------


def _normalise_sha256(value: str) -> str:
    hexdigest = value.strip().lower().removeprefix("sha256:")
    if _HEX64_RE.match(hexdigest) is None:
        raise RequestError(f"invalid sha256 {value!r}: expected 64 hexadecimal digits", param="sha256")
    return hexdigest
