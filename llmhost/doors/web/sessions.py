"""The dashboard's server-side sessions: a random token in an HTTP-only cookie stands for an API key.

Logging in (``POST /ui/login``) checks the key once and hands out a token; the browser keeps only the
token (``HttpOnly``: page scripts cannot read it), and the key's secret stays in this process's memory,
never on disk. Every request that comes with the cookie is authenticated again with that secret by the
HTTP gate, against the same scope table as any other client, so revoking or expiring a key ends its
sessions' access at once. A session not used for ``idle_seconds`` (12 h) is gone; so is every session
when the server restarts.

Tokens are kept under their SHA-256, so what a dump of this store shows cannot be replayed as a cookie.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

__all__ = ["COOKIE_NAME", "IDLE_SECONDS", "Session", "SessionStore", "cookie_token"]

COOKIE_NAME = "llmhost_session"
IDLE_SECONDS = 12 * 3600.0
MAX_SESSIONS = 10_000  # past this, the least recently used session goes (a client logging in in a loop)


@dataclass(slots=True)
class Session:
    """One logged-in browser: the key's secret and when it was last used."""

    secret: bytes
    created: float
    last_used: float

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"Session(created={self.created:.0f}, last_used={self.last_used:.0f})"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """Token -> session, in memory, with idle expiry; safe to use from any thread."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS, max_sessions: int = MAX_SESSIONS) -> None:
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}  # insertion order = least recently used first

    def create(self, secret: bytes) -> str:
        """A new session for ``secret``; returns the token for the cookie (256 random bits)."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._expire(now)
            while len(self._sessions) >= self.max_sessions:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[_digest(token)] = Session(secret, now, now)
        return token

    def secret_for(self, token: str) -> bytes | None:
        """The secret behind a live token (its idle clock restarts), or None."""
        digest = _digest(token)
        now = time.time()
        with self._lock:
            session = self._sessions.get(digest)
            if session is None:
                return None
            if now - session.last_used > self.idle_seconds:
                del self._sessions[digest]
                return None
            session.last_used = now
            self._sessions[digest] = self._sessions.pop(digest)  # most recently used last
            return session.secret

    def end(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(_digest(token), None)

    def __len__(self) -> int:
        with self._lock:
            self._expire(time.time())
            return len(self._sessions)

    def _expire(self, now: float) -> None:
        """Drop idle sessions from the front (least recently used first); the caller holds the lock."""
        while self._sessions:
            digest, session = next(iter(self._sessions.items()))
            if now - session.last_used <= self.idle_seconds:
                return
            del self._sessions[digest]


def cookie_token(cookie_header: bytes) -> str | None:
    """The session token in a ``Cookie`` header, or None. Only the first cookie of that name counts."""
    for part in cookie_header.decode("latin-1").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == COOKIE_NAME:
            return value.strip().strip('"') or None
    return None
