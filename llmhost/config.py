"""One settings tree for llmhost: a TOML file, then ``LLMHOST_*`` environment variables, then overrides.

Precedence (highest first): explicit overrides (CLI flags) > environment > TOML file > defaults.
The TOML file is ``$LLMHOST_CONFIG`` if set, else ``<config dir>/llmhost.toml`` when it exists.
Nested fields use ``__`` in the environment: ``LLMHOST_ENGINE__N_PARALLEL=8``.
"""

from __future__ import annotations

import contextvars
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from llmhost.errors import ConfigError
from llmhost.net import parse_allow_entry
from llmhost.systools.settings import McpSettings
from llmhost.units import Duration, Size, parse_duration, parse_size

__all__ = [
    "DEFAULT_DRAFT_MAX",
    "BreakerSettings",
    "DiagnoseSettings",
    "EmbeddingSettings",
    "EngineSettings",
    "GrpcSettings",
    "MemorySettings",
    "ModelSettings",
    "PolicySettings",
    "ProviderSettings",
    "RouteSettings",
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


class EngineSettings(BaseModel):
    """How each loaded model runs inside llama.cpp."""

    model_config = ConfigDict(extra="forbid")

    n_ctx: int = Field(4096, ge=64, description="Context window per sequence slot, in tokens.")
    n_parallel: int = Field(4, ge=1, le=256, description="Sequence slots decoded together in one batch.")
    n_batch: int = Field(512, ge=32, description="Most tokens fed to llama.cpp in one decode step.")
    n_threads: int | None = Field(
        None, ge=1, description="CPU threads for decoding; default: physical cores."
    )
    n_gpu_layers: int | None = Field(
        None, ge=-1, description="Layers offloaded to the GPU; default: all when llama.cpp has GPU support."
    )
    max_queue: int = Field(64, ge=0, description="Requests allowed to wait for a slot before 429.")
    nice: int = Field(
        -10,
        ge=-20,
        le=19,
        description=(
            "Scheduling priority (nice) of the decode threads; below 0 needs root or CAP_SYS_NICE and is "
            "skipped without it. 0 leaves them at the process's priority."
        ),
    )


class MemorySettings(BaseModel):
    """How much memory resident models may use, and how long idle ones stay loaded."""

    model_config = ConfigDict(extra="forbid")

    ram_budget: Size | None = Field(
        None, description="RAM that loaded models may use (e.g. 8GiB); default: 80% of available RAM."
    )
    vram_budget: Size | None = Field(
        None, description="GPU memory that loaded models may use; default: 90% of free VRAM."
    )
    keep_alive: Duration = Field(300.0, description="Idle time before a model is unloaded (-1: never).")
    max_loaded: int = Field(8, ge=1, description="Most models resident at once.")


DEFAULT_DRAFT_MAX = 16
"""Most tokens drafted per step for a model whose ``draft_max`` is unset (speculative decoding)."""


class ModelSettings(BaseModel):
    """Per-model overrides, keyed by model name: ``[models."gemma3:270m"]``."""

    model_config = ConfigDict(extra="forbid")

    n_ctx: int | None = Field(None, ge=64, description="Context window per slot.")
    n_parallel: int | None = Field(None, ge=1, le=256, description="Sequence slots.")
    n_batch: int | None = Field(None, ge=32, description="Most tokens per decode step.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads.")
    n_gpu_layers: int | None = Field(None, ge=-1, description="Layers offloaded to the GPU.")
    max_queue: int | None = Field(None, ge=0, description="Requests that may wait for a slot.")
    keep_alive: Duration | None = Field(None, description="Idle time before unloading (-1: never).")
    chat_template: str | None = Field(None, description="Jinja chat template that replaces the model's.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default sampling temperature.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Default top-p.")
    top_k: int | None = Field(None, ge=0, description="Default top-k.")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="Default min-p.")
    repeat_penalty: float | None = Field(None, gt=0.0, description="Default repeat penalty.")
    speculative: Literal["ngram", "none"] | None = Field(
        None,
        description=(
            "`ngram`: speculative decoding for this model's requests (drafts from each request's own text; "
            "the same output); `none` or unset: off. A request's own `speculative` wins."
        ),
    )
    draft_max: int | None = Field(
        None, ge=1, le=64, description=f"Most tokens drafted a step (default {DEFAULT_DRAFT_MAX})."
    )

    def sampling_defaults(self) -> dict[str, float | int]:
        """The sampling fields set here (speculative decoding changes no output, so it is not one)."""
        fields = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")
        return {k: v for k in fields if (v := getattr(self, k)) is not None}

    @property
    def resolved_draft_max(self) -> int:
        """``draft_max``, else :data:`DEFAULT_DRAFT_MAX`: it applies whether this model or a request
        turned speculative decoding on."""
        return self.draft_max if self.draft_max is not None else DEFAULT_DRAFT_MAX


