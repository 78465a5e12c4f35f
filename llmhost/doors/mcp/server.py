"""``build_server(service)``: llmhost's MCP server (the official SDK's ``MCPServer``) with its tools,
resources and prompts, and the gate every tool call passes (:mod:`llmhost.doors.mcp.gate`).

Tool groups, each registered by one module: inference (``chat``, ``complete``, ``embed``), models,
monitoring, security, and the opt-in system groups of :mod:`llmhost.systools` that the config enables.
"""

from __future__ import annotations

import logging
from typing import Any

from mcp.server import MCPServer

from llmhost import __version__
from llmhost.core.types import Principal
from llmhost.doors.mcp import inference, models, monitoring, security, system
from llmhost.doors.mcp.gate import Registrar, ToolGate
from llmhost.security.auth import OWNER
from llmhost.service import Service

__all__ = ["build_server"]

INSTRUCTIONS = (
    "llmhost runs language models on this machine. Use list_models to see what is installed and "
    "loaded, chat or complete to ask a model (omit the model for the default), load_model and "
    "unload_model to manage memory, get_system_status for CPU, RAM, GPUs and queues."
)


def build_server(service: Service, *, principal: Principal = OWNER) -> MCPServer[Any]:
    """The MCP server over ``service``; ``principal`` is whom a call without HTTP runs as (stdio)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    server: MCPServer[Any] = MCPServer(
        "llmhost", title="llmhost", instructions=INSTRUCTIONS, version=__version__
    )
    # The SDK sets up logging (a rich handler on the root logger) when none is: llmhost's own set-up
    # (llmhost.logs) decides how records are written, so that is undone.
    root.handlers[:], root.level = handlers, level
    reg = Registrar(server)
    inference.register(reg, service)
    models.register(reg, service)
    monitoring.register(reg, service)
    security.register(reg, service)
    system.register(reg, service)
    server.middleware.append(ToolGate(service.pipeline, reg.specs, principal))
    return server
