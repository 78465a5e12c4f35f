"""``llmhost keys create | list | revoke | rotate``: API keys with scopes, model globs, limits and expiry.

The commands open the key table in the llmhost database directly; a running server sees each change on
its next request. ``register(app)`` adds the group to the main typer app.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from llmhost.cli.common import ConfigOpt, console, err_console, settings_for
from llmhost.cli.common import fail as _fail
from llmhost.config import Settings
from llmhost.errors import LLMHostError
from llmhost.security.keys import SCOPES, KeyStore, parse_duration

__all__ = ["register"]

keys_app = typer.Typer(help="API keys: create, list, revoke, rotate.", no_args_is_help=True)


def _settings(config: Path | None) -> Settings:
    return settings_for(config)


def _store(config: Path | None) -> KeyStore:
    return KeyStore(_settings(config).database_for("llmhost.db"))


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


_SCOPES_HELP = f"Comma-separated, from: {', '.join(SCOPES)}, or * (default: inference,models:read)."


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A name for the key (who or what uses it).")],
    scopes: Annotated[str | None, typer.Option(help=_SCOPES_HELP)] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated model globs (default: all).")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (prompt + completion).")] = None,
    budget: Annotated[float | None, typer.Option(help="Spending limit in USD (the routes' prices).")] = None,
    expires: Annotated[str | None, typer.Option(help="Lifetime, e.g. 30d, 12h (default: none).")] = None,
    policy: Annotated[
        str | None,
        typer.Option(help="A governance policy from the config's [policies.NAME] (default: [policy])."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Create a key and print its secret (shown only this once)."""
    settings = _settings(config)
    if policy is not None and policy not in settings.policies:
        known = ", ".join(sorted(settings.policies)) or "none is configured"
        _fail(f"no policy named {policy!r} in the config's [policies] ({known})")
    store = KeyStore(settings.database_for("llmhost.db"))
    try:
        key, secret = store.create(
            name,
            scopes=_split(scopes),
            models=_split(models),
            rpm=rpm,
            tpm=tpm,
            budget=budget,
            expires_in=parse_duration(expires) if expires is not None else None,
            policy=policy,
        )
    except LLMHostError as exc:
        _fail(str(exc))
    finally:
        store.close()
    err_console.print(
        f"created key [bold]{escape(key.name)}[/bold] ({key.id}), scopes {', '.join(sorted(key.scopes))}; "
        "the secret is shown once:",
        highlight=False,
    )
    print(secret)


@keys_app.command("list")
def list_keys(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    config: ConfigOpt = None,
) -> None:
    """List keys (never their secrets)."""
    store = _store(config)
    try:
        keys = store.list_keys(include_revoked=all_keys)
        hints = {k.id: store.hints(k.id) for k in keys}
    finally:
        store.close()
    if as_json:
        for key in keys:
            print(json.dumps({**key.as_dict(), "secrets": hints[key.id]}))
        return
    table = Table(
        "NAME", "ID", "SCOPES", "MODELS", "RPM", "TPM", "BUDGET", "POLICY", "EXPIRES", "STATE", box=None
    )
    for key in keys:
        state = "revoked" if key.revoked is not None else ("active" if key.usable() else "expired")
        table.add_row(
            escape(key.name),
            key.id,
            ",".join(sorted(key.scopes)),
            ",".join(key.models) or "*",
            str(key.rpm or "-"),
            str(key.tpm or "-"),
            "-" if key.budget is None else f"${key.budget:g}",
            escape(key.policy or "-"),
            _when(key.expires),
            state,
        )
    console.print(table)


@keys_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="Key name or id.")], config: ConfigOpt = None) -> None:
    """Revoke a key: its secrets stop working at once."""
    store = _store(config)
    try:
        key = store.revoke(name)
    except LLMHostError as exc:
        _fail(str(exc))
    finally:
        store.close()
    err_console.print(f"revoked key {escape(key.name)} ({key.id})", highlight=False)


@keys_app.command("rotate")
def rotate(
    name: Annotated[str, typer.Argument(help="Key name or id.")],
    grace: Annotated[str, typer.Option(help="How long the old secret keeps working, e.g. 1d, 0s.")] = "1d",
    config: ConfigOpt = None,
) -> None:
    """Give a key a new secret (printed once); the old one works for the grace period."""
    store = _store(config)
    try:
        seconds = 0.0 if grace.strip() in {"0", "0s"} else parse_duration(grace)
        key, secret = store.rotate(name, grace=seconds)
    except LLMHostError as exc:
        _fail(str(exc))
    finally:
        store.close()
    err_console.print(f"rotated key {escape(key.name)} ({key.id}); the new secret is shown once:")
    print(secret)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