class ProviderSettings(BaseModel):
    """A backend: ``[providers.NAME]``. ``local`` (the engine) always exists and needs no entry."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["openai", "anthropic", "ollama", "local"] = Field(description="Wire format of the backend.")
    base_url: str | None = Field(
        None, description="e.g. http://127.0.0.1:9000/v1 for an OpenAI-compatible one."
    )
    api_key: SecretStr | None = Field(
        None, description="The key itself (prefer api_key_env or api_key_file)."
    )
    api_key_env: str | None = Field(None, description="Environment variable that holds the key.")
    api_key_file: Path | None = Field(None, description="File that holds the key (e.g. a mounted secret).")
    timeout_connect: float = Field(5.0, gt=0, description="Seconds to connect.")
    timeout_first_token: float = Field(60.0, gt=0, description="Seconds until the first token.")
    timeout_total: float = Field(600.0, gt=0, description="Seconds for the whole request.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers.")
    health_interval: float = Field(30.0, ge=0, description="Seconds between health probes (0: off).")


class TargetSettings(BaseModel):
    """One place a route can send a request: a provider and its model name there."""

    model_config = ConfigDict(extra="forbid")

    provider: str = Field(description="A name from [providers], or `local`.")
    model: str = Field(description="The model's name at that provider.")
    weight: float = Field(1.0, gt=0, description="Share of traffic for the `weighted` strategy.")
    input_price: float = Field(0.0, ge=0, description="Price per million prompt tokens.")
    output_price: float = Field(0.0, ge=0, description="Price per million completion tokens.")


class RouteSettings(BaseModel):
    """A public model name: ``[routes.NAME]`` maps it to targets tried by a strategy, with fallback."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["priority", "cost", "latency", "round_robin", "weighted", "ensemble"] = Field(
        "priority",
        description="How targets are ordered for each request; `ensemble` asks them all at once.",
    )
    targets: list[TargetSettings] = Field(min_length=1, description="Ordered list of targets.")
    retries: int = Field(1, ge=0, le=10, description="Extra attempts per target on retryable errors.")
    backoff: float = Field(0.05, ge=0, description="First retry delay in seconds (doubles each retry).")
    cascade: list[Literal["json", "nonempty", "logprob"]] = Field(
        default_factory=list,
        description="Checks that, when they fail on a target's answer, escalate to the next target.",
    )
    min_logprob: float = Field(
        -1.0,
        le=0.0,
        description="The `logprob` check escalates when the answer's mean token log-probability is lower.",
    )
    aggregate: Literal["vote", "judge", "best_of", "first", "all"] = Field(
        "vote", description="`ensemble`: how the targets' answers become one (see Ensembles)."
    )
    judge: str | None = Field(None, description="`ensemble` with `judge`: the model or route that judges.")
    judge_merge: bool = Field(False, description="The judge writes one answer from all instead of picking.")
    member_timeout: float | None = Field(
        None, gt=0, description="`ensemble`: seconds a target may take before it drops out."
    )

    @model_validator(mode="after")
    def _ensemble_fields(self) -> RouteSettings:
        if self.strategy == "ensemble" and self.aggregate == "judge" and not self.judge:
            raise ValueError('an ensemble route with aggregate = "judge" needs `judge` (a model or route)')
        if self.strategy == "ensemble" and self.cascade:
            raise ValueError("an ensemble route cannot also cascade")
        return self


class BreakerSettings(BaseModel):
    """Circuit breakers, one per target."""

    model_config = ConfigDict(extra="forbid")

    failures: int = Field(5, ge=1, description="Failures within `window` that open the breaker.")
    window: float = Field(30.0, gt=0, description="Seconds over which failures are counted.")
    cooldown: float = Field(15.0, gt=0, description="Seconds open before one half-open probe.")


DEFAULT_ORIGINS = (
    "http://localhost",
    "https://localhost",
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://[::1]",
    "http://[::1]:*",
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)


class SecuritySettings(BaseModel):
    """``[security]``: browser safety. Keys, scopes and limits are made with ``llmhost keys``."""

    model_config = ConfigDict(extra="forbid")

    allowed_origins: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ORIGINS),
        description=(
            "Web origins (globs, `*` matches anything) that may call the API from a browser: CORS is "
            "answered for them, and a state-changing request with any other `Origin` is refused (403). "
            "The default is this machine's own pages, as Ollama's OLLAMA_ORIGINS default."
        ),
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Extra names the `Host` header may carry (globs). Always allowed: localhost, *.localhost, "
            "loopback addresses, this machine's hostname, the bind address and, on a wildcard bind, any "
            "IP address. Any other Host is refused (403), which defeats DNS rebinding."
        ),
    )


class LimitSettings(BaseModel):
    """``[limits]``: where per-key rate-limit windows live. The limits themselves belong to each key."""

    model_config = ConfigDict(extra="forbid")

    redis_url: str | None = Field(
        None,
        description=(
            "redis://host:port/db to share rate-limit windows between instances; unset: in this process."
        ),
    )


