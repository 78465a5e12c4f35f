"""What a tool group is: named tools over typed inputs and pydantic outputs, behind one scope."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel

__all__ = ["SystemTool", "ToolGroup"]


@dataclass(frozen=True, slots=True)
class SystemTool:
    """One tool: ``func`` is synchronous (the MCP door runs it on a worker thread), takes typed keyword
    parameters (``Annotated[..., Field(description=...)]``: they become the input schema) and returns a
    pydantic model (the structured output and its ``outputSchema``). Its docstring is the description.
    It raises :class:`~llmhost.errors.RefusedError` for anything its sandbox forbids,
    :class:`~llmhost.errors.RequestError` for bad input and :class:`~llmhost.errors.NotFoundError` for
    what does not exist; any message it raises is shown to the caller, so none holds a secret."""

    name: str  # unique over all groups, snake_case, group-prefixed ("fs_read", "web_fetch" ...)
    func: Callable[..., BaseModel]
    title: str
    read_only: bool = True  # changes nothing (MCP readOnlyHint)
    destructive: bool = False  # may overwrite or remove (MCP destructiveHint)
    open_world: bool = False  # reaches outside this machine (MCP openWorldHint)


class ToolGroup(abc.ABC):
    """A group of tools enabled together in the config, all needing the group's scope."""

    name: ClassVar[str]  # "filesystem", the config section [mcp.<name>]
    scope: ClassVar[str]  # "tools:filesystem"

    @abc.abstractmethod
    def tools(self) -> list[SystemTool]: ...

    def close(self) -> None:
        """Release what the group holds (connections); the default holds nothing."""
        return None
