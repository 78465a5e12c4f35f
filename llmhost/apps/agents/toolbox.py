"""The tools an agent's server-side loop can call: llmhost's own MCP tool groups and remote MCP servers.

Both are reached with the official MCP client: llmhost's own server in-process (``OwnTools`` builds
it for the caller's principal, so each call passes its gate — the tool's scope, the policy, the
limits and the audit record — exactly as an MCP client's would), remote servers over Streamable HTTP,
each call wrapped in :meth:`Pipeline.operate` so it is authorised, inspected and audited too.

A connection is opened per listing and per call: an agent run may be a stream whose steps run in
another task than the one that started it, and the SDK's connections belong to the task that opened
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from llmhost.apps.agents.spec import AgentSpec, McpServerSpec
from llmhost.core.pipeline import Pipeline
from llmhost.core.types import Operation, OperationResult, Principal, RequestContext, Tool
from llmhost.errors import LLMHostError, RequestError, classify
from llmhost.toolcalls.schema import enforceable

__all__ = ["OwnTools", "ServerTool", "ToolOutcome", "Toolbox"]

log = logging.getLogger(__name__)

# ``own(principal)`` -> llmhost's MCP server as that principal sees it, and each tool's group.
OwnTools = Callable[[Principal], tuple[Any, dict[str, str]]]
_LIST_TTL_S = 30.0
MAX_OUTPUT_CHARS = 20_000  # a tool's output handed back to the model


@dataclass(frozen=True, slots=True)
class ServerTool:
    """A tool the server runs: the name the model sees, where it lives and its own name there."""

    tool: Tool
    server: str  # "" for llmhost's own
    remote_name: str


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    ok: bool
    output: str
    error: str = ""


def _text_of(result: CallToolResult) -> str:
    if result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


class Toolbox:
    """Lists and calls the server-run tools of agents; tool listings are cached briefly per agent."""

    def __init__(self, pipeline: Pipeline | None, own: OwnTools | None) -> None:
        self.pipeline = pipeline
        self.own = own
        self._listed: dict[tuple[str, str, Principal], tuple[float, list[ServerTool]]] = {}

    def own_groups(self) -> set[str]:
        """The names of llmhost's own tool groups (empty when no MCP server is wired in)."""
        if self.own is None:
            return set()
        _, groups = self.own(Principal())
        return set(groups.values())

    # ----- listing -----------------------------------------------------------------------------------
    async def tools_for(self, spec: AgentSpec, principal: Principal) -> list[ServerTool]:
        key = (spec.name, spec.model_dump_json(), principal)
        cached = self._listed.get(key)
        if cached is not None and time.monotonic() - cached[0] < _LIST_TTL_S:
            return cached[1]
        found: list[ServerTool] = []
        if spec.tool_groups:
            found += await self._own_tools(spec.tool_groups, principal)
        for server in spec.mcp_servers:
            found += await self._remote_tools(server)
        usable = [t for t in found if enforceable(t.tool)]
        for t in found:
            if t not in usable:
                log.warning(
                    "agent %s: tool %s has a schema llmhost cannot enforce; left out", spec.name, t.tool.name
                )
        found = usable
        if len(self._listed) > 256:
            self._listed.clear()
        self._listed[key] = (time.monotonic(), found)
        return found

    async def _own_tools(self, groups: list[str], principal: Principal) -> list[ServerTool]:
        if self.own is None:
            raise RequestError("llmhost's own MCP tools are not served here ([mcp] enabled = false)")
        server, group_of = self.own(principal)
        async with Client(server) as client:
            listed = await client.list_tools()
        wanted = set(groups)
        return [
            ServerTool(Tool(t.name, t.description or "", dict(t.input_schema)), "", t.name)
            for t in listed.tools
            if group_of.get(t.name) in wanted
        ]

    async def _remote_tools(self, server: McpServerSpec) -> list[ServerTool]:
        try:
            async with _remote(server) as client:
                listed = await client.list_tools()
        except Exception as exc:  # an unreachable or broken server: the run cannot use it
            raise RequestError(f"MCP server {server.name!r} ({server.url}) cannot be listed: {exc}") from None
        keep = set(server.tools) if server.tools is not None else None
        out = []
        for t in listed.tools:
            if keep is not None and t.name not in keep:
                continue
            name = f"{server.name}_{t.name}"[:64]
            out.append(ServerTool(Tool(name, t.description or "", dict(t.input_schema)), server.name, t.name))
        return out

    # ----- calling -----------------------------------------------------------------------------------
    async def call(
        self,
        ctx: RequestContext,
        spec: AgentSpec,
        tool: ServerTool,
        arguments: str,
        timeout: float,
    ) -> ToolOutcome:
        """Run one tool call; failures (bad arguments, refusals, timeouts) are outcomes the model sees."""
        try:
            args = json.loads(arguments or "{}")
        except ValueError:
            return ToolOutcome(False, "", "the arguments are not valid JSON")
        if not isinstance(args, dict):
            return ToolOutcome(False, "", "the arguments must be a JSON object")
        try:
            return await asyncio.wait_for(self._call(ctx, spec, tool, args), timeout=max(timeout, 0.1))
        except TimeoutError:
            return ToolOutcome(False, "", f"the tool did not answer within {timeout:.1f} s")
        except LLMHostError as exc:
            return ToolOutcome(False, "", classify(exc).message)

    async def _call(
        self, ctx: RequestContext, spec: AgentSpec, tool: ServerTool, args: dict[str, Any]
    ) -> ToolOutcome:
        if not tool.server:
            if self.own is None:
                return ToolOutcome(False, "", "llmhost's own MCP tools are not served here")
            server, _ = self.own(ctx.principal)
            async with Client(server) as client:  # its gate runs the pipeline's operation hooks
                result = await client.call_tool(tool.remote_name, args)
            return _outcome(result)
        remote = next(s for s in spec.mcp_servers if s.name == tool.server)
        op = Operation(
            name=f"mcp:{remote.name}/{tool.remote_name}", scope="inference", arguments=json.dumps(args)
        )

        async def run(op: Operation) -> OperationResult:
            try:
                async with _remote(remote) as client:
                    result = await client.call_tool(tool.remote_name, json.loads(op.arguments))
            except Exception as exc:
                return OperationResult(error=f"MCP server {remote.name!r} failed: {exc}", status=502)
            text = _text_of(result)
            return (
                OperationResult(error=text, status=400) if result.is_error else OperationResult(output=text)
            )

        child = RequestContext(principal=ctx.principal, door=ctx.door)
        assert self.pipeline is not None, "the service sets the toolbox's pipeline"
        done = await self.pipeline.operate(child, op, run)
        if done.error:
            return ToolOutcome(False, "", done.error[:MAX_OUTPUT_CHARS])
        return ToolOutcome(True, done.output[:MAX_OUTPUT_CHARS])


def _outcome(result: CallToolResult) -> ToolOutcome:
    text = _text_of(result)[:MAX_OUTPUT_CHARS]
    return ToolOutcome(False, "", text) if result.is_error else ToolOutcome(True, text)


@contextlib.asynccontextmanager
async def _remote(server: McpServerSpec) -> AsyncIterator[Client]:
    """A connected client for ``server`` (its headers on every request), closed with its HTTP client."""
    http = httpx2.AsyncClient(headers=dict(server.headers), timeout=httpx2.Timeout(30.0))
    async with http, Client(streamable_http_client(server.url, http_client=http)) as client:
        yield client
