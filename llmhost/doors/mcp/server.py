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
from llmhost.apps.agents import OwnTools
from llmhost.core.types import Principal
from llmhost.doors.mcp import inference, models, monitoring, security, system
from llmhost.doors.mcp.gate import Registrar, ToolGate
from llmhost.security.auth import OWNER
from llmhost.service import Service

__all__ = ["GROUPS", "build_server", "own_tools"]

# The tool groups, each registered by one module; the opt-in system groups (llmhost.systools) take
# their own names (filesystem, internet, database, system, resources, security).
GROUPS = (
    ("inference", inference),
    ("models", models),
    ("monitoring", monitoring),
    ("audit", security),  # audit log and config checks (the system "security" group is another)
    ("system", system),
)
_MAX_SERVERS = 64

INSTRUCTIONS = (
    "llmhost runs language models on this machine. Use list_models to see what is installed and "
    "loaded, chat or complete to ask a model (omit the model for the default), load_model and "
    "unload_model to manage memory, get_system_status for CPU, RAM, GPUs and queues."
)


def build_server(service: Service, *, principal: Principal = OWNER) -> MCPServer[Any]:
    """The MCP server over ``service``; ``principal`` is whom a call without HTTP runs as (stdio)."""
    server, _ = _build(service, principal)
    return server


def _build(service: Service, principal: Principal) -> tuple[MCPServer[Any], dict[str, str]]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    server: MCPServer[Any] = MCPServer(
        "llmhost", title="llmhost", instructions=INSTRUCTIONS, version=__version__
    )
    # The SDK sets up logging (a rich handler on the root logger) when none is: llmhost's own set-up
    # (llmhost.logs) decides how records are written, so that is undone.
    root.handlers[:], root.level = handlers, level
    reg = Registrar(server)
    for group, module in GROUPS:
        reg.group = group
        module.register(reg, service)
    server.middleware.append(ToolGate(service.pipeline, reg.specs, principal))
    return server, {name: spec.group for name, spec in reg.specs.items()}


def own_tools(service: Service) -> OwnTools:
    """llmhost's own MCP server for an agent's tool loop, built once per principal (each call then
    passes its gate as that principal), with each tool's group."""
    built: dict[Principal, tuple[MCPServer[Any], dict[str, str]]] = {}

    def get(principal: Principal) -> tuple[MCPServer[Any], dict[str, str]]:
        found = built.get(principal)
        if found is None:
            if len(built) >= _MAX_SERVERS:
                built.clear()
            found = built[principal] = _build(service, principal)
        return found

    return get
