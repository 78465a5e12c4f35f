"""Connecting the official MCP SDK client to a loopback llmhost, with or without a key."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

T = TypeVar("T")


def client_for(url: str, key: str | None = None, mode: str = "auto", **headers: str) -> Client:
    """The SDK's client on ``url`` (``.../mcp``), sending ``key`` as a bearer token."""
    if key is None and not headers:
        return Client(url, mode=mode)  # type: ignore[arg-type]
    sent = dict(headers)
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    http = httpx2.AsyncClient(headers=sent, timeout=httpx2.Timeout(60.0))
    return Client(streamable_http_client(url, http_client=http), mode=mode)  # type: ignore[arg-type]


def run(body: Callable[[Client], Awaitable[T]], url: str, key: str | None = None, mode: str = "auto") -> T:
    """``body(client)`` on a fresh connection, run to completion."""

    async def main() -> T:
        async with client_for(url, key, mode) as client:
            return await body(client)

    return asyncio.run(main())


def call(
    url: str, tool: str, arguments: dict[str, Any] | None = None, key: str | None = None
) -> CallToolResult:
    async def body(client: Client) -> CallToolResult:
        return await client.call_tool(tool, arguments or {})

    return run(body, url, key)


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def structured(result: CallToolResult) -> Any:
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    assert json.loads(text_of(result)) == result.structured_content  # the text block says the same
    return result.structured_content
