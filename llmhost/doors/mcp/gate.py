"""The MCP door's gate: who calls, which scope each tool needs, and the pipeline around every call.

    tools/call (stdio or POST /mcp, after the HTTP gate authenticated the key and checked Origin)
      -> ToolGate: the caller's principal (the HTTP gate's, or the stdio server's) -> a RequestContext
      -> inference tools (chat, complete, embed): the tool itself runs Pipeline.run/embed
         every other tool: Pipeline.operate (audit, auth: the tool's scope, policy, limits) around it
      -> refusals (scope, rate limit, policy) come back as a tool error (``isError``) with the reason

Tools read the call's context with :func:`current`; the gate sets it for the length of the call.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent, ToolAnnotations

from llmhost.core.pipeline import Pipeline
from llmhost.core.types import Operation, OperationResult, Principal, RequestContext, new_id
from llmhost.doors.common import PRINCIPAL_KEY
from llmhost.errors import LLMHostError, classify

__all__ = ["STATUS_KEY", "Registrar", "ToolGate", "ToolSpec", "current", "tool_error"]

log = logging.getLogger(__name__)

RESOURCE_SCOPE = "models:read"  # the resources are model cards, and compare_models lists the models
INVALID_PARAMS = -32602  # JSON-RPC's code for an unknown tool or prompt, or a prompt's missing argument
RESOURCE_NOT_FOUND_2025 = -32002  # the 2025 revisions' code for it; 2026-07-28 uses -32602
FORBIDDEN = -32010  # implementation-defined (-32000..-32019; the SDK uses -32000 and -32001): scope lacking
_SCOPED_PROMPTS = frozenset({"compare_models"})
STATUS_KEY = "mcp.status"  # a failed tool's status, noted by the tool wrapper (doors.mcp.server)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
_CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "llmhost_mcp_call", default=None
)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What the gate knows of a tool: the scope it needs, whether it runs inference itself (then the
    pipeline sees the inference request, not an operation), and which argument names a model."""

    scope: str
    inference: bool = False
    model_arg: str | None = None
    group: str = ""  # the tool group it belongs to (what an agent's ``tool_groups`` names)


def current() -> RequestContext:
    """The context of the tool call running now (set by :class:`ToolGate`)."""
    ctx = _CURRENT.get()
    if ctx is None:
        raise RuntimeError("no MCP tool call is running")
    return ctx


