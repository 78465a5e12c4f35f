"""Provider objects for the configured ``[providers]``, plus the local engine."""

from __future__ import annotations

from llmhost.config import Settings
from llmhost.providers.anthropic import AnthropicProvider
from llmhost.providers.base import Provider
from llmhost.providers.http import Timeouts, resolve_secret
from llmhost.providers.ollama import OllamaProvider
from llmhost.providers.openai_compat import OpenAICompatProvider

__all__ = ["build_providers"]


def build_providers(settings: Settings, local: Provider) -> dict[str, Provider]:
    """Provider objects for ``[providers]``, plus ``local``."""
    providers: dict[str, Provider] = {"local": local}
    for name, cfg in settings.providers.items():
        if cfg.type == "local":
            providers[name] = local
            continue
        timeouts = Timeouts(
            connect=cfg.timeout_connect, first_token=cfg.timeout_first_token, total=cfg.timeout_total
        )
        secret = cfg.api_key.get_secret_value() if cfg.api_key else None
        key = resolve_secret(secret, cfg.api_key_env, cfg.api_key_file)
        if cfg.type == "openai":
            assert cfg.base_url is not None
            providers[name] = OpenAICompatProvider(
                name, cfg.base_url, api_key=key, timeouts=timeouts, extra_headers=cfg.headers or None
            )
        elif cfg.type == "anthropic":
            providers[name] = AnthropicProvider(
                name, base_url=cfg.base_url or "https://api.anthropic.com", api_key=key, timeouts=timeouts
            )
        elif cfg.type == "ollama":
            providers[name] = OllamaProvider(
                name, base_url=cfg.base_url or "http://127.0.0.1:11434", timeouts=timeouts
            )
    return providers
