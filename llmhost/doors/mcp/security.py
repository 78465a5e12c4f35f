"""Security tools: ``get_audit_logs`` and ``verify_audit_log`` (scope ``audit``),
``run_security_audit`` and ``validate_config`` (scope ``admin``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field

from llmhost.config import config_problems
from llmhost.doors.mcp.gate import Registrar
from llmhost.errors import NotFoundError, RequestError
from llmhost.security.review import security_review
from llmhost.service import Service

__all__ = ["register"]

_MAX_CONFIG_CHARS = 1 << 20


class AuditEntry(BaseModel):
    seq: int
    ts: float
    request_id: str
    key_id: str
    principal: str
    door: str
    kind: str = Field(description="chat, completion, embedding, count_tokens, an MCP tool's name ...")
    model: str
    target: str
    status: int
    error: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    hash: str


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    last: int = Field(description="Pass as `after` for the next page.")


class AuditVerdict(BaseModel):
    intact: bool = Field(description="True when every record's hash chains to the one before.")
    records: int
    head: str = Field(description="Hash of the newest record (note it to detect a rewrite later).")
    breaks: list[str] = Field(description="Where the chain does not hold: 'seq N: reason'.")


class FindingOut(BaseModel):
    check: str
    severity: str = Field(description="ok, info, warning or critical.")
    message: str


class SecurityReport(BaseModel):
    findings: list[FindingOut]
    critical: int
    warnings: int


class ConfigProblem(BaseModel):
    path: str = Field(description="Where in the config, e.g. engine.n_parallel.")
    message: str


class ConfigVerdict(BaseModel):
    valid: bool
    problems: list[ConfigProblem]


def register(reg: Registrar, service: Service) -> None:
    async def get_audit_logs(
        after: Annotated[int, Field(ge=0, description="Only records after this seq.")] = 0,
        limit: Annotated[int, Field(ge=1, le=1000, description="Most records returned.")] = 100,
        key_id: Annotated[str | None, Field(description="Only this key's records.")] = None,
    ) -> AuditPage:
        """Audit records in order: who called what, on which model, with what outcome."""
        rows = await asyncio.to_thread(service.audit.rows, after=after, limit=limit, key_id=key_id)
        entries = [
            AuditEntry(
                seq=r.seq,
                ts=r.ts,
                request_id=r.request_id,
                key_id=r.key_id,
                principal=r.principal,
                door=r.door,
                kind=r.kind,
                model=r.model,
                target=r.target,
                status=r.status,
                error=r.error,
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
                latency_ms=r.latency_ms,
                hash=r.hash,
            )
            for r in rows
        ]
        return AuditPage(entries=entries, last=rows[-1].seq if rows else after)

    async def verify_audit_log() -> AuditVerdict:
        """Walk the audit log's hash chain and report whether any record was changed or removed."""
        count, head, breaks = await asyncio.to_thread(service.audit.verify)
        return AuditVerdict(
            intact=not breaks, records=count, head=head, breaks=[f"seq {b.seq}: {b.reason}" for b in breaks]
        )

    async def run_security_audit() -> SecurityReport:
        """Check the live configuration: bind and keys, browser origins, TLS, the template sandbox, key
        ages, what is reachable without a key, the MCP tool groups, pulls, audit and policy."""
        findings = await asyncio.to_thread(security_review, service.settings, service.auth, service.keys)
        return SecurityReport(
            findings=[FindingOut(check=f.check, severity=f.severity, message=f.message) for f in findings],
            critical=sum(f.severity == "critical" for f in findings),
            warnings=sum(f.severity == "warning" for f in findings),
        )

    async def validate_config(
        text: Annotated[str | None, Field(description="A TOML config text.")] = None,
        path: Annotated[str | None, Field(description="Or the path of a TOML file on the server.")] = None,
    ) -> ConfigVerdict:
        """Check an llmhost config (TOML text or a file): every problem with its path."""
        if (text is None) == (path is None):
            raise RequestError("give exactly one of text and path")
        if path is not None:
            text = await asyncio.to_thread(_read_config, Path(path))
        assert text is not None
        if len(text) > _MAX_CONFIG_CHARS:
            raise RequestError(f"the config is longer than {_MAX_CONFIG_CHARS} characters")
        problems = config_problems(text)
        return ConfigVerdict(
            valid=not problems, problems=[ConfigProblem(path=p, message=m) for p, m in problems]
        )

    reg.tool(get_audit_logs, scope="audit", title="Read the audit log", idempotent=True)
    reg.tool(verify_audit_log, scope="audit", title="Verify the audit log", idempotent=True)
    reg.tool(run_security_audit, scope="admin", title="Security audit", idempotent=True)
    reg.tool(validate_config, scope="admin", title="Validate a config", idempotent=True)


def _read_config(path: Path) -> str:
    if path.suffix != ".toml":
        raise RequestError("path must name a .toml file")
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_CONFIG_CHARS + 1)
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {path}") from None
    except OSError as exc:
        raise RequestError(f"cannot read {path}: {exc.strerror}") from None
    return raw.decode("utf-8", errors="replace")