def tool_error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def _reporting(fn: F) -> F:
    """llmhost's errors become the tool's error message (``isError``), their status noted for the
    audit record; anything else is the SDK's "unexpected" error, which hides its text."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except LLMHostError as exc:
            info = classify(exc)
            with contextlib.suppress(RuntimeError):  # outside the gate: a test calling the server itself
                current().attrs[STATUS_KEY] = info.status
            if info.status >= 500:
                log.error("MCP tool %s failed: %s", fn.__name__, exc)
            raise ToolError(info.message) from None

    return wrapper  # type: ignore[return-value]


class Registrar:
    """Adds tools to the server and their gate specs, in one call per tool."""

    def __init__(self, server: MCPServer[Any]) -> None:
        self.server = server
        self.specs: dict[str, ToolSpec] = {}
        self.group = ""  # the group the tools registered next belong to

    def tool(
        self,
        fn: Callable[..., Awaitable[Any]],
        *,
        scope: str,
        title: str,
        name: str | None = None,
        inference: bool = False,
        model_arg: str | None = None,
        read_only: bool = True,
        destructive: bool = False,
        idempotent: bool = False,
        open_world: bool = False,
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"MCP tool {fn.__name__} must be async")
        name = name or fn.__name__
        if name in self.specs:
            raise ValueError(f"MCP tool {name!r} is registered twice")
        annotations = ToolAnnotations(
            title=title,
            read_only_hint=read_only,
            destructive_hint=destructive,
            idempotent_hint=idempotent,
            open_world_hint=open_world,
        )
        self.server.add_tool(
            _reporting(fn), name=name, title=title, annotations=annotations, structured_output=True
        )
        self.specs[name] = ToolSpec(scope=scope, inference=inference, model_arg=model_arg, group=self.group)


class ToolGate:
    """An MCP server middleware: every ``tools/call`` runs under the caller's principal, through the
    pipeline. ``default`` is the principal of a caller without HTTP (stdio: the machine's owner, or the
    key ``llmhost mcp --api-key`` was given)."""

    def __init__(self, pipeline: Pipeline, specs: dict[str, ToolSpec], default: Principal) -> None:
        self.pipeline = pipeline
        self.specs = specs
        self.default = default

    def principal_of(self, ctx: ServerRequestContext[Any, Any]) -> Principal:
        scope = getattr(ctx.request, "scope", None)
        if isinstance(scope, dict):
            found = scope.get(PRINCIPAL_KEY)
            if isinstance(found, Principal):
                return found
        return self.default

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        params = ctx.params if isinstance(ctx.params, dict) else {}
        if ctx.method == "prompts/get":
            return await self._prompt(ctx, call_next, params.get("name"))
        if ctx.method == "resources/read":
            self._require(ctx, RESOURCE_SCOPE)
            return await self._resource(ctx, call_next)
        if ctx.method != "tools/call" or not isinstance(ctx.params, dict):
            return await call_next(ctx)
        name = params.get("name")
        spec = self.specs.get(name) if isinstance(name, str) else None
        if spec is None or not isinstance(name, str):  # the spec: a protocol error, not a tool error
            raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {name}")
        arguments = ctx.params.get("arguments") or {}
        request_ctx = RequestContext(principal=self.principal_of(ctx), door="mcp", request_id=new_id("mcp"))
        token = _CURRENT.set(request_ctx)
        try:
            if spec.inference:
                return await call_next(ctx)
            return await self._operate(ctx, call_next, request_ctx, name, spec, arguments)
        finally:
            _CURRENT.reset(token)

    async def _resource(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """``resources/read``; a missing resource is ``-32002`` on a session of a 2025 revision, as those
        give it (the SDK answers every revision with 2026-07-28's ``-32602``)."""
        try:
            return await call_next(ctx)
        except MCPError as exc:
            if exc.error.code == INVALID_PARAMS and ctx.protocol_version < "2026":
                error = exc.error
                raise MCPError(code=RESOURCE_NOT_FOUND_2025, message=error.message, data=error.data) from None
            raise

    def _require(self, ctx: ServerRequestContext[Any, Any], scope: str) -> None:
        if not self.principal_of(ctx).may(scope):
            raise MCPError(code=FORBIDDEN, message=f"this API key lacks the {scope!r} scope")

    async def _prompt(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext, name: Any
    ) -> HandlerResult:
        """``prompts/get``: an unknown prompt or a missing argument is ``-32602``, as the spec gives (the
        SDK raises a ValueError, which its dispatcher would send with code 0)."""
        if name in _SCOPED_PROMPTS:
            self._require(ctx, RESOURCE_SCOPE)
        try:
            return await call_next(ctx)
        except ValueError as exc:
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from None

    async def _operate(
        self,
        ctx: ServerRequestContext[Any, Any],
        call_next: CallNext,
        request_ctx: RequestContext,
        name: str,
        spec: ToolSpec,
        arguments: Any,
    ) -> HandlerResult:
        model = arguments.get(spec.model_arg, "") if spec.model_arg and isinstance(arguments, dict) else ""
        given = json.dumps(arguments, sort_keys=True, default=str)
        op = Operation(
            name=name, scope=spec.scope, arguments=given, model=model if isinstance(model, str) else ""
        )
        answered: dict[str, Any] = {}

        async def call(op: Operation) -> OperationResult:
            params = ctx.params
            if op.arguments != given:  # the policy redacted them
                params = {**(ctx.params or {}), "arguments": json.loads(op.arguments)}
            answered["result"] = result = await call_next(replace(ctx, params=params))
            answered["parsed"] = parsed = _tool_result(result)
            produced = _as_operation_result(parsed, int(request_ctx.attrs.get(STATUS_KEY, 400)))
            answered["output"] = produced.output  # the stages may rewrite produced.output in place
            return produced

        try:
            outcome = await self.pipeline.operate(request_ctx, op, call)
        except LLMHostError as exc:
            info = classify(exc)
            if info.status >= 500:
                log.error("MCP tool %s failed: %s", name, exc)
            return tool_error(info.message)
        parsed = answered["parsed"]
        if (
            isinstance(parsed, CallToolResult)
            and not parsed.is_error
            and outcome.output != answered["output"]
        ):
            return _redacted(parsed, outcome.output)  # the policy rewrote what the tool gave
        raw: HandlerResult = answered["result"]
        return raw


def _output_text(result: CallToolResult) -> str:
    if result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def _tool_result(result: HandlerResult) -> CallToolResult | None:
    if isinstance(result, dict):
        return CallToolResult.model_validate(result)
    return result if isinstance(result, CallToolResult) else None


def _as_operation_result(result: CallToolResult | None, status: int) -> OperationResult:
    if result is None:
        return OperationResult()
    text = _output_text(result)
    if result.is_error:
        return OperationResult(error=text, status=status)
    return OperationResult(output=text)


def _redacted(result: CallToolResult, output: str) -> CallToolResult:
    if result.structured_content is not None:
        structured = json.loads(output)
        return CallToolResult(content=[TextContent(type="text", text=output)], structured_content=structured)
    return CallToolResult(content=[TextContent(type="text", text=output)], is_error=result.is_error)
