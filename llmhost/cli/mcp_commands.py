"""``llmhost mcp``: llmhost's MCP server over stdio, for clients that start a command (Claude Desktop,
Claude Code, VS Code, Cursor). The running HTTP server serves the same tools at ``/mcp``."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from typing import Annotated

import typer

from llmhost.cli.common import ConfigOpt, fail
from llmhost.config import load_settings
from llmhost.core.types import Principal
from llmhost.errors import ConfigError
from llmhost.security.auth import CONFIG_PRINCIPAL, OWNER, principal_of
from llmhost.service import Service

__all__ = ["register"]

_HELP = """Serve llmhost's models and operations as MCP tools over stdio (JSON-RPC on stdin/stdout).

Register it with a client that starts a command, e.g. Claude Code:

  claude mcp add llmhost -- llmhost mcp

or Claude Desktop / VS Code / Cursor (their mcpServers / servers JSON):

  "llmhost": {"command": "llmhost", "args": ["mcp"]}

Clients that take a URL use the running server instead: http://127.0.0.1:8080/mcp (with
"Authorization: Bearer <key>" once keys exist). Without --api-key the tools run as this machine's
owner; with one they have that key's scopes, model list and limits. Every call is audited.
"""


def mcp(
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="LLMHOST_MCP_API_KEY",
            help="Run the tools as this key (its scopes and limits) instead of as the owner.",
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        fail(str(exc).replace("\n", "; "), 2)
        return
    # stdout carries the protocol: every log record goes to stderr.
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from llmhost.doors.mcp import build_server  # the MCP SDK loads only for this command

    service = Service(settings)
    try:
        principal = OWNER if not api_key else _principal_for(service, api_key)
        server = build_server(service, principal=principal)

        async def main() -> None:
            await service.startup(preload=False)
            try:
                await server.run_stdio_async()
            finally:
                await service.aclose()

        asyncio.run(main())
    finally:
        service.close()


def _principal_for(service: Service, api_key: str) -> Principal:
    """The key's principal: an explicit key always restricts, even where no key is required."""
    config_key = service.settings.api_key
    if config_key is not None and secrets.compare_digest(api_key, config_key.get_secret_value()):
        return CONFIG_PRINCIPAL
    key = service.keys.lookup(api_key)
    if key is None:
        fail("Incorrect API key provided (--api-key / LLMHOST_MCP_API_KEY): no usable key has this secret")
    return principal_of(key)


def register(app: typer.Typer) -> None:
    app.command("mcp", help=_HELP)(mcp)
