"""The tables of llmhost's settings tree (``[engine]``, ``[memory]``, ``[models."NAME"]``, ``[providers]``,
``[routes]``, ``[breaker]``, ``[security]``, ``[limits]``, ``[audit]``, ``[datasets]``, ``[embeddings]``,
``[diagnose]``, ``[grpc]``, ``[policy]``, ``[ray]``); :mod:`llmhost.config` puts them together into
:class:`~llmhost.config.Settings` and loads it (``[mcp]`` lives beside the MCP system tools)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from llmhost.units import Duration, Size

__all__ = [
    "DEFAULT_DRAFT_MAX",
    "DEFAULT_ORIGINS",
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
    "TargetSettings",
]


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
    """``[limits]``: where per-key rate-limit windows, budgets and breaker state live. The limits themselves
    belong to each key."""

    model_config = ConfigDict(extra="forbid")

    redis_url: str | None = Field(
        None,
        description=(
            "redis://host:port/db to share rate-limit windows, budgets and circuit-breaker state between "
            "instances; unset: in this process."
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


class AgentSettings(BaseModel):
    """``[agents]``: how long the run records (every inference request's run, and its feedback) are kept."""

    model_config = ConfigDict(extra="forbid")

    runs_retention: Duration | None = Field(
        None,
        description=(
            "Delete runs and their feedback older than this (`30d`, `720h`; checked at most hourly while "
            "runs are recorded). Scorecards read only what is kept. Unset or -1: keep every run."
        ),
    )

    @field_validator("runs_retention")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is None or value < 0:
            return None  # -1: forever, as elsewhere
        if value == 0:
            raise ValueError("runs_retention must be a positive duration such as 30d (or -1 to keep all)")
        return value


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


class RaySettings(BaseModel):
    """Model replicas as a Ray Serve deployment behind llmhost's own HTTP app as the ingress."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None,
        description=(
            "Ray cluster to join (`host:port` or `ray://host:10001`); unset: `RAY_ADDRESS`, else a local "
            "cluster started for the server and stopped with it."
        ),
    )
    replicas: int = Field(
        1, ge=1, le=1024, description="Model replicas at start, and the fewest autoscaling keeps."
    )
    max_replicas: int | None = Field(
        None,
        ge=1,
        le=1024,
        description=(
            "Most model replicas autoscaling may run; above `replicas` turns autoscaling on (on queue "
            "depth: `target_queue`). Unset: exactly `replicas`."
        ),
    )
    target_queue: float | None = Field(
        None,
        gt=0,
        description=(
            "Requests per replica (decoding plus waiting) that autoscaling aims for: more adds replicas, "
            "fewer removes them. Unset: the engine's sequence slots (`engine.n_parallel`)."
        ),
    )
    max_ongoing: int | None = Field(
        None,
        ge=1,
        description=(
            "Requests Serve hands one replica at a time; the rest wait at the ingress for the first replica "
            "with room (so a free replica takes them, not a busy one's engine queue). Unset: the engine's "
            "sequence slots."
        ),
    )
    replica_cpus: float = Field(
        1.0,
        ge=0,
        description=(
            "CPUs Ray reserves for each replica; its engine decodes with as many threads unless "
            "`engine.n_threads` is set."
        ),
    )
    replica_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves for each replica (CUDA builds).")
    models_per_replica: int = Field(
        2,
        ge=1,
        le=64,
        description=(
            "Models one replica keeps loaded. Serve routes each request to a replica that already holds its "
            "model; loading one more unloads the least recently used."
        ),
    )
    retries: int = Field(
        3,
        ge=0,
        le=20,
        description=(
            "Times a request whose replica died is sent to another replica (a stream that already sent "
            "text resumes from that text)."
        ),
    )
    stream_interval: float = Field(
        0.02,
        ge=0,
        le=1,
        description=(
            "Seconds a replica gathers a stream's deltas into one message after the first (0: every delta "
            "on its own): fewer, larger messages cost Ray less CPU per token."
        ),
    )

    @model_validator(mode="after")
    def _max_at_least_min(self) -> RaySettings:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas})")
        return self

    @property
    def autoscales(self) -> bool:
        return self.max_replicas is not None and self.max_replicas > self.replicas

    def engine_threads(self) -> int:
        """Decode threads for a replica whose settings leave ``engine.n_threads`` unset."""
        return max(1, math.ceil(self.replica_cpus))
