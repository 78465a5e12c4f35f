"""Which scope each HTTP route needs, in one table (a test checks that every route is listed).

Paths not listed under ``/v1`` or ``/api`` need ``admin``: a route added without an entry is closed, not
open. ``None`` means public: the liveness and readiness probes.
"""

from __future__ import annotations

import re

__all__ = ["ANY_KEY", "required_scope"]

ANY_KEY = "any"  # any authenticated caller, whatever its scopes (the API docs)

_EXACT: dict[tuple[str, str], str | None] = {
    ("GET", "/"): None,  # "Ollama is running"
    ("GET", "/health"): None,
    ("GET", "/ready"): None,
    ("GET", "/metrics"): "metrics",
    ("GET", "/docs"): ANY_KEY,
    ("GET", "/docs/oauth2-redirect"): ANY_KEY,
    ("GET", "/redoc"): ANY_KEY,
    ("GET", "/openapi.json"): ANY_KEY,
    # OpenAI
    ("GET", "/v1/models"): "models:read",
    ("POST", "/v1/chat/completions"): "inference",
    ("GET", "/v1/chat/completions"): "inference",  # the caller's stored completions
    ("POST", "/v1/completions"): "inference",
    ("POST", "/v1/embeddings"): "inference",
    ("POST", "/v1/ensemble"): "inference",
    # the diagnose engine
    ("POST", "/v1/diagnose"): "inference",
    ("POST", "/v1/diagnose/batch"): "inference",
    ("GET", "/v1/diagnose/model"): "models:read",
    # Anthropic
    ("POST", "/v1/messages"): "inference",
    ("POST", "/v1/messages/count_tokens"): "inference",
    # OpenAI Responses
    ("POST", "/v1/responses"): "inference",
    ("POST", "/v1/responses/input_tokens"): "inference",
    # Ollama
    ("POST", "/api/chat"): "inference",
    ("POST", "/api/generate"): "inference",
    ("POST", "/api/embed"): "inference",
    ("POST", "/api/embeddings"): "inference",
    ("GET", "/api/tags"): "models:read",
    ("POST", "/api/show"): "models:read",
    ("GET", "/api/ps"): "models:read",
    ("GET", "/api/version"): "models:read",
    ("POST", "/api/copy"): "models:write",
    ("DELETE", "/api/delete"): "models:write",
    ("POST", "/api/pull"): "models:write",
    ("POST", "/api/create"): "models:write",  # and agents:write: the model it makes is an agent
    # llmhost admin
    ("POST", "/api/load"): "models:write",
    ("POST", "/api/unload"): "models:write",
    ("GET", "/api/providers"): "admin",
    ("GET", "/api/usage"): "admin",
    ("GET", "/api/audit"): "audit",
    # the dashboard's admin JSON (llmhost.doors.admin: status, keys, audit)
    ("GET", "/api/status"): "metrics",
    ("GET", "/api/keys"): "admin",
    ("POST", "/api/keys"): "admin",
    ("GET", "/api/audit/verify"): "audit",
    ("GET", "/api/audit/recent"): "audit",
    # datasets (llmhost.apps.datasets)
    ("GET", "/v1/datasets"): "datasets:read",
    ("POST", "/v1/datasets"): "datasets:write",
    # agents (llmhost.apps.agents), their runs, feedback and scorecards
    ("GET", "/v1/agents"): "agents:read",
    ("POST", "/v1/agents"): "agents:write",
    ("POST", "/v1/feedback"): "inference",
    ("GET", "/v1/scorecards"): "agents:read",
    # the web dashboard: its pages and assets are public (they hold no data; every call they make
    # carries the session cookie and passes this table like any other client's)
    ("GET", "/ui"): None,
    ("GET", "/ui/"): None,
    ("POST", "/ui/login"): None,
    ("POST", "/ui/logout"): None,
    ("GET", "/ui/session"): None,
    # MCP (Streamable HTTP): any key; each tool checks its own scope (llmhost.doors.mcp.gate)
    ("POST", "/mcp"): ANY_KEY,
    ("GET", "/mcp"): ANY_KEY,
    ("DELETE", "/mcp"): ANY_KEY,
}
_PATTERNS: list[tuple[str, re.Pattern[str], str | None]] = [
    ("GET", re.compile(r"/v1/models/.+"), "models:read"),
    ("GET", re.compile(r"/v1/responses/[^/]+(/input_items)?"), "inference"),
    ("GET", re.compile(r"/v1/chat/completions/[^/]+(/messages)?"), "inference"),
    ("POST", re.compile(r"/v1/chat/completions/[^/]+"), "inference"),
    ("DELETE", re.compile(r"/v1/chat/completions/[^/]+"), "inference"),
    ("DELETE", re.compile(r"/v1/responses/[^/]+"), "inference"),
    ("GET", re.compile(r"/v1/diagnose/[^/]+"), "inference"),
    ("POST", re.compile(r"/v1/diagnose/[^/]+/feedback"), "inference"),
    ("POST", re.compile(r"/v1/responses/[^/]+/cancel"), "inference"),
    ("GET", re.compile(r"/v1/datasets/[^/]+(/documents(/[^/]+)?)?"), "datasets:read"),
    ("POST", re.compile(r"/v1/datasets/[^/]+/search"), "datasets:read"),
    ("POST", re.compile(r"/v1/datasets/[^/]+/documents"), "datasets:write"),
    ("DELETE", re.compile(r"/v1/datasets/[^/]+(/documents/[^/]+)?"), "datasets:write"),
    ("GET", re.compile(r"/v1/agents/[^/]+(/runs(/[^/]+)?|/scorecard)?"), "agents:read"),
    ("PUT", re.compile(r"/v1/agents/[^/]+"), "agents:write"),
    ("DELETE", re.compile(r"/v1/agents/[^/]+"), "agents:write"),
    ("GET", re.compile(r"/ui/(assets/.+)"), None),
    # OAuth discovery (RFC 9728 / 8414), which MCP clients try after a 401: public, so they learn at once
    # (404) that this server takes keys, not OAuth, instead of another 401
    ("GET", re.compile(r"/\.well-known/.+"), None),
    ("POST", re.compile(r"/api/keys/[^/]+/(revoke|rotate)"), "admin"),
    # Ollama's blobs: a model file pushed for /api/create, and whether the server has one
    ("POST", re.compile(r"/api/blobs/[^/]+"), "models:write"),
    ("GET", re.compile(r"/api/blobs/[^/]+"), "models:write"),
]


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs; ``None`` for public probes. HEAD is checked as GET."""
    method = "GET" if method == "HEAD" else method
    if (method, path) in _EXACT:
        return _EXACT[(method, path)]
    for m, pattern, scope in _PATTERNS:
        if m == method and pattern.fullmatch(path):
            return scope
    return "admin"
