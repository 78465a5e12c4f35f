"""The Ollama door as a package: its public names, and the routes it serves."""

from __future__ import annotations

import importlib

import pytest
from fastapi import FastAPI

from llmhost.doors import ollama


@pytest.mark.parametrize(
    "name", ["", ".protocol", ".translate", ".template", ".gotime", ".catalog", ".routes"]
)
def test_every_exported_name_exists(name: str) -> None:
    module = importlib.import_module(f"llmhost.doors.ollama{name}")
    assert module.__all__ == sorted(module.__all__)
    for exported in module.__all__:
        assert hasattr(module, exported), exported


def test_attach_serves_ollamas_routes() -> None:
    app = FastAPI()
    ollama.attach(app)
    paths = {(method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops}
    for route in [
        ("POST", "/api/chat"),
        ("POST", "/api/generate"),
        ("POST", "/api/embed"),
        ("POST", "/api/embeddings"),
        ("GET", "/api/tags"),
        ("POST", "/api/show"),
        ("GET", "/api/ps"),
        ("POST", "/api/pull"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
        ("GET", "/api/version"),
    ]:
        assert route in paths, route
