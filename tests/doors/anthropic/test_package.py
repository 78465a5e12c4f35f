"""The Anthropic door as a package: its public names."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("name", ["", ".models", ".protocol", ".translate", ".stream", ".routes"])
def test_every_exported_name_exists(name: str) -> None:
    module = importlib.import_module(f"llmhost.doors.anthropic{name}")
    assert module.__all__ == sorted(module.__all__)
    for exported in module.__all__:
        assert hasattr(module, exported), exported
