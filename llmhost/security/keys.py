"""API keys: many of them, stored hashed, each with a name, scopes, a model allowlist, expiry and limits.

A secret is ``llmh_`` + 43 URL-safe characters (256 random bits) and is shown once, when it is created or
rotated. Only its SHA-256 is stored: with 256 bits of entropy a fast hash is as safe as a slow one (the
reason GitHub and OpenAI store tokens this way) and a lookup costs microseconds. A key may hold several
secrets: ``rotate`` adds a new one and leaves the old one valid for a grace period.

The server keeps the keys in memory and re-reads them when another process (``llmhost keys ...``, a
second instance on the same PostgreSQL database) has committed a change: every write counts a change of
component ``keys`` (:meth:`llmhost.storage.Transaction.touch`), for the price of one row read per lookup.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from llmhost.errors import ConflictError, NotFoundError, RequestError
from llmhost.storage import (
    INTEGRITY_ERRORS,
    Database,
    DatabaseTarget,
    Transaction,
    add_missing_columns,
    migrate,
)

__all__ = ["SCOPES", "ApiKey", "KeyStore", "hash_secret", "model_allowed", "parse_duration"]

SCOPES = (
    "inference",
    "models:read",
    "models:write",
    "admin",
    "metrics",
    "audit",
    # Document collections for retrieval (llmhost.apps.datasets) and agents (llmhost.apps.agents).
    "datasets:read",
    "datasets:write",
    "agents:read",
    "agents:write",
    # The opt-in MCP tool groups (llmhost.systools), one scope each.
    "tools:filesystem",
    "tools:internet",
    "tools:database",
    "tools:system",
    "tools:resources",
    "tools:security",
)
ALL = "*"
SECRET_PREFIX = "llmh_"

_KEYS_V1 = (
    """CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    models TEXT NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    budget REAL,
    created REAL NOT NULL,
    expires REAL,
    revoked REAL,
    policy TEXT
)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys (name) WHERE revoked IS NULL",
    """CREATE TABLE IF NOT EXISTS api_key_secrets (
    hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES api_keys (id),
    hint TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL
)""",
)
# Each entry takes the tables one version up; append, never edit. Version 1 is also what databases made
# before versions were tracked get: the tables as they were then, plus the columns added since.
MIGRATIONS = (_KEYS_V1, add_missing_columns("api_keys", {"policy": "TEXT"}))


