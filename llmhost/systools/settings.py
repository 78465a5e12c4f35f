"""``[mcp]`` and its opt-in tool groups ``[mcp.filesystem]``, ``[mcp.internet]``, ``[mcp.database]``,
``[mcp.system]``, ``[mcp.resources]`` and ``[mcp.security]``: every group is off by default."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from llmhost.units import parse_duration, parse_size

__all__ = [
    "DatabaseSettings",
    "FilesystemSettings",
    "InternetSettings",
    "McpSettings",
    "ResourcesSettings",
    "SecurityToolSettings",
    "SystemSettings",
]

Bytes = Annotated[int, BeforeValidator(parse_size), Field(ge=1)]
Seconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Serve this group's tools (each call needs its scope).")


class FilesystemSettings(_Group):
    """``[mcp.filesystem]`` (scope ``tools:filesystem``): files under the allowed roots only."""

    roots: list[Path] = Field(
        default_factory=list,
        description=(
            "Directories the tools may reach (`~` expanded). Paths are resolved, symlinks included, and "
            "refused when they land outside every root."
        ),
    )
    writable: bool = Field(False, description="Allow fs_write and fs_move (else the group is read-only).")
    max_read_bytes: Bytes = Field(
        1024 * 1024,
        description=(
            "Most bytes one fs_read returns (a larger file is read in pieces: offset/length or lines); "
            "fs_search skips the content of larger files."
        ),
    )
    max_write_bytes: Bytes = Field(1024 * 1024, description="Largest content fs_write accepts.")
    max_results: int = Field(200, ge=1, le=100_000, description="Most entries fs_list and fs_search give.")
    max_search_files: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="Most files one fs_search, and entries one fs_list, looks at (then it stops, truncated).",
    )
    max_hash_bytes: Bytes = Field(
        256 * 1024 * 1024, description="Largest file whose sha256 fs_stat computes (larger: no digest)."
    )

    @field_validator("roots")
    @classmethod
    def _expand(cls, roots: list[Path]) -> list[Path]:
        return [root.expanduser() for root in roots]


class InternetSettings(_Group):
    """``[mcp.internet]`` (scope ``tools:internet``): HTTP(S) fetches of public hosts."""

    allow_hosts: list[str] = Field(
        default_factory=list,
        description="If set, only these hosts (globs, `*.example.com`) may be fetched.",
    )
    deny_hosts: list[str] = Field(default_factory=list, description="Hosts (globs) never fetched.")
    allow_private: list[str] = Field(
        default_factory=list,
        description=(
            "Host names or IP networks (`10.0.0.0/8`) allowed although they are loopback, private or "
            "link-local; every other such address is refused, redirects and DNS answers included."
        ),
    )
    max_bytes: Bytes = Field(2 * 1024 * 1024, description="Largest response body read.")
    timeout: Seconds = Field(10.0, description="Whole-fetch time limit.")
    max_redirects: int = Field(5, ge=0, le=20, description="Redirects followed, each one checked.")


class DatabaseSettings(_Group):
    """``[mcp.database]`` (scope ``tools:database``): read-only SQL over named connections."""

    connections: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Name -> `sqlite:///path/to.db` or `postgresql://user:pass@host:5432/db`. SQLite opens "
            "read-only; PostgreSQL runs each query in a read-only transaction."
        ),
    )
    max_rows: int = Field(500, ge=1, le=100_000, description="Rows returned at most (the rest is cut).")
    timeout: Seconds = Field(5.0, description="Time limit of one query.")


class SystemSettings(_Group):
    """``[mcp.system]`` (scope ``tools:system``): processes on this machine (read-only)."""

    max_processes: int = Field(100, ge=1, le=10_000, description="Processes sys_processes lists at most.")


class ResourcesSettings(_Group):
    """``[mcp.resources]`` (scope ``tools:resources``): CPU, memory, disks, network counters, GPUs."""

    max_items: int = Field(
        256, ge=1, le=100_000, description="Mounts res_disks and interfaces res_network list at most."
    )


class SecurityToolSettings(_Group):
    """``[mcp.security]`` (scope ``tools:security``): hashes and secret scans of text and files."""

    roots: list[Path] = Field(
        default_factory=list,
        description="Directories whose files may be hashed or scanned (resolved, as for filesystem).",
    )
    max_file_bytes: Bytes = Field(
        64 * 1024 * 1024, description="Largest file hashed or scanned, and largest text sec_scan_text takes."
    )
    max_findings: int = Field(
        1000, ge=1, le=1_000_000, description="Most secrets one scan lists (the rest are only counted)."
    )

    @field_validator("roots")
    @classmethod
    def _expand(cls, roots: list[Path]) -> list[Path]:
        return [root.expanduser() for root in roots]


class McpSettings(BaseModel):
    """``[mcp]``: the MCP server (``/mcp`` on the HTTP server, ``llmhost mcp`` on stdio)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Serve MCP at /mcp on the HTTP server.")
    filesystem: FilesystemSettings = Field(default_factory=FilesystemSettings)
    internet: InternetSettings = Field(default_factory=InternetSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    system: SystemSettings = Field(default_factory=SystemSettings)
    resources: ResourcesSettings = Field(default_factory=ResourcesSettings)
    security: SecurityToolSettings = Field(default_factory=SecurityToolSettings)
