"""``llmhost mcp``: llmhost's MCP server over stdio, for clients that start a command (Claude Desktop,
Claude Code, VS Code, Cursor). The running HTTP server serves the same tools at ``/mcp``."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated

import typer

from llmhost.cli.common import ConfigOpt, fail
from llmhost.config import load_settings
from llmhost.errors import AuthError, ConfigError
from llmhost.security.auth import OWNER

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
    from llmhost.doors.mcp import build_server
    from llmhost.service import Service

    service = Service(settings)
    try:
        principal = OWNER
        if api_key:
            try:
                principal = service.auth.authenticate(api_key.encode())
            except AuthError as exc:
                fail(str(exc))
        server = build_server(service, principal=principal)

        async def main() -> None:
            await service.startup(preload=False)
            try:
                await server.run_stdio_async()
            finally:
                await service.gateway.aclose()
                await service.windows.aclose()

        asyncio.run(main())
    finally:
        service.close()


def register(app: typer.Typer) -> None:
    app.command("mcp", help=_HELP)(mcp)
