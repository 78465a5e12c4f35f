"""``/api/keys`` (scope ``admin``): the API keys of :mod:`llmhost.security.keys` over HTTP, what
``llmhost keys`` does on the command line. A secret is in the answer of ``POST /api/keys`` and of
``.../rotate`` only, once; listings carry the visible start of each live secret (``llmh_AbCd…``).

    GET  /api/keys?all=true           -> {"object": "list", "data": [key, ...], "scopes": [...]}
    POST /api/keys {"name", "scopes"?, "models"?, "rpm"?, "tpm"?, "budget"?, "expires"?, "policy"?}
                                      -> key + "secret"
    POST /api/keys/{id}/revoke        -> key
    POST /api/keys/{id}/rotate {"grace"?: "1d"} -> key + "secret"

``{id}`` is the key's id or its name. The gate writes an audit record for each call that changes a key
(door ``admin``), as for every admin call; the record holds the body's hash, never a secret.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from llmhost.doors.common import door_route
from llmhost.doors.openai.translate import render_error
from llmhost.errors import ConflictError, RequestError
from llmhost.security.keys import ALL, SCOPES, ApiKey, KeyStore, parse_duration
from llmhost.service import Service

__all__ = ["KeyCreate", "KeyRotate", "key_json", "router"]

router = APIRouter(prefix="/api", route_class=door_route(render_error))


class KeyCreate(BaseModel):
    """A new key: the same fields as ``llmhost keys create``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Who or what uses the key.")
    scopes: list[str] | None = Field(None, description="Scopes, or ['*']; default inference, models:read.")
    models: list[str] | None = Field(None, description="Model name globs the key may use; default all.")
    rpm: int | None = Field(None, description="Requests per minute.")
    tpm: int | None = Field(None, description="Tokens per minute (prompt + completion).")
    budget: float | None = Field(None, description="Spending limit in USD over the key's lifetime.")
    expires: str | None = Field(None, description="Lifetime: 90s, 15m, 12h, 30d, 2w; default none.")
    policy: str | None = Field(None, description="A governance policy of the config's [policies.NAME].")


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace: str = Field("1d", description="How long the old secret keeps working: 1d, 12h, 0s.")


def _keys(request: Request) -> tuple[Service, KeyStore]:
    service: Service = request.app.state.service
    return service, service.keys


def key_json(key: ApiKey, hints: list[str], now: float | None = None) -> dict[str, Any]:
    """A key as the API lists it: every field but the secret, its state, and its live secrets' starts."""
    state = "revoked" if key.revoked is not None else ("active" if key.usable(now) else "expired")
    return {
        "object": "api_key",
        **key.as_dict(),
        "state": state,
        "secrets": hints,
    }


# Plain ``def`` routes: FastAPI runs them on its thread pool, off the event loop (each is a SQLite write).
@router.get("/keys")
def list_keys(request: Request, include_revoked: bool = Query(False, alias="all")) -> dict[str, Any]:
    """Keys, oldest first; ``all=true`` includes revoked ones. ``scopes``: the scopes a key may have."""
    _, store = _keys(request)
    now = time.time()
    keys = store.list_keys(include_revoked=include_revoked)
    data = [key_json(k, store.hints(k.id), now) for k in keys]
    return {"object": "list", "data": data, "scopes": [*SCOPES, ALL]}


@router.post("/keys")
def create_key(body: KeyCreate, request: Request) -> dict[str, Any]:
    """Create a key; the answer holds its secret, the only time it is shown."""
    service, store = _keys(request)
    if body.policy is not None and body.policy not in service.settings.policies:
        known = ", ".join(sorted(service.settings.policies)) or "none is configured"
        raise RequestError(f"no policy named {body.policy!r} in the config's [policies] ({known})", "policy")
    key, secret = store.create(
        body.name,
        scopes=body.scopes,
        models=body.models,
        rpm=body.rpm,
        tpm=body.tpm,
        budget=body.budget,
        expires_in=parse_duration(body.expires) if body.expires else None,
        policy=body.policy,
    )
    return {**key_json(key, store.hints(key.id)), "secret": secret}


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
    """Revoke a key: its secrets, and the dashboard sessions opened with them, stop working at once."""
    _, store = _keys(request)
    if store.get(key_id).revoked is not None:
        raise ConflictError(f"key {key_id!r} is already revoked")
    key = store.revoke(key_id)
    return key_json(key, store.hints(key.id))


@router.post("/keys/{key_id}/rotate")
def rotate_key(key_id: str, request: Request, body: KeyRotate | None = None) -> dict[str, Any]:
    """A new secret for the key (in the answer, once); the old ones work for ``grace`` more."""
    _, store = _keys(request)
    grace = (body or KeyRotate()).grace.strip()
    seconds = 0.0 if grace in {"0", "0s"} else parse_duration(grace)
    if store.get(key_id).revoked is not None:
        raise ConflictError(f"key {key_id!r} is revoked; create a new one")
    key, secret = store.rotate(key_id, grace=seconds)
    return {**key_json(key, store.hints(key.id)), "secret": secret}
