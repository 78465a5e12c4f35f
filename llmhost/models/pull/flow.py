"""The pull itself: :func:`pull_model` runs the steps :mod:`llmhost.models.pull` lists, in that order."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from llmhost.errors import ModelError, RefusedError, RequestError
from llmhost.models.pull.download import _RETRIES, _Download
from llmhost.models.pull.hub import _Redactor, _resolve_target, _resolve_token
from llmhost.models.pull.progress import ProgressFn, PullProgress, _Reporter
from llmhost.models.pull.spec import PullSpec, _normalise_sha256, default_model_name, parse_pull_spec
from llmhost.models.pull.staging import (
    _disk_error,
    _register,
    _register_existing,
    _remove_stale_partials,
    _Staging,
)
from llmhost.models.pull.transport import FetchError
from llmhost.models.registry import ModelRecord
from llmhost.models.store import ModelStore, validate_model_name
from llmhost.net import DestinationPolicy


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
    destinations: DestinationPolicy | None = None,
) -> ModelRecord:
    """Download the model ``spec`` names, verify it, and register it in ``store``; return its record.

    ``name`` defaults to :func:`default_model_name`. ``sha256`` is required for a plain URL and, for the
    hub, must agree with the hub's LFS sha256 when given. ``endpoint``/``token`` override ``HF_ENDPOINT``/
    ``HF_TOKEN``. ``staging_dir`` (default ``<models_dir>/downloads``) should be on the models' filesystem.
    ``retries`` is how often a dropped connection is resumed within this call.

    ``destinations`` limits where the pull may connect (the URL, each redirect, the hub endpoint): pass
    one whenever the spec comes from someone other than the machine's owner (the HTTP API does, from
    ``pull_allow_hosts``). ``None`` connects anywhere, as ``curl`` would for the owner at a shell (the
    CLI). A URL whose host is an address the policy refuses fails at once with a
    :class:`~llmhost.errors.RefusedError`; a name is judged on its addresses, during the download, as a
    :class:`FetchError`.
    """
    parsed = parse_pull_spec(spec)
    if destinations is not None:
        _refuse_literal(parsed, destinations)
    if name is not None:
        validate_model_name(name)
    expected_user = None if sha256 is None else _normalise_sha256(sha256)
    report = _Reporter(progress)
    report(PullProgress("resolving", detail=str(parsed)))
    tok = _resolve_token(token) if parsed.kind == "hf" else None
    redact = _Redactor(tok)
    try:
        target = _resolve_target(parsed, expected_user, endpoint, tok, redact, destinations)
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
            path = _Download(target, staging, report, max(0, retries), destinations).run()
            try:
                return _register(store, path, model_name, target, report)
            finally:
                staging.discard()
    except RequestError as exc:
        if tok and tok in str(exc):  # belt and braces: no message carries the token
            raise RequestError(redact(str(exc)), param=exc.param, code=exc.code) from None
        raise
    except FetchError as exc:
        if tok and tok in str(exc):
            raise FetchError(redact(str(exc)), url=redact(exc.url)) from None
        raise
    except ModelError as exc:
        if tok and tok in str(exc):
            raise ModelError(redact(str(exc))) from None
        raise


def _refuse_literal(parsed: PullSpec, destinations: DestinationPolicy) -> None:
    """A URL naming a refused address (``127.0.0.1``, ``169.254.169.254``, ``localhost``) fails before
    anything is fetched, with a clear 403: the client wrote that address, so saying so tells it nothing."""
    if parsed.kind != "url":
        return
    host = urlsplit(parsed.url or "").hostname or ""
    why = destinations.refusal(host)
    if why is not None:
        raise RefusedError(
            f"pulls over the API may not reach {host}: {why}; the server's operator can allow it with "
            "pull_allow_hosts"
        )
