"""One settings tree for llmhost: a TOML file, then ``LLMHOST_*`` environment variables, then overrides.

Precedence (highest first): explicit overrides (CLI flags) > environment > TOML file > defaults.
The TOML file is ``$LLMHOST_CONFIG`` if set, else ``<config dir>/llmhost.toml`` when it exists.
Nested fields use ``__`` in the environment: ``LLMHOST_ENGINE__N_PARALLEL=8``.
"""

from __future__ import annotations

import contextvars
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from llmhost.config_tables import (
    DEFAULT_DRAFT_MAX,
    AgentSettings,
    AuditSettings,
    BreakerSettings,
    DatasetSettings,
    DiagnoseSettings,
    EmbeddingSettings,
    EngineSettings,
    GrpcSettings,
    LimitSettings,
    MemorySettings,
    ModelSettings,
    PolicySettings,
    ProviderSettings,
    RaySettings,
    RouteSettings,
    SecuritySettings,
    TargetSettings,
)
from llmhost.errors import ConfigError
from llmhost.net import parse_allow_entry
from llmhost.systools.settings import McpSettings
from llmhost.units import parse_duration, parse_size

__all__ = [
    "DEFAULT_DRAFT_MAX",
    "AgentSettings",
    "AuditSettings",
    "BreakerSettings",
    "DatasetSettings",
    "DiagnoseSettings",
    "EmbeddingSettings",
    "EngineSettings",
    "GrpcSettings",
    "LimitSettings",
    "MemorySettings",
    "ModelSettings",
    "PolicySettings",
    "ProviderSettings",
    "RaySettings",
    "RouteSettings",
    "SecuritySettings",
    "Settings",
    "TargetSettings",
    "config_problems",
    "default_config_path",
    "load_settings",
    "parse_duration",
    "parse_size",
]

_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "llmhost_config_file", default=None
)


def default_config_path() -> Path:
    """Where llmhost looks for its TOML file when ``LLMHOST_CONFIG`` is not set."""
    return Path(platformdirs.user_config_dir("llmhost")) / "llmhost.toml"


