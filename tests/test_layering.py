"""The packages of llmhost import each other in one direction only: no import circles between them,
and no import inside a function to dodge one (``TYPE_CHECKING`` imports do not count)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "llmhost"


def _unit(module: str) -> str:
    """The package a module belongs to: ``llmhost.doors.openai.routes`` -> ``llmhost.doors.openai``."""
    parts = module.split(".")
    depth = 3 if parts[1:2] == ["doors"] else 2
    return ".".join(parts[:depth])


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _runtime_imports(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                for alias in sub.names:  # `from llmhost.doors import openai` imports a subpackage
                    full = f"{sub.module}.{alias.name}"
                    names.append(full if _is_module(full) else sub.module)
            elif isinstance(sub, ast.Import):
                names.extend(alias.name for alias in sub.names)
    return [n for n in names if n == "llmhost" or n.startswith("llmhost.")]


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        source = _unit(_module_name(path)) if path.name != "__init__.py" or path.parent != ROOT else "llmhost"
        for target in _runtime_imports(ast.parse(path.read_text())):
            dest = _unit(target) if target != "llmhost" else "llmhost"
            if dest != source and dest != "llmhost":
                edges.setdefault(source, set()).add(dest)
    return edges


def test_no_import_circles_between_packages() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_doors_are_the_only_users_of_wire_formats_above_the_providers() -> None:
    graph = _graph()
    below = ("llmhost.core", "llmhost.router", "llmhost.local", "llmhost.engine", "llmhost.models")
    for package in below:
        assert not any(dest.startswith("llmhost.doors") for dest in graph.get(package, ())), package