class AuditSettings(BaseModel):
    """``[audit]``: the hash-chained record of every request (``<data_dir>/audit.db``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="One record per request, on every door.")
    store_content: bool = Field(
        False, description="Keep the prompt and answer text in each record (else only their SHA-256)."
    )
    synchronous: Literal["normal", "full"] = Field(
        "normal",
        description='SQLite sync: "normal" survives a process crash; "full" also a power cut (slower).',
    )


class DatasetSettings(BaseModel):
    """``[datasets]``: how documents added to a dataset are cut into chunks (a dataset may set its own)."""

    model_config = ConfigDict(extra="forbid")

    chunk_tokens: int = Field(
        256, ge=16, le=8192, description="Most embedding-model tokens per chunk (all-MiniLM reads 256)."
    )
    chunk_overlap: int = Field(32, ge=0, le=4096, description="Tokens each chunk repeats of the one before.")


class EmbeddingSettings(BaseModel):
    """``[embeddings]``: the model for requests that name none, and the cache of computed vectors."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "all-minilm:l6-v2",
        description=(
            "Embedding model for /v1/embeddings and /api/embed requests without a model. The embedded "
            'all-minilm:l6-v2 (all-MiniLM-L6-v2, 384 dimensions) imports itself on first use; "" '
            "makes the model field required."
        ),
    )
    cache: Literal["memory", "sqlite", "off"] = Field(
        "memory",
        description=(
            'Vectors already computed, keyed by model digest and input: "memory" (an LRU in this '
            'process), "sqlite" (<data_dir>/embeddings.db, kept across restarts) or "off".'
        ),
    )
    cache_entries: int = Field(100_000, ge=1, description="The most vectors the cache keeps (LRU).")
    cache_ttl: float = Field(
        7 * 24 * 3600.0, gt=0, description="Seconds a cached vector stays valid after it was computed."
    )


class DiagnoseSettings(BaseModel):
    """``[diagnose]``: the diagnose engine (``POST /v1/diagnose``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("", description='Model or route that writes suggestions; "": the default model.')
    embedding_model: str = Field(
        "", description='Model for example selection and de-duplication; "": [embeddings] model.'
    )
    min_confidence: float = Field(0.6, ge=0.0, le=1.0, description="Suggestions below this are dropped.")
    examples: int = Field(3, ge=0, le=10, description="Solved examples shown to the model per diagnosis.")
    dedup_similarity: float = Field(
        0.9, gt=0.0, le=1.0, description="Cosine similarity at which two suggestions are one."
    )
    cache_entries: int = Field(1000, ge=0, description="Diagnoses the response cache keeps (0: off).")
    cache_ttl: float = Field(3600.0, gt=0, description="Seconds a cached diagnosis is served.")
    concurrency: int = Field(4, ge=1, le=64, description="Documents of a batch diagnosed at once.")


class GrpcSettings(BaseModel):
    """``[grpc]``: the diagnose engine's gRPC service, beside the HTTP server (same host, same keys)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Serve gRPC (Diagnose, BatchDiagnose, GetModelInfo, Health).")
    port: int = Field(50051, ge=0, le=65535, description="Its port (0: any free port, logged at start).")


RedactRule = Literal["email", "phone", "card", "iban", "api_key", "jwt", "bearer", "pii", "secrets", "all"]


class PolicySettings(BaseModel):
    """``[policy]`` (everyone's) or ``[policies.NAME]`` (for the keys made with ``--policy NAME``): what
    the governance policy redacts, refuses and caps, on every door. The default does nothing."""

    model_config = ConfigDict(extra="forbid")

    redact: list[RedactRule] = Field(
        default_factory=list,
        description=(
            "What to replace with [REDACTED:rule]: email, phone, card (Luhn-checked), iban (mod-97-checked), "
            "api_key (sk-, llmh_, ghp_, github_pat_, AKIA, xox?-), jwt, bearer; or the groups pii (email, "
            "phone, card, iban), secrets (api_key, jwt, bearer), all."
        ),
    )
    block: list[str] = Field(
        default_factory=list,
        description=(
            "Regular expressions (Python syntax; (?i) for any case): a request whose text matches one "
            "is refused (403, policy_blocked); in an answer the match becomes [BLOCKED]."
        ),
    )
    max_input_chars: int | None = Field(
        None, ge=1, description="Most characters of text a request may carry (400 beyond)."
    )
    max_output_chars: int | None = Field(
        None, ge=1, description='Most characters of text per answer; longer ones are cut (finish "length").'
    )
    apply_to: Literal["input", "output", "both"] = Field(
        "both", description="Where `redact` and `block` apply (the size caps apply where they say)."
    )

    @field_validator("block")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"block pattern {pattern!r} is not a valid regular expression: {exc}"
                ) from None
            if compiled.search("") is not None:
                raise ValueError(f"block pattern {pattern!r} matches empty text (so it would match anything)")
        return patterns


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
            "responses, agents and runs in PostgreSQL (shared by every instance that names it); unset: "
            "SQLite files in data_dir."
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