class Settings(BaseSettings):
    """Everything llmhost can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix="LLMHOST_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8080, ge=1, le=65535, description="Port the HTTP server listens on.")
    api_key: SecretStr | None = Field(
        None,
        description=(
            "A single all-scopes key (a one-key set-up): requests send `Authorization: Bearer <key>` or "
            "`x-api-key`. More keys, with scopes and limits: `llmhost keys create`. Empty means unset."
        ),
    )
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    mcp: McpSettings = Field(default_factory=McpSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    policy: PolicySettings = Field(
        default_factory=PolicySettings, description="The governance policy for every request."
    )
    policies: dict[str, PolicySettings] = Field(
        default_factory=dict,
        description="Named policies a key can be given (`llmhost keys create --policy NAME`) instead.",
    )
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("llmhost")),
        description="Where llmhost keeps its database and models.",
    )
    models_dir: Path | None = Field(None, description="Model files; default: <data_dir>/models.")
    database_url: SecretStr | None = Field(
        None,
        description=(
            "postgresql://user:password@host:port/db to keep the registry, keys, usage, audit log, stored "
            "responses, agents, runs and datasets in PostgreSQL (shared by every instance that names it); "
            "unset: SQLite files in data_dir."
        ),
    )
    default_model: str = Field(
        "gemma3:270m",
        description='Model loaded at start and used by `make serve`; "" loads none (a gateway-only server).',
    )
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest accepted request body.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log verbosity.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description=(
            'How `llmhost serve` writes its log, uvicorn\'s access log included: "text" lines, or "json", '
            "one object per line (ts, level, logger, message, request_id, exc)."
        ),
    )
    access_log: bool = Field(
        True, description="One log line per HTTP request (uvicorn's access log); off saves CPU."
    )
    drain_seconds: float = Field(
        30.0,
        ge=0,
        le=86_400,
        description=(
            "On SIGTERM or SIGINT, how long `llmhost serve` lets running requests and streams finish: "
            "/ready turns 503 and new requests get 503 with Retry-After meanwhile; streams still "
            "running after it are cut. A second signal exits at once."
        ),
    )
    engine: EngineSettings = Field(default_factory=EngineSettings)
    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    datasets: DatasetSettings = Field(default_factory=DatasetSettings)
    agents: AgentSettings = Field(default_factory=AgentSettings)
    diagnose: DiagnoseSettings = Field(default_factory=DiagnoseSettings)
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    models: dict[str, ModelSettings] = Field(default_factory=dict, description="Per-model overrides.")
    providers: dict[str, ProviderSettings] = Field(default_factory=dict, description="Remote backends.")
    routes: dict[str, RouteSettings] = Field(default_factory=dict, description="Public model names.")
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    pull_allow_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Hosts and networks that pulls over the HTTP API (/api/pull) may reach besides public "
            "addresses: host names (`mirror.lan`, allowed whatever they resolve to) or IP addresses and "
            "CIDR networks (`10.0.0.0/8`, `fd00::/8`). Everything else that resolves to a loopback, "
            "private, link-local (cloud metadata), unique-local, multicast or unspecified address is "
            "refused, for the URL, every redirect and the hub endpoint (HF_ENDPOINT), so an API client "
            "cannot make the server fetch from its own networks. `llmhost pull` on the command line "
            "runs as the machine's owner and is not restricted. Through a proxy the names are checked "
            "here but resolved again by the proxy."
        ),
    )
    max_concurrent_pulls: int = Field(
        2,
        ge=1,
        le=64,
        description=(
            "Pulls the HTTP API runs at once, each on a thread of a pool of its own (never the one "
            "generations use); one more is refused with 429 and Retry-After."
        ),
    )

    @field_validator("pull_allow_hosts")
    @classmethod
    def _allow_entries_parse(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            parse_allow_entry(entry)  # its ValueError names the entry
        return entries

    @field_validator("api_key", mode="after")
    @classmethod
    def _empty_key_is_no_key(cls, value: SecretStr | None) -> SecretStr | None:
        # `LLMHOST_API_KEY=` must not read as "a key is set" and leave a public bind open.
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("database_url", mode="after")
    @classmethod
    def _database_url_is_postgres(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("database_url must be a postgresql:// URL (unset: SQLite files in data_dir)")
        return value

    @model_validator(mode="after")
    def _routes_name_known_providers(self) -> Settings:
        for route_name, route in self.routes.items():
            for target in route.targets:
                if target.provider != "local" and target.provider not in self.providers:
                    raise ValueError(
                        f"route {route_name!r} names provider {target.provider!r}, "
                        "which is not in [providers]"
                    )
        for name, provider in self.providers.items():
            if provider.type == "openai" and not provider.base_url:
                raise ValueError(f"provider {name!r} (type openai) needs base_url")
        return self

    def model_settings(self, name: str) -> ModelSettings:
        return self.models.get(name) or ModelSettings()

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "llmhost.db"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.db"

    def database_for(self, sqlite_file: str) -> str:
        """Where a store keeps its tables: ``database_url`` when set, else ``<data_dir>/<sqlite_file>``."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return str(self.data_dir / sqlite_file)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _CONFIG_FILE.get()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(root)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings; raise :class:`ConfigError` with readable lines on failure."""
    path: Path | None
    if config_file is not None:
        path = Path(config_file)
    elif os.environ.get("LLMHOST_CONFIG"):
        path = Path(os.environ["LLMHOST_CONFIG"])
    else:
        path = default_config_path() if default_config_path().is_file() else None
    if path is not None and not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    origin = f"file {path} and LLMHOST_* environment" if path else "LLMHOST_* environment"
    token = _CONFIG_FILE.set(path)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from exc
    except (ValueError, OSError) as exc:  # malformed TOML surfaces as tomllib.TOMLDecodeError(ValueError)
        raise ConfigError(f"invalid configuration ({origin}): {exc}") from exc
    finally:
        _CONFIG_FILE.reset(token)


def config_problems(text: str) -> list[tuple[str, str]]:
    """Every problem of a TOML config text, as ``(path, message)`` pairs (empty: it is valid). Only the
    text is judged: the environment and the defaults' files play no part."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [("(toml)", str(exc))]
    try:
        Settings.model_validate(data)
    except ValidationError as exc:
        return [(".".join(str(p) for p in err["loc"]) or "(root)", err["msg"]) for err in exc.errors()]
    return []