def hash_secret(secret: str | bytes) -> str:
    raw = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(raw).hexdigest()


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``15m``, ``90s`` or a bare number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    value = text.strip().lower()
    scale = units.get(value[-1:])
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise RequestError(f"not a duration: {text!r} (use e.g. 30d, 12h, 15m)", "expires") from None
    if not 0 < seconds < 100 * 365 * 86400:
        raise RequestError(f"duration out of range: {text!r}", "expires")
    return seconds


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as listed: everything but the secret, which is never stored."""

    id: str
    name: str
    scopes: frozenset[str]
    models: tuple[str, ...]  # fnmatch globs; empty = every model
    rpm: int | None
    tpm: int | None
    budget: float | None  # USD over the key's lifetime
    created: float
    expires: float | None
    revoked: float | None
    policy: str | None = None  # a [policies.NAME] of the config; None: the default [policy]

    def as_dict(self) -> dict[str, Any]:
        """Every field, as JSON values (what ``llmhost keys list --json`` and ``GET /api/keys`` show)."""
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "models": list(self.models),
            "rpm": self.rpm,
            "tpm": self.tpm,
            "budget": self.budget,
            "policy": self.policy,
            "created": self.created,
            "expires": self.expires,
            "revoked": self.revoked,
        }

    def usable(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.revoked is None and (self.expires is None or self.expires > now)

    def allows_model(self, model: str) -> bool:
        return model_allowed(self.models, model)


def model_allowed(globs: tuple[str, ...], model: str) -> bool:
    """Whether a key with these model globs may use ``model`` (no globs: every model)."""
    return not globs or any(fnmatch.fnmatchcase(model, glob) for glob in globs)


def _check_scopes(scopes: list[str]) -> frozenset[str]:
    unknown = [s for s in scopes if s not in SCOPES and s != ALL]
    if unknown:
        raise RequestError(f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)} or *", "scopes")
    return frozenset(scopes)


def _row_to_key(row: tuple[Any, ...]) -> ApiKey:
    kid, name, scopes, models, rpm, tpm, budget, created, expires, revoked, policy = row
    return ApiKey(
        id=str(kid),
        name=str(name),
        scopes=frozenset(json.loads(scopes)),
        models=tuple(json.loads(models)),
        rpm=None if rpm is None else int(rpm),
        tpm=None if tpm is None else int(tpm),
        budget=None if budget is None else float(budget),
        created=float(created),
        expires=None if expires is None else float(expires),
        revoked=None if revoked is None else float(revoked),
        policy=None if policy is None else str(policy),
    )


_KEY_COLUMNS = "id, name, scopes, models, rpm, tpm, budget, created, expires, revoked, policy"


class KeyStore:
    """The keys table in the llmhost database, with an in-memory index of secret hashes."""

    def __init__(self, target: DatabaseTarget) -> None:
        self._db = Database(target)
        try:
            migrate(self._db, "keys", MIGRATIONS)
        except BaseException:
            self._db.close()
            raise
        self._lock = threading.Lock()
        self._version = -1
        self._by_hash: dict[str, tuple[str, float | None]] = {}  # secret hash -> (key id, secret expiry)
        self._by_id: dict[str, ApiKey] = {}

    # ----- reading -----------------------------------------------------------------------------------
    def _refresh(self, force: bool = False) -> None:
        version = self._db.version("keys")
        if version == self._version and not force:
            return
        keys = {k.id: k for k in map(_row_to_key, self._db.query(f"SELECT {_KEY_COLUMNS} FROM api_keys"))}
        hashes = {
            str(h): (str(kid), None if exp is None else float(exp))
            for h, kid, exp in self._db.query("SELECT hash, key_id, expires FROM api_key_secrets")
        }
        self._by_id, self._by_hash, self._version = keys, hashes, version

    def lookup(self, secret: str | bytes) -> ApiKey | None:
        """The usable key a secret belongs to, or None (unknown, revoked, expired, rotated out)."""
        digest = hash_secret(secret)
        now = time.time()
        with self._lock:
            self._refresh()
            entry = self._by_hash.get(digest)
            if entry is None:
                return None
            key = self._by_id.get(entry[0])
        if key is None or not key.usable(now) or (entry[1] is not None and entry[1] <= now):
            return None
        return key

    def has_keys(self) -> bool:
        """Whether any key was ever made (revoked and expired ones count: auth stays on)."""
        with self._lock:
            self._refresh()
            return bool(self._by_id)

    def has_usable_keys(self) -> bool:
        with self._lock:
            self._refresh()
            now = time.time()
            return any(k.usable(now) for k in self._by_id.values())

    def list_keys(self, *, include_revoked: bool = False) -> list[ApiKey]:
        with self._lock:
            self._refresh()
            keys = sorted(self._by_id.values(), key=lambda k: k.created)
        return [k for k in keys if include_revoked or k.revoked is None]

    def get(self, name_or_id: str) -> ApiKey:
        """The active key with this name, or the key with this id."""
        with self._lock:
            self._refresh()
            found = self._by_id.get(name_or_id) or next(
                (k for k in self._by_id.values() if k.name == name_or_id and k.revoked is None), None
            )
        if found is None:
            raise NotFoundError(f"no API key named {name_or_id!r}", "name", "key_not_found")
        return found

    # ----- writing -----------------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        scopes: list[str] | None = None,
        models: list[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        budget: float | None = None,
        expires_in: float | None = None,
        policy: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (the only time the secret exists outside the caller). ``policy`` names
        a configured policy; the caller checks that the configuration has it (the store cannot)."""
        if not name or len(name) > 64 or not name.isprintable():
            raise RequestError("a key name is 1 to 64 printable characters", "name")
        for field_name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not 0 < value <= 10**9:
                raise RequestError(f"{field_name} must be between 1 and 1e9", field_name)
        if budget is not None and not 0 <= budget <= 1e9:
            raise RequestError("budget must be between 0 and 1e9 USD", "budget")
        if policy is not None and (not policy or len(policy) > 64 or not policy.isprintable()):
            raise RequestError("a policy name is 1 to 64 printable characters", "policy")
        scope_set = _check_scopes(scopes if scopes is not None else ["inference", "models:read"])
        now = time.time()
        kid = "key_" + secrets.token_hex(6)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        expires = now + expires_in if expires_in is not None else None
        with self._lock:
            try:
                with self._db.transaction() as tx:
                    tx.execute(
                        f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                        (
                            kid,
                            name,
                            json.dumps(sorted(scope_set)),
                            json.dumps(models or []),
                            rpm,
                            tpm,
                            budget,
                            now,
                            expires,
                            policy,
                        ),
                    )
                    self._add_secret(tx, kid, secret, now)
                    tx.touch("keys")
            except INTEGRITY_ERRORS:
                raise ConflictError(f"an active key named {name!r} already exists") from None
            self._refresh(force=True)
            key = self._by_id[kid]
        return key, secret

    @staticmethod
    def _add_secret(tx: Transaction, kid: str, secret: str, now: float) -> None:
        hint = secret[: len(SECRET_PREFIX) + 4] + "…"
        tx.execute(
            "INSERT INTO api_key_secrets (hash, key_id, hint, created, expires) VALUES (?, ?, ?, ?, NULL)",
            (hash_secret(secret), kid, hint, now),
        )

    def revoke(self, name_or_id: str) -> ApiKey:
        key = self.get(name_or_id)
        with self._lock:
            with self._db.transaction() as tx:
                tx.execute("UPDATE api_keys SET revoked = ? WHERE id = ?", (time.time(), key.id))
                tx.touch("keys")
            self._refresh(force=True)
            return self._by_id[key.id]

    def rotate(self, name_or_id: str, *, grace: float = 86400.0) -> tuple[ApiKey, str]:
        """A new secret for the key; its current secrets stay valid for ``grace`` seconds more."""
        key = self.get(name_or_id)
        if not key.usable():
            raise ConflictError(f"key {key.name!r} is expired; create a new one")
        now = time.time()
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            until = now + max(0.0, grace)
            with self._db.transaction() as tx:
                tx.execute(
                    "UPDATE api_key_secrets SET expires = ?"
                    " WHERE key_id = ? AND (expires IS NULL OR expires > ?)",
                    (until, key.id, until),
                )
                self._add_secret(tx, key.id, secret, now)
                tx.touch("keys")
            self._refresh(force=True)
            return self._by_id[key.id], secret

    def hints(self, key_id: str) -> list[str]:
        """The visible starts of a key's live secrets (``llmh_AbCd…``), for listings."""
        now = time.time()
        with self._lock:
            rows = self._db.query(
                "SELECT hint FROM api_key_secrets WHERE key_id = ? AND (expires IS NULL OR expires > ?)"
                " ORDER BY created",
                (key_id, now),
            )
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
