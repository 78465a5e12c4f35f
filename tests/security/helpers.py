"""What the security tests share: making a key straight in a data dir's key table."""

from __future__ import annotations

from typing import Any

from llmhost.config import Settings
from llmhost.security.keys import KeyStore


def make_key(settings: Settings, name: str, **options: Any) -> str:
    """A new key's secret (``options`` as ``KeyStore.create`` takes them), as ``llmhost keys create``."""
    store = KeyStore(settings.database_path)
    try:
        return store.create(name, **options)[1]
    finally:
        store.close()
