"""The opt-in system tool groups (:mod:`llmhost.systools`): each group the config enables is served
with its own scope (``tools:<group>``); every call is an operation through the pipeline, so it is
authorised, rate-limited, redacted by the policy and audited. The tools are synchronous and run on a
worker thread."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from llmhost.doors.mcp.gate import Registrar
from llmhost.service import Service
from llmhost.systools.base import SystemTool, ToolGroup
from llmhost.systools.database import DatabaseTools
from llmhost.systools.filesystem import FilesystemTools
from llmhost.systools.internet import InternetTools
from llmhost.systools.resources import ResourcesTools
from llmhost.systools.secrets import SecurityTools
from llmhost.systools.system import SystemTools

__all__ = ["enabled_groups", "register"]


def enabled_groups(service: Service) -> list[ToolGroup]:
    """The tool groups the config turns on, built over their settings."""
    mcp = service.settings.mcp
    makers: list[tuple[bool, Callable[[], ToolGroup]]] = [
        (mcp.filesystem.enabled, lambda: FilesystemTools(mcp.filesystem)),
        (mcp.internet.enabled, lambda: InternetTools(mcp.internet)),
        (mcp.database.enabled, lambda: DatabaseTools(mcp.database)),
        (mcp.system.enabled, lambda: SystemTools(mcp.system)),
        (mcp.resources.enabled, lambda: ResourcesTools(mcp.resources)),
        (mcp.security.enabled, lambda: SecurityTools(mcp.security)),
    ]
    return [make() for enabled, make in makers if enabled]


def _as_async(tool: SystemTool) -> Callable[..., Any]:
    """An async function with the tool's own signature (the SDK reads it for the input and output
    schemas) that runs the synchronous tool on a worker thread."""
    func = tool.func

    async def call(**kwargs: Any) -> BaseModel:
        return await asyncio.to_thread(functools.partial(func, **kwargs))

    call.__signature__ = inspect.signature(func, eval_str=True)  # type: ignore[attr-defined]
    call.__name__ = tool.name
    call.__qualname__ = tool.name
    call.__doc__ = inspect.getdoc(func)
    return call


def register(reg: Registrar, service: Service) -> None:
    for group in enabled_groups(service):
        reg.group = group.name
        for tool in group.tools():
            reg.tool(
                _as_async(tool),
                scope=group.scope,
                title=tool.title,
                name=tool.name,
                read_only=tool.read_only,
                destructive=tool.destructive,
                open_world=tool.open_world,
            )
