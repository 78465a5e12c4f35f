"""``Agents``: the agents of this server, checked against it when saved and found fast when used.

Saving an agent checks what the wire shape cannot: its model or route exists, its policy is
configured, its datasets exist, its tool groups are llmhost's, its scope is a real one, and its name
shadows no model or route (a request for that name would get the agent). Lookups are served from
memory, reloaded when another process changed them (the store's change counter: the CLI editing
agents under a running server, or another instance on the same PostgreSQL database).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from llmhost.apps.agents.spec import AgentSpec
from llmhost.apps.agents.store import AgentRecord, AgentStore
from llmhost.apps.agents.toolbox import Toolbox
from llmhost.errors import ConflictError, LLMHostError, RequestError
from llmhost.security.keys import SCOPES

__all__ = ["Agents", "Checks"]


class Checks:
    """What saving an agent is checked against: the service's models, policies and datasets."""

    def __init__(
        self,
        *,
        model_exists: Callable[[str], bool],
        policies: Callable[[], set[str]],
        dataset_exists: Callable[[str], bool] | None = None,
    ) -> None:
        self.model_exists = model_exists
        self.policies = policies
        self.dataset_exists = dataset_exists


class Agents:
    def __init__(self, store: AgentStore, toolbox: Toolbox, checks: Checks) -> None:
        self.store = store
        self.toolbox = toolbox
        self.checks = checks
        self._lock = threading.Lock()
        self._version: int | None = None
        self._by_name: dict[str, AgentSpec] = {}

    # ----- lookups (every inference request) ---------------------------------------------------------
    def find(self, name: str) -> AgentSpec | None:
        with self._lock:
            version = self.store.version()
            if version != self._version:
                self._version = version
                self._by_name = {r.spec.name: r.spec for r in self.store.all()}
            return self._by_name.get(name)

    def all(self) -> list[AgentSpec]:
        """Every agent, by name (from memory, as ``find``)."""
        self.find("")
        with self._lock:
            return [self._by_name[n] for n in sorted(self._by_name)]

    def _changed(self) -> None:
        with self._lock:
            self._version = None  # the next lookup reloads, whatever the counter says

    # ----- saving ------------------------------------------------------------------------------------
    def check(self, spec: AgentSpec) -> None:
        """Refuse (400, naming the field) what this server cannot run."""
        if self.checks.model_exists(spec.name):
            raise ConflictError(f"{spec.name!r} is a model or route name; an agent cannot take it")
        if spec.name == spec.model:
            raise RequestError("an agent cannot be its own model", param="model")
        if not self.checks.model_exists(spec.model) and self.find(spec.model) is None:
            raise RequestError(f"model or route {spec.model!r} does not exist", param="model")
        if self.find(spec.model) is not None:
            raise RequestError(
                f"{spec.model!r} is an agent; an agent's model must be a model or route", "model"
            )
        if spec.policy is not None and spec.policy not in self.checks.policies():
            raise RequestError(f"policy {spec.policy!r} is not configured ([policies.NAME])", param="policy")
        for name in spec.datasets:
            if self.checks.dataset_exists is None:
                raise RequestError("datasets are not available on this server", param="datasets")
            if not self.checks.dataset_exists(name):
                raise RequestError(f"dataset {name!r} does not exist", param="datasets")
        groups = self.toolbox.own_groups()
        for group in spec.tool_groups:
            if group not in groups:
                known = ", ".join(sorted(groups)) or "none (MCP is off)"
                raise RequestError(
                    f"unknown tool group {group!r}; this server has: {known}", param="tool_groups"
                )
        if spec.scope is not None and spec.scope not in SCOPES:
            raise RequestError(f"unknown scope {spec.scope!r}", param="scope")
        names = {t.function.name for t in spec.tools}
        if spec.tool_choice not in ("auto", "required") and not (names or spec.server_tools):
            raise RequestError("tool_choice names a tool, but the agent has none", param="tool_choice")
        if (
            spec.tool_choice not in ("auto", "required")
            and not spec.server_tools
            and spec.tool_choice not in names
        ):
            raise RequestError(
                f"tool_choice names {spec.tool_choice!r}, which is not in tools", param="tool_choice"
            )

    def create(self, spec: AgentSpec) -> AgentRecord:
        self.check(spec)
        try:
            return self.store.create(spec)
        finally:
            self._changed()

    def replace(self, spec: AgentSpec) -> AgentRecord:
        self.store.get(spec.name)  # 404 before the checks
        self.check(spec)
        try:
            return self.store.replace(spec)
        finally:
            self._changed()

    def delete(self, name: str) -> None:
        try:
            self.store.delete(name)
        finally:
            self._changed()

    def close(self) -> None:
        """Nothing of its own to close (the store is closed by its owner)."""


def safe_exists(check: Callable[[str], object]) -> Callable[[str], bool]:
    """A lookup that raises for a missing name (``get``) as a yes/no question."""

    def exists(name: str) -> bool:
        try:
            check(name)
        except LLMHostError:
            return False
        return True

    return exists
