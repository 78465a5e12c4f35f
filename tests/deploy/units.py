"""systemd units for the deploy tests: read one, write one from a NixOS service definition, and resolve a
``SystemCallFilter=`` list to system call names with systemd's own groups (``systemd-analyze
syscall-filter``)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["read_unit", "resolve_syscall_filter", "syscall_groups", "unit_values", "write_nixos_unit"]

Unit = dict[str, list[tuple[str, str]]]


def read_unit(path: Path) -> Unit:
    """Section name -> its ``(key, value)`` lines in order (a key may repeat: systemd adds them up)."""
    unit: Unit = {}
    section: str | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.setdefault(section, [])
            continue
        if section is None or "=" not in line:
            raise ValueError(f"{path}:{number}: not a key=value line inside a section: {raw!r}")
        key, _, value = line.partition("=")
        unit[section].append((key.strip(), value.strip()))
    return unit


def unit_values(unit: Unit, section: str, key: str) -> list[str]:
    return [value for k, value in unit.get(section, []) if k == key]


def _unit_value(value: Any) -> str:
    # NixOS's systemd-lib: true/false for booleans, toString for the rest.
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def write_nixos_unit(service: Mapping[str, Any], path: Path) -> Path:
    """The unit file NixOS writes for ``systemd.services.<name>`` (the parts the llmhost module sets):
    lists in ``serviceConfig`` become one line per element, ``environment`` one ``Environment=`` line per
    variable, ``wants``/``after``/``wantedBy`` space-joined lines."""
    lines = ["[Unit]", f"Description={service['description']}"]
    for key, option in (("Wants", "wants"), ("After", "after")):
        if service.get(option):
            lines.append(f"{key}={' '.join(service[option])}")
    lines.append("")
    lines.append("[Service]")
    for name, value in sorted(service.get("environment", {}).items()):
        if value is not None:
            lines.append(f'Environment="{name}={value}"')
    for key, value in sorted(service.get("serviceConfig", {}).items()):
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key}={_unit_value(item)}")
    if service.get("wantedBy"):
        lines += ["", "[Install]", f"WantedBy={' '.join(service['wantedBy'])}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def syscall_groups() -> dict[str, list[str]]:
    """``@group`` -> its members (system calls and other groups), as this systemd defines them."""
    binary = shutil.which("systemd-analyze")
    if binary is None:
        raise FileNotFoundError("systemd-analyze is not installed (apt-get install systemd)")
    out = subprocess.run(
        [binary, "syscall-filter", "--no-pager"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def _expand(item: str, groups: Mapping[str, list[str]], seen: frozenset[str] = frozenset()) -> set[str]:
    if not item.startswith("@"):
        return {item}
    if item not in groups:
        raise ValueError(f"systemd knows no system call group {item}")
    names: set[str] = set()
    for member in groups[item]:
        if member not in seen:
            names |= _expand(member, groups, seen | {item})
    return names


def resolve_syscall_filter(entries: Iterable[str], groups: Mapping[str, list[str]]) -> set[str]:
    """The system calls an allow-list ``SystemCallFilter=`` lets through: the first entry allows, a later
    ``~`` entry takes its names away again, an empty entry starts over (systemd.exec(5))."""
    allowed: set[str] | None = None
    for entry in entries:
        if not entry:
            allowed = None
            continue
        deny = entry.startswith("~")
        names = set().union(*(_expand(i, groups) for i in entry.lstrip("~").split()))
        if allowed is None:
            if deny:
                raise ValueError(
                    "a deny-list SystemCallFilter= (first entry with ~) is not what this resolves"
                )
            allowed = names
        elif deny:
            allowed -= names
        else:
            allowed |= names
    return allowed or set()
