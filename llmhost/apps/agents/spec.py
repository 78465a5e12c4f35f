"""What an agent is: a model (or route) with a system prompt, sampling defaults, a governance policy,
datasets to retrieve from, tools, limits on its tool loop, and the key scope a caller needs to use it.

``AgentSpec`` is the wire shape (``POST /v1/agents``, ``llmhost agents create``); it validates every
field once, here, for the HTTP door and the CLI alike. Whether the model, the policy and the datasets
exist is checked against the running service when an agent is saved (:mod:`llmhost.apps.agents.registry`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmhost.core.types import Sampling, Tool

__all__ = ["NAME_PATTERN", "AgentSpec", "McpServerSpec", "SamplingSpec", "ToolSpecIn"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_STEPS = 16
MAX_SECONDS = 600.0


class SamplingSpec(BaseModel):
    """An agent's sampling defaults: each applies where the request leaves the field unset."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=1 << 20)
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    seed: int | None = None
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, gt=0.0, le=10.0)
    stop: list[str] = Field(default_factory=list, max_length=16)

    def fill(self, given: Sampling) -> Sampling:
        """``given`` with this agent's defaults where the caller set nothing."""
        updates: dict[str, Any] = {}
        for field in ("temperature", "top_p", "top_k", "max_tokens", "seed", "min_p", "repeat_penalty"):
            mine = getattr(self, field)
            if mine is not None and getattr(given, field) is None:
                updates[field] = mine
        if self.stop and not given.stop:
            updates["stop"] = tuple(self.stop)
        if not updates:
            return given
        return dataclasses.replace(given, **updates)


class FunctionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _TOOL_NAME.match(v):
            raise ValueError("a tool name is 1-64 letters, digits, '_' or '-'")
        return v

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("type", "object") != "object":
            raise ValueError("parameters must be a JSON schema of type 'object'")
        return v


class ToolSpecIn(BaseModel):
    """A function tool in OpenAI's shape; the caller executes it (the answer carries the call)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionIn

    def tool(self) -> Tool:
        f = self.function
        return Tool(name=f.name, description=f.description, parameters=f.parameters)


class McpServerSpec(BaseModel):
    """An MCP server (Streamable HTTP) whose tools the server calls in the agent's tool loop."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    url: str = Field(pattern=r"^https?://\S+$", max_length=2048)
    headers: dict[str, str] = Field(default_factory=dict)
    tools: list[str] | None = None  # only these of its tools (default: all)


class AgentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    model: str = Field(min_length=1, max_length=256)
    description: str = Field("", max_length=2000)
    system: str = Field("", max_length=100_000)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    policy: str | None = Field(None, min_length=1, max_length=64)
    datasets: list[str] = Field(default_factory=list, max_length=32)
    retrieval_k: int = Field(4, ge=1, le=50)
    tools: list[ToolSpecIn] = Field(default_factory=list, max_length=128)
    mcp_servers: list[McpServerSpec] = Field(default_factory=list, max_length=16)
    tool_groups: list[str] = Field(default_factory=list, max_length=16)
    # The first step's tool choice: "auto" (the model decides), "required" (some tool), or a tool's name.
    tool_choice: str = Field("auto", min_length=1, max_length=64)
    max_steps: int = Field(4, ge=1, le=MAX_STEPS)
    max_seconds: float = Field(60.0, gt=0.0, le=MAX_SECONDS)
    scope: str | None = Field(None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _unique(self) -> AgentSpec:
        names = [t.function.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ValueError("two tools have the same name")
        servers = [s.name for s in self.mcp_servers]
        if len(set(servers)) != len(servers):
            raise ValueError("two MCP servers have the same name")
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError("a dataset is listed twice")
        return self

    @property
    def server_tools(self) -> bool:
        """Whether the server runs a tool loop for this agent (MCP servers or llmhost's tool groups)."""
        return bool(self.mcp_servers or self.tool_groups)
