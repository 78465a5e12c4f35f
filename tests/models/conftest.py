"""Fixtures the model tests share: a registry, a model store on it, a running loopback hub, and
``patch_only_in``, which replaces a function of ``os`` (or of any module) for one module alone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from llmhost.models.registry import Registry
from llmhost.models.store import ModelStore
from tests.hub_server import HubServer, running_hub


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """An empty registry at ``<tmp>/data/llmhost.db`` (the layout of a data dir); closed at the end."""
    reg = Registry(tmp_path / "data" / "llmhost.db")
    yield reg
    reg.close()


@pytest.fixture
def store(tmp_path: Path, registry: Registry) -> ModelStore:
    """An empty model store in ``<tmp>/data/models`` on :func:`registry`."""
    return ModelStore(tmp_path / "data" / "models", registry)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A started loopback hub with no repos yet (add them with ``hub.add_repo``); pulls in this process
    see no hub token or endpoint of this machine. A module that wants repos in it overrides the fixture:
    ``def hub(hub): hub.add_repo(...); return hub``."""
    with running_hub(tmp_path / "hub", monkeypatch) as server:
        yield server


class ModuleProxy:
    """Stands in for ``real`` (a module) where one module refers to it: the names in ``overrides`` are
    replaced, every other attribute is the real module's. Patching ``llmhost.models.store.os.fsync``
    would replace ``os.fsync`` for the whole process (pytest's own files, other threads); putting a
    proxy in ``llmhost.models.store.os`` changes what that module alone sees."""

    def __init__(self, real: ModuleType, overrides: dict[str, Any]) -> None:
        self._real = real
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        overrides = self.__dict__["_overrides"]
        if name in overrides:
            return overrides[name]
        return getattr(self.__dict__["_real"], name)

    def __repr__(self) -> str:
        return f"<proxy of {self._real.__name__} replacing {sorted(self._overrides)}>"


PatchOnlyIn = Callable[..., ModuleProxy]


@pytest.fixture
def patch_only_in(monkeypatch: pytest.MonkeyPatch) -> PatchOnlyIn:
    """``patch_only_in(module, "os", fsync=fake)``: ``module.os`` becomes a :class:`ModuleProxy` whose
    ``fsync`` is ``fake``; undone with the test's ``monkeypatch`` (``monkeypatch.undo()`` undoes it too)."""

    def patch(module: ModuleType, attribute: str, **overrides: Any) -> ModuleProxy:
        real = getattr(module, attribute)
        if isinstance(real, ModuleProxy):  # patched twice in one test: keep the first overrides too
            overrides = {**real._overrides, **overrides}
            real = real._real
        proxy = ModuleProxy(real, overrides)
        monkeypatch.setattr(module, attribute, proxy)
        return proxy

    return patch
