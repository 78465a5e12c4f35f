"""The key store: hashed secrets, scopes, expiry, revocation, rotation with a grace period."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmhost.errors import ConflictError, NotFoundError, RequestError
from llmhost.security.keys import KeyStore, parse_duration


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    s = KeyStore(tmp_path / "llmhost.db")
    yield s
    s.close()


def test_a_secret_is_shown_once_and_stored_only_as_a_hash(store: KeyStore, tmp_path: Path) -> None:
    key, secret = store.create("alice")
    assert secret.startswith("llmh_") and len(secret) > 40
    assert store.lookup(secret) == key
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("llmhost.db*"))
    assert secret.encode() not in raw
    assert secret[5:].encode() not in raw


def test_default_scopes_are_inference_and_reading_models(store: KeyStore) -> None:
    key, _ = store.create("k")
    assert key.scopes == {"inference", "models:read"}


def test_unknown_scope_and_bad_limits_are_refused(store: KeyStore) -> None:
    with pytest.raises(RequestError, match="unknown scope"):
        store.create("k", scopes=["inference", "root"])
    with pytest.raises(RequestError):
        store.create("k", rpm=0)
    with pytest.raises(RequestError):
        store.create("k", budget=-1)
    with pytest.raises(RequestError):
        store.create("")
    assert store.list_keys() == []


def test_names_are_unique_among_active_keys(store: KeyStore) -> None:
    store.create("k")
    with pytest.raises(ConflictError):
        store.create("k")
    store.revoke("k")
    store.create("k")  # a revoked key's name may be reused
    assert [k.name for k in store.list_keys(include_revoked=True)] == ["k", "k"]


def test_revoked_and_expired_keys_stop_working(store: KeyStore) -> None:
    _, revoked = store.create("a")
    _, expiring = store.create("b", expires_in=0.2)
    assert store.lookup(expiring) is not None
    store.revoke("a")
    assert store.lookup(revoked) is None
    time.sleep(0.3)
    assert store.lookup(expiring) is None
    assert not store.has_usable_keys()
    assert store.lookup("llmh_not-a-key") is None


def test_rotation_keeps_the_old_secret_for_the_grace_period(store: KeyStore) -> None:
    _, old = store.create("svc")
    _, new = store.rotate("svc", grace=0.3)
    assert store.lookup(old) is not None and store.lookup(new) is not None
    time.sleep(0.4)
    assert store.lookup(old) is None
    assert store.lookup(new) is not None
    _, newer = store.rotate("svc", grace=0)
    assert store.lookup(new) is None and store.lookup(newer) is not None


def test_another_process_changes_are_seen_on_the_next_lookup(tmp_path: Path) -> None:
    server = KeyStore(tmp_path / "llmhost.db")
    cli = KeyStore(tmp_path / "llmhost.db")
    try:
        assert not server.has_usable_keys()
        _, secret = cli.create("late")
        assert server.lookup(secret) is not None
        cli.revoke("late")
        assert server.lookup(secret) is None
    finally:
        server.close()
        cli.close()


def test_revoke_of_an_unknown_key_is_a_clear_error(store: KeyStore) -> None:
    with pytest.raises(NotFoundError, match="no API key named"):
        store.revoke("ghost")


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("15m", 900), ("90", 90)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-1d", "0", "1e20"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(RequestError):
        parse_duration(text)
