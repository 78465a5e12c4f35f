"""Who is asking: the one authenticator every door uses, and the pipeline's "auth" stage.

Authentication is required as soon as a key exists: the config-file key (``api_key``, for a single-key
set-up) or any key ever made with ``llmhost keys create`` (revoking the last one keeps auth on). With
neither, a loopback-only server is open to this machine's own clients, as Ollama and llama-server are;
``llmhost serve`` refuses a non-loopback bind unless some key can get in.

    door (HTTP gate: bearer or x-api-key · CLI: the machine's owner · MCP ...)
      -> Authenticator.authenticate(secret) -> Principal (key id, scopes, model globs, limits)
      -> pipeline "auth" stage: the principal may run inference, on this model

Non-inference HTTP routes (admin, metrics, audit, model management) are checked by the gate against the
scope table in :mod:`llmhost.doors.http.scopes`, with the same principal.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from llmhost.core.stage import Request, StageBase
from llmhost.core.types import Operation, Principal, RequestContext
from llmhost.errors import AuthError, RefusedError
from llmhost.security.keys import ApiKey, KeyStore, model_allowed

__all__ = [
    "CONFIG_PRINCIPAL",
    "OWNER",
    "OWNER_TOKEN_FILE",
    "AuthStage",
    "Authenticator",
    "check_scope",
    "principal_of",
    "read_owner_token",
    "write_owner_token",
]

# A running server's token for the machine's owner: the CLI (``llmhost ps``, ``rm``, ``cp``) reads it
# from the data dir (mode 0600, so only the user that runs llmhost can) to ask the server what it has
# loaded, whatever keys exist. Jupyter's runtime token works the same way.
OWNER_TOKEN_FILE = ".owner-token"


def write_owner_token(data_dir: Path) -> str:
    token = "llmo_" + secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / OWNER_TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_CREAT
    return token


def read_owner_token(data_dir: Path) -> str | None:
    try:
        return (data_dir / OWNER_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


# The machine's owner: the CLI (which reads the database directly anyway) and an open loopback server.
OWNER = Principal(name="owner", key_id=None, scopes=frozenset({"*"}))
# Whoever holds the config-file key: every scope, no limits (a single-key set-up).
CONFIG_PRINCIPAL = Principal(name="config-key", key_id="config", scopes=frozenset({"*"}))


def principal_of(key: ApiKey) -> Principal:
    return Principal(
        name=key.name,
        key_id=key.id,
        scopes=key.scopes,
        models=key.models,
        rpm=key.rpm,
        tpm=key.tpm,
        budget=key.budget,
        policy=key.policy,
    )


class Authenticator:
    """Turns a presented secret into a :class:`Principal`, or refuses it."""

    def __init__(self, keys: KeyStore | None, config_key: str | None) -> None:
        self.keys = keys
        self._config_key = config_key.encode() if config_key else None
        self.owner_token: bytes | None = None  # set by the HTTP server (write_owner_token)

    @property
    def required(self) -> bool:
        """Whether requests must carry a key: a config key is set, or a key was ever created (revoking
        the last key does not open the server)."""
        return self._config_key is not None or (self.keys is not None and self.keys.has_keys())

    @property
    def usable(self) -> bool:
        """Whether some key can get in: what a non-loopback bind needs."""
        return self._config_key is not None or (self.keys is not None and self.keys.has_usable_keys())

    def authenticate(self, secret: bytes | None) -> Principal:
        """The principal for ``secret``; :data:`OWNER` when no key is required and none was sent."""
        if not secret:
            if self.required:
                raise AuthError("You didn't provide an API key.")
            return OWNER
        if self._config_key is not None and secrets.compare_digest(secret, self._config_key):
            return CONFIG_PRINCIPAL
        if self.owner_token is not None and secrets.compare_digest(secret, self.owner_token):
            return OWNER
        key = self.keys.lookup(secret) if self.keys is not None else None
        if key is not None:
            return principal_of(key)
        if not self.required:
            # A key sent to an open server is ignored, as Ollama does (clients always send one).
            return OWNER
        raise AuthError("Incorrect API key provided.", presented=True)


def check_scope(principal: Principal, scope: str) -> None:
    if not principal.may(scope):
        raise RefusedError(f"this API key lacks the {scope!r} scope", code="insufficient_scope")


class AuthStage(StageBase):
    """The pipeline's "auth" stage: inference needs the ``inference`` scope and an allowed model; an
    operation needs its own scope (and an allowed model when it names one).

    Doors authenticate before the pipeline (each reads the secret from its own header); this stage
    holds for every door alike, the CLI and MCP included, so no door can skip the scope and model rules.
    """

    name = "auth"

    async def before(self, ctx: RequestContext, request: Request) -> Request:
        check_scope(ctx.principal, "inference")
        _check_model(ctx.principal, request.model)
        return request

    async def before_operation(self, ctx: RequestContext, op: Operation) -> Operation:
        check_scope(ctx.principal, op.scope)
        if op.model:
            _check_model(ctx.principal, op.model)
        return op


def _check_model(principal: Principal, model: str) -> None:
    if not model_allowed(principal.models, model):
        raise RefusedError(f"this API key may not use model {model!r}", code="model_not_allowed")
