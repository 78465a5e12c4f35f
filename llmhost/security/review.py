"""``security_review``: the live configuration checked against llmhost's security defaults, as
findings an operator (or an agent through MCP's ``run_security_audit``) can act on.

Checks: the bind address and keys, browser origins and Host names, TLS, the chat-template sandbox
(a real escape attempt must fail), key ages and expiry, what is reachable without a key, the opt-in
MCP tool groups, pulls' private networks, the audit log and the governance policy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from jinja2.exceptions import SecurityError

from llmhost.config import Settings
from llmhost.models.template_sandbox import BoundedSandbox, RenderLimitError, render_bounded
from llmhost.net import is_loopback
from llmhost.security.auth import Authenticator
from llmhost.security.keys import KeyStore

__all__ = ["Finding", "Severity", "security_review"]

Severity = Literal["ok", "info", "warning", "critical"]
KEY_MAX_AGE_DAYS = 90
_DAY = 86400.0
_ESCAPE = "{{ ''.__class__.__mro__[1].__subclasses__() }}"  # the classic Jinja sandbox escape


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    severity: Severity
    message: str


def security_review(settings: Settings, auth: Authenticator, keys: KeyStore) -> list[Finding]:
    """Every finding, most severe first."""
    found = [
        *_bind(settings, auth),
        *_browser(settings),
        *_tls(settings),
        _template_sandbox(),
        *_keys(keys),
        *_tool_groups(settings),
        *_pulls(settings),
        *_audit_and_policy(settings),
    ]
    order = {"critical": 0, "warning": 1, "info": 2, "ok": 3}
    return sorted(found, key=lambda f: order[f.severity])


def _bind(settings: Settings, auth: Authenticator) -> list[Finding]:
    loopback = is_loopback(settings.host)
    if not auth.required:
        if loopback:
            return [
                Finding(
                    "bind",
                    "info",
                    f"no API key exists: every program on this machine may use the server on "
                    f"{settings.host}:{settings.port}, model management and MCP tools included "
                    "(`llmhost keys create NAME` turns authentication on)",
                )
            ]
        return [
            Finding("bind", "critical", f"listening on {settings.host} with no API key: anyone can use it")
        ]
    config_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    out = [Finding("bind", "ok", f"listening on {settings.host}; every request needs an API key")]
    if config_key is not None and len(config_key) < 24:
        out.append(
            Finding("api_key", "warning", f"the config-file api_key is {len(config_key)} characters; use 32+")
        )
    if not loopback and config_key is not None:
        out.append(
            Finding(
                "api_key",
                "info",
                "the config-file api_key has every scope and no limits; give clients keys of their own "
                "(`llmhost keys create`)",
            )
        )
    return out


def _browser(settings: Settings) -> list[Finding]:
    out = []
    wide = [
        o
        for o in settings.security.allowed_origins
        if o.replace("http://", "").replace("https://", "") == "*"
    ]
    if wide:
        out.append(
            Finding(
                "origins",
                "critical",
                f"security.allowed_origins has {wide[0]!r}: any web page a user opens may call this API",
            )
        )
    else:
        out.append(
            Finding(
                "origins", "ok", f"browser origins allowed: {', '.join(settings.security.allowed_origins)}"
            )
        )
    if "*" in settings.security.allowed_hosts:
        out.append(
            Finding("hosts", "warning", "security.allowed_hosts has '*': the DNS-rebinding check is off")
        )
    return out


def _tls(settings: Settings) -> list[Finding]:
    if is_loopback(settings.host):
        return [Finding("tls", "ok", "loopback only: traffic never leaves this machine")]
    return [
        Finding(
            "tls",
            "warning",
            f"llmhost serves plain HTTP on {settings.host}: keys and prompts cross the network unencrypted; "
            "put a TLS-terminating proxy (Caddy, nginx, a load balancer) in front",
        )
    ]


def _template_sandbox() -> Finding:
    """Chat templates are untrusted: a real escape attempt must be refused by the sandbox."""
    template = BoundedSandbox().from_string(_ESCAPE)
    try:
        rendered = render_bounded(template, {}, time_limit=1.0)
    except (SecurityError, RenderLimitError):
        return Finding("template_sandbox", "ok", "chat templates render in the bounded Jinja sandbox")
    if "subclasses" in rendered or "<class" in rendered:
        return Finding("template_sandbox", "critical", "a chat template reached Python's class hierarchy")
    return Finding("template_sandbox", "ok", "chat templates render in the bounded Jinja sandbox")


def _keys(keys: KeyStore) -> list[Finding]:
    now = time.time()
    out = []
    listed = keys.list_keys()
    for key in listed:
        if not key.usable(now):
            continue
        age = (now - key.created) / _DAY
        if age > KEY_MAX_AGE_DAYS:
            out.append(
                Finding(
                    "key_age",
                    "warning",
                    f"key {key.name!r} is {age:.0f} days old; rotate it (`llmhost keys rotate {key.name}`)",
                )
            )
        if "*" in key.scopes or "admin" in key.scopes:
            out.append(Finding("key_scopes", "info", f"key {key.name!r} may administer the server"))
        if key.expires is None:
            out.append(Finding("key_expiry", "info", f"key {key.name!r} never expires"))
    if listed and not out:
        out.append(Finding("keys", "ok", f"{len(listed)} key(s): none old, broad or everlasting"))
    return out


def _tool_groups(settings: Settings) -> list[Finding]:
    mcp = settings.mcp
    out = []
    if mcp.filesystem.enabled:
        roots = ", ".join(str(r) for r in mcp.filesystem.roots) or "(none)"
        mode = "read-write" if mcp.filesystem.writable else "read-only"
        severity: Severity = "warning" if mcp.filesystem.writable else "info"
        out.append(Finding("mcp.filesystem", severity, f"MCP file tools are on, {mode}, under {roots}"))
        if any(str(r) == "/" for r in mcp.filesystem.roots):
            out.append(Finding("mcp.filesystem", "critical", "the MCP file tools' roots include /"))
    if mcp.internet.enabled:
        private = mcp.internet.allow_private
        if private:
            out.append(
                Finding("mcp.internet", "warning", f"MCP web fetches may reach private addresses: {private}")
            )
        else:
            out.append(Finding("mcp.internet", "info", "MCP web fetches are on (public addresses only)"))
    if mcp.database.enabled:
        names = ", ".join(mcp.database.connections) or "(none)"
        out.append(Finding("mcp.database", "info", f"MCP read-only SQL is on for: {names}"))
    for group in ("system", "resources", "security"):
        if getattr(mcp, group).enabled:
            out.append(Finding(f"mcp.{group}", "info", f"MCP {group} tools are on"))
    return out


def _pulls(settings: Settings) -> list[Finding]:
    if not settings.pull_allow_hosts:
        return [Finding("pulls", "ok", "API pulls reach public addresses only")]
    allowed = ", ".join(settings.pull_allow_hosts)
    return [Finding("pulls", "info", f"API pulls may also reach: {allowed}")]


def _audit_and_policy(settings: Settings) -> list[Finding]:
    out = []
    if not settings.audit.enabled:
        out.append(Finding("audit", "warning", "the audit log is off ([audit] enabled = false)"))
    elif settings.audit.store_content:
        out.append(Finding("audit", "warning", "the audit log keeps prompt and answer text (store_content)"))
    else:
        out.append(Finding("audit", "ok", "every request leaves a hash-chained audit record"))
    policy = settings.policy
    if not (policy.redact or policy.block or settings.policies):
        out.append(Finding("policy", "info", "no governance policy: nothing is redacted or blocked"))
    return out
